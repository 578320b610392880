"""Tests for the ``medrl`` command (called in-process through ``medrl.cli.main``)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medrl
from _synthetic import BLOB_NAMES, blob_volume, write_blob_datalist, write_untrained_model
from medrl.agents.checkpoint import load_model
from medrl.agents.search import search
from medrl.agents.trainer_checkpoint import STATE_FILE
from medrl.cli import main
from medrl.errors import InputError
from medrl.evaluation import deform_case, move_case, random_rigid
from medrl.io.images import Volume, read_image, write_image
from medrl.io.landmarks import Landmarks, read_landmarks
from medrl.utils.folder_lock import LOCK_NAME
from test_folder_lock import SRC, hold_lock

# Tiny tensors: torch's thread pool costs far more than it saves here (15x on 2 busy cores).
torch.set_num_threads(1)

SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Train and test scans (NIfTI) with .fcsv landmarks and a JSON datalist."""
    return write_blob_datalist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained model folder (enough for the error paths)."""
    return write_untrained_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def old_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A model folder from an incompatible (future) format version."""
    folder = tmp_path / "old_model"
    shutil.copytree(model_dir, folder)
    header = yaml.safe_load((folder / "model.yaml").read_text())
    header["format_version"] = 99
    (folder / "model.yaml").write_text(yaml.safe_dump(header, sort_keys=False))
    return folder


def _empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# ------------------------------------------------------------------- predict errors
def _no_predictions(out: Path) -> bool:
    return not out.exists() or not list(out.rglob("*.fcsv"))


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_missing_image(model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "missing.nii.gz"
    code = main(["predict", "--model", str(model_dir), "--image", str(missing), "--out", str(out)])
    assert code == 2
    assert _no_predictions(out)
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err
    [row] = _summary(out)
    assert row["status"] == "failed" and "not found" in row["error"]


def test_predict_a_failing_scan_does_not_stop_the_others(
    model_dir: Path, data: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "missing.nii.gz"
    argv = ["predict", "--model", str(model_dir), "--out", str(out)]
    code = main([*argv, "--image", str(missing), "--image", str(data["test"])])
    assert code == 2  # a scan failed
    assert sorted(p.name for p in out.rglob("*.fcsv")) == ["test.fcsv"]
    assert [row["status"] for row in _summary(out)] == ["failed", "ok"]
    assert "1 of 2 scans failed" in capsys.readouterr().err


def test_predict_corrupt_image(model_dir: Path, tmp_path: Path, capsys) -> None:
    corrupt = tmp_path / "x.nii.gz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_dir), "--image", str(corrupt), "--out", str(out)])
    assert code == 2
    assert _no_predictions(out)
    assert str(corrupt) in capsys.readouterr().err
    assert str(corrupt) in _summary(out)[0]["error"]


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii.gz"])
def test_predict_image_with_nan_voxels(
    model_dir: Path, tmp_path: Path, suffix: str, capsys
) -> None:
    """The voxel data on disk holds a NaN (for NIfTI too: ITK's reader turns it into 0)."""
    volume, _ = blob_volume(shape_zyx=(16, 16, 16))
    array = volume.array.copy()
    array[3, 4, 5] = np.nan
    path = tmp_path / f"nan{suffix}"
    write_image(Volume(array, volume.spacing_mm, volume.origin_lps, volume.direction_lps), path)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_dir), "--image", str(path), "--out", str(out)])
    assert code == 2
    assert _no_predictions(out)
    err = capsys.readouterr().err
    assert str(path) in err and "NaN" in err


