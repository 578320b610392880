"""Boxes as 3D Slicer ROI markups (``.mrk.json``): writing and reading.

One markup of ``"type": "ROI"`` (``"roiType": "Box"``) per structure, named after it, with its
``center``, ``size`` and ``orientation`` (3x3, row-major; column j is the ROI's axis j) and one
control point at the centre, as Slicer 5 writes them (markups schema v1.0.3). Boxes are held in
world RAS mm (:mod:`medrl.geometry.boxes`); files may be RAS or LPS. In LPS the centre's first
two coordinates are negated and so are the first two rows of the orientation (what Slicer does):
an axis-aligned box written in LPS has orientation ``diag(-1, -1, 1)``. Sizes do not change.
Only boxes whose axes are world axes (up to order and sign) can be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrl.errors import InputError
from medrl.io.landmarks import MARKUPS_SCHEMA, CoordinateSystem
from medrl.utils.atomic import atomic_open

__all__ = ["ROI_TYPES", "load_markups", "read_boxes", "read_named_markups", "write_boxes"]

#: ROI types whose ``center``/``size``/``orientation`` describe the box.
ROI_TYPES = ("Box", "BoundingBox")
_FLIP = np.array([-1.0, -1.0, 1.0])
_SYSTEMS = {"RAS": "RAS", "LPS": "LPS", "0": "RAS", "1": "LPS"}
_AXIS_TOLERANCE = 1e-6


def _system(value: Any, path: Path, where: str) -> CoordinateSystem:
    """Normalise a coordinate system name ("RAS"/"LPS", any case, or Slicer's 0/1)."""
    key = str(value).strip().upper()
    if key not in _SYSTEMS:
        raise InputError(
            f"{where}: unknown coordinate system {value!r} (expected RAS or LPS)", path
        )
    return _SYSTEMS[key]  # type: ignore[return-value]


def _orientation_in(system: CoordinateSystem) -> np.ndarray:
    """The orientation of a world-axis-aligned ROI, written in ``system`` (row-major 3x3)."""
    return np.diag(_FLIP) if system == "LPS" else np.eye(3)


def write_boxes(
    path: str | Path,
    names: Sequence[str],
    boxes: np.ndarray,
    coordinate_system: str = "RAS",
) -> None:
    """Write boxes as Slicer ROI markups (``.mrk.json``), one ROI per structure, atomically.

    Args:
        path: the output file (``.mrk.json`` is what Slicer expects).
        names: one unique, non-empty name per box (the ROI's name and its point's label).
        boxes: (N, 6) ``[cR, cA, cS, sR, sA, sS]`` in RAS mm.
        coordinate_system: "RAS" or "LPS", the frame of the file's coordinates.

    Raises:
        InputError: names and boxes do not match, a name is empty or repeated, a box is not
            finite or has a negative size, or the coordinate system is unknown.
    """
    path = Path(path)
    system = _system(coordinate_system, path, "the coordinate_system argument")
    names = [str(name) for name in names]
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape != (len(names), 6):
        raise InputError(f"{len(names)} names for boxes of shape {array.shape}", path)
    if any(not name.strip() for name in names):
        raise InputError("every box needs a non-empty name", path)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputError(f"duplicate box name(s): {', '.join(duplicated)}", path)
    if not np.all(np.isfinite(array)) or np.any(array[:, 3:] < 0):
        raise InputError("boxes must be finite with sizes >= 0", path)
    orientation = [float(v) for v in _orientation_in(system).reshape(-1)]
    markups = []
    for name, box in zip(names, array, strict=True):
        centre = [float(v) for v in (box[:3] * _FLIP if system == "LPS" else box[:3])]
        markups.append(
            single_point_markup(
                "ROI",
                name,
                system,
                centre,
                orientation,
                roiType="Box",
                insideOut=False,
                center=centre,
                orientation=orientation,
                size=[float(v) for v in box[3:]],
            )
        )
    write_markups(path, markups)


def single_point_markup(
    markup_type: str,
    name: str,
    system: str,
    point_position: list[float],
    point_orientation: list[float],
    description: str = "",
    **fields: Any,
) -> dict[str, Any]:
    """One Slicer markup of ``markup_type`` named ``name`` with one control point at
    ``point_position`` (as Slicer 5 writes ROIs and planes), plus the type's own ``fields``
    (``center``, ``orientation``, ...)."""
    return {
        "type": markup_type,
        "name": name,
        "coordinateSystem": system,
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": 1,
        **fields,
        "controlPoints": [
            {
                "id": "1",
                "label": name,
                "description": description,
                "associatedNodeID": "",
                "position": point_position,
                "orientation": point_orientation,
                "selected": True,
                "locked": False,
                "visibility": True,
                "positionStatus": "defined",
            }
        ],
    }


def write_markups(path: Path, markups: list[dict[str, Any]]) -> None:
    """A Slicer ``.mrk.json`` holding ``markups``, written atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump({"@schema": MARKUPS_SCHEMA, "markups": markups}, handle, indent=2)
        handle.write("\n")


def _numbers(value: Any, count: int, path: Path, where: str) -> np.ndarray:
    """``value`` as ``count`` finite floats; InputError otherwise."""
    if (
        not isinstance(value, list)
        or len(value) != count
        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
    ):
        raise InputError(f"{where}: expected a list of {count} numbers, got {value!r}", path)
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{where}: non-finite value in {value!r}", path)
    return array


def _size_along_world(
    orientation_ras: np.ndarray, size: np.ndarray, path: Path, where: str
) -> np.ndarray:
    """The ROI's size along world R, A, S, if its axes are world axes (up to order and sign)."""
    rounded = np.rint(orientation_ras)
    is_signed_permutation = (
        np.allclose(orientation_ras, rounded, atol=_AXIS_TOLERANCE)
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )
    if not is_signed_permutation:
        raise InputError(
            f"{where}: the ROI is rotated (orientation {orientation_ras.round(4).tolist()}); "
            "only boxes aligned with the world axes are supported",
            path,
        )
    # Column j is ROI axis j in world coordinates: world axis w gets the size of the j with
    # |M[w, j]| = 1.
    return np.abs(rounded) @ size


def _read_roi(markup: dict[str, Any], index: int, path: Path) -> tuple[str, np.ndarray]:
    where = f"markup {index + 1}"
    name = markup.get("name")
    if not isinstance(name, str) or not name.strip():
        points = markup.get("controlPoints") or []
        first = points[0] if isinstance(points, list) and points else {}
        name = first.get("label") if isinstance(first, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: the ROI has no name", path)
    name = name.strip()
    where = f"{where} ({name!r})"
    roi_type = markup.get("roiType", "Box")
    if roi_type not in ROI_TYPES:
        raise InputError(
            f"{where}: roiType {roi_type!r} is not supported (use one of {', '.join(ROI_TYPES)})",
            path,
        )
    units = markup.get("coordinateUnits", "mm")
    if units not in ("mm", ["mm", "UCUM", "millimeter"]):
        raise InputError(f"{where}: coordinateUnits {units!r}, not mm", path)
    system = _system(markup.get("coordinateSystem", "LPS"), path, where)  # schema default: LPS
    for key in ("center", "size"):
        if key not in markup:
            raise InputError(f"{where}: no {key!r}", path)
    centre = _numbers(markup["center"], 3, path, f"{where} center")
    size = _numbers(markup["size"], 3, path, f"{where} size")
    if np.any(size < 0):
        raise InputError(f"{where}: negative size {size.tolist()}", path)
    orientation = _numbers(
        markup.get("orientation", _orientation_in(system).reshape(-1).tolist()),
        9,
        path,
        f"{where} orientation",
    ).reshape(3, 3)
    if system == "LPS":
        centre = centre * _FLIP
        orientation = np.diag(_FLIP) @ orientation
    return name, np.concatenate([centre, _size_along_world(orientation, size, path, where)])


def load_markups(path: Path) -> list[Any]:
    """The ``markups`` list of a Slicer ``.mrk.json``; InputError naming the file when it is
    missing, not JSON or has no such list."""
    if not path.is_file():
        raise InputError("markups file not found", path)
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} (line {exc.lineno})", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read markups file: {exc}", path) from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise InputError("not a Slicer markups file (no 'markups' list)", path)
    return markups


