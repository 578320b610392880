"""Named 3D landmarks: reading and writing Slicer ``.fcsv``, ``.mrk.json`` and plain CSV.

Landmarks are held in RAS mm (see ``docs/contracts.md``). Files may be RAS or LPS; the
frame comes from the file (``CoordinateSystem`` header, ``coordinateSystem`` field or a
``# coordinate_system = ...`` comment) or from the ``coordinate_system`` argument, and the
two must agree when both are given. Coordinates are written with ``repr`` so that a write +
read round trip gives bitwise-equal arrays (LPS <-> RAS is a negation, which is exact).
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medrl.errors import InputError
from medrl.utils.atomic import atomic_open

if TYPE_CHECKING:
    from medrl.io.images import Volume

CoordinateSystem = Literal["RAS", "LPS"]

#: Multiplying by this maps RAS <-> LPS (negate x and y).
_FLIP = np.array([-1.0, -1.0, 1.0])

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
FCSV_COLUMNS = (
    "id",
    "x",
    "y",
    "z",
    "ow",
    "ox",
    "oy",
    "oz",
    "vis",
    "sel",
    "lock",
    "label",
    "desc",
    "associatedNodeID",
)
LANDMARK_SUFFIXES = (".fcsv", ".mrk.json", ".csv")
_FCSV_SYSTEMS = {"0": "RAS", "1": "LPS", "RAS": "RAS", "LPS": "LPS"}
_HEADER_LINE = re.compile(r"^#\s*([^=]+?)\s*=\s*(.*?)\s*$")


# ---------------------------------------------------------------------- validation
def _validate(
    names: Sequence[str],
    points_ras: np.ndarray,
    descriptions: Sequence[str],
    path: str | Path | None,
) -> None:
    """Raise InputError unless names/points/descriptions form a consistent landmark set."""
    if points_ras.ndim != 2 or points_ras.shape[1] != 3:
        raise InputError(f"landmark points must have shape (N, 3), got {points_ras.shape}", path)
    if len(names) != points_ras.shape[0]:
        raise InputError(f"{len(names)} names for {points_ras.shape[0]} landmark points", path)
    if descriptions and len(descriptions) != len(names):
        raise InputError(f"{len(descriptions)} descriptions for {len(names)} landmarks", path)
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"landmark {index + 1} has no name", path)
        if name in seen:
            raise InputError(f"duplicate landmark name {name!r}", path)
        seen.add(name)
    bad = ~np.all(np.isfinite(points_ras), axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"landmark {names[first]!r} has a non-finite coordinate {points_ras[first].tolist()}",
            path,
        )


@dataclass(frozen=True, eq=False)
class Landmarks:
    """Named points in RAS mm.

    Attributes:
        names: unique, non-empty landmark names.
        points_ras: (N, 3) float64 RAS positions in mm (read-only).
        descriptions: empty, or one free-text description per landmark.
    """

    names: tuple[str, ...]
    points_ras: np.ndarray
    descriptions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = tuple(self.names)
        points = np.array(self.points_ras, dtype=np.float64)
        if points.size == 0 and not names:
            points = points.reshape(0, 3)
        descriptions = tuple(self.descriptions)
        _validate(names, points, descriptions, None)
        if all(not d for d in descriptions):
            descriptions = ()
        points.flags.writeable = False
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "points_ras", points)
        object.__setattr__(self, "descriptions", descriptions)

    def __len__(self) -> int:
        return len(self.names)

    def points(self, frame: CoordinateSystem = "RAS") -> np.ndarray:
        """A writable (N, 3) copy of the points in ``frame`` ("RAS" or "LPS") mm."""
        if frame == "RAS":
            return self.points_ras.copy()
        if frame == "LPS":
            return self.points_ras * _FLIP
        raise ValueError(f"frame must be 'RAS' or 'LPS', got {frame!r}")

    def subset(self, names: Iterable[str]) -> Landmarks:
        """The landmarks called ``names``, in that order; InputError if any is missing."""
        wanted = list(names)
        position = {name: i for i, name in enumerate(self.names)}
        missing = [name for name in wanted if name not in position]
        if missing:
            raise InputError(f"landmark(s) {missing} not found; available: {list(self.names)}")
        rows = [position[name] for name in wanted]
        descriptions = tuple(self.descriptions[i] for i in rows) if self.descriptions else ()
        return Landmarks(tuple(wanted), self.points_ras[rows].reshape(-1, 3), descriptions)

    def description(self, name: str) -> str:
        """The description of landmark ``name`` ("" if there are none)."""
        if not self.descriptions:
            return ""
        return self.descriptions[self.names.index(name)]


# -------------------------------------------------------------- coordinate systems
def _normalize_system(value: str | None, path: Path, what: str) -> CoordinateSystem | None:
    """Map "RAS"/"LPS" (any case, or fcsv's 0/1) to "RAS"/"LPS"; None stays None."""
    if value is None:
        return None
    key = str(value).strip().upper()
    if key not in _FCSV_SYSTEMS:
        raise InputError(
            f"unknown coordinate system {value!r} in {what} (expected RAS or LPS)", path
        )
    return _FCSV_SYSTEMS[key]  # type: ignore[return-value]


def _resolve_system(
    declared: str | None, argument: str | None, path: Path, what: str
) -> CoordinateSystem:
    """The frame a file's points are in: its declaration and the argument must agree."""
    file_system = _normalize_system(declared, path, what)
    arg_system = _normalize_system(argument, path, "the coordinate_system argument")
    if file_system and arg_system and file_system != arg_system:
        raise InputError(
            f"file says its coordinates are {file_system} but {arg_system} was requested",
            path,
        )
    system = file_system or arg_system
    if system is None:
        raise InputError(
            f"coordinate system unknown: the file has no {what} and none was given "
            "(pass coordinate_system='RAS' or 'LPS')",
            path,
        )
    return system


def _to_ras(points: np.ndarray, system: CoordinateSystem) -> np.ndarray:
    return points if system == "RAS" else points * _FLIP


def _parse_float(text: str, path: Path, where: str, axis: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {axis} coordinate {text!r} is not a number", path) from None
    if not np.isfinite(value):
        raise InputError(f"{where}: {axis} coordinate {text!r} is not finite", path)
    return value


def _build(
    names: list[str],
    coords: list[list[float]],
    descriptions: list[str],
    places: list[str],
    system: CoordinateSystem,
    path: Path,
) -> Landmarks:
    """Check names (naming the offending line) and build Landmarks in RAS."""
    if not names:
        raise InputError("file holds no landmarks", path)
    first_place: dict[str, str] = {}
    for name, place in zip(names, places, strict=True):
        if not name.strip():
            raise InputError(f"{place}: landmark has no name (empty label)", path)
        if name in first_place:
            raise InputError(
                f"{place}: duplicate landmark name {name!r} (also at {first_place[name]})", path
            )
        first_place[name] = place
    points = _to_ras(np.array(coords, dtype=np.float64).reshape(-1, 3), system)
    _validate(names, points, descriptions, path)
    return Landmarks(tuple(names), points, tuple(descriptions))


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"not a UTF-8 text file ({error.reason})", path) from None
    except OSError as error:
        raise InputError(f"cannot read file: {error.strerror}", path) from None
    if not text.strip():
        raise InputError("file is empty", path)
    return text


# --------------------------------------------------------------------------- fcsv
def _read_fcsv(path: Path, coordinate_system: str | None) -> Landmarks:
    header: dict[str, str] = {}
    data_lines: list[tuple[int, str]] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.startswith("#"):
            match = _HEADER_LINE.match(line)
            if match:
                header[match.group(1).strip().lower()] = match.group(2)
        elif line.strip():
            data_lines.append((number, line))
    system = _resolve_system(
        header.get("coordinatesystem"), coordinate_system, path, "'# CoordinateSystem' line"
    )
    columns = [c.strip() for c in header.get("columns", ",".join(FCSV_COLUMNS)).split(",")]
    missing = [c for c in ("x", "y", "z", "label") if c not in columns]
    if missing:
        raise InputError(f"'# columns' line lacks column(s) {missing}", path)
    col = {name: columns.index(name) for name in ("x", "y", "z", "label")}
    desc_col = columns.index("desc") if "desc" in columns else None
    need = max(col.values()) + 1

    names, coords, descriptions, places = [], [], [], []
    for number, line in data_lines:
        row = next(csv.reader([line]))
        where = f"line {number}"
        if len(row) < need:
            raise InputError(
                f"{where}: {len(row)} fields, expected at least {need} ({','.join(columns)})",
                path,
            )
        coords.append([_parse_float(row[col[a]], path, where, a) for a in ("x", "y", "z")])
        names.append(row[col["label"]].strip())
        desc = row[desc_col] if desc_col is not None and desc_col < len(row) else ""
        descriptions.append(desc)
        places.append(where)
    return _build(names, coords, descriptions, places, system, path)


def _write_fcsv(landmarks: Landmarks, handle: Any, system: CoordinateSystem) -> None:
    handle.write("# Markups fiducial file version = 4.11\n")
    handle.write(f"# CoordinateSystem = {system}\n")
    handle.write(f"# columns = {','.join(FCSV_COLUMNS)}\n")
    writer = csv.writer(handle, lineterminator="\n")
    points = landmarks.points(system)
    for index, name in enumerate(landmarks.names):
        x, y, z = (repr(float(v)) for v in points[index])
        desc = landmarks.description(name)
        node = f"vtkMRMLMarkupsFiducialNode_{index + 1}"
        writer.writerow([node, x, y, z, 0, 0, 0, 1, 1, 1, 0, name, desc, ""])


# ---------------------------------------------------------------------- mrk.json
def _read_mrk_json(path: Path, coordinate_system: str | None) -> Landmarks:
    try:
        document = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON: {error.msg} (line {error.lineno})", path) from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise InputError("not a Slicer markups file (no 'markups' list)", path)
    names, coords, descriptions, places = [], [], [], []
    n_fiducial = 0
    for m_index, markup in enumerate(markups):
        if not isinstance(markup, dict) or markup.get("type") != "Fiducial":
            continue
        n_fiducial += 1
        system = _resolve_system(
            markup.get("coordinateSystem"), coordinate_system, path, "'coordinateSystem' field"
        )
        units = markup.get("coordinateUnits", "mm")
        if units != "mm":
            raise InputError(f"markup {m_index + 1}: coordinateUnits {units!r}, not mm", path)
        points = markup.get("controlPoints") or []
        if not isinstance(points, list):
            raise InputError(f"markup {m_index + 1}: 'controlPoints' is not a list", path)
        for p_index, point in enumerate(points):
            where = f"markup {m_index + 1} control point {p_index + 1}"
            if not isinstance(point, dict):
                raise InputError(f"{where}: not an object", path)
            label = str(point.get("label", "")).strip()
            if point.get("positionStatus", "defined") == "undefined":
                warnings.warn(
                    f"{path}: skipping {where} ({label!r}): its position is undefined",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            position = point.get("position")
            if not isinstance(position, list) or len(position) != 3:
                raise InputError(f"{where} ({label!r}): 'position' is not 3 numbers", path)
            if any(isinstance(v, bool) or not isinstance(v, int | float) for v in position):
                raise InputError(f"{where} ({label!r}): non-numeric position {position}", path)
            xyz = [_parse_float(v, path, where, a) for v, a in zip(position, "xyz", strict=True)]
            coords.append(list(_to_ras(np.array(xyz), system)))
            names.append(label)
            descriptions.append(str(point.get("description", "")))
            places.append(where)
    if n_fiducial == 0:
        raise InputError("no Fiducial (point list) markups in file", path)
    # Points are already RAS (each markup may have its own system).
    return _build(names, coords, descriptions, places, "RAS", path)


def _write_mrk_json(landmarks: Landmarks, handle: Any, system: CoordinateSystem) -> None:
    points = landmarks.points(system)
    control_points = [
        {
            "id": str(index + 1),
            "label": name,
            "description": landmarks.description(name),
            "associatedNodeID": "",
            "position": [float(v) for v in points[index]],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for index, name in enumerate(landmarks.names)
    ]
    document = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "controlPoints": control_points,
            }
        ],
    }
    json.dump(document, handle, indent=2)
    handle.write("\n")


