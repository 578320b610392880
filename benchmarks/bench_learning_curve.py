"""Learning curve of a landmark preset: validation error against minutes of training.

Trains the preset (default ``afids``, what ``make demo`` trains: MNI152NLin2009cAsym T1w and
T2w) for its own time budget, and every ``--eval-every`` steps searches validation brains
that are neither its training scans nor the demo's test brain (MNI152NLin6Asym): by default
MNI152Lin T1w and T2w and MNI305 (the SPM12 averages), each rigidly moved (up to 15 degrees
and 20 mm, a fixed seed per validation scan, the same at every point of the curve). Prints, per
validation, the training minutes (wall time of the run less the time spent validating), the
steps and updates, and the mean error after each level of the search and after the best one;
writes ``curve.json`` into ``--out``. This is the benchmark every change to training is
judged on (settings are chosen on it, never on the test brain).

    medrl data fetch afids && medrl data fetch spm12 --folder ../shared/data/templates
    PYTHONPATH=. python -m benchmarks.bench_learning_curve [--config afids] \\
        [--set agent.gamma=0.5 ...] [--minutes 14.5] [--eval-every 500] [--out /tmp/curve]
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import numpy as np

from medrl.agents.checkpoint import load_model
from medrl.agents.validation import model_scores
from medrl.config import load_config
from medrl.data.datalist import CaseSpec, write_datalist
from medrl.data.sources import load_split, resolve_datalist
from medrl.workflows import train_model

VALIDATION_CASES = ("MNI152Lin_T1w", "MNI152Lin_T2w", "MNI305_T1w")
MAX_LEVELS = 8


def curve_datalist(training: str, validation: tuple[str, ...], path: Path) -> Path:
    """A datalist of the training source's ``train`` cases and the named SPM12 cases as
    ``val`` (the training source's test cases are left out)."""
    train = [s for s in resolve_datalist(training) if s.split == "train"]
    spm12 = {s.case_id: s for s in resolve_datalist("builtin:spm12")}
    unknown = [name for name in validation if name not in spm12]
    if unknown:
        raise SystemExit(f"unknown validation case(s) {unknown}; known: {sorted(spm12)}")
    if any(s.case_id in validation for s in train):
        raise SystemExit("a validation case is also a training case")
    val = [
        CaseSpec(spm12[n].case_id, spm12[n].image, spm12[n].landmarks, "val") for n in validation
    ]
    write_datalist(train + val, path)
    return path


def curve_rows(run_dir: Path) -> list[dict[str, float]]:
    """One row per validation of the run: training minutes, steps, updates, errors."""
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    rows = []
    validating = 0.0  # seconds spent in earlier validations
    for record in evaluations:
        per_level = [record[f"mean_error_mm/level{i}"] for i in range(MAX_LEVELS)
                     if f"mean_error_mm/level{i}" in record]  # fmt: skip
        rows.append(
            {
                "minutes": (record["train_seconds"] - validating) / 60,
                "step": record["step"],
                "updates": record["updates"],
                "per_level_mm": per_level,
                "best_mm": min(per_level),
                "final_mm": record["mean_error_mm"],
                "max_mm": record["max_error_mm"],
            }
        )
        validating += record["seconds"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="afids", help="a preset name or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--minutes", type=float, help="training budget (default: the preset's)")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between validations")
    parser.add_argument("--val", default=",".join(VALIDATION_CASES), help="SPM12 case ids")
    parser.add_argument("--out", default="/tmp/bench_learning_curve")
    parser.add_argument(
        "--no-train", action="store_true", help="tabulate the run already in --out/run"
    )
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preset = resources.files("medrl") / "configs" / f"{args.config}.yaml"
    config_path = Path(str(preset)) if preset.is_file() else Path(args.config)
    base = load_config(config_path, [])
    validation = tuple(v for v in args.val.split(",") if v)
    datalist = curve_datalist(base.train.datalist, validation, out / "datalist.json")
    overrides = [
        *args.set,
        f"train.datalist={datalist}",
        f"train.eval_every={args.eval_every}",
        f"train.eval_scans={len(validation)}",
        f"train.log_every={args.eval_every}",
    ]
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    config = load_config(config_path, overrides)
    run_dir = out / "run"
    if not args.no_train:
        train_model(config, run_dir, restart=True, progress=True, command="bench_learning_curve")
    rows = curve_rows(run_dir)
    print(f"validation: {', '.join(validation)}, one rigid move each (15 deg, 20 mm)")
    print("| minutes | steps | updates | mean mm after each level | best level mm | max mm |")
    print("|---:|---:|---:|---|---:|---:|")
    for row in rows:
        levels = " / ".join(f"{v:.2f}" for v in row["per_level_mm"])
        print(
            f"| {row['minutes']:.1f} | {row['step']:.0f} | {row['updates']:.0f} | {levels} | "
            f"{row['best_mm']:.2f} | {row['max_mm']:.1f} |"
        )
    # The exported model as `medrl evaluate` runs it (its chosen levels and second search),
    # on the validation brains under two other rigid moves each.
    model = load_model(run_dir / "model")
    errors = model_scores(model, load_split(str(datalist), "val"), trials=2)
    search = model.config.search
    final = {
        "mean_mm": float(errors.mean()),
        "median_mm": float(np.median(errors)),
        "max_mm": float(errors.max()),
        "above_10mm": int((errors > 10).sum()),
        "count": int(errors.size),
        "search_levels": search.levels,
        "consensus_level": search.consensus_level,
    }
    print(
        f"exported model ({rows[-1]['minutes']:.1f} min; levels {search.levels}, second "
        f"search from level {search.consensus_level}), validation brains, 2 rigid moves each: "
        f"mean {final['mean_mm']:.2f} / median {final['median_mm']:.2f} / max "
        f"{final['max_mm']:.1f} mm, {final['above_10mm']} of {final['count']} above 10 mm"
    )
    (out / "curve.json").write_text(
        json.dumps(
            {"config": str(config_path), "overrides": args.set, "rows": rows, "final": final},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
