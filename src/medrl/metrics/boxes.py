"""Box localisation metrics and the tables a box evaluation reports.

Predicted and true boxes are world-axis-aligned (N, 6) arrays ``[cR, cA, cS, sR, sA, sS]`` in
RAS mm (:mod:`medrl.geometry.boxes`), matched by structure name. Per structure and overall,
tables give the intersection over union (mean, median, worst, share above 0.5), the distance
between box centres and the mean distance between corresponding walls, in mm. Tables are
written and printed with :func:`medrl.metrics.localization.write_tables` and
:func:`~medrl.metrics.localization.format_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrl.errors import InputError
from medrl.geometry.boxes import box_iou, centre_distance_mm, wall_distance_mm
from medrl.metrics.localization import check_cases, format_table, write_tables

__all__ = [
    "BOX_SUMMARY_KEYS",
    "IOU_THRESHOLD",
    "OVERALL_BOX_KEYS",
    "box_evaluation_tables",
    "box_raw_rows",
    "format_table",
    "summarize_boxes",
    "write_box_tables",
    "write_tables",
]

BoxSet = tuple[Sequence[str], np.ndarray]
"""Structure names and their (N, 6) boxes."""

IOU_THRESHOLD = 0.5
"""A box counts as a hit when its IoU with the true box is strictly above this."""

BOX_SUMMARY_KEYS: tuple[str, ...] = (
    "iou_mean",
    "iou_median",
    "iou_min",
    "share_iou_over_0_5",
    "centre_mm_mean",
    "centre_mm_median",
    "wall_mm_mean",
    "n",
)
"""Keys of the per-structure summary, in the order tables show them."""

OVERALL_BOX_KEYS: tuple[str, ...] = (*BOX_SUMMARY_KEYS[:3], "iou_sd", *BOX_SUMMARY_KEYS[3:])
"""Keys of the overall summary (the per-structure keys plus the IoU's sample SD)."""


def summarize_boxes(
    iou: Iterable[float], centre_mm: Iterable[float], wall_mm: Iterable[float]
) -> dict[str, float]:
    """Summary of paired per-box IoUs and distances (keys :data:`OVERALL_BOX_KEYS`).

    ``iou_sd`` is the sample standard deviation (ddof=1), 0 for a single box. ``n`` is an int,
    all other values Python floats. ValueError for empty, unequal-length or non-finite input.
    """
    ious, centres, walls = (
        np.asarray(list(v), np.float64).ravel() for v in (iou, centre_mm, wall_mm)
    )
    if ious.size == 0:
        raise ValueError("cannot summarise an empty list of boxes")
    if not ious.size == centres.size == walls.size:
        raise ValueError(f"{ious.size} IoUs, {centres.size} centre and {walls.size} wall errors")
    if not all(np.all(np.isfinite(v)) for v in (ious, centres, walls)):
        raise ValueError("box errors contain NaN/Inf values")
    n = int(ious.size)
    return {
        "iou_mean": float(np.mean(ious)),
        "iou_median": float(np.median(ious)),
        "iou_min": float(np.min(ious)),
        "iou_sd": float(np.std(ious, ddof=1)) if n > 1 else 0.0,
        "share_iou_over_0_5": float(np.mean(ious > IOU_THRESHOLD)),
        "centre_mm_mean": float(np.mean(centres)),
        "centre_mm_median": float(np.median(centres)),
        "wall_mm_mean": float(np.mean(walls)),
        "n": n,
    }


def _box_set(item: Any, what: str) -> tuple[tuple[str, ...], np.ndarray]:
    """``(names, boxes)`` checked: unique names, one finite (6,) row with sizes >= 0 each."""
    try:
        names, boxes = item
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected a pair (names, boxes)") from None
    names = tuple(str(name) for name in names)
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 6) if len(names) else np.zeros((0, 6))
    if array.shape[0] != len(names):
        raise InputError(f"{what}: {len(names)} structure names for {array.shape[0]} boxes")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputError(f"{what}: duplicate structure name(s) {', '.join(duplicated)}")
    if not np.all(np.isfinite(array)) or np.any(array[:, 3:] < 0):
        raise InputError(f"{what}: boxes must be finite with sizes >= 0")
    return names, array


