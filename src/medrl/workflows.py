"""Whole jobs behind the CLI commands that do more than call one function."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from medrl.agents.checkpoint import load_model
from medrl.agents.dqn import Trainer
from medrl.agents.validation import (
    has_reference_layout,
    select_consensus_level,
    select_search_levels,
)
from medrl.config import Config
from medrl.data.sources import load_split
from medrl.distributed.ddp import DistContext, init_distributed, shutdown
from medrl.errors import MedrlError
from medrl.utils.folder_lock import folder_lock


def train_model(
    config: Config, run_dir: str | Path, restart: bool, progress: bool, command: str
) -> Path | None:
    """Train (resuming the run folder's checkpoint unless ``restart``), then export the model.

    The exported model's ``search.levels`` is chosen on the training scans under random
    rigid moves (:func:`medrl.agents.validation.select_search_levels`), never on test data.

    Started by ``torchrun``, every process trains on its share of the cases and rank 0 alone
    writes logs and the model (see :mod:`medrl.distributed.ddp`), and returns its path (the
    other ranks return None).

    The run folder is locked for the whole run (:mod:`medrl.utils.folder_lock`): a second
    ``medrl train`` on it stops at once with an error naming the holder.
    """
    run_dir = Path(run_dir)
    dist = init_distributed(config.train.device)
    try:
        with _run_lock(run_dir, dist, command):
            return _train_locked(config, run_dir, restart, progress, command, dist)
    finally:
        shutdown(dist)


@contextlib.contextmanager
def _run_lock(run_dir: Path, dist: DistContext, command: str) -> Iterator[None]:
    """Rank 0 holds the run folder's lock; every rank stops if it could not take it."""
    with contextlib.ExitStack() as stack:
        error: MedrlError | None = None
        if dist.is_main:
            try:
                stack.enter_context(folder_lock(run_dir, "run folder", command))
            except MedrlError as exc:
                error = exc
        if dist.any(error is not None):
            if error is not None:
                raise error
            raise MedrlError("rank 0 could not lock the run folder (see its error)", run_dir)
        yield


def _train_locked(
    config: Config,
    run_dir: Path,
    restart: bool,
    progress: bool,
    command: str,
    dist: DistContext,
) -> Path | None:
    if restart and dist.is_main:
        _set_aside_logs(run_dir)
    trainer = Trainer(config, run_dir, command=command, dist=dist)
    if not restart and trainer.load_checkpoint() and dist.is_main:
        print(f"resuming {run_dir} at step {trainer.step}", file=sys.stderr)
    if dist.active and dist.is_main:
        print(
            f"distributed training: {dist.world_size} processes, "
            f"{config.train.num_envs} environments each",
            file=sys.stderr,
        )
        _warn_if_oversubscribed(config)
    trainer.run(progress=progress)
    model_dir = run_dir / "model"
    if dist.is_main:
        _export(trainer, config, model_dir)
    dist.barrier()  # the other ranks return once the model is there
    return model_dir if dist.is_main else None


# What a run writes as it trains (rank 0); a restart must not mix the old run's into the new.
RUN_LOGS = ("tensorboard", "history.json", "evaluations.json")


def _set_aside_logs(run_dir: Path) -> None:
    """Move an earlier run's logs to ``RUN/replaced/<UTC time>/`` before a restart."""
    found = [run_dir / name for name in RUN_LOGS if (run_dir / name).exists()]
    if not found:
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir / "replaced" / stamp
    target.mkdir(parents=True, exist_ok=True)
    for path in found:
        path.rename(target / path.name)
    print(f"--restart: the earlier run's logs are now in {target}", file=sys.stderr)


def _warn_if_oversubscribed(config: Config) -> None:
    """CPU processes x train.threads beyond the machine's cores slow every process down."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = config.train.threads or torch.get_num_threads()
    cores = os.cpu_count() or 1
    if config.train.device == "cpu" and local * threads > cores:
        print(
            f"note: {local} processes x {threads} threads on {cores} cores; "
            f"consider --set train.threads={max(1, cores // local)}",
            file=sys.stderr,
        )


def _export(trainer: Trainer, config: Config, model_dir: Path) -> None:
    trainer.save_model(model_dir)
    choose_levels = config.search.levels == 0 and len(config.env.levels) > 1
    choose_consensus = config.search.consensus_level is None and has_reference_layout(trainer.task)
    if not (choose_levels or choose_consensus):
        return
    cases = load_split(config.train.datalist, "train")
    key = trainer.task.primary_score[0]
    if choose_levels:
        levels, means = select_search_levels(load_model(model_dir), cases)
        shown = ", ".join(f"{i + 1}: {m:.2f}" for i, m in enumerate(means))
        print(
            f"validation (training scans, rigidly moved), mean {key} after each level: "
            f"{shown}; the model searches {levels} level(s)",
            file=sys.stderr,
        )
        trainer.config = replace(config, search=replace(config.search, levels=levels))
        name = "mm" if key == "error_mm" else key  # the landmark models' key stays as it was
        trainer.extra_meta[f"search_level_validation_mean_{name}"] = means
        trainer.save_model(model_dir)
    if choose_consensus:
        level, scores = select_consensus_level(load_model(model_dir), cases)
        if scores:
            shown = ", ".join(f"{k}: {v:.3f}" for k, v in scores.items())
            print(
                f"validation (training scans, rigidly moved), mean {key} by "
                f"search.consensus_level (-1: none): {shown}; the model uses {level}",
                file=sys.stderr,
            )
            trainer.extra_meta[f"consensus_level_validation_mean_{key}"] = {
                str(k): v for k, v in scores.items()
            }
        search_config = replace(trainer.config.search, consensus_level=level)
        trainer.config = replace(trainer.config, search=search_config)
        trainer.save_model(model_dir)
