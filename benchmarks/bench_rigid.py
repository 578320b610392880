"""Rigid registration by initial misalignment: the agent against SimpleITK's rigid registration.

Liao et al. (AAAI 2017) compare the share of successful registrations as the initial
misalignment grows; this is that table on brains the agent never saw. Test pairs (moving ->
fixed) all involve MNI305, which the shipped model's training left out
(``builtin:afids4/MNI305``): MNI305 with and without skull, and MNI305 against the three other
templates in T1w, T2w and PD. Validation pairs (``--split val``, for choosing settings) are
pairs of the training templates, under other misalignments.

The moving image is misaligned by rewriting its header (a rotation about a random axis through
its centre, by an angle drawn uniformly in the bin, and a translation in a random direction of
4/3 mm per degree: 40 mm at 30 degrees, 60 mm at 45), so nothing is resampled or cropped. The
true fixed -> moving map is that move after the least-squares rigid fit of the two brains'
AFIDs (the identity for one anatomy). TRE: the mean over the fixed image's 32 AFIDs of the
distance between where the found and the true transform send them; success: TRE < 2 mm.

Rows: ``agent_search`` (the agent's search alone), ``agent`` (``medrl register --method
agent``: the search, then SimpleITK's rigid refinement from where it stopped),
``simpleitk_rigid`` (Mattes MI, moments initialisation, 3 levels) and, with
``--landmark-model DIR``, ``landmarks`` (``medrl register --method landmarks``: the search,
then the robust rigid fit of the landmarks that model finds in both images). The test pairs
all involve MNI305, so the landmark model must not have seen it: the left-one-template-out
fold ``medrl train --config afids4 --set train.datalist=builtin:afids4/MNI305``, not the
shipped model.

    PYTHONPATH=. python -m benchmarks.bench_rigid [--model DIR] [--trials 4] [--split test] \
        [--landmark-model runs/loto/f_MNI305/model] [--landmark-mirror]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medrl.baselines.registration import map_points_lps, rigid_registration
from medrl.data.afids4 import afids4_datalist
from medrl.data.datalist import Case, load_case
from medrl.data.scenarios import RigidTransform
from medrl.io.images import Volume
from medrl.registration.agent import agent_registration
from medrl.registration.base import RegisterOptions
from medrl.registration.landmark_rigid import landmark_rigid_registration
from medrl.registration.transforms import LPS_RAS_4X4, fit_rigid_ras, move_header

TEST_PAIRS = (
    ("MNI305_T1w", "MNI305_T1w_brain"),
    ("MNI305_T1w_brain", "MNI305_T1w"),
    ("MNI305_T1w", "MNI152NLin2009cAsym_T1w"),
    ("MNI305_T1w", "MNI152Lin_T2w"),
    ("MNI305_T1w_brain", "MNI152NLin6Asym_T1w_brain"),
    ("MNI152Lin_PD", "MNI305_T1w"),
)
VAL_PAIRS = (
    ("MNI152Lin_T2w", "MNI152Lin_T1w"),
    ("MNI152NLin2009cAsym_T1w", "MNI152NLin6Asym_T1w_brain"),
    ("MNI152Lin_PD_brain", "MNI152NLin2009cAsym_T2w"),
    ("MNI152NLin6Asym_T1w", "MNI152Lin_T1w_brain"),
)
BINS_DEG = ((0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 45.0))
MM_PER_DEG = 4.0 / 3.0
SUCCESS_MM = 2.0
SEEDS = {"test": 9000, "val": 7000}
RAS_TO_LPS = LPS_RAS_4X4[:3, :3]


def misalign(
    volume: Volume, seed: int, low_deg: float, high_deg: float
) -> tuple[Volume, np.ndarray]:
    """The volume moved rigidly by rewriting its header, and the move (4, 4) in RAS."""
    rng = np.random.default_rng(seed)
    angle = float(rng.uniform(low_deg, high_deg))
    axis, direction = rng.normal(size=3), rng.normal(size=3)
    rotation = RigidTransform(axis / np.linalg.norm(axis), angle, np.zeros(3)).rotation_ras()
    shift = direction / np.linalg.norm(direction) * angle * MM_PER_DEG
    centre = volume.index_to_world(((np.asarray(volume.shape_xyz) - 1) / 2)[None], "RAS")[0]
    move = np.eye(4)
    move[:3, :3] = rotation
    move[:3, 3] = centre + shift - rotation @ centre
    label = f"{volume.source} (moved {angle:.1f} deg, {np.linalg.norm(shift):.1f} mm)"
    return move_header(volume, move, label), move


def truth_map(fixed: Case, moving: Case) -> tuple[np.ndarray, np.ndarray]:
    """The fixed image's AFIDs (K, 3) and the least-squares rigid map (4, 4) onto the moving
    image's (RAS)."""
    assert fixed.landmarks is not None and moving.landmarks is not None
    names = [n for n in fixed.landmarks.names if n in moving.landmarks.names]
    points = fixed.landmarks.subset(names).points_ras
    return points, fit_rigid_ras(points, moving.landmarks.subset(names).points_ras)


