"""The search-task protocol: what differs between the agents of the family, as pure functions.

A *task* says what an agent's pose is (a point, a box, ...), how actions change it, how far
a pose is from its target, where the observation samples the scan, and where a label-free
search starts. Everything else (episodes, levels, budgets, oscillation, augmentation, replay,
the DQN loss, search, checkpoints) is task-agnostic and lives in :mod:`medrl.envs.kernel`,
:mod:`medrl.agents` and :mod:`medrl.evaluation`.

All pose functions are batched over a leading axis N and run on torch tensors (CPU or GPU).
A pose is a vector of ``pose_dim`` numbers in world RAS mm (augmented world during training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from medrl.config import Config
from medrl.data.augment import AugmentParams
from medrl.data.datalist import Case
from medrl.envs.pyramid import ScanPyramid

InsideFn = Callable[[torch.Tensor, AugmentParams, torch.Tensor], torch.Tensor]
"""``inside(scan (N,), params (N,), points_ras (N, 3)) -> (N,) bool`` (augmented world)."""


@dataclass
class Poses:
    """What an observation is a function of (stored in replay instead of observations)."""

    scan: torch.Tensor  # (N,) long
    target: torch.Tensor  # (N,) long: which target (landmark, structure) the episode seeks
    level: torch.Tensor  # (N,) long
    frames: torch.Tensor  # (N, F, D): current pose first, then earlier ones
    actions: torch.Tensor  # (N, K) long, most recent first, -1 = none
    episode_seed: np.ndarray  # (N,) int64
    step: np.ndarray  # (N,) int64
    goal: torch.Tensor | None = None  # (N, D) target pose in the episode's augmented world

    @property
    def current(self) -> torch.Tensor:
        return self.frames[:, 0]


@dataclass
class TargetTable:
    """The targets of a set of scans, in each scan's own (unaugmented) world."""

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    poses: list[np.ndarray]
    """Per scan: (T, D) target poses, NaN rows where a scan lacks a target."""
    extra: list[Any] = field(default_factory=list)
    """Per scan: whatever the task needs to move targets with an augmentation (or empty)."""

    def available(self, scan: int) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.poses[scan]).all(axis=1))


@dataclass
class View:
    """One channel of an observation whose channels differ in more than their offsets."""

    centres_ras: torch.Tensor  # (N, 3)
    offsets_mm: torch.Tensor  # (N, 3, P)
    axes: torch.Tensor | None  # (N, 3, 3) unit grid axes (rows, RAS), or None for R, A, S
    partner: bool = False
    """Sample the scan's ``partner`` (a registration pair's fixed image) instead of the scan."""


