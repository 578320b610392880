"""Registration metrics: landmark distances, label overlap and surface distances, and the
Jacobian determinant of a displacement field.

Points are RAS mm (any common frame works for distances); label maps are
:class:`~medrl.io.images.Volume` objects on one grid; displacement fields are SimpleITK vector
images (float64, three components: the displacement in LPS mm, ITK's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medrl.errors import InputError
from medrl.io.images import Volume, same_grid

_SLAB = 16
"""Slices of a field whose Jacobian is computed at once (bounds the memory used)."""


def tre_mm(points_a_ras: np.ndarray, points_b_ras: np.ndarray) -> np.ndarray:
    """(N,) distance in mm between corresponding points (target registration error).

    Raises:
        ValueError: the arrays are not both (N, 3), or hold NaN or infinite values.
    """
    a = np.asarray(points_a_ras, dtype=np.float64)
    b = np.asarray(points_b_ras, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape != b.shape:
        raise ValueError(f"need two (N, 3) point arrays of one shape, got {a.shape}, {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("points have NaN or infinite coordinates")
    return np.linalg.norm(a - b, axis=1)


def _check_grid(labels_a: Volume, labels_b: Volume) -> None:
    if not same_grid(labels_a, labels_b):
        raise InputError(
            f"label map is not on the grid of {labels_a.source or 'the other label map'} "
            f"(size {labels_b.shape_xyz} vs {labels_a.shape_xyz}, spacing "
            f"{np.round(labels_b.spacing_mm, 4).tolist()} vs "
            f"{np.round(labels_a.spacing_mm, 4).tolist()} mm, or origin/direction differ)",
            labels_b.source or None,
        )


def _label_values(a: np.ndarray, b: np.ndarray, values: Sequence[int] | None) -> list[int]:
    if values is not None:
        return [int(v) for v in values]
    present = np.union1d(np.unique(a), np.unique(b))
    return [int(v) for v in present if v != 0]


def dice_per_label(
    labels_a: Volume, labels_b: Volume, values: Sequence[int] | None = None
) -> dict[int, float]:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of each label value (default: every non-zero
    value of either map). NaN for a value absent from both maps.

    Raises:
        InputError: the two maps are not on one grid (naming both files).
    """
    _check_grid(labels_a, labels_b)
    a, b = np.rint(labels_a.array), np.rint(labels_b.array)
    scores: dict[int, float] = {}
    for value in _label_values(a, b, values):
        in_a, in_b = a == value, b == value
        total = int(np.count_nonzero(in_a)) + int(np.count_nonzero(in_b))
        overlap = int(np.count_nonzero(in_a & in_b))
        scores[value] = 2.0 * overlap / total if total else float("nan")
    return scores


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (the image border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))


def _surface_distances_mm(
    mask_a: np.ndarray, mask_b: np.ndarray, sampling_zyx: np.ndarray
) -> np.ndarray:
    """Distances (mm) from each surface voxel of A to B's surface and from B's to A's."""
    both = mask_a | mask_b
    low = np.maximum(np.argwhere(both).min(axis=0) - 1, 0)
    high = np.argwhere(both).max(axis=0) + 2
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    surface_a, surface_b = _surface(mask_a[box]), _surface(mask_b[box])
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling_zyx)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling_zyx)
    return np.concatenate([to_b[surface_a], to_a[surface_b]])


def hd95_mm_per_label(
    labels_a: Volume, labels_b: Volume, values: Sequence[int] | None = None
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the surfaces of each label.

    A label's surface is its voxels with at least one 6-neighbour outside the label (or on
    the image border). The distances from every surface voxel of A to the nearest surface
    voxel of B and from every surface voxel of B to the nearest of A are pooled, and their
    95th percentile (linear interpolation) is the score. Distances use the voxel spacing
    (Euclidean distance transform with ``sampling=spacing``), so they are physical mm for
    any orthonormal direction. NaN for a value missing from either map. Values as in
    :func:`dice_per_label`.

    Raises:
        InputError: the two maps are not on one grid.
    """
    _check_grid(labels_a, labels_b)
    a, b = np.rint(labels_a.array), np.rint(labels_b.array)
    sampling_zyx = labels_a.spacing_mm[::-1]
    scores: dict[int, float] = {}
    for value in _label_values(a, b, values):
        in_a, in_b = a == value, b == value
        if not (in_a.any() and in_b.any()):
            scores[value] = float("nan")
            continue
        scores[value] = float(np.percentile(_surface_distances_mm(in_a, in_b, sampling_zyx), 95))
    return scores


def _gradients(block: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """(..., 3 components, 3 index axes x y z): derivative of each displacement component
    per mm along each index axis of a (z, y, x, 3) block; zero along axes of one voxel."""
    columns = []
    for axis_xyz in range(3):
        array_axis = 2 - axis_xyz
        if block.shape[array_axis] < 2:
            columns.append(np.zeros_like(block))
        else:
            columns.append(np.gradient(block, spacing_mm[axis_xyz], axis=array_axis))
    return np.stack(columns, axis=-1)


def jacobian_determinant(field: sitk.Image) -> np.ndarray:
    """det(I + du/dx) at every voxel of a displacement field, shape (nz, ny, nx).

    ``u`` is the displacement in LPS mm; its derivatives along the index axes (central
    differences, one-sided at the border, like ``np.gradient``) are turned into derivatives
    per physical mm through the grid's spacing and direction, so the result is right for
    oblique and flipped grids too (ITK's ``DisplacementFieldJacobianDeterminant`` ignores the
    direction). 1 where the map keeps volume, > 1 where it expands, <= 0 where it folds.
    """
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("need a 3D displacement field with 3 components per voxel")
    array = sitk.GetArrayViewFromImage(field)
    spacing = np.asarray(field.GetSpacing(), dtype=np.float64)
    direction = np.asarray(field.GetDirection(), dtype=np.float64).reshape(3, 3)
    # d(index axis position in mm)/d(LPS) is the inverse direction matrix.
    to_physical = np.linalg.inv(direction)
    nz = array.shape[0]
    determinant = np.empty(array.shape[:3], dtype=np.float64)
    for start in range(0, nz, _SLAB):
        stop = min(nz, start + _SLAB)
        low, high = max(0, start - 1), min(nz, stop + 1)
        block = np.asarray(array[low:high], dtype=np.float64)
        gradient = _gradients(block, spacing)[start - low : start - low + stop - start]
        determinant[start:stop] = np.linalg.det(np.eye(3) + gradient @ to_physical)
    return determinant


def jacobian_stats(det: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Summary of a Jacobian determinant map (optionally only where ``mask`` is true).

    Returns ``folding_share`` (share of voxels with det <= 0), ``det_min``, ``det_max``,
    ``det_mean`` and ``log_det_std`` (standard deviation of log(det) over voxels with det > 0:
    0 for a volume-preserving map), and ``voxels`` (how many were summarised).
    """
    values = np.asarray(det, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} differs from {values.shape}")
        values = values[mask]
    values = values.reshape(-1)
    if values.size == 0:
        raise ValueError("no voxels to summarise")
    positive = values[values > 0]
    return {
        "folding_share": float(np.count_nonzero(values <= 0) / values.size),
        "det_min": float(values.min()),
        "det_max": float(values.max()),
        "det_mean": float(values.mean()),
        "log_det_std": float(np.log(positive).std()) if positive.size else float("nan"),
        "voxels": int(values.size),
    }