def read_boxes(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Read the ROI markups of a Slicer ``.mrk.json`` as named boxes in RAS mm.

    Each ROI's ``coordinateSystem`` is honoured (default LPS, as in the schema); other markup
    types (point lists, lines, ...) in the file are skipped.

    Returns:
        The ROI names and their (N, 6) boxes ``[cR, cA, cS, sR, sA, sS]`` in RAS mm.

    Raises:
        InputError: missing or malformed file (not JSON, no ``markups`` list), no ROI in the
            file, an ROI without name, centre or size, a duplicate name, unknown coordinate
            system or units, or a rotated ROI (only world-axis-aligned boxes are supported).
            The message names the file and the markup.
    """
    return read_named_markups(Path(path), "ROI", _read_roi)


def read_named_markups(
    path: Path,
    markup_type: str,
    read_one: Callable[[dict[str, Any], int, Path], tuple[str, np.ndarray]],
) -> tuple[tuple[str, ...], np.ndarray]:
    """Every markup of ``markup_type`` in a Slicer ``.mrk.json``, read by ``read_one`` into a
    name and a row; other types are skipped. InputError for a repeated name or none found."""
    names: list[str] = []
    rows: list[np.ndarray] = []
    for index, markup in enumerate(load_markups(path)):
        if not isinstance(markup, dict) or markup.get("type") != markup_type:
            continue
        name, row = read_one(markup, index, path)
        if name in names:
            raise InputError(f"markup {index + 1}: duplicate {markup_type} name {name!r}", path)
        names.append(name)
        rows.append(row)
    if not rows:
        raise InputError(f"no {markup_type} markups in file", path)
    return tuple(names), np.asarray(rows, dtype=np.float64)