class Task:
    """Base class of the tasks: the names below, plus defaults for the optional functions."""

    name: ClassVar[str]
    actions: ClassVar[tuple[str, ...]]
    """Action names; their order is the network's output order."""
    opposite: ClassVar[tuple[int, ...]]
    """Per action, the action that undoes it exactly (-1: none)."""
    pose_dim: ClassVar[int]
    pose_features: ClassVar[int] = 0
    """Extra network inputs computed from the pose (``features``); 0 for none."""
    output_suffix: ClassVar[str]
    """File written per scan by ``medrl predict`` (``.fcsv``, ``.mrk.json``)."""
    distance_name: ClassVar[str]
    """What :meth:`distance` measures, with its unit (logged as ``final_<distance_name>``)."""
    annotation: ClassVar[str]
    """What of a case the task learns from: ``landmarks`` or ``labels`` (a label map)."""
    primary_score: ClassVar[tuple[str, bool]]
    """The :meth:`scores` key that validation ranks by, and whether higher is better."""

    def __init__(self, config: Config, state: dict[str, Any] | None = None) -> None:
        self.config = config
        self.load_state(state or {})

    # ------------------------------------------------------------------ model state
    def state_dict(self) -> dict[str, Any]:
        """Plain data learned from the training targets that the search needs (model.yaml)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def fit(self, scans: list[ScanPyramid], table: TargetTable) -> None:
        """Learn the task's state from the training scans and targets (default: nothing)."""

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    def level_values(self, attribute: str, level: torch.Tensor) -> torch.Tensor:
        """(N,) the levels' ``attribute`` (``step_mm``, ``spacing_mm``, ...) at levels (N,)."""
        values = [getattr(lv, attribute) for lv in self.config.env.levels]
        return torch.tensor(values, dtype=torch.float32, device=level.device)[level]

    def start_shifts(self, num_starts: int) -> np.ndarray:
        """(S, 3) shifts of the label-free starts: none first, then +/- the search's
        ``start_offsets_mm`` along A (the longest axis of a head), S and R; S = 1 ... 7."""
        axes = np.eye(3)[[1, 1, 2, 2, 0, 0]] * np.array([1, -1, 1, -1, 1, -1])[:, None]
        shifts = np.concatenate([np.zeros((1, 3)), axes * self.config.search.start_offsets_mm])
        return shifts[: max(1, min(num_starts, 7))]

    # ------------------------------------------------------------------ data
    def pair_cases(self, cases: list[Case]) -> list[Case]:
        """The training cases the task learns from (registration: pairs of the datalist's
        cases, each with its fixed image as ``partner``); default: the cases."""
        return cases

    def target_table(self, cases: list[Case], names: Sequence[str] = ()) -> TargetTable:
        raise NotImplementedError

    def present_names(self, case: Case) -> set[str]:
        """The target names a case has an annotation for."""
        if self.annotation == "landmarks":
            return set(case.landmarks.names) if case.landmarks is not None else set()
        return set((case.label_names or {}).values()) if case.labels is not None else set()

    def goals(
        self,
        table: TargetTable,
        scans: Sequence[int],
        targets: Sequence[int],
        params: AugmentParams,
    ) -> torch.Tensor:
        """(R, D) target poses of episodes (scan, target) in their augmented worlds."""
        raise NotImplementedError

    # ------------------------------------------------------------------ dynamics
    def move(self, pose: torch.Tensor, action: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """(N, D) poses after actions (N,) at levels (N,)."""
        raise NotImplementedError

    def successors(self, pose: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """(N, A, D): the pose after every action."""
        n, a = pose.shape[0], self.num_actions
        actions = torch.arange(a, device=pose.device).repeat(n)
        moved = self.move(pose.repeat_interleave(a, 0), actions, level.repeat_interleave(a))
        return moved.reshape(n, a, -1)

    def anchor(self, pose: torch.Tensor) -> torch.Tensor:
        """(N, 3) the point of a pose that must stay inside the image."""
        return pose[:, :3]

    def valid(self, pose: torch.Tensor) -> torch.Tensor:
        """(N,) bool: poses allowed regardless of the image (default: all)."""
        return torch.ones(pose.shape[0], dtype=torch.bool, device=pose.device)

    def distance(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """(N,) how far poses are from their goals; lower is better."""
        raise NotImplementedError

    def reward(self, d_old: torch.Tensor, d_new: torch.Tensor) -> torch.Tensor:
        """(N,) the decrease of the distance, clipped to ``env.reward_clip_mm`` (default)."""
        clip = self.config.env.reward_clip_mm
        return torch.clamp(d_old - d_new, -clip, clip)

    def success(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """(N,) bool: a training episode that reaches this ends (terminated); default: the
        distance is below ``env.success_radius_mm``."""
        return self.distance(pose, goal) < self.config.env.success_radius_mm

    def tolerance(self, pose: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """(N, D): poses closer than this per coordinate count as the same (oscillation)."""
        raise NotImplementedError

    def start_offset(self, level: int, rng: np.random.Generator) -> np.ndarray:
        """A random displacement of a training episode's start from its goal (a vector the
        task's :meth:`displace` reads; halving it must bring the start closer to the goal)."""
        raise NotImplementedError

    def displace(self, goal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """(N, D) start poses: goals displaced by offsets (halving an offset halves the way)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ observation
    def grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the observation samples: centres (N, 3) and offsets (N, 3, P) in mm along
        R, A, S (the patch is the separable grid centre + (o_R, o_A, o_S))."""
        raise NotImplementedError

    def grid_axes(self, pose: torch.Tensor) -> torch.Tensor | None:
        """(N, 3, 3) unit axes (rows, RAS) of an oblique grid along which :meth:`grid`'s
        offsets run, or None for the world axes R, A, S (the default)."""
        return None

    @property
    def num_channels(self) -> int:
        """Patches rendered per pose: the task's view, plus :meth:`context_grid` if any."""
        return 1

    def context_grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> torch.Tensor | None:
        """Offsets (N, 3, P) of a second patch at the same centres (a wider context), or None."""
        return None

    def views(self, pose: torch.Tensor, level: torch.Tensor, patch_size: int) -> list[View] | None:
        """Per channel, where and in which image the observation samples, for tasks whose
        channels have their own centres and axes (registration: the fixed image around the
        fixed centre, the moving image under the pose); None (the default): :meth:`grid`,
        :meth:`grid_axes` and :meth:`context_grid`."""
        return None

    def features(self, pose: torch.Tensor) -> torch.Tensor:
        """(N, pose_features) network inputs from the current pose."""
        return pose.new_zeros((pose.shape[0], 0))

    # ------------------------------------------------------------------ search
    def initial(self, scan: ScanPyramid, num_starts: int, num_targets: int) -> np.ndarray:
        """(T, S, D) label-free search starts of every target."""
        raise NotImplementedError

    def finalize(self, estimate: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(T, D) estimates made consistent with what is known to relate the targets named
        ``names`` (default: unchanged). Applied to every level's estimate of a search."""
        return estimate

    def refine(self, scan: ScanPyramid, estimate: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(T, D) the search's final estimates of the targets named ``names`` refined from the
        image itself, without the network (default: unchanged)."""
        return estimate

    def consensus_starts(self, estimate: np.ndarray) -> np.ndarray | None:
        """(T, 1, D) where the targets' reference layout, fitted to the estimates (T, D) of a
        search, puts every target: the starts of a second search (``search.consensus_level``).
        None when the task has no reference layout or the estimates do not determine one."""
        return None

    def layout_residual(self, estimate: np.ndarray) -> float | None:
        """How far estimates (T, D) lie from the task's reference layout fitted to them (median,
        mm): the label-free plausibility that ``search.adaptive_levels`` compares between
        levels. None when the task has no reference layout (the default)."""
        return None

    def layout_positions(self, estimate: np.ndarray) -> np.ndarray | None:
        """(T, D) where the task's reference layout, robustly fitted to the estimates (T, D),
        puts every target (``search.layout_weight``); None when the task has no reference
        layout (the default) or the estimates do not determine one."""
        return None

    def consensus_merge(self, starts: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(R, D) the estimates of the targets searched again, from their second-search starts
        (R, D) and where that search ended (R, D) (default: where it ended)."""
        return second

    def settle(self, recent: torch.Tensor) -> torch.Tensor:
        """(N, D) where a level's search ends, from its recent poses (N, W, D)."""
        return torch.nanmean(recent[:, -4:], dim=1)

    def scores(self, estimate: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Per-target scores (T,) of estimates (T, D) against the truth (T, D), unit-suffixed
        keys (``error_mm``, ``iou``, ...). Rows where the truth is NaN are not passed."""
        raise NotImplementedError

    def combine(self, per_start: torch.Tensor) -> torch.Tensor:
        """(T, D) one estimate per target from the starts' (T, S, D)."""
        return torch.median(per_start, dim=1).values


def push_history(history: torch.Tensor, newest: torch.Tensor) -> torch.Tensor:
    """Recent values (N, K), most recent first, with ``newest`` (N,) pushed in (K may be 0)."""
    if history.shape[1] == 0:
        return history
    return torch.cat([newest[:, None], history[:, :-1]], dim=1)


def count_repeats(
    recent: torch.Tensor, pose: torch.Tensor, tolerance: torch.Tensor
) -> torch.Tensor:
    """How often each pose (N, D) occurs among the recent poses (N, W, D), within tolerance."""
    close = (recent - pose[:, None, :]).abs() < tolerance[:, None, :]
    return close.all(dim=-1).sum(dim=-1)


def advance(
    task: Task,
    scan: torch.Tensor,
    params: AugmentParams,
    pose: torch.Tensor,
    action: torch.Tensor,
    level: torch.Tensor,
    inside: InsideFn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of every agent: (new poses, admissible). A refused move keeps the pose.

    The one transition function of the family: the kernel (training) and the search use it.
    """
    proposed = task.move(pose, action, level)
    allowed = inside(scan, params, task.anchor(proposed)) & task.valid(proposed)
    return torch.where(allowed[:, None], proposed, pose), allowed
