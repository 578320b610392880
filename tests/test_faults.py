"""Fault injection: every command that writes survives kill -9, SIGTERM and a full disk.

Each fault runs ``medrl`` in a subprocess. ``kill -9`` is injected at moments drawn at random
(seeded) from the moments a clean run passes (:mod:`medrl.utils.faults`: environment steps,
gradient steps, and every atomic replacement of a checkpoint, model, prediction or summary).
After the fault, nothing under a final name may be half-written, and the rerun of the same
command must finish what was left, as if nothing had happened: for training, with final
weights bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _synthetic import BLOB_NAMES, blob_volume, write_untrained_model
from medrl.agents.trainer_checkpoint import STATE_FILE
from medrl.io.images import write_image
from medrl.io.landmarks import Landmarks, read_landmarks, write_landmarks
from medrl.utils.atomic import TEMP_PREFIX
from medrl.utils.faults import ENV, LOG_ENV
from medrl.utils.folder_lock import LOCK_NAME

SRC = Path(__file__).resolve().parents[1] / "src"
TRAIN_STEPS = 24
CHECKPOINT_EVERY = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A datalist (one training case, five test cases) and the folder of the test scans."""
    folder = tmp_path_factory.mktemp("faults")
    volume, blobs = blob_volume(seed=0)
    write_image(volume, folder / "train.nii.gz")
    write_landmarks(Landmarks(BLOB_NAMES, blobs, ("a", "b", "c")), folder / "train.fcsv")
    cases = [{"id": "train", "image": "train.nii.gz", "landmarks": "train.fcsv", "split": "train"}]
    scans = folder / "scans"
    for index in range(5):
        shifted, _ = blob_volume(blobs_ras=blobs + index, seed=10 + index)
        write_image(shifted, scans / f"scan{index}.nii.gz")
        names = ("a", "b", "c")
        write_landmarks(Landmarks(BLOB_NAMES, blobs + index, names), folder / f"test{index}.fcsv")
        image, points = f"scans/scan{index}.nii.gz", f"test{index}.fcsv"
        cases.append({"id": f"test{index}", "image": image, "landmarks": points, "split": "test"})
    (folder / "datalist.json").write_text(json.dumps({"cases": cases}))
    return {"datalist": folder / "datalist.json", "scans": scans}


def medrl(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "medrl.cli", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def train_args(data: dict[str, Path], run_dir: Path, steps: int = TRAIN_STEPS) -> list[str]:
    sets = [
        f"train.datalist={data['datalist']}",
        f"train.total_steps={steps}",
        f"train.checkpoint_every={CHECKPOINT_EVERY}",
        "train.threads=1",
    ]
    args = ["train", "--config", "smoke", "--run-dir", str(run_dir), "--quiet"]
    return args + [item for value in sets for item in ("--set", value)]


def outputs(folder: Path) -> list[Path]:
    """The predictions under their final names (not the temporaries of a killed writer)."""
    return sorted(p for p in folder.glob("*.fcsv") if not p.name.startswith(TEMP_PREFIX))


def leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob(f"{TEMP_PREFIX}*"))


def assert_nothing_half_written(run_dir: Path) -> None:
    """Every file under its final name is whole: checkpoints, the model, the logs."""
    checkpoint = run_dir / "checkpoints" / "latest"
    if checkpoint.exists():
        torch.load(checkpoint / STATE_FILE, weights_only=False)
        np.load(checkpoint / "replay.npz")
        load_file(checkpoint / "model.safetensors")
    if (run_dir / "model").exists():
        load_file(run_dir / "model" / "model.safetensors")
    if (run_dir / "history.json").exists():
        json.loads((run_dir / "history.json").read_text())


def checkpoint_step(run_dir: Path) -> int:
    state = run_dir / "checkpoints" / "latest" / STATE_FILE
    return torch.load(state, weights_only=False)["step"] if state.exists() else 0


