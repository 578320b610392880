"""The plane model on validation moves of its training scans (MNI152NLin2009cAsym T1w and T2w,
never a test template), with and without AC-PC locators (``task.plane_acpc_landmarks``,
``task.plane_acpc_template``): the
moves on which a plane setting is chosen before the test templates are searched (BENCHMARKS.md).

PYTHONPATH=. python -m benchmarks.bench_plane_validation [--model DIR] \
    [--locator NAME=DIR ...] [--template NAME=SETTING ...] [--trials 3] [--threads 2]

Scenarios (3 moves per contrast each): rigid up to 15 degrees (seeds 77...), up to 30 degrees
(seeds 177...), up to 15 degrees plus a smooth 3 mm warp (seeds 500...). Prints the mean AC-PC
and MSP angle and distance per scenario and variant.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from benchmarks._common import set_threads
from medrl.agents.checkpoint import load_model, with_overrides
from medrl.agents.search import search
from medrl.data.datalist import Case
from medrl.data.scenarios import scenario_scans
from medrl.data.sources import load_split
from medrl.geometry.planes import plane_angle_deg, plane_distance_mm
from medrl.models import default_model_dir

VALIDATION = {"rigid15": (15.0, 0.0, 77), "rigid30": (30.0, 0.0, 177), "warp15": (15.0, 3.0, 500)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--locator", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--template", action="append", default=[], metavar="NAME=SETTING",
                        help="a variant with task.plane_acpc_template=SETTING")  # fmt: skip
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    base = load_model(args.model or default_model_dir("plane"), task="plane")
    variants = {"agent": base}
    for item in args.locator:
        name, folder = item.split("=", 1)
        variants[name] = with_overrides(base, [f"task.plane_acpc_landmarks={folder}"], "--locator")
    for item in args.template:
        name, setting = item.split("=", 1)
        variants[name] = with_overrides(base, [f"task.plane_acpc_template={setting}"], "--template")
    cases = load_split("builtin:afids", "train")
    names = tuple(cases[0].landmarks.names)  # type: ignore[union-attr]
    print("| scenario | variant | MSP angle ° / mm | AC-PC angle ° mean / max | AC-PC mm mean | "
          "s per scan | kept the agent's AC-PC (warnings) |")  # fmt: skip
    print("|---|---|---|---|---|---:|---:|")
    for scenario, (rotation_deg, elastic_mm, seed) in VALIDATION.items():
        scans = scenario_scans(cases, args.trials, rotation_deg, 20.0, seed, False, elastic_mm,
                               landmark_names=names)  # fmt: skip
        for variant, model in variants.items():
            errors, seconds, warned = [], [], 0
            for scan in scans:
                case = Case(scan.case_id, scan.volume, scan.landmarks, "test")
                truth = model.task.target_table([case], model.names).poses[0]
                started = time.perf_counter()
                with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    estimate = search(model, scan.volume).estimate
                seconds.append(time.perf_counter() - started)
                warned += len(caught)
                errors.append([float(f(estimate[row], truth[row])[0]) for row in (0, 1)
                               for f in (plane_angle_deg, plane_distance_mm)])  # fmt: skip
            e = np.asarray(errors)
            print(f"| {scenario} | {variant} | {e[:, 0].mean():.2f} / {e[:, 1].mean():.2f} | "
                  f"{e[:, 2].mean():.2f} / {e[:, 2].max():.2f} | {e[:, 3].mean():.2f} | "
                  f"{np.median(seconds):.2f} | {warned} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
