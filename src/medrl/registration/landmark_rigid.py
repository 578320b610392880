"""``medrl register --method landmarks``: rigid registration by corresponding anatomy.

For two different brains, the rigid map a user wants is the one that lines up their anatomy,
and medrl's benchmark defines it so: the least-squares rigid fit of the two brains' AFIDs. An
image metric (Mattes MI) instead lines up intensities, skull and scalp included, and its
optimum can lie millimetres from the anatomical one (BENCHMARKS.md, "Rigid registration").
This method estimates the anatomical fit directly:

1. the rigid-registration agent's search (no refinement) brings the moving image within a few
   mm and degrees of the fixed one, from misalignments up to 45 degrees and 60 mm;
2. the moving image's header is moved by that map's inverse (nothing is resampled), so both
   images face the same way, the orientation the landmark model was trained on;
3. a landmark model (default: the shipped AFIDs model) finds its landmarks in both images;
4. the robust Kabsch fit of the fixed image's landmarks onto the moving image's (a landmark
   the search got wrong gets no weight) is the fixed -> moving map.

The landmark model must know the anatomy (brains, for the shipped one), and both images must
show it: a scan whose landmarks have no affine copy of the model's layout is an InputError
naming the image. For two images of one person, ``--method agent`` (MI refinement) is more
precise; this method's error is the landmark model's, averaged over its landmarks.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from medrl.agents.checkpoint import Model, load_model, with_overrides
from medrl.agents.search import search
from medrl.confidence import check_layout
from medrl.errors import InputError
from medrl.geometry.kabsch import fit_rigid_robust
from medrl.geometry.robust_affine import apply_affine
from medrl.io.images import Volume
from medrl.models import default_model_dir
from medrl.registration.agent import agent_registration
from medrl.registration.base import RegisterOptions, RegistrationOutcome, register_method
from medrl.registration.transforms import move_header, rigid_ras_to_sitk, sitk_to_matrix_ras


def _landmarks(model: Model, volume: Volume, role: str, device: str) -> np.ndarray:
    """The model's landmarks (T, 3, RAS) found in ``volume``; InputError naming the image when
    they do not have the model's layout (not anatomy the model knows)."""
    points = search(model, volume, device).estimate
    reference = getattr(model.task, "reference_points_ras", None)
    if reference is not None and np.shape(reference) == points.shape:
        check = check_layout(reference, points)
        if not check.plausible:
            raise InputError(
                f"the {role} image has no anatomy the landmark model knows: {check.reason}",
                volume.source,
            )
    return points


@register_method("landmarks")
def landmark_rigid_registration(
    fixed: Volume, moving: Volume, options: RegisterOptions
) -> RegistrationOutcome:
    """Rigid registration of ``moving`` to ``fixed`` by the landmarks a landmark model finds
    in both (``options.landmark_model_dir``, default the shipped one), after the rigid agent's
    search (``options.model_dir``, default the shipped one) has roughly aligned them."""
    started = time.perf_counter()
    coarse = agent_registration(fixed, moving, options, refine=False)
    to_moving = sitk_to_matrix_ras(coarse.transform)  # fixed -> moving, RAS
    facing = move_header(moving, np.linalg.inv(to_moving))  # the moving image, turned to face
    folder = options.landmark_model_dir or default_model_dir("landmark")
    model = load_model(folder, options.device, task="landmark")
    model = with_overrides(model, [f"search.mirror={str(options.landmark_mirror).lower()}"])
    with torch.inference_mode():  # threads: set by the agent's registration
        fixed_points = _landmarks(model, fixed, "fixed", options.device)
        moving_points = apply_affine(to_moving, _landmarks(model, facing, "moving", options.device))
    matrix, residuals, weights = fit_rigid_robust(fixed_points, moving_points)
    details = {
        "agent_model": coarse.details.get("model", ""),
        "agent_steps": coarse.details.get("steps", 0),
        "landmark_model": str(folder),
        "landmark_mirror": options.landmark_mirror,
        "landmarks": len(fixed_points),
        "landmarks_weighted_out": int(np.count_nonzero(weights == 0)),
        "landmark_residual_median_mm": round(float(np.median(residuals)), 3),
    }
    return RegistrationOutcome(
        method="landmarks",
        transform=rigid_ras_to_sitk(matrix),
        seconds=time.perf_counter() - started,
        details=details,
    )
