"""The mid-sagittal plane as the brain's plane of bilateral symmetry.

A head is close to mirror-symmetric about its mid-sagittal plane (MSP) in every contrast and
every person; the classical MSP detectors (Ardekani et al. 1997, Liu et al. 2001) find the
plane that maximises the correlation between the image and its reflection across the plane.
:func:`refine_symmetry_plane` does this locally, from a plane that is already close (the plane
agent's): it samples a slab of half-width ``half_width_mm`` on one side of the starting plane,
reflects every sample across each candidate plane and keeps the candidate whose reflection
correlates best (normalised cross-correlation) with the samples; a compass search over the two
tilts and the shift, with steps halved down to ``min_step_deg`` / ``min_step_mm``.

Two stages (:func:`find_symmetry_plane`): a coarse one on the 4 mm copy of the scan with a
thick slab (24 mm, within 60 mm of the plane's point, 4 mm samples) that finds the plane from up
to about 10 degrees off, and a fine one on the 2 mm copy with a thin slab (6 mm, within 70 mm)
that settles it to a tenth of a degree. The thin slab stays near the midline (the
interhemispheric fissure, the third ventricle, the brainstem), where the symmetry is a property
of the midline anatomy rather than of the hemispheres' shapes (a brain's hemispheres differ:
petalia, torque). Both were chosen on rigidly moved and warped training scans
(MNI152NLin2009cAsym T1w/T2w; BENCHMARKS.md), starting from planes 2 to 12 degrees off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medrl.envs.pyramid import LevelImage
from medrl.envs.sampler import sample_at_ras


@dataclass(frozen=True)
class SymmetrySettings:
    """How :func:`refine_symmetry_plane` searches (chosen on training scans: BENCHMARKS.md)."""

    half_width_mm: float = 6.0
    """Samples lie between 1 mm and this far from the starting plane, on one side (the first
    layer 1 mm away, then every ``sample_mm``)."""
    radius_mm: float = 70.0
    """In the plane, samples lie within this distance of the plane's point."""
    sample_mm: float = 2.0
    """Spacing of the samples."""
    max_angle_deg: float = 8.0
    """The refined plane stays within this tilt of the starting plane (else it is not used)."""
    max_shift_mm: float = 8.0
    """... and within this shift along the normal."""
    start_step_deg: float = 2.0
    start_step_mm: float = 2.0
    min_step_deg: float = 0.05
    min_step_mm: float = 0.05


@dataclass(frozen=True)
class SymmetryResult:
    pose: np.ndarray
    """(9,) the refined plane ``[point, normal, u]`` (world RAS mm)."""
    correlation: float
    """Normalised cross-correlation of the slab and its reflection across the refined plane."""
    start_correlation: float
    """... across the starting plane."""
    accepted: bool
    """False when the refined plane left the allowed tilt or shift (``pose`` is then the
    starting plane)."""


