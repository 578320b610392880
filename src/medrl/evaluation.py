"""Evaluation of a landmark model: the agent against the affine-registration baseline.

The test scans are the cases moved by random rigid transforms (and optionally warped non-
affinely) of :mod:`medrl.data.scenarios`, with the true landmarks moved the same way. Box
models are evaluated by :mod:`medrl.evaluation_boxes`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrl.agents.checkpoint import LandmarkModel, Model
from medrl.agents.search import SearchResult, level_paths, search
from medrl.agents.validation import select_search_levels  # noqa: F401 - its former home
from medrl.baselines.registration import propagate_landmarks
from medrl.data.datalist import Case
from medrl.data.scenarios import (  # noqa: F401 - re-exported: their home before scenarios.py
    RigidTransform,
    Swelling,
    deform_case,
    move_case,
    random_rigid,
    rigid_from_dict,
    rigid_to_dict,
    scenario_scans,
)
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.metrics.localization import (
    SUMMARY_KEYS,
    evaluation_tables,
    format_table,
    raw_error_rows,
    write_tables,
)
from medrl.supervised.detector_set import Detector
from medrl.utils.atomic import atomic_open

AGENT = "agent"
BASELINE = "affine-baseline"
SUPERVISED = "supervised-heatmap"
"""The supervised heatmap detector's method name (``medrl evaluate --supervised DIR``)."""
SUMMARY_COLUMNS = ["method", *SUMMARY_KEYS]
CASES_DIR = "cases"
"""Folder of the evaluation output with one JSON per evaluated scan (for ``medrl report``)."""


def evaluate(
    model: LandmarkModel,
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
    supervised: Detector | None = None,
    swelling: Swelling | None = None,
) -> dict:
    """Run agent and baseline on every test case (moved ``rigid_trials`` times); write tables.

    ``supervised``: a heatmap detector (:mod:`medrl.supervised`) evaluated on the same scans,
    a third method in every table (``supervised-heatmap``).

    A rerun into the same folder keeps the scans an interrupted run of the same evaluation
    finished (same model, atlas, starts and test scan: :func:`finished_record`), with their
    recorded results and times, so its tables equal an uninterrupted run's.

    ``elastic_mm`` > 0 warps each moved scan first (:func:`medrl.data.scenarios.deform_case`,
    seeded like the rigid move) and names the scans ``<case>_elastic<trial>`` instead of
    ``_rigid<trial>``; ``swelling`` enlarges structures before the move
    (:class:`medrl.data.scenarios.Swelling`, scans ``<case>_swollen<trial>``).
    """
    out_dir = Path(out_dir)
    truth: dict[str, Landmarks] = {}
    methods = (AGENT, BASELINE) if supervised is None else (AGENT, BASELINE, SUPERVISED)
    results: dict[str, dict[str, Landmarks]] = {method: {} for method in methods}
    timings: dict[str, list[float]] = {method: [] for method in methods}
    assert atlas.landmarks is not None
    atlas_landmarks = atlas.landmarks.subset(list(model.names))
    scans = scenario_scans(
        test_cases,
        rigid_trials,
        max_rotation_deg,
        max_translation_mm,
        seed,
        include_unmoved,
        elastic_mm,
        landmark_names=model.names,
        swelling=swelling,
    )
    jobs = [(t.case_id, t.volume, t.landmarks, t.record) for t in scans]
    drop_stale_records(out_dir, [case_id for case_id, _, _, _ in jobs])
    key = evaluation_key(model, atlas, num_starts, supervised)
    for index, (case_id, volume, case_truth, scan) in enumerate(jobs):
        truth[case_id] = case_truth
        prediction = out_dir / "predictions" / f"{case_id}.fcsv"
        done = finished_record(out_dir, case_id, scan, key, prediction)
        say_progress(progress, index, len(jobs), case_id, done is not None)
        if done is not None:  # finished by an earlier, interrupted run of this evaluation
            for method in methods:
                kept = done["resume"][method]
                points = np.asarray(kept["points"], dtype=np.float64).reshape(-1, 3)
                results[method][case_id] = Landmarks(
                    tuple(case_truth.names), points, tuple(kept["descriptions"])
                )
                timings[method].append(kept["seconds"])
            continue
        started = time.perf_counter()
        with torch.inference_mode():
            result = search(model, volume, device, num_starts=num_starts)
        found = result.landmarks
        timings[AGENT].append(time.perf_counter() - started)
        results[AGENT][case_id] = found.subset(list(case_truth.names))
        started = time.perf_counter()
        baseline = propagate_landmarks(atlas.volume, atlas_landmarks, volume, seed=0)
        timings[BASELINE].append(time.perf_counter() - started)
        results[BASELINE][case_id] = baseline.subset(list(case_truth.names))
        if supervised is not None:
            started = time.perf_counter()
            detected = supervised.detect(volume, device)
            timings[SUPERVISED].append(time.perf_counter() - started)
            results[SUPERVISED][case_id] = detected.subset(list(case_truth.names))
        write_landmarks(found, prediction)
        record = case_record(case_id, scan, case_truth, result, results[BASELINE][case_id])
        if supervised is not None:
            record["supervised_ras"] = _rounded(results[SUPERVISED][case_id].points_ras)
        record["resume"] = {"key": key}
        for method in methods:
            kept = results[method][case_id]
            record["resume"][method] = {
                "points": kept.points_ras.tolist(),
                "descriptions": list(kept.descriptions),
                "seconds": timings[method][-1],
            }
        with atomic_open(out_dir / CASES_DIR / f"{case_id}.json") as handle:
            json.dump(record, handle)
    per_landmark, overall = evaluation_tables(results, truth)
    for row in overall:
        row["seconds_per_scan_median"] = float(np.median(timings[row["method"]]))
    write_tables(per_landmark, out_dir, "per_landmark")
    write_tables(overall, out_dir, "overall")
    write_tables(raw_error_rows(results, truth), out_dir, "errors")
    scenario: dict[str, Any] = {
        "rigid_trials": rigid_trials,
        "max_rotation_deg": max_rotation_deg,
        "max_translation_mm": max_translation_mm,
        "elastic_mm": elastic_mm,
        "seed": seed,
    }
    if swelling is not None:
        scenario["swelling"] = {
            "groups": [list(group) for group in swelling.groups],
            "sigma_mm": swelling.sigma_mm,
            "strength": swelling.strength,
        }
    extra = {} if supervised is None else {"supervised": supervised.training}
    write_summary(out_dir, model, atlas, list(truth), overall, scenario, **extra)
    return {"per_landmark": per_landmark, "overall": overall}


