"""Datalists: the user's own cases (image + optional landmarks, label map + split) in JSON or CSV.

JSON::

    {"cases": [{"id": "sub-01", "image": "images/sub-01.nii.gz",
                "landmarks": "landmarks/sub-01.fcsv", "split": "train",
                "coordinate_system": "RAS",
                "labels": "labels/sub-01_dseg.nii.gz", "label_names": "labels/names.tsv"}]}

``landmarks``, ``coordinate_system``, ``labels`` and ``label_names`` are optional, ``split``
defaults to ``"train"``. ``labels`` is an integer label map (0 = background) of structures in
the image; ``label_names`` names its values, as JSON ``{"1": "L Putamen", ...}`` or as a TSV file
of ``value<TAB>name`` lines (:mod:`medrl.data.label_maps`). A label map needs a names file,
unless it is medrl's embedded CIT168 atlas (:mod:`medrl.data.cit168`).

CSV, with a header row::

    id,image,landmarks,split,coordinate_system,labels,label_names
    sub-01,images/sub-01.nii.gz,landmarks/sub-01.fcsv,train,RAS,labels/sub-01.nii.gz,names.tsv

(only ``id`` and ``image`` columns are required; empty cells mean "none" / the default).
Relative paths are relative to the datalist file's folder. Returned paths are absolute and
normalised (lexically, symlinks are kept).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrl.data.label_maps import load_label_map
from medrl.errors import InputError
from medrl.io.images import Volume, read_image, resample_isotropic
from medrl.io.landmarks import Landmarks, check_landmarks_inside, read_landmarks
from medrl.utils.atomic import atomic_open

__all__ = [
    "COORDINATE_SYSTEMS",
    "SPLITS",
    "Case",
    "CaseSpec",
    "load_case",
    "read_datalist",
    "write_datalist",
]

SPLITS = ("train", "val", "test")
COORDINATE_SYSTEMS = ("RAS", "LPS")
_FIELDS = ("id", "image", "landmarks", "split", "coordinate_system", "labels", "label_names")
_REQUIRED_FIELDS = ("id", "image")
_SUFFIXES = (".json", ".csv")


@dataclass(frozen=True)
class CaseSpec:
    """One case of a datalist: where its files are, not their contents."""

    case_id: str
    image: Path
    landmarks: Path | None
    split: str
    landmarks_coordinate_system: str | None = None  # "RAS"/"LPS" for files that do not say
    labels: Path | None = None  # an integer label map of structures (0 = background)
    label_names: Path | None = None  # JSON {"1": name, ...} or TSV value<TAB>name


@dataclass(frozen=True, eq=False)
class Case:
    """A loaded case: the image volume, (if any) its landmarks in world RAS mm, and (if any)
    its label map (on its own grid) with the name of each label value."""

    case_id: str
    volume: Volume
    landmarks: Landmarks | None
    split: str
    labels: Volume | None = None
    label_names: dict[int, str] | None = None
    partner: Case | None = None
    """Registration pairs (:mod:`medrl.tasks.rigid`): the *fixed* image of the pair, this case
    being the *moving* one (None for the single-image tasks)."""


# --------------------------------------------------------------------------------------
# reading


def _resolve(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return Path(os.path.normpath(path))


def _text_field(raw: Any, field_name: str, where: str, datalist: Path) -> str | None:
    """Return a stripped string, None for missing/null/empty; InputError for other types."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InputError(
            f"{where}: field {field_name!r} must be a string, got {type(raw).__name__}", datalist
        )
    text = raw.strip()
    return text or None


def _spec_from_record(
    record: Mapping[str, Any], where: str, datalist: Path, check_files: bool
) -> CaseSpec:
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise InputError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"allowed fields: {', '.join(_FIELDS)}",
            datalist,
        )
    values = {name: _text_field(record.get(name), name, where, datalist) for name in _FIELDS}
    case_id = values["id"]
    if case_id is not None:
        where = f"{where} (id {case_id!r})"
    for name in _REQUIRED_FIELDS:
        if values[name] is None:
            raise InputError(f"{where}: missing required field {name!r}", datalist)
    assert case_id is not None and values["image"] is not None

    split = values["split"] or "train"
    if split not in SPLITS:
        raise InputError(
            f"{where}: unknown split {split!r}; use one of {', '.join(SPLITS)}", datalist
        )
    system = values["coordinate_system"]
    if system is not None:
        system = system.upper()
        if system not in COORDINATE_SYSTEMS:
            raise InputError(
                f"{where}: unknown coordinate_system {values['coordinate_system']!r}; "
                f"use one of {', '.join(COORDINATE_SYSTEMS)}",
                datalist,
            )

    base_dir = datalist.parent
    image = _resolve(values["image"], base_dir)
    landmarks = None if values["landmarks"] is None else _resolve(values["landmarks"], base_dir)
    labels = None if values["labels"] is None else _resolve(values["labels"], base_dir)
    names = None if values["label_names"] is None else _resolve(values["label_names"], base_dir)
    if names is not None and labels is None:
        raise InputError(f"{where}: 'label_names' given without 'labels'", datalist)
    if check_files:
        if not image.exists():
            raise InputError(f"{where}: image {image} does not exist", datalist)
        if landmarks is not None and not landmarks.is_file():
            raise InputError(f"{where}: landmarks file {landmarks} does not exist", datalist)
        if labels is not None and not labels.exists():
            raise InputError(f"{where}: label map {labels} does not exist", datalist)
        if names is not None and not names.is_file():
            raise InputError(f"{where}: label names file {names} does not exist", datalist)
    return CaseSpec(
        case_id=case_id,
        image=image,
        landmarks=landmarks,
        split=split,
        landmarks_coordinate_system=system,
        labels=labels,
        label_names=names,
    )


