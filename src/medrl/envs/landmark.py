"""The landmark environment: the task-agnostic kernel with the landmark task.

Kept as a convenience for code that builds a landmark environment from plain target arrays;
everything it does lives in :mod:`medrl.envs.kernel` and :mod:`medrl.tasks.landmark`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from medrl.config import AugmentConfig, Config, EnvConfig, TaskConfig
from medrl.envs.kernel import SearchKernel
from medrl.envs.pyramid import ScanPyramid
from medrl.tasks.base import TargetTable
from medrl.tasks.landmark import ACTION_NAMES, LandmarkTask, action_vectors

NUM_ACTIONS = len(ACTION_NAMES)

__all__ = ["ACTION_NAMES", "NUM_ACTIONS", "LandmarkKernel", "action_vectors", "landmark_task"]


def landmark_task(env_config: EnvConfig) -> LandmarkTask:
    return LandmarkTask(replace(Config(), task=TaskConfig(kind="landmark"), env=env_config))


def target_table(targets_ras: list[np.ndarray]) -> TargetTable:
    """A table of unnamed landmarks from per-scan (L, 3) arrays."""
    count = int(targets_ras[0].shape[0])
    names = tuple(f"L{i}" for i in range(count))
    poses = [np.asarray(t, dtype=np.float64) for t in targets_ras]
    return TargetTable(names, names, poses)


class LandmarkKernel(SearchKernel):
    """Batched landmark-search episodes over scans with per-scan (L, 3) RAS targets."""

    def __init__(
        self,
        scans: list[ScanPyramid],
        targets_ras: list[np.ndarray],
        env_config: EnvConfig,
        augment_config: AugmentConfig,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(
            landmark_task(env_config),
            scans,
            target_table(targets_ras),
            env_config,
            augment_config,
            num_envs,
            device,
            seed,
        )
