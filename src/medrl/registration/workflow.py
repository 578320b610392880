"""``medrl register``: register a moving image to a fixed image and write what came out.

One pair (:func:`register_pair`) writes into its output folder:

* ``transform.tfm`` (rigid, affine) or ``transform.nii.gz`` (displacement field): the
  fixed -> moving map in LPS mm, so ``sitk.Resample(moving, fixed, T)`` aligns the moving
  image on the fixed grid (:mod:`medrl.registration.transforms` reads and writes both);
* ``moved.nii.gz``: the moving image resampled so (linear); ``moved_labels.nii.gz``: its label
  map so (nearest neighbour); ``moved_landmarks.fcsv``: its landmarks carried onto the fixed
  image by the inverse map (RAS);
* ``registration.json``: method, time, the method's details, the inputs and, with the fixed
  image's landmarks or labels, the metrics before (identity) and after registration (TRE;
  Dice and HD95 per label; the Jacobian determinant of a displacement field);
* ``report.html``: the page of :mod:`medrl.report.registration`.

Every input is read and checked, and the registration run, before anything is written. The
files are then written into a staging folder; a new output folder is that staging folder
renamed, an existing one gets the files moved in with ``registration.json`` last. A folder
with ``registration.json`` is therefore complete, and a bad input leaves no output folder (or
the old one as it was).
:func:`medrl.registration.batch.register_datalist` runs a datalist of pairs, skipping pairs
already done, like ``medrl predict``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medrl.errors import InputError, MedrlError
from medrl.io.images import Volume, read_image, same_grid, write_image
from medrl.io.landmarks import Landmarks, read_landmarks, write_landmarks
from medrl.metrics.registration import (
    dice_per_label,
    hd95_mm_per_label,
    jacobian_determinant,
    jacobian_stats,
    tre_mm,
)
from medrl.registration.base import (
    METHODS,
    RegisterOptions,
    RegistrationMethod,
    RegistrationOutcome,
)
from medrl.registration.transforms import (
    invert,
    is_displacement_field,
    map_landmarks,
    resample_moving,
    transform_file_name,
    write_transform,
)
from medrl.utils.atomic import TEMP_PREFIX, _umask
from medrl.utils.faults import failpoint
from medrl.utils.folder_lock import folder_lock

RECORD_NAME = "registration.json"
"""Written last: its presence marks a finished pair."""
RECORD_FORMAT = 1
OUTPUT_NAMES = (
    "transform.tfm",
    "transform.nii.gz",
    "transform.h5",
    "moved.nii.gz",
    "moved_labels.nii.gz",
    "moved_landmarks.fcsv",
    "report.html",
)
"""Every file a pair may have (an older run's leftovers among them are removed)."""
OPTIONAL_METHOD_MODULES = (
    "medrl.registration.agent",
    "medrl.registration.landmark_rigid",
    "medrl.registration.deformable",
)
"""Modules that register more methods when they are installed."""
IDENTITY = sitk.Transform(3, sitk.sitkIdentity)


# ---------------------------------------------------------------------------- methods
def load_methods() -> dict[str, RegistrationMethod]:
    """Every registration method: the classical ones and those of the optional modules that
    exist (the agent's, the deformable network's)."""
    importlib.import_module("medrl.registration.classical")
    for name in OPTIONAL_METHOD_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    return METHODS


def get_method(name: str) -> RegistrationMethod:
    """The method called ``name``; InputError listing the known methods otherwise.

    The optional modules are imported only for a method that is not a classical one.
    """
    importlib.import_module("medrl.registration.classical")
    if name not in METHODS:
        load_methods()
    if name not in METHODS:
        raise InputError(
            f"unknown registration method {name!r} (known: {', '.join(sorted(METHODS))})"
        )
    return METHODS[name]


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PairFiles:
    """The files of one pair: the two images and what may come with them."""

    fixed: Path
    moving: Path
    labels: Path | None = None
    """Label map of the moving image (on its grid)."""
    landmarks: Path | None = None
    """Landmarks of the moving image."""
    fixed_landmarks: Path | None = None
    fixed_labels: Path | None = None


@dataclass(frozen=True, eq=False)
class Pair:
    """A pair read and checked."""

    fixed: Volume
    moving: Volume
    labels: Volume | None
    landmarks: Landmarks | None
    fixed_landmarks: Landmarks | None
    fixed_labels: Volume | None


def _world_box_lps(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest LPS corner of the axis-aligned box around the image's voxels."""
    size = np.asarray(volume.shape_xyz, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)])
    world = volume.index_to_world(corners * size - 0.5, "LPS")
    return world.min(axis=0), world.max(axis=0)


