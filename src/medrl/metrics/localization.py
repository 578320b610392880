"""Landmark localisation metrics and the tables every evaluation reports.

Errors are Euclidean distances in millimetres between predicted and true landmark positions
(both RAS mm, matched by landmark name). Summaries follow the landmark-detection literature:
mean / median / SD / max error, the share of failures (> 10 mm) and detection rates
(share of errors <= 2, 2.5, 3 and 4 mm).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrl.errors import InputError
from medrl.io.landmarks import Landmarks
from medrl.utils.atomic import atomic_open

FAILURE_THRESHOLD_MM = 10.0
"""Errors strictly above this count as failures (``failure_rate_10mm``)."""

DETECTION_THRESHOLDS_MM: dict[str, float] = {
    "detection_rate_2mm": 2.0,
    "detection_rate_2_5mm": 2.5,
    "detection_rate_3mm": 3.0,
    "detection_rate_4mm": 4.0,
}
"""Summary key -> radius in mm; an error counts as a detection when it is <= the radius."""

SUMMARY_KEYS: tuple[str, ...] = (
    "n",
    "mean_mm",
    "median_mm",
    "sd_mm",
    "max_mm",
    "failure_rate_10mm",
    *DETECTION_THRESHOLDS_MM,
)
"""Keys of :func:`summarize_errors`, in the order tables show them."""


def landmark_errors_mm(pred: Landmarks, truth: Landmarks) -> np.ndarray:
    """Euclidean error in mm for each landmark of ``truth``, matched to ``pred`` by name.

    The result follows the order of ``truth.names``; extra landmarks in ``pred`` are ignored.
    Raises :class:`InputError` listing every truth name that ``pred`` lacks.
    """
    pred_index = {name: row for row, name in enumerate(pred.names)}
    missing = [name for name in truth.names if name not in pred_index]
    if missing:
        raise InputError(
            f"predicted landmarks lack {len(missing)} of the {len(truth.names)} true landmarks: "
            + ", ".join(missing)
        )
    pred_ras = np.asarray(pred.points_ras, dtype=np.float64)
    truth_ras = np.asarray(truth.points_ras, dtype=np.float64)
    rows = np.array([pred_index[name] for name in truth.names], dtype=np.intp)
    matched_ras = pred_ras[rows] if len(rows) else np.zeros((0, 3))
    return np.linalg.norm(matched_ras - truth_ras.reshape(-1, 3), axis=1)


def summarize_errors(errors_mm: Iterable[float] | np.ndarray) -> dict[str, float]:
    """Summary statistics of localisation errors in mm (keys: :data:`SUMMARY_KEYS`).

    ``sd_mm`` is the sample standard deviation (ddof=1), 0 for a single error.
    ``failure_rate_10mm`` is the share of errors > 10 mm; ``detection_rate_<d>mm`` the share
    of errors <= d mm. ``n`` is an int; all other values are Python floats.
    Raises ValueError for an empty input, NaN/Inf, or negative errors.
    """
    errors = np.asarray(list(errors_mm) if not isinstance(errors_mm, np.ndarray) else errors_mm)
    errors = errors.astype(np.float64).ravel()
    if errors.size == 0:
        raise ValueError("cannot summarise an empty list of errors")
    if not np.all(np.isfinite(errors)):
        raise ValueError(f"errors contain {int(np.sum(~np.isfinite(errors)))} NaN/Inf value(s)")
    if np.any(errors < 0):
        raise ValueError("errors must be non-negative distances")
    n = int(errors.size)
    summary: dict[str, float] = {
        "n": n,
        "mean_mm": float(np.mean(errors)),
        "median_mm": float(np.median(errors)),
        "sd_mm": float(np.std(errors, ddof=1)) if n > 1 else 0.0,
        "max_mm": float(np.max(errors)),
        "failure_rate_10mm": float(np.mean(errors > FAILURE_THRESHOLD_MM)),
    }
    for key, radius_mm in DETECTION_THRESHOLDS_MM.items():
        summary[key] = float(np.mean(errors <= radius_mm))
    return summary


def _descriptions(landmarks: Landmarks) -> dict[str, str]:
    """Name -> description ('' when the landmarks carry none)."""
    descriptions = tuple(landmarks.descriptions or ())
    if len(descriptions) != len(landmarks.names):
        return {name: "" for name in landmarks.names}
    return dict(zip(landmarks.names, descriptions, strict=True))


def check_cases(
    results: Mapping[str, Mapping[str, Any]], truth: Mapping[str, Any], what: str = "predictions"
) -> None:
    """Every method must predict every truth case, and only cases that have a truth.

    ``what`` names a method's outputs in the messages (``predictions``, ``boxes``)."""
    if not truth:
        raise InputError("no ground-truth cases to evaluate")
    if not results:
        raise InputError("no methods to evaluate")
    for method, predictions in results.items():
        missing = [case for case in truth if case not in predictions]
        if missing:
            raise InputError(f"method {method!r} has no {what} for case(s): " + ", ".join(missing))
        unknown = [case for case in predictions if case not in truth]
        if unknown:
            raise InputError(
                f"method {method!r} has {what} for case(s) without ground truth: "
                + ", ".join(unknown)
            )


