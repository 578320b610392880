"""The plane agent (MSP, AC-PC) against the affine baseline on held-out templates
(BENCHMARKS.md).

Test templates: MNI152NLin6Asym T1w (``builtin:afids``, test split) and the SPM12 averages
(``builtin:spm12``: MNI152Lin T1w, T2w, PD and MNI305 T1w), each with its own AFIDs, none seen
in training (MNI152NLin2009cAsym T1w/T2w). Scenarios, each a ``medrl evaluate`` run written
under --out: ``rigid15`` (``--trials`` random rigid moves up to 15 degrees and 20 mm, seeds
1000...), ``rigid30`` (up to 30 degrees) and ``warp15`` (up to 15 degrees plus a smooth 3 mm
non-affine warp). The baseline carries the MNI152NLin2009cAsym AFIDs by affine registration
and fits the planes to them.

PYTHONPATH=. python -m benchmarks.bench_planes [--model DIR] [--spm12-dir DIR] [--out DIR]

``--spm12-dir`` (default ``../shared/data/templates`` when it exists) is where the SPM12 files
are taken from instead of downloading them (``medrl.data.spm12``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import set_threads
from medrl.agents.checkpoint import load_model
from medrl.data.sources import load_split
from medrl.data.spm12 import fetch_spm12
from medrl.evaluation_planes import ALANSARY_2018, evaluate_planes
from medrl.models import default_model_dir

SCENARIOS = {
    "rigid15": {"max_rotation_deg": 15.0, "elastic_mm": 0.0},
    "rigid30": {"max_rotation_deg": 30.0, "elastic_mm": 0.0},
    "warp15": {"max_rotation_deg": 15.0, "elastic_mm": 3.0},
}
SHARED_SPM12 = Path(__file__).resolve().parents[2] / "shared" / "data" / "templates"


def report(rows: list[dict], title: str) -> None:
    print(f"\n### {title}\n")
    print("| template | plane | method | angle ° mean / median / max | distance mm mean / "
          "median / max | within 2° & 2 mm | s per scan |")  # fmt: skip
    print("|---|---|---|---|---|---:|---:|")
    for row in rows:
        print(
            f"| {row['template']} | {row['plane']} | {row['method']} | "
            f"{row['angle_deg_mean']:.2f} / {row['angle_deg_median']:.2f} / "
            f"{row['angle_deg_max']:.2f} | {row['distance_mm_mean']:.2f} / "
            f"{row['distance_mm_median']:.2f} / {row['distance_mm_max']:.2f} | "
            f"{100 * row['share_within_2deg_2mm']:.0f} % | "
            f"{row['seconds_per_scan_median']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--spm12-dir", default=str(SHARED_SPM12) if SHARED_SPM12.is_dir() else None)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", default="runs/bench_planes")
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model or default_model_dir("plane"), task="plane")
    atlas = load_split("builtin:afids", "train")[0]
    fetch_spm12(args.spm12_dir)
    templates = {
        "MNI152NLin6Asym": load_split("builtin:afids", "test"),
        **{case.case_id: [case] for case in load_split("builtin:spm12", "test")},
    }
    out = Path(args.out)
    everything = []
    for scenario in args.scenarios.split(","):
        settings = SCENARIOS[scenario]
        rows = []
        for template, cases in templates.items():
            with torch.inference_mode():
                tables = evaluate_planes(
                    model, cases, atlas, out / scenario / template, rigid_trials=args.trials,
                    max_rotation_deg=settings["max_rotation_deg"],
                    elastic_mm=settings["elastic_mm"], progress=False,
                )  # fmt: skip
            for row in tables["planes"]:
                rows.append({"template": template, "scenario": scenario, **row})
        report(rows, f"{scenario}: {settings}")
        everything += rows
    agent = [r for r in everything if r["method"] == "agent"]
    worst_angle = max(r["angle_deg_max"] for r in agent)
    worst_distance = max(r["distance_mm_max"] for r in agent)
    print(f"\nagent worst case over all: {worst_angle:.2f}° / {worst_distance:.2f} mm; "
          f"Alansary et al. 2018 (other data): {ALANSARY_2018}")  # fmt: skip
    seconds = float(np.median([r["seconds_per_scan_median"] for r in agent]))
    print(f"agent median s per scan: {seconds:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_planes.json").write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