def evaluation_key(
    model: Model, atlas: Case, num_starts: int | None, supervised: Detector | None = None
) -> str:
    """What a scan's result depends on besides the scan: the model's weights, config and
    learned task state (the reference layout), the baseline's atlas, the number of starts and
    the settings and weights of the supervised detectors, the one compared and the one the
    model carries, if any (a hash, stored in each case record)."""
    digest = hashlib.sha256()
    parts: list[Any] = [model.network.state_dict()]
    for role, detector in (("supervised", supervised), ("carried", model.detector)):
        # each detector's role and size, then its settings (how it reads) and weights, of
        # every member: a set of A and B is not A beside B
        fingerprint = [] if detector is None else detector.fingerprint()
        parts += [{"detector": [role, len(fingerprint)]}, *fingerprint]
    for part in parts:
        for name, value in sorted(part.items()):
            digest.update(name.encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
            else:
                digest.update(json.dumps(value).encode())
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(json.dumps(model.task.state_dict(), sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(atlas.volume.array).tobytes())
    digest.update(json.dumps([atlas.case_id, num_starts]).encode())
    return digest.hexdigest()


def finished_record(
    out_dir: Path, case_id: str, scan: dict | None, key: str, prediction: Path
) -> dict[str, Any] | None:
    """The case record a killed run of the same evaluation (same key, same test scan) left,
    with its prediction file; None when the scan must be evaluated."""
    try:
        record = json.loads((out_dir / CASES_DIR / f"{case_id}.json").read_text())
    except (OSError, ValueError):
        return None
    resume = record.get("resume")
    same_scan = record.get("scan") == json.loads(json.dumps(scan, default=str))
    if not isinstance(resume, dict) or resume.get("key") != key or not same_scan:
        return None
    return record if prediction.is_file() else None


def say_progress(progress: bool, index: int, total: int, case_id: str, done: bool) -> None:
    if progress:
        what = "done earlier, kept" if done else "evaluating"
        print(f"[{index + 1}/{total}] {what} {case_id}", file=sys.stderr, flush=True)


def drop_stale_records(out_dir: Path, case_ids: list[str]) -> None:
    """Remove case records of an earlier evaluation into the same folder (the report must
    draw only this evaluation's scans)."""
    current = {f"{case_id}.json" for case_id in case_ids}
    if (out_dir / CASES_DIR).is_dir():
        for path in (out_dir / CASES_DIR).glob("*.json"):
            if path.name not in current:
                path.unlink()


def write_summary(
    out_dir: Path,
    model: Model,
    atlas: Case,
    cases: list[str],
    overall: list[dict],
    scenario: dict,
    **extra: object,
) -> None:
    """``summary.json``: the task, overall rows, scans, atlas, model and the test scenario."""
    summary = {
        "task": model.kind,
        "overall": overall,
        "cases": cases,
        "atlas": atlas.case_id,
        "model": {
            "meta": model.meta,
            "levels_mm": [lv.spacing_mm for lv in model.config.env.levels],
        },
        **scenario,
        **extra,
    }
    with atomic_open(out_dir / "summary.json") as handle:
        json.dump(summary, handle, indent=2, default=str)


def _rounded(points: np.ndarray) -> list:
    return np.round(np.asarray(points, dtype=np.float64), 2).tolist()


def case_record(
    case_id: str, scan: dict, truth: Landmarks, result: SearchResult, baseline: Landmarks
) -> dict:
    """What ``medrl report`` draws for one evaluated scan, as plain JSON (world RAS mm).

    ``scan`` names the source image and the rigid move applied to it (None: unmoved), so the
    report can rebuild the evaluated image. ``search_paths_ras[landmark][start][level]`` lists
    the positions the agent visited at that level, coarse to fine, without repeats.
    """
    found = result.landmarks
    num_levels = len(result.level_points_ras)
    index = {name: row for row, name in enumerate(found.names)}
    paths = []
    for name in truth.names:
        row = index[name]
        starts = zip(result.paths_ras[row], result.path_levels[row], strict=True)
        paths.append(
            [[_rounded(p) for p in level_paths(path, lv, num_levels)] for path, lv in starts]
        )
    return {
        "case": case_id,
        "scan": scan,
        "landmarks": list(truth.names),
        "descriptions": [truth.description(name) for name in truth.names],
        "truth_ras": _rounded(truth.points_ras),
        "agent_ras": _rounded(found.subset(list(truth.names)).points_ras),
        "baseline_ras": _rounded(baseline.points_ras),
        "search_paths_ras": paths,
    }


def print_tables(tables: dict) -> None:
    per_landmark = tables["per_landmark"]
    columns = ["method", "landmark", "description", "mean_mm", "median_mm", "max_mm"]
    print(format_table(per_landmark, columns))
    print()
    print(format_table(tables["overall"], [*SUMMARY_COLUMNS, "seconds_per_scan_median"]))
