"""Evaluation of a plane model: the agent against the affine-registration baseline.

The test scans are the cases moved by random rigid transforms (and optionally warped) of
:mod:`medrl.data.scenarios`, their AFIDs moved the same way; the true planes are fitted to the
moved AFIDs (:func:`medrl.geometry.planes.planes_from_afids`). The baseline carries the atlas's
AFIDs to the test scan by the landmark baseline's affine registration and fits the planes to
them. Metrics per plane: angle between the normals (degrees), symmetric point-to-plane distance
of the reference points (mm), mean / median / max and the share within 2 degrees and 2 mm.
Reference figures of Alansary et al. (MICCAI 2018, brain MRI, distance): MSP 1.53 mm, AC-PC
1.98 mm.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from medrl.agents.checkpoint import Model
from medrl.agents.search import search
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
from medrl.geometry.planes import MIDLINE_AFIDS, plane_angle_deg, plane_distance_mm
from medrl.io.plane_markups import write_planes
from medrl.metrics.localization import format_table
from medrl.tasks.plane import PlaneTask
from medrl.utils.atomic import atomic_open

AGENT = "agent"
BASELINE = "affine-baseline"
ALANSARY_2018 = {"MSP": 1.53, "ACPC": 1.98}
"""Mean plane distance (mm) of Alansary et al., MICCAI 2018 (brain MRI, other data)."""
WITHIN_DEG, WITHIN_MM = 2.0, 2.0
PLANE_KEYS = (
    "angle_deg_mean",
    "angle_deg_median",
    "angle_deg_max",
    "distance_mm_mean",
    "distance_mm_median",
    "distance_mm_max",
    "share_within_2deg_2mm",
    "n",
)


def plane_rows(
    results: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray], names: tuple
) -> tuple[list[dict], list[dict]]:
    """Per (method, plane) summary rows and raw rows (one per method, scan and plane)."""
    summary, raw = [], []
    for method, per_case in results.items():
        for row, name in enumerate(names):
            angles, distances = [], []
            for case_id, estimate in per_case.items():
                angle = float(plane_angle_deg(estimate[row], truth[case_id][row])[0])
                distance = float(plane_distance_mm(estimate[row], truth[case_id][row])[0])
                angles.append(angle)
                distances.append(distance)
                raw.append(
                    {"method": method, "case": case_id, "plane": name,
                     "angle_deg": angle, "distance_mm": distance}
                )  # fmt: skip
            a, d = np.asarray(angles), np.asarray(distances)
            within = (a <= WITHIN_DEG) & (d <= WITHIN_MM)
            summary.append(
                {
                    "method": method,
                    "plane": name,
                    "angle_deg_mean": float(a.mean()),
                    "angle_deg_median": float(np.median(a)),
                    "angle_deg_max": float(a.max()),
                    "distance_mm_mean": float(d.mean()),
                    "distance_mm_median": float(np.median(d)),
                    "distance_mm_max": float(d.max()),
                    "share_within_2deg_2mm": float(within.mean()),
                    "n": len(a),
                }
            )
    return summary, raw


def evaluate_planes(
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
    """Run agent and baseline on every moved test scan; write ``planes.json``/``.csv`` tables,
    one case record per scan (resumable like the landmark evaluation) and the predictions."""
    task = model.task
    assert isinstance(task, PlaneTask)
    if atlas.landmarks is None or not set(MIDLINE_AFIDS) <= set(atlas.landmarks.names):
        raise InputError(
            "the baseline's atlas case has no midline AFIDs (landmarks "
            f"{', '.join(MIDLINE_AFIDS)})",
            atlas.volume.source,
        )
    names = tuple(model.names)
    usable = [c for c in test_cases if task.present_names(c)]
    if not usable:
        raise InputError(
            f"no test case has the midline AFIDs ({', '.join(MIDLINE_AFIDS)}) that define "
            "the planes"
        )
    atlas_afids = atlas.landmarks.subset(list(MIDLINE_AFIDS))
    scans = scenario_scans(
        usable, rigid_trials, max_rotation_deg, max_translation_mm, seed, include_unmoved,
        elastic_mm, landmark_names=MIDLINE_AFIDS,
    )  # fmt: skip
    out_dir = Path(out_dir)
    truth: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, np.ndarray]] = {AGENT: {}, BASELINE: {}}
    timings: dict[str, list[float]] = {AGENT: [], BASELINE: []}
    drop_stale_records(out_dir, [scan.case_id for scan in scans])
    key = evaluation_key(model, atlas, num_starts)
    for index, scan in enumerate(scans):
        case = Case(scan.case_id, scan.volume, scan.landmarks, "test")
        truth[scan.case_id] = task.target_table([case], names).poses[0]
        prediction = out_dir / "predictions" / f"{scan.case_id}.mrk.json"
        done = finished_record(out_dir, scan.case_id, scan.record, key, prediction)
        say_progress(progress, index, len(scans), scan.case_id, done is not None)
        if done is not None:
            for method in (AGENT, BASELINE):
                kept = done["resume"][method]
                results[method][scan.case_id] = np.asarray(kept["planes"], dtype=np.float64)
                timings[method].append(kept["seconds"])
            continue
        started = time.perf_counter()
        with torch.inference_mode():
            result = search(model, scan.volume, device, num_starts=num_starts)
        timings[AGENT].append(time.perf_counter() - started)
        results[AGENT][scan.case_id] = result.estimate
        started = time.perf_counter()
        carried = propagate_landmarks(atlas.volume, atlas_afids, scan.volume, seed=0)
        baseline_case = Case(scan.case_id, scan.volume, carried, "test")
        results[BASELINE][scan.case_id] = task.target_table([baseline_case], names).poses[0]
        timings[BASELINE].append(time.perf_counter() - started)
        write_planes(prediction, names, result.estimate)
        record: dict = {
            "task": "plane",
            "case": scan.case_id,
            "scan": scan.record,
            "planes": list(names),
            "truth_planes": np.round(truth[scan.case_id], 5).tolist(),
            "resume": {"key": key},
        }
        for method in (AGENT, BASELINE):
            record["resume"][method] = {
                "planes": results[method][scan.case_id].tolist(),
                "seconds": timings[method][-1],
            }
        with atomic_open(out_dir / CASES_DIR / f"{scan.case_id}.json") as handle:
            json.dump(record, handle)
    summary, raw = plane_rows(results, truth, names)
    seconds = {method: float(np.median(values)) for method, values in timings.items()}
    for row in summary:
        row["seconds_per_scan_median"] = seconds[row["method"]]
    with atomic_open(out_dir / "planes.json") as handle:
        json.dump(summary, handle, indent=2)
    with atomic_open(out_dir / "planes_raw.json") as handle:
        json.dump(raw, handle)
    with atomic_open(out_dir / "planes.csv") as handle:
        handle.write(format_table(summary, ["method", "plane", *PLANE_KEYS]) + "\n")
    scenario = {
        "rigid_trials": rigid_trials,
        "max_rotation_deg": max_rotation_deg,
        "max_translation_mm": max_translation_mm,
        "elastic_mm": elastic_mm,
        "seed": seed,
    }
    write_summary(
        out_dir, model, atlas, list(truth), summary, scenario,
        reference_alansary_2018_distance_mm=ALANSARY_2018,
    )  # fmt: skip
    return {"planes": summary}


def print_plane_tables(tables: dict) -> None:
    print(format_table(tables["planes"], ["method", "plane", *PLANE_KEYS,
                                          "seconds_per_scan_median"]))  # fmt: skip
    reference = ", ".join(f"{k} {v} mm" for k, v in ALANSARY_2018.items())
    print(f"\nreference, Alansary et al. 2018 (brain MRI, not this data): {reference}")
