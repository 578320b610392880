"""Archive-scale prediction with Ray Data: the scans are spread over a Ray cluster's workers.

Each worker is a Ray actor that loads the model once and then predicts one scan per call,
writing the scan's ``.fcsv`` atomically, exactly as :func:`medrl.predict.predict_jobs` does
in one process; the driver gathers the per-scan rows and writes ``OUT/summary.csv``. Scans
whose output exists are skipped on the driver before any work is sent (and again by the
worker, for a concurrent rerun). Every node must see the scans and the output folder at the
same paths (a shared file system). Needs the ``ray`` extra: ``pip install 'medrl[ray]'``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medrl.errors import MedrlError
from medrl.predict import SKIPPED, ScanPredictor, finish, summary_row
from medrl.scan_jobs import ScanJob, check_unique


class _Worker:
    """A Ray Data actor: one model copy, one scan per row."""

    def __init__(self, options: dict[str, Any], overwrite: bool, torch_threads: int) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.predictor = ScanPredictor(**options)
        self.overwrite = overwrite

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [
            self.predictor.run(ScanJob(str(scan), Path(image), Path(output)), self.overwrite)
            for scan, image, output in zip(
                batch["scan"], batch["image"], batch["output"], strict=True
            )
        ]
        return {key: [str(row[key]) for row in rows] for key in rows[0]}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MedrlError("--ray needs Ray Data: pip install 'medrl[ray]'") from exc
    return ray


def predict_with_ray(
    jobs: Sequence[ScanJob],
    out_dir: str | Path,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    coordinate_system: str = "RAS",
    num_starts: int | None = None,
    overwrite: bool = False,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    echo_outputs: bool = False,
) -> list[dict[str, Any]]:
    """Predict ``jobs`` on a Ray cluster (``address``; ``None``: the running one or a local
    one). ``workers`` model copies run at once (default: the cluster's CPUs divided by
    ``cpus_per_worker``; with a CUDA ``device``, one GPU per worker unless
    ``gpus_per_worker`` says otherwise). Returns the summary rows; raises
    :class:`MedrlError` after writing the summary if any scan failed.
    """
    ray = _import_ray()
    check_unique(jobs)
    # The model is checked here, before the cluster gets any work: a bad --model is one
    # clear error, not one failure per scan.
    from medrl.agents.checkpoint import load_model
    from medrl.predict import default_model_dir

    # Absolute paths: Ray workers, on other nodes too, do not share the driver's directory.
    model_dir = Path(model_dir).resolve() if model_dir else default_model_dir()
    load_model(model_dir, "cpu")

    rows: list[dict[str, Any]] = []
    todo: list[dict[str, str]] = []
    for job in jobs:
        if job.output.is_file() and not overwrite:
            rows.append(summary_row(job, SKIPPED))
        else:
            todo.append(
                {
                    "scan": job.scan,
                    "image": str(job.image.resolve()),
                    "output": str(job.output.resolve()),
                }
            )
    started_here = False
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
            started_here = True
        try:
            rows.extend(
                _run(
                    ray,
                    todo,
                    model_dir,
                    device,
                    coordinate_system,
                    num_starts,
                    overwrite,
                    workers,
                    cpus_per_worker,
                    gpus_per_worker,
                )
            )
        finally:
            if started_here:
                ray.shutdown()
    order = {job.scan: index for index, job in enumerate(jobs)}
    rows.sort(key=lambda row: order[row["scan"]])
    finish(rows, out_dir, len(jobs), echo_outputs)
    return rows


def _run(
    ray: Any,
    todo: list[dict[str, str]],
    model_dir: Path,
    device: str,
    coordinate_system: str,
    num_starts: int | None,
    overwrite: bool,
    workers: int | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
) -> list[dict[str, Any]]:
    if device.startswith("cuda"):
        # Ray gives each actor its GPU share through CUDA_VISIBLE_DEVICES: inside the actor
        # that GPU is "cuda".
        gpus_per_worker = gpus_per_worker or 1.0
        device = "cuda"
    if workers is None:
        resources = ray.cluster_resources()
        workers = max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        if gpus_per_worker:
            workers = min(workers, int(resources.get("GPU", 0) // gpus_per_worker))
            if workers < 1:
                raise MedrlError(f"--device {device} but the Ray cluster has no GPU")
    workers = max(1, min(workers, len(todo)))
    options = {
        "model_dir": str(model_dir),
        "device": device,
        "coordinate_system": coordinate_system,
        "num_starts": num_starts,
    }
    print(f"ray: {len(todo)} scans on {workers} worker(s)", file=sys.stderr)
    dataset = ray.data.from_items(todo, override_num_blocks=len(todo))
    results = dataset.map_batches(
        _Worker,
        fn_constructor_kwargs={
            "options": options,
            "overwrite": overwrite,
            "torch_threads": max(1, int(cpus_per_worker)),
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cpus_per_worker)))}},
    )
    rows = []
    for row in results.iter_rows():
        seconds = float(row["seconds"])
        targets = int(row["targets"]) if row["targets"] else ""
        rows.append({**row, "seconds": seconds, "targets": targets})
    return rows
