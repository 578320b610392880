"""Gymnasium wrappers over the batched kernel: ``TaskEnv`` (one slot) and ``TaskVectorEnv``.

Both share the kernel's code path, so a vector environment with seed ``s`` and single
environments with seeds ``s, s+1, ...`` produce the same episodes step by step. The vector
environment uses Gymnasium's next-step autoreset: the step after an episode ends resets that
slot (its action is ignored, reward 0, not done). The spaces come from the task (its number
of actions and pose features) and the environment config. ``LandmarkEnv`` and
``LandmarkVectorEnv`` build them for landmarks from plain (L, 3) target arrays.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from medrl.config import AugmentConfig, EnvConfig
from medrl.envs.kernel import SearchKernel
from medrl.envs.landmark import landmark_task, target_table
from medrl.envs.pyramid import ScanPyramid
from medrl.tasks.base import TargetTable, Task


def observation_space(task: Task, config: EnvConfig, num_targets: int) -> gym.spaces.Dict:
    p = config.patch_size
    spaces: dict[str, gym.spaces.Space] = {
        "patch": gym.spaces.Box(
            -np.inf, np.inf, (config.frames * task.num_channels, p, p, p), np.float32
        ),
        "target": gym.spaces.Discrete(num_targets),
        "level": gym.spaces.Discrete(len(config.levels)),
        "actions": gym.spaces.Box(
            0.0, 1.0, (config.action_history * task.num_actions,), np.float32
        ),
    }
    if task.pose_features:
        spaces["pose"] = gym.spaces.Box(-np.inf, np.inf, (task.pose_features,), np.float32)
    return gym.spaces.Dict(spaces)


def _to_numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        key: value.cpu().numpy().astype(np.int64 if key in ("target", "level") else np.float32)
        for key, value in obs.items()
    }


def _info(kernel: SearchKernel, extra: dict[str, torch.Tensor] | None = None) -> dict:
    info = {key: value.cpu().numpy().copy() for key, value in (extra or {}).items()}
    info["distance"] = kernel.distance().cpu().numpy().copy()
    info["pose"] = kernel.pose.cpu().numpy().copy()
    return info


class TaskEnv(gym.Env):
    """A single search environment of any task: the kernel with one slot."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        task: Task,
        scans: list[ScanPyramid],
        table: TargetTable,
        augment_config: AugmentConfig | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = task.config.env
        self.kernel = SearchKernel(
            task, scans, table, self.config, augment_config or AugmentConfig(), 1, device
        )
        self.observation_space = observation_space(task, self.config, self.kernel.num_targets)
        self.action_space = gym.spaces.Discrete(task.num_actions)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.kernel.seed([seed])
        self.kernel.reset(options=options)
        obs = _to_numpy(self.kernel.observe())
        return {k: v[0] for k, v in obs.items()}, {k: v[0] for k, v in _info(self.kernel).items()}

    def step(self, action):
        reward, terminated, truncated, extra = self.kernel.step(torch.tensor([int(action)]))
        obs = _to_numpy(self.kernel.observe())
        info = {k: v[0] for k, v in _info(self.kernel, extra).items()}
        return (
            {k: v[0] for k, v in obs.items()},
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            info,
        )


class TaskVectorEnv(VectorEnv):
    """Many search environments of one task in one batched kernel (next-step autoreset)."""

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        task: Task,
        scans: list[ScanPyramid],
        table: TargetTable,
        num_envs: int,
        augment_config: AugmentConfig | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = task.config.env
        self.num_envs = num_envs
        self.kernel = SearchKernel(
            task, scans, table, self.config, augment_config or AugmentConfig(), num_envs, device
        )
        self.single_observation_space = observation_space(
            task, self.config, self.kernel.num_targets
        )
        self.single_action_space = gym.spaces.Discrete(task.num_actions)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is not None:
            seeds = seed if isinstance(seed, list) else [seed + i for i in range(self.num_envs)]
            self.kernel.seed(seeds)
        self.kernel.reset(options=options)
        self._autoreset[:] = False
        return _to_numpy(self.kernel.observe()), _info(self.kernel)

    def step(self, actions):
        actions = torch.as_tensor(np.asarray(actions), dtype=torch.long)
        reward, terminated, truncated, extra = self.kernel.step(actions)
        reward_np = reward.cpu().numpy().astype(np.float64)
        terminated_np = terminated.cpu().numpy()
        truncated_np = truncated.cpu().numpy()
        if self._autoreset.any():
            # Slots whose episode ended last step start afresh; their step is ignored. The
            # kernel moved them anyway, which is harmless: reset overwrites the whole slot.
            self.kernel.reset(self._autoreset)
            restarted = torch.as_tensor(self._autoreset)
            extra["oscillating"] = extra["oscillating"] & ~restarted
            extra["inside"] = extra["inside"] | restarted
            reward_np[self._autoreset] = 0.0
            terminated_np[self._autoreset] = False
            truncated_np[self._autoreset] = False
        self._autoreset = terminated_np | truncated_np
        obs = _to_numpy(self.kernel.observe())
        return obs, reward_np, terminated_np, truncated_np, _info(self.kernel, extra)


class LandmarkEnv(TaskEnv):
    """The landmark task's single environment, from per-scan (L, 3) RAS targets."""

    def __init__(
        self,
        scans: list[ScanPyramid],
        targets_ras: list[np.ndarray],
        env_config: EnvConfig | None = None,
        augment_config: AugmentConfig | None = None,
        device: str = "cpu",
    ) -> None:
        task = landmark_task(env_config or EnvConfig())
        super().__init__(task, scans, target_table(targets_ras), augment_config, device)


class LandmarkVectorEnv(TaskVectorEnv):
    """The landmark task's vector environment, from per-scan (L, 3) RAS targets."""

    def __init__(
        self,
        scans: list[ScanPyramid],
        targets_ras: list[np.ndarray],
        num_envs: int,
        env_config: EnvConfig | None = None,
        augment_config: AugmentConfig | None = None,
        device: str = "cpu",
    ) -> None:
        task = landmark_task(env_config or EnvConfig())
        super().__init__(task, scans, target_table(targets_ras), num_envs, augment_config, device)
