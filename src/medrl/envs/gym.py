"""Gymnasium wrappers over the batched kernel: ``LandmarkEnv`` (one slot) and ``LandmarkVectorEnv``.

Both share the kernel's code path, so a vector environment with seed ``s`` and single
environments with seeds ``s, s+1, ...`` produce the same episodes step by step. The vector
environment uses Gymnasium's next-step autoreset: the step after an episode ends resets that
slot (its action is ignored, reward 0, not done).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from medrl.config import AugmentConfig, EnvConfig
from medrl.envs.landmark import NUM_ACTIONS, LandmarkKernel
from medrl.envs.pyramid import ScanPyramid


def observation_space(config: EnvConfig, num_landmarks: int) -> gym.spaces.Dict:
    p = config.patch_size
    return gym.spaces.Dict(
        {
            "patch": gym.spaces.Box(-np.inf, np.inf, (config.frames, p, p, p), np.float32),
            "landmark": gym.spaces.Discrete(num_landmarks),
            "level": gym.spaces.Discrete(len(config.levels)),
            "actions": gym.spaces.Box(0.0, 1.0, (config.action_history * NUM_ACTIONS,), np.float32),
        }
    )


def _to_numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        "patch": obs["patch"].cpu().numpy().astype(np.float32),
        "landmark": obs["landmark"].cpu().numpy().astype(np.int64),
        "level": obs["level"].cpu().numpy().astype(np.int64),
        "actions": obs["actions"].cpu().numpy().astype(np.float32),
    }


def _info(kernel: LandmarkKernel, extra: dict[str, torch.Tensor] | None = None) -> dict:
    info = {key: value.cpu().numpy().copy() for key, value in (extra or {}).items()}
    info["distance_mm"] = kernel.distance_mm().cpu().numpy().copy()
    info["position_ras"] = kernel.position_ras.cpu().numpy().copy()
    return info


class LandmarkEnv(gym.Env):
    """A single landmark-search environment: the kernel with one slot."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        scans: list[ScanPyramid],
        targets_ras: list[np.ndarray],
        env_config: EnvConfig | None = None,
        augment_config: AugmentConfig | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = env_config or EnvConfig()
        self.kernel = LandmarkKernel(
            scans, targets_ras, self.config, augment_config or AugmentConfig(), 1, device
        )
        self.observation_space = observation_space(self.config, self.kernel.num_landmarks)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)

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


class LandmarkVectorEnv(VectorEnv):
    """Many landmark-search environments in one batched kernel (next-step autoreset)."""

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        scans: list[ScanPyramid],
        targets_ras: list[np.ndarray],
        num_envs: int,
        env_config: EnvConfig | None = None,
        augment_config: AugmentConfig | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = env_config or EnvConfig()
        self.num_envs = num_envs
        self.kernel = LandmarkKernel(
            scans, targets_ras, self.config, augment_config or AugmentConfig(), num_envs, device
        )
        self.single_observation_space = observation_space(self.config, self.kernel.num_landmarks)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
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
