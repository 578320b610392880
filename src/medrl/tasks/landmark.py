"""The landmark task: a point that walks to an anatomical landmark (Ghesu; Alansary).

Pose: a point (R, A, S) in mm. Actions: one step of the level's ``step_mm`` along +R, -R,
+A, -A, +S, -S. Distance: Euclidean, in mm; reward: its decrease, clipped to
``env.reward_clip_mm``; an episode succeeds within ``env.success_radius_mm``. The observation
is a cube of ``P^3`` voxels at the level's spacing, centred on the point. Label-free search
starts at the scan's intensity centre (and +/- ``search.start_offsets_mm`` along A, S, R).

The model keeps a reference layout, the landmarks of the first fully annotated training scan.
:meth:`LandmarkTask.consensus_starts` fits it to the found points (:mod:`medrl.confidence`)
and searches again, from where the other landmarks put it, every landmark that lies more than
:data:`medrl.confidence.OUTLIER_MM` from there; the others keep their first estimate. A second
search that walks back away from the layout's position leaves the layout's position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from medrl.confidence import OUTLIER_MM, check_layout
from medrl.data.augment import AugmentParams, inverse_transform_points
from medrl.data.datalist import Case
from medrl.envs.pyramid import ScanPyramid
from medrl.envs.sampler import cube_offsets
from medrl.errors import InputError
from medrl.geometry.robust_affine import mean_layout
from medrl.tasks.base import TargetTable, Task

ACTION_NAMES = ("+R", "-R", "+A", "-A", "+S", "-S")
_ACTION_VECTORS = torch.tensor(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32
)


def action_vectors(device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit moves (6, 3) of the six actions, along RAS axes."""
    return _ACTION_VECTORS.to(device)


def landmark_table(cases: list[Case], names: Sequence[str] = ()) -> TargetTable:
    """Names, descriptions and per-case targets (L, 3) RAS, NaN where a case lacks one."""
    labelled = [case for case in cases if case.landmarks is not None]
    if not labelled:
        raise InputError("no case has landmarks to learn from")
    first = labelled[0].landmarks
    assert first is not None
    names = tuple(names) or first.names
    unknown = [n for n in names if not any(n in c.landmarks.names for c in labelled)]
    if unknown:
        raise InputError(f"landmark(s) {', '.join(unknown)} appear in no training case")
    descriptions = []
    for name in names:
        desc = ""
        for case in labelled:
            if name in case.landmarks.names and case.landmarks.descriptions:
                desc = case.landmarks.descriptions[case.landmarks.names.index(name)]
                break
        descriptions.append(desc)
    targets = []
    for case in cases:
        table = np.full((len(names), 3), np.nan)
        if case.landmarks is not None:
            for row, name in enumerate(names):
                if name in case.landmarks.names:
                    table[row] = case.landmarks.points_ras[case.landmarks.names.index(name)]
        targets.append(table)
    return TargetTable(tuple(names), tuple(descriptions), targets)