@pytest.fixture(scope="module")
def reference(data: dict[str, Path], tmp_path_factory) -> dict:
    """An uninterrupted run: its final weights and the failpoints it passed, in order."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    log = run_dir.parent / "failpoints.log"
    code, err = finish(medrl(*train_args(data, run_dir), env={LOG_ENV: str(log)}))
    assert code == 0, err
    return {
        "weights": load_file(run_dir / "model" / "model.safetensors"),
        "moments": log.read_text().split(),
    }


def injection_points(moments: list[str], count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` moments of a run drawn at random: (failpoint, how many passes of it)."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(moments), size=count, replace=False))
    return [(moments[i], moments[: i + 1].count(moments[i])) for i in chosen]


def kill_train_and_resume(data: dict[str, Path], reference: dict, run_dir: Path, point) -> int:
    name, nth = point
    code, err = finish(medrl(*train_args(data, run_dir), env={ENV: f"{name}:{nth}"}))
    assert code == -signal.SIGKILL, f"{name}:{nth} did not fire: {err[-2000:]}"
    assert_nothing_half_written(run_dir)
    kept = checkpoint_step(run_dir)
    if name == "train-step":  # killed during step nth: at most one interval is lost
        assert kept >= nth - CHECKPOINT_EVERY, (kept, nth)
    code, err = finish(medrl(*train_args(data, run_dir)))
    assert code == 0, err
    if kept:
        assert f"at step {kept}" in err
    weights = load_file(run_dir / "model" / "model.safetensors")
    assert weights.keys() == reference["weights"].keys()
    for key, value in reference["weights"].items():
        assert torch.equal(weights[key], value), f"{name}:{nth}: {key} differs"
    assert not leftovers(run_dir) and not (run_dir / LOCK_NAME).exists()
    return kept


def test_kill_9_during_training_loses_at_most_one_interval_and_resumes_bit_identically(
    data: dict[str, Path], reference: dict, tmp_path: Path
) -> None:
    moments = reference["moments"]
    assert {"train-step", "train-learn", "atomic-replace"} <= set(moments)
    # Two random moments, plus the export of the final model (the last replacement).
    points = injection_points(moments, 2, seed=0)
    points.append(("atomic-replace", moments.count("atomic-replace")))
    for index, point in enumerate(points):
        kill_train_and_resume(data, reference, tmp_path / f"run{index}", point)


@pytest.mark.slow
def test_kill_9_at_many_random_moments_of_training(
    data: dict[str, Path], reference: dict, tmp_path: Path
) -> None:
    for index, point in enumerate(injection_points(reference["moments"], 4, seed=1)):
        kill_train_and_resume(data, reference, tmp_path / f"run{index}", point)


def test_sigterm_stops_training_with_a_checkpoint_of_the_step_it_stopped_at(
    data: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    process = medrl(*train_args(data, run_dir, steps=1_000_000))
    state = run_dir / "checkpoints" / "latest" / STATE_FILE
    deadline = time.monotonic() + 180
    while not state.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    code, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert checkpoint_step(run_dir) == stopped_at >= CHECKPOINT_EVERY
    assert_nothing_half_written(run_dir)
    assert not leftovers(run_dir) and not (run_dir / "model").exists()


def predict_args(data: dict[str, Path], model: Path, out: Path) -> list[str]:
    return ["predict", "--model", str(model), "--input-dir", str(data["scans"]), "--out", str(out)]


def summary_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained landmark model of the blobs (predictions need no accuracy here)."""
    return write_untrained_model(tmp_path_factory.mktemp("model"))


def test_kill_9_during_batch_predict_leaves_whole_files_and_the_rerun_completes(
    data: dict[str, Path], model: Path, tmp_path: Path
) -> None:
    scans = sorted(p.name.removesuffix(".nii.gz") for p in data["scans"].iterdir())
    rng = np.random.default_rng(2)
    for trial, nth in enumerate(sorted(rng.choice(np.arange(1, len(scans) + 1), 2, False))):
        out = tmp_path / f"out{trial}"
        killed = medrl(*predict_args(data, model, out), env={ENV: f"atomic-replace:{nth}"})
        code, err = finish(killed)
        assert code == -signal.SIGKILL, err
        written = outputs(out)
        assert len(written) == nth - 1  # the nth output was being written: it is not there
        for path in written:
            assert read_landmarks(path).names == BLOB_NAMES
        code, err = finish(medrl(*predict_args(data, model, out)))
        assert code == 0, err
        rows = summary_rows(out)
        assert sorted(row["scan"].removesuffix(".nii.gz") for row in rows) == scans
        statuses = [row["status"] for row in rows]
        assert statuses.count("skipped") == nth - 1 and statuses.count("ok") == len(scans) - nth + 1
        assert not leftovers(out) and not (out / LOCK_NAME).exists()


