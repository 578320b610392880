"""The deformable lambda grid (and the learned-lambda run) side by side on one GPU machine.

A GPU machine without SimpleITK cannot build the training pairs (the affine pre-alignment and
the resampling use it), so the work is split:

1. here: ``prepare`` builds the built-in PairSet (T1w, skull-stripped, as
   ``medrl.registration.deformable.train.prepare_pairs``) and saves it with ``torch.save``;
2. there: ``train`` loads it and trains the learned-lambda run (unrolled hypergradient), with
   ``--amortised LOW,HIGH`` one lambda-conditioned run, and one run per fixed lambda, all at
   once (one process each; the same command runs on the CPU), each for ``--minutes`` of wall
   time (or ``--steps``); the model folders land in ``OUT/<run>/model``;
3. here: evaluate the model folders with ``bench_deformable.py --models``.

    PYTHONPATH=src:. python -m benchmarks.bench_deformable_gpu prepare --spacing 4 \\
        --out .defgpu/pairs4.pt
    # on the GPU machine (carrying .defgpu):
    PYTHONPATH=benchmarks/gpu_stand_ins:src:. python3 -m benchmarks.bench_deformable_gpu \\
        train --pairs .defgpu/pairs4.pt --out /tmp/dg --minutes 2.3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

GRID = (1.0, 10.0, 100.0, 1000.0)


def _config(
    spacing_mm: float,
    lam: float,
    learn: bool,
    minutes: float | None,
    steps: int | None = None,
    lambda_lr: float | None = None,
    lambda_range: tuple[float, float] | None = None,
) -> Any:
    from dataclasses import replace

    from medrl.registration.deformable.bilevel import BilevelSettings
    from medrl.registration.deformable.network import NetworkSettings
    from medrl.registration.deformable.train import TrainConfig

    bilevel = BilevelSettings()
    if lambda_lr is not None:
        bilevel = replace(bilevel, lambda_lr=lambda_lr)
    return TrainConfig(
        working_spacing_mm=spacing_mm,
        steps=steps or (100_000 if minutes else 3000),
        bilevel=bilevel,
        variants=("_brain",),
        contrasts=("T1w",),
        initial_lambda=lam,
        learn_lambda=learn,
        network=NetworkSettings(lambda_range=lambda_range),
        max_minutes=minutes,
        checkpoint_every=200,
        log_every=50,
    )


def prepare(spacing_mm: float, out: Path) -> None:
    from medrl.registration.deformable.train import prepare_pairs

    pairs = prepare_pairs(_config(spacing_mm, 1.0, True, None), out.parent / "affines")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pairs, out)
    print(f"saved {out} ({out.stat().st_size / 2**20:.1f} MiB): {pairs.facts}")


def _train_one(
    job: tuple[str, float, bool, argparse.Namespace, str, tuple[float, float] | None],
) -> dict[str, Any]:
    name, lam, learn, args, device, lambda_range = job
    torch.set_num_threads(args.threads)
    from medrl.registration.deformable.train import train

    pairs = torch.load(args.pairs, weights_only=False)
    run = Path(args.out) / name
    run.mkdir(parents=True, exist_ok=True)
    config = _config(
        pairs.spacing_mm, lam, learn, args.minutes, args.steps, args.lambda_lr, lambda_range
    )
    with open(run / "train.log", "a", encoding="utf-8") as log:
        result = train(config, run, pairs=pairs, log=log, device=device)
    return {"run": name, "lambda": result.lam, "steps": result.steps,
            "seconds": result.seconds, "validation": result.val}  # fmt: skip


def train_all(args: argparse.Namespace, grid: tuple[float, ...]) -> list[dict]:
    if not Path(args.pairs).is_file():
        raise SystemExit(f"{args.pairs}: no prepared pairs (run the prepare step first)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    jobs = [("learned", 1.0, True, args, device, None)] if args.learned else []
    if args.amortised:
        low, high = (float(v) for v in args.amortised.split(","))
        jobs.append(("amortised", math.sqrt(low * high), True, args, device, (low, high)))
    jobs += [(f"lambda_{lam:g}", lam, False, args, device, None) for lam in grid]
    out = Path(args.out)
    start = time.perf_counter()
    with get_context("spawn").Pool(len(jobs)) as pool:
        rows = pool.map(_train_one, jobs)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"device": device, "wall_s": time.perf_counter() - start, "runs": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--spacing", type=float, default=4.0, help="working grid, mm")
    p.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--pairs", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--minutes", type=float, default=2.3, help="wall time per run")
    t.add_argument("--lambdas", default=",".join(f"{v:g}" for v in GRID), help="'' for none")
    t.add_argument("--no-learned", dest="learned", action="store_false", help="no unrolled run")
    t.add_argument(
        "--amortised",
        default="",
        metavar="LOW,HIGH",
        help="also train one lambda-conditioned network over this lambda range and learn "
        "lambda through it (medrl.registration.deformable.amortised)",
    )
    t.add_argument("--steps", type=int, default=None, help="default: as many as --minutes allow")
    t.add_argument("--lambda-lr", type=float, default=None, help="default: BilevelSettings'")
    t.add_argument("--threads", type=int, default=2, help="torch threads per run")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.spacing, args.out)
    else:
        grid = tuple(float(v) for v in args.lambdas.split(",") if v)
        for row in train_all(args, grid):
            print(json.dumps(row, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
