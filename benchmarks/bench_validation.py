"""Cost of validating during training (train.eval_every) with the `afids` preset.

Times the one-off set-up (load the validation scans, move them rigidly, build pyramids)
and one validation (search of every landmark on ``train.eval_scans`` moved scans) with the
shipped model's network, and compares it with the training time between two validations,
timed in the same process (one batched step + its updates, as benchmarks/bench_train.py).

python -m benchmarks.bench_validation [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

from benchmarks._common import afids_preset, collect_and_learn_seconds, median_seconds, set_threads
from medrl.agents.checkpoint import load_model
from medrl.agents.validation import Validator
from medrl.config import Config
from medrl.predict import default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    config = afids_preset(args.device)
    model = load_model(default_model_dir(), args.device)
    started = time.perf_counter()
    validator = Validator.from_config(config, model.names, args.device)
    setup = time.perf_counter() - started
    result = validator.evaluate(model.network, config)
    once = median_seconds(lambda: validator.evaluate(model.network, config), repeats=3)
    step_s = _training_step_seconds(config)
    between = config.train.eval_every * step_s
    print("| measure | value |")
    print("|---|---:|")
    print(f"| set-up, once ({config.train.eval_scans} moved scans) | {setup:.1f} s |")
    print(
        f"| one validation ({len(model.names)} landmarks x {len(validator.scans)} scans) "
        f"| {once:.2f} s |"
    )
    print(f"| training: one batched step with its updates | {step_s * 1000:.0f} ms |")
    print(
        f"| share of training time (validating every {config.train.eval_every} steps) "
        f"| {100 * once / (between + once):.1f} % |"
    )
    print(f"| shipped model's eval/mean_error_mm | {result['mean_error_mm']:.2f} mm |")


def _training_step_seconds(config: Config) -> float:
    collect, learn = collect_and_learn_seconds(config, repeats=10)
    return collect + config.agent.updates_per_step * learn


if __name__ == "__main__":
    main()
