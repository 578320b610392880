"""The plane agent (MSP, AC-PC) against the affine baseline on held-out templates
(BENCHMARKS.md); templates and scenarios: :mod:`benchmarks._family` (``--trials`` moves per
template and scenario). The baseline fits the planes to the carried AFIDs.

PYTHONPATH=. python -m benchmarks.bench_planes [--model DIR] [--spm12-dir DIR] [--out DIR]
    [--set task.plane_acpc_landmarks=""]

``--spm12-dir`` (default ``../shared/data/templates`` when it exists) is where the SPM12 files
are taken from instead of downloading them (``medrl.data.spm12``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks._common import set_threads
from benchmarks._family import add_family_arguments, run_scenarios
from medrl.agents.checkpoint import load_model, with_overrides
from medrl.evaluation_planes import ALANSARY_2018, evaluate_planes
from medrl.models import default_model_dir


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
    add_family_arguments(parser, "runs/bench_planes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a search or task setting of the model")  # fmt: skip
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model or default_model_dir("plane"), task="plane")
    model = with_overrides(model, args.set, "--set")
    everything = run_scenarios(evaluate_planes, "planes", model, args, report)
    agent = [r for r in everything if r["method"] == "agent"]
    worst_angle = max(r["angle_deg_max"] for r in agent)
    worst_distance = max(r["distance_mm_max"] for r in agent)
    print(f"\nagent worst case over all: {worst_angle:.2f}° / {worst_distance:.2f} mm; "
          f"Alansary et al. 2018 (other data): {ALANSARY_2018}")  # fmt: skip
    seconds = float(np.median([r["seconds_per_scan_median"] for r in agent]))
    print(f"agent median s per scan: {seconds:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_planes.json").write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
