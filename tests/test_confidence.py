"""Landmark confidence from the layout of the other landmarks: residuals of a robust affine
fit, outliers searched again, the layout's position when the search disagrees twice, and scans
that are not a brain the model knows (noise) flagged, with a warning or, with --strict, a
failed scan and nothing written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medrl.cli import main
from medrl.confidence import OUTLIER_MM, check_layout, search_confidence
from medrl.io.images import Volume, write_image
from medrl.models import default_model_dir
from medrl.tasks.landmark import LandmarkTask

RNG = np.random.default_rng(3)
REFERENCE = RNG.normal(0.0, 30.0, size=(32, 3))  # a head-sized layout of 32 points


def _moved(points: np.ndarray, scale: float = 1.05) -> np.ndarray:
    angle = np.radians(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])  # fmt: skip
    return points @ (scale * rotation).T + np.array([4.0, -7.0, 11.0])


def test_an_affine_copy_is_plausible_and_a_detection_off_the_layout_is_an_outlier() -> None:
    found = _moved(REFERENCE) + RNG.normal(0.0, 1.0, size=REFERENCE.shape)  # people differ
    found[5] += np.array([0.0, 25.0, 0.0])  # a failed detection, 25 mm off
    check = check_layout(REFERENCE, found)
    assert check.plausible and check.reason == ""
    assert check.outliers.tolist() == [i == 5 for i in range(32)]
    assert check.residual_mm[5] == pytest.approx(25.0, abs=4.0)
    assert np.median(check.residual_mm) < 2.5
    # where the others put landmark 5: close to its true place
    np.testing.assert_allclose(check.expected_ras[5], _moved(REFERENCE)[5], atol=3.0)
    assert check.confidence[5] < 0.05 < 0.9 < np.median(check.confidence)


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (RNG.uniform(-30, 30, size=(32, 3)), "layout"),  # no layout at all
        (_moved(REFERENCE) * np.array([-1.0, 1.0, 1.0]), "mirrored"),
        (_moved(REFERENCE, scale=0.3), "scaled"),
    ],
)
def test_points_without_the_layout_are_implausible_and_get_no_confidence(found, reason) -> None:
    check = check_layout(REFERENCE, found)
    assert not check.plausible and reason in check.reason
    assert float(check.confidence.max()) == 0.0


def test_a_landmark_replaced_by_the_layout_keeps_its_first_residual() -> None:
    first = _moved(REFERENCE)
    first[7] += np.array([30.0, 0.0, 0.0])
    final = first.copy()
    starts = np.full_like(first, np.nan)
    starts[7] = check_layout(REFERENCE, first).expected_ras[7]
    final[7] = starts[7]  # the second search walked away again: the layout's position stands
    confidence = search_confidence(REFERENCE, first, final, starts)
    assert confidence.flags[7] == "layout"
    assert confidence.residual_mm[7] > OUTLIER_MM and confidence.confidence[7] < 0.05
    assert set(confidence.flags) - {"layout"} == {"ok"}


def test_the_landmark_task_searches_again_only_the_outliers_and_keeps_the_layout_position() -> None:
    from medrl.config import Config

    task = LandmarkTask(Config(), {"reference_points_ras": REFERENCE.tolist()})
    found = _moved(REFERENCE)
    found[3] += np.array([0.0, 0.0, -20.0])
    starts = task.consensus_starts(found)
    assert starts is not None and starts.shape == (32, 1, 3)
    redo = np.isfinite(starts[:, 0]).all(axis=1)
    assert redo.tolist() == [i == 3 for i in range(32)]
    np.testing.assert_allclose(starts[3, 0], _moved(REFERENCE)[3], atol=1.0)
    # a second search that ends near its start is kept, one that walks away is not
    near, away = starts[3] + 2.0, starts[3] + 15.0
    np.testing.assert_allclose(task.consensus_merge(starts[3], near), near)
    np.testing.assert_allclose(task.consensus_merge(starts[3], away), starts[3])
    # noise-like detections: no second search at all
    assert task.consensus_starts(RNG.uniform(-30, 30, size=(32, 3))) is None
    # the state round-trips through model.yaml
    assert LandmarkTask(Config(), task.state_dict()).reference_points_ras.shape == (32, 3)


@pytest.fixture(scope="module")
def noise_scan(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("noise")
    array = np.random.default_rng(0).random((60, 60, 60)).astype(np.float32)
    write_image(Volume(array, np.ones(3), np.zeros(3), np.eye(3), "noise"), folder / "noise.nii")
    return folder / "noise.nii"


def test_predict_warns_on_noise_and_writes_zero_confidence(noise_scan: Path, tmp_path) -> None:
    assert default_model_dir("landmark").is_dir()
    out = tmp_path / "pred"
    assert main(["predict", "--image", str(noise_scan), "--out", str(out)]) == 0
    with open(out / "noise_confidence.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32 and {r["flag"] for r in rows} == {"scan"}
    assert max(float(r["confidence"]) for r in rows) == 0.0
    with open(out / "summary.csv", encoding="utf-8") as handle:
        summary = list(csv.DictReader(handle))
    assert summary[0]["status"] == "ok" and "not a brain the model knows" in summary[0]["warning"]


def test_strict_fails_a_noise_scan_and_writes_nothing_for_it(noise_scan: Path, tmp_path) -> None:
    out = tmp_path / "strict"
    code = main(["predict", "--image", str(noise_scan), "--out", str(out), "--strict"])
    assert code != 0
    assert not (out / "noise.fcsv").exists() and not (out / "noise_confidence.csv").exists()
    assert "--strict" in (out / "summary.csv").read_text(encoding="utf-8")


def test_adaptive_levels_keep_the_level_that_agrees_best_with_the_layout() -> None:
    """search.adaptive_levels: the level whose estimates lie closest to the reference layout
    stands (finer levels that scatter the landmarks are not trusted); off: the finest."""
    from dataclasses import replace

    from medrl.agents.checkpoint import load_model
    from medrl.agents.search import _chosen_level

    model = load_model(default_model_dir("landmark"), task="landmark")
    task = LandmarkTask(model.config, {"reference_points_ras": REFERENCE.tolist()})
    on = model.config.with_overrides(["search.adaptive_levels=true"])
    coarse = _moved(REFERENCE) + RNG.normal(0.0, 1.0, size=(32, 3))
    scattered = _moved(REFERENCE) + RNG.normal(0.0, 6.0, size=(32, 3))
    adaptive = replace(model, config=on, task=task)
    assert _chosen_level(adaptive, [coarse, scattered, scattered]) == 0
    assert _chosen_level(adaptive, [scattered, coarse, coarse]) == 2  # the finer on a tie
    off = model.config.with_overrides(["search.adaptive_levels=false"])
    assert _chosen_level(replace(model, config=off, task=task), [coarse, scattered, scattered]) == 2


def test_an_adaptive_search_builds_on_the_level_it_chose(builtin_data: Path) -> None:
    from dataclasses import replace

    from medrl.agents.checkpoint import load_model
    from medrl.agents.search import search
    from medrl.data.builtin import MNI6_T1W
    from medrl.io.images import read_image, resample_isotropic

    model = load_model(default_model_dir("landmark"), task="landmark")
    # the agent's own estimate (the shipped model blends in its detector's points and the
    # mirror readings)
    on = model.config.with_overrides(
        ["search.adaptive_levels=true", "search.detector_weight=0", "search.mirror=false"]
    )
    scan = resample_isotropic(read_image(builtin_data / MNI6_T1W), 2.0)
    result = search(replace(model, config=on), scan, consensus_level=-1)
    residuals = [model.task.layout_residual(e) for e in result.level_estimates]
    assert result.chosen_level == int(np.argmin(residuals))
    np.testing.assert_array_equal(result.estimate, result.level_estimates[result.chosen_level])


def test_the_reference_layout_is_the_mean_shape_of_the_distinct_training_brains() -> None:
    """Contrasts and stripped copies of one brain share its landmarks: each brain counts
    once, and a scan missing a landmark does not count."""
    from medrl.config import Config
    from medrl.geometry.robust_affine import mean_layout
    from medrl.tasks.base import TargetTable

    other = _moved(REFERENCE) + RNG.normal(0.0, 2.0, size=REFERENCE.shape)
    partial = REFERENCE.copy()
    partial[4] = np.nan
    names = tuple(str(i) for i in range(32))
    table = TargetTable(names, names, [partial, REFERENCE, REFERENCE.copy(), other, other.copy()])
    task = LandmarkTask(Config(), {})
    task.fit([], table)
    np.testing.assert_allclose(task.reference_points_ras, mean_layout([REFERENCE, other]))
    assert not np.allclose(task.reference_points_ras, REFERENCE, atol=0.5)


def test_a_layout_weight_blends_the_search_with_the_fitted_layout(builtin_data: Path) -> None:
    """search.layout_weight w: the estimate is (1 - w) x the search's own + w x the layout
    fitted to level layout_level; the confidence stays that of the search's own points."""
    from dataclasses import replace

    from medrl.agents.checkpoint import load_model
    from medrl.agents.search import search
    from medrl.data.builtin import MNI6_T1W
    from medrl.errors import InputError
    from medrl.io.images import read_image, resample_isotropic
    from medrl.predict_confidence import landmark_check

    model = load_model(default_model_dir("landmark"), task="landmark")
    scan = resample_isotropic(read_image(builtin_data / MNI6_T1W), 2.0)
    own = search(model, scan)
    assert own.unblended is None and own.layout_ras is None
    layout = model.task.layout_positions(own.level_estimates[1])
    assert layout is not None and layout.shape == (32, 3)

    def blended(weight: float):  # type: ignore[no-untyped-def]
        overrides = [f"search.layout_weight={weight}", "search.layout_level=1"]
        return search(replace(model, config=model.config.with_overrides(overrides)), scan)

    full, half = blended(1.0), blended(0.5)
    np.testing.assert_allclose(full.estimate, layout)
    np.testing.assert_allclose(full.own_estimate, own.estimate)
    np.testing.assert_allclose(half.estimate, 0.5 * (own.estimate + layout))
    assert np.abs(full.estimate - own.estimate).max() > 0.5  # the layout did move points
    reference = model.task.reference_points_ras
    np.testing.assert_allclose(
        landmark_check(reference, full).residual_mm, landmark_check(reference, own).residual_mm
    )
    with pytest.raises(InputError, match="layout_weight"):
        model.config.with_overrides(["search.layout_weight=1.5"])
    beyond = model.config.with_overrides(["search.layout_weight=1", "search.layout_level=7"])
    with pytest.raises(InputError, match="layout_level is 7"):
        search(replace(model, config=beyond), scan)


