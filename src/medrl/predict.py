"""Batch prediction without labels: one Slicer file per scan, safe to interrupt.

The file follows the model's task: landmarks as a markups ``.fcsv``, boxes as a markups
``.mrk.json`` with one ROI per structure (:data:`TASK_SUFFIXES`). Scans come from
``--image`` paths, a folder searched recursively, or a datalist. Each scan is read, searched
and written on its own (the model is loaded once): every output is written atomically, a
rerun skips scans whose output exists, and a scan that cannot be read or searched is recorded
as failed in ``OUT/summary.csv`` without stopping the others.
"""

from __future__ import annotations

import csv
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrl.config import search_overrides
from medrl.errors import CheckpointError, InputError, MedrlError
from medrl.models import default_model_dir as shipped_model_dir
from medrl.scan_jobs import (
    ScanJob,
    check_unique,
    jobs_from_datalist,
    jobs_from_folder,
    jobs_from_images,
)
from medrl.utils.atomic import atomic_open
from medrl.utils.folder_lock import folder_lock

if TYPE_CHECKING:
    from medrl.agents.search import SearchResult
    from medrl.io.images import Volume
    from medrl.io.landmarks import Landmarks

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = (
    "scan",
    "image",
    "output",
    "status",
    "seconds",
    "targets",
    "error",
    "warning",
)
TASK_SUFFIXES = {
    "landmark": ".fcsv",
    "box": ".mrk.json",
    "plane": ".mrk.json",
    "slice": ".slices.json",
    "rigid": ".tfm",
}
"""The file ``medrl predict`` writes per scan, by task (a rigid model registers pairs:
``medrl register``)."""
OK, SKIPPED, FAILED = "ok", "skipped", "failed"


def default_model_dir(task: str = "landmark") -> Path:
    """The model shipped with the package for a task (see its model.yaml)."""
    folder = shipped_model_dir(task)
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError("the package ships no default model; pass --model DIR", folder)
    return folder


