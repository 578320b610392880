"""Replay memory for 10^6 transitions (poses, re-rendered when sampled) vs storing patches.

python benchmarks/bench_replay.py
"""

from __future__ import annotations

from medrl.agents.replay import PoseReplay
from medrl.config import Config


def main() -> None:
    config = Config()
    replay = PoseReplay(1_000_000, config.env.frames, config.env.action_history)
    p = config.env.patch_size
    patch_bytes = 2 * config.env.frames * p**3 * 4 * 1_000_000  # state + next state, float32
    print("| replay of 10^6 transitions | memory |")
    print("|---|---:|")
    print(f"| poses (medrl) | {replay.nbytes / 2**20:,.0f} MiB |")
    print(f"| patches {p}^3 float32, state + next | {patch_bytes / 2**20:,.0f} MiB |")


if __name__ == "__main__":
    main()
