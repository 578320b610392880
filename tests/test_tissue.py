"""Tissue maps for synthetic contrasts (``augment.tissue_maps``): the mixture finds the
tissues, uses every contrast of the brain, and its maps reach the trainers as siblings."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import medrl
from _synthetic import BLOB_NAMES, TINY_DETECTOR, blob_volume
from medrl.agents.dqn import Trainer
from medrl.config import AugmentConfig, Config, TrainConfig, load_config
from medrl.data.sources import load_split
from medrl.data.tissue import stripped_members, tissue_maps, tissue_posteriors
from medrl.envs.pyramid import with_siblings_of
from medrl.errors import InputError
from medrl.io.images import Volume, write_image
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.supervised.training import DetectorTrainer, TrainSettings

SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"


def _three_tissues(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, mask, T1-like image): a ball of three concentric tissues on a 32^3 grid, with
    noise; outside the ball nothing (label -1)."""
    grid = np.indices((32, 32, 32)).astype(np.float64) - 15.5
    radius = np.sqrt((grid**2).sum(axis=0))
    labels = np.select([radius < 5, radius < 10, radius < 14], [0, 1, 2], default=-1)
    means = np.array([20.0, 60.0, 100.0])
    rng = np.random.default_rng(seed)
    image = np.where(labels >= 0, means[labels] + rng.normal(0, 6, labels.shape), 0.0)
    return labels, labels >= 0, image


