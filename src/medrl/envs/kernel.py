"""The search environment as a batched kernel: N agents over many scans, on torch tensors.

Task-agnostic episode bookkeeping for every agent of the family (:mod:`medrl.tasks`): each
slot runs one episode (a scan, a target, a scale level, an augmentation drawn from the
episode's seed, a start pose near the target). The task says how actions change a pose, how
far a pose is from its goal (the reward is the task's function of that distance's decrease),
and where the observation samples the scan. Moves that leave the image (or that the task
forbids) are refused and penalised. An episode terminates when the task says it succeeded and
is truncated on oscillation (a pose seen more than ``oscillation_repeats`` times in the
window) or when the level's step budget is spent.

The Gymnasium wrappers in :mod:`medrl.envs.gym` are thin: a single ``Env`` is this kernel with
one slot, the ``VectorEnv`` is the kernel itself. The search (:mod:`medrl.agents.search`) uses
the same transition function, :func:`medrl.tasks.base.advance`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medrl.config import AugmentConfig, EnvConfig
from medrl.data.augment import AugmentParams, batch_params, transform_points
from medrl.envs.pyramid import ScanPyramid
from medrl.envs.sampler import episode_noise, render_patches
from medrl.tasks.base import (
    Poses,
    TargetTable,
    Task,
    View,
    advance,
    count_repeats,
    push_history,
)

_STATE_FIELDS = (
    "scan", "target", "level", "frames", "goal", "actions", "recent", "steps", "episode_seed",
)  # fmt: skip


def render_observation(
    task: Task,
    scans: list[ScanPyramid],
    config: EnvConfig,
    poses: Poses,
    params: AugmentParams,
    noise: bool = True,
    patch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Observation dict: patches (N, F * C, P, P, P), target, level, action history (+ pose).

    C is the task's number of channels (its view, and a wider context for some tasks); the
    channels of a frame are adjacent.

    ``noise=False`` skips drawing the augmentation noise (for searches, where it is zero).
    """
    n, frames, dim = poses.frames.shape
    p = patch_size or config.patch_size
    device = poses.frames.device
    rep = torch.arange(n, device=device).repeat_interleave(frames)
    frame_steps = (poses.step[:, None] - np.arange(frames)[None, :]).reshape(-1)
    noise_values = (
        episode_noise(np.repeat(poses.episode_seed, frames), frame_steps, p**3, device)
        if noise
        else None
    )
    levels = poses.level[rep]
    flat = poses.frames.reshape(-1, dim)
    scan, frame_params = poses.scan[rep], params.index(rep)
    views = task.views(flat, levels, p)
    if views is not None:  # channels of their own centres, axes and images (registration)
        patches = _render_views(scans, views, scan, levels, frame_params, noise_values)
        return _observation(task, poses, patches.reshape(n, frames * len(views), p, p, p))
    centres, offsets = task.grid(flat, levels, p)
    axes = task.grid_axes(flat)
    context = task.context_grid(flat, levels, p)
    if context is not None:  # a second patch per frame: rendered in the same pass
        row = torch.arange(len(flat), device=device).repeat_interleave(2)
        centres, levels, scan = centres[row], levels[row], scan[row]
        axes = None if axes is None else axes[row]
        offsets = torch.stack([offsets, context], dim=1).reshape(-1, 3, p)
        frame_params = frame_params.index(row)
        noise_values = None if noise_values is None else noise_values[row]
    channels = task.num_channels
    patches = render_patches(
        scans, scan, levels, centres, frame_params, offsets, noise_values, axes
    ).reshape(n, frames * channels, p, p, p)
    return _observation(task, poses, patches)


