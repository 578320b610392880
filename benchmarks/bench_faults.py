"""Faults survived: kill -9 at random moments of `medrl train` and `medrl predict`, SIGTERM,
and a full disk, on the built-in data; prints the table of BENCHMARKS.md ("Faults survived").

    PYTHONPATH=. python -m benchmarks.bench_faults [--kills 6] [--seed 0]

Training runs the `smoke` preset on the built-in datalist (checkpoint every 5 steps); the
moments are drawn from those an uninterrupted run passes (``MEDRL_FAILPOINTS_LOG``, see
:mod:`medrl.utils.faults`). A kill "loses" the steps done since the checkpoint the rerun
resumes from; the rerun must end with weights bit-identical to the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from medrl.data.sources import resolve_datalist
from medrl.models import default_model_dir
from medrl.utils.atomic import TEMP_PREFIX
from medrl.utils.faults import ENV, LOG_ENV

STEPS, EVERY = 30, 5


def run(args: list[str], env: dict[str, str] | None = None, **kwargs) -> tuple[int, str]:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "medrl.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        **kwargs,
    )
    return done.returncode, done.stderr


def train_args(run_dir: Path, steps: int = STEPS) -> list[str]:
    sets = [f"train.total_steps={steps}", f"train.checkpoint_every={EVERY}", "train.threads=1"]
    args = ["train", "--config", "smoke", "--run-dir", str(run_dir), "--quiet"]
    return args + [item for value in sets for item in ("--set", value)]


def whole(folder: Path) -> bool:
    """Every checkpoint, model and log under its final name loads."""
    try:
        for state in folder.rglob("trainer_state.pt"):
            if TEMP_PREFIX not in str(state):
                torch.load(state, weights_only=False)
        for model in folder.rglob("model.safetensors"):
            if TEMP_PREFIX not in str(model):
                load_file(model)
        for log in folder.glob("*.json"):
            json.loads(log.read_text())
        for table in folder.glob("*.fcsv"):
            if not table.name.startswith(TEMP_PREFIX) and not table.read_text().strip():
                return False
    except Exception:  # anything that does not load is half-written
        return False
    return True


def kept_step(run_dir: Path) -> int:
    state = run_dir / "checkpoints" / "latest" / "trainer_state.pt"
    return torch.load(state, weights_only=False)["step"] if state.exists() else 0


def train_kills(work: Path, kills: int, seed: int) -> list[dict]:
    reference = work / "reference"
    log = work / "moments.log"
    code, err = run(train_args(reference), {LOG_ENV: str(log)})
    assert code == 0, err
    weights = load_file(reference / "model" / "model.safetensors")
    moments = log.read_text().split()
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(moments), size=kills, replace=False))
    chosen[-1] = len(moments) - 1  # always the export of the final model
    rows = []
    for index in chosen:
        name, nth = moments[index], moments[: index + 1].count(moments[index])
        steps_done = moments[: index + 1].count("train-step")
        run_dir = work / f"kill{index}"
        code, err = run(train_args(run_dir), {ENV: f"{name}:{nth}"})
        assert code == -signal.SIGKILL, err
        half = not whole(run_dir)
        kept = kept_step(run_dir)
        code, err = run(train_args(run_dir))
        assert code == 0, err
        final = load_file(run_dir / "model" / "model.safetensors")
        rows.append(
            {
                "moment": f"{name} #{nth} (step {steps_done})",
                "lost_steps": steps_done - kept,
                "half_written": half,
                "identical": all(torch.equal(final[k], v) for k, v in weights.items()),
                "leftovers": bool(list(run_dir.rglob(f"{TEMP_PREFIX}*"))),
            }
        )
    return rows


def predict_kills(work: Path, kills: int, seed: int) -> list[dict]:
    scans = work / "scans"
    scans.mkdir()
    image = next(c.image for c in resolve_datalist("builtin:afids") if c.split == "test")
    for index in range(4):
        shutil.copy(image, scans / f"scan{index}.nii.gz")
    model = default_model_dir("landmark")
    rows = []
    rng = np.random.default_rng(seed)
    for nth in sorted(rng.choice(np.arange(1, 5), size=min(kills, 4), replace=False)):
        out = work / f"predict{nth}"
        args = ["predict", "--model", str(model), "--input-dir", str(scans), "--out", str(out)]
        code, err = run(args, {ENV: f"atomic-replace:{nth}"})
        assert code == -signal.SIGKILL, err
        half = not whole(out)
        code, err = run(args)
        assert code == 0, err
        summary = (out / "summary.csv").read_text().splitlines()
        redone = sum(",ok," in line for line in summary[1:]) - (4 - nth + 1)
        rows.append(
            {
                "moment": f"writing output {nth} of 4 (finished scans redone: {redone})",
                "lost_steps": redone,
                "half_written": half,
                "identical": len(summary) == 5,
                "leftovers": bool(list(out.rglob(f"{TEMP_PREFIX}*"))),
            }
        )
    return rows


def sigterm_train(work: Path) -> dict:
    run_dir = work / "sigterm"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "medrl.cli", *train_args(run_dir, steps=10**6)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (run_dir / "checkpoints" / "latest").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    stopped = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    return {
        "moment": f"SIGTERM (exit {process.returncode})",
        "lost_steps": stopped - kept_step(run_dir),
        "half_written": not whole(run_dir),
        "identical": None,
        "leftovers": bool(list(run_dir.rglob(f"{TEMP_PREFIX}*"))),
    }


def full_disk(work: Path) -> dict:
    run_dir = work / "full"
    code, err = run(train_args(run_dir, steps=EVERY))
    assert code == 0, err
    before = (run_dir / "checkpoints" / "latest" / "trainer_state.pt").read_bytes()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    code, err = run(train_args(run_dir, steps=3 * EVERY), preexec_fn=limit)
    after = (run_dir / "checkpoints" / "latest" / "trainer_state.pt").read_bytes()
    message = err.strip().splitlines()[-1] if err.strip() else ""
    return {
        "moment": f"file-size limit 16 kB (exit {code}: {message[:60]}...)",
        "lost_steps": None,
        "half_written": not whole(run_dir),
        "identical": before == after,
        "leftovers": bool(list(run_dir.rglob(f"{TEMP_PREFIX}*"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sections = {
            "kill -9 during `medrl train`": train_kills(work, args.kills, args.seed),
            "kill -9 during `medrl predict` (4 scans)": predict_kills(work, 2, args.seed),
            "`medrl train`, SIGTERM": [sigterm_train(work)],
            "`medrl train`, full disk at a checkpoint": [full_disk(work)],
        }
    print("| fault | moment | steps lost | half-written | resumed identical | leftovers |")
    print("|---|---|---:|---|---|---|")
    for fault, rows in sections.items():
        for row in rows:
            print(
                f"| {fault} | {row['moment']} | {row['lost_steps']} | "
                f"{'yes' if row['half_written'] else 'no'} | {row['identical']} | "
                f"{'yes' if row['leftovers'] else 'no'} |"
            )


if __name__ == "__main__":
    main()
