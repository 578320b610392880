"""The plane task: a plane tilted and shifted through a 3D scan until it lies on a standard view
plane (Alansary et al., MICCAI 2018): the mid-sagittal plane (MSP) and the AC-PC plane.

Pose (9 numbers, world RAS mm): a point ``c`` on the plane, its unit normal ``n`` and a unit
in-plane axis ``u``; ``v = n x u``. A point and a rotation frame have no singularity (angles
of the normal would at the poles). Six actions: tilt by +/- the level's ``step_deg`` about
``u`` and about ``v`` (through ``c``), and shift +/- ``step_mm`` along ``n``. Alansary's set
also turns the plane about its own normal; that leaves the plane where it is (its reward is
always zero), so this set leaves it out. Distance: the symmetric point-to-plane distance of
the reference points plus ``task.plane_radius_mm`` x the angle between the normals (radians):
how far apart the planes are at that radius from the reference point. Reward: its decrease,
clipped to ``env.reward_clip_mm``.

Observation: an oblique slab sampled on the plane, ``P^3`` samples along ``u``, ``v`` (spacing
``task.plane_view_factor`` x the level's spacing) and ``n`` (the level's spacing), and a
second channel twice as wide and thick (``task.plane_context``), both in the plane's own frame.
Label-free search starts from the mean target plane relative to the scan's intensity centre,
learned from the training scans (stored in the model).

Targets come from AFIDs (:func:`medrl.geometry.planes.planes_from_afids`); under a training
augmentation the defining AFIDs are moved and the planes fitted again, so the truth is exact
under non-affine warps too.
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
from medrl.geometry.planes import (
    MIDLINE_AFIDS,
    PLANE_NAMES,
    plane_angle_deg,
    plane_distance_mm,
    planes_from_afids,
)
from medrl.geometry.symmetry import find_symmetry_plane
from medrl.tasks.acpc_locator import acpc_from_landmarks
from medrl.tasks.acpc_template import acpc_from_template
from medrl.tasks.base import TargetTable, Task

PLANE_ACTIONS = ("tilt+u", "tilt-u", "tilt+v", "tilt-v", "+n", "-n")
PLANE_DESCRIPTIONS = {
    "MSP": "mid-sagittal plane (least squares through the midline AFIDs)",
    "ACPC": "AC-PC plane (through AC and PC, perpendicular to the MSP)",
}


def orthonormal(pose: torch.Tensor) -> torch.Tensor:
    """Poses (N, 9) with the normal made unit and ``u`` made unit and perpendicular to it."""
    centre, normal, axis = pose[:, :3], pose[:, 3:6], pose[:, 6:9]
    normal = normal / torch.linalg.norm(normal, dim=1, keepdim=True).clamp(min=1e-12)
    axis = axis - (axis * normal).sum(dim=1, keepdim=True) * normal
    axis = axis / torch.linalg.norm(axis, dim=1, keepdim=True).clamp(min=1e-12)
    return torch.cat([centre, normal, axis], dim=1)


def rotate(vectors: torch.Tensor, rotvec: torch.Tensor) -> torch.Tensor:
    """Vectors (N, 3) rotated by rotation vectors (N, 3) (axis x angle in radians)."""
    angle = torch.linalg.norm(rotvec, dim=1, keepdim=True)
    axis = rotvec / angle.clamp(min=1e-12)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cross = torch.cross(axis, vectors, dim=1)
    dot = (axis * vectors).sum(dim=1, keepdim=True)
    return vectors * cos + cross * sin + axis * dot * (1 - cos)


class PlaneTask(Task):
    name: ClassVar[str] = "plane"
    actions: ClassVar[tuple[str, ...]] = PLANE_ACTIONS
    opposite: ClassVar[tuple[int, ...]] = (1, 0, 3, 2, 5, 4)
    pose_dim: ClassVar[int] = 9
    distance_name: ClassVar[str] = "plane_error_mm"
    annotation: ClassVar[str] = "landmarks"
    primary_score: ClassVar[tuple[str, bool]] = ("plane_error_mm", False)
    output_suffix: ClassVar[str] = ".mrk.json"

    # ------------------------------------------------------------------ model state
    def state_dict(self) -> dict[str, Any]:
        return {
            "prior_offset_ras": self.prior_offset_ras.round(3).tolist(),
            "prior_normal_ras": self.prior_normal_ras.round(5).tolist(),
            "prior_axis_ras": self.prior_axis_ras.round(5).tolist(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.prior_offset_ras = np.asarray(
                state.get("prior_offset_ras", []), dtype=np.float64
            ).reshape(-1, 3)
            self.prior_normal_ras = np.asarray(
                state.get("prior_normal_ras", []), dtype=np.float64
            ).reshape(-1, 3)
            self.prior_axis_ras = np.asarray(
                state.get("prior_axis_ras", []), dtype=np.float64
            ).reshape(-1, 3)
        except ValueError as exc:
            raise InputError(f"task.state of the plane model is malformed: {exc}") from exc

    def fit(self, scans: list[ScanPyramid], table: TargetTable) -> None:
        """Mean target plane relative to each scan's intensity centre."""
        poses = np.stack(table.poses)  # (S, T, 9)
        centres = np.stack([scan.intensity_centre_ras for scan in scans])
        self.prior_offset_ras = np.nanmean(poses[:, :, :3] - centres[:, None], axis=0)
        normal = np.nanmean(poses[:, :, 3:6], axis=0)
        axis = np.nanmean(poses[:, :, 6:9], axis=0)
        mean = np.concatenate([self.prior_offset_ras, normal, axis], axis=1)
        prior = orthonormal(torch.as_tensor(mean))
        self.prior_normal_ras = prior[:, 3:6].numpy().astype(np.float64)
        self.prior_axis_ras = prior[:, 6:9].numpy().astype(np.float64)

    # ------------------------------------------------------------------ data
    def present_names(self, case: Case) -> set[str]:
        if case.landmarks is None or not set(MIDLINE_AFIDS) <= set(case.landmarks.names):
            return set()
        return set(PLANE_NAMES)

    def target_table(self, cases: list[Case], names: Sequence[str] = ()) -> TargetTable:
        names = tuple(names) or PLANE_NAMES
        unknown = [n for n in names if n not in PLANE_NAMES]
        if unknown:
            raise InputError(
                f"unknown plane(s) {', '.join(unknown)} (known: {', '.join(PLANE_NAMES)})"
            )
        rows = [PLANE_NAMES.index(n) for n in names]
        poses, extra = [], []
        for case in cases:
            if not self.present_names(case):
                poses.append(np.full((len(names), 9), np.nan))
                extra.append(None)
                continue
            assert case.landmarks is not None
            landmarks = case.landmarks.subset(list(MIDLINE_AFIDS))
            planes = planes_from_afids(landmarks.points_ras, landmarks.names, case.volume.source)
            poses.append(planes[rows])
            extra.append((landmarks.points_ras.astype(np.float64), rows))
        if all(e is None for e in extra):
            raise InputError(
                "no case has the midline AFIDs (landmarks "
                f"{', '.join(MIDLINE_AFIDS)}) that define the planes"
            )
        descriptions = tuple(PLANE_DESCRIPTIONS[n] for n in names)
        return TargetTable(names, descriptions, poses, extra)

    def goals(
        self,
        table: TargetTable,
        scans: Sequence[int],
        targets: Sequence[int],
        params: AugmentParams,
    ) -> torch.Tensor:
        device = params.matrix.device
        sources = np.stack([table.extra[s][0] for s in scans])  # (R, 10, 3)
        points = torch.as_tensor(sources, dtype=torch.float32, device=device)
        moved = inverse_transform_points(params, points).cpu().numpy().astype(np.float64)
        out = np.empty((len(scans), 9))
        for row, (scan, target) in enumerate(zip(scans, targets, strict=True)):
            plane_rows = table.extra[scan][1]
            out[row] = planes_from_afids(moved[row], MIDLINE_AFIDS)[plane_rows[target]]
        return torch.as_tensor(out, dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ dynamics
    def move(self, pose: torch.Tensor, action: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        centre, normal, axis = pose[:, :3], pose[:, 3:6], pose[:, 6:9]
        other = torch.cross(normal, axis, dim=1)  # v
        angle = torch.deg2rad(self.level_values("step_deg", level))[:, None]
        shift = self.level_values("step_mm", level)[:, None]
        sign = torch.where(action % 2 == 0, 1.0, -1.0).to(pose.dtype)[:, None]
        # about u: n -> n cos - v sin; about v: n -> n cos + u sin, u -> u cos - n sin
        cos, sin = torch.cos(angle * sign), torch.sin(angle * sign)
        about_u = (action // 2 == 0)[:, None]
        about_v = (action // 2 == 1)[:, None]
        along_n = (action // 2 == 2)[:, None]
        new_normal = torch.where(about_u, normal * cos - other * sin, normal)
        new_normal = torch.where(about_v, normal * cos + axis * sin, new_normal)
        new_axis = torch.where(about_v, axis * cos - normal * sin, axis)
        new_centre = torch.where(along_n, centre + sign * shift * normal, centre)
        return orthonormal(torch.cat([new_centre, new_normal, new_axis], dim=1))

    def distance(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        gap = goal[:, :3] - pose[:, :3]
        normal, goal_normal = pose[:, 3:6], goal[:, 3:6]
        offset = ((gap * normal).sum(dim=1).abs() + (gap * goal_normal).sum(dim=1).abs()) / 2
        # atan2 of |n x g| and n . g: exact near 0 degrees, where arccos of a rounded dot is not
        sin = torch.linalg.norm(torch.cross(normal, goal_normal, dim=1), dim=1)
        angle = torch.atan2(sin, (normal * goal_normal).sum(dim=1))
        return offset + self.config.task.plane_radius_mm * angle

    def reward(self, d_old: torch.Tensor, d_new: torch.Tensor) -> torch.Tensor:
        clip = self.config.env.reward_clip_mm
        return torch.clamp(d_old - d_new, -clip, clip)

    def success(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self.distance(pose, goal) < self.config.env.success_radius_mm

    def tolerance(self, pose: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        shift = 0.25 * self.level_values("step_mm", level)[:, None].expand(-1, 3)
        turn = 0.25 * torch.deg2rad(self.level_values("step_deg", level))[:, None]
        return torch.cat([shift, turn.expand(-1, 6)], dim=1)

    def start_offset(self, level: int, rng: np.random.Generator) -> np.ndarray:
        """A rotation vector (3, radians) and a translation (3, mm), each uniform in a ball:
        of the level's ``start_angle_deg`` and ``start_radius_mm``."""
        spec = self.config.env.levels[level]
        turn, shift = rng.normal(size=3), rng.normal(size=3)
        turn *= (
            np.radians(spec.start_angle_deg)
            * rng.uniform() ** (1 / 3)
            / (np.linalg.norm(turn) + 1e-12)
        )
        shift *= spec.start_radius_mm * rng.uniform() ** (1 / 3) / (np.linalg.norm(shift) + 1e-12)
        return np.concatenate([turn, shift])

    def displace(self, goal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        turn, shift = offset[:, :3], offset[:, 3:6]
        normal, axis = rotate(goal[:, 3:6], turn), rotate(goal[:, 6:9], turn)
        return orthonormal(torch.cat([goal[:, :3] + shift, normal, axis], dim=1))

    # ------------------------------------------------------------------ observation
    def grid_axes(self, pose: torch.Tensor) -> torch.Tensor:
        normal, axis = pose[:, 3:6], pose[:, 6:9]
        return torch.stack([axis, torch.cross(normal, axis, dim=1), normal], dim=1)

    def _offsets(self, level: torch.Tensor, patch_size: int, scale: float) -> torch.Tensor:
        spacing = self.level_values("spacing_mm", level) * scale
        ramp = torch.arange(patch_size, dtype=torch.float32, device=level.device)
        ramp = ramp - (patch_size - 1) / 2
        factor = torch.tensor([self.config.task.plane_view_factor] * 2 + [1.0], device=level.device)
        return spacing[:, None, None] * factor[None, :, None] * ramp[None, None, :]

    def grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return pose[:, :3], self._offsets(level, patch_size, 1.0)

    @property
    def num_channels(self) -> int:
        return 2 if self.config.task.plane_context > 0 else 1

    def context_grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> torch.Tensor | None:
        if self.config.task.plane_context <= 0:
            return None
        return self._offsets(level, patch_size, self.config.task.plane_context)

    # ------------------------------------------------------------------ scores
    def scores(self, estimate: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        angle = plane_angle_deg(estimate, truth)
        offset = plane_distance_mm(estimate, truth)
        return {
            "angle_deg": angle,
            "distance_mm": offset,
            "plane_error_mm": offset + self.config.task.plane_radius_mm * np.radians(angle),
        }

    # ------------------------------------------------------------------ search
    def initial(self, scan: ScanPyramid, num_starts: int, num_targets: int) -> np.ndarray:
        if self.prior_offset_ras.shape != (num_targets, 3):
            raise InputError(
                f"the plane model has no start prior for its {num_targets} planes "
                "(model.yaml task.state); retrain it"
            )
        shifts = self.start_shifts(num_starts)
        centres = scan.intensity_centre_ras + self.prior_offset_ras[:, None, :] + shifts[None]
        normals = np.broadcast_to(self.prior_normal_ras[:, None, :], centres.shape)
        axis = np.broadcast_to(self.prior_axis_ras[:, None, :], centres.shape)
        return np.concatenate([centres, normals, axis], axis=2)

    def finalize(self, estimate: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """The AC-PC plane contains the MSP's normal (its definition): its normal is made
        perpendicular to the found MSP's. On 6 validation moves of the training scans this took
        the AC-PC angle error from 1.58 to 1.07 degrees (BENCHMARKS.md)."""
        names = list(names)
        if not {"MSP", "ACPC"} <= set(names):
            return estimate
        msp, acpc = names.index("MSP"), names.index("ACPC")
        out = estimate.copy()
        right = out[msp, 3:6] / np.linalg.norm(out[msp, 3:6])
        up = out[acpc, 3:6] - (out[acpc, 3:6] @ right) * right
        if np.linalg.norm(up) < 1e-6:  # the planes were found parallel: nothing to keep
            return estimate
        out[acpc, 3:6] = up / np.linalg.norm(up)
        axis = out[acpc, 6:9] - (out[acpc, 6:9] @ out[acpc, 3:6]) * out[acpc, 3:6]
        out[acpc, 6:9] = axis / np.linalg.norm(axis)
        return out

    def refine(self, scan: ScanPyramid, estimate: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """With ``task.plane_symmetry``: the MSP moved to the nearby plane of best mirror
        symmetry (:func:`medrl.geometry.symmetry.find_symmetry_plane`, on the levels nearest
        4 and 2 mm), then the AC-PC plane made perpendicular to it again. With
        ``task.plane_acpc_landmarks``: then the AC-PC plane put through the AC and PC that the
        landmark model finds (:func:`medrl.tasks.acpc_locator.acpc_from_landmarks`); with
        ``task.plane_acpc_template`` through a template's AC and PC carried by a 2D registration
        of the mid-sagittal plane (:func:`medrl.tasks.acpc_template.acpc_from_template`)."""
        names = list(names)
        out = estimate
        if self.config.task.plane_symmetry and "MSP" in names:
            spacings = np.array([lv.spacing_mm for lv in self.config.env.levels])
            coarse = scan.levels[int(np.argmin(np.abs(spacings - 4.0)))]
            fine = scan.levels[int(np.argmin(np.abs(spacings - 2.0)))]
            out = estimate.copy()
            msp = names.index("MSP")
            out[msp] = find_symmetry_plane(coarse, fine, estimate[msp]).pose
            out = self.finalize(out, names)
        settings = self.config.task  # at most one of the two locators (TaskConfig checks)
        if {"MSP", "ACPC"} <= set(names) and (
            settings.plane_acpc_landmarks or settings.plane_acpc_template
        ):
            msp, acpc = names.index("MSP"), names.index("ACPC")
            out = out.copy()
            if settings.plane_acpc_landmarks:
                out[acpc] = acpc_from_landmarks(
                    scan, out[msp], out[acpc], settings.plane_acpc_landmarks
                )
            else:
                out[acpc] = acpc_from_template(
                    scan, out[msp], out[acpc], settings.plane_acpc_template
                )
        return out

    def settle(self, recent: torch.Tensor) -> torch.Tensor:
        return orthonormal(torch.nanmean(recent[:, -4:], dim=1))

    def combine(self, per_start: torch.Tensor) -> torch.Tensor:
        return orthonormal(torch.median(per_start, dim=1).values)
