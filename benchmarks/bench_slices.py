"""The slice agent (the slices through AC and PC along each scan's own slice axis) against the
affine baseline on held-out templates (BENCHMARKS.md); templates and scenarios:
:mod:`benchmarks._family` (``--trials`` moves per template and scenario). The baseline takes
the slice through the carried AFID. Targets (issue 10): mean distance <= 1.5 mm, none above
5 mm, on every template.

PYTHONPATH=. python -m benchmarks.bench_slices [--model DIR] [--spm12-dir DIR] [--out DIR]

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
from medrl.agents.checkpoint import load_model
from medrl.evaluation_slices import evaluate_slices
from medrl.models import default_model_dir

AFID_NAMES = {"1": "AC", "2": "PC"}


def report(rows: list[dict], title: str) -> None:
    print(f"\n### {title}\n")
    print("| template | target | method | distance mm mean / median / max | over 5 mm | "
          "s per scan |")  # fmt: skip
    print("|---|---|---|---|---:|---:|")
    for row in rows:
        target = AFID_NAMES.get(row["target"], row["target"])
        print(
            f"| {row['template']} | {target} | {row['method']} | "
            f"{row['distance_mm_mean']:.2f} / {row['distance_mm_median']:.2f} / "
            f"{row['distance_mm_max']:.2f} | {100 * row['failure_rate_over_5mm']:.0f} % | "
            f"{row['seconds_per_scan_median']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    add_family_arguments(parser, "runs/bench_slices")
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model or default_model_dir("slice"), task="slice")
    everything = run_scenarios(evaluate_slices, "slices", model, args, report)
    agent = [r for r in everything if r["method"] == "agent"]
    print(f"\nagent worst mean: {max(r['distance_mm_mean'] for r in agent):.2f} mm, worst case: "
          f"{max(r['distance_mm_max'] for r in agent):.2f} mm")  # fmt: skip
    seconds = float(np.median([r["seconds_per_scan_median"] for r in agent]))
    print(f"agent median s per scan: {seconds:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_slices.json").write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
