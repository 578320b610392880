"""The box task: a world-axis-aligned box reshaped until it encloses a structure (Navarro et al.,
MIDL 2020).

Pose: centre (R, A, S) and size (R, A, S) in mm. Eleven actions, each a step of the level's
``step_fraction`` of the box's own size: six translations (+/-R, +/-A, +/-S), two global
scalings (grow x(1 + f), shrink /(1 + f)) and three per-axis deformations (thinner along R, A
or S, /(1 + f)); with the global scalings they reach any size. Distance: 1 - GIoU (generalised
IoU, which keeps a gradient when the boxes do not overlap, where plain IoU is 0); reward: the
sign of its decrease (Navarro's sign of the IoU change); a training episode succeeds at IoU
above ``task.box_success_iou``. The observation is the box's contents with context, resampled
to a fixed ``P^3`` grid (``task.box_context`` times the box plus ``task.box_margin_mm`` on
each side), so one network serves small and large structures; the network also sees the
box's log size. Label-free search starts from the structure's mean box relative to the scan's
intensity centre, learned from the training scans (stored in the model).

The model also keeps a reference layout: the box centres of the first fully labelled training
scan and, per structure, the voxels that are extreme along 26 directions. After a search,
:meth:`BoxTask.consensus_starts` fits that layout to the found centres with a robust affine
map (:mod:`medrl.geometry.robust_affine`) and carries each structure's extreme voxels with it:
where the other 31 structures say a structure's box is. With ``search.consensus_level`` the
agent searches again from there (docs/tasks.md).

Truth boxes come from label maps: the tight box around a structure's voxels. Under an
augmentation the box is recomputed from the structure's transformed voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError

from medrl.data.augment import AugmentParams, inverse_transform_points
from medrl.data.datalist import Case
from medrl.envs.pyramid import ScanPyramid
from medrl.errors import InputError
from medrl.geometry.boxes import (
    box_iou,
    boxes_from_points,
    centre_distance_mm,
    structure_points_ras,
    voxel_half_extent_mm,
    wall_distance_mm,
)
from medrl.geometry.robust_affine import apply_affine, fit_affine_robust
from medrl.tasks.base import TargetTable, Task

BOX_ACTIONS = (
    "+R", "-R", "+A", "-A", "+S", "-S", "grow", "shrink", "thinner-R", "thinner-A", "thinner-S",
)  # fmt: skip
_TRANSLATIONS = torch.tensor(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]] + [[0, 0, 0]] * 5,
    dtype=torch.float32,
)
# log size change per action, in units of log(1 + f)
_LOG_SCALES = torch.tensor(
    [[0, 0, 0]] * 6 + [[1, 1, 1], [-1, -1, -1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]],
    dtype=torch.float32,
)
_SIZE_UNIT_MM = 16.0
# the 26 directions of a 3x3x3 neighbourhood: a structure's extreme voxels along them bound
# its box under any nearly rigid map (up to second order in the rotation)
_DIRECTIONS = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)], dtype=np.float64) - 1.0


def box_min_max(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = box[..., 3:] / 2
    return box[..., :3] - half, box[..., :3] + half


def box_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalised IoU of boxes (..., 6)."""
    a_min, a_max = box_min_max(a)
    b_min, b_max = box_min_max(b)
    inter = torch.clamp(torch.minimum(a_max, b_max) - torch.maximum(a_min, b_min), min=0)
    inter_v = inter.prod(dim=-1)
    union = a[..., 3:].prod(dim=-1) + b[..., 3:].prod(dim=-1) - inter_v
    hull = (torch.maximum(a_max, b_max) - torch.minimum(a_min, b_min)).prod(dim=-1)
    iou = inter_v / union.clamp(min=1e-9)
    return iou, iou - (hull - union) / hull.clamp(min=1e-9)


def _extreme_points(points: np.ndarray) -> np.ndarray:
    """The points that can be extreme under a smooth, nearly affine map: the hull vertices."""
    if len(points) < 8:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # flat structures: keep all points
        return points


