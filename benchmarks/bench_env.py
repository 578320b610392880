"""Environment throughput: agent steps per second, batched kernel vs a batch of one.

python benchmarks/bench_env.py [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._common import builtin_training_scans, median_seconds, set_threads
from medrl.config import Config
from medrl.envs.landmark import LandmarkKernel


def steps_per_second(kernel: LandmarkKernel, steps: int = 20) -> float:
    rng = np.random.default_rng(0)

    def run() -> None:
        for _ in range(steps):
            kernel.observe()
            actions = torch.as_tensor(rng.integers(0, 6, kernel.num_envs))
            _, terminated, truncated, _ = kernel.step(actions)
            kernel.reset((terminated | truncated).numpy())

    return steps * kernel.num_envs / median_seconds(run, repeats=3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    config = Config()
    scans, targets, _ = builtin_training_scans(config)
    print("| agents in the batch | agent steps / s (observe + step) | vs batch of one |")
    print("|---:|---:|---:|")
    base = None
    for n in (1, 8, 32, 128):
        kernel = LandmarkKernel(scans, targets, config.env, config.augment, n, seed=0)
        rate = steps_per_second(kernel, steps=40 if n == 1 else 20)
        base = base or rate
        print(f"| {n} | {rate:,.0f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    main()