def _records_from_json(text: str, datalist: Path) -> list[tuple[str, Mapping[str, Any]]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", datalist
        ) from exc
    if not isinstance(document, dict) or "cases" not in document:
        raise InputError(
            'expected a JSON object {"cases": [{"id": ..., "image": ..., ...}, ...]}', datalist
        )
    cases = document["cases"]
    if not isinstance(cases, list):
        raise InputError('"cases" must be a list of objects', datalist)
    records: list[tuple[str, Mapping[str, Any]]] = []
    for index, item in enumerate(cases):
        where = f"case {index + 1}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object, got {type(item).__name__}", datalist)
        records.append((where, item))
    return records


def _records_from_csv(text: str, datalist: Path) -> list[tuple[str, Mapping[str, Any]]]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise InputError(f"not valid CSV: {exc}", datalist) from exc
    # Skip blank lines (csv gives []) but keep line numbers for messages.
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if any(row)]
    if not numbered:
        raise InputError("empty CSV: expected a header row id,image,landmarks,split", datalist)
    header_line, header = numbered[0]
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in _FIELDS]
    if unknown:
        raise InputError(
            f"line {header_line}: unknown column(s) {', '.join(map(repr, unknown))} in the header; "
            f"expected {','.join(_FIELDS[:4])}[,coordinate_system][,labels][,label_names]",
            datalist,
        )
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise InputError(
            f"line {header_line}: column(s) {', '.join(duplicated)} appear twice", datalist
        )
    missing = [name for name in _REQUIRED_FIELDS if name not in columns]
    if missing:
        raise InputError(
            f"line {header_line}: header lacks required column(s) {', '.join(missing)}", datalist
        )
    records: list[tuple[str, Mapping[str, Any]]] = []
    for number, row in numbered[1:]:
        where = f"line {number}"
        if len(row) != len(columns):
            raise InputError(
                f"{where}: {len(row)} values but the header has {len(columns)} columns", datalist
            )
        records.append((where, dict(zip(columns, row, strict=True))))
    return records


def _datalist_path(path: str | Path) -> tuple[Path, str]:
    """The datalist's absolute path and lower-case suffix; InputError for an unknown suffix."""
    datalist = Path(os.path.normpath(Path(path).expanduser().absolute()))
    suffix = datalist.suffix.lower()
    if suffix not in _SUFFIXES:
        raise InputError(
            f"unknown datalist format {datalist.suffix or '(no suffix)'!r}; use .json or .csv",
            datalist,
        )
    return datalist, suffix


def read_datalist(path: str | Path, check_files: bool = True) -> list[CaseSpec]:
    """Read a ``.json`` or ``.csv`` datalist; relative paths are relative to the file's folder.

    Args:
        path: the datalist file.
        check_files: check that every image and landmarks file exists.

    Raises:
        InputError: missing or unreadable datalist, bad JSON/CSV, unknown suffix, missing
            required field, unknown split/coordinate system, duplicate ids, no cases, or an
            image/landmarks path that does not exist. The message names the datalist file and
            the case (and line, for CSV).
    """
    datalist, suffix = _datalist_path(path)
    if not datalist.is_file():
        raise InputError("datalist file does not exist", datalist)
    try:
        text = datalist.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read datalist: {exc}", datalist) from exc

    if suffix == ".json":
        records = _records_from_json(text, datalist)
    else:
        records = _records_from_csv(text, datalist)
    if not records:
        raise InputError("the datalist has no cases", datalist)

    specs: list[CaseSpec] = []
    first_seen: dict[str, str] = {}
    for where, record in records:
        spec = _spec_from_record(record, where, datalist, check_files)
        if spec.case_id in first_seen:
            raise InputError(
                f"{where}: duplicate id {spec.case_id!r} (first used in "
                f"{first_seen[spec.case_id]})",
                datalist,
            )
        first_seen[spec.case_id] = where
        specs.append(spec)
    return specs


