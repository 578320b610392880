"""The box agent against the affine-atlas baseline on the 32 CIT168 nuclei (BENCHMARKS.md).

Two test sets, each a `medrl evaluate` run written under --out:

* ``warped``: the training template (MNI152NLin2009cAsym T1w and T2w) moved by ``--trials``
  random rigid transforms (up to 15 degrees, 20 mm; seeds 1000...) *and* warped by a smooth
  non-affine field of ``--elastic-mm`` (the label maps warped exactly with the images; true
  boxes recomputed from them). The warps and moves are not those of training (augmentation
  seeds) nor of validation (seeds 5000...).
* ``mni6``: the held-out MNI152NLin6Asym T1w under the same rigid moves, its boxes from the
  CIT168 atlas carried over by MNI coordinates (approximate: the atlas exists on
  MNI152NLin2009cAsym only).

Prints the overall table and the groups the targets name (large basal ganglia; small nuclei),
with the seconds per scan of the agent's search.

PYTHONPATH=. python -m benchmarks.bench_boxes [--model DIR] [--threads 2] [--out DIR]
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
from medrl.evaluation_boxes import AGENT, BASELINE, NAVARRO_2020, evaluate_boxes
from medrl.models import default_model_dir

GROUPS = {
    "caudate, putamen, GPe, GPi (target >= 0.75)": (
        "Caudate", "Putamen", "Globus Pallidus externa", "Globus Pallidus interna",
    ),
    "red nucleus, substantia nigra, STN (target >= 0.5)": (
        "Red Nucleus", "Substantia Nigra pars compacta", "Substantia-Nigra-pars-reticulata",
        "Subthalamic Nucleus",
    ),
}  # fmt: skip


def _group_rows(raw: list[dict], method: str, parts: tuple[str, ...]) -> list[float]:
    return [r["iou"] for r in raw if r["method"] == method and r["structure"][2:] in parts]


def report(out: Path, title: str) -> None:
    overall = {r["method"]: r for r in json.loads((out / "boxes_overall.json").read_text())}
    raw = json.loads((out / "boxes_raw.json").read_text())
    print(f"\n### {title}\n")
    print("| method | mean IoU | median IoU | IoU > 0.5 | centre mm (median) | wall mm (mean) "
          "| s per scan |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method in (AGENT, BASELINE):
        r = overall[method]
        print(
            f"| {method} | {r['iou_mean']:.3f} | {r['iou_median']:.3f} | "
            f"{r['share_iou_over_0_5']:.2f} | {r['centre_mm_median']:.2f} | "
            f"{r['wall_mm_mean']:.2f} | {r['seconds_per_scan_median']:.2f} |"
        )
    print(
        f"| Navarro et al. 2020 (CT organs, other data) | {NAVARRO_2020['iou_mean']} | | | "
        f"{NAVARRO_2020['centre_mm_median']} | | |"
    )
    print("\n| structures | agent mean IoU | baseline mean IoU |")
    print("|---|---:|---:|")
    for group, parts in GROUPS.items():
        agent = np.mean(_group_rows(raw, AGENT, parts))
        base = np.mean(_group_rows(raw, BASELINE, parts))
        print(f"| {group} | {agent:.3f} | {base:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--elastic-mm", type=float, default=3.0)
    parser.add_argument("--out", default="runs/bench_boxes")
    parser.add_argument("--skip-mni6", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model or default_model_dir("box"), task="box")
    atlas = load_split("builtin:afids", "train")[0]
    out = Path(args.out)
    with torch.inference_mode():
        evaluate_boxes(
            model,
            load_split("builtin:afids", "train"),
            atlas,
            out / "warped",
            rigid_trials=args.trials,
            elastic_mm=args.elastic_mm,
        )
        report(out / "warped", f"MNI152NLin2009cAsym T1w+T2w, rigid + {args.elastic_mm:g} mm warp")
        if not args.skip_mni6:
            evaluate_boxes(
                model, load_split("builtin:afids", "test"), atlas, out / "mni6", args.trials
            )
            report(out / "mni6", "MNI152NLin6Asym, rigid moves, atlas by MNI coordinates")


if __name__ == "__main__":
    main()
