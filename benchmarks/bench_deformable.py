"""Learned deformable registration (issue 12): lambda learned by bilevel optimisation against a
grid search, then tested on pairs never used for training or for choosing lambda.

Trains on the built-in brains (:mod:`medrl.registration.deformable.pairs`: cross-template pairs
of ``builtin:afids4`` and synthetic warps of them) once with lambda learned (bilevel) and once
per fixed lambda of ``--lambdas`` (the same inner budget each), and reports:

1. lambda selection: validation loss (landmark TRE + Dice on the validation pairs) of every
   fixed lambda, the learned lambda, and the training seconds of each;
2. the held-out real pair MNI305 -> MNI152NLin2009cAsym (T1w, with and without skull): AFIDs
   TRE of the affine baseline and of the deformable models (learned, best of the grid),
   folding share, seconds per pair (affine included);
3. synthetic held-out warps (``"test"`` seeds) of MNI152NLin2009cAsym T1w on a 2 mm grid:
   Dice and HD95 of the CIT168 labels (exact truth), landmark TRE, folding share, seconds;
4. inference seconds of the network on the 2 mm working grid of that pair (same architecture).

Writes ``bench_deformable.json`` into ``--out``; the runs (checkpoints, models) go below it and
are resumed when the benchmark is started again with the same settings.

PYTHONPATH=. python -m benchmarks.bench_deformable --quick            # ~5-10 min on 1 CPU
PYTHONPATH=. python -m benchmarks.bench_deformable --out runs/deformable --steps 3000 \\
    [--spacing 2] [--lambdas 0.1,1,10,100] [--device cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks._common import set_threads
from medrl.baselines.registration import affine_registration
from medrl.data.afids4 import afids4_datalist
from medrl.data.datalist import load_case
from medrl.io.images import Volume
from medrl.metrics.registration import jacobian_determinant, jacobian_stats
from medrl.registration.base import RegisterOptions
from medrl.registration.classical import bspline
from medrl.registration.deformable.bilevel import BilevelSettings, GridRow, grid_search
from medrl.registration.deformable.evaluation import (
    dice_by_label,
    hd95_by_label,
    landmark_tre_mm,
)
from medrl.registration.deformable.frames import working_grid
from medrl.registration.deformable.method import deformable_fields, register_deformable
from medrl.registration.deformable.model_folder import DeformableModel
from medrl.registration.deformable.network import VelocityUNet
from medrl.registration.deformable.pairs import (
    SYNTHETIC_TEST_TEMPLATE,
    TEST_TEMPLATE_PAIR,
    carried_cit168,
)
from medrl.registration.deformable.synthetic import apply_warp, random_warp, seed_for
from medrl.registration.deformable.train import TrainConfig, TrainResult, train, with_lambda
from medrl.registration.transforms import is_displacement_field

QUICK = {
    "working_spacing_mm": 6.0,
    "steps": 40,
    "lambdas": (0.1, 1.0, 10.0),
    "variants": ("_brain",),
    "contrasts": ("T1w",),
    "train_template_pairs": (
        ("MNI152NLin2009cAsym", "MNI152NLin6Asym"),
        ("MNI152Lin", "MNI305"),
    ),
    "val_synthetic_pairs": 2,
    "synthetic_test_pairs": 2,
    "bilevel": BilevelSettings(outer_every=10, unroll_steps=2),
}


def _config(args: argparse.Namespace) -> tuple[TrainConfig, tuple[float, ...], int]:
    """The training config, the grid of lambdas and the number of synthetic test pairs."""
    if args.quick:
        config = TrainConfig(
            seed=args.seed,
            working_spacing_mm=args.spacing or QUICK["working_spacing_mm"],
            steps=args.steps or QUICK["steps"],
            variants=QUICK["variants"],
            contrasts=QUICK["contrasts"],
            train_template_pairs=QUICK["train_template_pairs"],
            val_synthetic_pairs=QUICK["val_synthetic_pairs"],
            bilevel=QUICK["bilevel"],
            log_every=10,
            checkpoint_every=20,
        )
        lambdas = QUICK["lambdas"]
        synthetic_tests = QUICK["synthetic_test_pairs"]
    else:
        config = TrainConfig(
            seed=args.seed,
            working_spacing_mm=args.spacing or 2.0,
            steps=args.steps or 3000,
            similarity=args.similarity,
            crop_vox=args.crop,
            max_minutes=args.max_minutes,
        )
        lambdas = (0.1, 1.0, 10.0, 100.0)
        synthetic_tests = args.synthetic_tests
    if args.lambdas:
        lambdas = tuple(float(v) for v in args.lambdas.split(","))
    return config, lambdas, synthetic_tests


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stats(values: np.ndarray | list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return {"mean": math.nan, "median": math.nan, "max": math.nan}
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "max": float(array.max()),
    }


# ----------------------------------------------------------------------------- training
def train_all(
    config: TrainConfig, lambdas: tuple[float, ...], out: Path, device: str
) -> tuple[TrainResult, list[GridRow]]:
    from medrl.registration.deformable.train import prepare_pairs

    started = time.perf_counter()
    pairs = prepare_pairs(config, out / "affines")
    _log(
        f"pairs ready in {time.perf_counter() - started:.1f} s: "
        f"{len(pairs.train_real)} real training pairs, {len(pairs.train_sources)} synthetic "
        f"sources, {len(pairs.val)} validation pairs ({', '.join(p.name for p in pairs.val)})"
    )
    _log(f"== bilevel: lambda learned from {config.initial_lambda}")
    learned = train(config, out / "learned", pairs, device=device)

    def train_one(lam: float) -> tuple[float, dict[str, Any]]:
        _log(f"== grid search: lambda {lam}")
        result = train(with_lambda(config, lam), out / f"lambda_{lam:g}", pairs, device=device)
        return result.val["loss"], {"result": result}

    rows = grid_search(lambdas, train_one)
    return learned, rows


# ---------------------------------------------------------------------------- test pairs
def _specs() -> dict[str, Any]:
    return {spec.case_id: spec for spec in afids4_datalist()}


def evaluate_real(models: dict[str, Path], seed: int, threads: int, device: str) -> list[dict]:
    """AFIDs TRE on the held-out real pair(s), affine vs each model."""
    specs = _specs()
    fixed_template, moving_template = TEST_TEMPLATE_PAIR
    rows = []
    for variant in ("", "_brain"):
        fixed = load_case(specs[f"{fixed_template}_T1w{variant}"])
        moving = load_case(specs[f"{moving_template}_T1w{variant}"])
        assert fixed.landmarks is not None and moving.landmarks is not None
        moving_points = moving.landmarks.subset(fixed.landmarks.names).points_ras
        pair = f"{moving.case_id} -> {fixed.case_id}"
        affine = affine_registration(fixed.volume, moving.volume, seed)
        tre = landmark_tre_mm(affine.transform, fixed.landmarks.points_ras, moving_points)
        rows.append(
            {
                "pair": pair,
                "method": "affine",
                **_stats(tre),
                "folding": 0.0,
                "seconds": affine.seconds,
            }
        )
        options = RegisterOptions(seed=seed, threads=threads)
        classical = bspline(fixed.volume, moving.volume, options)
        tre = landmark_tre_mm(classical.transform, fixed.landmarks.points_ras, moving_points)
        rows.append(
            {
                "pair": pair,
                "method": "SimpleITK B-spline",
                **_stats(tre),
                "folding": _folding(classical.transform),
                "seconds": classical.seconds,
            }
        )
        for name, folder in models.items():
            options = RegisterOptions(seed=seed, model_dir=folder, device=device, threads=threads)
            outcome = register_deformable(fixed.volume, moving.volume, options)
            tre = landmark_tre_mm(outcome.transform, fixed.landmarks.points_ras, moving_points)
            rows.append(
                {
                    "pair": pair,
                    "method": name,
                    **_stats(tre),
                    "folding": outcome.details["folding_share"],
                    "seconds": outcome.seconds,
                    "network_seconds": outcome.details["network_seconds"],
                    "lambda": outcome.details["lambda"],
                }
            )
    return rows


def _folding(transform: sitk.Transform) -> float:
    """Share of voxels where a displacement-field transform folds (det J <= 0), on the field's
    own grid (the project's direction-aware Jacobian, as ``medrl register`` reports it);
    0 for a linear transform."""
    if not is_displacement_field(transform):
        return 0.0
    field = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
    return jacobian_stats(jacobian_determinant(field))["folding_share"]


def _resample_labels(labels: Volume, grid: Volume, transform: sitk.Transform) -> np.ndarray:
    out = sitk.Resample(labels.to_sitk(), grid.to_sitk(), transform, sitk.sitkNearestNeighbor, 0.0)
    return np.rint(sitk.GetArrayFromImage(out)).astype(np.int16)


def evaluate_synthetic(
    models: dict[str, Path], count: int, seed: int, threads: int, device: str
) -> list[dict]:
    """CIT168 Dice/HD95 and landmark TRE on synthetic test warps of the test template."""
    case = load_case(_specs()[f"{SYNTHETIC_TEST_TEMPLATE}_T1w"])
    assert case.landmarks is not None
    grid = working_grid(case.volume, 2.0)
    labels = carried_cit168(grid, None, None)
    label_volume = Volume(
        labels.astype(np.float32), grid.spacing_mm, grid.origin_lps, grid.direction_lps
    )
    points_vox = torch.from_numpy(grid.world_to_index(case.landmarks.points_ras, "RAS")).float()
    image = torch.from_numpy(grid.array)[None, None]
    spacing_zyx = grid.spacing_mm[::-1]
    scores: dict[str, dict[str, list[float]]] = {}

    def record(
        name: str,
        warped: np.ndarray,
        truth: np.ndarray,
        tre: np.ndarray,
        folding: float,
        seconds: float,
    ) -> None:
        entry = scores.setdefault(
            name, {"dice": [], "hd95": [], "tre": [], "folding": [], "seconds": []}
        )
        entry["dice"].append(float(np.nanmean(list(dice_by_label(warped, truth).values()))))
        entry["hd95"].append(
            float(np.nanmean(list(hd95_by_label(warped, truth, spacing_zyx).values())))
        )
        entry["tre"].append(float(np.mean(tre)))
        entry["folding"].append(folding)
        entry["seconds"].append(seconds)

    for index in range(count):
        drawn = random_warp(grid.array.shape, 2.0, seed_for("test", seed, index))
        made = apply_warp(drawn, image, torch.from_numpy(labels.astype(np.int64)), points_vox)
        assert made.fixed_labels is not None and made.fixed_points_vox is not None
        assert made.moving_points_vox is not None
        fixed = Volume(
            made.fixed[0, 0].numpy(),
            grid.spacing_mm,
            grid.origin_lps,
            grid.direction_lps,
            source=f"warp{index}",
        )
        truth = made.fixed_labels.numpy().astype(np.int16)
        fixed_ras = grid.index_to_world(made.fixed_points_vox.double().numpy(), "RAS")
        moving_ras = grid.index_to_world(made.moving_points_vox.double().numpy(), "RAS")
        _log(
            f"synthetic test pair {index}: largest displacement {drawn.max_displacement_mm:.1f} mm"
        )
        identity = sitk.Transform()
        record(
            "identity", labels, truth, landmark_tre_mm(identity, fixed_ras, moving_ras), 0.0, 0.0
        )
        affine = affine_registration(fixed, grid, seed)
        record(
            "affine",
            _resample_labels(label_volume, fixed, affine.transform),
            truth,
            landmark_tre_mm(affine.transform, fixed_ras, moving_ras),
            0.0,
            affine.seconds,
        )
        classical = bspline(fixed, grid, RegisterOptions(seed=seed, threads=threads))
        record(
            "SimpleITK B-spline",
            _resample_labels(label_volume, fixed, classical.transform),
            truth,
            landmark_tre_mm(classical.transform, fixed_ras, moving_ras),
            _folding(classical.transform),
            classical.seconds,
        )
        for name, folder in models.items():
            options = RegisterOptions(seed=seed, model_dir=folder, device=device, threads=threads)
            outcome = register_deformable(fixed, grid, options)
            record(
                name,
                _resample_labels(label_volume, fixed, outcome.transform),
                truth,
                landmark_tre_mm(outcome.transform, fixed_ras, moving_ras),
                outcome.details["folding_share"],
                outcome.seconds,
            )
    return [
        {"method": name, **{key: float(np.mean(values)) for key, values in entry.items()}}
        for name, entry in scores.items()
    ]


def time_inference_2mm(seed: int, device: str, repeats: int = 2) -> dict[str, float]:
    """Seconds of the network (and the fields) on the 2 mm grid of the real test pair, with
    untrained weights of the default architecture (the time does not depend on the weights)."""
    specs = _specs()
    fixed = load_case(specs[f"{TEST_TEMPLATE_PAIR[0]}_T1w"]).volume
    moving = load_case(specs[f"{TEST_TEMPLATE_PAIR[1]}_T1w"]).volume
    affine = affine_registration(fixed, moving, seed)
    torch.manual_seed(seed)
    model = DeformableModel(VelocityUNet(), 1.0, 2.0, 7, "ncc", {})
    runs = [
        deformable_fields(fixed, moving, model, affine.transform, device) for _ in range(repeats)
    ]
    best = min(runs, key=lambda r: r.details["network_seconds"])
    return {
        "threads": torch.get_num_threads(),
        "working_shape_xyz": best.details["working_shape_xyz"],
        "network_seconds": best.details["network_seconds"],
        "field_seconds": best.details["field_seconds"],
        "prepare_seconds": best.details["prepare_seconds"],
        "affine_seconds": affine.seconds,
    }


# ------------------------------------------------------------------------------- report
def print_tables(report: dict[str, Any]) -> None:
    config = report["config"]
    print(
        f"\nlambda selection: validation loss = TRE mm + {config['bilevel']['dice_weight']:g} "
        f"x (1 - Dice) on {len(report['validation_pairs'])} held-out pairs; "
        f"{report['inner_steps']} inner steps each, {config['working_spacing_mm']:g} mm grid"
    )
    print(f"{'run':<20} {'lambda':>8} {'val loss':>9} {'TRE mm':>7} {'Dice':>6} {'seconds':>8}")
    for row in report["lambda_table"]:
        print(
            f"{row['run']:<20} {row['lambda']:>8.4g} {row['val_loss']:>9.3f} "
            f"{row.get('tre_mm', math.nan):>7.2f} {row.get('dice', math.nan):>6.3f} "
            f"{row['seconds']:>8.1f}"
        )
    print("\nheld-out real pair(s): AFIDs TRE in mm (never used for training or lambda)")
    print(
        f"{'pair':<50} {'method':<22} {'mean':>6} {'median':>6} {'max':>6} {'fold %':>7} "
        f"{'s/pair':>7}"
    )
    for row in report["real_test"]:
        print(
            f"{row['pair']:<50} {row['method']:<22} {row['mean']:>6.2f} {row['median']:>6.2f} "
            f"{row['max']:>6.2f} {100 * row['folding']:>7.3f} {row['seconds']:>7.1f}"
        )
    print(
        f"\nsynthetic held-out warps of {SYNTHETIC_TEST_TEMPLATE}_T1w (2 mm, "
        f"{report['synthetic_test_pairs']} pairs, 'test' seeds): CIT168 labels, exact truth"
    )
    print(f"{'method':<22} {'Dice':>6} {'HD95 mm':>8} {'TRE mm':>7} {'fold %':>7} {'s/pair':>7}")
    for row in report["synthetic_test"]:
        print(
            f"{row['method']:<22} {row['dice']:>6.3f} {row['hd95']:>8.2f} {row['tre']:>7.2f} "
            f"{100 * row['folding']:>7.3f} {row['seconds']:>7.1f}"
        )
    timing = report["inference_2mm"]
    print(
        f"\ninference on the 2 mm grid ({'x'.join(map(str, timing['working_shape_xyz']))} "
        f"voxels), {timing['threads']} thread(s): network + integration "
        f"{timing['network_seconds']:.2f} s, fields {timing['field_seconds']:.2f} s, "
        f"resampling {timing['prepare_seconds']:.2f} s, affine {timing['affine_seconds']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 mm, 40 steps, 3 lambdas")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_deformable"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spacing", type=float, default=None, help="working grid, mm")
    parser.add_argument("--steps", type=int, default=None, help="inner steps per run")
    parser.add_argument("--lambdas", default="", help="grid, e.g. 0.1,1,10")
    parser.add_argument("--similarity", default="ncc", choices=("ncc", "mind", "auto"))
    parser.add_argument("--crop", type=int, default=None, help="train on cubes of N voxels")
    parser.add_argument("--max-minutes", type=float, default=None, help="per training run")
    parser.add_argument("--synthetic-tests", type=int, default=5)
    parser.add_argument(
        "--models", nargs="+", metavar="NAME=DIR", default=[],
        help="evaluate these trained model folders (e.g. from bench_deformable_gpu.py) "
        "instead of training",
    )  # fmt: skip
    args = parser.parse_args()
    set_threads(args.threads)
    if args.models:
        evaluate_only(args)
        return
    started = time.perf_counter()
    config, lambdas, synthetic_tests = _config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    learned, rows = train_all(config, lambdas, args.out, args.device)
    best = min(rows, key=lambda r: r.val_loss)
    lambda_table = [
        {
            "run": f"grid lambda={r.lam:g}",
            "lambda": r.lam,
            "val_loss": r.val_loss,
            **{k: v for k, v in r.facts["result"].val.items() if k != "loss"},
            "seconds": r.facts["result"].seconds,
        }
        for r in rows
    ]
    lambda_table.append(
        {
            "run": "bilevel (learned)",
            "lambda": learned.lam,
            "val_loss": learned.val["loss"],
            **{k: v for k, v in learned.val.items() if k != "loss"},
            "seconds": learned.seconds,
        }
    )
    models = {
        f"deformable learned {learned.lam:.3g}": learned.model_dir,
        f"deformable grid {best.lam:g}": best.facts["result"].model_dir,
    }
    _log("== held-out real pairs")
    real = evaluate_real(models, args.seed, args.threads, args.device)
    _log("== synthetic held-out warps")
    synthetic = evaluate_synthetic(models, synthetic_tests, args.seed, args.threads, args.device)
    _log("== inference time on the 2 mm grid")
    timing = time_inference_2mm(args.seed, args.device)
    report = {
        "config": asdict(config),
        "inner_steps": config.steps,
        "validation_pairs": learned_pairs_names(learned),
        "lambda_table": lambda_table,
        "learned_lambda_history": learned.history,
        "real_test": real,
        "synthetic_test_pairs": synthetic_tests,
        "synthetic_test": synthetic,
        "inference_2mm": timing,
        "seconds": time.perf_counter() - started,
    }
    with open(args.out / "bench_deformable.json", "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    print_tables(report)
    print(f"\ntotal {report['seconds']:.0f} s; results in {args.out / 'bench_deformable.json'}")


def evaluate_only(args: argparse.Namespace) -> None:
    """The test tables for given model folders; the lambda table from their training facts."""
    started = time.perf_counter()
    models = {}
    for item in args.models:
        name, _, folder = item.rpartition("=")
        if not name or not folder:
            raise SystemExit(f"--models wants NAME=DIR, got {item!r}")
        if not (Path(folder) / "deformable.json").is_file():
            raise SystemExit(f"--models {name}: {folder} has no deformable.json (no model)")
        models[name] = Path(folder)
    headers = {n: json.loads((d / "deformable.json").read_text()) for n, d in models.items()}
    lambda_table = [
        {
            "run": name,
            "lambda": header["lambda"],
            "val_loss": header["training"]["validation"]["loss"],
            **{k: v for k, v in header["training"]["validation"].items() if k != "loss"},
            "seconds": header["training"]["seconds"],
            "steps": header["training"]["steps"],
        }
        for name, header in headers.items()
    ]
    first = next(iter(headers.values()))["training"]
    args.out.mkdir(parents=True, exist_ok=True)
    _log("== held-out real pairs")
    real = evaluate_real(models, args.seed, args.threads, args.device)
    _log("== synthetic held-out warps")
    synthetic = evaluate_synthetic(models, args.synthetic_tests, args.seed, args.threads,
                                   args.device)  # fmt: skip
    report = {
        "config": first["config"],
        "inner_steps": "/".join(str(row["steps"]) for row in lambda_table),
        "validation_pairs": list(first["pairs"].get("val_pairs", [])),
        "lambda_table": lambda_table,
        "real_test": real,
        "synthetic_test_pairs": args.synthetic_tests,
        "synthetic_test": synthetic,
        "inference_2mm": time_inference_2mm(args.seed, args.device),
        "seconds": time.perf_counter() - started,
    }
    with open(args.out / "bench_deformable.json", "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    print_tables(report)
    print(f"\ntotal {report['seconds']:.0f} s; results in {args.out / 'bench_deformable.json'}")


def learned_pairs_names(result: TrainResult) -> list[str]:
    """The validation pairs of a run, from its model folder's training facts."""
    header = json.loads((result.model_dir / "deformable.json").read_text())
    return list(header["training"]["pairs"].get("val_pairs", []))


if __name__ == "__main__":
    main()
