"""Does GRPO improve phrase grounding beyond a converged SFT? Arms from one SFT model per seed.

Per seed, through the real ``medrl vlm`` CLI (subprocesses, resumable: finished steps are
skipped when run again):

* ``sft``: the SFT model (preset ``sft`` section, with its size curriculum);
* ``sft_cont``: SFT continued from it for as many steps and prompts as GRPO, constant
  learning rate = GRPO's (the control that makes "more training" no explanation);
* ``grpo_iou``: GRPO from it with format 0.1 + IoU 1.0;
* ``grpo_sem``: the same plus the semantic reward 0.25;
* ``grpo_preset``: GRPO with the preset's own ``grpo.reward_weights`` (for a task mix with
  VQA, e.g. ``small-gpu``: format, choice, IoU and semantic rewards);
* ``low_sft``, ``low_cont``, ``low_grpo``: the same three from an SFT on the first
  ``--low-items`` training items only (the low-data regime).

Every arm is evaluated greedily on the held-out template (``test``); the table gives per-seed
mIoU / Acc@0.5, the pooled paired cluster bootstrap of GRPO minus each control (item ids are
the clusters), area ratios and parse rates, and ``curves.md`` / ``curves.png`` the GRPO
diagnostics and validation curves. ``--quick``: one seed, fewer steps.

    PYTHONPATH=src:. python -m benchmarks.bench_grounding --out runs/bench_grounding

The positive control (docs/vlm.md section 8) starts from a shipped model instead; see
``src/medrl/models/vlm-marked-tight/README.md`` and ``tests/vlm/test_positive_control.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_vlm import _run

ARMS = ("sft", "sft_cont", "grpo_iou", "grpo_sem", "grpo_preset", "low_sft", "low_cont", "low_grpo")
DEFAULT_ARMS = ("sft", "sft_cont", "grpo_iou", "grpo_sem", "low_sft", "low_cont", "low_grpo")
IOU_ONLY = "grpo.reward_weights={format_reward: 0.1, iou_reward: 1.0}"
WITH_SEMANTIC = "grpo.reward_weights={format_reward: 0.1, iou_reward: 1.0, semantic_reward: 0.25}"
COMPARISONS = (
    ("grpo_iou", "sft"),
    ("grpo_iou", "sft_cont"),
    ("grpo_sem", "sft"),
    ("grpo_sem", "sft_cont"),
    ("grpo_preset", "sft"),
    ("grpo_preset", "sft_cont"),
    ("low_grpo", "low_sft"),
    ("low_grpo", "low_cont"),
)
CURVE_KEYS = (
    "rewards/iou_reward/mean",
    "diag/parse_rate",
    "diag/mean_iou",
    "diag/hit_share",
    "diag/median_log_area_ratio",
    "diag/zero_variance_groups",
    "diag/distinct_boxes",
    "diag/groups_with_hit",
    "kl",
    "entropy",
    "completions/clipped_ratio",
)


def _sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


class Seed:
    """The arms of one seed: each step runs once, its outputs are the resume markers."""

    def __init__(self, seed: int, args: argparse.Namespace, data: Path, config: dict) -> None:
        self.seed = seed
        self.args = args
        self.data = data
        self.run = args.out / f"seed{seed}"
        self.run.mkdir(parents=True, exist_ok=True)
        self.log = self.run / "log.txt"
        self.common = ["--config", args.config, "--seed", str(seed), *_sets(args.set)]
        grpo = config["grpo"]
        steps = int(args.grpo_steps or grpo["max_steps"])
        self.grpo_sets = [f"grpo.max_steps={steps}"]
        self.cont_sets = [
            f"sft.max_steps={steps}",
            f"sft.batch_size={grpo['prompts_per_step']}",
            "sft.lr_scheduler=constant",
            f"sft.learning_rate={grpo['learning_rate']}",
            "sft.curriculum=[]",
            "sft.warmup_ratio=0",
        ]
        self.low_sets = [f"sft.train_items={args.low_items}", f"grpo.train_items={args.low_items}"]
        self.low_base_sets = [f"sft.epochs={args.low_epochs}"]
        self.seconds: dict[str, float] = {}

    def _sft(self, name: str, sets: list[str], init: Path | None = None) -> Path:
        out = self.run / name
        if not (out / "model" / "config.json").is_file():
            argv = ["vlm", "sft", "--data", str(self.data), "--run-dir", str(out)]
            argv += ["--init-model", str(init)] if init else []
            self.seconds[name] = _run([*argv, *self.common, *_sets(sets)], self.log)
        return out / "model"

    def _grpo(self, name: str, start: Path, sets: list[str]) -> Path:
        out = self.run / name
        if not (out / "model" / "config.json").is_file():
            argv = ["vlm", "grpo", "--data", str(self.data), "--model", str(start)]
            argv += ["--run-dir", str(out), *self.common, *_sets(sets)]
            self.seconds[name] = _run(argv, self.log)
        return out / "model"

    def model(self, arm: str) -> Path:
        """Train what ``arm`` needs (reusing finished steps); return its model folder."""
        low = arm.startswith("low_")
        base_sets = self.low_sets if low else []
        base = self._sft(
            "low_sft" if low else "sft", base_sets + (self.low_base_sets if low else [])
        )
        if arm in ("sft", "low_sft"):
            return base
        if arm.endswith("_cont"):
            return self._sft(arm, base_sets + self.cont_sets, init=base)
        weights = {"grpo_sem": [WITH_SEMANTIC], "grpo_preset": []}.get(arm, [IOU_ONLY])
        return self._grpo(arm, base, base_sets + self.grpo_sets + weights)

    def evaluate(self, arm: str) -> dict[str, Any]:
        out = self.run / f"eval_{arm}"
        if not (out / "metrics.json").is_file():
            model = self.model(arm)
            argv = ["vlm", "evaluate", "--data", str(self.data), "--model", str(model)]
            argv += ["--out", str(out), "--split", "test", "--quiet", *self.common]
            _run(argv, self.log)
        metrics = json.loads((out / "metrics.json").read_text())
        with open(out / "predictions.csv", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if r["task"] == "grounding"]
        metrics["items"] = {r["item_id"]: (float(r["iou"]), r["hit"] == "True") for r in rows}
        return metrics


def _seed_results(seed: int, args: argparse.Namespace, data: Path, config: dict) -> dict:
    """Train the base SFT models, then the arms, ``--jobs`` processes at a time."""
    runner = Seed(seed, args, data, config)
    bases = sorted({"low_sft" if arm.startswith("low_") else "sft" for arm in args.arms})
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(runner.model, bases))
        evaluations = list(pool.map(runner.evaluate, args.arms))
    return {"seed": seed, "arms": dict(zip(args.arms, evaluations, strict=True)),
            "seconds": runner.seconds}  # fmt: skip


def compare(results: list[dict[str, Any]], better: str, base: str) -> dict[str, Any]:
    """Per-seed differences and the pooled cluster bootstrap of ``better - base``."""
    from medrl.vlm.stats import paired_bootstrap

    out: dict[str, Any] = {"per_seed": []}
    pooled: dict[str, list[float]] = {"iou_a": [], "iou_b": [], "hit_a": [], "hit_b": []}
    clusters: list[str] = []
    for result in results:
        a, b = result["arms"][base], result["arms"][better]
        out["per_seed"].append({
            "seed": result["seed"],
            "d_miou": b["grounding"]["mean_iou"] - a["grounding"]["mean_iou"],
            "d_acc": b["grounding"]["acc_at_0.5"] - a["grounding"]["acc_at_0.5"],
        })  # fmt: skip
        for item, (iou, hit) in a["items"].items():
            pooled["iou_a"].append(iou)
            pooled["hit_a"].append(float(hit))
            pooled["iou_b"].append(b["items"][item][0])
            pooled["hit_b"].append(float(b["items"][item][1]))
            clusters.append(item)
    out["miou"] = paired_bootstrap(pooled["iou_a"], pooled["iou_b"], clusters)
    out["acc"] = paired_bootstrap(pooled["hit_a"], pooled["hit_b"], clusters)
    out["target_met"] = (
        all(s["d_miou"] >= 0.03 and s["d_acc"] >= 0.03 for s in out["per_seed"])
        and out["miou"]["ci_low"] > 0
        and out["acc"]["ci_low"] > 0
    )
    return out


def guard_rails(results: list[dict[str, Any]], arm: str) -> list[dict[str, Any]]:
    """Per seed: the arm's median area ratio, parse rate against SFT's, VQA minus SFT's."""
    rails = []
    for result in results:
        ours, sft = result["arms"][arm], result["arms"]["sft"]
        vqa = None
        if sft["vqa"]["accuracy"] is not None:
            vqa = ours["vqa"]["accuracy"] - sft["vqa"]["accuracy"]
        rails.append({
            "seed": result["seed"],
            "median_area_ratio": ours["grounding"]["median_area_ratio"],
            "parse_not_below_sft": ours["grounding"]["parse_failure_rate"]
            <= sft["grounding"]["parse_failure_rate"],
            "vqa_grpo_minus_sft": vqa,
        })  # fmt: skip
    return rails