def test_sigterm_during_batch_predict_writes_the_summary_of_what_was_done(
    data: dict[str, Path], model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    process = medrl(*predict_args(data, model, out))
    deadline = time.monotonic() + 120
    while not outputs(out):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    code, err = finish(process)
    if code == 0:  # the batch was already done: nothing to check but the summary
        assert len(summary_rows(out)) == 5
        return
    assert code == 128 + signal.SIGTERM, err
    done = {row["scan"] for row in summary_rows(out)}
    assert done and done == {p.name.replace(".fcsv", ".nii.gz") for p in outputs(out)}
    assert not leftovers(out)


def test_kill_9_during_evaluate_leaves_whole_files_and_the_rerun_completes(
    data: dict[str, Path], model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "evaluation"
    args = ["evaluate", "--model", str(model), "--datalist", str(data["datalist"])]
    args += ["--atlas", str(data["datalist"]), "--rigid-trials", "0", "--out", str(out)]
    nth = int(np.random.default_rng(3).integers(3, 8))  # after at least one finished scan
    code, err = finish(medrl(*args, env={ENV: f"atomic-replace:{nth}"}))
    assert code == -signal.SIGKILL, err
    for path in out.rglob("*.json"):
        if not path.name.startswith(TEMP_PREFIX):
            json.loads(path.read_text())  # whole
    assert not (out / "summary.json").exists()
    finished = len(list((out / "cases").glob("test*.json")))
    code, err = finish(medrl(*args))
    assert code == 0, err
    assert err.count("done earlier, kept") == finished > 0  # finished scans are not redone
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cases"]) == 5
    assert not leftovers(out) and not (out / LOCK_NAME).exists()
    # The tables equal an uninterrupted run's (but for the measured times).
    straight = tmp_path / "straight"
    code, err = finish(medrl(*args[:-1], str(straight)))
    assert code == 0, err
    for name in ("errors.csv", "errors.json", "per_landmark.csv", "per_landmark.json"):
        assert (out / name).read_text() == (straight / name).read_text(), name


def _file_size_limit(limit_bytes: int):
    def apply() -> None:  # in the child: EFBIG errors instead of the default SIGXFSZ kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_survives(
    data: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    code, err = finish(medrl(*train_args(data, run_dir, steps=CHECKPOINT_EVERY)))
    assert code == 0, err
    before = (run_dir / "checkpoints" / "latest" / STATE_FILE).read_bytes()
    # The disk "fills up": no file may grow beyond 16 kB (the replay alone is larger).
    process = medrl(
        *train_args(data, run_dir, steps=3 * CHECKPOINT_EVERY),
        preexec_fn=_file_size_limit(16_000),
    )
    code, err = finish(process)
    assert code == 2, err
    assert "medrl: error:" in err and "cannot write (File too large)" in err
    assert str(run_dir / "checkpoints" / "latest") in err
    assert (run_dir / "checkpoints" / "latest" / STATE_FILE).read_bytes() == before
    assert_nothing_half_written(run_dir)
    assert not leftovers(run_dir)


def read_only(folder: Path, command: list[str]) -> list[str]:
    """``command`` run where ``folder`` is read-only: a read-only bind mount in a private mount
    namespace when root (root writes through permissions), else the folder's permissions."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount --bind {folder} {folder}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("running as root without mount namespaces: no read-only folder possible")
    script = (
        f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && exec "$@"'
    )
    return ["unshare", "--mount", "sh", "-c", script, "sh", *command]


def test_a_read_only_folder_is_a_clear_error_and_the_previous_checkpoint_survives(
    data: dict[str, Path], model: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "medrl.cli"]
    # Training resumes, but its checkpoint folder cannot be written.
    run_dir = tmp_path / "run"
    code, err = finish(medrl(*train_args(data, run_dir, steps=CHECKPOINT_EVERY)))
    assert code == 0, err
    latest = run_dir / "checkpoints" / "latest"
    before = (latest / STATE_FILE).read_bytes()
    command = read_only(run_dir / "checkpoints", [*cli, *train_args(data, run_dir, steps=10)])
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, encoding="utf-8", timeout=240
    )
    assert done.returncode == 2, done.stderr
    assert f"medrl: error: {latest}: cannot write (Read-only file system" in done.stderr or (
        os.geteuid() != 0 and "Permission denied" in done.stderr
    )
    (run_dir / "checkpoints").chmod(0o755)
    assert (latest / STATE_FILE).read_bytes() == before
    assert_nothing_half_written(run_dir)
    # Predictions into a read-only folder: refused before any scan is searched.
    out = tmp_path / "out"
    out.mkdir()
    command = read_only(out, [*cli, *predict_args(data, model, out)])
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, encoding="utf-8", timeout=240
    )
    out.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert f"medrl: error: {out}: cannot lock the output folder" in done.stderr
    assert not list(out.iterdir())
