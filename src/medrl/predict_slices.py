"""What ``medrl predict`` writes for a slice model: one JSON per scan with, for each target,
the slice axis, the fractional and nearest slice index and the world position of the slice.

The file (``NAME.slices.json``)::

    {"format": "medrl-slices", "version": 1, "image": ..., "coordinate_system": "RAS",
     "axis": 2, "axis_name": "k", "slice_count": 193, "slice_spacing_mm": 1.0,
     "normal": [nR, nA, nS],
     "slices": [{"name": "1", "description": "AC", "index": 72.31, "nearest_index": 72,
                 "position_mm": 3.9, "point": [R, A, S]}, ...]}

``index`` is continuous (voxel centres at integers, as in ITK and NIfTI); ``position_mm`` is the
signed distance of the slice from the world origin along ``normal`` (the direction in which the
index grows, as world coordinates of the same system); ``point`` is where the agent's in-plane
centre lies on the slice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medrl.agents.search import SearchResult
from medrl.errors import InputError
from medrl.io.images import Volume
from medrl.tasks.slice import slice_index, slice_spacing_mm
from medrl.utils.atomic import atomic_open

SLICES_FORMAT = "medrl-slices"
EDGE_MARGIN_MM = 10.0
"""A slice closer than this to the first or last slice was cut off by the field of view (the
search cannot leave the scan, so it stops at its edge)."""
_FLIP = {"RAS": np.ones(3), "LPS": np.array([-1.0, -1.0, 1.0])}


def axis_of_normal(volume: Volume, normal_ras: np.ndarray) -> int:
    """The voxel axis whose slices have the normal ``normal_ras`` (the estimate's own)."""
    gradients = np.linalg.inv(volume.index_to_ras[:3, :3])
    gradients /= np.linalg.norm(gradients, axis=1, keepdims=True)
    return int(np.argmax(np.abs(gradients @ np.asarray(normal_ras, dtype=np.float64))))


def slices_document(volume: Volume, result: SearchResult, coordinate_system: str = "RAS") -> dict:
    """The JSON document of a slice search on ``volume``; InputError naming the scan when a
    slice lies within :data:`EDGE_MARGIN_MM` of the first or last slice."""
    if coordinate_system not in _FLIP:
        raise InputError(f"coordinate system must be RAS or LPS, not {coordinate_system!r}")
    estimate = np.asarray(result.estimate, dtype=np.float64)
    axis = axis_of_normal(volume, estimate[0, 3:6])
    index = slice_index(volume.index_to_ras, estimate[:, :3], axis)
    count = volume.shape_xyz[axis]
    spacing = slice_spacing_mm(volume.index_to_ras, axis)
    to_edge_mm = np.minimum(index, count - 1 - index) * spacing
    if np.any(to_edge_mm < EDGE_MARGIN_MM):
        cut = [
            f"{name} (slice {i:.1f} of {count})"
            for name, i, d in zip(result.names, index, to_edge_mm, strict=True)
            if d < EDGE_MARGIN_MM
        ]
        raise InputError(
            f"the field of view does not contain the slice(s) found: {', '.join(cut)} lies "
            f"less than {EDGE_MARGIN_MM:g} mm from the first or last slice; does the scan "
            "cover the target?",
            volume.source,
        )
    gradient = np.linalg.inv(volume.index_to_ras[:3, :3])[axis]
    normal = gradient / np.linalg.norm(gradient)  # the direction of growing index
    flip = _FLIP[coordinate_system]
    descriptions = list(result.descriptions) + [""] * len(result.names)
    slices = []
    for row, name in enumerate(result.names):
        slices.append(
            {
                "name": str(name),
                "description": str(descriptions[row]),
                "index": round(float(index[row]), 3),
                "nearest_index": int(np.clip(np.rint(index[row]), 0, count - 1)),
                "position_mm": round(float(estimate[row, :3] @ normal), 3),
                "point": [round(float(v), 3) for v in estimate[row, :3] * flip],
            }
        )
    return {
        "format": SLICES_FORMAT,
        "version": 1,
        "image": str(volume.source),
        "coordinate_system": coordinate_system,
        "axis": axis,
        "axis_name": "ijk"[axis],
        "slice_count": int(count),
        "slice_spacing_mm": round(spacing, 6),
        "normal": [round(float(v), 6) for v in normal * flip],
        "slices": slices,
    }


def write_slices(
    path: str | Path, volume: Volume, result: SearchResult, coordinate_system: str = "RAS"
) -> None:
    """Write :func:`slices_document` atomically (nothing is written when it fails)."""
    document = slices_document(volume, result, coordinate_system)
    with atomic_open(Path(path), "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")


def read_slices(path: str | Path) -> dict:
    """A slices file, checked: InputError naming the file when it is not one."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable slices file: {exc}", path) from exc
    if not isinstance(document, dict) or document.get("format") != SLICES_FORMAT:
        raise InputError(f"not a {SLICES_FORMAT} file", path)
    return document
