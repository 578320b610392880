"""The landmark environment as a batched kernel: N agents over many scans, on torch tensors.

Each slot runs one episode: a scan, a landmark, a scale level, an augmentation drawn from
the episode's seed, and a start position within the level's start radius of the target.
Actions move the agent by the level's step along +R, -R, +A, -A, +S, -S (augmented world).
The reward is the decrease of the distance to the target in mm, clipped; moving out of the
image is refused and penalised. An episode terminates within ``success_radius_mm`` of the
target and is truncated on oscillation or when the level's step budget is spent.

The Gymnasium wrappers in :mod:`medrl.envs.gym` are thin: a single ``Env`` is this kernel with
one slot, the ``VectorEnv`` is the kernel itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medrl.config import AugmentConfig, EnvConfig
from medrl.data.augment import (
    AugmentParams,
    batch_params,
    inverse_transform_points,
    transform_points,
)
from medrl.envs.pyramid import ScanPyramid
from medrl.envs.sampler import episode_noise, render_patches

NUM_ACTIONS = 6
ACTION_NAMES = ("+R", "-R", "+A", "-A", "+S", "-S")
_ACTION_VECTORS = torch.tensor(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32
)


def action_vectors(device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit moves (6, 3) of the six actions, along RAS axes."""
    return _ACTION_VECTORS.to(device)


@dataclass
class Poses:
    """What an observation is a function of (stored in replay instead of patches)."""

    scan: torch.Tensor  # (N,) long
    landmark: torch.Tensor  # (N,) long
    level: torch.Tensor  # (N,) long
    frames_ras: torch.Tensor  # (N, F, 3): current position first, then earlier ones
    actions: torch.Tensor  # (N, K) long, most recent first, -1 = none
    episode_seed: np.ndarray  # (N,) int64
    step: np.ndarray  # (N,) int64


def render_observation(
    scans: list[ScanPyramid],
    config: EnvConfig,
    poses: Poses,
    params: AugmentParams,
    noise: bool = True,
) -> dict[str, torch.Tensor]:
    """Observation dict for poses: patches (N, F, P, P, P), landmark, level, action history.

    ``noise=False`` skips drawing the augmentation noise (for searches, where it is zero).
    """
    n, frames, _ = poses.frames_ras.shape
    p = config.patch_size
    device = poses.frames_ras.device
    spacings = torch.tensor([lv.spacing_mm for lv in config.levels], dtype=torch.float32)
    rep = torch.arange(n, device=device).repeat_interleave(frames)
    frame_steps = (poses.step[:, None] - np.arange(frames)[None, :]).reshape(-1)
    noise_values = (
        episode_noise(np.repeat(poses.episode_seed, frames), frame_steps, p**3, device)
        if noise
        else None
    )
    patches = render_patches(
        scans,
        poses.scan[rep],
        poses.level[rep],
        poses.frames_ras.reshape(-1, 3),
        params.index(rep),
        p,
        spacings,
        noise_values,
    ).reshape(n, frames, p, p, p)
    return {
        "patch": patches,
        "landmark": poses.landmark,
        "level": poses.level,
        "actions": action_history_one_hot(poses.actions),
    }


def action_history_one_hot(actions: torch.Tensor) -> torch.Tensor:
    """Past actions (N, K), -1 for none, as a flat one-hot (N, K * 6)."""
    n, k = actions.shape
    history = torch.zeros((n, k, NUM_ACTIONS), device=actions.device)
    valid = actions >= 0
    history[valid] = torch.nn.functional.one_hot(actions[valid], NUM_ACTIONS).float()
    return history.reshape(n, -1)


def oscillation_count(recent_ras: torch.Tensor, position_ras: torch.Tensor, tol_mm: torch.Tensor):
    """How often each position (N, 3) occurs in the recent positions (N, W, 3)."""
    close = (recent_ras - position_ras[:, None, :]).abs() < tol_mm[:, None, None]
    return close.all(dim=-1).sum(dim=-1)