def _frame(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    centre = np.asarray(pose[:3], dtype=np.float64)
    normal = np.asarray(pose[3:6], dtype=np.float64)
    normal = normal / np.linalg.norm(normal)
    axis = np.asarray(pose[6:9], dtype=np.float64)
    axis = axis - (axis @ normal) * normal
    axis = axis / np.linalg.norm(axis)
    return centre, normal, axis, np.cross(normal, axis)


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise normalised cross-correlation of (C, N) against (N,)."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean()
    denominator = torch.sqrt((a * a).sum(dim=-1) * (b * b).sum()).clamp(min=1e-12)
    return (a * b).sum(dim=-1) / denominator


def _slab(
    image: LevelImage, pose: np.ndarray, settings: SymmetrySettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample points (N, 3) of the slab on one side of ``pose`` and the image there (N,)."""
    centre, normal, axis, other = _frame(pose)
    ramp = np.arange(-settings.radius_mm, settings.radius_mm + 1e-9, settings.sample_mm)
    depth = np.arange(1.0, settings.half_width_mm + 1e-9, settings.sample_mm)
    a, b, t = np.meshgrid(ramp, ramp, depth, indexing="ij")
    inside = a**2 + b**2 <= settings.radius_mm**2
    offsets = np.stack([a[inside], b[inside], t[inside]], axis=1)
    points = centre + offsets @ np.stack([axis, other, normal])
    points_t = torch.as_tensor(points, dtype=torch.float32, device=image.tensor.device)
    return points_t, sample_at_ras(image, points_t)


def _mirror_correlation(
    image: LevelImage,
    points: torch.Tensor,
    values: torch.Tensor,
    normals: np.ndarray,
    points_on: np.ndarray,
) -> np.ndarray:
    """(C,) correlation of ``values`` at ``points`` with the image at their reflections across
    each of C planes (unit ``normals`` (C, 3) through ``points_on`` (C, 3))."""
    n_t = torch.as_tensor(normals, dtype=torch.float32, device=points.device)
    c_t = torch.as_tensor(points_on, dtype=torch.float32, device=points.device)
    signed = ((points[None] - c_t[:, None]) * n_t[:, None]).sum(dim=-1)  # (C, N)
    mirrored = points[None] - 2.0 * signed[..., None] * n_t[:, None]
    return _ncc(sample_at_ras(image, mirrored), values).cpu().numpy().astype(np.float64)


def symmetry_correlation(
    image: LevelImage, pose: np.ndarray, settings: SymmetrySettings | None = None
) -> float:
    """How mirror-symmetric ``image`` is across the plane ``pose`` (9,) (normalised
    cross-correlation on ``settings``' slab; 1: perfectly)."""
    settings = settings or SymmetrySettings()
    points, values = _slab(image, pose, settings)
    _, normal = _frame(pose)[:2]
    return float(_mirror_correlation(image, points, values, normal[None], pose[None, :3])[0])


def refine_symmetry_plane(
    image: LevelImage, pose: np.ndarray, settings: SymmetrySettings | None = None
) -> SymmetryResult:
    """The plane near ``pose`` (9,) across which ``image`` is most mirror-symmetric."""
    settings = settings or SymmetrySettings()
    centre, normal, axis, other = _frame(pose)
    points_t, values = _slab(image, pose, settings)

    # candidates: rotation of the normal about u and v by (alpha, beta), shift along it
    moves = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"))
    moves = moves.reshape(3, -1).T.astype(np.float64)  # (27, 3), row 13 is (0, 0, 0)

    def candidates(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha, beta = np.radians(params[:, 0]), np.radians(params[:, 1])
        tilt = np.tan(alpha)[:, None] * other + np.tan(beta)[:, None] * axis
        normals = normal + tilt
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        points_on = centre + params[:, 2:3] * normal
        return normals, points_on

    def score(params: np.ndarray) -> np.ndarray:
        normals, points_on = candidates(params)
        return _mirror_correlation(image, points_t, values, normals, points_on)

    best = np.zeros(3)
    best_score = float(score(best[None])[0])
    start_score = best_score
    step = np.array([settings.start_step_deg, settings.start_step_deg, settings.start_step_mm])
    floor = np.array([settings.min_step_deg, settings.min_step_deg, settings.min_step_mm])
    for _ in range(200):
        trial = best + moves * step
        scores = score(trial)
        winner = int(np.argmax(scores))
        if scores[winner] > best_score + 1e-9:
            best, best_score = trial[winner], float(scores[winner])
            continue
        if np.all(step <= floor):
            break
        step = np.maximum(step / 2.0, floor)
    accepted = (
        max(abs(best[0]), abs(best[1])) <= settings.max_angle_deg
        and abs(best[2]) <= settings.max_shift_mm
    )
    if not accepted:
        return SymmetryResult(np.asarray(pose, dtype=np.float64), start_score, start_score, False)
    normals, points_on = candidates(best[None])
    new_normal = normals[0]
    new_axis = axis - (axis @ new_normal) * new_normal
    new_axis /= np.linalg.norm(new_axis)
    # the plane's point: the old point projected onto the new plane
    new_centre = centre - ((centre - points_on[0]) @ new_normal) * new_normal
    refined = np.concatenate([new_centre, new_normal, new_axis])
    return SymmetryResult(refined, best_score, start_score, True)


COARSE = SymmetrySettings(
    half_width_mm=24.0, radius_mm=60.0, sample_mm=4.0, max_angle_deg=16.0, max_shift_mm=16.0,
    start_step_deg=4.0, start_step_mm=4.0, min_step_deg=0.5, min_step_mm=0.5,
)  # fmt: skip
FINE = SymmetrySettings(
    half_width_mm=6.0, radius_mm=70.0, sample_mm=2.0, min_step_deg=0.1, min_step_mm=0.1
)


def find_symmetry_plane(
    coarse_image: LevelImage,
    fine_image: LevelImage,
    pose: np.ndarray,
    coarse: SymmetrySettings = COARSE,
    fine: SymmetrySettings = FINE,
) -> SymmetryResult:
    """The coarse stage on ``coarse_image`` (the scan at about 4 mm), then the fine stage on
    ``fine_image`` (about 2 mm) from where it ended; ``start_correlation`` is the fine stage's
    at ``pose``."""
    first = refine_symmetry_plane(coarse_image, pose, coarse)
    second = refine_symmetry_plane(fine_image, first.pose, fine)
    _, start_normal, _, _ = _frame(pose)
    tilt = np.degrees(np.arccos(np.clip(abs(second.pose[3:6] @ start_normal), 0.0, 1.0)))
    shift = abs((second.pose[:3] - np.asarray(pose[:3])) @ start_normal)
    if tilt > coarse.max_angle_deg or shift > coarse.max_shift_mm:
        start = symmetry_correlation(fine_image, np.asarray(pose, dtype=np.float64), fine)
        return SymmetryResult(np.asarray(pose, dtype=np.float64), start, start, False)
    start = symmetry_correlation(fine_image, np.asarray(pose, dtype=np.float64), fine)
    return SymmetryResult(second.pose, second.correlation, start, True)
