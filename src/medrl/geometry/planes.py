"""Planes in world RAS mm: the mid-sagittal and AC-PC planes from AFIDs, and how far apart two
planes are.

A plane is a reference point on it and a unit normal (both RAS). An (N, 9) *plane pose* adds an
in-plane axis ``u`` (unit, perpendicular to the normal): ``[point (3), normal (3), u (3)]``;
``v = normal x u`` completes the frame. The normal has a direction: the mid-sagittal plane's
points to the right (+R), the AC-PC plane's upwards (+S), so that a plane turned upside down is
far from its target, not equal to it.

Targets from the 32 AFIDs (Lau et al. 2019; numbers as in the AFIDs protocol):

* **MSP**, the mid-sagittal plane: the least-squares plane through the midline AFIDs 1 AC,
  2 PC, 3 infracollicular sulcus, 4 pontomesencephalic junction, 5 superior interpeduncular
  fossa, 10 culmen, 11 intermammillary sulcus, 14 pineal gland, 19 genu and 20 splenium of the
  corpus callosum; reference point: their centroid (on the plane, as for any least-squares
  plane).
* **ACPC**, the AC-PC plane: through AC and PC and perpendicular to the MSP (it contains the
  MSP's normal); reference point: AC.

Distances between planes: the angle between the normals (degrees) and the symmetric
point-to-plane distance of the reference points (mm): the mean of the distance of each plane's
reference point from the other plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medrl.errors import InputError

__all__ = [
    "ACPC_AFIDS",
    "MIDLINE_AFIDS",
    "PLANE_NAMES",
    "acpc_plane",
    "fit_plane",
    "in_plane_axis",
    "plane_angle_deg",
    "plane_distance_mm",
    "planes_from_afids",
]

#: AFID numbers (landmark names of the AFIDs protocol) that define the planes.
MIDLINE_AFIDS: tuple[str, ...] = ("1", "2", "3", "4", "5", "10", "11", "14", "19", "20")
ACPC_AFIDS: tuple[str, str] = ("1", "2")
PLANE_NAMES: tuple[str, str] = ("MSP", "ACPC")
_RIGHT, _ANTERIOR, _SUPERIOR = np.eye(3)


def fit_plane(points_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares plane (centroid (3,), unit normal (3,)) through (M >= 3, 3) points.

    ValueError when the points are collinear or not finite.
    """
    points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    if len(points) < 3 or not np.all(np.isfinite(points)):
        raise ValueError(f"a plane needs at least 3 finite points, got {len(points)}")
    centroid = points.mean(axis=0)
    _, singular, vt = np.linalg.svd(points - centroid)
    if singular[1] < 1e-6 * max(singular[0], 1e-12):
        raise ValueError("the points are collinear: they do not determine a plane")
    return centroid, vt[2]


def in_plane_axis(normal: np.ndarray, preferred: np.ndarray = _ANTERIOR) -> np.ndarray:
    """(N, 3) unit in-plane axes: ``preferred`` projected onto each plane (N, 3 normals), or
    the world axis least aligned with the normal where ``preferred`` is nearly normal."""
    normal = np.asarray(normal, dtype=np.float64).reshape(-1, 3)
    axis = preferred - (normal @ preferred)[:, None] * normal
    weak = np.linalg.norm(axis, axis=1) < 0.1
    if np.any(weak):
        fallback = np.eye(3)[np.argmin(np.abs(normal[weak]), axis=1)]
        axis[weak] = fallback - np.sum(fallback * normal[weak], axis=1)[:, None] * normal[weak]
    return axis / np.linalg.norm(axis, axis=1, keepdims=True)


def planes_from_afids(points_ras: np.ndarray, names: Sequence[str], source: str = "") -> np.ndarray:
    """(2, 9) plane poses ``[point, normal, u]`` of the MSP and the AC-PC plane from AFIDs.

    ``names`` are the landmark names of ``points_ras`` (AFID numbers "1" ... "32"). InputError
    naming ``source`` when a defining AFID is missing or not finite, or the points are
    degenerate.
    """
    index = {name: row for row, name in enumerate(names)}
    missing = [n for n in MIDLINE_AFIDS if n not in index]
    if missing:
        raise InputError(
            f"the planes need the midline AFIDs {', '.join(MIDLINE_AFIDS)}; "
            f"missing: {', '.join(missing)}",
            source or None,
        )
    points = np.asarray(points_ras, dtype=np.float64)
    midline = points[[index[n] for n in MIDLINE_AFIDS]]
    if not np.all(np.isfinite(midline)):
        raise InputError("a midline AFID has no finite position", source or None)
    try:
        centroid, normal = fit_plane(midline)
    except ValueError as exc:
        raise InputError(f"the midline AFIDs do not define a plane: {exc}", source or None) from exc
    if normal @ _RIGHT < 0:
        normal = -normal
    ac, pc = points[index[ACPC_AFIDS[0]]], points[index[ACPC_AFIDS[1]]]
    try:
        acpc = acpc_plane(normal, ac, pc)
    except ValueError as exc:
        raise InputError(str(exc), source or None) from exc
    msp = np.concatenate([centroid, normal, in_plane_axis(normal)[0]])
    return np.stack([msp, acpc])


def acpc_plane(
    msp_normal: np.ndarray, ac_ras: np.ndarray, pc_ras: np.ndarray, up: np.ndarray = _SUPERIOR
) -> np.ndarray:
    """(9,) pose of the AC-PC plane: through AC (its reference point) and PC, containing the
    MSP's normal; its normal on the side of ``up`` (default: superior). ValueError when AC and
    PC coincide or lie along the MSP normal."""
    ac = np.asarray(ac_ras, dtype=np.float64)
    normal = np.cross(np.asarray(pc_ras, dtype=np.float64) - ac, msp_normal)
    length = np.linalg.norm(normal)
    if length < 1e-6:
        raise ValueError("AC and PC coincide or lie along the MSP normal")
    normal /= length
    if normal @ up < 0:
        normal = -normal
    return np.concatenate([ac, normal, in_plane_axis(normal)[0]])


def plane_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) angle in degrees between the normals of plane poses (N, >=6) ``a`` and ``b``."""
    a_n = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])[:, 3:6]
    b_n = np.asarray(b, dtype=np.float64).reshape(-1, np.shape(b)[-1])[:, 3:6]
    sin = np.linalg.norm(np.cross(a_n, b_n), axis=1)
    return np.degrees(np.arctan2(sin, np.sum(a_n * b_n, axis=1)))


def plane_distance_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) symmetric point-to-plane distance (mm): the mean of the distance of ``a``'s
    reference point from plane ``b`` and of ``b``'s from plane ``a``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])
    b = np.asarray(b, dtype=np.float64).reshape(-1, np.shape(b)[-1])
    a_n = a[:, 3:6] / np.linalg.norm(a[:, 3:6], axis=1, keepdims=True)
    b_n = b[:, 3:6] / np.linalg.norm(b[:, 3:6], axis=1, keepdims=True)
    gap = b[:, :3] - a[:, :3]
    return (np.abs(np.sum(gap * a_n, axis=1)) + np.abs(np.sum(gap * b_n, axis=1))) / 2