# --------------------------------------------------------------------------- csv
def _read_csv(path: Path, coordinate_system: str | None) -> Landmarks:
    lines = _read_text(path).splitlines()
    declared: str | None = None
    start = 0
    while start < len(lines) and (lines[start].startswith("#") or not lines[start].strip()):
        match = _HEADER_LINE.match(lines[start])
        if match and match.group(1).strip().lower().replace(" ", "_") == "coordinate_system":
            declared = match.group(2)
        start += 1
    system = _resolve_system(declared, coordinate_system, path, "'# coordinate_system = ...' line")
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    if not rows:
        raise InputError("file holds no landmarks", path)
    header = [h.strip().lower() for h in rows[0]]
    if any(c not in header for c in ("name", "x", "y", "z")):
        raise InputError(
            f"line {start + 1}: expected a header row 'name,x,y,z[,description]', "
            f"got {','.join(rows[0])!r}",
            path,
        )
    col = {c: header.index(c) for c in ("name", "x", "y", "z")}
    desc_col = header.index("description") if "description" in header else None
    names, coords, descriptions, places = [], [], [], []
    for offset, row in enumerate(rows[1:], start=start + 2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"line {offset}"
        if len(row) < max(col.values()) + 1:
            raise InputError(f"{where}: {len(row)} fields, expected {len(header)}", path)
        coords.append([_parse_float(row[col[a]], path, where, a) for a in ("x", "y", "z")])
        names.append(row[col["name"]].strip())
        desc = row[desc_col] if desc_col is not None and desc_col < len(row) else ""
        descriptions.append(desc)
        places.append(where)
    return _build(names, coords, descriptions, places, system, path)


def _write_csv(landmarks: Landmarks, handle: Any, system: CoordinateSystem) -> None:
    handle.write(f"# coordinate_system = {system}\n")
    writer = csv.writer(handle, lineterminator="\n")
    with_desc = bool(landmarks.descriptions)
    writer.writerow(["name", "x", "y", "z", *(["description"] if with_desc else [])])
    points = landmarks.points(system)
    for index, name in enumerate(landmarks.names):
        row = [name, *(repr(float(v)) for v in points[index])]
        if with_desc:
            row.append(landmarks.descriptions[index])
        writer.writerow(row)


# ---------------------------------------------------------------------- public API
def _format(path: Path) -> str:
    name = path.name.lower()
    for suffix in LANDMARK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(
        f"unsupported landmark file type '{path.suffix}' "
        f"(supported: {', '.join(LANDMARK_SUFFIXES)})",
        path,
    )


_READERS = {".fcsv": _read_fcsv, ".mrk.json": _read_mrk_json, ".csv": _read_csv}
_WRITERS = {".fcsv": _write_fcsv, ".mrk.json": _write_mrk_json, ".csv": _write_csv}


def read_landmarks(path: str | Path, coordinate_system: str | None = None) -> Landmarks:
    """Read landmarks from a Slicer ``.fcsv``, Slicer ``.mrk.json`` or ``name,x,y,z`` ``.csv``.

    ``coordinate_system`` ("RAS" or "LPS") is used when the file does not declare its frame;
    when both are given they must agree. The result is always RAS.

    Raises:
        InputError: missing file, unknown suffix or coordinate system, empty file, a row
            without a name, a duplicate name, or a non-numeric coordinate (naming the line).
    """
    path = Path(path)
    suffix = _format(path)
    if not path.is_file():
        raise InputError("landmark file not found", path)
    return _READERS[suffix](path, coordinate_system)


def write_landmarks(landmarks: Landmarks, path: str | Path, coordinate_system: str = "RAS") -> None:
    """Write ``landmarks`` atomically; the format follows the suffix, coordinates in the frame.

    ``.fcsv`` files get a Slicer 4.11-style header (``# CoordinateSystem = RAS|LPS``).
    """
    path = Path(path)
    suffix = _format(path)
    system = _normalize_system(str(coordinate_system), path, "the coordinate_system argument")
    if system is None:  # pragma: no cover - str() is never None
        raise InputError("no coordinate system given", path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        _WRITERS[suffix](landmarks, handle, system)


def check_landmarks_inside(landmarks: Landmarks, volume: Volume, path: str | Path) -> None:
    """Raise InputError naming the first landmark that lies outside ``volume``.

    ``path`` is the landmark file, named in the message.
    """
    inside = volume.contains_ras(landmarks.points_ras) if len(landmarks) else np.ones(0, bool)
    outside = np.flatnonzero(~inside)
    if outside.size:
        first = int(outside[0])
        x, y, z = landmarks.points_ras[first]
        image = f" {volume.source}" if volume.source else ""
        raise InputError(
            f"landmark {landmarks.names[first]!r} at RAS ({x:.2f}, {y:.2f}, {z:.2f}) mm lies "
            f"outside the image{image} ({outside.size} of {len(landmarks)} landmarks outside)",
            path,
        )