def test_predict_set_turns_on_the_layout_fit_and_refuses_training_settings(
    builtin_data: Path, tmp_path
) -> None:
    from medrl.agents.checkpoint import load_model, with_overrides
    from medrl.agents.search import search
    from medrl.data.builtin import MNI6_T1W
    from medrl.io.images import read_image, resample_isotropic
    from medrl.io.landmarks import read_landmarks

    scan = tmp_path / "mni6_2mm.nii.gz"
    write_image(resample_isotropic(read_image(builtin_data / MNI6_T1W), 2.0), scan)
    overrides = ["search.layout_weight=1", "search.layout_level=1"]
    out = tmp_path / "fit"
    sets = [arg for value in overrides for arg in ("--set", value)]
    assert main(["predict", "--image", str(scan), "--out", str(out), *sets]) == 0
    written = read_landmarks(out / "mni6_2mm.fcsv")
    model = with_overrides(load_model(default_model_dir("landmark"), task="landmark"), overrides)
    result = search(model, read_image(scan))
    assert result.layout_ras is not None
    np.testing.assert_allclose(written.points_ras, result.layout_ras, atol=0.01)
    assert (out / "mni6_2mm_confidence.csv").is_file()
    refused = tmp_path / "refused"
    code = main(["predict", "--image", str(scan), "--out", str(refused), "--set", "agent.lr=1"])
    assert code != 0 and not (refused / "mni6_2mm.fcsv").exists()
