"""Leave one template out: landmark models tested on a brain they never saw.

Each ``--fold TEMPLATE=MODEL_DIR`` names a model trained on ``builtin:afids4/TEMPLATE`` (the
other templates of ``builtin:afids4``) and tests it on that template's cases (each image with
and without skull), moved by ``--trials`` random rigid transforms (up to 15 degrees and
20 mm, seeds 1000...; scenario ``rigid15``) and, in ``warp15``, warped first by a smooth 3 mm
non-affine field (in ``warp15_6mm`` a 6 mm one; in ``vent15`` the 3 mm one with both
lateral ventricles enlarged). Beside it, on the same scans: the affine
registration baseline (the AFIDs of MNI152NLin2009cAsym T1w, a training template of every
fold, carried by SimpleITK affine registration), every ``--also NAME=MODEL_DIR`` (e.g. the
model shipped before, trained on MNI152NLin2009cAsym alone: ``--also shipped=default``) and,
with ``--supervised TEMPLATE=DETECTOR_DIR``, the supervised heatmap detector trained on the
same fold (``medrl train-heatmap --config afids4 --set train.datalist=builtin:afids4/TEMPLATE``)
and the point halfway between the agent's and the detector's (an ensemble of the two).
``--detector TEMPLATE=DETECTOR_DIR`` instead puts that detector in the fold model, in place
of the one its folder carries (``MODEL/detector``, :mod:`medrl.supervised.ensemble`), so
that detectors of one fold (seeds, training settings) are compared with the same agent and
without copying model folders; the weight is the model's ``search.detector_weight`` or a
``--set``. A DETECTOR_DIR may be a set of detectors read as one
(``python -m medrl.supervised.detector_set``).
Every row shows the mean, median and max error, the landmarks above 10 mm and the seconds per
scan. Writes ``loto.json`` (all rows, the per-landmark means too) into ``--out``, and the
``medrl evaluate`` folders below it.

PYTHONPATH=. python -m benchmarks.bench_loto --fold MNI305=runs/loto/f_305/model \\
    --also shipped=default [--supervised MNI305=runs/heatmap_305/model] [--trials 5] \\
    [--scenarios rigid15,warp15] [--out /tmp/bench_loto] \\
    [--set search.adaptive_levels=true]
PYTHONPATH=. python -m benchmarks.bench_loto --fold MNI305=runs/loto/f_MNI305_ens35 \\
    --detector MNI305=runs/heatmap/MNI305_seed1/model --set search.mirror=true
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import set_threads
from benchmarks._family import SCENARIOS
from medrl.agents.checkpoint import Model, load_model, with_overrides
from medrl.data.scenarios import Swelling
from medrl.data.sources import load_split
from medrl.evaluation import CASES_DIR, evaluate
from medrl.models import default_model_dir
from medrl.supervised.detector import load_detector
from medrl.supervised.ensemble import detector_knowing

ATLAS_CASE = "MNI152NLin2009cAsym_T1w"
VENTRICLES = Swelling(groups=(("15", "17"), ("16", "18")), sigma_mm=20.0, strength=-0.35)
"""Both lateral ventricles enlarged, as in an older person's or a patient's brain (the held-out
patient template of issue 11 has enlarged ventricles): a local warp centred on the anatomy
between each side's AFIDs at the lateral ventricle (at AC: 15 right, 16 left; at PC: 17, 18),
fading over about 20 mm; at its centre one warp alone makes the volume 1 / 0.65^3 = 3.6 times
larger, and the two overlap, so somewhat more. It moves those four AFIDs outward by about 5 mm.
Stronger than the training augmentation's local warps (|s| up to 0.3, each centred on one
landmark)."""
LOTO_SCENARIOS = {
    **SCENARIOS,
    "warp15_6mm": {"max_rotation_deg": 15.0, "elastic_mm": 6.0},
    "vent15": {"max_rotation_deg": 15.0, "elastic_mm": 3.0, "swelling": VENTRICLES},
}
"""The family's scenarios, a stronger warp (6 mm): anatomy further from any affine copy of
the training brains, where a layout fit (``search.layout_weight``) cannot follow and the search
must read the image; and ``vent15``, ``warp15`` with both lateral ventricles enlarged
(:data:`VENTRICLES`)."""


ENSEMBLE = "mean of agent and supervised"


def ensemble_errors(evaluation_dir: Path) -> np.ndarray:
    """Errors (mm) of the point halfway between the agent's and the supervised detector's, for
    every landmark of every scan of a ``medrl evaluate`` folder run with a detector (from its
    per-case records)."""
    errors = []
    for path in sorted((evaluation_dir / CASES_DIR).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        truth = np.asarray(record["truth_ras"], dtype=np.float64)
        halfway = (np.asarray(record["agent_ras"]) + np.asarray(record["supervised_ras"])) / 2
        errors.append(np.linalg.norm(halfway - truth, axis=1))
    return np.concatenate(errors)


def _named(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"expected NAME=MODEL_DIR, got {item!r}")
        pairs.append((name, path))
    return pairs


def _model(path: str, overrides: list[str], detector_dir: str | None = None) -> Model:
    model = load_model(default_model_dir("landmark") if path == "default" else path,
                       task="landmark")  # fmt: skip
    if detector_dir is not None:  # this fold's agent with another detector
        detector = detector_knowing(load_detector(detector_dir), model.names, Path(detector_dir))
        model = replace(model, detector=detector)
    model = with_overrides(model, overrides)
    if detector_dir is not None and model.config.search.detector_weight <= 0:
        raise SystemExit(f"--detector {detector_dir}: search.detector_weight is 0, so the "
                         "detector would not be read (--set search.detector_weight=W)")  # fmt: skip
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fold", action="append", default=[], help="TEMPLATE=MODEL_DIR")
    parser.add_argument("--also", action="append", default=[], help="NAME=MODEL_DIR")
    parser.add_argument("--supervised", action="append", default=[], help="TEMPLATE=DETECTOR_DIR")
    parser.add_argument("--detector", action="append", default=[],
                        help="TEMPLATE=DIR: the fold model with this detector")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--scenarios", default="rigid15,warp15")
    parser.add_argument("--out", default="/tmp/bench_loto")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="override for every model: search.adaptive_levels=true")  # fmt: skip
    args = parser.parse_args()
    set_threads(args.threads)
    out = Path(args.out)
    atlas = next(c for c in load_split("builtin:afids4", "train") if c.case_id == ATLAS_CASE)
    rows: list[dict] = []
    detectors = {t: load_detector(path) for t, path in _named(args.supervised)}
    fold_detectors = dict(_named(args.detector))
    if len(fold_detectors) < len(args.detector):
        raise SystemExit("--detector: one detector per template")
    unknown = set(fold_detectors) - {t for t, _ in _named(args.fold)}
    if unknown:
        raise SystemExit(f"--detector for a template without --fold: {', '.join(sorted(unknown))}")
    print("| left out | scenario | method | mean mm | median mm | max mm | > 10 mm | s/scan |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for template, fold_dir in _named(args.fold):
        cases = load_split(f"builtin:afids4/{template}", "test")
        methods = [("agent (left out)", fold_dir), *_named(args.also)]
        for scenario in args.scenarios.split(","):
            settings = LOTO_SCENARIOS[scenario]
            for index, (method, model_dir) in enumerate(methods):
                with torch.inference_mode():
                    tables = evaluate(
                        _model(model_dir, args.overrides,
                               fold_detectors.get(template) if index == 0 else None),
                        cases, atlas,
                        out / template / scenario / method,
                        rigid_trials=args.trials, max_rotation_deg=settings["max_rotation_deg"],
                        elastic_mm=settings["elastic_mm"], progress=False,
                        swelling=settings.get("swelling"),
                        supervised=detectors.get(template) if index == 0 else None,
                    )  # fmt: skip
                for row in tables["overall"]:
                    if row["method"] != "agent" and index > 0:
                        continue  # the baseline once per template and scenario
                    name = method if row["method"] == "agent" else row["method"]
                    per_landmark = {
                        r["landmark"]: r["mean_mm"]
                        for r in tables["per_landmark"]
                        if r["method"] == row["method"]
                    }
                    above = round(row["failure_rate_10mm"] * row["n"])
                    rows.append({**row, "template": template, "scenario": scenario, "method": name,
                                 "above_10mm": above, "model": model_dir,
                                 "detector": fold_detectors.get(template) if index == 0 else None,
                                 "overrides": args.overrides,
                                 "per_landmark_mean_mm": per_landmark})  # fmt: skip
                    print(
                        f"| {template} | {scenario} | {name} | {row['mean_mm']:.2f} | "
                        f"{row['median_mm']:.2f} | {row['max_mm']:.1f} | {above} of {row['n']} | "
                        f"{row['seconds_per_scan_median']:.2f} |",
                        flush=True,
                    )
                if index == 0 and template in detectors:
                    errors = ensemble_errors(out / template / scenario / method)
                    above = int((errors > 10).sum())
                    print(f"| {template} | {scenario} | {ENSEMBLE} | {errors.mean():.2f} | "
                          f"{np.median(errors):.2f} | {errors.max():.1f} | "
                          f"{above} of {errors.size} | - |", flush=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "loto.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    worst = sorted(
        ((np.mean([r["per_landmark_mean_mm"].get(k, np.nan) for r in rows
                   if r["method"] == "agent (left out)"]), k)
         for k in (rows[0]["per_landmark_mean_mm"] if rows else {})),
        reverse=True,
    )[:6]  # fmt: skip
    print("\nworst landmarks of the left-out models (mean over folds and scenarios, mm): "
          + ", ".join(f"{k} {v:.1f}" for v, k in worst))  # fmt: skip
    print()
    print_per_landmark(rows)


PER_LANDMARK_METHODS = (("agent (left out)", "agent"), ("supervised-heatmap", "supervised"),
                        ("affine-baseline", "affine"))  # fmt: skip


def print_per_landmark(rows: list[dict]) -> None:
    """Per landmark and left-out template: the mean error (mm, over the scenarios) of the
    left-out agent, the supervised detector (when given) and the affine baseline; the best of
    the three in bold."""
    templates = list(dict.fromkeys(r["template"] for r in rows))
    methods = [(m, short) for m, short in PER_LANDMARK_METHODS
               if any(r["method"] == m for r in rows)]  # fmt: skip
    if not rows or not methods:
        return
    scenarios = sorted({r["scenario"] for r in rows})
    print(f"per landmark, mean mm over {', '.join(scenarios)} "
          f"({' / '.join(short for _, short in methods)}):")  # fmt: skip
    print("| AFID | " + " | ".join(templates) + " |")
    print("|---|" + "---|" * len(templates))
    for landmark in rows[0]["per_landmark_mean_mm"]:
        cells = []
        for template in templates:
            means = []
            for method, _ in methods:
                values = [r["per_landmark_mean_mm"].get(landmark, np.nan) for r in rows
                          if r["template"] == template and r["method"] == method]  # fmt: skip
                means.append(float(np.mean(values)) if values else float("nan"))
            best = int(np.nanargmin(means))
            cells.append(" / ".join(f"**{v:.1f}**" if i == best else f"{v:.1f}"
                                    for i, v in enumerate(means)))  # fmt: skip
        print(f"| {landmark} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
