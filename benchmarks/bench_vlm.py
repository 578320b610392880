"""SFT-only versus SFT+GRPO on the held-out template (MNI152NLin6Asym), over several seeds.

Runs ``medrl vlm data`` once, then per seed ``sft`` -> ``evaluate`` (SFT only) -> ``grpo``
(from the SFT model) -> ``evaluate`` (SFT+GRPO), as subprocesses of the real CLI, and writes
``OUT/results.json`` and ``OUT/results.md``. Seeds may run in parallel (``--parallel``), each
with ``threads`` torch threads (preset ``tiny-cpu``: 1).

    PYTHONPATH=src python benchmarks/bench_vlm.py --seeds 0 1 2 --parallel 2 --out runs/bench_vlm
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

METRICS = (
    ("grounding Acc@0.5", ("grounding", "acc_at_0.5")),
    ("grounding mean IoU", ("grounding", "mean_iou")),
    ("grounding centre mm", ("grounding", "mean_centre_mm")),
    ("VQA accuracy", ("vqa", "accuracy")),
    ("format rate", ("format_rate",)),
    ("parse failures", ("parse_failure_rate",)),
)


def _run(argv: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("$ medrl " + " ".join(argv) + "\n")
        handle.flush()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        code = subprocess.call(
            [sys.executable, "-m", "medrl.cli", *argv], stdout=handle, stderr=handle, env=env
        )
    if code:
        raise SystemExit(f"medrl {' '.join(argv)} failed with exit code {code}; see {log}")
    return time.perf_counter() - start


def _one_seed(seed: int, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    run = args.out / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    common = ["--config", args.config, "--seed", str(seed)]
    for item in args.set:
        common += ["--set", item]
    times = {}
    times["sft_s"] = _run(
        ["vlm", "sft", "--data", str(data), "--run-dir", str(run / "sft"), *common], log
    )
    _run(["vlm", "evaluate", "--data", str(data), "--model", str(run / "sft" / "model"),
          "--out", str(run / "eval_sft"), "--quiet", *common], log)  # fmt: skip
    times["grpo_s"] = _run(["vlm", "grpo", "--data", str(data), "--model",
                            str(run / "sft" / "model"), "--run-dir", str(run / "grpo"),
                            *common], log)  # fmt: skip
    _run(["vlm", "evaluate", "--data", str(data), "--model", str(run / "grpo" / "model"),
          "--out", str(run / "eval_grpo"), "--quiet", *common], log)  # fmt: skip
    grpo = json.loads((run / "grpo" / "grpo_summary.json").read_text())
    return {
        "seed": seed,
        "sft": json.loads((run / "eval_sft" / "metrics.json").read_text()),
        "grpo": json.loads((run / "eval_grpo" / "metrics.json").read_text()),
        "grpo_steps": grpo["steps"],
        "grpo_steps_per_second": grpo["steps_per_second"],
        **times,
    }


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = metrics
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else float(value)


def _fmt(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    if len(present) == 1:
        return f"{present[0]:.3f}"
    return f"{statistics.mean(present):.3f} ± {statistics.stdev(present):.3f}"


def table(results: list[dict[str, Any]]) -> str:
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [
        f"Held-out template MNI152NLin6Asym, seeds {seeds} (mean ± sd over seeds)",
        "",
        "| metric | SFT only | SFT + GRPO | per seed (SFT -> SFT+GRPO) |",
        "|---|---|---|---|",
    ]
    for label, path in METRICS:
        sft = [_get(r["sft"], path) for r in results]
        grpo = [_get(r["grpo"], path) for r in results]
        pairs = "; ".join(
            f"{a:.3f}->{b:.3f}" if a is not None and b is not None else "n/a"
            for a, b in zip(sft, grpo, strict=True)
        )
        lines.append(f"| {label} | {_fmt(sft)} | {_fmt(grpo)} | {pairs} |")
    types = sorted(results[0]["sft"]["per_question_type"])
    for name in types:
        key = (
            "accuracy" if "accuracy" in results[0]["sft"]["per_question_type"][name] else "mean_iou"
        )
        sft = [r["sft"]["per_question_type"][name].get(key) for r in results]
        grpo = [r["grpo"]["per_question_type"][name].get(key) for r in results]
        lines.append(f"| {name} {key} | {_fmt(sft)} | {_fmt(grpo)} | |")
    speed = [r["grpo_steps_per_second"] for r in results]
    lines += [
        "",
        f"GRPO steps/s: {_fmt(speed)} ({results[0]['grpo_steps']} steps per seed); "
        f"SFT wall s: {_fmt([r['sft_s'] for r in results])}; "
        f"GRPO wall s (incl. loading): {_fmt([r['grpo_s'] for r in results])}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--config", default="tiny-cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--parallel", type=int, default=1, help="seeds run at once")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_vlm"))
    parser.add_argument("--data", type=Path, help="existing data folder (default: OUT/data)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out / "data"
    if not (data / "meta.json").is_file():
        common = ["--config", args.config, "--seed", str(args.data_seed)]
        for item in args.set:
            common += ["--set", item]
        _run(["vlm", "data", "--out", str(data), "--quiet", *common], args.out / "log.txt")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(lambda s: _one_seed(s, args, data), args.seeds))
    summary = {
        "command": " ".join(sys.argv),
        "wall_s": time.perf_counter() - start,
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(results)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