def test_predict_with_model_of_incompatible_version(
    old_model_dir: Path, data: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--model", str(old_model_dir), "--image", str(data["test"])]
    assert main([*argv, "--out", str(out)]) == 2
    assert _empty(out)
    err = capsys.readouterr().err
    assert "format version 99" in err and str(old_model_dir / "model.yaml") in err


def test_predict_with_missing_model_folder(data: dict[str, Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_model"
    argv = ["predict", "--model", str(missing), "--image", str(data["test"])]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err


# --------------------------------------------------------------- evaluate / train errors
def test_evaluate_with_model_of_incompatible_version(
    old_model_dir: Path, data: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "evaluation"
    argv = ["evaluate", "--model", str(old_model_dir), "--datalist", str(data["datalist"])]
    assert main([*argv, "--rigid-trials", "1", "--out", str(out)]) == 2
    assert _empty(out)
    assert "format version" in capsys.readouterr().err


def test_train_unknown_override_key(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", "--config", "smoke", "--set", "agent.no_such_key=1"]
    assert main([*argv, "--run-dir", str(run_dir), "--quiet"]) == 2
    assert "agent.no_such_key" in capsys.readouterr().err
    assert _empty(run_dir)


@pytest.mark.parametrize("override", ["agent.lr", "train.total_steps=many", "train.nope.deeper=1"])
def test_train_malformed_overrides(tmp_path: Path, override: str, capsys) -> None:
    argv = ["train", "--config", "smoke", "--set", override, "--run-dir", str(tmp_path / "r")]
    assert main([*argv, "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("medrl: error:")


@pytest.mark.parametrize("override", ["augment.contrast_mix=-0.5", "augment.blur=1.5"])
def test_train_probability_outside_0_1_is_refused(tmp_path: Path, override: str, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", "--config", "smoke", "--set", override, "--run-dir", str(run_dir)]
    assert main([*argv, "--quiet"]) == 2
    assert "probability in [0, 1]" in capsys.readouterr().err
    assert _empty(run_dir)


@pytest.mark.parametrize("command", ["train", "train-heatmap"])
def test_tissue_maps_without_the_contrast_mix_are_refused(tmp_path: Path, command: str, capsys):
    run_dir = tmp_path / "run"
    argv = [command, "--config", "smoke", "--set", "augment.tissue_maps=true",
            "--set", "augment.contrast_mix=0", "--run-dir", str(run_dir)]  # fmt: skip
    assert main([*argv, "--quiet"]) == 2
    assert "augment.tissue_maps" in capsys.readouterr().err
    assert _empty(run_dir)


def test_train_unknown_config_preset(tmp_path: Path, capsys) -> None:
    argv = ["train", "--config", "no-such-preset", "--run-dir", str(tmp_path / "r")]
    assert main([*argv, "--quiet"]) == 2
    assert "no-such-preset" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["image", "landmarks"])
def test_train_datalist_pointing_to_a_missing_file(
    data: dict[str, Path], tmp_path: Path, missing: str, capsys
) -> None:
    case = {"id": "c1", "image": str(data["train"]), "landmarks": str(data["train"])[:-7] + ".fcsv"}
    case[missing] = str(tmp_path / f"gone_{missing}")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"cases": [case]}))
    run_dir = tmp_path / "run"
    argv = ["train", "--config", "smoke", "--set", f"train.datalist={datalist}"]
    assert main([*argv, "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"gone_{missing}" in err and str(datalist) in err
    assert _empty(run_dir)


def test_train_datalist_file_missing(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.json"
    argv = ["train", "--config", "smoke", "--set", f"train.datalist={missing}"]
    assert main([*argv, "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    assert str(missing) in capsys.readouterr().err


# ------------------------------------------------------------------------ evaluation
def _assert_blob_peaks_at(volume: Volume, points_ras: np.ndarray) -> None:
    """Each blob's intensity centroid (within 6 mm) lies within 0.3 mm of its landmark."""
    k, j, i = np.indices(volume.array.shape)
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    ras = volume.index_to_world(index)
    values = volume.array.reshape(-1).astype(np.float64)
    for point in points_ras:
        near = np.linalg.norm(ras - point, axis=1) < 6.0
        centroid = (ras[near] * values[near, None]).sum(0) / values[near].sum()
        assert np.linalg.norm(centroid - point) < 0.3


def test_rigid_move_of_a_case_moves_its_landmarks_with_the_image() -> None:
    """evaluate's rigid moves: each blob peak of the moved scan is at its moved landmark."""
    volume, blobs = blob_volume(noise=0.0, sigma_mm=3.0)
    landmarks = Landmarks(BLOB_NAMES, blobs)
    for seed in range(2):
        rigid = random_rigid(seed, 15.0, 20.0)
        moved_volume, moved = move_case(volume, landmarks, rigid)
        assert moved.names == BLOB_NAMES
        shift = np.linalg.norm(moved.points_ras - blobs, axis=1)
        assert shift.min() > 2.0  # the move is not trivial
        _assert_blob_peaks_at(moved_volume, moved.points_ras)


def test_elastic_warp_of_a_case_moves_its_landmarks_with_the_image() -> None:
    """evaluate --elastic-mm: a non-affine warp, and each blob peak is at its moved landmark."""
    volume, blobs = blob_volume(noise=0.0, sigma_mm=3.0)
    landmarks = Landmarks(BLOB_NAMES, blobs)
    warped, moved = deform_case(volume, landmarks, elastic_mm=6.0, seed=3)
    shifts = moved.points_ras - blobs
    assert np.linalg.norm(shifts, axis=1).min() > 0.5  # every blob moved ...
    assert np.linalg.norm(shifts - shifts.mean(0), axis=1).max() > 0.5  # ... and not rigidly
    _assert_blob_peaks_at(warped, moved.points_ras)
    with pytest.raises(InputError, match="not invertible"):
        deform_case(volume, landmarks, elastic_mm=60.0, seed=0)
    same, unmoved = deform_case(volume, landmarks, elastic_mm=0.0, seed=3)
    np.testing.assert_allclose(unmoved.points_ras, blobs, atol=1e-4)
    np.testing.assert_allclose(same.array, volume.array, atol=1e-2)


@pytest.mark.parametrize(
    "args", [["--elastic-mm", "-1"], ["--elastic-mm", "3", "--rigid-trials", "0"]]
)
def test_evaluate_rejects_bad_elastic_settings(tmp_path: Path, args: list[str], capsys) -> None:
    out = tmp_path / "evaluation"
    assert main(["evaluate", *args, "--out", str(out)]) == 2
    assert "--elastic-mm" in capsys.readouterr().err
    assert not out.exists()


def _train(data: dict[str, Path], run_dir: Path, *overrides: str) -> int:
    sets = [item for value in overrides for item in ("--set", value)]
    argv = ["train", "--config", "smoke", "--set", f"train.datalist={data['datalist']}", *sets]
    return main([*argv, "--run-dir", str(run_dir), "--quiet"])


@pytest.fixture(scope="module")
def trained_model(data: dict[str, Path], tmp_path_factory) -> Path:
    """A model trained (1 step) on ``data``'s datalist: its atlas is the case ``train``."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert _train(data, run_dir, "train.total_steps=1") == 0
    return run_dir / "model"


def _labelled_datalist(path: Path, cases: list[tuple[str, Path, str]]) -> Path:
    """A JSON datalist of (id, image, split) cases, each with the .fcsv next to its image."""
    rows = [
        {"id": case_id, "image": str(image), "landmarks": str(image)[:-7] + ".fcsv", "split": split}
        for case_id, image, split in cases
    ]
    path.write_text(json.dumps({"cases": rows}))
    return path


def test_evaluate_a_datalist_of_test_scans_only(
    trained_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    """The baseline's atlas is the model's training case unless --atlas names another."""
    scans = _labelled_datalist(tmp_path / "mine.json", [("s01", data["test"], "test")])
    argv = ["evaluate", "--model", str(trained_model), "--datalist", str(scans)]
    out = tmp_path / "evaluation"
    assert main([*argv, "--rigid-trials", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["atlas"] == "train"  # the first train case of the model's datalist
    assert (out / "predictions" / "s01.fcsv").is_file()

    atlas = _labelled_datalist(
        tmp_path / "atlas.json", [("my_atlas", data["test"], "train"), ("t", data["train"], "test")]
    )
    out = tmp_path / "evaluation_atlas"
    assert main([*argv, "--atlas", str(atlas), "--rigid-trials", "0", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["atlas"] == "my_atlas"


def test_evaluate_when_the_models_training_datalist_is_not_here(
    trained_model: Path, data: dict[str, Path], tmp_path: Path, capsys
) -> None:
    moved = tmp_path / "model"
    shutil.copytree(trained_model, moved)
    header = yaml.safe_load((moved / "model.yaml").read_text())
    header["config"]["train"]["datalist"] = "elsewhere/cases.json"  # relative to another cwd
    (moved / "model.yaml").write_text(yaml.safe_dump(header, sort_keys=False))
    scans = _labelled_datalist(tmp_path / "mine.json", [("s01", data["test"], "test")])
    argv = ["evaluate", "--model", str(moved), "--datalist", str(scans), "--rigid-trials", "0"]
    out = tmp_path / "evaluation"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "elsewhere/cases.json" in err and "pass --atlas" in err
    assert _empty(out)
    assert main([*argv, "--atlas", str(data["datalist"]), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["atlas"] == "train"


def test_train_resumes_a_run(data: dict[str, Path], tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert _train(data, run_dir, "train.total_steps=2") == 0
    header = yaml.safe_load((run_dir / "model" / "model.yaml").read_text())
    assert header["training"]["steps"] == 2
    capsys.readouterr()
    assert _train(data, run_dir, "train.total_steps=4") == 0
    assert "at step 2" in capsys.readouterr().err
    header = yaml.safe_load((run_dir / "model" / "model.yaml").read_text())
    assert header["training"]["steps"] == 4


def test_restart_sets_the_earlier_runs_logs_aside(data: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert _train(data, run_dir, "train.total_steps=20", "train.log_every=10") == 0
    earlier = json.loads((run_dir / "history.json").read_text())
    assert [int(r["step"]) for r in earlier] == [10, 20]
    argv = ["--set", "train.total_steps=10", "--set", "train.log_every=10", "--restart"]
    base = ["train", "--config", "smoke", "--set", f"train.datalist={data['datalist']}"]
    assert main([*base, *argv, "--run-dir", str(run_dir), "--quiet"]) == 0
    history = json.loads((run_dir / "history.json").read_text())
    assert [int(r["step"]) for r in history] == [10]  # the new run's alone
    (aside,) = (run_dir / "replaced").iterdir()
    assert json.loads((aside / "history.json").read_text()) == earlier
    assert list((aside / "tensorboard").iterdir())
    assert len(list((run_dir / "tensorboard").iterdir())) == 1


def test_model_yaml_records_the_train_command(data: dict[str, Path], tmp_path: Path) -> None:
    """The command in model.yaml must be the one main() ran, not the host process's argv."""
    run_dir = tmp_path / "run"
    assert _train(data, run_dir, "train.total_steps=1") == 0
    header = yaml.safe_load((run_dir / "model" / "model.yaml").read_text())
    command = header["training"]["command"]
    assert command.startswith("medrl train ") and str(run_dir) in command


# ------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_train_predict_evaluate_end_to_end(data: dict[str, Path], tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            "smoke",
            "--set",
            f"train.datalist={data['datalist']}",
            "--run-dir",
            str(run_dir),
            "--quiet",
        ]
    )
    assert code == 0
    model = run_dir / "model"
    assert (model / "model.safetensors").is_file() and (model / "model.yaml").is_file()
    assert str(model) in capsys.readouterr().out
    # The number of search levels was chosen on the (rigidly moved) training scans.
    header = yaml.safe_load((model / "model.yaml").read_text())
    means = header["training"]["search_level_validation_mean_mm"]
    assert len(means) == 2 and all(m >= 0 for m in means)
    assert header["config"]["search"]["levels"] == 1 + int(np.argmin(means))

    # --starts and the chosen levels reach the search: one estimate per level searched.
    loaded = load_model(model)
    result = search(loaded, read_image(data["test"]), num_starts=3)
    assert len(result.level_points_ras) == header["config"]["search"]["levels"]
    assert all(len(paths) == 3 for paths in result.paths_ras)

    out = tmp_path / "predictions"
    argv = ["predict", "--model", str(model), "--image", str(data["test"]), "--out", str(out)]
    assert main(argv) == 0
    written = out / "test.fcsv"
    # the landmarks, and beside them each landmark's agreement with the others' layout
    assert sorted(p.name for p in out.iterdir()) == [
        "summary.csv",
        "test.fcsv",
        "test_confidence.csv",
    ]
    header_line = (out / "test_confidence.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header_line == "name,description,residual_mm,confidence,flag,disagreement_mm,spread_mm"
    found = read_landmarks(written)
    assert found.names == BLOB_NAMES
    assert found.descriptions == ("a", "b", "c")
    assert np.isfinite(found.points_ras).all()

    # The same points, written in LPS.
    out_lps = tmp_path / "predictions_lps"
    argv = ["predict", "--model", str(model), "--image", str(data["test"]), "--out", str(out_lps)]
    assert main([*argv, "--coordinate-system", "LPS"]) == 0
    assert "LPS" in (out_lps / "test.fcsv").read_text()
    np.testing.assert_allclose(read_landmarks(out_lps / "test.fcsv").points_ras, found.points_ras)

    evaluation = tmp_path / "evaluation"
    argv = ["evaluate", "--model", str(model), "--datalist", str(data["datalist"])]
    assert main([*argv, "--rigid-trials", "1", "--out", str(evaluation)]) == 0
    overall = json.loads((evaluation / "overall.json").read_text())
    assert sorted(row["method"] for row in overall) == ["affine-baseline", "agent"]
    with open(evaluation / "overall.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert sorted(row["method"] for row in csv_rows) == ["affine-baseline", "agent"]
    for row in csv_rows:
        assert int(float(row["n"])) == len(BLOB_NAMES)  # 1 case x 1 rigid trial x 3 landmarks
        assert np.isfinite(float(row["mean_mm"]))
    # Both methods ran on the moved test scan; predictions were kept.
    assert (evaluation / "predictions" / "test_rigid0.fcsv").is_file()

    # The same with a non-affine warp of the moved scan: other truth, the warp on record.
    warped = tmp_path / "evaluation_elastic"
    assert main([*argv, "--rigid-trials", "1", "--elastic-mm", "3", "--out", str(warped)]) == 0
    record = json.loads((warped / "cases" / "test_elastic0.json").read_text())
    assert record["scan"]["elastic"] == {"elastic_mm": 3.0, "seed": 1000}
    rigid_record = json.loads((evaluation / "cases" / "test_rigid0.json").read_text())
    assert record["scan"]["rigid"] == rigid_record["scan"]["rigid"]
    shift = np.subtract(record["truth_ras"], rigid_record["truth_ras"])
    assert np.linalg.norm(shift, axis=1).min() > 0.1
    assert json.loads((warped / "summary.json").read_text())["elastic_mm"] == 3.0


# ------------------------------------------------------------------- one writer per folder
def test_a_second_train_on_a_running_run_stops_and_a_killed_run_resumes(
    data: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "medrl.cli", "train", "--config", "smoke", "--quiet"]
    sets = [f"train.datalist={data['datalist']}", "train.total_steps=1000000", "train.threads=1"]
    argv += [item for value in [*sets, "train.checkpoint_every=5"] for item in ("--set", value)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*argv, "--run-dir", str(run_dir)], env=env)
    try:
        state = run_dir / "checkpoints" / "latest" / STATE_FILE
        deadline = time.monotonic() + 180
        while not state.is_file():
            assert first.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.2)
        assert _train(data, run_dir, *sets[1:]) == 2
        err = capsys.readouterr().err
        assert str(run_dir) in err and f"run folder is being written by process {first.pid}" in err
        assert "resuming" not in err
    finally:
        first.kill()  # SIGKILL: nothing of the lock survives it
        first.wait()
    step = torch.load(state, weights_only=False)["step"]
    assert _train(data, run_dir, f"train.total_steps={step + 2}") == 0
    assert f"resuming {run_dir} at step {step}" in capsys.readouterr().err
    assert not (run_dir / LOCK_NAME).exists()


def test_predict_and_evaluate_into_a_folder_being_written_stop_and_write_nothing(
    data: dict[str, Path], trained_model: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        image = ["--image", str(data["test"])]
        assert main(["predict", "--model", str(trained_model), *image, "--out", str(out)]) == 2
        assert f"output folder is being written by process {holder.pid}" in capsys.readouterr().err
        argv = ["evaluate", "--model", str(trained_model), "--datalist", str(data["datalist"])]
        assert main([*argv, "--rigid-trials", "0", "--out", str(out)]) == 2
        assert f"output folder is being written by process {holder.pid}" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
