"""Scores of a finished registration in world terms (numpy/SimpleITK, not differentiable).

* :func:`landmark_tre_mm`: distance between fixed landmarks mapped by a fixed -> moving
  transform and the moving landmarks (mm, in the moving image's world);
* :func:`dice_by_label`, :func:`hd95_mm`: overlap and 95th-percentile Hausdorff distance of
  hard label maps on one grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["dice_by_label", "hd95_by_label", "hd95_mm", "landmark_tre_mm", "map_points_ras"]

_FLIP = np.array([-1.0, -1.0, 1.0])


def map_points_ras(transform: sitk.Transform, points_ras: np.ndarray) -> np.ndarray:
    """(N, 3) RAS points through a SimpleITK (LPS) transform."""
    points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3) * _FLIP
    mapped = [transform.TransformPoint(tuple(float(v) for v in p)) for p in points]
    return np.asarray(mapped, dtype=np.float64).reshape(-1, 3) * _FLIP


def landmark_tre_mm(
    transform: sitk.Transform, fixed_points_ras: np.ndarray, moving_points_ras: np.ndarray
) -> np.ndarray:
    """(N,) ``|T(fixed) - moving|`` in mm for a fixed -> moving transform ``T``."""
    mapped = map_points_ras(transform, fixed_points_ras)
    return np.linalg.norm(mapped - np.asarray(moving_points_ras, dtype=np.float64), axis=1)


def dice_by_label(
    prediction: np.ndarray, truth: np.ndarray, values: list[int] | None = None
) -> dict[int, float]:
    """Dice of each label value (default: the non-zero values of ``truth``); NaN where both
    maps lack the value."""
    if values is None:
        values = [int(v) for v in np.unique(truth) if v != 0]
    scores = {}
    for value in values:
        a, b = prediction == value, truth == value
        total = int(a.sum()) + int(b.sum())
        scores[int(value)] = float("nan") if total == 0 else 2.0 * float((a & b).sum()) / total
    return scores


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing_zyx_mm: np.ndarray | list[float]) -> float:
    """95th percentile of the symmetric surface distances between two boolean masks (mm);
    NaN if either mask is empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if not a.any() or not b.any():
        return float("nan")
    sampling = np.asarray(spacing_zyx_mm, dtype=np.float64)
    # Both surfaces lie in the masks' bounding box: the distances need nothing outside it.
    corners = np.argwhere(a | b)
    box = tuple(
        slice(max(0, int(lo) - 1), int(hi) + 2)
        for lo, hi in zip(corners.min(0), corners.max(0), strict=True)
    )
    a, b = a[box], b[box]
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)
    distances = np.concatenate([to_b[surface_a], to_a[surface_b]])
    return float(np.percentile(distances, 95))


def hd95_by_label(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing_zyx_mm: np.ndarray | list[float],
    values: list[int] | None = None,
) -> dict[int, float]:
    """:func:`hd95_mm` of each label value (default: the non-zero values of ``truth``)."""
    if values is None:
        values = [int(v) for v in np.unique(truth) if v != 0]
    return {int(v): hd95_mm(prediction == v, truth == v, spacing_zyx_mm) for v in values}