def directional_extremes(points: np.ndarray) -> np.ndarray:
    """The distinct points (K <= 26, 3) that are furthest along each of :data:`_DIRECTIONS`."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.unique(points[np.argmax(points @ _DIRECTIONS.T, axis=0)], axis=0)


class BoxTask(Task):
    name: ClassVar[str] = "box"
    actions: ClassVar[tuple[str, ...]] = BOX_ACTIONS
    opposite: ClassVar[tuple[int, ...]] = (1, 0, 3, 2, 5, 4, 7, 6, -1, -1, -1)
    pose_dim: ClassVar[int] = 6
    pose_features: ClassVar[int] = 3
    distance_name: ClassVar[str] = "giou_distance"
    annotation: ClassVar[str] = "labels"
    primary_score: ClassVar[tuple[str, bool]] = ("iou", True)
    output_suffix: ClassVar[str] = ".mrk.json"

    # ------------------------------------------------------------------ model state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "prior_offset_ras": self.prior_offset_ras.round(3).tolist(),
            "prior_size_mm": self.prior_size_mm.round(3).tolist(),
        }
        if len(self.reference_centres_ras):
            state["reference"] = {
                "centres_ras": self.reference_centres_ras.round(3).tolist(),
                "extremes_ras": [e.round(3).tolist() for e in self.reference_extremes_ras],
                "half_extent_mm": self.reference_half_extent_mm.round(3).tolist(),
            }
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.prior_offset_ras = np.asarray(state.get("prior_offset_ras", []), dtype=np.float64)
        self.prior_size_mm = np.asarray(state.get("prior_size_mm", []), dtype=np.float64)
        reference = state.get("reference") or {}
        try:
            self.reference_centres_ras = np.asarray(
                reference.get("centres_ras", []), dtype=np.float64
            ).reshape(-1, 3)
            self.reference_extremes_ras = [
                np.asarray(e, dtype=np.float64).reshape(-1, 3)
                for e in reference.get("extremes_ras", [])
            ]
            self.reference_half_extent_mm = np.asarray(
                reference.get("half_extent_mm", [0.0, 0.0, 0.0]), dtype=np.float64
            ).reshape(3)
        except ValueError as exc:
            raise InputError(f"task.state.reference is malformed: {exc}") from exc
        if len(self.reference_extremes_ras) != len(self.reference_centres_ras) or any(
            len(e) == 0 for e in self.reference_extremes_ras
        ):
            raise InputError(
                f"task.state.reference has {len(self.reference_centres_ras)} centres but "
                f"{len(self.reference_extremes_ras)} non-empty point sets"
            )

    def fit(self, scans: list[ScanPyramid], table: TargetTable) -> None:
        """Mean box of every structure relative to the scan's intensity centre."""
        offsets = np.stack(
            [table.poses[i][:, :3] - scan.intensity_centre_ras for i, scan in enumerate(scans)]
        )
        log_sizes = np.log(np.stack([table.poses[i][:, 3:] for i in range(len(scans))]))
        self.prior_offset_ras = np.nanmean(offsets, axis=0)
        self.prior_size_mm = np.exp(np.nanmean(log_sizes, axis=0))
        # the reference layout: the first scan with every structure
        for index, poses in enumerate(table.poses):
            if np.isfinite(poses).all() and index < len(table.extra) and table.extra[index]:
                points, pad = table.extra[index]
                self.reference_centres_ras = np.asarray(poses[:, :3], dtype=np.float64)
                self.reference_extremes_ras = [directional_extremes(p) for p in points]
                self.reference_half_extent_mm = np.asarray(pad, dtype=np.float64)
                break

    # ------------------------------------------------------------------ data
    def target_table(self, cases: list[Case], names: Sequence[str] = ()) -> TargetTable:
        labelled = [c for c in cases if c.labels is not None and c.label_names]
        if not labelled:
            raise InputError(
                "no case has a label map (datalist field 'labels') to learn boxes from"
            )
        first = labelled[0]
        assert first.label_names is not None
        names = tuple(names) or tuple(first.label_names[v] for v in sorted(first.label_names))
        poses, extra = [], []
        for case in cases:
            if case.labels is None or not case.label_names:
                poses.append(np.full((len(names), 6), np.nan))
                extra.append(None)
                continue
            _, points = structure_points_ras(case.labels, case.label_names, names)
            pad = voxel_half_extent_mm(case.labels)
            poses.append(boxes_from_points(points, pad))
            extra.append(([_extreme_points(p) for p in points], pad))
        return TargetTable(names, names, poses, extra)

    def goals(
        self,
        table: TargetTable,
        scans: Sequence[int],
        targets: Sequence[int],
        params: AugmentParams,
    ) -> torch.Tensor:
        device = params.matrix.device
        out = torch.empty((len(scans), 6), dtype=torch.float32, device=device)
        for row, (scan, target) in enumerate(zip(scans, targets, strict=True)):
            points, pad = table.extra[scan]
            source = torch.as_tensor(points[target], dtype=torch.float32, device=device)[None]
            index = torch.tensor([row], device=device)
            moved = inverse_transform_points(params.index(index), source)[0]
            pad_t = torch.as_tensor(pad, dtype=torch.float32, device=device)
            low, high = moved.min(dim=0).values - pad_t, moved.max(dim=0).values + pad_t
            out[row] = torch.cat([(low + high) / 2, high - low])
        return out

    # ------------------------------------------------------------------ dynamics
    def move(self, pose: torch.Tensor, action: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        fraction = self.level_values("step_fraction", level)[:, None]
        centre, size = pose[:, :3], pose[:, 3:]
        centre = centre + _TRANSLATIONS.to(pose.device)[action] * fraction * size
        size = size * torch.exp(_LOG_SCALES.to(pose.device)[action] * torch.log1p(fraction))
        return torch.cat([centre, size], dim=1)

    def valid(self, pose: torch.Tensor) -> torch.Tensor:
        task = self.config.task
        size = pose[:, 3:]
        return ((size >= task.box_min_size_mm) & (size <= task.box_max_size_mm)).all(dim=1)

    def distance(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return 1.0 - box_iou_giou(pose, goal)[1]

    def reward(self, d_old: torch.Tensor, d_new: torch.Tensor) -> torch.Tensor:
        return torch.sign(d_old - d_new)

    def success(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return box_iou_giou(pose, goal)[0] > self.config.task.box_success_iou

    def tolerance(self, pose: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        step = 0.25 * self.level_values("step_fraction", level)[:, None] * pose[:, 3:]
        return torch.cat([step, step], dim=1)

    def start_offset(self, level: int, rng: np.random.Generator) -> np.ndarray:
        """(shift (3) mm, log size factor (3), margin (1) mm): see :meth:`displace`."""
        lv = self.config.env.levels[level]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-12
        shift = direction * lv.start_radius_mm * rng.uniform() ** (1 / 3)
        log_range = np.log(max(lv.size_range, 1.0))
        factors = rng.uniform(-log_range, log_range, size=3)
        return np.concatenate([shift, factors, [lv.start_margin_mm]])

    def displace(self, goal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """The goal grown by the margin on every side, shifted, and scaled per axis."""
        size = (goal[:, 3:] + 2 * offset[:, 6:7]) * torch.exp(offset[:, 3:6])
        return torch.cat([goal[:, :3] + offset[:, :3], size], 1)

    # ------------------------------------------------------------------ observation
    def grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        task = self.config.task
        span = pose[:, 3:] * task.box_context + 2 * task.box_margin_mm  # (N, 3)
        unit = torch.linspace(-0.5, 0.5, patch_size, device=pose.device)
        return pose[:, :3], span[:, :, None] * unit[None, None, :]

    @property
    def num_channels(self) -> int:
        return 2 if self.config.task.box_context_mm > 0 else 1

    def context_grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> torch.Tensor | None:
        """A fixed cube of ``task.box_context_mm`` around the box's centre (or the box's own
        view where that is larger): where the structure is when the box is far off."""
        side = self.config.task.box_context_mm
        if side <= 0:
            return None
        task = self.config.task
        span = pose[:, 3:] * task.box_context + 2 * task.box_margin_mm
        span = torch.clamp(span, min=side)
        unit = torch.linspace(-0.5, 0.5, patch_size, device=pose.device)
        return span[:, :, None] * unit[None, None, :]

    def features(self, pose: torch.Tensor) -> torch.Tensor:
        return torch.log(pose[:, 3:] / _SIZE_UNIT_MM)

    def scores(self, estimate: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "iou": box_iou(estimate, truth),
            "centre_mm": centre_distance_mm(estimate, truth),
            "wall_mm": wall_distance_mm(estimate, truth),
        }

    # ------------------------------------------------------------------ search
    def initial(self, scan: ScanPyramid, num_starts: int, num_targets: int) -> np.ndarray:
        if self.prior_offset_ras.shape != (num_targets, 3):
            raise InputError(
                f"the box model has no start prior for its {num_targets} structures "
                "(model.yaml task.state); retrain it"
            )
        shifts = self.start_shifts(num_starts)
        centres = scan.intensity_centre_ras + self.prior_offset_ras[:, None, :] + shifts[None]
        margin = self.config.env.levels[0].start_margin_mm
        sizes = np.broadcast_to(self.prior_size_mm[:, None, :] + 2 * margin, centres.shape)
        return np.concatenate([centres, sizes], axis=2)

    def consensus_starts(self, estimate: np.ndarray) -> np.ndarray | None:
        if len(self.reference_centres_ras) != len(estimate):
            return None
        try:
            fit = fit_affine_robust(self.reference_centres_ras, estimate[:, :3])
        except ValueError:
            return None
        carried = [apply_affine(fit.matrix, e) for e in self.reference_extremes_ras]
        return boxes_from_points(carried, self.reference_half_extent_mm)[:, None, :]

    def settle(self, recent: torch.Tensor) -> torch.Tensor:
        tail = recent[:, -4:]
        centre = torch.nanmean(tail[..., :3], dim=1)
        size = torch.exp(torch.nanmean(torch.log(tail[..., 3:]), dim=1))
        return torch.cat([centre, size], dim=1)
