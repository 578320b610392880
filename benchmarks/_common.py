"""Shared set-up for the benchmarks: the built-in training template and a timing helper."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from medrl.config import Config, load_config
from medrl.data.sources import load_split
from medrl.envs.pyramid import ScanPyramid, case_pyramids
from medrl.tasks.landmark import landmark_table


def afids_preset(device: str, *overrides: str) -> Config:
    """The shipped ``afids`` preset (what `make demo` trains) on ``device``, with overrides."""
    preset = Path(str(resources.files("medrl") / "configs" / "afids.yaml"))
    return load_config(preset, [f"train.device={device}", *overrides])


def builtin_training_scans(config: Config) -> tuple[list[ScanPyramid], list, tuple[str, ...]]:
    """The MNI152NLin2009cAsym scans as the environment sees them (run `medrl data fetch afids`)."""
    cases = load_split("builtin:afids", "train")
    table = landmark_table(cases)
    names, targets = table.names, table.poses
    spacings = [lv.spacing_mm for lv in config.env.levels]
    # as training builds them: T1w and T2w are each other's siblings (augment.contrast_mix)
    return case_pyramids(cases, spacings), targets, names


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def collect_and_learn_seconds(config: Config, repeats: int) -> tuple[float, float]:
    """Median seconds of one batched env step (``collect``) and of one update (``learn``)
    on the built-in training scans, after 40 steps that fill the replay."""
    from medrl.agents.dqn import Trainer

    config = config.with_overrides(["agent.learning_starts=0"])
    scans, targets, names = builtin_training_scans(config)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            config, run_dir, scans=scans, targets=targets, names=names, descriptions=names
        )
        for _ in range(40):
            trainer.collect()
        collect = median_seconds(trainer.collect, repeats=repeats)
        learn = median_seconds(trainer.learn, repeats=repeats)
    return collect, learn
