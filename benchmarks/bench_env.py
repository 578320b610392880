"""Environment throughput: agent steps per second, batched kernel vs a batch of one.

python benchmarks/bench_env.py [--threads 2] [--contrast-mix 0.5]

``--contrast-mix P`` also times 32 agents with that share of episodes blending T1w and T2w
(``augment.contrast_mix``) against none, interleaved, and prints the ratio.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

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
    parser.add_argument("--contrast-mix", type=float, default=0.0)
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
    if args.contrast_mix > 0:
        mixed = replace(config.augment, contrast_mix=args.contrast_mix)
        rates: dict[float, list[float]] = {0.0: [], args.contrast_mix: []}
        for _ in range(3):  # interleaved: the machine's drift hits both alike
            for share, augment in ((0.0, config.augment), (args.contrast_mix, mixed)):
                kernel = LandmarkKernel(scans, targets, config.env, augment, 32, seed=0)
                rates[share].append(steps_per_second(kernel, steps=20))
        plain, blended = (float(np.median(v)) for v in rates.values())
        print(
            f"\n32 agents, contrast_mix {args.contrast_mix}: {blended:,.0f} steps/s against "
            f"{plain:,.0f} without ({blended / plain:.2f}x)"
        )


if __name__ == "__main__":
    main()