def box_raw_rows(
    results: Mapping[str, Mapping[str, BoxSet]], truth: Mapping[str, BoxSet]
) -> list[dict[str, Any]]:
    """One row per method, case and true structure: method, case, structure, iou, centre_mm,
    wall_mm.

    Rows follow the order of ``results``, then ``truth`` cases, then each case's true
    structures; a method's extra structures are ignored.

    Raises:
        InputError: a method lacks a case or a true structure (naming them), has a case without
            ground truth, or names and boxes do not match.
    """
    check_cases(results, truth, "boxes")
    true_sets = {case: _box_set(item, f"truth, case {case!r}") for case, item in truth.items()}
    rows: list[dict[str, Any]] = []
    for method, predictions in results.items():
        for case, (true_names, true_boxes) in true_sets.items():
            where = f"method {method!r}, case {case!r}"
            names, boxes = _box_set(predictions[case], where)
            row_of = {name: row for row, name in enumerate(names)}
            missing = [name for name in true_names if name not in row_of]
            if missing:
                raise InputError(
                    f"{where}: no box for {len(missing)} of the {len(true_names)} true "
                    "structures: " + ", ".join(missing)
                )
            if not true_names:
                continue
            matched = boxes[[row_of[name] for name in true_names]]
            ious = box_iou(matched, true_boxes)
            centres = centre_distance_mm(matched, true_boxes)
            walls = wall_distance_mm(matched, true_boxes)
            for index, name in enumerate(true_names):
                rows.append(
                    {
                        "method": method,
                        "case": case,
                        "structure": name,
                        "iou": float(ious[index]),
                        "centre_mm": float(centres[index]),
                        "wall_mm": float(walls[index]),
                    }
                )
    return rows


def _summary(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    summary = summarize_boxes(
        [row["iou"] for row in rows],
        [row["centre_mm"] for row in rows],
        [row["wall_mm"] for row in rows],
    )
    return {key: summary[key] for key in keys}


def box_evaluation_tables(
    results: Mapping[str, Mapping[str, BoxSet]], truth: Mapping[str, BoxSet]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-structure, overall and raw tables for several methods.

    ``results`` maps a method name to case id to ``(names, boxes (N, 6))``; ``truth`` maps case
    id to ``(names, boxes)``. Returns ``(per_structure_rows, overall_rows, raw_rows)``:

    * per_structure_rows: one row per method and structure (structures in order of first
      appearance across the truth cases): method, structure and :data:`BOX_SUMMARY_KEYS` over
      the cases that have the structure;
    * overall_rows: one row per method: method and :data:`OVERALL_BOX_KEYS` over all structures
      of all cases;
    * raw_rows: :func:`box_raw_rows`.

    Raises:
        InputError: as :func:`box_raw_rows`, or no true structures at all.
    """
    raw_rows = box_raw_rows(results, truth)
    if not raw_rows:
        raise InputError("the ground truth holds no structures to evaluate")
    order = list(dict.fromkeys(row["structure"] for row in raw_rows))
    per_structure: list[dict[str, Any]] = []
    overall: list[dict[str, Any]] = []
    for method in results:
        method_rows = [row for row in raw_rows if row["method"] == method]
        for structure in order:
            rows = [row for row in method_rows if row["structure"] == structure]
            per_structure.append(
                {"method": method, "structure": structure, **_summary(rows, BOX_SUMMARY_KEYS)}
            )
        overall.append({"method": method, **_summary(method_rows, OVERALL_BOX_KEYS)})
    return per_structure, overall, raw_rows


def write_box_tables(
    out_dir: str | Path,
    per_structure_rows: Sequence[Mapping[str, Any]],
    overall_rows: Sequence[Mapping[str, Any]],
    raw_rows: Sequence[Mapping[str, Any]],
) -> list[Path]:
    """Write the three tables as ``boxes_per_structure``, ``boxes_overall`` and ``boxes_raw``
    (``.csv`` and ``.json`` each, atomically) into ``out_dir``; return the paths written."""
    paths: list[Path] = []
    for stem, rows in (
        ("boxes_per_structure", per_structure_rows),
        ("boxes_overall", overall_rows),
        ("boxes_raw", raw_rows),
    ):
        paths.extend(write_tables(rows, out_dir, stem))
    return paths
