"""``medrl register --method deformable``: affine pre-alignment, then the learned velocity field.

Steps (frames in :mod:`medrl.registration.deformable.frames`):

1. affine registration of moving to fixed
   (:func:`medrl.baselines.registration.affine_registration`, fixed -> moving ``A``);
2. the fixed image on the model's working grid (isotropic, e.g. 2 mm, the fixed image's box and
   direction) and the moving image resampled onto it through ``A``; both normalised;
3. the network's velocity ``v``, integrated by scaling and squaring into ``u = exp(v)`` and
   ``u_inv = exp(-v)``;
4. ``T(x) = A(x + D u(W^-1 x))`` sampled on the fixed image's grid as one
   ``sitk.DisplacementFieldTransform`` (fixed -> moving, LPS mm: ITK's convention), and the
   inverse field on the moving image's grid in ``outcome.inverse``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from medrl.baselines.registration import affine_registration
from medrl.io.images import Volume
from medrl.registration.base import RegisterOptions, RegistrationOutcome, register_method
from medrl.registration.deformable.frames import (
    displacement_field_transform,
    normalise_intensity,
    resample_onto,
    working_grid,
)
from medrl.registration.deformable.integrate import integrate_velocity
from medrl.registration.deformable.losses import folding_share
from medrl.registration.deformable.model_folder import (
    DeformableModel,
    default_model_dir,
    load_model,
)

__all__ = ["DeformableResult", "deformable_fields", "register_deformable"]

METHOD_NAME = "deformable"


@dataclass(frozen=True, eq=False)
class DeformableResult:
    """The fields of one registration and what they cost."""

    transform: sitk.DisplacementFieldTransform
    """Fixed -> moving on the fixed image's grid (affine included)."""
    inverse: sitk.DisplacementFieldTransform
    """Moving -> fixed on the moving image's grid."""
    displacement_vox: torch.Tensor
    """(1, 3, D, H, W) the network's part ``u`` on the working grid (voxels)."""
    grid: Volume
    """The fixed image on the working grid."""
    details: dict[str, Any]


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (restored on exit)."""
    previous = torch.get_num_threads()
    if threads is not None and threads > 0:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def deformable_fields(
    fixed: Volume,
    moving: Volume,
    model: DeformableModel,
    affine: sitk.Transform | None,
    device: torch.device | str = "cpu",
    threads: int | None = None,
) -> DeformableResult:
    """Steps 2-4 of the module docstring for a given fixed -> moving ``affine`` (None: the
    identity, when the images are aligned already); ``threads``: SimpleITK's for the fields."""
    started = time.perf_counter()
    grid = working_grid(fixed, model.working_spacing_mm)
    moving_array = resample_onto(moving, grid, affine, "linear", float(moving.array.min()))
    pair = np.stack([normalise_intensity(grid.array), normalise_intensity(moving_array)])
    inputs = torch.from_numpy(pair)[None].to(device)
    network = model.network.to(device).eval()
    prepared = time.perf_counter()
    with torch.no_grad():
        velocity = network(inputs, model.lam)
        displacement = integrate_velocity(velocity, model.integration_steps)
        inverse_displacement = integrate_velocity(-velocity, model.integration_steps)
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)
    network_seconds = time.perf_counter() - prepared
    forward = displacement_field_transform(displacement, grid, fixed, after=affine, threads=threads)
    inverse_affine = affine.GetInverse() if affine is not None else None
    inverse = displacement_field_transform(
        inverse_displacement, grid, moving, before=inverse_affine, threads=threads
    )
    spacing = model.working_spacing_mm
    details = {
        "lambda": model.lam,
        "network_seconds": round(network_seconds, 4),
        "prepare_seconds": round(prepared - started, 4),
        "field_seconds": round(time.perf_counter() - prepared - network_seconds, 4),
        "working_spacing_mm": spacing,
        "working_shape_xyz": list(grid.shape_xyz),
        "max_displacement_mm": round(float(displacement.norm(dim=1).max()) * spacing, 3),
        "folding_share": folding_share(displacement),
        "model_dir": str(model.folder) if model.folder is not None else None,
    }
    return DeformableResult(forward, inverse, displacement, grid, details)


@register_method(METHOD_NAME)
def register_deformable(
    fixed: Volume, moving: Volume, options: RegisterOptions
) -> RegistrationOutcome:
    """Learned deformable registration of ``moving`` to ``fixed`` (affine + velocity field).

    The model comes from ``options.model_dir`` (default: the shipped one, none yet); a missing
    or corrupt folder raises :class:`medrl.errors.CheckpointError` naming it."""
    started = time.perf_counter()
    folder = Path(options.model_dir) if options.model_dir is not None else default_model_dir()
    with _torch_threads(options.threads):
        model = load_model(folder, options.device)
        affine = affine_registration(fixed, moving, options.seed)
        result = deformable_fields(
            fixed, moving, model, affine.transform, options.device, options.threads
        )
    details = {
        **result.details,
        "affine_seconds": round(affine.seconds, 3),
        "affine_iterations": list(affine.iterations),
        "affine_metric": affine.metric_value,
    }
    return RegistrationOutcome(
        method=METHOD_NAME,
        transform=result.transform,
        seconds=time.perf_counter() - started,
        details=details,
        inverse=result.inverse,
    )
