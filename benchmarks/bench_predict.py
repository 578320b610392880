"""Batch prediction throughput: scans per minute of `medrl predict --input-dir` (shipped model).

The scans are rigidly moved copies of the held-out 1 mm template (MNI152NLin6Asym T1w),
written as .nii.gz to a temporary folder, so reading and writing are part of the time.
Each repeat predicts the whole folder into a fresh output folder; the table gives the
median over repeats.

PYTHONPATH=. python benchmarks/bench_predict.py [--threads 2] [--scans 6] [--repeats 3] [--ray]

``--ray`` runs the same batch on a local Ray cluster of ``--threads`` CPUs (one model copy
per CPU, one torch thread each) instead of one process with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._common import set_threads
from medrl.data.sources import load_split
from medrl.evaluation import move_case, random_rigid
from medrl.io.images import write_image
from medrl.predict import predict_jobs
from medrl.scan_jobs import jobs_from_folder


def write_scans(folder: Path, count: int) -> None:
    case = load_split("builtin:afids", "test")[0]
    assert case.landmarks is not None
    for index in range(count):
        volume, _ = move_case(case.volume, case.landmarks, random_rigid(500 + index, 15.0, 20.0))
        write_image(volume, folder / f"scan{index:03d}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2, help="CPU cores to use")
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ray", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="medrl-bench-predict-") as tmp:
        scans = Path(tmp) / "scans"
        write_scans(scans, args.scans)
        if args.ray:
            import ray

            from medrl.distributed.ray_predict import predict_with_ray

            ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        rates, per_scan = [], []
        for repeat in range(args.repeats):
            out = Path(tmp) / f"out{repeat}"
            jobs = jobs_from_folder(scans, out)
            started = time.perf_counter()
            if args.ray:
                rows = predict_with_ray(jobs, out, args.model, args.device, workers=args.threads)
            else:
                rows = predict_jobs(jobs, out, args.model, args.device, progress=False)
            seconds = time.perf_counter() - started
            rates.append(60.0 * len(jobs) / seconds)
            per_scan.extend(float(row["seconds"]) for row in rows)
        if args.ray:
            ray.shutdown()
    mode = (
        f"Ray Data, {args.threads} workers x 1 thread"
        if args.ray
        else f"1 process, {args.threads} torch threads"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| mode | {mode} |")
    print(f"| scans per batch x repeats | {args.scans} x {args.repeats} |")
    print(f"| scans per minute (median over repeats) | {statistics.median(rates):.1f} |")
    print(f"| seconds per scan, read+search+write (median) | {statistics.median(per_scan):.2f} |")


if __name__ == "__main__":
    main()
