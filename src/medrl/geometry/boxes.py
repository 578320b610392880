"""World-axis-aligned 3D boxes: from label maps, and their overlap and distances.

A box is its centre and its size along the world axes R, A, S, in mm (world RAS, see
``docs/contracts.md``). Arrays of boxes are (N, 6) float64 rows
``[centre_r, centre_a, centre_s, size_r, size_a, size_s]`` (:data:`BOX_COLUMNS`); functions
that take boxes also accept a single (6,) box and return (N, ...) results. The min/max form is
``[min_r, min_a, min_s, max_r, max_a, max_s]``.

A structure's box in a label map is the tight world box around its voxels, each voxel counted
with its full extent (the 8 corners of the voxel, index +- 0.5, mapped to world RAS), so a box
does not depend on the grid's orientation: it is exact for oblique grids too.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from medrl.errors import InputError
from medrl.io.images import Volume

__all__ = [
    "BOX_COLUMNS",
    "box_corners",
    "box_iou",
    "box_volume_mm3",
    "boxes_from_label_map",
    "boxes_from_points",
    "centre_distance_mm",
    "from_min_max",
    "structure_points_ras",
    "to_min_max",
    "voxel_half_extent_mm",
    "wall_distance_mm",
]

#: Columns of an (N, 6) box array.
BOX_COLUMNS: tuple[str, ...] = ("centre_r", "centre_a", "centre_s", "size_r", "size_a", "size_s")

#: Corner c of a box takes the max along world axis a when bit a of c is set, else the min.
_CORNER_BITS = np.array(list(itertools.product((0, 1), repeat=3)))[:, ::-1].astype(bool)


# ------------------------------------------------------------------ box arithmetic
def _as_boxes(boxes: np.ndarray | Sequence[float], what: str = "boxes") -> np.ndarray:
    """``boxes`` as a float64 (N, 6) array; ValueError unless finite with sizes >= 0."""
    array = np.atleast_2d(np.asarray(boxes, dtype=np.float64))
    if array.ndim != 2 or array.shape[1] != 6:
        raise ValueError(f"{what} must have shape (N, 6) or (6,), got {np.shape(boxes)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contain NaN or infinite values")
    if np.any(array[:, 3:] < 0):
        raise ValueError(f"{what} have a negative size")
    return array


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two box arrays broadcast against each other (a single box pairs with every box)."""
    boxes_a, boxes_b = _as_boxes(a, "boxes a"), _as_boxes(b, "boxes b")
    if len(boxes_a) != len(boxes_b) and 1 not in (len(boxes_a), len(boxes_b)):
        raise ValueError(f"cannot pair {len(boxes_a)} boxes with {len(boxes_b)} boxes")
    return np.broadcast_arrays(boxes_a, boxes_b)  # type: ignore[return-value]


def to_min_max(boxes: np.ndarray | Sequence[float]) -> np.ndarray:
    """(N, 6) ``[min_r, min_a, min_s, max_r, max_a, max_s]`` of (N, 6) centre/size boxes."""
    array = _as_boxes(boxes)
    half = array[:, 3:] / 2.0
    return np.concatenate([array[:, :3] - half, array[:, :3] + half], axis=1)


def from_min_max(min_max: np.ndarray | Sequence[float]) -> np.ndarray:
    """(N, 6) centre/size boxes of (N, 6) ``[min_r, min_a, min_s, max_r, max_a, max_s]``."""
    array = np.atleast_2d(np.asarray(min_max, dtype=np.float64))
    if array.ndim != 2 or array.shape[1] != 6:
        raise ValueError(f"min_max must have shape (N, 6) or (6,), got {np.shape(min_max)}")
    if not np.all(np.isfinite(array)):
        raise ValueError("min_max contains NaN or infinite values")
    if np.any(array[:, 3:] < array[:, :3]):
        raise ValueError("min_max has a max below its min")
    return np.concatenate([(array[:, :3] + array[:, 3:]) / 2.0, array[:, 3:] - array[:, :3]], 1)


