"""Label maps of a datalist case: reading the names of their values and checking a map
against its names and its image.

A label map is an integer image (0 = background) of structures; its names come from a JSON
object ``{"1": "L Putamen", ...}`` or a TSV file of ``value<TAB>name`` lines
(:func:`read_label_names`), unless it is medrl's embedded CIT168 atlas
(:mod:`medrl.data.cit168`), whose names are known. :func:`load_label_map` reads and checks
both.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from medrl.data.cit168 import cit168_names, is_cit168_label_map
from medrl.errors import InputError
from medrl.io.images import Volume, read_image

__all__ = ["load_label_map", "read_label_names"]

_NAMES_SUFFIXES = (".json", ".tsv", ".txt")


def _label_value(text: str, where: str, path: Path) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InputError(f"{where}: label value {text!r} is not an integer", path) from None
    if value < 0:
        raise InputError(f"{where}: label value {value} is negative", path)
    return value


def _names_from_json(text: str, path: Path) -> list[tuple[str, str, Any]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path
        ) from None
    if not isinstance(document, dict):
        raise InputError('expected a JSON object {"1": "structure name", ...}', path)
    return [(f"key {key!r}", key, name) for key, name in document.items()]


def _names_from_tsv(text: str, path: Path) -> list[tuple[str, str, Any]]:
    entries: list[tuple[str, str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise InputError(
                f"line {number}: expected 'value<TAB>name', got {len(fields)} tab-separated "
                "field(s)",
                path,
            )
        if not entries and fields[0].strip().lower() == "value":
            continue  # a header row
        entries.append((f"line {number}", fields[0], fields[1]))
    return entries


def read_label_names(path: str | Path) -> dict[int, str]:
    """Read the names of a label map's values: label value -> structure name.

    ``.json``: an object ``{"1": "L Putamen", "2": "R Putamen", ...}``. ``.tsv`` / ``.txt``:
    ``value<TAB>name`` lines (blank lines, ``#`` comments and a ``value<TAB>name`` header are
    skipped). Names are stripped; value 0 is the background and is ignored if named.

    Raises:
        InputError: missing or unreadable file, unknown suffix, malformed content, a value that
            is not a non-negative integer, an empty or duplicate name, a duplicate value, or no
            names at all. The message names the file (and the line or key).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _NAMES_SUFFIXES:
        raise InputError(
            f"unknown label names format {path.suffix or '(no suffix)'!r}; use .json "
            '({"1": "name", ...}) or .tsv (value<TAB>name lines)',
            path,
        )
    if not path.is_file():
        raise InputError("label names file does not exist", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read label names: {exc}", path) from None
    entries = _names_from_json(text, path) if suffix == ".json" else _names_from_tsv(text, path)
    names: dict[int, str] = {}
    first_seen: dict[str, str] = {}
    for where, raw_value, raw_name in entries:
        value = _label_value(str(raw_value), where, path)
        if not isinstance(raw_name, str) or not raw_name.strip():
            raise InputError(f"{where}: label {value} has no name (a non-empty string)", path)
        name = raw_name.strip()
        if value == 0:
            continue
        if value in names:
            raise InputError(f"{where}: label value {value} is named twice", path)
        if name in first_seen:
            raise InputError(
                f"{where}: duplicate structure name {name!r} (also at {first_seen[name]})", path
            )
        names[value] = name
        first_seen[name] = where
    if not names:
        raise InputError("the file names no label values", path)
    return dict(sorted(names.items()))


def _check_overlap(labels: Volume, image: Volume, path: Path) -> None:
    """InputError unless the world box of the label map's structures overlaps ``image``."""
    k, j, i = np.nonzero(labels.array)
    low = np.array([i.min(), j.min(), k.min()], dtype=np.float64) - 0.5
    high = np.array([i.max(), j.max(), k.max()], dtype=np.float64) + 0.5
    corners = np.array(list(itertools.product(*zip(low, high, strict=True))))
    corners_ras = labels.index_to_world(corners, "RAS")
    in_image = image.world_to_index(corners_ras, "RAS")
    size = np.asarray(image.shape_xyz, dtype=np.float64)
    if np.all(in_image.max(axis=0) > -0.5) and np.all(in_image.min(axis=0) < size - 0.5):
        return
    box_low, box_high = corners_ras.min(axis=0), corners_ras.max(axis=0)
    image_name = f" {image.source}" if image.source else ""
    raise InputError(
        "the label map's structures (world RAS box "
        f"{np.round(box_low, 1).tolist()} .. {np.round(box_high, 1).tolist()} mm) lie outside "
        f"the image{image_name}: do the label map and the image belong together?",
        path,
    )


def load_label_map(
    labels_path: str | Path, image: Volume, names_path: str | Path | None = None
) -> tuple[Volume, dict[int, str]]:
    """Read a label map and its names and check them against each other and ``image``.

    Without ``names_path`` the label map must be medrl's embedded CIT168 atlas (by content),
    whose names are known. The label map keeps its own grid.

    Raises:
        InputError: unreadable or empty label map, non-integer or negative values, no overlap
            with ``image``, a malformed names file, a label value in the map without a name, or
            no names file for a label map that is not the CIT168 atlas. The message names the
            file at fault.
    """
    labels_path = Path(labels_path)
    if not labels_path.exists():
        raise InputError("label map not found", labels_path)
    try:
        labels = read_image(labels_path)
    except InputError as exc:
        raise InputError(f"cannot use as a label map: {exc.problem}", labels_path) from None
    array = labels.array
    rounded = np.rint(array)
    if not np.array_equal(array, rounded):
        bad = float(array[array != rounded].flat[0])
        raise InputError(
            f"label map has non-integer values (e.g. {bad:g}); a label map holds integer "
            "structure labels (was it resampled with linear interpolation?)",
            labels_path,
        )
    if float(array.min()) < 0:
        raise InputError(f"label map has negative values (e.g. {array.min():g})", labels_path)
    _check_overlap(labels, image, labels_path)
    if names_path is not None:
        names = read_label_names(names_path)
        where = Path(names_path)
    elif is_cit168_label_map(labels_path):
        names, where = cit168_names(), labels_path
    else:
        raise InputError(
            "a label map needs a label names file ('label_names' in the datalist: JSON "
            '{"1": "name", ...} or TSV value<TAB>name lines)',
            labels_path,
        )
    present = [int(v) for v in np.unique(rounded) if v != 0]
    unnamed = [v for v in present if v not in names]
    if unnamed:
        shown = ", ".join(map(str, unnamed[:10])) + (" ..." if len(unnamed) > 10 else "")
        raise InputError(
            f"{len(unnamed)} label value(s) of the label map {labels_path} have no name: {shown}",
            where,
        )
    return labels, names
