"""Left-right mirror images of a prepared scan, and which landmark is whose mirror partner.

A reader of the scan (the supervised detector, the agent) can read the scan and its mirror
image and average the two answers: what each reading gets wrong only on one side (a network's
lateral bias, an asymmetric artefact) is halved, what both get right stays. The mirror is a
reflection of world space about a sagittal plane, x_R -> 2 c - x_R, applied to the scan's
geometry (its world-to-index maps), so no voxel is resampled and the pyramid is shared. A
landmark found in the mirror image at p is, in the scan, its mirror partner (the right
structure for the left one; a midline landmark is its own partner) at the reflection of p.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from medrl.envs.pyramid import LevelImage, ScanPyramid

PARTNER_TOLERANCE_MM = 8.0
"""How far a landmark's reflection may lie from its partner in the layout (mm) for the two to
count as a mirror pair, or from the landmark itself for it to count as a midline landmark."""


def reflection_ras(plane_x_mm: float) -> np.ndarray:
    """(4, 4) the reflection of world RAS about the sagittal plane x_R = ``plane_x_mm``."""
    matrix = np.eye(4)
    matrix[0, 0] = -1.0
    matrix[0, 3] = 2.0 * float(plane_x_mm)
    return matrix


def mirror_pyramid(scan: ScanPyramid, reflection: np.ndarray) -> ScanPyramid:
    """``scan`` seen through ``reflection`` (its own inverse): the same voxels, whose world
    position is reflected. Registration partners and siblings are dropped (reading only)."""
    flip = torch.as_tensor(reflection, dtype=torch.float32)
    levels = tuple(
        LevelImage(
            tensor=level.tensor,
            ras_to_index=level.ras_to_index @ flip.to(level.ras_to_index.device),
            size_xyz=level.size_xyz,
        )
        for level in scan.levels
    )

    def reflect(point: np.ndarray) -> np.ndarray:
        return reflection[:3, :3] @ point + reflection[:3, 3]

    return replace(
        scan,
        levels=levels,
        centre_ras=reflect(scan.centre_ras),
        intensity_centre_ras=reflect(scan.intensity_centre_ras),
        index_to_ras=reflection @ scan.index_to_ras,
        source=f"{scan.source} (mirrored)",
        partner=None,
        siblings=(),
    )


def mirror_partners(
    layout_ras: np.ndarray, tolerance_mm: float = PARTNER_TOLERANCE_MM
) -> np.ndarray:
    """(K,) for each landmark of a layout (K, 3 world RAS mm, e.g. a model's reference layout)
    the index of its mirror partner, or -1 where it has none.

    The layout's mid-sagittal plane is the x_R about which the most landmarks have a
    reflection within ``tolerance_mm`` of a landmark (candidates: the midpoints in x_R of every
    two landmarks), refitted to the pairs found; a landmark whose reflection lies within
    ``tolerance_mm`` of itself is a midline landmark (its own partner); two landmarks are
    partners when each is the other's nearest reflection, within ``tolerance_mm``.
    """
    points = np.asarray(layout_ras, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise ValueError("a layout is a finite (K, 3) array of world RAS points")
    plane = _best_plane_x(points, tolerance_mm)
    partners = np.full(len(points), -1, dtype=np.int64)
    for _ in range(3):  # refit the plane to the pairs found
        reflected = points.copy()
        reflected[:, 0] = 2.0 * plane - points[:, 0]
        distance = np.linalg.norm(reflected[:, None, :] - points[None, :, :], axis=-1)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(points)), nearest] <= tolerance_mm
        mutual = nearest[nearest] == np.arange(len(points))
        partners = np.where(close & mutual, nearest, -1)
        paired = partners >= 0
        if not paired.any():
            break
        plane = float(((points[paired, 0] + points[partners[paired], 0]) / 2).mean())
    return partners


def _best_plane_x(points: np.ndarray, tolerance_mm: float) -> float:
    """The x_R of the sagittal plane about which the most points (K, 3) have a reflection
    within ``tolerance_mm`` of a point (ties: the smaller summed distance).

    Only pairs whose (y, z) lie within ``tolerance_mm`` of each other can match under any
    sagittal plane, so the candidates are their midpoints in x, and each is scored on those
    pairs alone (a point with itself is such a pair: a midline candidate).
    """
    x = points[:, 0]
    off_plane = np.linalg.norm(points[:, None, 1:] - points[None, :, 1:], axis=-1)
    first, second = np.nonzero(off_plane <= tolerance_mm)
    along = x[first] + x[second]  # 2 x the midpoint of each compatible pair
    across = off_plane[first, second]
    best, best_key = float(np.median(x)), (-1, 0.0)
    for plane in np.unique(np.round(along / 2, 3)):
        distance = np.hypot(2.0 * plane - along, across)
        close = distance <= tolerance_mm
        nearest = np.full(len(points), np.inf)
        np.minimum.at(nearest, first[close], distance[close])
        matched = np.isfinite(nearest)
        key = (int(matched.sum()), -float(nearest[matched].sum()))
        if key > best_key:
            best, best_key = float(plane), key
    return best


def partner_names(names: tuple[str, ...], partners: np.ndarray) -> dict[str, str]:
    """``{name: its mirror partner's name}`` for the landmarks of :func:`mirror_partners` that
    have one (a midline landmark maps to itself)."""
    return {names[i]: names[int(p)] for i, p in enumerate(partners) if p >= 0}


def reflect_points(points_ras: np.ndarray, reflection: np.ndarray) -> np.ndarray:
    """Points (..., 3) under ``reflection`` (4, 4)."""
    return np.asarray(points_ras, dtype=np.float64) @ reflection[:3, :3].T + reflection[:3, 3]


def average_with_mirror(points_ras: np.ndarray, unmirrored_ras: np.ndarray) -> np.ndarray:
    """The mean of a reading of the scan and the reflected reading of its mirror image, per
    landmark; the scan's reading alone where the mirror has none (NaN rows)."""
    points = np.asarray(points_ras, dtype=np.float64)
    other = np.asarray(unmirrored_ras, dtype=np.float64)
    usable = np.isfinite(other).all(axis=1)
    out = points.copy()
    out[usable] = (points[usable] + other[usable]) / 2
    return out


def mirror_reading(own_ras: np.ndarray, averaged_ras: np.ndarray) -> np.ndarray:
    """The reflected mirror reading that :func:`average_with_mirror` averaged with ``own_ras``
    into ``averaged_ras``, recovered from the two (the own reading where there was none)."""
    return 2.0 * np.asarray(averaged_ras, dtype=np.float64) - np.asarray(own_ras, np.float64)


def with_mirror_reading(
    names: tuple[str, ...],
    own_ras: np.ndarray,
    mirror_rows: dict[str, int],
    mirror_ras: np.ndarray,
    partners: dict[str, str],
    reflection: np.ndarray,
) -> np.ndarray:
    """A reader's points of ``names`` (``own_ras``, one row each) averaged with its reading of
    the mirror image: row ``mirror_rows[partner]`` of ``mirror_ras`` for each landmark's
    partner, reflected back; the own reading alone where the mirror image has no partner."""
    other = np.full((len(names), 3), np.nan)
    for index, name in enumerate(names):
        row = mirror_rows.get(partners.get(name, ""))
        if row is not None:
            other[index] = reflect_points(mirror_ras[row], reflection)
    return average_with_mirror(own_ras, other)