def check_overlap(fixed: Volume, moving: Volume) -> None:
    """InputError unless the two images' world boxes overlap."""
    fixed_low, fixed_high = _world_box_lps(fixed)
    moving_low, moving_high = _world_box_lps(moving)
    if np.all(np.minimum(fixed_high, moving_high) > np.maximum(fixed_low, moving_low)):
        return

    def box(low: np.ndarray, high: np.ndarray) -> str:
        return f"{np.round(low, 1).tolist()} .. {np.round(high, 1).tolist()}"

    raise InputError(
        f"the moving image and the fixed image {fixed.source} do not overlap in world space "
        f"(LPS mm boxes: moving {box(moving_low, moving_high)}, fixed "
        f"{box(fixed_low, fixed_high)}): are their headers' positions right?",
        moving.source,
    )


def _read_label_map(path: Path, grid: Volume, role: str) -> Volume:
    """A label map on ``grid`` (the ``role`` image's): integer values >= 0."""
    try:
        labels = read_image(path)
    except InputError as exc:
        raise InputError(f"cannot use as a label map: {exc.problem}", path) from None
    if not same_grid(labels, grid):
        raise InputError(
            f"label map is not on the grid of the {role} image {grid.source} (size "
            f"{labels.shape_xyz} vs {grid.shape_xyz}, spacing "
            f"{np.round(labels.spacing_mm, 4).tolist()} vs "
            f"{np.round(grid.spacing_mm, 4).tolist()} mm, or origin/direction differ)",
            path,
        )
    array = labels.array
    if not np.array_equal(array, np.rint(array)) or float(array.min()) < 0:
        raise InputError("a label map holds integer values >= 0 (0: background)", path)
    return labels


def load_pair(files: PairFiles) -> Pair:
    """Read and check every file of a pair (InputError naming the file at fault).

    Both images must be 3D scalar images without NaN (``read_image``) whose world boxes
    overlap; a label map must be on its image's grid; fixed landmarks (labels) need the moving
    image's landmarks (labels) to be compared with, and a name in common.
    """
    fixed = read_image(files.fixed)
    moving = read_image(files.moving)
    check_overlap(fixed, moving)
    labels = None if files.labels is None else _read_label_map(files.labels, moving, "moving")
    fixed_labels = None
    if files.fixed_labels is not None:
        fixed_labels = _read_label_map(files.fixed_labels, fixed, "fixed")
        if labels is None:
            raise InputError(
                "fixed labels are compared with the moving image's labels: give those too",
                files.fixed_labels,
            )
    landmarks = None if files.landmarks is None else read_landmarks(files.landmarks)
    fixed_landmarks = None
    if files.fixed_landmarks is not None:
        fixed_landmarks = read_landmarks(files.fixed_landmarks)
        if landmarks is None:
            raise InputError(
                "fixed landmarks are compared with the moving image's landmarks: give those too",
                files.fixed_landmarks,
            )
        if not set(fixed_landmarks.names) & set(landmarks.names):
            raise InputError(
                f"no landmark name in common with {files.landmarks}", files.fixed_landmarks
            )
    return Pair(fixed, moving, labels, landmarks, fixed_landmarks, fixed_labels)