def _curve(run: Path) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    summary = run / "grpo_summary.json"
    if summary.is_file():
        for entry in json.loads(summary.read_text())["log_history"]:
            for key in CURVE_KEYS:
                if entry.get(key) is not None and "step" in entry:
                    curves.setdefault(key, []).append((int(entry["step"]), float(entry[key])))
    validation = run / "validation.jsonl"
    if validation.is_file():
        for line in validation.read_text().splitlines():
            row = json.loads(line)
            for key in ("mean_iou", "acc_at_0.5", "gold_ce", "median_area_ratio"):
                if row.get(key) is not None:
                    curves.setdefault(f"val/{key}", []).append((int(row["step"]), float(row[key])))
    return curves


def write_curves(results: list[dict[str, Any]], out: Path) -> None:
    """``curves.md`` (values every ~10 % of the run) and ``curves.png`` for every GRPO run."""
    runs = {
        f"seed{r['seed']}/{arm}": _curve(out / f"seed{r['seed']}" / arm)
        for r in results
        for arm in r["arms"]
        if "grpo" in arm
    }
    lines = ["# GRPO diagnostics and validation curves", ""]
    for name, curves in runs.items():
        lines += [f"## {name}", "", "| series | " + " | ".join(["values (step: value)"]) + " |"]
        lines.append("|---|---|")
        for key, points in curves.items():
            stride = max(1, len(points) // 10)
            shown = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
            lines.append(f"| {key} | " + ", ".join(f"{s}: {v:.3g}" for s, v in shown) + " |")
        lines.append("")
    (out / "curves.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = ["rewards/iou_reward/mean", "diag/zero_variance_groups", "diag/median_log_area_ratio",
            "diag/groups_with_hit", "val/mean_iou", "val/gold_ce"]  # fmt: skip
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, key in zip(axes.flat, keys, strict=True):
        for name, curves in runs.items():
            if key in curves:
                steps, values = zip(*curves[key], strict=True)
                axis.plot(steps, values, label=name, lw=1)
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("GRPO step", fontsize=8)
    axes.flat[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=90)
    plt.close(figure)


def blind_prior(data: Path) -> dict[str, Any]:
    """The mean training box per structure and plane, scored on the test items."""
    from medrl.vlm.prior import prior_scores

    def rows(split: str) -> list[dict[str, Any]]:
        text = (data / "jsonl" / f"{split}.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line]

    return prior_scores(rows("train"), rows("test"))


def table(results: list[dict[str, Any]], comparisons: dict[str, Any], prior: dict[str, Any]) -> str:
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [
        f"Held-out template MNI152NLin6Asym, {prior['n']} grounding items, seeds {seeds}",
        "",
        "| arm | mIoU per seed | Acc@0.5 per seed | parse rate | median area ratio "
        "| VQA accuracy per seed |",
        "|---|---|---|---|---|---|",
        f"| blind prior (mean training box of the structure in the plane; no image) "
        f"| {prior['mean_iou']:.3f} | {prior['acc_at_0.5']:.3f} | 1 | | |",
    ]
    for arm in results[0]["arms"]:
        g = [r["arms"][arm]["grounding"] for r in results]
        miou = ", ".join(f"{x['mean_iou']:.3f}" for x in g)
        acc = ", ".join(f"{x['acc_at_0.5']:.3f}" for x in g)
        parse = ", ".join(f"{1 - x['parse_failure_rate']:.2f}" for x in g)
        area = ", ".join(
            "n/a" if x.get("median_area_ratio") is None else f"{x['median_area_ratio']:.2f}"
            for x in g
        )
        vqa = ", ".join(
            "n/a" if r["arms"][arm]["vqa"]["accuracy"] is None
            else f"{r['arms'][arm]['vqa']['accuracy']:.3f}"
            for r in results
        )  # fmt: skip
        lines.append(f"| {arm} | {miou} | {acc} | {parse} | {area} | {vqa} |")
    lines += [
        "",
        "| comparison | d mIoU per seed | d mIoU pooled [95 % CI] | d Acc@0.5 per seed "
        "| d Acc@0.5 pooled [95 % CI] | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in comparisons.items():
        dm = ", ".join(f"{s['d_miou']:+.3f}" for s in c["per_seed"])
        da = ", ".join(f"{s['d_acc']:+.3f}" for s in c["per_seed"])
        m, a = c["miou"], c["acc"]
        lines.append(
            f"| {name} | {dm} | {m['mean_diff']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}] "
            f"| {da} | {a['mean_diff']:+.3f} [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}] "
            f"| {'met' if c['target_met'] else 'not met'} |"
        )
    return "\n".join(lines)


def _without_items(result: dict[str, Any]) -> dict[str, Any]:
    arms = {k: {m: v for m, v in a.items() if m != "items"} for k, a in result["arms"].items()}
    return {**result, "arms": arms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="grounding-cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--grpo-steps", type=int, help="default: the preset's grpo.max_steps")
    parser.add_argument("--low-items", type=int, default=256)
    parser.add_argument(
        "--low-epochs", type=int, default=24, help="SFT epochs of the low-data base (256 items)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="seeds run at once")
    parser.add_argument("--jobs", type=int, default=2, help="processes per seed (arms at once)")
    parser.add_argument("--quick", action="store_true", help="one seed, half the GRPO steps")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_grounding"))
    args = parser.parse_args()
    from medrl.vlm.config import load_vlm_config

    config = load_vlm_config(args.config, args.set)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.grpo_steps = args.grpo_steps or max(1, int(config["grpo"]["max_steps"]) // 2)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    start = time.perf_counter()
    if not (data / "meta.json").is_file():
        argv = ["vlm", "data", "--out", str(data), "--quiet", "--config", args.config]
        _run([*argv, "--seed", str(args.data_seed), *_sets(args.set)], args.out / "log.txt")
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(lambda s: _seed_results(s, args, data, config), args.seeds))
    comparisons = {
        f"{better} - {base}": compare(results, better, base)
        for better, base in COMPARISONS
        if better in args.arms and base in args.arms
    }
    for name, comparison in comparisons.items():
        if name.endswith(" - sft") and not name.startswith("low_"):
            comparison["guard_rails"] = guard_rails(results, name.split(" - ")[0])
    prior = blind_prior(data)
    summary = {
        "command": " ".join(sys.argv),
        "blind_prior": {k: v for k, v in prior.items() if k != "items"},
        "wall_s": time.perf_counter() - start,
        "cpu_count": os.cpu_count(),
        "comparisons": comparisons,
        "results": [_without_items(r) for r in results],
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    text = table(results, comparisons, prior) + f"\n\nwall: {summary['wall_s']:.0f} s\n"
    (args.out / "results.md").write_text(text)
    write_curves(results, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
