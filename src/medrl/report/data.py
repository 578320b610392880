"""What a report shows, read from disk: evaluation tables, per-scan records, training logs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrl.errors import InputError

TRAINING_CURVES: tuple[tuple[str, str], ...] = (
    ("train/reward", "reward (mean per step)"),
    ("train/loss", "TD loss"),
    ("train/epsilon", "epsilon (exploration)"),
    ("train/final_distance_mm", "distance at episode end (mm)"),
    ("train/final_giou_distance", "1 - GIoU at episode end (box)"),
    ("eval/mean_error_mm", "evaluation error (mean, mm)"),
    ("eval/mean_iou", "validation IoU (mean, box)"),
)
"""TensorBoard scalar tags the report plots, with their titles; absent ones are left out."""

TABLES = {
    "landmark": ("overall", "per_landmark", "errors"),
    "box": ("boxes_overall", "boxes_per_structure", "boxes_raw"),
    "plane": ("planes", "planes", "planes_raw"),
    "slice": ("slices", "slices", "slices_raw"),
}
"""The evaluation's tables (overall, per target, raw) of each task."""


@dataclass
class Scalars:
    steps: np.ndarray
    values: np.ndarray


@dataclass
class ReportData:
    run_dir: Path
    evaluation_dir: Path
    summary: dict[str, Any]
    overall: list[dict[str, Any]]
    per_landmark: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    cases: list[dict[str, Any]]
    scalars: dict[str, Scalars] = field(default_factory=dict)
    model_meta: dict[str, Any] = field(default_factory=dict)
    task: str = "landmark"
    """``landmark``, or ``box`` (then ``per_landmark`` holds per-structure rows and ``errors``
    the per-box rows of :mod:`medrl.metrics.boxes`)."""


def find_evaluation(run_dir: Path, evaluation_dir: Path | None = None) -> Path:
    """The evaluation folder: the one given, ``RUN_DIR/evaluation``, or ``RUN_DIR`` itself."""
    candidates = [evaluation_dir] if evaluation_dir else [run_dir / "evaluation", run_dir]
    for folder in candidates:
        if folder is not None and (folder / "summary.json").is_file():
            return folder
    where = evaluation_dir or run_dir
    raise InputError(
        "no evaluation found (summary.json); run `medrl evaluate --out "
        f"{run_dir / 'evaluation'}` first",
        where,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("missing evaluation file", path) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable evaluation file: {exc}", path) from exc


def read_scalars(folder: Path) -> dict[str, Scalars]:
    """Every scalar series in a TensorBoard log folder (all its event files, a resumed run's
    too). The files are taken in the order they were written (their first event's wall
    time; a file name's per-process counter does not sort: ``...9.a`` after ``...10.b``),
    and a later file replaces every step of a tag from its own first step on, as TensorBoard
    purges a restarted run's orphaned steps: where a run was resumed, the last run wins."""
    paths = sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
    if not paths:
        return {}
    from tensorboard.backend.event_processing import event_accumulator

    runs = []
    for path in paths:
        accumulator = event_accumulator.EventAccumulator(
            str(path), size_guidance={event_accumulator.SCALARS: 0}
        )
        accumulator.Reload()
        try:
            started = accumulator.FirstEventTimestamp()
        except ValueError:  # an empty file (a writer that never flushed)
            continue
        runs.append((started, path.name, accumulator))
    merged: dict[str, dict[int, float]] = {}
    for _, _, accumulator in sorted(runs, key=lambda run: run[:2]):
        for tag in accumulator.Tags().get("scalars", []):
            events = accumulator.Scalars(tag)
            if not events:
                continue
            first_step = min(event.step for event in events)
            kept = {s: v for s, v in merged.get(tag, {}).items() if s < first_step}
            merged[tag] = kept | {event.step: event.value for event in events}
    series = {}
    for tag, by_step in merged.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        series[tag] = Scalars(steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return series


def _case_key(case: str, order: list[str]) -> int:
    return order.index(case) if case in order else len(order)


def load_report_data(run_dir: Path, evaluation_dir: Path | None = None) -> ReportData:
    """Read an evaluation (``medrl evaluate`` output) and, if present, the run's logs."""
    if not run_dir.exists():
        raise InputError("run folder does not exist", run_dir)
    folder = find_evaluation(run_dir, evaluation_dir)
    summary = _read_json(folder / "summary.json")
    cases_dir = folder / "cases"
    order = list(summary.get("cases", []))
    records = [_read_json(path) for path in sorted(cases_dir.glob("*.json"))]
    if order:  # only this evaluation's scans: a reused output folder may hold older ones
        records = [record for record in records if record.get("case") in order]
    records.sort(key=lambda record: _case_key(record.get("case", ""), order))
    tensorboard = run_dir / "tensorboard"
    if not tensorboard.is_dir() and folder != run_dir:
        tensorboard = folder.parent / "tensorboard"
    task = str(summary.get("task", "landmark"))
    tables = TABLES.get(task, TABLES["landmark"])
    return ReportData(
        run_dir=run_dir,
        evaluation_dir=folder,
        summary=summary,
        overall=_read_json(folder / f"{tables[0]}.json"),
        per_landmark=_read_json(folder / f"{tables[1]}.json"),
        errors=_read_json(folder / f"{tables[2]}.json"),
        task=task,
        cases=records,
        scalars=read_scalars(tensorboard),
        model_meta=dict(summary.get("model", {}).get("meta", {})),
    )
