"""The scans of a batch job and the file each one writes: from ``--image`` paths, a folder
searched recursively, or a datalist.

A :class:`ScanJob` is one scan, its name in the summary and its output path. Outputs are
``OUT/<scan name><suffix>``; where scan names would collide (or the scans come from a folder)
the output mirrors the scan's path below the common folder. Used by ``medrl predict``
(:mod:`medrl.predict`) and its Ray version (:mod:`medrl.distributed.ray_predict`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medrl.errors import InputError
from medrl.io.images import DICOM_SUFFIXES, IMAGE_SUFFIXES

__all__ = [
    "ScanJob",
    "check_unique",
    "find_scans",
    "jobs_from_datalist",
    "jobs_from_folder",
    "jobs_from_images",
    "output_name",
]


def output_name(image: Path) -> str:
    """The scan's file name without its image suffix (``sub-01.nii.gz`` -> ``sub-01``)."""
    name = image.name
    for suffix in (*IMAGE_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class ScanJob:
    """One scan to predict: its name in the summary, the image and the output file."""

    scan: str
    image: Path
    output: Path


def _is_dicom_name(name: str) -> bool:
    return name.lower().endswith(DICOM_SUFFIXES)


def find_scans(folder: str | Path) -> list[Path]:
    """Image files (by suffix) and DICOM series folders (with ``.dcm``/``.ima``/``.dicom``
    files) under ``folder``, recursively, sorted; hidden files and folders are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError("input folder does not exist or is not a folder", root)
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        visible = [f for f in files if not f.startswith(".")]
        if any(_is_dicom_name(f) for f in visible):
            found.append(Path(current))
        found.extend(Path(current) / f for f in visible if f.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)


def _relative_output(out_dir: Path, relative: Path, suffix: str) -> Path:
    return out_dir / relative.parent / f"{output_name(relative)}{suffix}"


def jobs_from_images(
    images: Sequence[str | Path], out_dir: str | Path, suffix: str = ".fcsv"
) -> list[ScanJob]:
    """Outputs are ``OUT/<name><suffix>``; if two scans share a name, every output mirrors
    the scan's path below the scans' common folder instead."""
    out_dir = Path(out_dir)
    paths = [Path(os.path.normpath(Path(p).absolute())) for p in images]
    names = [output_name(p) for p in paths]
    if len(set(names)) == len(names):
        return [
            ScanJob(str(p), p, out_dir / f"{n}{suffix}") for p, n in zip(paths, names, strict=True)
        ]
    common = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    if common in paths:  # a DICOM folder that holds the other scans
        common = common.parent
    jobs = [
        ScanJob(str(p), p, _relative_output(out_dir, p.relative_to(common), suffix)) for p in paths
    ]
    check_unique(jobs)
    return jobs


def jobs_from_folder(
    folder: str | Path, out_dir: str | Path, suffix: str = ".fcsv"
) -> list[ScanJob]:
    """Every scan under ``folder``; outputs mirror the scans' paths below it."""
    root = Path(folder)
    scans = find_scans(root)
    if not scans:
        suffixes = ", ".join((*IMAGE_SUFFIXES, *DICOM_SUFFIXES))
        raise InputError(f"no scans found (looked for {suffixes})", root)
    jobs = []
    for path in scans:
        relative = path.relative_to(root) if path != root else Path(root.name)
        output = _relative_output(Path(out_dir), relative, suffix)
        jobs.append(ScanJob(str(relative), path, output))
    return jobs


def jobs_from_datalist(
    datalist: str | Path, out_dir: str | Path, suffix: str = ".fcsv"
) -> list[ScanJob]:
    """Every case of a datalist (labels optional, all splits); outputs are ``OUT/<id><suffix>``.

    Files are not checked here: a missing scan is one failed case, not a stop.
    """
    from medrl.data.datalist import read_datalist

    jobs = []
    for spec in read_datalist(datalist, check_files=False):
        relative = Path(spec.case_id)
        if relative.is_absolute() or ".." in relative.parts:
            raise InputError(f"case id {spec.case_id!r} cannot name an output file", datalist)
        output = Path(out_dir) / f"{spec.case_id}{suffix}"
        jobs.append(ScanJob(spec.case_id, spec.image, output))
    return jobs


def check_unique(jobs: Iterable[ScanJob]) -> None:
    seen: dict[Path, str] = {}
    for job in jobs:
        if job.output in seen:
            raise InputError(
                f"scans {seen[job.output]} and {job.scan} would write the same output", job.output
            )
        seen[job.output] = job.scan
