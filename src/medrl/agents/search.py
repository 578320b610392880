"""Inference: multi-scale, multi-start greedy search with oscillation handling. No labels needed.

For every target (landmark, structure, ...) agents start at the task's label-free starts
(:meth:`medrl.tasks.base.Task.initial`: for landmarks the scan's intensity centre and, with
``num_starts`` up to 7, +/- ``start_offsets_mm`` along A, then S, then R). At each level,
from coarse to fine, every agent takes greedy actions until it oscillates (a pose revisited
more than ``oscillation_repeats`` times in the window) or spends the level's step budget; it
then continues at the next level from where it settled (the centre of its oscillation). The
estimate combines the starts (coordinate-wise median). The moves are the training kernel's
own transition function, :func:`medrl.tasks.base.advance`.

With ``search.consensus_level`` k >= 0 and a task with a reference layout of its targets (the
box task), a second search follows: the layout is fitted to the first search's estimates by a
robust affine map (:meth:`medrl.tasks.base.Task.consensus_starts`), and every target is
searched again from where the fitted layout puts it, from level k on. The relations between
the targets then correct a search that settled on the wrong part of a structure, while the
final pose is still the agent's reading of the image.

With ``search.layout_weight`` w > 0, the final estimate is blended with where the layout,
fitted to the estimates of one level, puts every target (w = 1: a landmark-driven affine fit of
the layout; see :class:`medrl.config.SearchConfig`).

With ``search.detector_weight`` w > 0 (a landmark model carrying a supervised detector,
:mod:`medrl.supervised.ensemble`), the detector reads the scan too and each landmark is
written at ``(1 - w) x`` the agent's point ``+ w x`` the detector's, before the layout blend.

With ``search.mirror`` (landmark models), each reader also reads the scan's left-right mirror
image (:mod:`medrl.geometry.mirror`): the agent searches it for every landmark's mirror partner,
the detector reads it in the same batch as the scan, and each reader's point is the mean of its
two readings, the mirror's reflected back.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from medrl.agents.checkpoint import Model, with_overrides
from medrl.data.augment import AugmentParams, no_augmentation
from medrl.envs.kernel import render_observation
from medrl.envs.pyramid import ScanPyramid, build_pyramid
from medrl.errors import InputError
from medrl.geometry.mirror import mirror_reading
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.tasks.base import Poses, advance, count_repeats, push_history


def level_paths(path: np.ndarray, levels: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """One start's path split by level, coarse to fine, without repeated poses.

    The recorded path keeps a settled agent's pose at every later step of its level; here
    each level's poses (k, D) keep only the moves. A level that was not searched gives an
    empty (0, D) array.
    """
    split = []
    for level in range(num_levels):
        points = path[levels == level]
        if len(points):
            moved = np.any(np.abs(np.diff(points, axis=0)) > 1e-6, axis=1)
            points = points[np.concatenate([[True], moved])]
        split.append(points.reshape(-1, path.shape[-1]))
    return split


@dataclass
class SearchResult:
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    estimate: np.ndarray
    """(targets, D) the final poses, world RAS mm."""
    paths: list[list[np.ndarray]]
    """Per target, per start: the visited poses (T, D), coarse to fine."""
    path_levels: list[list[np.ndarray]]
    """Per target, per start: the level of each visited pose (T,)."""
    steps: int
    level_estimates: list[np.ndarray]
    """The estimate (targets, D) after each level of the first search, coarse to fine."""
    chosen_level: int = -1
    """The level (0-based) whose estimates the result builds on: the finest searched, or the
    one ``search.adaptive_levels`` chose."""
    consensus_starts: np.ndarray | None = None
    """(targets, D) where the task's reference layout, fitted to the first search, put every
    target: the start of the second search (None without one; NaN rows for targets the task
    did not search again). The second search's poses follow the first's in ``paths``, their
    levels offset by the number of levels."""
    unblended: np.ndarray | None = None
    """(targets, D) the search's own estimate before ``search.layout_weight`` blended in the
    fitted layout (None without a blend: ``estimate`` is the search's own)."""
    layout_ras: np.ndarray | None = None
    """(targets, D) where the layout fitted to level ``search.layout_level`` put every target
    (None without a blend)."""
    detector_ras: np.ndarray | None = None
    """(targets, 3) the points of the supervised detector the model carries, when
    ``search.detector_weight`` blended them in (None otherwise)."""
    agent_estimate: np.ndarray | None = None
    """(targets, D) the agent's own estimate before the detector's points were blended in (None
    without the detector)."""
    readings: np.ndarray | None = None
    """(R, targets, D) the readings the estimate blends, world RAS mm: the agent's, its reading
    of the mirror image (``search.mirror``, reflected back), the detector's and its mirror
    reading (``search.detector_weight``); None for a search that is one reading."""

    @property
    def own_estimate(self) -> np.ndarray:
        """The search's own reading of the image, before any blend with the layout."""
        return self.estimate if self.unblended is None else self.unblended

    @property
    def landmarks(self) -> Landmarks:
        """A landmark search's estimate as Landmarks (RAS)."""
        return Landmarks(self.names, self.estimate, self.descriptions)

    # names of the landmark-only era, kept for the report and evaluation code
    @property
    def paths_ras(self) -> list[list[np.ndarray]]:
        return self.paths

    @property
    def level_points_ras(self) -> list[np.ndarray]:
        return self.level_estimates


@dataclass
class _Stage:
    """One pass of the level loop over every start of every target."""

    paths: list[torch.Tensor]
    levels: list[int]
    steps: int
    level_estimates: list[np.ndarray]


def _run_levels(
    model: Model,
    scan: ScanPyramid,
    starts: np.ndarray,
    first_level: int,
    level_offset: int,
    device: torch.device,
    targets: np.ndarray | None = None,
    last_level: int | None = None,
) -> _Stage:
    """Greedy moves from ``starts`` (T, S, D) of the model's targets ``targets`` (T,) (default:
    all, in order), level by level from ``first_level`` to ``last_level`` (default: the last
    the search uses); the path labels its poses with level + ``level_offset``."""
    config, task = model.config, model.task
    env = config.env
    num_targets, num_starts = starts.shape[:2]
    n, dim = num_targets * num_starts, task.pose_dim
    which = np.arange(num_targets) if targets is None else np.asarray(targets, dtype=np.int64)
    target = torch.as_tensor(which, device=device).repeat_interleave(num_starts)
    pose = torch.as_tensor(starts.reshape(n, dim), dtype=torch.float32).to(device)
    identity = no_augmentation(scan.centre_ras, 1, device)

    def inside(_scan: torch.Tensor, _params: AugmentParams, points: torch.Tensor) -> torch.Tensor:
        return scan.contains_ras(points)

    # The path is kept on the device and copied to the host once, at the end (no sync per step).
    stage = _Stage([pose.clone()], [first_level + level_offset], 0, [])
    used = env.levels[: config.search.levels] if config.search.levels > 0 else env.levels
    if last_level is not None:
        used = used[: last_level + 1]
    for level_index, level in enumerate(used):
        if level_index < first_level:
            continue
        frames = pose[:, None, :].repeat(1, env.frames, 1)
        actions = torch.full((n, env.action_history), -1, dtype=torch.long, device=device)
        recent = torch.full((n, env.oscillation_window, dim), float("nan"), device=device)
        recent[:, -1] = pose
        active = torch.ones(n, dtype=torch.bool, device=device)
        level_t = torch.full((n,), level_index, dtype=torch.long, device=device)
        for _ in range(level.max_steps):
            rows = torch.nonzero(active, as_tuple=True)[0]
            if len(rows) == 0:
                break
            m = len(rows)
            zeros = torch.zeros(m, dtype=torch.long, device=device)
            poses = Poses(
                scan=zeros,
                target=target[rows],
                level=level_t[rows],
                frames=frames[rows],
                actions=actions[rows],
                episode_seed=np.zeros(m, np.int64),
                step=np.zeros(m, np.int64),
            )
            params = identity.index(torch.zeros(m, dtype=torch.long))
            obs = render_observation(task, [scan], env, poses, params, noise=False)
            chosen = model.network(obs).argmax(dim=1)
            new, _ = advance(task, zeros, params, frames[rows, 0], chosen, level_t[rows], inside)
            frames[rows] = torch.cat([new[:, None], frames[rows, :-1]], dim=1)
            actions[rows] = push_history(actions[rows], chosen)
            recent[rows] = torch.cat([recent[rows, 1:], new[:, None]], dim=1)
            stage.steps += 1
            stage.paths.append(frames[:, 0].clone())
            stage.levels.append(level_index + level_offset)
            repeats = count_repeats(recent[rows], new, task.tolerance(new, level_t[rows]))
            active[rows[repeats > env.oscillation_repeats]] = False
        pose = task.settle(recent)
        per_start = pose.reshape(num_targets, num_starts, dim)
        combined = task.combine(per_start).cpu().numpy().astype(np.float64)
        names = [model.names[t] for t in which]
        stage.level_estimates.append(task.finalize(combined, names))
    stage.paths.append(pose)
    stage.levels.append(len(used) - 1 + level_offset)
    return stage


@torch.no_grad()
def search(
    model: Model,
    volume: Volume,
    device: torch.device | str = "cpu",
    scan: ScanPyramid | None = None,
    num_starts: int | None = None,
    consensus_level: int | None = None,
    targets: Sequence[str] | None = None,
) -> SearchResult:
    """Find every target the model knows in ``volume`` (or only those named in ``targets``, in
    the model's order); poses in world RAS mm.

    ``num_starts`` (1 to 7) overrides the model's ``search.num_starts``, ``consensus_level``
    its ``search.consensus_level`` (-1: no second search). A search of some of the targets
    has no second search and no adaptive level choice (both fit the layout of all targets).
    """
    config, task = model.config, model.task
    device = torch.device(device)
    rows_searched = _target_rows(model, targets)
    names = tuple(model.names[r] for r in rows_searched)
    if config.search.mirror and model.kind != "landmark":
        raise InputError(f"search.mirror is for landmark models, not {model.kind} models")
    detection = None
    if config.search.detector_weight > 0:  # the detector reads the scan while the agent moves
        detection = _start_detection(model, volume, names, device)
    if scan is None:
        scan = build_pyramid(volume, [lv.spacing_mm for lv in config.env.levels], device)
    known = len(model.descriptions)
    descriptions = tuple(model.descriptions[r] for r in rows_searched if r < known)
    num_targets = len(rows_searched)
    starts = task.initial(scan, num_starts or config.search.num_starts, len(model.names))
    starts = starts[rows_searched]
    num_starts = starts.shape[1]
    first = _run_levels(model, scan, starts, 0, 0, device, targets=rows_searched)
    chosen = len(first.level_estimates) - 1
    if num_targets == len(model.names):
        chosen = _chosen_level(model, first.level_estimates)
    estimate = first.level_estimates[chosen]
    paths, levels = first.paths, first.levels
    steps, consensus = first.steps, None
    if consensus_level is None:
        consensus_level = config.search.consensus_level
    if num_targets < len(model.names):
        consensus_level = -1  # the layout fit needs every target
    if consensus_level is not None and consensus_level >= len(first.level_estimates):
        raise InputError(
            f"search.consensus_level is {consensus_level}, but the search has only "
            f"{len(first.level_estimates)} level(s) (0-based; -1: no second search)"
        )
    if consensus_level is not None and consensus_level >= 0:
        consensus = task.consensus_starts(estimate)
    redo = np.zeros(num_targets, dtype=bool)
    if consensus is not None:
        redo = np.isfinite(consensus).reshape(num_targets, -1).all(axis=1)
    if consensus is not None and redo.any():
        # the second search runs from one start per target it redoes (a task leaves NaN
        # starts for targets whose first estimate stands); every start's path shows it
        assert consensus_level is not None
        offset = len(config.env.levels)
        rows = np.flatnonzero(redo)
        second = _run_levels(
            model, scan, consensus[rows], min(consensus_level, chosen), offset, device,
            targets=rows_searched[rows], last_level=chosen,
        )  # fmt: skip
        estimate = estimate.copy()
        estimate[rows] = task.consensus_merge(consensus[rows, 0], second.level_estimates[-1])
        final = paths[-1].reshape(num_targets, num_starts, -1)
        rows_t = torch.as_tensor(rows, device=final.device)
        for path in second.paths:
            full = final.clone()
            full[rows_t] = path[:, None, :].to(final.dtype)
            paths = [*paths, full.reshape(num_targets * num_starts, -1)]
        levels = levels + second.levels
        steps += second.steps
    estimate = task.refine(scan, estimate, names)
    readings = [estimate]
    if config.search.mirror:
        estimate, mirror_steps = _with_mirror_reading(
            model, volume, scan, names, estimate, device, num_starts, consensus_level
        )
        steps += mirror_steps
        readings.append(mirror_reading(readings[0], estimate))
    agent_estimate, detected = None, None
    if detection is not None:
        detector_own, detected = detection.result()
        readings.append(detector_own)
        if config.search.mirror:
            readings.append(mirror_reading(detector_own, detected))
        agent_estimate = estimate
        weight = config.search.detector_weight
        estimate = (1.0 - weight) * estimate + weight * detected
    unblended, layout = None, None
    weight = config.search.layout_weight
    if weight > 0 and num_targets == len(model.names):
        level = chosen if config.search.layout_level is None else config.search.layout_level
        if level >= len(first.level_estimates):
            raise InputError(
                f"search.layout_level is {level}, but the search has only "
                f"{len(first.level_estimates)} level(s) (0-based)"
            )
        layout = task.layout_positions(first.level_estimates[level])
        if layout is not None:
            unblended = estimate
            estimate = (1.0 - weight) * estimate + weight * layout
    if consensus is not None:
        consensus = np.where(redo[:, None], consensus[:, 0], np.nan)
    n = num_targets * num_starts
    stacked = torch.stack(paths, dim=1).cpu().numpy().astype(np.float64)  # (n, T, D)
    level_stack = np.tile(np.asarray(levels, dtype=np.int64), (n, 1))
    per_target_paths, per_target_levels = [], []
    for t in range(num_targets):
        rows_t = range(t * num_starts, (t + 1) * num_starts)
        per_target_paths.append([stacked[r] for r in rows_t])
        per_target_levels.append([level_stack[r] for r in rows_t])
    return SearchResult(
        names,
        descriptions,
        estimate,
        per_target_paths,
        per_target_levels,
        steps,
        first.level_estimates,
        chosen,
        consensus,
        unblended,
        layout,
        detected,
        agent_estimate,
        np.stack(readings) if len(readings) > 1 else None,
    )


def _start_detection(
    model: Model, volume: Volume, names: tuple[str, ...], device: torch.device
) -> Future[tuple[np.ndarray, np.ndarray]]:
    """The points of the detector the model carries, computed in a worker thread (the agent's
    search, many small steps, leaves cores idle that the detector's large convolutions use);
    InputError at once when the model carries no detector."""
    from medrl.supervised.ensemble import detected_readings

    if volume is None:  # a search of a prepared pyramid alone (scan=...)
        raise InputError(
            "search.detector_weight > 0 needs the scan itself (the detector prepares its own "
            "pyramid); search this model with search.detector_weight=0, or pass the volume"
        )
    if model.detector is None or model.kind != "landmark":
        raise InputError(
            f"search.detector_weight is {model.config.search.detector_weight:g}, but this "
            f"{model.kind} model carries no supervised detector (MODEL/detector)"
        )
    mirror = model_mirror_partners(model) if model.config.search.mirror else None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medrl-detector")
    future = pool.submit(detected_readings, model.detector, volume, names, device, mirror)
    pool.shutdown(wait=False)  # the thread ends with the detection
    return future


def _with_mirror_reading(
    model: Model,
    volume: Volume,
    scan: ScanPyramid,
    names: tuple[str, ...],
    estimate: np.ndarray,
    device: torch.device,
    num_starts: int,
    consensus_level: int | None,
) -> tuple[np.ndarray, int]:
    """``estimate`` (the agent's points of ``names``) averaged with the agent's reading of the
    scan's mirror image (``search.mirror``), and the search steps that reading took. Where
    some landmarks have no partner, the mirror image is searched for the others only, as a
    search of some targets (no second search, no adaptive level choice)."""
    from medrl.geometry.mirror import mirror_pyramid, reflection_ras, with_mirror_reading

    mirror = model_mirror_partners(model)
    wanted = {mirror[name] for name in names if name in mirror}
    if not wanted:
        return estimate, 0
    reflection = reflection_ras(float(scan.intensity_centre_ras[0]))
    plain = with_overrides(
        model, ["search.mirror=false", "search.detector_weight=0", "search.layout_weight=0"]
    )
    seen = search(
        plain, volume, device, scan=mirror_pyramid(scan, reflection), num_starts=num_starts,
        consensus_level=consensus_level, targets=[n for n in model.names if n in wanted],
    )  # fmt: skip
    row = {name: index for index, name in enumerate(seen.names)}
    averaged = with_mirror_reading(names, estimate, row, seen.estimate, mirror, reflection)
    return averaged, seen.steps


def model_mirror_partners(model: Model) -> dict[str, str]:
    """Each landmark's mirror partner by name, from the model's reference layout; InputError
    when the model has none."""
    layout = getattr(model.task, "reference_points_ras", None)
    if layout is None or len(layout) != len(model.names):
        raise InputError(
            "search.mirror needs the model's reference layout of all its landmarks "
            "(a landmark model trained or refitted by this version of medrl)"
        )
    layout_bytes = np.asarray(layout, dtype=np.float64).round(3).tobytes()
    return dict(_partners(tuple(model.names), layout_bytes))  # a copy: the cached one is shared


@lru_cache(maxsize=8)
def _partners(names: tuple[str, ...], layout_bytes: bytes) -> dict[str, str]:
    from medrl.geometry.mirror import mirror_partners, partner_names

    layout = np.frombuffer(layout_bytes, dtype=np.float64).reshape(len(names), 3)
    return partner_names(names, mirror_partners(layout))


def _target_rows(model: Model, targets: Sequence[str] | None) -> np.ndarray:
    """Rows of the model's targets named in ``targets`` (all when None), in the model's order;
    InputError for a name the model does not know."""
    if targets is None:
        return np.arange(len(model.names))
    unknown = [name for name in targets if name not in model.names]
    if unknown or not targets:
        raise InputError(
            f"the {model.kind} model has no target(s) {', '.join(unknown) or '(none named)'}; "
            f"it knows {', '.join(model.names)}"
        )
    return np.array([r for r, name in enumerate(model.names) if name in set(targets)])


def _chosen_level(model: Model, level_estimates: list[np.ndarray]) -> int:
    """The finest level, or with ``search.adaptive_levels`` the level whose estimates lie
    closest to the task's reference layout (the finer one on a tie)."""
    last = len(level_estimates) - 1
    if not model.config.search.adaptive_levels:
        return last
    residuals = [model.task.layout_residual(e) for e in level_estimates]
    if any(r is None for r in residuals):
        return last
    ranked = [(float(r), -level) for level, r in enumerate(residuals)]  # type: ignore[arg-type]
    return -min(ranked)[1]
