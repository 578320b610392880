"""A landmark model carrying a supervised detector (``search.detector_weight``): the blend,
the disagreement in the confidence file, attaching, refitting and the errors for broken
folders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _synthetic import BLOB_NAMES, TINY_DETECTOR, write_blob_datalist, write_untrained_model
from medrl.agents.checkpoint import load_model, with_overrides
from medrl.agents.search import search
from medrl.cli import main
from medrl.confidence import OUTLIER_MM, check_layout, search_confidence
from medrl.errors import CheckpointError, InputError
from medrl.io.images import read_image
from medrl.io.landmarks import read_landmarks
from medrl.supervised.detector import HeatmapDetector, load_single_detector
from medrl.supervised.ensemble import DETECTOR_SUBDIR, attach_detector
from medrl.supervised.ensemble import main as attach_main

torch.set_num_threads(1)
TINY = TINY_DETECTOR


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_blob_datalist(tmp_path_factory.mktemp("ensemble_data"))


def _detector(folder: Path, names: tuple[str, ...] = tuple(reversed(BLOB_NAMES))) -> Path:
    """An untrained detector (its points are arbitrary but fixed), its names in another
    order than the model's."""
    torch.manual_seed(4)
    detector = HeatmapDetector.new(names, ("",) * len(names), TINY)
    detector.training = {"steps": 0, "minutes": 0.0}
    detector.save(folder)
    return folder


