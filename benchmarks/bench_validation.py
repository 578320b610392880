"""Cost of validating during training (train.eval_every) with the `afids` preset.

Times the one-off set-up (load the validation scans, move them rigidly, build pyramids)
and one validation (search of every landmark on ``train.eval_scans`` moved scans) with the
shipped model's network, and compares it with the training time between two validations.

python -m benchmarks.bench_validation [--threads 2] [--device cpu] [--steps-per-s 4.5]
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from benchmarks._common import median_seconds, set_threads
from medrl.agents.checkpoint import load_model
from medrl.agents.validation import Validator
from medrl.config import load_config
from medrl.predict import default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--steps-per-s", type=float, default=4.5, help="training speed to compare with"
    )
    args = parser.parse_args()
    set_threads(args.threads)
    preset = Path(str(resources.files("medrl") / "configs" / "afids.yaml"))
    config = load_config(preset, [f"train.device={args.device}"])
    model = load_model(default_model_dir(), args.device)
    started = time.perf_counter()
    validator = Validator.from_config(config, model.names, args.device)
    setup = time.perf_counter() - started
    result = validator.evaluate(model.network, config)
    once = median_seconds(lambda: validator.evaluate(model.network, config), repeats=3)
    between = config.train.eval_every / args.steps_per_s
    print("| measure | value |")
    print("|---|---:|")
    print(f"| set-up, once ({config.train.eval_scans} moved scans) | {setup:.1f} s |")
    print(
        f"| one validation ({len(model.names)} landmarks x {len(validator.scans)} scans) "
        f"| {once:.2f} s |"
    )
    print(
        f"| share of training time (every {config.train.eval_every} steps at "
        f"{args.steps_per_s} steps/s) | {100 * once / (between + once):.1f} % |"
    )
    print(f"| shipped model's eval/mean_error_mm | {result['mean_error_mm']:.2f} mm |")


if __name__ == "__main__":
    main()