# --------------------------------------------------------------------------------------
# writing


def _relative_if_possible(path: Path, base_dir: Path) -> str:
    """``path`` relative to ``base_dir`` if they share more than the filesystem root."""
    absolute = Path(os.path.normpath(path.expanduser().absolute()))
    try:
        common = Path(os.path.commonpath([absolute, base_dir]))
        relative = os.path.relpath(absolute, base_dir)
    except ValueError:  # different drives (Windows)
        return absolute.as_posix()
    if common == Path(common.anchor):
        return absolute.as_posix()
    return Path(relative).as_posix()


def write_datalist(cases: Iterable[CaseSpec], path: str | Path) -> None:
    """Write ``cases`` as a ``.json`` or ``.csv`` datalist (atomically).

    Paths are written relative to the datalist's folder when they share more than the
    filesystem root, else absolute; :func:`read_datalist` gives back the same cases with
    absolute paths.

    Raises:
        InputError: unknown suffix, duplicate ids, or an invalid split/coordinate system.
    """
    datalist, suffix = _datalist_path(path)
    base_dir = datalist.parent
    records: list[dict[str, str]] = []
    seen: set[str] = set()
    for spec in cases:
        if not spec.case_id or spec.case_id != spec.case_id.strip():
            raise InputError(f"case id {spec.case_id!r} is empty or has outer spaces", datalist)
        if spec.case_id in seen:
            raise InputError(f"duplicate id {spec.case_id!r}", datalist)
        seen.add(spec.case_id)
        if spec.split not in SPLITS:
            raise InputError(
                f"case {spec.case_id!r}: unknown split {spec.split!r}; use one of "
                f"{', '.join(SPLITS)}",
                datalist,
            )
        system = spec.landmarks_coordinate_system
        if system is not None and system.upper() not in COORDINATE_SYSTEMS:
            raise InputError(
                f"case {spec.case_id!r}: unknown coordinate system {system!r}", datalist
            )
        if spec.label_names is not None and spec.labels is None:
            raise InputError(f"case {spec.case_id!r}: label_names given without labels", datalist)
        record = {"id": spec.case_id, "image": _relative_if_possible(Path(spec.image), base_dir)}
        if spec.landmarks is not None:
            record["landmarks"] = _relative_if_possible(Path(spec.landmarks), base_dir)
        record["split"] = spec.split
        if system is not None:
            record["coordinate_system"] = system.upper()
        if spec.labels is not None:
            record["labels"] = _relative_if_possible(Path(spec.labels), base_dir)
        if spec.label_names is not None:
            record["label_names"] = _relative_if_possible(Path(spec.label_names), base_dir)
        records.append(record)

    if suffix == ".json":
        with atomic_open(datalist, "w", encoding="utf-8") as handle:
            json.dump({"cases": records}, handle, indent=2)
            handle.write("\n")
        return
    columns = list(_FIELDS[:4])
    columns += [name for name in _FIELDS[4:] if any(name in record for record in records)]
    with atomic_open(datalist, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


# --------------------------------------------------------------------------------------
# loading


def load_case(spec: CaseSpec, spacing_mm: float | None = None) -> Case:
    """Read a case's image (resampled to isotropic ``spacing_mm`` if given), landmarks and
    label map.

    Landmarks are read with the spec's coordinate system and must lie inside the image. The
    label map (if any) keeps its own grid; see :func:`medrl.data.label_maps.load_label_map`
    for its checks.

    Raises:
        InputError: unreadable image, landmarks or label map, landmarks outside the image, a
            label map that does not fit the image or its names, or a non-positive
            ``spacing_mm``.
    """
    if spacing_mm is not None and not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise InputError(f"spacing must be a positive number of mm, got {spacing_mm!r}")
    volume = read_image(spec.image)
    if spacing_mm is not None:
        volume = resample_isotropic(volume, float(spacing_mm))
    landmarks = None
    if spec.landmarks is not None:
        landmarks = read_landmarks(
            spec.landmarks, coordinate_system=spec.landmarks_coordinate_system
        )
        check_landmarks_inside(landmarks, volume, spec.landmarks)
    labels = label_names = None
    if spec.labels is not None:
        labels, label_names = load_label_map(spec.labels, volume, spec.label_names)
    elif spec.label_names is not None:
        raise InputError("label names given without a label map", spec.label_names)
    return Case(
        case_id=spec.case_id,
        volume=volume,
        landmarks=landmarks,
        split=spec.split,
        labels=labels,
        label_names=label_names,
    )
