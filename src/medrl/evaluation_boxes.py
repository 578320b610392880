"""Evaluation of a box model: the agent against the affine-atlas baseline, per structure.

The test scans are the cases moved by random rigid transforms and optionally warped non-
affinely (:mod:`medrl.data.scenarios`); their label maps move with them (nearest neighbour,
on the scan's grid) and the true boxes are recomputed from the moved label maps. The baseline
carries the atlas's label map to each test scan by affine registration (the registration the
landmark baseline uses) and takes the boxes of the carried labels. Tables: IoU (mean,
median, worst, share above 0.5), centre and wall distances in mm, per structure and overall
(:mod:`medrl.metrics.boxes`), with the seconds per scan. Reference figure of Navarro et al.
(MIDL 2020, CT organs): mean IoU 0.63, median centroid distance 3.65 mm, median wall
distance 2.25 mm.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from medrl.agents.checkpoint import Model
from medrl.agents.search import SearchResult, level_paths, search
from medrl.baselines.registration import propagate_labels
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
from medrl.geometry.boxes import boxes_from_label_map
from medrl.io.markups import write_boxes
from medrl.metrics.boxes import (
    BOX_SUMMARY_KEYS,
    OVERALL_BOX_KEYS,
    box_evaluation_tables,
    format_table,
    write_box_tables,
)
from medrl.utils.atomic import atomic_open

AGENT = "agent"
BASELINE = "affine-atlas-baseline"
NAVARRO_2020 = {"iou_mean": 0.63, "centre_mm_median": 3.65, "wall_mm_median": 2.25}
"""Reference figures of Navarro et al. 2020 (CT organs, another data set), shown beside ours."""


def _rounded(values: np.ndarray) -> list:
    return np.round(np.asarray(values, dtype=np.float64), 2).tolist()


def evaluate_boxes(
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
) -> dict:
    """Run the box agent and the affine-atlas baseline on every test scan; write tables."""
    if atlas.labels is None or not atlas.label_names:
        raise InputError(
            "the baseline's atlas case has no label map (datalist field 'labels')",
            atlas.volume.source,
        )
    names = tuple(model.names)
    scans = scenario_scans(
        test_cases,
        rigid_trials,
        max_rotation_deg,
        max_translation_mm,
        seed,
        include_unmoved,
        elastic_mm,
        with_labels=True,
    )
    if not scans:
        raise InputError("no test case has a label map to take true boxes from")
    out_dir = Path(out_dir)
    # Truth first: a structure missing from a test scan's labels is an error before any search.
    truth = {}
    for scan in scans:
        assert scan.labels is not None and scan.label_names is not None
        truth[scan.case_id] = boxes_from_label_map(scan.labels, scan.label_names, names)
    results: dict[str, dict] = {AGENT: {}, BASELINE: {}}
    timings: dict[str, list[float]] = {AGENT: [], BASELINE: []}
    drop_stale_records(out_dir, [scan.case_id for scan in scans])
    key = evaluation_key(model, atlas, num_starts)
    for index, scan in enumerate(scans):
        prediction = out_dir / "predictions" / f"{scan.case_id}.mrk.json"
        done = finished_record(out_dir, scan.case_id, scan.record, key, prediction)
        say_progress(progress, index, len(scans), scan.case_id, done is not None)
        if done is not None:  # finished by an earlier, interrupted run of this evaluation
            for method in (AGENT, BASELINE):
                kept = done["resume"][method]
                boxes = np.asarray(kept["boxes"], dtype=np.float64).reshape(-1, 6)
                results[method][scan.case_id] = (tuple(kept["names"]), boxes)
                timings[method].append(kept["seconds"])
            continue
        started = time.perf_counter()
        with torch.inference_mode():
            result = search(model, scan.volume, device, num_starts=num_starts)
        timings[AGENT].append(time.perf_counter() - started)
        results[AGENT][scan.case_id] = (names, result.estimate)
        started = time.perf_counter()
        carried = propagate_labels(atlas.volume, atlas.labels, scan.volume, seed=0)
        baseline = boxes_from_label_map(carried, atlas.label_names, names)
        timings[BASELINE].append(time.perf_counter() - started)
        results[BASELINE][scan.case_id] = baseline
        write_boxes(prediction, names, result.estimate)
        record = box_case_record(scan.case_id, scan.record, truth[scan.case_id], result, baseline)
        record["resume"] = {"key": key}
        for method in (AGENT, BASELINE):
            kept_names, kept_boxes = results[method][scan.case_id]
            record["resume"][method] = {
                "names": list(kept_names),
                "boxes": np.asarray(kept_boxes, dtype=np.float64).tolist(),
                "seconds": timings[method][-1],
            }
        with atomic_open(out_dir / CASES_DIR / f"{scan.case_id}.json") as handle:
            json.dump(record, handle)
    per_structure, overall, raw = box_evaluation_tables(results, truth)
    for row in overall:
        row["seconds_per_scan_median"] = float(np.median(timings[row["method"]]))
    write_box_tables(out_dir, per_structure, overall, raw)
    scenario = {
        "rigid_trials": rigid_trials,
        "max_rotation_deg": max_rotation_deg,
        "max_translation_mm": max_translation_mm,
        "elastic_mm": elastic_mm,
        "seed": seed,
    }
    write_summary(
        out_dir, model, atlas, list(truth), overall, scenario, reference_navarro_2020=NAVARRO_2020
    )
    return {"per_structure": per_structure, "overall": overall}


def box_case_record(
    case_id: str,
    scan: dict,
    truth: tuple[tuple[str, ...], np.ndarray],
    result: SearchResult,
    baseline: tuple[tuple[str, ...], np.ndarray],
) -> dict:
    """What ``medrl report`` draws for one evaluated scan: boxes (centre, size; RAS mm) of the
    truth, the agent and the baseline, and the agent's box after each search step per level."""
    names, true_boxes = truth
    row_of = {name: row for row, name in enumerate(result.names)}
    base_row = {name: row for row, name in enumerate(baseline[0])}
    num_levels = len(result.level_estimates)
    paths = [
        [
            [_rounded(p) for p in level_paths(path, lv, num_levels)]
            for path, lv in zip(result.paths[row_of[n]], result.path_levels[row_of[n]], strict=True)
        ]
        for n in names
    ]
    return {
        "task": "box",
        "case": case_id,
        "scan": scan,
        "structures": list(names),
        "truth_boxes": _rounded(true_boxes),
        "agent_boxes": _rounded(result.estimate[[row_of[n] for n in names]]),
        "baseline_boxes": _rounded(baseline[1][[base_row[n] for n in names]]),
        "search_paths": paths,
    }


def print_box_tables(tables: dict) -> None:
    print(format_table(tables["per_structure"], ["method", "structure", *BOX_SUMMARY_KEYS[:5]]))
    print()
    overall = tables["overall"]
    print(format_table(overall, ["method", *OVERALL_BOX_KEYS, "seconds_per_scan_median"]))
    reference = ", ".join(f"{k} {v}" for k, v in NAVARRO_2020.items())
    print(f"\nreference, Navarro et al. 2020 (CT organs, not this data): {reference}")
