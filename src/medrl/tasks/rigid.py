"""The rigid-registration task: small rigid moves of a moving image until it lies on a fixed
image (Liao et al., AAAI 2017).

A training *case* is the moving image with the fixed image as its ``partner``
(:meth:`RigidTask.pair_cases` makes the pairs of a datalist). Pose (15 numbers, world RAS mm):
the fixed image's centre ``c`` (never moved), a rotation ``R`` (3 x 3, row-major) and a
translation ``t``; the transform ``T(x) = R (x - c) + c + t`` maps points of the fixed image to
points of the moving image (ITK's convention: resampling the moving image through ``T`` onto
the fixed grid aligns it). A rotation matrix has no singularity (Euler angles would).

Twelve actions: +/- the level's ``step_mm`` along R, A, S (``t``), and turns by +/- the level's
``step_deg`` about R, A, S through the moving image's point ``T(c)`` (``R <- Q R``). Distance:
the mean, over the 27 points of a cube of half-side ``task.rigid_radius_mm`` around ``c``, of
how far apart the current and the true transform send them (a target registration error over
a brain-sized set of points); reward: its decrease, clipped. Observation: 18 channels, at the
centre ``c`` and the 8 corners of a cube of half-side ``task.rigid_view_radius_mm`` around it,
the fixed image on a patch there and the moving image on that patch carried by ``T``, at the
level's spacing. The label-free search starts from the identity rotation with the two images'
intensity centroids aligned (ITK's "moments" initialisation).

Truth: the least-squares rigid fit of the fixed image's landmarks to the moving image's
(Kabsch). For one anatomy in two contrasts or two crops (the same AFIDs) it is the identity,
exactly; for two brains it is the rigid part of their anatomical difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch

from medrl.data.augment import AugmentParams, inverse_transform_points, transform_points
from medrl.data.datalist import Case
from medrl.envs.pyramid import ScanPyramid, intensity_centre_ras
from medrl.errors import InputError
from medrl.geometry.kabsch import fit_rigid_ras
from medrl.tasks.base import TargetTable, Task, View

RIGID_ACTIONS = ("+R", "-R", "+A", "-A", "+S", "-S", "turn+R", "turn-R", "turn+A", "turn-A",
                 "turn+S", "turn-S")  # fmt: skip
TARGET_NAME = "alignment"
MIN_COMMON_LANDMARKS = 4
SAME_ANATOMY_MM = 0.5
"""Two cases whose common landmarks all lie within this distance show the same anatomy."""


def rotation_matrices(rotvec: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices of rotation vectors (N, 3) (axis x angle, radians)."""
    angle = torch.linalg.norm(rotvec, dim=1)
    axis = rotvec / angle.clamp(min=1e-12)[:, None]
    zero = torch.zeros_like(angle)
    k = torch.stack(
        [zero, -axis[:, 2], axis[:, 1], axis[:, 2], zero, -axis[:, 0], -axis[:, 1], axis[:, 0],
         zero], dim=1,
    ).reshape(-1, 3, 3)  # fmt: skip
    sin, cos = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + sin * k + (1 - cos) * (k @ k)


def nearest_rotation(matrix: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) the rotations nearest to matrices (N, 3, 3) (Frobenius; det +1)."""
    u, _, vh = torch.linalg.svd(matrix)
    sign = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.ones_like(matrix[:, 0])
    fix[:, 2] = sign
    return u @ torch.diag_embed(fix) @ vh


def fit_rigid(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares rigid maps (Kabsch) of points (N, K, 3) onto (N, K, 3): rotations
    (N, 3, 3) and shifts (N, 3) with ``target ~ R source + b``."""
    mean_s, mean_t = source.mean(dim=1), target.mean(dim=1)
    cov = (target - mean_t[:, None]).transpose(1, 2) @ (source - mean_s[:, None])
    rotation = nearest_rotation(cov)
    return rotation, mean_t - (rotation @ mean_s[:, :, None])[..., 0]


