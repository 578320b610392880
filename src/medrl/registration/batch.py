"""``medrl register --datalist``: register every pair of a datalist, safe to interrupt.

A datalist of pairs is a CSV file with a header row, or JSON ``{"pairs": [{...}, ...]}``::

    id,fixed,moving,labels,landmarks,fixed_landmarks,fixed_labels
    sub-01,sub-01_T1w.nii.gz,atlas_T1w.nii.gz,atlas_dseg.nii.gz,atlas.fcsv,sub-01.fcsv,

(``id``, ``fixed`` and ``moving`` are required; relative paths are relative to the datalist's
folder). Each pair is written into ``OUT/<id>/`` by :func:`medrl.registration.workflow.
register_pair`; like ``medrl predict``, a rerun skips pairs whose ``registration.json``
exists, a pair that fails is recorded in ``OUT/summary.csv`` without stopping the others,
and the command fails at the end if any pair failed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrl.errors import InputError, MedrlError
from medrl.predict import FAILED, OK, SKIPPED, count_status, write_summary
from medrl.registration.base import RegisterOptions
from medrl.registration.workflow import RECORD_NAME, PairFiles, get_method, register_pair
from medrl.utils.folder_lock import folder_lock

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = (
    "id",
    "fixed",
    "moving",
    "output",
    "status",
    "seconds",
    "method",
    "tre_before_mm",
    "tre_after_mm",
    "dice_before",
    "dice_after",
    "error",
)
"""Per pair; TRE and Dice are means over landmarks and labels (empty without them)."""


@dataclass(frozen=True)
class PairSpec:
    """One row of a datalist of pairs."""

    pair_id: str
    files: PairFiles


_PAIR_FIELDS = ("id", "fixed", "moving", "labels", "landmarks", "fixed_landmarks", "fixed_labels")


def _records(path: Path, text: str) -> list[tuple[str, Mapping[str, Any]]]:
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", path) from None
        items = document.get("pairs") if isinstance(document, dict) else document
        if not isinstance(items, list):
            raise InputError('expected {"pairs": [{"id": ..., "fixed": ..., ...}]}', path)
        return [(f"pair {n}", item) for n, item in enumerate(items, start=1)]
    try:
        rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), start=1) if row]
    except csv.Error as exc:
        raise InputError(f"not valid CSV: {exc}", path) from None
    if not rows:
        raise InputError("empty CSV: expected a header row id,fixed,moving[,...]", path)
    header_line, header = rows[0][0], [h.strip().lower() for h in rows[0][1]]
    unknown = [h for h in header if h not in _PAIR_FIELDS]
    if unknown or len(set(header)) != len(header):
        raise InputError(
            f"line {header_line}: header {','.join(header)!r} has unknown or repeated columns "
            f"(known: {','.join(_PAIR_FIELDS)})",
            path,
        )
    records = []
    for number, row in rows[1:]:
        if len(row) != len(header):
            raise InputError(
                f"line {number}: {len(row)} values but the header has {len(header)} columns",
                path,
            )
        records.append((f"line {number}", dict(zip(header, row, strict=True))))
    return records


def read_pairs(datalist: str | Path) -> list[PairSpec]:
    """Read a ``.csv`` or ``.json`` datalist of pairs (files are checked when each pair runs).

    Columns (CSV header) or keys (JSON ``{"pairs": [{...}, ...]}``): ``id``, ``fixed``,
    ``moving`` and optionally ``labels``, ``landmarks``, ``fixed_landmarks``, ``fixed_labels``;
    relative paths are relative to the datalist's folder.

    Raises:
        InputError: naming the datalist and the row: unreadable, unknown or missing columns,
            an empty or duplicate id, or an id that cannot name a folder.
    """
    path = Path(os.path.normpath(Path(datalist).absolute()))
    if path.suffix.lower() not in (".csv", ".json"):
        raise InputError("a datalist of pairs is a .csv or .json file", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read datalist: {exc}", path) from None
    specs: list[PairSpec] = []
    for where, record in _records(path, text):
        if not isinstance(record, Mapping):
            raise InputError(f"{where}: expected an object with id, fixed, moving", path)
        unknown = sorted(set(record) - set(_PAIR_FIELDS))
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown} (known: {_PAIR_FIELDS})", path)
        values = {k: str(record.get(k) or "").strip() for k in _PAIR_FIELDS}
        missing = [k for k in ("id", "fixed", "moving") if not values[k]]
        if missing:
            raise InputError(f"{where}: no {', '.join(missing)}", path)
        pair_id = values["id"]
        relative = Path(pair_id)
        if relative.is_absolute() or ".." in relative.parts or pair_id in (".", RECORD_NAME):
            raise InputError(f"{where}: id {pair_id!r} cannot name an output folder", path)
        if any(s.pair_id == pair_id for s in specs):
            raise InputError(f"{where}: duplicate id {pair_id!r}", path)
        resolved = {
            k: Path(os.path.normpath(path.parent / Path(v).expanduser())) if v else None
            for k, v in values.items()
            if k != "id"
        }
        specs.append(PairSpec(pair_id, PairFiles(**resolved)))
    if not specs:
        raise InputError("the datalist has no pairs", path)
    return specs


def _summary_values(row: dict[str, Any], record: Mapping[str, Any]) -> None:
    """Fill a summary row's method, time and mean metrics from a pair's record."""
    metrics = record.get("metrics") or {}
    landmarks = metrics.get("landmarks") or {}
    labels = metrics.get("labels") or {}
    row["method"] = record.get("method", "")
    row["tre_before_mm"] = (landmarks.get("tre_before_mm") or {}).get("mean", "")
    row["tre_after_mm"] = (landmarks.get("tre_after_mm") or {}).get("mean", "")
    row["dice_before"] = labels.get("mean_dice_before", "")
    row["dice_after"] = labels.get("mean_dice_after", "")
    if row.get("seconds") in ("", None):
        row["seconds"] = round(float(record.get("total_seconds") or 0.0), 3)


def _run_one(
    spec: PairSpec,
    out_dir: Path,
    method: str,
    options: RegisterOptions,
    overwrite: bool,
    report: bool,
) -> dict[str, Any]:
    """One summary row: ok, skipped (``registration.json`` exists) or failed (with reason)."""
    output = out_dir / spec.pair_id
    row: dict[str, Any] = {
        "id": spec.pair_id,
        "fixed": str(spec.files.fixed),
        "moving": str(spec.files.moving),
        "output": str(output),
        "seconds": "",
        "error": "",
    }
    marker = output / RECORD_NAME
    if marker.is_file() and not overwrite:
        # An unreadable record leaves the row without metrics.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            _summary_values(row, json.loads(marker.read_text(encoding="utf-8")))
        return {**row, "status": SKIPPED}
    started = time.perf_counter()
    try:
        record = register_pair(
            spec.files.fixed,
            spec.files.moving,
            output,
            method,
            options,
            labels=spec.files.labels,
            landmarks=spec.files.landmarks,
            fixed_landmarks=spec.files.fixed_landmarks,
            fixed_labels=spec.files.fixed_labels,
            report=report,
            lock=False,
        )
        row["status"] = OK
        row["seconds"] = round(time.perf_counter() - started, 3)
        _summary_values(row, record)
    except Exception as exc:  # one bad pair must not stop the others
        row["status"] = FAILED
        row["seconds"] = round(time.perf_counter() - started, 3)
        row["error"] = str(exc) if isinstance(exc, MedrlError) else f"{type(exc).__name__}: {exc}"
    return row


def _progress_line(index: int, total: int, row: Mapping[str, Any]) -> str:
    text = f"[{index}/{total}] {row['id']}: {row['status']}"
    if row["status"] == FAILED:
        return f"{text}: {row['error']}"
    if row["status"] == OK:
        text += f" in {row['seconds']:.1f} s"
    before, after = row.get("tre_before_mm"), row.get("tre_after_mm")
    if isinstance(before, float) and isinstance(after, float):
        text += f" (TRE {before:.2f} -> {after:.2f} mm)"
    return text


def register_datalist(
    datalist_path: str | Path,
    out_dir: str | Path,
    method: str = "affine",
    options: RegisterOptions | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Register every pair of a datalist into ``OUT/<id>/``; write ``OUT/summary.csv``.

    Pairs with a ``registration.json`` are skipped unless ``overwrite``; a failing pair is
    recorded (status ``failed`` and the error) and the others go on. Raises
    :class:`MedrlError` after writing the summary if any pair failed.
    """
    get_method(method)  # an unknown method stops before anything is read
    specs = read_pairs(datalist_path)
    options = options or RegisterOptions()
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    with folder_lock(out_dir, "output folder", "medrl register --datalist"):
        try:
            for index, spec in enumerate(specs, start=1):
                rows.append(_run_one(spec, out_dir, method, options, overwrite, report))
                if progress:
                    print(_progress_line(index, len(specs), rows[-1]), file=sys.stderr, flush=True)
        finally:
            summary = write_summary(rows, out_dir, SUMMARY_COLUMNS)
    counts = count_status(rows)
    print(
        f"{counts[OK]} registered, {counts[SKIPPED]} skipped (already done), "
        f"{counts[FAILED]} failed, of {len(specs)} pairs; summary: {summary}",
        file=sys.stderr,
    )
    if counts[FAILED]:
        raise MedrlError(
            f"{counts[FAILED]} of {len(specs)} pairs failed (reasons in the summary)", summary
        )
    return rows
