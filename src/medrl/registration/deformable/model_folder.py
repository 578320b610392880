"""Deformable model folders: ``deformable.safetensors`` (network weights) and
``deformable.json`` (lambda, working spacing, normalisation, network shape, training facts).

The JSON is written last: a folder without it is incomplete. :func:`save_model` replaces a
folder as a whole (:func:`medrl.utils.atomic.atomic_dir`); :func:`load_model` raises
:class:`medrl.errors.CheckpointError` naming the folder when anything is missing or wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medrl.errors import CheckpointError
from medrl.registration.deformable.frames import NORMALISATION
from medrl.registration.deformable.network import NetworkSettings, VelocityUNet
from medrl.utils.atomic import atomic_dir, atomic_open

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER",
    "VELOCITY_UNITS",
    "WEIGHTS",
    "DeformableModel",
    "default_model_dir",
    "load_model",
    "save_model",
]

FORMAT = "medrl-deformable"
FORMAT_VERSION = 1
HEADER = "deformable.json"
WEIGHTS = "deformable.safetensors"
VELOCITY_UNITS = "voxels of the working grid; channels x, y, z along the index axes i, j, k"


@dataclass(frozen=True, eq=False)
class DeformableModel:
    """A velocity network with what is needed to apply it."""

    network: VelocityUNet
    lam: float
    """The regularisation weight it was trained with (learned or fixed)."""
    working_spacing_mm: float
    integration_steps: int
    similarity: str
    training: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None


def default_model_dir() -> Path:
    """Where a shipped deformable model would live (``medrl/models/deformable``; none yet)."""
    return Path(str(resources.files("medrl") / "models" / "deformable"))


def save_model(model: DeformableModel, folder: str | Path) -> Path:
    """Write the model folder (replacing any folder there); returns its path."""
    folder = Path(folder)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lambda": float(model.lam),
        "working_spacing_mm": float(model.working_spacing_mm),
        "integration_steps": int(model.integration_steps),
        "velocity_units": VELOCITY_UNITS,
        "similarity": model.similarity,
        "normalisation": NORMALISATION,
        "network": asdict(model.network.settings),
        "training": model.training,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        with atomic_open(tmp / HEADER) as handle:
            json.dump(header, handle, indent=2)
            handle.write("\n")
    return folder


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> DeformableModel:
    """Read a model folder; CheckpointError naming the folder if it is missing or corrupt."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError("no deformable model folder here (train one first)", folder)
    header_path, weights_path = folder / HEADER, folder / WEIGHTS
    for path in (header_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"missing {path.name}: not a deformable model folder", folder)
    try:
        header = json.loads(header_path.read_text())
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(
                f"format is {header.get('format') if isinstance(header, dict) else None!r}, "
                f"not {FORMAT!r}",
                folder,
            )
        if header.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"format version {header.get('format_version')!r}, this medrl reads "
                f"{FORMAT_VERSION}",
                folder,
            )
        settings = NetworkSettings(**header["network"])
        network = VelocityUNet(settings)
        network.load_state_dict(load_file(str(weights_path)))
        lam = float(header["lambda"])
        spacing = float(header["working_spacing_mm"])
        steps = int(header["integration_steps"])
        if not (math.isfinite(lam) and lam > 0 and math.isfinite(spacing) and spacing > 0):
            raise ValueError(f"lambda {lam} and working spacing {spacing} must be positive")
        if steps < 0:
            raise ValueError(f"integration_steps {steps} must be >= 0")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
        # json.JSONDecodeError is a ValueError; a corrupt weights file a SafetensorError
        raise CheckpointError(
            f"the deformable model is incomplete or invalid: {exc}", folder
        ) from exc
    network.to(device).eval()
    return DeformableModel(
        network=network,
        lam=lam,
        working_spacing_mm=spacing,
        integration_steps=steps,
        similarity=str(header.get("similarity", "ncc")),
        training=dict(header.get("training") or {}),
        folder=folder,
    )