class LandmarkKernel:
    """Batched landmark-search episodes (see module docstring)."""

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
        if not scans:
            raise ValueError("the environment needs at least one scan")
        self.scans = scans
        self.config = env_config
        self.augment = augment_config
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.num_landmarks = int(targets_ras[0].shape[0])
        self.num_levels = len(env_config.levels)
        self.targets_ras = [np.asarray(t, dtype=np.float64) for t in targets_ras]
        self.available = [np.flatnonzero(np.isfinite(t).all(axis=1)) for t in self.targets_ras]
        self.step_mm = torch.tensor([lv.step_mm for lv in env_config.levels], device=self.device)
        self.max_steps = torch.tensor([lv.max_steps for lv in env_config.levels])
        self.start_radius = np.array([lv.start_radius_mm for lv in env_config.levels])
        weights = np.asarray(env_config.level_weights or [1.0] * self.num_levels, dtype=float)
        if weights.shape != (self.num_levels,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("env.level_weights needs one non-negative weight per level")
        self.level_p = weights / weights.sum()
        n, f, k = num_envs, env_config.frames, env_config.action_history
        w = env_config.oscillation_window
        self.scan = torch.zeros(n, dtype=torch.long, device=self.device)
        self.landmark = torch.zeros(n, dtype=torch.long, device=self.device)
        self.level = torch.zeros(n, dtype=torch.long, device=self.device)
        self.frames_ras = torch.zeros((n, f, 3), device=self.device)
        self.target_ras = torch.zeros((n, 3), device=self.device)
        self.actions = torch.full((n, k), -1, dtype=torch.long, device=self.device)
        self.recent_ras = torch.full((n, w, 3), float("nan"), device=self.device)
        self.steps = np.zeros(n, dtype=np.int64)
        self.episode_seed = np.zeros(n, dtype=np.int64)
        self.params = batch_params(
            augment_config, np.zeros(n, np.int64), np.zeros((n, 3)), self.device
        )
        self.seed([seed + i for i in range(n)])

    # ------------------------------------------------------------------ episodes
    def seed(self, seeds: list[int]) -> None:
        """Give each slot its own random stream (slot i of seed s behaves like env seed s+i)."""
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]

    @property
    def position_ras(self) -> torch.Tensor:
        return self.frames_ras[:, 0]

    def poses(self) -> Poses:
        return Poses(
            self.scan.clone(),
            self.landmark.clone(),
            self.level.clone(),
            self.frames_ras.clone(),
            self.actions.clone(),
            self.episode_seed.copy(),
            self.steps.copy(),
        )

    def reset(self, mask: np.ndarray | None = None, options: dict | None = None) -> None:
        """Start new episodes in the slots where ``mask`` is true (all slots by default).

        ``options`` may fix ``scan``, ``landmark`` and ``level`` (ints) for those slots.
        """
        rows = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask)
        if len(rows) == 0:
            return
        options = options or {}
        scans, landmarks, levels, seeds, offsets = [], [], [], [], []
        for row in rows:
            rng = self.rngs[row]
            scan = int(options.get("scan", rng.integers(len(self.scans))))
            landmark = int(options.get("landmark", rng.choice(self.available[scan])))
            level = int(options.get("level", rng.choice(self.num_levels, p=self.level_p)))
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-12
            radius = self.start_radius[level] * rng.uniform() ** (1 / 3)
            scans.append(scan)
            landmarks.append(landmark)
            levels.append(level)
            seeds.append(int(rng.integers(2**62)))
            offsets.append(direction * radius)
        centres = np.stack([self.scans[s].centre_ras for s in scans])
        params = batch_params(self.augment, np.array(seeds), centres, self.device)
        targets_orig = np.stack(
            [self.targets_ras[s][lm] for s, lm in zip(scans, landmarks, strict=True)]
        )
        targets = inverse_transform_points(
            params, torch.as_tensor(targets_orig, dtype=torch.float32, device=self.device)[:, None]
        )[:, 0]
        offsets_t = torch.as_tensor(np.stack(offsets), dtype=torch.float32, device=self.device)
        starts = targets + offsets_t
        scan_t = torch.as_tensor(scans, device=self.device)
        for _ in range(6):  # pull starts that fall outside the image towards the target
            inside = self.inside(scan_t, params, starts)
            if bool(inside.all()):
                break
            offsets_t = torch.where(inside[:, None], offsets_t, offsets_t * 0.5)
            starts = targets + offsets_t
        rows_t = torch.as_tensor(rows, device=self.device)
        for name in params.__dataclass_fields__:
            getattr(self.params, name)[rows_t] = getattr(params, name)
        self.scan[rows_t] = scan_t
        self.landmark[rows_t] = torch.as_tensor(landmarks, device=self.device)
        self.level[rows_t] = torch.as_tensor(levels, device=self.device)
        self.target_ras[rows_t] = targets
        self.frames_ras[rows_t] = starts[:, None, :].expand(-1, self.config.frames, -1)
        self.actions[rows_t] = -1
        self.recent_ras[rows_t] = float("nan")
        self.recent_ras[rows_t, -1] = starts
        self.steps[rows] = 0
        self.episode_seed[rows] = seeds

    def inside(
        self, scan: torch.Tensor, params: AugmentParams, position_ras: torch.Tensor
    ) -> torch.Tensor:
        source = transform_points(params, position_ras[:, None])[:, 0]
        inside = torch.ones(len(scan), dtype=torch.bool, device=self.device)
        for s in torch.unique(scan).tolist():
            rows = scan == s
            inside[rows] = self.scans[s].contains_ras(source[rows])
        return inside

    # ---------------------------------------------------------------------- step
    def observe(self) -> dict[str, torch.Tensor]:
        return render_observation(self.scans, self.config, self.poses(), self.params)

    def distance_mm(self) -> torch.Tensor:
        return torch.linalg.norm(self.position_ras - self.target_ras, dim=-1)

    def step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Move every slot by its action; returns reward, terminated, truncated, info."""
        actions = torch.as_tensor(actions, dtype=torch.long, device=self.device)
        step = self.step_mm[self.level]
        old = self.position_ras
        proposed = old + action_vectors(self.device)[actions] * step[:, None]
        inside = self.inside(self.scan, self.params, proposed)
        new = torch.where(inside[:, None], proposed, old)
        d_old = torch.linalg.norm(old - self.target_ras, dim=-1)
        d_new = torch.linalg.norm(new - self.target_ras, dim=-1)
        clip = self.config.reward_clip_mm
        reward = torch.clamp(d_old - d_new, -clip, clip)
        reward = torch.where(
            inside, reward, torch.full_like(reward, -self.config.out_of_image_penalty)
        )
        self.frames_ras = torch.cat([new[:, None], self.frames_ras[:, :-1]], dim=1)
        self.actions = torch.cat([actions[:, None], self.actions[:, :-1]], dim=1)
        self.recent_ras = torch.cat([self.recent_ras[:, 1:], new[:, None]], dim=1)
        self.steps += 1
        count = oscillation_count(self.recent_ras, new, 0.25 * step)
        oscillating = count > self.config.oscillation_repeats
        terminated = d_new < self.config.success_radius_mm
        budget = (
            torch.as_tensor(self.steps, device=self.device)
            >= self.max_steps.to(self.device)[self.level]
        )
        truncated = ~terminated & (budget | oscillating)
        info = {"distance_mm": d_new, "oscillating": oscillating, "inside": inside}
        return reward, terminated, truncated, info