def model_task(model_dir: str | Path) -> str:
    """The task of a model folder, read from its model.yaml (without loading the weights)."""
    import yaml

    from medrl.utils.yaml_io import safe_load

    header_path = Path(model_dir) / "model.yaml"
    try:
        header = safe_load(header_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read the model's header: {exc}", header_path) from exc
    if not isinstance(header, dict):
        raise CheckpointError("model.yaml is not a mapping", header_path)
    task = header.get("task", {"kind": "landmark"})  # format 1: landmark models
    kind = str(task.get("kind", "")) if isinstance(task, dict) else ""
    if kind not in TASK_SUFFIXES:
        raise CheckpointError(f"model.yaml names no known task ({kind!r})", header_path)
    return kind


# ---------------------------------------------------------------------- one scan
class ScanPredictor:
    """A loaded model that predicts one scan at a time (loaded once, reused for every scan)."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        coordinate_system: str = "RAS",
        num_starts: int | None = None,
        task: str | None = None,
        write_aligned: bool = False,
        slice_axis: int | None = None,
        strict: bool = False,
        overrides: Sequence[str] = (),
    ) -> None:
        from dataclasses import replace

        from medrl.agents.checkpoint import load_model, with_overrides

        folder = model_dir or default_model_dir(task or "landmark")
        self.model = with_overrides(load_model(folder, device, task), list(overrides))
        self.device = device
        self.coordinate_system = coordinate_system
        self.num_starts = num_starts
        self.write_aligned = write_aligned
        self.strict = strict
        self.warning = ""
        if write_aligned and self.model.kind != "plane":
            raise InputError(
                f"--write-aligned needs a plane model (MSP and AC-PC), not a {self.model.kind} "
                "model"
            )
        if slice_axis is not None:
            if self.model.kind != "slice":
                raise InputError(f"--slice-axis needs a slice model, not a {self.model.kind} model")
            if slice_axis not in (0, 1, 2):
                raise InputError(
                    f"--slice-axis must be 0, 1 or 2 (the voxel axis i, j, k), not {slice_axis}"
                )
            config = self.model.config
            config = replace(config, task=replace(config.task, slice_axis=slice_axis))
            self.model.config = self.model.task.config = config

    def search(self, job: ScanJob) -> SearchResult:
        """Read the scan and search it (nothing is written)."""
        from medrl.io.images import read_image

        return self._search(read_image(job.image))

    def _search(self, volume: Volume) -> SearchResult:
        import torch

        from medrl.agents.search import search

        with torch.inference_mode():
            return search(self.model, volume, self.device, num_starts=self.num_starts)

    def predict_landmarks(self, job: ScanJob) -> Landmarks:
        return self.search(job).landmarks

    def predict(self, job: ScanJob) -> int:
        """Read, search, write ``job.output`` atomically; return the number of targets."""
        from medrl.io.images import read_image

        volume = read_image(job.image)
        result = self._search(volume)
        if self.model.kind == "plane":
            from medrl.predict_planes import write_plane_outputs

            write_plane_outputs(
                job.output, volume, result, self.coordinate_system, self.write_aligned
            )
        elif self.model.kind == "slice":
            from medrl.predict_slices import write_slices

            write_slices(job.output, volume, result, self.coordinate_system)
        elif self.model.kind == "box":
            from medrl.io.markups import write_boxes

            write_boxes(job.output, result.names, result.estimate, self.coordinate_system)
        else:
            from medrl.io.landmarks import write_landmarks
            from medrl.predict_confidence import (
                confidence_path,
                landmark_check,
                write_confidence,
            )

            check = landmark_check(getattr(self.model.task, "reference_points_ras", None), result)
            if check is not None:  # the sidecar first: the .fcsv marks a finished scan
                self.warning = write_confidence(
                    confidence_path(job.output), result, check, self.strict, str(job.image)
                )
            write_landmarks(result.landmarks, job.output, self.coordinate_system)
        return len(result.names)

    def run(self, job: ScanJob, overwrite: bool = False) -> dict[str, Any]:
        """One summary row: ``ok``, ``skipped`` (output exists) or ``failed`` (with reason)."""
        row = summary_row(job)
        if job.output.is_file() and not overwrite:
            return {**row, "status": SKIPPED}
        started = time.perf_counter()
        self.warning = ""
        try:
            row["targets"] = self.predict(job)
            row["status"] = OK
            row["warning"] = self.warning
        except Exception as exc:  # one bad scan must not stop an archive run
            row["status"] = FAILED
            row["error"] = (
                str(exc) if isinstance(exc, MedrlError) else f"{type(exc).__name__}: {exc}"
            )
        row["seconds"] = round(time.perf_counter() - started, 3)
        return row


# ---------------------------------------------------------------------- summary
def summary_row(job: ScanJob, status: str = "") -> dict[str, Any]:
    """A summary row of ``job`` before it runs (no time, landmarks or error yet)."""
    row: dict[str, Any] = {
        "scan": job.scan,
        "image": str(job.image),
        "output": str(job.output),
        "seconds": 0.0,
        "targets": "",
        "error": "",
        "warning": "",
    }
    if status:
        row["status"] = status
    return row


def write_summary(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    columns: Sequence[str] = SUMMARY_COLUMNS,
) -> Path:
    """``OUT/summary.csv`` (atomic): one row per scan (or pair) with status, seconds and
    error, in ``columns`` (other keys of the rows are left out)."""
    path = Path(out_dir) / SUMMARY_NAME
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def count_status(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = {OK: 0, SKIPPED: 0, FAILED: 0}
    for row in rows:
        counts[row["status"]] += 1
    return counts


def finish(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, total: int, echo_outputs: bool = False
) -> Path:
    """Write the summary, tell the user, and raise if any scan failed.

    ``echo_outputs`` prints the files written (one per line, stdout) first, also when some
    scans failed.
    """
    path = write_summary(rows, out_dir)
    if echo_outputs:
        for row in rows:
            if row["status"] == OK:
                print(row["output"])
    counts = count_status(rows)
    print(
        f"{counts[OK]} predicted, {counts[SKIPPED]} skipped (output exists), "
        f"{counts[FAILED]} failed, of {total} scans; summary: {path}",
        file=sys.stderr,
    )
    if counts[FAILED]:
        raise MedrlError(f"{counts[FAILED]} of {total} scans failed (reasons in the summary)", path)
    return path


# ---------------------------------------------------------------------- the batch
def predict_jobs(
    jobs: Sequence[ScanJob],
    out_dir: str | Path,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    coordinate_system: str = "RAS",
    num_starts: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    echo_outputs: bool = False,
    task: str | None = None,
    write_aligned: bool = False,
    slice_axis: int | None = None,
    strict: bool = False,
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Predict every job in this process; the summary is written even if interrupted.

    Raises :class:`MedrlError` (after writing the summary) if any scan failed, and the
    model's :class:`CheckpointError` before anything is written.
    """
    from tqdm import tqdm

    check_unique(jobs)
    predictor = ScanPredictor(
        model_dir,
        device,
        coordinate_system,
        num_starts,
        task,
        write_aligned,
        slice_axis,
        strict,
        overrides,
    )
    rows: list[dict[str, Any]] = []
    bar = tqdm(jobs, desc="predict", unit="scan", file=sys.stderr, disable=not progress)
    try:
        for job in bar:
            row = predictor.run(job, overwrite)
            rows.append(row)
            if row["status"] == FAILED:
                bar.write(f"failed: {job.image}: {row['error']}", file=sys.stderr)
            elif row.get("warning"):
                bar.write(f"warning: {job.image}: {row['warning']}", file=sys.stderr)
            bar.set_postfix(count_status(rows))
    finally:
        bar.close()
        if rows and len(rows) < len(jobs):
            write_summary(rows, out_dir)  # interrupted: keep the record of what was done
    finish(rows, out_dir, len(jobs), echo_outputs)
    return rows


def predict(
    images: Sequence[str | Path],
    out_dir: str | Path,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    coordinate_system: str = "RAS",
    progress: bool = True,
    num_starts: int | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Predict the scans at ``images`` (files or DICOM folders); return the outputs written."""
    rows = predict_jobs(
        jobs_from_images(images, out_dir),
        out_dir,
        model_dir,
        device,
        coordinate_system,
        num_starts,
        overwrite,
        progress,
    )
    return [Path(row["output"]) for row in rows if row["status"] == OK]


def jobs_from_args(args: Any, suffix: str = ".fcsv") -> list[ScanJob]:
    if args.image:
        return jobs_from_images(args.image, args.out, suffix)
    if args.input_dir:
        return jobs_from_folder(args.input_dir, args.out, suffix)
    return jobs_from_datalist(args.datalist, args.out, suffix)


def run_from_args(args: Any) -> int:
    """``medrl predict``: the parsed command line to a batch run (here or on Ray).

    The task is ``--task`` or the model's own; a model of another task than ``--task`` is an
    error before anything is written.
    """
    task = getattr(args, "task", None)
    model_dir = Path(args.model) if args.model else default_model_dir(task or "landmark")
    kind = model_task(model_dir)
    if task is not None and kind != task:
        raise InputError(
            f"this is a {kind} model, not a {task} model (--task {task}); "
            f"use --task {kind} or a {task} model",
            model_dir,
        )
    if kind == "rigid":
        raise InputError(
            "a rigid-registration model aligns two images: use medrl register --method agent "
            "--fixed F --moving M --model DIR",
            model_dir,
        )
    jobs = jobs_from_args(args, TASK_SUFFIXES[kind])
    write_aligned = bool(getattr(args, "write_aligned", False))
    if write_aligned and kind != "plane":
        raise InputError(f"--write-aligned needs a plane model, not a {kind} model", model_dir)
    if write_aligned and args.ray:
        raise InputError("--write-aligned runs here only, not with --ray")
    slice_axis = getattr(args, "slice_axis", None)
    if slice_axis is not None and kind != "slice":
        raise InputError(f"--slice-axis needs a slice model, not a {kind} model", model_dir)
    if slice_axis is not None and args.ray:
        raise InputError("--slice-axis runs here only, not with --ray")
    strict = bool(getattr(args, "strict", False))
    if strict and args.ray:
        raise InputError("--strict runs here only, not with --ray")
    overrides = search_overrides(getattr(args, "set", None) or [])
    if overrides and args.ray:
        raise InputError("--set runs here only, not with --ray")
    options = {
        "model_dir": model_dir,
        "device": args.device,
        "coordinate_system": args.coordinate_system,
        "num_starts": args.starts,
        "overwrite": args.overwrite,
    }
    command = "medrl " + shlex.join(getattr(args, "argv", None) or ["predict"])
    with folder_lock(args.out, "output folder", command):  # one writer per output folder
        if args.ray:
            from medrl.distributed.ray_predict import predict_with_ray

            predict_with_ray(
                jobs,
                args.out,
                address=args.ray_address,
                workers=args.ray_workers,
                echo_outputs=True,
                **options,
            )
        else:
            predict_jobs(
                jobs,
                args.out,
                echo_outputs=True,
                write_aligned=write_aligned,
                slice_axis=slice_axis,
                strict=strict,
                overrides=overrides,
                **options,
            )
    return 0