def _model(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    return write_untrained_model(tmp_path / "model")


def test_the_search_writes_the_weighted_mean_of_agent_and_detector(data, tmp_path) -> None:
    model_dir = _model(tmp_path)
    detector_dir = _detector(tmp_path / "detector")
    volume = read_image(data["test"])
    alone = search(load_model(model_dir), volume)
    assert alone.detector_ras is None and alone.agent_estimate is None

    assert attach_main([str(model_dir), str(detector_dir), "--weight", "0.25"]) == 0
    assert (model_dir / DETECTOR_SUBDIR / "detector.yaml").is_file()
    header = yaml.safe_load((model_dir / "model.yaml").read_text())
    assert header["config"]["search"]["detector_weight"] == 0.25
    assert header["training"]["detector"]["weight"] == 0.25
    model = load_model(model_dir)
    assert model.detector is not None
    both = search(model, volume)
    np.testing.assert_allclose(both.agent_estimate, alone.estimate)
    # the detector's points in the model's landmark order, whatever its own order
    found = model.detector.detect(volume)
    by_name = dict(zip(found.names, found.points_ras, strict=True))
    np.testing.assert_allclose(both.detector_ras, np.stack([by_name[n] for n in BLOB_NAMES]))
    np.testing.assert_allclose(
        both.estimate, 0.75 * alone.estimate + 0.25 * both.detector_ras, atol=1e-9
    )
    assert np.linalg.norm(both.estimate - alone.estimate, axis=1).max() > 0.1
    # weight 0: the agent alone, even with the detector in the folder
    off = search(with_overrides(model, ["search.detector_weight=0"]), volume)
    np.testing.assert_allclose(off.estimate, alone.estimate)


def test_predict_writes_the_blend_and_the_disagreement(data, tmp_path) -> None:
    from medrl.tasks import make_task

    model_dir = _model(tmp_path)
    model = load_model(model_dir)
    # a reference layout, so that predict writes the confidence file
    from medrl.agents.checkpoint import save_model_files

    layout = read_landmarks(data["test"].with_suffix("").with_suffix(".fcsv")).points_ras
    task = make_task(model.config, {"reference_points_ras": layout.tolist()})
    save_model_files(model_dir, model.network, model.config, model.names, model.descriptions,
                     {}, task)  # fmt: skip
    attach_detector(model_dir, _detector(tmp_path / "detector"), 0.5)
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--image", str(data["test"]), "--out", str(out)]
    assert main(argv) == 0
    result = search(load_model(model_dir), read_image(data["test"]))
    written = read_landmarks(out / "test.fcsv").points_ras
    np.testing.assert_allclose(written, result.estimate, atol=1e-3)
    with open(out / "test_confidence.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    apart = np.linalg.norm(result.agent_estimate - result.detector_ras, axis=1)
    np.testing.assert_allclose([float(r["disagreement_mm"]) for r in rows], apart, atol=0.01)
    # two readings (agent, detector) at weight 0.5: each lies half their distance from the point
    assert result.readings is not None and result.readings.shape == (2, *result.estimate.shape)
    np.testing.assert_allclose(result.readings[1], result.detector_ras)
    np.testing.assert_allclose([float(r["spread_mm"]) for r in rows], apart / 2, atol=0.01)
    assert apart.max() > 0.1  # the readers differ, so the spread is not trivially 0


def test_the_disagreement_is_carried_but_the_confidence_is_the_residuals() -> None:
    rng = np.random.default_rng(0)
    layout = rng.uniform(-40, 40, size=(12, 3))
    found = layout + rng.normal(0, 0.5, size=layout.shape)
    found[5] += 15.0  # one landmark far from where the others put it
    plain = search_confidence(layout, found, found, None)
    apart = np.zeros(12)
    apart[3] = OUTLIER_MM + 5
    both = search_confidence(layout, found, found, None, apart, spread_mm=apart / 2)
    np.testing.assert_allclose(both.disagreement_mm, apart)
    np.testing.assert_allclose(both.spread_mm, apart / 2)
    assert plain.disagreement_mm is None and plain.spread_mm is None
    assert both.flags == plain.flags and plain.flags[5] == "check"
    assert plain.flags.count("check") == 1
    np.testing.assert_allclose(both.confidence, plain.confidence)
    assert check_layout(layout, found).plausible


def test_broken_folders_are_named(data, tmp_path) -> None:
    model_dir = _model(tmp_path)
    # a weight but no detector in the folder
    header = yaml.safe_load((model_dir / "model.yaml").read_text())
    header["config"]["search"]["detector_weight"] = 0.5
    (model_dir / "model.yaml").write_text(yaml.safe_dump(header, sort_keys=False))
    with pytest.raises(CheckpointError, match="carries no detector") as caught:
        load_model(model_dir)
    assert "model.yaml" in str(caught.value)
    header["config"]["search"]["detector_weight"] = 0.0
    (model_dir / "model.yaml").write_text(yaml.safe_dump(header, sort_keys=False))
    # set on a model without one: the search says so
    model = with_overrides(load_model(model_dir), ["search.detector_weight=1"])
    with pytest.raises(InputError, match="carries no supervised detector"):
        search(model, read_image(data["test"]))
    # a detector of other landmarks: refused when attached and when loaded, the model unchanged
    other = _detector(tmp_path / "other", ("blob_a", "blob_x", "blob_c"))
    before = (model_dir / "model.yaml").read_bytes()
    assert attach_main([str(model_dir), str(other)]) == 2
    assert (model_dir / "model.yaml").read_bytes() == before
    assert not (model_dir / DETECTOR_SUBDIR).exists()
    (model_dir / DETECTOR_SUBDIR).mkdir()
    with pytest.raises(CheckpointError, match="detector"):
        load_model(model_dir)
    for item in other.iterdir():
        (model_dir / DETECTOR_SUBDIR / item.name).write_bytes(item.read_bytes())
    with pytest.raises(CheckpointError, match="blob_b"):
        load_model(model_dir)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        attach_detector(model_dir, other, 1.5)


def test_refit_keeps_the_detector(data, tmp_path) -> None:
    from medrl.agents.refit import refit_model

    model_dir = _model(tmp_path)
    attach_detector(model_dir, _detector(tmp_path / "detector"), 0.5)
    refit_model(model_dir, str(data["datalist"]))
    model = load_model(model_dir)
    assert model.detector is not None and model.config.search.detector_weight == 0.5


def test_an_evaluation_does_not_reuse_results_of_another_carried_detector(data, tmp_path) -> None:
    from medrl.data.sources import load_split
    from medrl.evaluation import evaluation_key

    atlas = load_split(str(data["datalist"]), "train")[0]
    model_dir = _model(tmp_path)
    plain = evaluation_key(load_model(model_dir), atlas, None)
    attach_detector(model_dir, _detector(tmp_path / "detector"), 0.5)
    first = evaluation_key(load_model(model_dir), atlas, None)
    other = _detector(tmp_path / "other")
    with torch.no_grad():
        changed = load_single_detector(other)
        next(changed.local.parameters()).add_(0.01)
        changed.save(other)
    attach_detector(model_dir, other, 0.5)
    second = evaluation_key(load_model(model_dir), atlas, None)
    assert len({plain, first, second}) == 3