def _agreement(posteriors: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of mask voxels whose most likely component is their tissue, under the best
    matching of components to tissues."""
    found = posteriors.argmax(axis=0)[mask]
    truth = labels[mask]
    return max(
        float(np.mean(np.asarray(order)[found] == truth))
        for order in itertools.permutations(range(posteriors.shape[0]))
    )


def test_the_mixture_finds_three_tissues_and_is_zero_outside_the_brain() -> None:
    labels, mask, image = _three_tissues()
    posteriors = tissue_posteriors([image], mask)
    assert posteriors.shape == (3, *mask.shape)
    assert _agreement(posteriors, labels, mask) > 0.97
    np.testing.assert_allclose(posteriors.sum(axis=0)[mask], 1.0, atol=1e-5)
    assert not posteriors[:, ~mask].any()
    np.testing.assert_array_equal(posteriors, tissue_posteriors([image], mask))  # seeded


def test_the_mixture_separates_tissues_that_one_contrast_shows_alike() -> None:
    """Tissues 0 and 2 are alike in the first contrast (as CSF and bone in T1w) and differ in
    the second: one contrast cannot tell them apart, the two together can."""
    labels, mask, _ = _three_tissues()
    rng = np.random.default_rng(1)
    first = np.where(mask, np.array([20.0, 60.0, 20.0])[labels] + rng.normal(0, 4, mask.shape), 0)
    second = np.where(mask, np.array([90.0, 50.0, 10.0])[labels] + rng.normal(0, 4, mask.shape), 0)
    assert _agreement(tissue_posteriors([first], mask), labels, mask) < 0.8
    assert _agreement(tissue_posteriors([first, second], mask), labels, mask) > 0.97


def test_maps_need_a_skull_stripped_image_and_lie_on_its_grid() -> None:
    labels, mask, image = _three_tissues()
    head = np.where(np.indices(mask.shape)[0] > 1, image + 40.0 * ~mask, 0.0)  # a "skull"
    geometry = {"spacing_mm": (1.0, 1.2, 1.5), "origin_lps": (3.0, -2.0, 1.0)}
    with_skull = Volume(head, direction_lps=np.eye(3), source="t1.nii.gz", **geometry)
    stripped = Volume(image, direction_lps=np.eye(3), source="t1_brain.nii.gz", **geometry)
    assert stripped_members([with_skull, stripped]) == [1]
    assert tissue_maps([with_skull]) == []
    maps = tissue_maps([with_skull, stripped])
    assert len(maps) == 3
    for m in maps:
        assert m.array.shape == image.shape
        np.testing.assert_array_equal(m.index_to_ras, stripped.index_to_ras)
        assert m.array.min() >= 0.0 and m.array.max() <= 1.0
    assert _agreement(np.stack([m.array for m in maps]), labels, mask) > 0.97
    # an image with skull on a noisy background beside one on an exactly-0 background: neither
    # is stripped, and a group of stripped images alone cannot be told from images with skull
    noisy = replace(with_skull, array=with_skull.array + np.random.default_rng(2).uniform(
        0.1, 2.0, mask.shape))  # fmt: skip
    assert stripped_members([with_skull, noisy]) == []
    assert stripped_members([noisy, stripped]) == [1]
    assert tissue_maps([stripped]) == []


def test_a_brain_too_small_for_a_mixture_is_named() -> None:
    head = np.full((8, 8, 8), 50.0)
    tiny = np.zeros_like(head)
    tiny[4, 4, 4:6] = 30.0  # two voxels of brain
    volumes = [Volume(a, (1, 1, 1), (0, 0, 0), np.eye(3), source=name)
               for a, name in ((head, "head.nii.gz"), (tiny, "tiny_brain.nii.gz"))]  # fmt: skip
    with pytest.raises(InputError, match=r"tiny_brain\.nii\.gz.*at least 30 voxels, got 2"):
        tissue_maps(volumes)


def test_tissue_maps_need_the_contrast_mix() -> None:
    with pytest.raises(ValueError, match="contrast_mix"):
        AugmentConfig(tissue_maps=True, contrast_mix=0.0)


def test_a_process_prepares_the_siblings_of_its_cases(brain_datalist: Path) -> None:
    """Cases dealt round-robin to two processes: each holds its cases' other contrasts too."""
    cases = load_split(str(brain_datalist), "train")  # head, brain, other
    assert with_siblings_of(cases, [0, 2]) == [0, 1, 2]
    assert with_siblings_of(cases, [1]) == [0, 1]
    assert with_siblings_of(cases, [2]) == [2]


@pytest.fixture(scope="module")
def brain_datalist(tmp_path_factory) -> Path:
    """A blob "head", its skull-stripped copy (zero beyond 25 mm of the blobs) and another
    brain without one, as a datalist of three training cases."""
    folder = tmp_path_factory.mktemp("tissue_data")
    volume, blobs = blob_volume(seed=0)
    ras = volume.index_to_world(np.indices(volume.shape_xyz).reshape(3, -1).T)
    inside = (np.linalg.norm(ras - blobs.mean(axis=0), axis=1) < 25.0).reshape(
        volume.shape_xyz[::-1], order="F"
    )
    brain = replace(volume, array=np.where(inside, volume.array, 0.0))
    other, other_blobs = blob_volume(seed=1, blobs_ras=blobs + 2.0)
    for name, image, points in (
        ("head", volume, blobs), ("brain", brain, blobs), ("other", other, other_blobs)
    ):  # fmt: skip
        write_image(image, folder / f"{name}.nii.gz")
        write_landmarks(Landmarks(BLOB_NAMES, points, BLOB_NAMES), folder / f"{name}.fcsv")
    cases = [
        {"id": n, "image": f"{n}.nii.gz", "landmarks": f"{n}.fcsv", "split": "train"}
        for n in ("head", "brain", "other")
    ]
    (folder / "datalist.json").write_text(json.dumps({"cases": cases}))
    return folder / "datalist.json"


def _assert_maps_attached(scans: list) -> None:
    """The brain and its stripped copy share three tissue maps; the other brain has none."""
    assert [len(s.siblings) for s in scans] == [4, 4, 0]
    head, brain, _ = scans
    # the same maps, prepared once
    assert all(a is b for a, b in zip(head.siblings[1:], brain.siblings[1:], strict=True))
    for k, tissue in enumerate(head.siblings[1:]):
        assert tissue.source.endswith(f"brain.nii.gz tissue {k}")
        for level in tissue.levels:  # probabilities, smoothed but not stretched to 0..1
            assert float(level.tensor.min()) > -0.01 and float(level.tensor.max()) < 1.01


def test_the_detector_trainer_blends_the_maps_when_asked(brain_datalist: Path, tmp_path) -> None:
    settings = TrainSettings(minutes=5.0, max_steps=2, coarse_batch=2, local_batch=4)

    def trainer(tissue_maps: bool, run: str) -> DetectorTrainer:
        augment = AugmentConfig(contrast_mix=1.0, tissue_maps=tissue_maps)
        config = Config(train=TrainConfig(datalist=str(brain_datalist), seed=3), augment=augment)
        return DetectorTrainer(config, tmp_path / run, settings, TINY_DETECTOR)

    assert [len(s.siblings) for s in trainer(False, "plain").scans] == [1, 1, 0]
    mixed = trainer(True, "mixed")
    _assert_maps_attached(mixed.scans)
    for _ in range(2):  # every episode blends (contrast_mix 1)
        losses = mixed.train_step()
        assert all(np.isfinite(v) for v in losses.values())


def test_the_agent_trainer_blends_the_maps_when_asked(brain_datalist: Path, tmp_path) -> None:
    overrides = [
        f"train.datalist={brain_datalist}",
        "augment.contrast_mix=1.0",
        "augment.tissue_maps=true",
        "train.total_steps=12",
        "train.num_envs=4",
        "agent.learning_starts=8",
        "agent.batch_size=4",
        "train.checkpoint_every=100",
    ]
    trainer = Trainer(load_config(SMOKE, overrides), tmp_path / "run")
    _assert_maps_attached(trainer.scans)
    trainer.run(progress=False)
    assert trainer.step == 12