def _render_views(
    scans: list[ScanPyramid],
    views: list[View],
    scan: torch.Tensor,
    levels: torch.Tensor,
    params: AugmentParams,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Patches (M, V, P, P, P) of the views (V) of M poses: one pass over the views that
    sample the scan and one over those that sample its partner."""
    m, count = len(scan), len(views)
    out: torch.Tensor | None = None
    for partner in (False, True):
        chosen = [i for i, v in enumerate(views) if v.partner == partner]
        if not chosen:
            continue
        group = [views[i] for i in chosen]
        eye = torch.eye(3, device=scan.device).expand(m, 3, 3)
        axes = None
        if any(v.axes is not None for v in group):
            axes = torch.cat([eye if v.axes is None else v.axes for v in group])
        row = torch.arange(m, device=scan.device).repeat(len(group))
        rendered = render_patches(
            scans,
            scan[row],
            levels[row],
            torch.cat([v.centres_ras for v in group]),
            params.index(row),
            torch.cat([v.offsets_mm for v in group]),
            None if noise is None else noise[row],
            axes,
            partner=partner,
        )
        if out is None:
            out = rendered.new_empty((m, count, *rendered.shape[1:]))
        out[:, chosen] = rendered.reshape(len(group), m, *rendered.shape[1:]).transpose(0, 1)
    assert out is not None
    return out


def _observation(task: Task, poses: Poses, patches: torch.Tensor) -> dict[str, torch.Tensor]:
    obs = {
        "patch": patches,
        "target": poses.target,
        "level": poses.level,
        "actions": action_history_one_hot(poses.actions, task.num_actions),
    }
    if task.pose_features:
        obs["pose"] = task.features(poses.current)
    return obs


def action_history_one_hot(actions: torch.Tensor, num_actions: int) -> torch.Tensor:
    """Past actions (N, K), -1 for none, as a flat one-hot (N, K * A)."""
    n, k = actions.shape
    history = torch.zeros((n, k, num_actions), device=actions.device)
    valid = actions >= 0
    history[valid] = torch.nn.functional.one_hot(actions[valid], num_actions).float()
    return history.reshape(n, -1)


class SearchKernel:
    """Batched search episodes of one task (see module docstring)."""

    def __init__(
        self,
        task: Task,
        scans: list[ScanPyramid],
        table: TargetTable,
        env_config: EnvConfig,
        augment_config: AugmentConfig,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if not scans:
            raise ValueError("the environment needs at least one scan")
        self.task = task
        self.scans = scans
        self.table = table
        self.config = env_config
        self.augment = augment_config
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.num_targets = len(table.names)
        self.num_levels = len(env_config.levels)
        self.available = [table.available(s) for s in range(len(scans))]
        # where local warps of the augmentation centre: each scan's targets
        self.anchors_ras = [
            task.anchor(torch.as_tensor(poses, dtype=torch.float64)).numpy()
            for poses in table.poses
        ]
        self.max_steps = torch.tensor([lv.max_steps for lv in env_config.levels])
        weights = np.asarray(env_config.level_weights or [1.0] * self.num_levels, dtype=float)
        if weights.shape != (self.num_levels,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("env.level_weights needs one non-negative weight per level")
        self.level_p = weights / weights.sum()
        n, f, k, d = num_envs, env_config.frames, env_config.action_history, task.pose_dim
        w = env_config.oscillation_window
        self.scan = torch.zeros(n, dtype=torch.long, device=self.device)
        self.target = torch.zeros(n, dtype=torch.long, device=self.device)
        self.level = torch.zeros(n, dtype=torch.long, device=self.device)
        self.frames = torch.ones((n, f, d), device=self.device)
        self.goal = torch.ones((n, d), device=self.device)
        self.actions = torch.full((n, k), -1, dtype=torch.long, device=self.device)
        self.recent = torch.full((n, w, d), float("nan"), device=self.device)
        self.steps = np.zeros(n, dtype=np.int64)
        self.episode_seed = np.zeros(n, dtype=np.int64)
        self.params = batch_params(
            augment_config, np.zeros(n, np.int64), np.zeros((n, 3)), self.device
        )
        self.seed([seed + i for i in range(n)])

    def params_for(self, scans: list[int], seeds: list[int] | np.ndarray) -> AugmentParams:
        """Augmentation parameters of episodes on these scans with these seeds (replayed
        transitions get the very same from their scan and episode seed)."""
        centres = np.stack([self.scans[s].centre_ras for s in scans])
        anchors = [self.anchors_ras[s] for s in scans]
        return batch_params(self.augment, np.asarray(seeds), centres, self.device, anchors)

    # ------------------------------------------------------------------ state
    def seed(self, seeds: list[int]) -> None:
        """Give each slot its own random stream (slot i of seed s behaves like env seed s+i)."""
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue these episodes exactly."""
        return {
            "rngs": [r.bit_generator.state for r in self.rngs],
            "slots": {name: getattr(self, name) for name in _STATE_FIELDS},
            "params": {n: getattr(self.params, n) for n in self.params.__dataclass_fields__},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["rngs"]) != self.num_envs:
            raise ValueError(f"state has {len(state['rngs'])} slots, the kernel {self.num_envs}")
        for rng, rng_state in zip(self.rngs, state["rngs"], strict=True):
            rng.bit_generator.state = rng_state
        for name, value in state["slots"].items():
            setattr(self, name, value)
        for name, value in state["params"].items():
            getattr(self.params, name).copy_(value)

    @property
    def pose(self) -> torch.Tensor:
        """(N, D) current poses."""
        return self.frames[:, 0]

    def poses(self) -> Poses:
        return Poses(
            self.scan.clone(),
            self.target.clone(),
            self.level.clone(),
            self.frames.clone(),
            self.actions.clone(),
            self.episode_seed.copy(),
            self.steps.copy(),
            self.goal.clone(),
        )

    # ------------------------------------------------------------------ episodes
    def reset(self, mask: np.ndarray | None = None, options: dict | None = None) -> None:
        """Start new episodes in the slots where ``mask`` is true (all slots by default).

        ``options`` may fix ``scan``, ``target`` (or ``landmark``) and ``level`` (ints).
        """
        rows = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask)
        if len(rows) == 0:
            return
        options = dict(options or {})
        if "landmark" in options:
            options.setdefault("target", options.pop("landmark"))
        scans, targets, levels, seeds, offsets = [], [], [], [], []
        for row in rows:
            rng = self.rngs[row]
            scan = int(options.get("scan", rng.integers(len(self.scans))))
            target = int(options.get("target", rng.choice(self.available[scan])))
            level = int(options.get("level", rng.choice(self.num_levels, p=self.level_p)))
            offsets.append(self.task.start_offset(level, rng))
            scans.append(scan)
            targets.append(target)
            levels.append(level)
            seeds.append(int(rng.integers(2**62)))
        params = self.params_for(scans, seeds)
        goals = self.task.goals(self.table, scans, targets, params)
        offsets_t = torch.as_tensor(np.stack(offsets), dtype=torch.float32, device=self.device)
        starts = self.task.displace(goals, offsets_t)
        scan_t = torch.as_tensor(scans, device=self.device)
        for _ in range(6):  # pull starts that fall outside the image towards the goal
            inside = self.inside(scan_t, params, self.task.anchor(starts))
            if bool(inside.all()):
                break
            offsets_t = torch.where(inside[:, None], offsets_t, offsets_t * 0.5)
            starts = self.task.displace(goals, offsets_t)
        rows_t = torch.as_tensor(rows, device=self.device)
        for name in params.__dataclass_fields__:
            getattr(self.params, name)[rows_t] = getattr(params, name)
        self.scan[rows_t] = scan_t
        self.target[rows_t] = torch.as_tensor(targets, device=self.device)
        self.level[rows_t] = torch.as_tensor(levels, device=self.device)
        self.goal[rows_t] = goals
        self.frames[rows_t] = starts[:, None, :].expand(-1, self.config.frames, -1)
        self.actions[rows_t] = -1
        self.recent[rows_t] = float("nan")
        self.recent[rows_t, -1] = starts
        self.steps[rows] = 0
        self.episode_seed[rows] = seeds

    def inside(
        self, scan: torch.Tensor, params: AugmentParams, position_ras: torch.Tensor
    ) -> torch.Tensor:
        """Whether augmented-world points (N, 3) fall inside their scans."""
        source = transform_points(params, position_ras[:, None])[:, 0]
        inside = torch.ones(len(scan), dtype=torch.bool, device=self.device)
        for s in torch.unique(scan).tolist():
            rows = scan == s
            inside[rows] = self.scans[s].contains_ras(source[rows])
        return inside

    # ---------------------------------------------------------------------- step
    def observe(self) -> dict[str, torch.Tensor]:
        return render_observation(self.task, self.scans, self.config, self.poses(), self.params)

    def distance(self) -> torch.Tensor:
        return self.task.distance(self.pose, self.goal)

    def step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Move every slot by its action; returns reward, terminated, truncated, info."""
        actions = torch.as_tensor(actions, dtype=torch.long, device=self.device)
        task = self.task
        old = self.pose
        new, inside = advance(task, self.scan, self.params, old, actions, self.level, self.inside)
        d_old = task.distance(old, self.goal)
        d_new = task.distance(new, self.goal)
        reward = task.reward(d_old, d_new)
        reward = torch.where(
            inside, reward, torch.full_like(reward, -self.config.out_of_image_penalty)
        )
        self.frames = torch.cat([new[:, None], self.frames[:, :-1]], dim=1)
        self.actions = push_history(self.actions, actions)
        self.recent = torch.cat([self.recent[:, 1:], new[:, None]], dim=1)
        self.steps += 1
        count = count_repeats(self.recent, new, task.tolerance(new, self.level))
        oscillating = count > self.config.oscillation_repeats
        terminated = task.success(new, self.goal)
        budget = (
            torch.as_tensor(self.steps, device=self.device)
            >= self.max_steps.to(self.device)[self.level]
        )
        truncated = ~terminated & (budget | oscillating)
        info = {"distance": d_new, "oscillating": oscillating, "inside": inside}
        return reward, terminated, truncated, info