def raw_error_rows(
    results: Mapping[str, Mapping[str, Landmarks]], truth: Mapping[str, Landmarks]
) -> list[dict[str, Any]]:
    """One row per method, case and true landmark with the error and both positions (RAS mm).

    Columns: method, case, landmark, description, error_mm, pred_x_ras, pred_y_ras,
    pred_z_ras, true_x_ras, true_y_ras, true_z_ras. Rows follow the order of ``results``,
    then ``truth`` cases, then each case's truth landmarks.
    Raises :class:`InputError` if a method misses a case or a landmark, or predicts a case
    that has no ground truth.
    """
    check_cases(results, truth)
    rows: list[dict[str, Any]] = []
    for method, predictions in results.items():
        for case, true_landmarks in truth.items():
            pred = predictions[case]
            try:
                errors_mm = landmark_errors_mm(pred, true_landmarks)
            except InputError as exc:
                raise InputError(f"method {method!r}, case {case!r}: {exc.problem}") from exc
            pred_index = {name: row for row, name in enumerate(pred.names)}
            descriptions = _descriptions(true_landmarks)
            for row, name in enumerate(true_landmarks.names):
                pred_ras = np.asarray(pred.points_ras[pred_index[name]], dtype=np.float64)
                true_ras = np.asarray(true_landmarks.points_ras[row], dtype=np.float64)
                rows.append(
                    {
                        "method": method,
                        "case": case,
                        "landmark": name,
                        "description": descriptions[name],
                        "error_mm": float(errors_mm[row]),
                        "pred_x_ras": float(pred_ras[0]),
                        "pred_y_ras": float(pred_ras[1]),
                        "pred_z_ras": float(pred_ras[2]),
                        "true_x_ras": float(true_ras[0]),
                        "true_y_ras": float(true_ras[1]),
                        "true_z_ras": float(true_ras[2]),
                    }
                )
    return rows


def evaluation_tables(
    results: Mapping[str, Mapping[str, Landmarks]], truth: Mapping[str, Landmarks]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-landmark and overall summary tables for several methods.

    ``results`` maps a method name (e.g. ``"agent"``, ``"affine-baseline"``) to case id to
    predicted landmarks; ``truth`` maps case id to true landmarks.

    Returns ``(per_landmark_rows, overall_rows)``:

    * per_landmark_rows: one row per method and landmark (landmarks in order of first
      appearance across the truth cases) with columns method, landmark, description and
      the :func:`summarize_errors` keys, summarised over the cases that have the landmark;
    * overall_rows: one row per method with column method and the summary over all
      landmarks of all cases.
    """
    raw_rows = raw_error_rows(results, truth)
    landmark_order: dict[str, str] = {}
    for true_landmarks in truth.values():
        for name, description in _descriptions(true_landmarks).items():
            if name not in landmark_order or not landmark_order[name]:
                landmark_order[name] = description
    per_landmark_rows: list[dict[str, Any]] = []
    overall_rows: list[dict[str, Any]] = []
    for method in results:
        method_rows = [row for row in raw_rows if row["method"] == method]
        for name, description in landmark_order.items():
            errors_mm = [row["error_mm"] for row in method_rows if row["landmark"] == name]
            per_landmark_rows.append(
                {
                    "method": method,
                    "landmark": name,
                    "description": description,
                    **summarize_errors(errors_mm),
                }
            )
        overall_rows.append(
            {"method": method, **summarize_errors([row["error_mm"] for row in method_rows])}
        )
    return per_landmark_rows, overall_rows


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Union of the rows' keys in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return list(columns)


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python scalars, so JSON and CSV get plain numbers."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_table(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows to ``path`` as CSV (``.csv``) or a JSON list of objects (``.json``), atomically.

    CSV columns are the union of the rows' keys in order of first appearance; missing cells
    are empty. Raises :class:`InputError` for any other suffix. Returns the path written.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    plain_rows = [{key: _plain(value) for key, value in row.items()} for row in rows]
    if suffix == ".csv":
        with atomic_open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_columns(plain_rows), restval="")
            writer.writeheader()
            writer.writerows(plain_rows)
    elif suffix == ".json":
        for row in plain_rows:
            for key, value in row.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"cannot write non-finite {key}={value} to JSON")
        with atomic_open(target, "w", encoding="utf-8") as handle:
            json.dump(plain_rows, handle, indent=2)
            handle.write("\n")
    else:
        raise InputError(f"unsupported table format {target.suffix!r}; use .csv or .json", target)
    return target


def write_tables(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, stem: str
) -> tuple[Path, Path]:
    """Write rows as ``out_dir/stem.csv`` and ``out_dir/stem.json`` (atomic); return both paths."""
    folder = Path(out_dir)
    return write_table(rows, folder / f"{stem}.csv"), write_table(rows, folder / f"{stem}.json")


def _cell(value: Any) -> str:
    """Text of one table cell: floats to 2 decimals, everything else via str()."""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Fixed-width text table for a terminal: a header, a rule, then one line per row.

    ``columns`` picks and orders the columns (default: all, in order of first appearance).
    Floats are shown with 2 decimals and right-aligned, as are ints; text is left-aligned.
    """
    columns = list(columns) if columns is not None else _columns(rows)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    numeric = [
        bool(rows)
        and all(
            isinstance(_plain(row.get(column)), int | float)
            and not isinstance(_plain(row.get(column)), bool)
            for row in rows
        )
        for column in columns
    ]
    widths = [
        max([len(column), *(len(line[c]) for line in cells)]) for c, column in enumerate(columns)
    ]

    def render(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[c]) if numeric[c] else value.ljust(widths[c])
            for c, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    lines = [render(columns), "  ".join("-" * width for width in widths)]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)
