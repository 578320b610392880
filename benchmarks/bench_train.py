"""Training throughput with the `afids` preset: updates per second and agent steps per second.

python benchmarks/bench_train.py [--threads 2]
"""

from __future__ import annotations

import argparse

from benchmarks._common import afids_preset, collect_and_learn_seconds, set_threads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    config = afids_preset(args.device, "agent.learning_starts=0")
    collect, learn = collect_and_learn_seconds(config, repeats=20)
    n = config.train.num_envs
    print("| measure | value |")
    print("|---|---:|")
    print(f"| collect: batched env step of {n} agents incl. Q-network | {collect * 1000:.1f} ms |")
    print(
        f"| learn: one update, batch {config.agent.batch_size} (render + double-DQN loss) "
        f"| {learn * 1000:.1f} ms |"
    )
    print(f"| updates / s | {1 / learn:.1f} |")
    per_step = collect + config.agent.updates_per_step * learn
    print(f"| agent steps / s while training | {n / per_step:,.0f} |")


if __name__ == "__main__":
    main()
