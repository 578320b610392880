"""Inference time: all landmarks of one 1 mm brain (MNI152NLin6Asym T1w), shipped model.

For a model that carries a supervised detector (``search.detector_weight``), also the agent
alone, the agent with its mirror reading (``search.mirror``), the detector alone and the two
one after the other, against the search that runs the detector in a worker thread beside the
agent, without and as configured (all in one process, alternating).

python benchmarks/bench_inference.py [--threads 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks._common import median_seconds, set_threads
from medrl.agents.checkpoint import load_model, with_overrides
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
    volume = case.volume
    with torch.inference_mode():
        seconds = median_seconds(lambda: search(model, volume, args.device), repeats=5)
        steps = search(model, volume, args.device).steps
    print("| measure | value |")
    print("|---|---:|")
    print(f"| landmarks x starts | {len(model.names)} x {model.config.search.num_starts} |")
    print(f"| batched search steps | {steps} |")
    print(f"| seconds per scan (median of 5, incl. pyramid) | {seconds:.2f} |")
    detector = model.detector
    if detector is None or model.config.search.detector_weight <= 0:
        return
    alone = with_overrides(model, ["search.detector_weight=0", "search.mirror=false"])
    unmirrored = with_overrides(model, ["search.mirror=false"])
    mirrored_agent = with_overrides(model, ["search.detector_weight=0", "search.mirror=true"])

    def one_after_the_other() -> None:
        search(alone, volume, args.device)
        detector.detect(volume, args.device)

    runs = {
        "the agent alone (search.detector_weight=0)": lambda: search(alone, volume, args.device),
        "the agent and its mirror reading (search.mirror, no detector)": (
            lambda: search(mirrored_agent, volume, args.device)
        ),
        "the detector alone": lambda: detector.detect(volume, args.device),
        "agent, then detector (one after the other)": one_after_the_other,
        "agent and detector (the detector in a worker thread; search.mirror=false)": (
            lambda: search(unmirrored, volume, args.device)
        ),
        f"the model as it is (search.mirror={model.config.search.mirror})": (
            lambda: search(model, volume, args.device)
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for _ in range(5):  # alternating, so that the machine's drift hits all alike
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
    for name, values in times.items():
        print(f"| seconds per scan, {name} (median of 5) | {float(np.median(values)):.2f} |")


if __name__ == "__main__":
    main()