class LandmarkTask(Task):
    name: ClassVar[str] = "landmark"
    actions: ClassVar[tuple[str, ...]] = ACTION_NAMES
    opposite: ClassVar[tuple[int, ...]] = (1, 0, 3, 2, 5, 4)
    pose_dim: ClassVar[int] = 3
    distance_name: ClassVar[str] = "distance_mm"
    annotation: ClassVar[str] = "landmarks"
    primary_score: ClassVar[tuple[str, bool]] = ("error_mm", False)
    output_suffix: ClassVar[str] = ".fcsv"

    # ------------------------------------------------------------------ model state
    def state_dict(self) -> dict[str, Any]:
        if not len(self.reference_points_ras):
            return {}
        return {"reference_points_ras": self.reference_points_ras.round(3).tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.reference_points_ras = np.asarray(
                state.get("reference_points_ras", []), dtype=np.float64
            ).reshape(-1, 3)
        except ValueError as exc:
            raise InputError(f"task.state of the landmark model is malformed: {exc}") from exc

    def fit(self, scans: list[ScanPyramid], table: TargetTable) -> None:
        """The reference layout: the mean shape (:func:`mean_layout`) of the distinct complete
        landmark sets of the training scans (one per brain: the contrasts and stripped copies
        of a brain share its landmarks), in the frame of the first."""
        layouts: list[np.ndarray] = []
        for poses in table.poses:
            poses = np.asarray(poses, dtype=np.float64)
            if np.isfinite(poses).all() and not any(
                np.allclose(poses, known, atol=1e-6) for known in layouts
            ):
                layouts.append(poses)
        if layouts:
            self.reference_points_ras = mean_layout(layouts)

    # ------------------------------------------------------------------ data
    def target_table(self, cases: list[Case], names: Sequence[str] = ()) -> TargetTable:
        return landmark_table(cases, names)

    def goals(
        self,
        table: TargetTable,
        scans: Sequence[int],
        targets: Sequence[int],
        params: AugmentParams,
    ) -> torch.Tensor:
        points = np.stack([table.poses[s][t] for s, t in zip(scans, targets, strict=True)])
        device = params.matrix.device
        points_t = torch.as_tensor(points, dtype=torch.float32, device=device)[:, None]
        return inverse_transform_points(params, points_t)[:, 0]

    # ------------------------------------------------------------------ dynamics
    def move(self, pose: torch.Tensor, action: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        step = self.level_values("step_mm", level)
        return pose + action_vectors(pose.device)[action] * step[:, None]

    def distance(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return torch.linalg.norm(pose - goal, dim=-1)

    def reward(self, d_old: torch.Tensor, d_new: torch.Tensor) -> torch.Tensor:
        clip = self.config.env.reward_clip_mm
        return torch.clamp(d_old - d_new, -clip, clip)

    def success(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self.distance(pose, goal) < self.config.env.success_radius_mm

    def tolerance(self, pose: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return (0.25 * self.level_values("step_mm", level))[:, None].expand(-1, 3)

    def start_offset(self, level: int, rng: np.random.Generator) -> np.ndarray:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-12
        return direction * self.config.env.levels[level].start_radius_mm * rng.uniform() ** (1 / 3)

    def displace(self, goal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return goal + offset

    # ------------------------------------------------------------------ observation
    def grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = cube_offsets(self.level_values("spacing_mm", level), patch_size)
        return pose, offsets[:, None, :].expand(-1, 3, -1)

    def scores(self, estimate: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        return {"error_mm": np.linalg.norm(estimate - truth, axis=1)}

    # ------------------------------------------------------------------ search
    def initial(self, scan: ScanPyramid, num_starts: int, num_targets: int) -> np.ndarray:
        starts = scan.intensity_centre_ras + self.start_shifts(num_starts)
        return np.broadcast_to(starts, (num_targets, *starts.shape)).copy()

    def consensus_starts(self, estimate: np.ndarray) -> np.ndarray | None:
        """Where the fitted layout puts the landmarks that lie far from it (NaN rows: the
        others, kept); None without a layout or on a scan whose layout is implausible."""
        if self.reference_points_ras.shape != estimate.shape:
            return None
        check = check_layout(self.reference_points_ras, estimate)
        if not check.plausible:
            return None
        starts = np.where(check.outliers[:, None], check.expected_ras, np.nan)
        return starts[:, None, :]

    def layout_residual(self, estimate: np.ndarray) -> float | None:
        if self.reference_points_ras.shape != estimate.shape:
            return None
        residual = check_layout(self.reference_points_ras, estimate).residual_mm
        return float(np.nanmedian(residual)) if np.isfinite(residual).any() else None

    def layout_positions(self, estimate: np.ndarray) -> np.ndarray | None:
        """Where the reference layout, robustly fitted to ``estimate`` (T, 3), puts every
        landmark; None without a layout or on a scan whose layout is implausible."""
        if self.reference_points_ras.shape != estimate.shape:
            return None
        check = check_layout(self.reference_points_ras, estimate)
        return check.expected_ras if check.plausible else None

    def consensus_merge(self, starts: np.ndarray, second: np.ndarray) -> np.ndarray:
        """A second search that walks away from where the other landmarks put the landmark
        (further than :data:`medrl.confidence.OUTLIER_MM`) went back to the first search's
        mistake: the layout's position stands instead (its confidence stays low)."""
        away = np.linalg.norm(second - starts, axis=1) > OUTLIER_MM
        return np.where(away[:, None], starts, second)
