"""The evaluation loop of the agents whose targets are defined by landmarks (planes, slices):
the agent against the affine-registration baseline on moved test scans.

The test scans are the cases moved by random rigid transforms (and optionally warped) of
:mod:`medrl.data.scenarios`, their landmarks moved the same way; the truth is the task's
target table of the moved scan (:meth:`medrl.tasks.base.Task.target_table`), so it is exact
in every moved scan. The baseline carries the atlas's defining landmarks to the test scan by
the landmark baseline's affine registration and builds the targets from them the same way.
Each scan leaves a case record (resumable like the landmark evaluation) and a prediction file;
what differs between the tasks (which landmarks, the table rows, the prediction writer) is a
:class:`FamilySpec`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medrl.agents.checkpoint import Model
from medrl.agents.search import SearchResult, search
from medrl.baselines.registration import propagate_landmarks
from medrl.data.datalist import Case
from medrl.data.scenarios import scenario_scans
from medrl.errors import InputError
from medrl.evaluation import (
    CASES_DIR,
    drop_stale_records,
    evaluation_key,
    finished_record,
    say_progress,
    write_summary,
)
from medrl.io.images import Volume
from medrl.metrics.localization import format_table
from medrl.utils.atomic import atomic_open

AGENT = "agent"
BASELINE = "affine-baseline"
METHODS = (AGENT, BASELINE)

Results = dict[str, dict[str, np.ndarray]]
"""Per method, per scan: the estimated target poses (T, D)."""


@dataclass(frozen=True)
class FamilySpec:
    """What one task's evaluation adds to the shared loop."""

    task: str
    table: str
    """Base name of the tables: ``TABLE.json``, ``TABLE.csv`` and ``TABLE_raw.json``."""
    keys: tuple[str, ...]
    """Columns of the table after method and target."""
    target_column: str
    """Name of the target column (``plane``, ``target``)."""
    rows: Callable[[Results, dict[str, np.ndarray], tuple[str, ...]], tuple[list, list]]
    """(summary rows, raw rows) from the results, the truth per scan and the target names."""
    write_prediction: Callable[[Path, Volume, SearchResult], None]
    prediction_suffix: str


def evaluate_family(
    spec: FamilySpec,
    landmark_names: tuple[str, ...],
    model: Model,
    test_cases: list[Case],
    atlas: Case,
    out_dir: str | Path,
    rigid_trials: int = 5,
    max_rotation_deg: float = 15.0,
    max_translation_mm: float = 20.0,
    seed: int = 1000,
    include_unmoved: bool = False,
    device: str = "cpu",
    progress: bool = True,
    num_starts: int | None = None,
    elastic_mm: float = 0.0,
    **summary_extra: object,
) -> dict:
    """Run agent and baseline on every moved test scan; write the tables, one case record per
    scan and the predictions. ``landmark_names`` define the targets (moved with each scan and
    carried by the baseline)."""
    task = model.task
    present = set(atlas.landmarks.names) if atlas.landmarks is not None else set()
    missing = [n for n in landmark_names if n not in present]
    if missing:
        raise InputError(
            f"the baseline's atlas case lacks the landmark(s) {', '.join(missing)} that define "
            f"the {spec.task} targets",
            atlas.volume.source,
        )
    assert atlas.landmarks is not None
    names = tuple(model.names)
    usable = [
        c for c in test_cases
        if c.landmarks is not None and set(landmark_names) <= set(c.landmarks.names)
    ]  # fmt: skip
    if not usable:
        raise InputError(
            f"no test case has the landmarks ({', '.join(landmark_names)}) that define the "
            f"{spec.task} targets"
        )
    atlas_landmarks = atlas.landmarks.subset(list(landmark_names))
    scans = scenario_scans(
        usable, rigid_trials, max_rotation_deg, max_translation_mm, seed, include_unmoved,
        elastic_mm, landmark_names=landmark_names,
    )  # fmt: skip
    out_dir = Path(out_dir)
    truth: dict[str, np.ndarray] = {}
    results: Results = {method: {} for method in METHODS}
    timings: dict[str, list[float]] = {method: [] for method in METHODS}
    drop_stale_records(out_dir, [scan.case_id for scan in scans])
    key = evaluation_key(model, atlas, num_starts)
    for index, scan in enumerate(scans):
        case = Case(scan.case_id, scan.volume, scan.landmarks, "test")
        truth[scan.case_id] = task.target_table([case], names).poses[0]
        prediction = out_dir / "predictions" / f"{scan.case_id}{spec.prediction_suffix}"
        done = finished_record(out_dir, scan.case_id, scan.record, key, prediction)
        say_progress(progress, index, len(scans), scan.case_id, done is not None)
        if done is not None:
            for method in METHODS:
                kept = done["resume"][method]
                results[method][scan.case_id] = np.asarray(kept["poses"], dtype=np.float64)
                timings[method].append(kept["seconds"])
            continue
        started = time.perf_counter()
        with torch.inference_mode():
            result = search(model, scan.volume, device, num_starts=num_starts)
        timings[AGENT].append(time.perf_counter() - started)
        results[AGENT][scan.case_id] = result.estimate
        started = time.perf_counter()
        carried = propagate_landmarks(atlas.volume, atlas_landmarks, scan.volume, seed=0)
        baseline_case = Case(scan.case_id, scan.volume, carried, "test")
        results[BASELINE][scan.case_id] = task.target_table([baseline_case], names).poses[0]
        timings[BASELINE].append(time.perf_counter() - started)
        spec.write_prediction(prediction, scan.volume, result)
        record: dict = {
            "task": spec.task,
            "case": scan.case_id,
            "scan": scan.record,
            "targets": list(names),
            "descriptions": list(result.descriptions),
            "truth_poses": np.round(truth[scan.case_id], 5).tolist(),
            "resume": {"key": key},
        }
        for method in METHODS:
            record["resume"][method] = {
                "poses": results[method][scan.case_id].tolist(),
                "seconds": timings[method][-1],
            }
        with atomic_open(out_dir / CASES_DIR / f"{scan.case_id}.json") as handle:
            json.dump(record, handle)
    summary, raw = spec.rows(results, truth, names)
    seconds = {method: float(np.median(values)) for method, values in timings.items()}
    for row in summary:
        row["seconds_per_scan_median"] = seconds[row["method"]]
    columns = ["method", spec.target_column, *spec.keys]
    with atomic_open(out_dir / f"{spec.table}.json") as handle:
        json.dump(summary, handle, indent=2)
    with atomic_open(out_dir / f"{spec.table}_raw.json") as handle:
        json.dump(raw, handle)
    with atomic_open(out_dir / f"{spec.table}.csv") as handle:
        handle.write(format_table(summary, columns) + "\n")
    scenario = {
        "rigid_trials": rigid_trials,
        "max_rotation_deg": max_rotation_deg,
        "max_translation_mm": max_translation_mm,
        "elastic_mm": elastic_mm,
        "seed": seed,
    }
    write_summary(out_dir, model, atlas, list(truth), summary, scenario, **summary_extra)
    return {spec.table: summary}


def print_family_table(spec: FamilySpec, tables: dict) -> None:
    columns = ["method", spec.target_column, *spec.keys, "seconds_per_scan_median"]
    print(format_table(tables[spec.table], columns))
