"""The slice task: a slice moved up and down the scan's own slice axis until it passes through a
target (Laousy et al. 2021): the axial slices through AC and PC, or through any landmark a
datalist names.

Pose (9 numbers, world RAS mm), the plane task's: a point ``c`` on the slice (the centre of the
view), the slice's unit normal ``n`` and an in-plane axis ``u`` (``v = n x u``). ``n`` is the
direction in which the slice index grows (the gradient of the index along the slice axis,
oriented so that its largest RAS component is positive) and ``u`` the next voxel axis, made
perpendicular to ``n``: the slice is the scan's own voxel slice, so the truth (the slice index
of the target) is exact in every rotated scan, and the frame never changes; only ``c`` moves.

Actions: up and down (+/- the level's ``step_mm`` along ``n``: the slice moves) and +/- ``u``,
+/- ``v`` (the view's centre moves within the slice). Distance: how far the target lies from
the slice along ``n``, plus ``task.slice_inplane_weight`` x how far it lies from the view's
centre within the slice; reward: its decrease, clipped to ``env.reward_clip_mm``; the score is
the slice distance alone. With up and down alone (the first design) the fine levels did not
learn: the view's centre stays wherever the label-free start put it, up to 20 mm beside the
target, and the commissures are then out of the fine levels' view (validation after each
level, mm: 1.3, 2.2, 4.6 with a slab as wide as the head at every level; 1.7, 2.1, 5.1 with the
plane task's slab). The in-plane moves only bring the target into view.

The slice axis is ``task.slice_axis`` (0, 1, 2: the voxel axis i, j, k) or, with -1, the voxel
axis closest to superior-inferior. A scan's axis is tilted against the anatomy by however the
head lies in the scanner, so training tilts it too: a training start turns the goal's frame by
a random rotation within the level's ``start_angle_deg``, then moves the slice along the
turned normal (distributed like the radius of a uniform ball: mostly far) and the view's
centre within the slice, both within the level's ``start_radius_mm``.

Observation: the plane task's slab in the slice's frame: the slice and its neighbours at the
level's spacing, ``P`` x ``P`` samples across at ``task.plane_view_factor`` x that spacing, and
a second slab ``task.plane_context`` times wider and thicker. Laousy et al. showed their agent
a 2D projection of a CT, where bone marks the vertebrae; the cues for AC and PC in a brain MRI
are soft-tissue structures that a projection through the head would bury.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from medrl.data.augment import AugmentParams, inverse_transform_points
from medrl.data.datalist import Case
from medrl.envs.pyramid import ScanPyramid
from medrl.errors import InputError
from medrl.tasks.base import TargetTable
from medrl.tasks.landmark import landmark_table
from medrl.tasks.plane import PlaneTask, orthonormal, rotate

SLICE_ACTIONS = ("+n", "-n", "+u", "-u", "+v", "-v")
DEFAULT_TARGETS = ("1", "2")
"""AFID 1 (AC) and AFID 2 (PC): the slices every AC-PC planning starts from."""
_FRAME_STEP_MM = 10.0
"""Directions are carried through an augmentation as the difference of two moved points."""


def slice_axis_of(index_to_ras: np.ndarray, axis: int = -1) -> int:
    """The voxel axis (0, 1, 2) whose slices are stacked along ``axis`` or, with -1, the one
    whose slice normal is closest to superior-inferior."""
    if axis in (0, 1, 2):
        return axis
    if axis != -1:
        raise InputError(f"task.slice_axis must be 0, 1, 2 or -1 (closest to S), not {axis}")
    gradients = np.linalg.inv(np.asarray(index_to_ras, dtype=np.float64)[:3, :3])
    normals = gradients / np.linalg.norm(gradients, axis=1, keepdims=True)
    return int(np.argmax(np.abs(normals[:, 2])))


def _positive(vector: np.ndarray) -> np.ndarray:
    """``vector`` flipped so that its largest RAS component is positive."""
    return vector if vector[np.argmax(np.abs(vector))] >= 0 else -vector


def slice_frame(index_to_ras: np.ndarray, axis: int = -1) -> tuple[int, np.ndarray, np.ndarray]:
    """(voxel axis, unit normal ``n`` (3,), unit in-plane axis ``u`` (3,)) of a scan's slices."""
    index_to_ras = np.asarray(index_to_ras, dtype=np.float64)
    axis = slice_axis_of(index_to_ras, axis)
    gradient = np.linalg.inv(index_to_ras[:3, :3])[axis]
    normal = _positive(gradient / np.linalg.norm(gradient))
    other = index_to_ras[:3, (axis + 1) % 3]
    other = other - (other @ normal) * normal
    return axis, normal, _positive(other / np.linalg.norm(other))


