"""Inference time: all landmarks of one 1 mm brain (MNI152NLin6Asym T1w), shipped model.

python benchmarks/bench_inference.py [--threads 2] [--model DIR]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import median_seconds, set_threads
from medrl.agents.checkpoint import load_model
from medrl.agents.search import search
from medrl.data.sources import load_split
from medrl.predict import default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model or default_model_dir(), args.device)
    case = load_split("builtin:afids", "test")[0]
    with torch.inference_mode():
        seconds = median_seconds(lambda: search(model, case.volume, args.device), repeats=5)
        steps = search(model, case.volume, args.device).steps
    print("| measure | value |")
    print("|---|---:|")
    print(f"| landmarks x starts | {len(model.names)} x {model.config.search.num_starts} |")
    print(f"| batched search steps | {steps} |")
    print(f"| seconds per scan (median of 5, incl. pyramid) | {seconds:.2f} |")


if __name__ == "__main__":
    main()
