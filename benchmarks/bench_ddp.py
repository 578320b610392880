"""Training throughput of `medrl train` with 1 and more processes (torchrun), CPU or GPU.

Each run is a real `medrl train` launched by torchrun on the `afids` preset (or --config)
for --steps batched steps; the throughput is taken from the run's history.json between the
first logged step with gradient updates and the last one (start-up, data loading and the
final checkpoint are not counted). Repeated --repeats times; medians are printed.

    python -m benchmarks.bench_ddp --procs 1 2 --threads 1            # CPU: 1 vs 2 processes
    python -m benchmarks.bench_ddp --procs 1 --device cuda            # one GPU
    python -m benchmarks.bench_ddp --procs 1 --device cpu --threads 16

--cache DIR points MEDRL_CACHE at a folder holding afids/v1 (the built-in data, fetched
elsewhere); --datalist uses your own cases instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import medrl

SRC = Path(medrl.__file__).resolve().parents[1]


def run_once(args: argparse.Namespace, procs: int, threads: int, device: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        sets = [
            f"train.device={device}",
            f"train.threads={threads}",
            f"train.total_steps={args.steps}",
            f"train.log_every={args.log_every}",
            f"train.checkpoint_every={args.steps}",
            "train.eval_every=0",
            "train.max_minutes=0",
            f"agent.learning_starts={args.learning_starts}",
            f"search.levels={args.search_levels}",  # skip the level choice after training
            *args.set,
        ]
        if args.datalist:
            sets.append(f"train.datalist={args.datalist}")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "medrl.cli",
            "train",
            "--config",
            args.config,
            *[item for value in sets for item in ("--set", value)],
            "--run-dir",
            str(run_dir),
            "--quiet",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(":")
        if args.cache:
            env["MEDRL_CACHE"] = str(Path(args.cache).resolve())
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"medrl train failed:\n{done.stderr[-4000:]}")
        history = json.loads((run_dir / "history.json").read_text())
        config = json.loads(json.dumps(_yaml(run_dir / "config.yaml")))
    learning = [r for r in history if r["updates"] > 0]
    if len(learning) < 2:
        sys.exit("too few logged steps with updates: raise --steps or lower --learning-starts")
    first, last = learning[0], learning[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    num_envs, batch = config["train"]["num_envs"], config["agent"]["batch_size"]
    updates_per_s = (last["updates"] - first["updates"]) / seconds
    return {
        "batched_steps_per_s": (last["step"] - first["step"]) / seconds,
        "env_steps_per_s": (last["step"] - first["step"]) * num_envs * procs / seconds,
        "updates_per_s": updates_per_s,
        "samples_per_s": updates_per_s * batch * procs,
        "window_steps": last["step"] - first["step"],
        "wall_s": wall,
    }


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:LOCAL_RANK per rank)")
    parser.add_argument("--config", default="afids")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--learning-starts", type=int, default=200)
    parser.add_argument("--search-levels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", help="folder with afids/v1 (sets MEDRL_CACHE)")
    parser.add_argument("--datalist", help="a datalist file instead of builtin:afids")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write every run's figures here")
    args = parser.parse_args()

    rows, raw = [], {}
    for procs in args.procs:
        runs = []
        for repeat in range(args.repeats):
            result = run_once(args, procs, args.threads, args.device)
            print(f"procs={procs} repeat={repeat}: {json.dumps(result)}", file=sys.stderr)
            runs.append(result)
        raw[procs] = runs
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((procs, med))
    print(
        f"device={args.device}, {args.threads} thread(s) per process, config {args.config}, "
        f"{args.steps} steps, median of {args.repeats}"
    )
    print("| processes | agent steps / s | updates / s | samples / s | batched steps / s |")
    print("|---:|---:|---:|---:|---:|")
    for procs, med in rows:
        print(
            f"| {procs} | {med['env_steps_per_s']:,.0f} | {med['updates_per_s']:.1f} | "
            f"{med['samples_per_s']:,.0f} | {med['batched_steps_per_s']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": raw}, indent=2))


if __name__ == "__main__":
    main()