def tre_mm(transform, points_ras: np.ndarray, truth_ras: np.ndarray) -> float:
    found = map_points_lps(transform, points_ras @ RAS_TO_LPS) @ RAS_TO_LPS
    return float(np.linalg.norm(found - truth_ras, axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="rigid model (default: shipped)")
    parser.add_argument("--trials", type=int, default=4, help="misalignments per pair and bin")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true", help="the agent only")
    parser.add_argument("--landmark-model", type=Path, default=None,
                        help="add the landmarks row with this landmark model")  # fmt: skip
    parser.add_argument("--landmark-mirror", action="store_true",
                        help="the landmarks row with search.mirror (medrl register "
                        "--landmark-mirror)")  # fmt: skip
    parser.add_argument("--landmarks-only", action="store_true",
                        help="only the landmarks row (the rest ignores its model)")  # fmt: skip
    parser.add_argument("--csv", type=Path, default=None, help="write every registration here")
    args = parser.parse_args(argv)
    if args.landmarks_only and args.landmark_model is None:
        parser.error("--landmarks-only needs --landmark-model")
    torch.set_num_threads(args.threads)
    specs = {spec.case_id: spec for spec in afids4_datalist()}
    pairs = TEST_PAIRS if args.split == "test" else VAL_PAIRS
    cases = {name: load_case(specs[name]) for pair in pairs for name in pair}
    options = RegisterOptions(
        model_dir=args.model, landmark_model_dir=args.landmark_model, threads=args.threads,
        landmark_mirror=args.landmark_mirror,
    )  # fmt: skip
    rows = []
    for p, (moving_id, fixed_id) in enumerate(pairs):
        fixed, moving = cases[fixed_id], cases[moving_id]
        points, anatomy = truth_map(fixed, moving)
        for b, (low, high) in enumerate(BINS_DEG):
            for trial in range(args.trials):
                seed = SEEDS[args.split] + 100 * p + 10 * b + trial
                moved, move = misalign(moving.volume, seed, low, high)
                truth = points @ (move @ anatomy)[:3, :3].T + (move @ anatomy)[:3, 3]
                before = float(np.linalg.norm(points - truth, axis=1).mean())
                methods = ["agent_search", "agent"]
                methods += [] if args.no_baseline else ["simpleitk_rigid"]
                methods += [] if args.landmark_model is None else ["landmarks"]
                methods = ["landmarks"] if args.landmarks_only else methods
                for method in methods:
                    started = time.perf_counter()
                    if method == "landmarks":
                        transform = landmark_rigid_registration(
                            fixed.volume, moved, options
                        ).transform
                    elif method.startswith("agent"):
                        refine = method == "agent"
                        outcome = agent_registration(fixed.volume, moved, options, refine)
                        transform = outcome.transform
                    else:
                        transform = rigid_registration(fixed.volume, moved, seed).transform
                    seconds = time.perf_counter() - started
                    error = tre_mm(transform, points, truth)
                    rows.append({
                        "pair": f"{moving_id}->{fixed_id}", "bin_deg": f"{low:g}-{high:g}",
                        "trial": trial, "method": method, "tre_before_mm": round(before, 2),
                        "tre_mm": round(error, 3), "success": error < SUCCESS_MM,
                        "seconds": round(seconds, 2),
                    })  # fmt: skip
                    print(f"{moving_id} -> {fixed_id} {low:g}-{high:g} deg #{trial} {method}: "
                          f"TRE {before:.1f} -> {error:.2f} mm ({seconds:.1f} s)",
                          file=sys.stderr, flush=True)  # fmt: skip
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"\n{args.split} pairs: {len(pairs)}, {args.trials} misalignments per pair and bin\n")
    print("| misalignment | method | success (TRE < 2 mm) | TRE median / mean mm | s per pair |")
    print("|---|---|---|---|---|")
    for low, high in [*BINS_DEG, (0.0, 45.0)]:
        label = f"{low:g}-{high:g}" if high != 45.0 or low != 0.0 else "all"
        for method in dict.fromkeys(r["method"] for r in rows):
            chosen = [r for r in rows if r["method"] == method
                      and (label == "all" or r["bin_deg"] == label)]  # fmt: skip
            tre = np.array([r["tre_mm"] for r in chosen])
            seconds = np.median([r["seconds"] for r in chosen])
            share = np.mean([r["success"] for r in chosen])
            print(f"| {label} deg | {method} | {100 * share:.0f} % ({len(chosen)}) | "
                  f"{np.median(tre):.2f} / {tre.mean():.2f} | {seconds:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
