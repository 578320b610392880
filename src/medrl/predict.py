"""Prediction without labels: find the landmarks in scans and write one Slicer file per scan."""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path

import torch

from medrl.agents.checkpoint import LandmarkModel, load_model
from medrl.agents.search import search
from medrl.errors import CheckpointError, InputError
from medrl.io.images import read_image
from medrl.io.landmarks import write_landmarks

DEFAULT_MODEL = "afids"


def default_model_dir() -> Path:
    """The model shipped with the package (trained on MNI152NLin2009cAsym, see its model.yaml)."""
    folder = Path(str(resources.files("medrl") / "models" / DEFAULT_MODEL))
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError("the package ships no default model; pass --model DIR", folder)
    return folder


def output_name(image: Path) -> str:
    name = image.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def predict(
    images: list[str | Path],
    out_dir: str | Path,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    coordinate_system: str = "RAS",
    progress: bool = True,
    num_starts: int | None = None,
) -> list[Path]:
    """Predict every scan; all scans are read and checked before anything is written."""
    out_dir = Path(out_dir)
    model: LandmarkModel = load_model(model_dir or default_model_dir(), device)
    paths = [Path(p) for p in images]
    names = [output_name(p) for p in paths]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise InputError(f"several scans would write the same output name(s): {sorted(duplicates)}")
    volumes = [read_image(p) for p in paths]
    written = []
    for index, (path, name, volume) in enumerate(zip(paths, names, volumes, strict=True)):
        started = time.perf_counter()
        with torch.inference_mode():
            result = search(model, volume, device, num_starts=num_starts)
        target = out_dir / f"{name}.fcsv"
        write_landmarks(result.landmarks, target, coordinate_system)
        written.append(target)
        if progress:
            seconds = time.perf_counter() - started
            print(
                f"[{index + 1}/{len(paths)}] {path}: {len(result.landmarks)} landmarks "
                f"in {seconds:.2f} s -> {target}",
                file=sys.stderr,
            )
    return written
