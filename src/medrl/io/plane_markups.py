"""Planes as 3D Slicer plane markups (``.mrk.json``): writing and reading.

One markup of ``"type": "Plane"`` (``"planeType": "pointNormal"``) per plane, named after it
(``MSP``, ``ACPC``), with its ``center``, ``normal`` and ``orientation`` (3x3, row-major;
columns: the plane's in-plane x axis, y axis and normal) and one control point at the centre,
as Slicer 5 writes them. Planes are held in world RAS mm as plane poses ``[point, normal, u]``
(:mod:`medrl.geometry.planes`); files may be RAS or LPS (the first two coordinates of points and
directions negated).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrl.errors import InputError
from medrl.geometry.planes import in_plane_axis
from medrl.io.markups import (
    _FLIP,
    _numbers,
    _system,
    read_named_markups,
    single_point_markup,
    write_markups,
)

__all__ = ["read_planes", "write_planes"]

#: The side (mm) of the square Slicer draws for each plane.
DISPLAY_SIZE_MM = 200.0


def _frame(pose: np.ndarray) -> np.ndarray:
    """(3, 3) columns u, v, n of a plane pose (normal and axis made orthonormal)."""
    normal = pose[3:6] / np.linalg.norm(pose[3:6])
    axis = pose[6:9] - (pose[6:9] @ normal) * normal
    axis /= np.linalg.norm(axis)
    return np.stack([axis, np.cross(normal, axis), normal], axis=1)


def write_planes(
    path: str | Path,
    names: Sequence[str],
    planes: np.ndarray,
    coordinate_system: str = "RAS",
    descriptions: Sequence[str] = (),
) -> None:
    """Write plane poses (N, 9) ``[point, normal, u]`` (RAS mm) as Slicer plane markups,
    atomically. InputError naming the file for mismatched or repeated names, non-finite
    values, or a zero normal."""
    path = Path(path)
    system = _system(coordinate_system, path, "the coordinate_system argument")
    names = [str(name) for name in names]
    array = np.asarray(planes, dtype=np.float64)
    if array.ndim != 2 or array.shape != (len(names), 9):
        raise InputError(f"{len(names)} names for planes of shape {array.shape}", path)
    if any(not name.strip() for name in names) or len(set(names)) != len(names):
        raise InputError("every plane needs a unique, non-empty name", path)
    if not np.all(np.isfinite(array)) or np.any(np.linalg.norm(array[:, 3:6], axis=1) < 1e-9):
        raise InputError("planes must be finite with a non-zero normal", path)
    flip = _FLIP if system == "LPS" else np.ones(3)
    markups = []
    for index, (name, pose) in enumerate(zip(names, array, strict=True)):
        frame = flip[:, None] * _frame(pose)
        centre = [float(v) for v in pose[:3] * flip]
        orientation = [float(v) for v in frame.reshape(-1)]
        description = descriptions[index] if index < len(descriptions) else ""
        markups.append(
            single_point_markup(
                "Plane",
                name,
                system,
                centre,
                orientation,
                description,
                planeType="pointNormal",
                sizeMode="absolute",
                autoScalingSizeFactor=1.0,
                center=centre,
                normal=[float(v) for v in frame[:, 2]],
                size=[DISPLAY_SIZE_MM, DISPLAY_SIZE_MM],
                planeBounds=[-DISPLAY_SIZE_MM / 2, DISPLAY_SIZE_MM / 2] * 2,
                orientation=orientation,
            )
        )
    write_markups(path, markups)


def _read_plane(markup: dict[str, Any], index: int, path: Path) -> tuple[str, np.ndarray]:
    where = f"markup {index + 1}"
    name = markup.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: the plane has no name", path)
    name = name.strip()
    where = f"{where} ({name!r})"
    system = _system(markup.get("coordinateSystem", "LPS"), path, where)
    flip = _FLIP if system == "LPS" else np.ones(3)
    if "center" in markup:
        centre = _numbers(markup["center"], 3, path, f"{where} center")
    else:
        points = markup.get("controlPoints") or []
        if not isinstance(points, list) or not points or not isinstance(points[0], dict):
            raise InputError(f"{where}: no 'center' and no control point", path)
        centre = _numbers(points[0].get("position"), 3, path, f"{where} control point")
    if "normal" in markup:
        normal = _numbers(markup["normal"], 3, path, f"{where} normal")
    elif "orientation" in markup:
        normal = _numbers(markup["orientation"], 9, path, f"{where} orientation")[2::3]
    else:
        raise InputError(f"{where}: no 'normal' or 'orientation'", path)
    length = np.linalg.norm(normal)
    if length < 1e-9:
        raise InputError(f"{where}: zero normal", path)
    normal = normal * flip / length
    if "orientation" in markup:
        axis = _numbers(markup["orientation"], 9, path, f"{where} orientation")[0::3] * flip
        axis = axis - (axis @ normal) * normal
        if np.linalg.norm(axis) < 1e-6:
            axis = in_plane_axis(normal)[0]
        axis /= np.linalg.norm(axis)
    else:
        axis = in_plane_axis(normal)[0]
    return name, np.concatenate([centre * flip, normal, axis])


def read_planes(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Read the plane markups of a Slicer ``.mrk.json`` as named plane poses (N, 9), RAS mm.

    InputError naming the file and markup for a missing or malformed file, no plane, a plane
    without name, centre or normal, or a duplicate name. Other markup types are skipped.
    """
    return read_named_markups(Path(path), "Plane", _read_plane)