def slice_index(index_to_ras: np.ndarray, points_ras: np.ndarray, axis: int) -> np.ndarray:
    """(N,) fractional slice indices of points (N, 3) along voxel axis ``axis``."""
    ras_to_index = np.linalg.inv(np.asarray(index_to_ras, dtype=np.float64))
    points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    return points @ ras_to_index[axis, :3] + ras_to_index[axis, 3]


def slice_spacing_mm(index_to_ras: np.ndarray, axis: int) -> float:
    """Distance (mm) between neighbouring slices along their normal."""
    gradient = np.linalg.inv(np.asarray(index_to_ras, dtype=np.float64)[:3, :3])[axis]
    return float(1.0 / np.linalg.norm(gradient))


def slice_distance_mm(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N,) distance (mm) between the slices of poses (N, 9), along the truth's normal."""
    estimate, truth = np.atleast_2d(estimate), np.atleast_2d(truth)
    return np.abs(((estimate[:, :3] - truth[:, :3]) * truth[:, 3:6]).sum(axis=1))


class SliceTask(PlaneTask):
    name: ClassVar[str] = "slice"
    actions: ClassVar[tuple[str, ...]] = SLICE_ACTIONS
    opposite: ClassVar[tuple[int, ...]] = (1, 0, 3, 2, 5, 4)
    distance_name: ClassVar[str] = "slice_error_mm"
    primary_score: ClassVar[tuple[str, bool]] = ("slice_error_mm", False)
    output_suffix: ClassVar[str] = ".slices.json"

    # ------------------------------------------------------------------ model state
    def state_dict(self) -> dict[str, Any]:
        return {"prior_offset_ras": self.prior_offset_ras.round(3).tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.prior_offset_ras = np.asarray(
                state.get("prior_offset_ras", []), dtype=np.float64
            ).reshape(-1, 3)
        except ValueError as exc:
            raise InputError(f"task.state of the slice model is malformed: {exc}") from exc

    def fit(self, scans: list[ScanPyramid], table: TargetTable) -> None:
        """Mean target point relative to each scan's intensity centre."""
        points = np.stack([poses[:, :3] for poses in table.poses])  # (S, T, 3)
        centres = np.stack([scan.intensity_centre_ras for scan in scans])
        self.prior_offset_ras = np.nanmean(points - centres[:, None], axis=0)

    # ------------------------------------------------------------------ data
    def present_names(self, case: Case) -> set[str]:
        return set(case.landmarks.names) if case.landmarks is not None else set()

    def target_table(self, cases: list[Case], names: Sequence[str] = ()) -> TargetTable:
        if not names:
            present = set.union(set(), *(self.present_names(c) for c in cases))
            if set(DEFAULT_TARGETS) <= present:
                names = DEFAULT_TARGETS
        points = landmark_table(cases, names)
        poses, extra = [], []
        for case, table in zip(cases, points.poses, strict=True):
            _, normal, axis = slice_frame(case.volume.index_to_ras, self.config.task.slice_axis)
            frame = np.broadcast_to(np.concatenate([normal, axis]), (len(table), 6))
            poses.append(np.concatenate([table, frame], axis=1))
            extra.append((normal, axis))
        return TargetTable(points.names, points.descriptions, poses, extra)

    def goals(
        self,
        table: TargetTable,
        scans: Sequence[int],
        targets: Sequence[int],
        params: AugmentParams,
    ) -> torch.Tensor:
        """The target point and the scan's slice frame, carried into the augmented world."""
        rows = [table.poses[s][t] for s, t in zip(scans, targets, strict=True)]
        pose = torch.as_tensor(np.stack(rows), dtype=torch.float32, device=params.matrix.device)
        centre, normal, axis = pose[:, :3], pose[:, 3:6], pose[:, 6:9]
        points = torch.stack(
            [centre, centre + _FRAME_STEP_MM * normal, centre + _FRAME_STEP_MM * axis], dim=1
        )
        moved = inverse_transform_points(params, points)
        frame = [moved[:, 0], moved[:, 1] - moved[:, 0], moved[:, 2] - moved[:, 0]]
        return orthonormal(torch.cat(frame, dim=1))

    # ------------------------------------------------------------------ dynamics
    def move(self, pose: torch.Tensor, action: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        normal, axis = pose[:, 3:6], pose[:, 6:9]
        directions = torch.stack([normal, axis, torch.cross(normal, axis, dim=1)], dim=1)
        direction = directions[torch.arange(len(pose), device=pose.device), action // 2]
        step = self.level_values("step_mm", level)[:, None]
        sign = torch.where(action % 2 == 0, 1.0, -1.0).to(pose.dtype)[:, None]
        return torch.cat([pose[:, :3] + sign * step * direction, pose[:, 3:]], dim=1)

    def distance(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """How far the target lies from the pose's slice along the pose's own normal, plus
        ``task.slice_inplane_weight`` x how far the view's centre is from it in the slice."""
        gap = goal[:, :3] - pose[:, :3]
        along = (gap * pose[:, 3:6]).sum(dim=1)
        across = torch.linalg.norm(gap - along[:, None] * pose[:, 3:6], dim=1)
        return along.abs() + self.config.task.slice_inplane_weight * across

    def tolerance(self, pose: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        shift = 0.25 * self.level_values("step_mm", level)[:, None].expand(-1, 3)
        return torch.cat([shift, torch.full_like(shift, 1e-4).repeat(1, 2)], dim=1)

    def start_offset(self, level: int, rng: np.random.Generator) -> np.ndarray:
        """A rotation vector (3, radians) uniform in the ball of the level's
        ``start_angle_deg``, a shift along the turned normal (mm, its size distributed like the
        radius of a uniform ball of ``start_radius_mm``) and an in-plane shift (2, mm) uniform
        in the disc of the same radius."""
        spec = self.config.env.levels[level]
        turn = rng.normal(size=3)
        turn *= (
            np.radians(spec.start_angle_deg)
            * rng.uniform() ** (1 / 3)
            / (np.linalg.norm(turn) + 1e-12)
        )
        along = rng.choice([-1.0, 1.0]) * spec.start_radius_mm * rng.uniform() ** (1 / 3)
        angle = rng.uniform(0, 2 * np.pi)
        radius = spec.start_radius_mm * np.sqrt(rng.uniform())
        inplane = radius * np.array([np.cos(angle), np.sin(angle)])
        return np.concatenate([turn, [along], inplane])

    def displace(self, goal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        turn = offset[:, :3]
        normal, axis = rotate(goal[:, 3:6], turn), rotate(goal[:, 6:9], turn)
        other = torch.cross(normal, axis, dim=1)
        centre = goal[:, :3] + offset[:, 3:4] * normal + offset[:, 4:5] * axis
        centre = centre + offset[:, 5:6] * other
        return orthonormal(torch.cat([centre, normal, axis], dim=1))

    # ------------------------------------------------------------------ scores
    def scores(self, estimate: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        return {"slice_error_mm": slice_distance_mm(estimate, truth)}

    # ------------------------------------------------------------------ search
    def initial(self, scan: ScanPyramid, num_starts: int, num_targets: int) -> np.ndarray:
        if self.prior_offset_ras.shape != (num_targets, 3):
            raise InputError(
                f"the slice model has no start prior for its {num_targets} targets "
                "(model.yaml task.state); retrain it"
            )
        _, normal, axis = slice_frame(scan.index_to_ras, self.config.task.slice_axis)
        shifts = self.start_shifts(num_starts)
        centres = scan.intensity_centre_ras + self.prior_offset_ras[:, None, :] + shifts[None]
        frame = np.broadcast_to(np.concatenate([normal, axis]), (*centres.shape[:2], 6))
        return np.concatenate([centres, frame], axis=2)

    def finalize(self, estimate: np.ndarray, names: Sequence[str]) -> np.ndarray:
        return estimate