def box_corners(boxes: np.ndarray | Sequence[float]) -> np.ndarray:
    """(N, 8, 3) RAS corners; corner c has the max along axis a when bit a of c is set."""
    min_max = to_min_max(boxes)
    return np.where(_CORNER_BITS[None], min_max[:, None, 3:], min_max[:, None, :3])


def box_volume_mm3(boxes: np.ndarray | Sequence[float]) -> np.ndarray:
    """(N,) volume of each box in mm³."""
    return np.prod(_as_boxes(boxes)[:, 3:], axis=1)


def box_iou(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> np.ndarray:
    """(N,) intersection over union of paired boxes (0 where both have zero volume)."""
    boxes_a, boxes_b = _pair(np.asarray(a), np.asarray(b))
    range_a, range_b = to_min_max(boxes_a), to_min_max(boxes_b)
    low = np.maximum(range_a[:, :3], range_b[:, :3])
    overlap = np.minimum(range_a[:, 3:], range_b[:, 3:]) - low
    intersection = np.prod(np.clip(overlap, 0.0, None), axis=1)
    union = box_volume_mm3(boxes_a) + box_volume_mm3(boxes_b) - intersection
    safe = np.where(union > 0, union, 1.0)
    return np.where(union > 0, intersection / safe, 0.0)


def centre_distance_mm(
    a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]
) -> np.ndarray:
    """(N,) Euclidean distance in mm between the centres of paired boxes."""
    boxes_a, boxes_b = _pair(np.asarray(a), np.asarray(b))
    return np.linalg.norm(boxes_a[:, :3] - boxes_b[:, :3], axis=1)


def wall_distance_mm(
    a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]
) -> np.ndarray:
    """(N,) mean absolute distance in mm between the 6 corresponding walls of paired boxes.

    Per axis ``|min_a - min_b|`` and ``|max_a - max_b|``, averaged over the 6 walls.
    """
    boxes_a, boxes_b = _pair(np.asarray(a), np.asarray(b))
    return np.mean(np.abs(to_min_max(boxes_a) - to_min_max(boxes_b)), axis=1)


# ------------------------------------------------------------------ boxes of voxels
def voxel_half_extent_mm(labels: Volume, matrix_ras: np.ndarray | None = None) -> np.ndarray:
    """(3,) half the world extent (R, A, S) of one voxel of ``labels``, in mm.

    A voxel spans index +- 0.5; its corners lie at ``centre + A @ (+-0.5, +-0.5, +-0.5)`` with
    ``A`` the index -> RAS matrix, so its half extent along world axis w is
    ``0.5 * sum_j |A[w, j]|``. ``matrix_ras`` (3, 3), if given, is a linear map applied to the
    voxel first (e.g. the rotation of a rigid motion), giving the half extent of the moved voxel.
    """
    linear = labels.index_to_ras[:3, :3]
    if matrix_ras is not None:
        linear = np.asarray(matrix_ras, dtype=np.float64).reshape(3, 3) @ linear
    return 0.5 * np.abs(linear).sum(axis=1)


def boxes_from_points(
    points_ras: Sequence[np.ndarray], half_extent_mm: np.ndarray | Sequence[float]
) -> np.ndarray:
    """(N, 6) boxes around each (M, 3) set of voxel centres, grown by the voxel half extent.

    ValueError for an empty set of points.
    """
    half = np.asarray(half_extent_mm, dtype=np.float64).reshape(3)
    rows = []
    for index, points in enumerate(points_ras):
        array = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if len(array) == 0:
            raise ValueError(f"point set {index} is empty: it has no box")
        rows.append(np.concatenate([array.min(axis=0) - half, array.max(axis=0) + half]))
    return from_min_max(np.asarray(rows).reshape(-1, 6))


