"""Inference: multi-scale, multi-start greedy search with oscillation handling. No labels needed.

For every landmark, agents start at the scan's intensity centre and, with ``num_starts`` up
to 7, at +/- ``start_offsets_mm`` along A, then S, then R. At each level, from coarse to
fine, every agent takes greedy actions until it oscillates (a position revisited more than
``oscillation_repeats`` times in the window) or spends the level's step budget; it then
continues at the next level from the mean of its last few positions (the centre of its
oscillation). The landmark estimate is the coordinate-wise median over the starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medrl.agents.checkpoint import LandmarkModel
from medrl.config import AugmentConfig
from medrl.data.augment import batch_params
from medrl.envs.landmark import Poses, action_vectors, oscillation_count, render_observation
from medrl.envs.pyramid import ScanPyramid, build_pyramid
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks

_SETTLE_POSITIONS = 4


def level_paths(path_ras: np.ndarray, levels: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """One start's path split by level, coarse to fine, without repeated positions.

    The recorded path keeps a settled agent's position at every later step of its level;
    here each level's positions (k, 3) keep only the moves. A level that was not searched
    gives an empty (0, 3) array.
    """
    split = []
    for level in range(num_levels):
        points = path_ras[levels == level]
        if len(points):
            moved = np.any(np.abs(np.diff(points, axis=0)) > 1e-6, axis=1)
            points = points[np.concatenate([[True], moved])]
        split.append(points.reshape(-1, 3))
    return split


@dataclass
class SearchResult:
    landmarks: Landmarks
    paths_ras: list[list[np.ndarray]]
    """Per landmark, per start: the visited positions (T, 3), coarse to fine."""
    path_levels: list[list[np.ndarray]]
    """Per landmark, per start: the level of each visited position (T,)."""
    steps: int
    level_points_ras: list[np.ndarray]
    """The estimate (landmarks, 3) after each level searched, coarse to fine."""


def start_positions(scan: ScanPyramid, num_starts: int, offset_mm: float) -> np.ndarray:
    centre = scan.intensity_centre_ras
    if num_starts <= 1:
        return centre[None]
    # Centre first, then +/- along A (the longest axis of a head), S, R.
    axes = np.eye(3)[[1, 1, 2, 2, 0, 0]] * np.array([1, -1, 1, -1, 1, -1])[:, None]
    offsets = np.concatenate([np.zeros((1, 3)), axes * offset_mm])
    return centre + offsets[: min(num_starts, 7)]


@torch.no_grad()
def search(
    model: LandmarkModel,
    volume: Volume,
    device: torch.device | str = "cpu",
    scan: ScanPyramid | None = None,
    num_starts: int | None = None,
) -> SearchResult:
    """Find every landmark the model knows in ``volume``; positions in world RAS mm.

    ``num_starts`` (1 to 7) overrides the model's ``search.num_starts``.
    """
    config = model.config
    env = config.env
    device = torch.device(device)
    if scan is None:
        scan = build_pyramid(volume, [lv.spacing_mm for lv in env.levels], device)
    starts = start_positions(
        scan, num_starts or config.search.num_starts, config.search.start_offsets_mm
    )
    num_landmarks, num_starts = len(model.names), len(starts)
    n = num_landmarks * num_starts
    landmark = torch.arange(num_landmarks, device=device).repeat_interleave(num_starts)
    position = torch.as_tensor(np.tile(starts, (num_landmarks, 1)), dtype=torch.float32).to(device)
    identity = batch_params(
        AugmentConfig(enabled=False), np.zeros(1, np.int64), scan.centre_ras[None], device
    )
    moves = action_vectors(device)
    # The path is kept on the device and copied to the host once, at the end (no sync per step).
    paths = [position.clone()]
    levels_visited = [0]
    total_steps = 0
    level_points: list[np.ndarray] = []
    used = env.levels[: config.search.levels] if config.search.levels > 0 else env.levels
    for level_index, level in enumerate(used):
        frames = position[:, None, :].repeat(1, env.frames, 1)
        actions = torch.full((n, env.action_history), -1, dtype=torch.long, device=device)
        recent = torch.full((n, env.oscillation_window, 3), float("nan"), device=device)
        recent[:, -1] = position
        active = torch.ones(n, dtype=torch.bool, device=device)
        step_tol = torch.full((n,), 0.25 * level.step_mm, device=device)
        for _ in range(level.max_steps):
            rows = torch.nonzero(active, as_tuple=True)[0]
            if len(rows) == 0:
                break
            m = len(rows)
            poses = Poses(
                scan=torch.zeros(m, dtype=torch.long, device=device),
                landmark=landmark[rows],
                level=torch.full((m,), level_index, dtype=torch.long, device=device),
                frames_ras=frames[rows],
                actions=actions[rows],
                episode_seed=np.zeros(m, np.int64),
                step=np.zeros(m, np.int64),
            )
            obs = render_observation(
                [scan], env, poses, identity.index(torch.zeros(m, dtype=torch.long)), noise=False
            )
            chosen = model.network(obs).argmax(dim=1)
            proposed = frames[rows, 0] + moves[chosen] * level.step_mm
            inside = scan.contains_ras(proposed)
            new = torch.where(inside[:, None], proposed, frames[rows, 0])
            frames[rows] = torch.cat([new[:, None], frames[rows, :-1]], dim=1)
            actions[rows] = torch.cat([chosen[:, None], actions[rows, :-1]], dim=1)
            recent[rows] = torch.cat([recent[rows, 1:], new[:, None]], dim=1)
            total_steps += 1
            paths.append(frames[:, 0].clone())
            levels_visited.append(level_index)
            settled = oscillation_count(recent[rows], new, step_tol[rows]) > env.oscillation_repeats
            active[rows[settled]] = False
        tail = recent[:, -_SETTLE_POSITIONS:]
        position = torch.nanmean(tail, dim=1)
        per_start = position.reshape(num_landmarks, num_starts, 3)
        level_points.append(torch.median(per_start, dim=1).values.cpu().numpy().astype(np.float64))
    paths.append(position)
    levels_visited.append(len(used) - 1)
    estimate = level_points[-1]
    stacked = torch.stack(paths, dim=1).cpu().numpy().astype(np.float64)  # (n, T, 3)
    level_stack = np.tile(np.asarray(levels_visited, dtype=np.int64), (n, 1))
    per_landmark_paths, per_landmark_levels = [], []
    for lm in range(num_landmarks):
        rows = range(lm * num_starts, (lm + 1) * num_starts)
        per_landmark_paths.append([stacked[r] for r in rows])
        per_landmark_levels.append([level_stack[r] for r in rows])
    landmarks = Landmarks(names=model.names, points_ras=estimate, descriptions=model.descriptions)
    return SearchResult(
        landmarks, per_landmark_paths, per_landmark_levels, total_steps, level_points
    )