def cube_points(radius_mm: float) -> np.ndarray:
    """(27, 3) the points of a cube of half-side ``radius_mm`` (corners, edges, faces, centre)."""
    axis = np.array([-1.0, 0.0, 1.0]) * radius_mm
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def split_pose(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres (N, 3), rotations (N, 3, 3), translations (N, 3) of poses (N, 15)."""
    return pose[:, :3], pose[:, 3:12].reshape(-1, 3, 3), pose[:, 12:15]


def join_pose(centre: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return torch.cat([centre, rotation.reshape(-1, 9), shift], dim=1)


def pose_matrix_ras(pose: np.ndarray) -> np.ndarray:
    """(4, 4) the fixed -> moving map ``x -> R (x - c) + c + t`` of a pose (15,) (RAS mm)."""
    centre, rotation, shift = pose[:3], pose[3:12].reshape(3, 3), pose[12:15]
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + shift - rotation @ centre
    return matrix


def pose_from_matrix(matrix_ras: np.ndarray, centre_ras: np.ndarray) -> np.ndarray:
    """The pose (15,) about ``centre_ras`` of a rigid map (4, 4) (RAS mm)."""
    rotation = matrix_ras[:3, :3]
    shift = rotation @ centre_ras + matrix_ras[:3, 3] - centre_ras
    return np.concatenate([centre_ras, rotation.reshape(-1), shift])


def _landmark_map(case: Case) -> dict[str, np.ndarray]:
    if case.landmarks is None:
        return {}
    return dict(zip(case.landmarks.names, np.asarray(case.landmarks.points_ras), strict=True))


def _common(fixed: Case, moving: Case) -> tuple[np.ndarray, np.ndarray]:
    """The landmarks two cases share: (K, 3) in the fixed case, (K, 3) in the moving one."""
    a, b = _landmark_map(fixed), _landmark_map(moving)
    names = [n for n in a if n in b]
    if not names:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.stack([a[n] for n in names]), np.stack([b[n] for n in names])


class RigidTask(Task):
    name: ClassVar[str] = "rigid"
    actions: ClassVar[tuple[str, ...]] = RIGID_ACTIONS
    opposite: ClassVar[tuple[int, ...]] = (1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10)
    pose_dim: ClassVar[int] = 15
    distance_name: ClassVar[str] = "tre_mm"
    annotation: ClassVar[str] = "landmarks"
    primary_score: ClassVar[tuple[str, bool]] = ("tre_mm", False)
    output_suffix: ClassVar[str] = ".tfm"

    @property
    def points_mm(self) -> np.ndarray:
        return cube_points(self.config.task.rigid_radius_mm)

    # ------------------------------------------------------------------ data
    def pair_cases(self, cases: list[Case]) -> list[Case]:
        """Every ordered pair (fixed, moving) of the cases, the moving case carrying the fixed
        one as ``partner``: with ``task.rigid_pairs`` ``same_anatomy`` the pairs whose common
        landmarks coincide (a case with itself included), with ``all`` any pair with 4+ common
        landmarks. Cases that already have a partner are kept as they are."""
        mode = self.config.task.rigid_pairs
        if mode not in ("same_anatomy", "all"):
            raise InputError(f"task.rigid_pairs must be same_anatomy or all, not {mode!r}")
        if all(case.partner is not None for case in cases):
            return cases
        pairs = []
        for fixed in cases:
            for moving in cases:
                a, b = _common(fixed, moving)
                if len(a) < MIN_COMMON_LANDMARKS:
                    continue
                same = float(np.max(np.linalg.norm(a - b, axis=1))) <= SAME_ANATOMY_MM
                if mode == "all" or same:
                    pair_id = f"{moving.case_id}_to_{fixed.case_id}"
                    pairs.append(replace(moving, case_id=pair_id, partner=fixed))
        if not pairs:
            raise InputError(
                f"no registration pairs among the {len(cases)} cases (task.rigid_pairs {mode}: "
                f"pairs need {MIN_COMMON_LANDMARKS}+ common landmarks"
                + (", at the same positions)" if mode == "same_anatomy" else ")")
            )
        return pairs

    def present_names(self, case: Case) -> set[str]:
        if case.partner is None or len(_common(case.partner, case)[0]) < MIN_COMMON_LANDMARKS:
            return set()
        return {TARGET_NAME}

    def target_table(self, cases: list[Case], names: Sequence[str] = ()) -> TargetTable:
        if tuple(names) not in ((), (TARGET_NAME,)):
            raise InputError(f"the rigid task has one target, {TARGET_NAME!r}, not {names}")
        poses, extra, centres = [], [], {}
        for case in cases:
            if not self.present_names(case):
                raise InputError(
                    f"case {case.case_id!r} is not a registration pair with "
                    f"{MIN_COMMON_LANDMARKS}+ landmarks common to both images",
                    case.volume.source,
                )
            assert case.partner is not None
            fixed_ras, moving_ras = _common(case.partner, case)
            try:
                matrix = fit_rigid_ras(fixed_ras, moving_ras)
            except ValueError as exc:
                raise InputError(f"case {case.case_id!r}: {exc}", case.volume.source) from exc
            key = id(case.partner.volume)
            if key not in centres:
                centres[key] = intensity_centre_ras(case.partner.volume)
            poses.append(pose_from_matrix(matrix, centres[key])[None])
            extra.append(matrix)
        description = "rigid map of the fixed image onto the moving image"
        return TargetTable((TARGET_NAME,), (description,), poses, extra)

    def goals(
        self,
        table: TargetTable,
        scans: Sequence[int],
        targets: Sequence[int],
        params: AugmentParams,
    ) -> torch.Tensor:
        """The truth in each episode's augmented world: both images are sampled through the
        augmentation A, so the aligning map is A^-1 T0 A (fitted rigid on the cube points; exact
        for one anatomy, where T0 and it are the identity)."""
        device = params.matrix.device
        centres = np.stack([table.poses[s][0, :3] for s in scans])
        truth = torch.as_tensor(np.stack([table.extra[s] for s in scans]), dtype=torch.float64)
        centre = inverse_transform_points(
            params, torch.as_tensor(centres[:, None], dtype=torch.float32, device=device)
        ).double()
        points = centre + torch.as_tensor(self.points_mm, device=device)[None]
        scan_world = transform_points(params, points.float()).double().cpu()
        mapped = scan_world @ truth[:, :3, :3].transpose(1, 2) + truth[:, None, :3, 3]
        back = inverse_transform_points(params, mapped.float().to(device)).double()
        rotation, shift = fit_rigid(points, back)
        c = centre[:, 0]
        t = (rotation @ c[:, :, None])[..., 0] + shift - c
        return join_pose(c, rotation, t).float()

    # ------------------------------------------------------------------ dynamics
    def move(self, pose: torch.Tensor, action: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        centre, rotation, shift = split_pose(pose)
        sign = torch.where(action % 2 == 0, 1.0, -1.0).to(pose.dtype)
        axis = torch.nn.functional.one_hot((action % 6) // 2, 3).to(pose.dtype)
        turning = action >= 6
        step = self.level_values("step_mm", level) * sign
        angle = torch.deg2rad(self.level_values("step_deg", level)) * sign
        shift = shift + torch.where(turning, 0.0, step)[:, None] * axis
        turn = rotation_matrices(axis * torch.where(turning, angle, 0.0)[:, None])
        return join_pose(centre, turn @ rotation, shift)

    def anchor(self, pose: torch.Tensor) -> torch.Tensor:
        """Where the fixed image's centre lands in the moving image: it must stay inside."""
        return pose[:, :3] + pose[:, 12:15]

    def _errors(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """(N, 27) how far apart the two transforms send the cube points (mm)."""
        _, rotation, shift = split_pose(pose)
        _, goal_rotation, goal_shift = split_pose(goal)
        points = torch.as_tensor(self.points_mm, dtype=pose.dtype, device=pose.device)
        gap = points @ (rotation - goal_rotation).transpose(1, 2) + (shift - goal_shift)[:, None]
        return torch.linalg.norm(gap, dim=2)

    def distance(self, pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self._errors(pose, goal).mean(dim=1)

    def tolerance(self, pose: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        shift = 0.25 * self.level_values("step_mm", level)[:, None]
        turn = 0.25 * torch.deg2rad(self.level_values("step_deg", level))[:, None]
        return torch.cat([shift.expand(-1, 3), turn.expand(-1, 9), shift.expand(-1, 3)], dim=1)

    def start_offset(self, level: int, rng: np.random.Generator) -> np.ndarray:
        """A rotation vector (3, radians) and a translation (3, mm), each uniform in a ball:
        of the level's ``start_angle_deg`` and ``start_radius_mm``."""
        spec = self.config.env.levels[level]
        turn, shift = rng.normal(size=3), rng.normal(size=3)
        angle = np.radians(spec.start_angle_deg) * rng.uniform() ** (1 / 3)
        turn *= angle / (np.linalg.norm(turn) + 1e-12)
        shift *= spec.start_radius_mm * rng.uniform() ** (1 / 3) / (np.linalg.norm(shift) + 1e-12)
        return np.concatenate([turn, shift])

    def displace(self, goal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        centre, rotation, shift = split_pose(goal)
        offset = offset.to(goal.dtype)
        turned = rotation_matrices(offset[:, :3]) @ rotation
        return join_pose(centre, turned, shift + offset[:, 3:6])

    # ------------------------------------------------------------------ observation
    def _offsets(self, level: torch.Tensor, patch_size: int) -> torch.Tensor:
        ramp = torch.arange(patch_size, dtype=torch.float32, device=level.device)
        ramp = ramp - (patch_size - 1) / 2
        spacing = self.level_values("spacing_mm", level)
        return (spacing[:, None] * ramp[None]).unsqueeze(1).expand(-1, 3, -1)

    def grid(
        self, pose: torch.Tensor, level: torch.Tensor, patch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.anchor(pose), self._offsets(level, patch_size)

    def grid_axes(self, pose: torch.Tensor) -> torch.Tensor:
        return split_pose(pose)[1].transpose(1, 2)

    @property
    def view_sites_mm(self) -> np.ndarray:
        """(9, 3) where the views sit relative to ``c``: the centre and the corners of a cube of
        half-side ``task.rigid_view_radius_mm``."""
        corners = cube_points(self.config.task.rigid_view_radius_mm)[[0, 2, 6, 8, 18, 20, 24, 26]]
        return np.concatenate([np.zeros((1, 3)), corners])

    @property
    def num_channels(self) -> int:
        return 2 * len(self.view_sites_mm)

    def views(self, pose: torch.Tensor, level: torch.Tensor, patch_size: int) -> list[View]:
        """Per site ``s`` (the centre and 8 cube corners around ``c``): the fixed image on a
        patch around ``c + s``, then the moving image on that patch carried by the pose
        (``T(c + s + o) = c + t + R (s + o)``: centre ``c + t + R s``, axes the columns of
        ``R``). A rotation shifts the corners' patches against each other, which one central
        view would show only at its edges."""
        centre, rotation, shift = split_pose(pose)
        offsets = self._offsets(level, patch_size)
        axes = self.grid_axes(pose)
        sites = torch.as_tensor(self.view_sites_mm, dtype=pose.dtype, device=pose.device)
        out = []
        for site in sites:
            moved = centre + shift + rotation @ site
            out.append(View(centre + site, offsets, None, partner=True))
            out.append(View(moved, offsets, axes))
        return out

    # ------------------------------------------------------------------ search
    def initial(self, scan: ScanPyramid, num_starts: int, num_targets: int) -> np.ndarray:
        if scan.partner is None:
            raise InputError("rigid registration needs a fixed image (the scan's partner)")
        centre = scan.partner.intensity_centre_ras
        shift = scan.intensity_centre_ras - centre
        shifts = shift[None] + self.start_shifts(num_starts)
        eye = np.broadcast_to(np.eye(3).reshape(1, 9), (len(shifts), 9))
        starts = np.concatenate([np.broadcast_to(centre, shifts.shape), eye, shifts], axis=1)
        return np.broadcast_to(starts[None], (num_targets, *starts.shape)).copy()

    def _projected(self, pose: torch.Tensor) -> torch.Tensor:
        centre, rotation, shift = split_pose(pose)
        return join_pose(centre, nearest_rotation(rotation), shift)

    def settle(self, recent: torch.Tensor) -> torch.Tensor:
        return self._projected(torch.nanmean(recent[:, -4:], dim=1))

    def combine(self, per_start: torch.Tensor) -> torch.Tensor:
        return self._projected(torch.median(per_start, dim=1).values)

    # ------------------------------------------------------------------ scores
    def scores(self, estimate: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        pose = torch.as_tensor(estimate, dtype=torch.float64)
        goal = torch.as_tensor(truth, dtype=torch.float64)
        _, rotation, shift = split_pose(pose)
        _, goal_rotation, goal_shift = split_pose(goal)
        relative = rotation @ goal_rotation.transpose(1, 2)
        cos = ((torch.diagonal(relative, dim1=1, dim2=2).sum(dim=1) - 1) / 2).clamp(-1, 1)
        return {
            "tre_mm": self.distance(pose, goal).numpy(),
            "rotation_error_deg": torch.rad2deg(torch.arccos(cos)).numpy(),
            "translation_error_mm": torch.linalg.norm(shift - goal_shift, dim=1).numpy(),
        }
