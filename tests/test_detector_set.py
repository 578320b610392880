"""Detectors read as one (:mod:`medrl.supervised.detector_set`): the mean of the members,
the folder, a model carrying a set, evaluation keys, and broken sets."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _synthetic import BLOB_NAMES, TINY_DETECTOR, write_blob_datalist, write_untrained_model
from medrl.agents.checkpoint import load_model
from medrl.agents.search import search
from medrl.errors import CheckpointError, InputError, MedrlError
from medrl.io.images import read_image
from medrl.supervised.detector import (
    DetectorSettings,
    HeatmapDetector,
    load_detector,
    load_single_detector,
)
from medrl.supervised.detector_set import DetectorSet, write_detector_set
from medrl.supervised.detector_set import main as set_main
from medrl.supervised.ensemble import attach_detector
from medrl.utils.atomic import TEMP_PREFIX

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_blob_datalist(tmp_path_factory.mktemp("detector_set_data"))


def _detector(
    folder: Path, seed: int, settings: DetectorSettings = TINY_DETECTOR,
    names: tuple[str, ...] = BLOB_NAMES,
) -> Path:  # fmt: skip
    """An untrained detector of ``seed`` (arbitrary but fixed points)."""
    torch.manual_seed(seed)
    detector = HeatmapDetector.new(names, ("",) * len(names), settings)
    detector.training = {"steps": 10 * seed, "minutes": float(seed)}
    detector.save(folder)
    return folder


def _set(tmp_path: Path, *members: Path) -> Path:
    assert set_main([str(tmp_path / "set"), *map(str, members)]) == 0
    return tmp_path / "set"


def test_a_set_reads_the_mean_of_its_members_and_round_trips(data, tmp_path) -> None:
    members = [_detector(tmp_path / f"d{seed}", seed) for seed in (1, 2, 3)]
    loaded = load_detector(_set(tmp_path, *members))
    assert isinstance(loaded, DetectorSet) and len(loaded.members) == 3
    assert loaded.names == BLOB_NAMES
    assert loaded.training["steps"] == [10, 20, 30] and loaded.training["minutes"] == 6.0
    volume = read_image(data["test"])
    each = np.stack([load_detector(m).detect(volume).points_ras for m in members])
    assert np.linalg.norm(each[0] - each[1], axis=1).max() > 0.1  # the members differ
    np.testing.assert_allclose(loaded.detect(volume).points_ras, each.mean(axis=0), atol=1e-4)
    # saved again, it reads the same
    loaded.save(tmp_path / "again")
    again = load_detector(tmp_path / "again")
    np.testing.assert_allclose(again.detect(volume).points_ras, each.mean(axis=0), atol=1e-4)


def test_a_model_carrying_a_set_blends_the_sets_points(data, tmp_path) -> None:
    from medrl.data.sources import load_split
    from medrl.evaluation import evaluation_key

    (tmp_path / "model").mkdir()
    model_dir = write_untrained_model(tmp_path / "model")
    first, second = _detector(tmp_path / "d1", 1), _detector(tmp_path / "d2", 2)
    attach_detector(model_dir, first, 0.5)
    atlas = load_split(str(data["datalist"]), "train")[0]
    one = evaluation_key(load_model(model_dir), atlas, None)
    attach_detector(model_dir, _set(tmp_path, first, second), 0.5)
    model = load_model(model_dir)
    assert isinstance(model.detector, DetectorSet)
    volume = read_image(data["test"])
    result = search(model, volume)
    np.testing.assert_allclose(result.detector_ras, model.detector.detect(volume).points_ras)
    both = evaluation_key(model, atlas, None)
    # a member that reads twice: other points, so another key (the settings count, not only
    # the weights)
    header_path = model_dir / "detector" / "member-1" / "detector.yaml"
    header = yaml.safe_load(header_path.read_text())
    header["settings"]["local_rounds"] = 2
    header_path.write_text(yaml.safe_dump(header, sort_keys=False))
    twice = evaluation_key(load_model(model_dir), atlas, None)
    assert len({one, both, twice}) == 3
    # a set compared beside a model is not its first member compared beside a model carrying
    # the second
    a, b = load_single_detector(first), load_single_detector(second)
    bare = replace(model, detector=None)
    assert evaluation_key(bare, atlas, None, DetectorSet((a, b))) != evaluation_key(
        replace(model, detector=b), atlas, None, a
    )


def test_broken_sets_are_refused_naming_the_folder(tmp_path, monkeypatch) -> None:
    first = _detector(tmp_path / "d1", 1)
    coarser = _detector(tmp_path / "d2", 2, replace(TINY_DETECTOR, coarse_spacing_mm=8.0))
    other = _detector(tmp_path / "d3", 3, names=("blob_a", "blob_b", "blob_x"))
    out = tmp_path / "set"
    for members in ([first, coarser], [first, other], [first], [first, first]):
        with pytest.raises(InputError) as caught:
            write_detector_set(out, members)
        assert str(members[-1]) in str(caught.value)
        assert set_main([str(out), *map(str, members)]) == 2
        assert not out.exists()
    # never over a member, nor over a folder that is not a set
    with pytest.raises(InputError, match="replace its member"):
        write_detector_set(tmp_path, [first, _detector(tmp_path / "d4", 4)])
    with pytest.raises(InputError, match="not a detector set"):
        write_detector_set(tmp_path / "d3", [first, tmp_path / "d4"])
    assert load_single_detector(other).names == ("blob_a", "blob_b", "blob_x")  # untouched
    # an interrupted write leaves the set that was there
    folder = _set(tmp_path, first, tmp_path / "d4")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    original_save = HeatmapDetector.save

    def fail_on_second(self: HeatmapDetector, target: Path) -> None:
        if Path(target).name == "member-1":
            raise OSError(errno.ENOSPC, "No space left on device")
        original_save(self, target)

    monkeypatch.setattr(HeatmapDetector, "save", fail_on_second)
    with pytest.raises(MedrlError, match="cannot write"):
        write_detector_set(folder, [tmp_path / "d4", first])
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    # broken headers name the folder or the member
    header = yaml.safe_load((folder / "detector.yaml").read_text())
    for members, problem in (
        (["member-0", "../d1"], "not a subfolder"),
        (["member-0", "member-0"], "a member twice"),
        (["member-0", "member-9"], "member-9"),
    ):
        (folder / "detector.yaml").write_text(yaml.safe_dump({**header, "members": members}))
        with pytest.raises(CheckpointError, match=problem) as caught:
            load_detector(folder)
        assert str(folder) in str(caught.value)
    for names, problem in ((["blob_a"], "members' landmarks"), (None, "no landmark names")):
        (folder / "detector.yaml").write_text(yaml.safe_dump({**header, "names": names}))
        with pytest.raises(CheckpointError, match=problem):
            load_detector(folder)
