"""What the deformable loss can give at best: the velocity field optimised per pair, no network.

The learned deformable model (issue 12) predicts a stationary velocity field trained to minimise
``similarity + lambda * diffusion``. If optimising that same loss directly, pair by pair (Adam on
the field itself, scaling and squaring, the project's local NCC and diffusion terms), does not
bring the AFIDs of two different templates closer than the affine pre-alignment does, then no
network trained on that loss can either, at that grid spacing: the limit is the loss, not the
network or its training budget.

Pairs: the real training pairs and the real validation pair of the built-in pair set (T1w,
skull-stripped, as ``bench_deformable_gpu prepare``); the held-out test pair is never among
them (``build_pair_set`` keeps it out). TRE is the mean AFID distance (mm) in the fixed image's
frame, after the affine and after the optimised field.

    PYTHONPATH=src:. python -m benchmarks.bench_deformable_ceiling --spacing 4 \\
        --lambdas 1,10,100 --steps 150 [--window 9] [--pairs PAIRS.pt] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks._common import set_threads
from benchmarks.bench_deformable_gpu import _config
from medrl.registration.deformable.integrate import (
    DEFAULT_INTEGRATION_STEPS,
    integrate_velocity,
    warp,
    warp_points,
)
from medrl.registration.deformable.losses import (
    diffusion_loss,
    folding_share,
    landmark_distances_mm,
    local_ncc_loss,
)
from medrl.registration.deformable.pairs import Pair
from medrl.registration.deformable.train import prepare_pairs


def optimise_field(
    pair: Pair, lam: float, steps: int, lr: float, window: int
) -> tuple[torch.Tensor, float]:
    """(displacement in working voxels, seconds) after ``steps`` Adam steps on the velocity."""
    start = time.perf_counter()
    fixed, moving = pair.fixed, pair.moving
    velocity = torch.zeros((1, 3, *fixed.shape[2:]), requires_grad=True)
    optimiser = torch.optim.Adam([velocity], lr=lr)
    for _ in range(steps):
        displacement = integrate_velocity(velocity, DEFAULT_INTEGRATION_STEPS)
        loss = local_ncc_loss(fixed, warp(moving, displacement), window)
        loss = loss + lam * diffusion_loss(velocity)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return integrate_velocity(velocity, DEFAULT_INTEGRATION_STEPS), time.perf_counter() - start


def pair_tre_mm(pair: Pair, displacement: torch.Tensor | None) -> float:
    """Mean AFID distance (mm) of a pair after its affine and ``displacement`` (None: zero)."""
    points, target = pair.fixed_points_vox, pair.moving_points_vox
    if points is None or target is None:
        raise ValueError(f"pair {pair.name} has no landmarks")
    if displacement is not None:
        points = warp_points(points, displacement)
    return float(landmark_distances_mm(points, target, pair.spacing_mm).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spacing", type=float, default=4.0, help="working grid, mm")
    parser.add_argument("--lambdas", default="1,10,100")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.05, help="Adam on the velocity (voxels)")
    parser.add_argument("--window", type=int, default=9, help="local NCC window, voxels")
    parser.add_argument("--pairs", type=Path, help="a PairSet saved by bench_deformable_gpu")
    parser.add_argument("--cache", type=Path, default=Path("runs/deformable_ceiling"))
    parser.add_argument("--only", default="", help="keep pairs whose name contains this")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    lambdas = [float(x) for x in args.lambdas.split(",") if x]
    if args.pairs is not None:
        pairs = torch.load(args.pairs, weights_only=False)
    else:
        pairs = prepare_pairs(_config(args.spacing, 1.0, True, None), args.cache / "affines")
    chosen = [
        (role, p)
        for role, group in (("train", pairs.train_real), ("val", pairs.val))
        for p in group
        if p.kind == "real" and p.fixed_points_vox is not None and args.only in p.name
    ]
    print(
        "| pair (moving -> fixed) | role | affine TRE mm | "
        + " | ".join(f"lambda {lam:g}" for lam in lambdas)
        + " |",
        flush=True,
    )
    print("|---|---|---:|" + "---:|" * len(lambdas), flush=True)
    ratios: dict[float, list[float]] = {lam: [] for lam in lambdas}
    for role, pair in chosen:
        before = pair_tre_mm(pair, None)
        cells = []
        for lam in lambdas:
            displacement, seconds = optimise_field(pair, lam, args.steps, args.lr, args.window)
            after = pair_tre_mm(pair, displacement)
            ratios[lam].append(after / before)
            folds = 100 * folding_share(displacement)
            cells.append(f"{after:.2f} ({folds:.2f} % fold, {seconds:.0f} s)")
        print(f"| {pair.name} | {role} | {before:.2f} | " + " | ".join(cells) + " |", flush=True)
    print(
        "median TRE after / affine: "
        + ", ".join(f"lambda {lam:g}: {statistics.median(r):.3f}" for lam, r in ratios.items() if r)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