# ---------------------------------------------------------------------------- metrics
def _summary_mm(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def landmark_metrics(fixed: Landmarks, moving: Landmarks, moved: Landmarks) -> dict[str, Any]:
    """TRE of the landmarks named in both sets: before (the moving landmarks where they are,
    i.e. the identity map) and after (carried onto the fixed image)."""
    names = [name for name in fixed.names if name in moving.names]
    target = fixed.subset(names).points_ras
    before = tre_mm(target, moving.subset(names).points_ras)
    after = tre_mm(target, moved.subset(names).points_ras)
    return {
        "count": len(names),
        "tre_before_mm": _summary_mm(before),
        "tre_after_mm": _summary_mm(after),
        "per_landmark": [
            {"name": n, "tre_before_mm": float(b), "tre_after_mm": float(a)}
            for n, b, a in zip(names, before, after, strict=True)
        ],
    }


def label_metrics(fixed_labels: Volume, before: Volume, after: Volume) -> dict[str, Any]:
    """Dice and HD95 per label of the fixed labels against the moving labels on the fixed
    grid, before (identity) and after registration, and their means over the labels."""
    values = sorted(
        {int(v) for v in np.unique(np.rint(fixed_labels.array)) if v}
        | {int(v) for v in np.unique(np.rint(after.array)) if v}
        | {int(v) for v in np.unique(np.rint(before.array)) if v}
    )
    scores = {
        "dice_before": dice_per_label(fixed_labels, before, values),
        "dice_after": dice_per_label(fixed_labels, after, values),
        "hd95_before_mm": hd95_mm_per_label(fixed_labels, before, values),
        "hd95_after_mm": hd95_mm_per_label(fixed_labels, after, values),
    }
    means = {
        f"mean_{key}": float(np.nanmean(list(table.values())))
        if np.isfinite(list(table.values())).any()
        else float("nan")
        for key, table in scores.items()
    }
    per_label = [{"label": v, **{k: table[v] for k, table in scores.items()}} for v in values]
    return {**means, "per_label": per_label}


# ---------------------------------------------------------------------------- outputs
def _jsonable(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, paths to text, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_labels(volume: Volume, path: Path) -> None:
    image = sitk.Cast(volume.to_sitk(), sitk.sitkUInt16)
    if float(volume.array.max()) > 65535:
        image = sitk.Cast(volume.to_sitk(), sitk.sitkUInt32)
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_json(record: Mapping[str, Any], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_jsonable(record), handle, indent=2, allow_nan=False, default=str)
        handle.write("\n")


def publish(out_dir: Path, writers: Mapping[str, Callable[[Path], None]], record: dict) -> None:
    """Write every file into a staging folder, then into ``out_dir``, ``registration.json``
    last (see the module docstring). Nothing is half-written when a writer fails."""
    out_dir = Path(out_dir)
    # Inside an existing folder (whose lock holder removes what a killed writer left), else
    # beside it, so that the whole folder can be renamed into place.
    where = out_dir if out_dir.is_dir() else out_dir.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out_dir.name}.", dir=where))
    except OSError as exc:
        raise MedrlError(f"cannot write ({exc.strerror or exc})", out_dir) from exc
    try:
        os.chmod(staging, 0o777 & ~_umask())
        for name, write in writers.items():
            write(staging / name)
        _write_json(record, staging / RECORD_NAME)
        failpoint("atomic-replace")
        if not out_dir.exists():
            os.replace(staging, out_dir)
            return
        (out_dir / RECORD_NAME).unlink(missing_ok=True)  # the old marker goes first
        for name in set(OUTPUT_NAMES) - set(writers):
            (out_dir / name).unlink(missing_ok=True)
        for name in writers:
            os.replace(staging / name, out_dir / name)
        os.replace(staging / RECORD_NAME, out_dir / RECORD_NAME)
    except OSError as exc:
        raise MedrlError(f"cannot write ({exc.strerror or exc})", out_dir) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------- one pair
def register_pair(
    fixed_path: str | Path,
    moving_path: str | Path,
    out_dir: str | Path,
    method: str = "affine",
    options: RegisterOptions | None = None,
    labels: str | Path | None = None,
    landmarks: str | Path | None = None,
    fixed_landmarks: str | Path | None = None,
    fixed_labels: str | Path | None = None,
    report: bool = True,
    lock: bool = True,
) -> dict[str, Any]:
    """Register ``moving_path`` to ``fixed_path`` with ``method`` and write ``out_dir``.

    Returns the record written to ``registration.json``. ``lock``: hold ``out_dir``'s write
    lock while writing (a batch holds its parent's instead).

    Raises:
        InputError: an unknown method, or any input file missing, unreadable or not fitting
            (before anything is written).
    """
    started = time.perf_counter()
    run = get_method(method)
    options = options or RegisterOptions()
    optional = (labels, landmarks, fixed_landmarks, fixed_labels)
    files = PairFiles(Path(fixed_path), Path(moving_path), *(_path(p) for p in optional))
    pair = load_pair(files)
    outcome = run(pair.fixed, pair.moving, options)
    writers, record = _results(files, pair, outcome, options, report)
    record["total_seconds"] = time.perf_counter() - started
    if lock:
        with folder_lock(out_dir, "output folder", "medrl register"):
            publish(Path(out_dir), writers, record)
    else:
        publish(Path(out_dir), writers, record)
    return _jsonable(record)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None or str(value) == "" else Path(value)


def _results(
    files: PairFiles,
    pair: Pair,
    outcome: RegistrationOutcome,
    options: RegisterOptions,
    report: bool,
) -> tuple[dict[str, Callable[[Path], None]], dict[str, Any]]:
    """What to write (file name -> writer) and the record of a registered pair."""
    transform = outcome.transform
    low = float(pair.moving.array.min())
    moved = resample_moving(pair.moving, pair.fixed, transform, "linear", low)
    writers: dict[str, Callable[[Path], None]] = {
        transform_file_name(transform): lambda path: write_transform(transform, path),
        "moved.nii.gz": lambda path: write_image(moved, path),
    }
    metrics: dict[str, Any] = {}
    moved_landmarks = None
    if pair.landmarks is not None:
        moved_landmarks = map_landmarks(invert(outcome), pair.landmarks)
        writers["moved_landmarks.fcsv"] = lambda path: write_landmarks(moved_landmarks, path)
        if pair.fixed_landmarks is not None:
            metrics["landmarks"] = landmark_metrics(
                pair.fixed_landmarks, pair.landmarks, moved_landmarks
            )
    if pair.labels is not None:
        moved_labels = resample_moving(pair.labels, pair.fixed, transform, "nearest")
        writers["moved_labels.nii.gz"] = lambda path: _write_labels(moved_labels, path)
        if pair.fixed_labels is not None:
            before = resample_moving(pair.labels, pair.fixed, IDENTITY, "nearest")
            metrics["labels"] = label_metrics(pair.fixed_labels, before, moved_labels)
    jacobian = None
    if is_displacement_field(transform):
        field = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        jacobian = jacobian_determinant(field)
        inside = _inside(field, pair.fixed)
        metrics["jacobian"] = jacobian_stats(jacobian, inside if inside.any() else None)
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "method": outcome.method,
        "seconds": outcome.seconds,
        "details": outcome.details,
        "convention": "transform maps fixed to moving points (LPS mm): "
        "sitk.Resample(moving, fixed, transform) aligns the moving image on the fixed grid",
        "inputs": {f.name: _absolute(getattr(files, f.name)) for f in fields(files)},
        "options": {f.name: getattr(options, f.name) for f in fields(options)},
        "outputs": sorted([*writers, RECORD_NAME, *(["report.html"] if report else [])]),
        "metrics": metrics,
    }
    if report:
        from medrl.report.registration import registration_report

        before_image = resample_moving(pair.moving, pair.fixed, IDENTITY, "linear", low)
        page = registration_report(
            _jsonable(record),
            pair.fixed,
            before_image,
            moved,
            fixed_landmarks=pair.fixed_landmarks,
            moving_landmarks=pair.landmarks,
            moved_landmarks=moved_landmarks,
            jacobian=jacobian,
        )
        writers["report.html"] = lambda path: path.write_text(page, encoding="utf-8")
    return writers, record


def _inside(field: sitk.Image, fixed: Volume) -> np.ndarray:
    """(z, y, x) mask of the field's voxels whose centres lie inside the fixed image."""
    grid = Volume.from_sitk(sitk.VectorIndexSelectionCast(field, 0, sitk.sitkFloat32))
    nx, ny, nz = grid.shape_xyz
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return fixed.contains_ras(grid.index_to_world(index, "RAS")).reshape(nz, ny, nx)


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(Path(os.path.normpath(path.absolute())))
