"""`medrl train` under torchrun: two CPU processes (gloo) that must stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import medrl
from _synthetic import BLOB_NAMES, blob_volume
from medrl.agents.checkpoint import load_model
from medrl.distributed.ddp import (
    SINGLE,
    DistContext,
    context_from_env,
    init_distributed,
    launched_by_torchrun,
    rank_device,
)
from medrl.errors import CheckpointError, InputError
from medrl.io.images import write_image
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.utils.faults import ENV
from test_folder_lock import hold_lock

SRC = Path(medrl.__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ------------------------------------------------------------------ without processes
def test_shard_deals_cases_round_robin_or_keeps_all() -> None:
    assert DistContext(0, 2).shard(5) == [0, 2, 4]
    assert DistContext(1, 2).shard(5) == [1, 3]
    assert DistContext(1, 4).shard(2) == [0, 1]  # fewer cases than ranks: split by episode
    assert SINGLE.shard(3) == [0, 1, 2]


def test_single_process_context_makes_no_collective_calls() -> None:
    net = torch.nn.Linear(3, 2)
    net(torch.ones(1, 3)).sum().backward()
    before = [p.grad.clone() for p in net.parameters()]
    SINGLE.average_gradients(net.parameters())
    SINGLE.broadcast_parameters(net)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, net.parameters(), strict=True))
    assert SINGLE.any(True) and not SINGLE.any(False) and SINGLE.all(True)
    assert SINGLE.same_everywhere(7)


def test_environment_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    assert init_distributed("cpu") is SINGLE
    values = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    values.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert launched_by_torchrun()
    ctx = context_from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (1, 2, 1, False)
    assert rank_device("cuda", ctx) == "cuda:1" and rank_device("cpu", ctx) == "cpu"
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match="not within"):
        context_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="torchrun"):
        context_from_env()


# ------------------------------------------------------------------ two gloo processes
@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    """Two training scans (one per rank) and a validation scan, each with its own blobs."""
    folder = tmp_path_factory.mktemp("ddp_data")
    cases = []
    for index, (name, split) in enumerate([("a", "train"), ("b", "train"), ("v", "val")]):
        _, blobs = blob_volume()
        volume, blobs = blob_volume(
            blobs_ras=blobs + index * np.array([2.0, -1.0, 1.5]), seed=index
        )
        write_image(volume, folder / f"{name}.nii.gz")
        write_landmarks(Landmarks(BLOB_NAMES, blobs, ("x", "y", "z")), folder / f"{name}.fcsv")
        cases.append(
            {"id": name, "image": f"{name}.nii.gz", "landmarks": f"{name}.fcsv", "split": split}
        )
    path = folder / "datalist.json"
    path.write_text(json.dumps({"cases": cases}))
    return path


def _torchrun(
    datalist: Path,
    run_dir: Path,
    *overrides: str,
    expect_ok: bool = True,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    sets = [item for value in overrides for item in ("--set", value)]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medrl.cli",
        "train",
        "--config",
        "smoke",
        "--set",
        f"train.datalist={datalist}",
        "--set",
        "train.threads=1",
        *sets,
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **(extra_env or {}))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert (done.returncode == 0) == expect_ok, done.stderr[-3000:]
    return done


def _rank_states(run_dir: Path) -> list[dict]:
    folders = [run_dir / "checkpoints" / "latest", run_dir / "checkpoints" / "latest-rank1"]
    return [torch.load(f / "trainer_state.pt", weights_only=False) for f in folders]


def _assert_in_sync(states: list[dict]) -> None:
    first, second = states
    assert first["step"] == second["step"] and first["updates"] == second["updates"] > 0
    for part in ("network", "target"):
        for name, value in first[part].items():
            assert torch.equal(second[part][name], value), f"{part} {name} differs between ranks"
    for key, slot in first["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(second["optimizer"]["state"][key][name], slot[name]), name
    # ... while the ranks ran different episodes (their own seeds and scans).
    assert not np.array_equal(
        first["kernel"]["slots"]["episode_seed"], second["kernel"]["slots"]["episode_seed"]
    )


@pytest.mark.slow
def test_torchrun_two_processes_stay_in_sync_and_resume(datalist: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _torchrun(datalist, run_dir, "train.total_steps=20", "train.eval_every=10")
    assert "distributed training: 2 processes" in done.stderr
    assert done.stdout.splitlines() == [str(run_dir / "model")]  # rank 0 alone speaks
    states = _rank_states(run_dir)
    assert states[0]["step"] == 20 and states[0]["world_size"] == 2
    _assert_in_sync(states)
    # Rank 0 wrote the model, the logs and the validation curve; rank 1 only its state.
    model = load_model(run_dir / "model")
    assert model.meta["processes"] == 2
    for name, value in model.network.state_dict().items():
        assert torch.equal(value, states[0]["network"][name]), name
    assert (run_dir / "history.json").is_file() and (run_dir / "tensorboard").is_dir()
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    assert [e["step"] for e in evaluations] == [10, 20]
    assert not (run_dir / "checkpoints" / "latest-rank1" / "model.safetensors").exists()

    # Resume, with a time limit the ranks reach at different moments: they must agree on
    # the step to stop at (else one would wait forever for the other's gradients).
    done = _torchrun(datalist, run_dir, "train.total_steps=100000", "train.max_minutes=0.04")
    assert "at step 20" in done.stderr and "time limit" in done.stderr
    resumed = _rank_states(run_dir)
    assert 20 < resumed[0]["step"] < 100000
    _assert_in_sync(resumed)

    # A single process cannot continue the two processes' run.
    from medrl.agents.dqn import Trainer
    from medrl.config import load_config

    config = load_config(
        Path(medrl.__file__).parent / "configs" / "smoke.yaml", [f"train.datalist={datalist}"]
    )
    with pytest.raises(CheckpointError, match="2 process"):
        Trainer(config, run_dir).load_checkpoint()

    # Only rank 1's checkpoint is unreadable: both ranks must stop with the error (rank 0
    # must not be left waiting for rank 1 in the next collective call).
    (run_dir / "checkpoints" / "latest-rank1" / "trainer_state.pt").write_bytes(b"garbage")
    done = _torchrun(datalist, run_dir, "train.total_steps=100000", expect_ok=False)
    assert "cannot resume from this checkpoint" in done.stderr
    assert "another process could not resume" in done.stderr

    # The run folder is being written by another process: every rank stops at once.
    holder = hold_lock(run_dir)
    try:
        done = _torchrun(datalist, run_dir, "train.total_steps=100000", expect_ok=False)
    finally:
        holder.kill()
        holder.wait()
    assert f"run folder is being written by process {holder.pid}" in done.stderr
    assert "rank 0 could not lock the run folder" in done.stderr


@pytest.mark.slow
def test_torchrun_one_rank_killed_stops_the_other_and_the_run_resumes(
    datalist: Path, tmp_path: Path
) -> None:
    """kill -9 of rank 1 in its 12th step: rank 0 must not hang in its next collective call;
    both ranks' checkpoints of step 10 remain, and the rerun resumes from them."""
    run_dir = tmp_path / "run"
    started = time.monotonic()
    sets = ("train.total_steps=20", "train.checkpoint_every=5")
    done = _torchrun(datalist, run_dir, *sets, expect_ok=False, extra_env={ENV: "train-step:12@1"})
    assert time.monotonic() - started < 180
    assert "SIGKILL" in done.stderr
    assert [state["step"] for state in _rank_states(run_dir)] == [10, 10]
    done = _torchrun(datalist, run_dir, *sets)
    assert "at step 10" in done.stderr
    _assert_in_sync(_rank_states(run_dir))