def _where(labels: Volume) -> str:
    return f" {labels.source}" if labels.source else ""


def _wanted_values(
    labels: Volume, names: Mapping[int, str], wanted: Sequence[str] | None
) -> tuple[tuple[str, ...], list[int], bool]:
    """Names and label values asked for; whether every one must have voxels."""
    value_of: dict[str, int] = {}
    for value, name in names.items():
        if name in value_of:
            raise InputError(
                f"structure name {name!r} is used for label values {value_of[name]} and {value}",
                labels.source or None,
            )
        value_of[name] = int(value)
    if wanted is None:
        return tuple(value_of), list(value_of.values()), False
    wanted = list(wanted)
    unknown = [name for name in wanted if name not in value_of]
    if unknown:
        raise InputError(
            f"unknown structure(s) {unknown}; known structures: {', '.join(value_of)}",
            labels.source or None,
        )
    if len(set(wanted)) != len(wanted):
        raise InputError(f"structures asked for twice in {wanted}", labels.source or None)
    return tuple(wanted), [value_of[name] for name in wanted], True


def _voxels_by_value(labels: Volume, values: Sequence[int]) -> dict[int, np.ndarray]:
    """Label value -> (M, 3) voxel indices (i, j, k) of that value, in one pass over the map."""
    flat = labels.array.ravel()
    nonzero = np.flatnonzero(flat)
    found = np.rint(flat[nonzero]).astype(np.int64)
    keep = np.isin(found, np.asarray(values, dtype=np.int64))
    nonzero, found = nonzero[keep], found[keep]
    order = np.argsort(found, kind="stable")
    nonzero, found = nonzero[order], found[order]
    k, j, i = np.unravel_index(nonzero, labels.array.shape)
    ijk = np.stack([i, j, k], axis=1).astype(np.float64)
    present, starts = np.unique(found, return_index=True)
    groups = np.split(ijk, starts[1:]) if len(present) else []
    return {int(value): group for value, group in zip(present, groups, strict=True)}


def structure_points_ras(
    labels: Volume, names: Mapping[int, str], wanted: Sequence[str] | None = None
) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """World RAS centres (M, 3) of each structure's voxels (recompute boxes after a transform).

    Args:
        labels: an integer label map (0 = background).
        names: label value -> structure name.
        wanted: structure names to return, in this order; None: every named structure that
            has voxels, in the order of ``names``.

    Returns:
        The structure names and, per structure, its voxel centres in RAS mm.

    Raises:
        InputError: a name in ``wanted`` is unknown (the message lists the known ones), a
            structure asked for has no voxels (naming the label-map file and the structure),
            or two label values share a name.
    """
    chosen, values, strict = _wanted_values(labels, names, wanted)
    voxels = _voxels_by_value(labels, values)
    kept_names: list[str] = []
    points: list[np.ndarray] = []
    for name, value in zip(chosen, values, strict=True):
        if value not in voxels:
            if strict:
                raise InputError(
                    f"structure {name!r} (label {value}) has no voxels in the label map"
                    f"{_where(labels)}",
                    labels.source or None,
                )
            continue
        kept_names.append(name)
        points.append(labels.index_to_world(voxels[value], "RAS"))
    return tuple(kept_names), points


def boxes_from_label_map(
    labels: Volume, names: Mapping[int, str], wanted: Sequence[str] | None = None
) -> tuple[tuple[str, ...], np.ndarray]:
    """The tight world-axis-aligned box around each structure's voxels (full voxel extent).

    Arguments and errors as :func:`structure_points_ras`. Returns the structure names and
    their (N, 6) boxes ``[centre_r, centre_a, centre_s, size_r, size_a, size_s]`` in mm.
    """
    chosen, points = structure_points_ras(labels, names, wanted)
    boxes = boxes_from_points(points, voxel_half_extent_mm(labels)) if points else np.zeros((0, 6))
    return chosen, boxes
