"""``medrl register --method agent``: the rigid-registration agent (:mod:`medrl.tasks.rigid`).

The search starts from the identity rotation with the two images' intensity centroids aligned
and moves the moving image by the agent's small rigid steps, coarse to fine. The result is the
ITK-convention transform (fixed -> moving, LPS mm) as a ``sitk.Euler3DTransform``.
"""

from __future__ import annotations

import time

import torch

from medrl.agents.checkpoint import load_model
from medrl.agents.search import search
from medrl.baselines.registration import (
    WORKING_SPACING_MM,
    rigid_registration,
    working_image,
)
from medrl.envs.pyramid import build_pair_pyramid
from medrl.io.images import Volume
from medrl.models import default_model_dir
from medrl.registration.base import RegisterOptions, RegistrationOutcome, register_method
from medrl.registration.transforms import rigid_ras_to_sitk
from medrl.tasks.rigid import pose_matrix_ras


@register_method("agent")
def agent_registration(
    fixed: Volume, moving: Volume, options: RegisterOptions, refine: bool = True
) -> RegistrationOutcome:
    """Rigid registration by the agent of ``options.model_dir`` (default: the shipped one),
    then (``refine``) SimpleITK's rigid refinement from where the agent stopped.

    The agent brings any start within 45 degrees and 60 mm to about 2.5 mm (its capture range);
    Mattes-MI gradient descent from there gives the last millimetres, which the agent's fine
    levels did not learn (BENCHMARKS.md, "Rigid registration")."""
    started = time.perf_counter()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    folder = options.model_dir or default_model_dir("rigid")
    model = load_model(folder, options.device, task="rigid")
    spacings = [level.spacing_mm for level in model.config.env.levels]
    # the finest level is several mm: block-average both images to about 2 mm first (as the
    # SimpleITK baselines do), which leaves the levels unchanged and is 8x less to smooth
    fixed_small, moving_small = (
        Volume.from_sitk(working_image(v, WORKING_SPACING_MM), v.source) for v in (fixed, moving)
    )
    scan = build_pair_pyramid(moving_small, fixed_small, spacings, options.device)
    result = search(model, moving_small, options.device, scan=scan)
    transform = rigid_ras_to_sitk(pose_matrix_ras(result.estimate[0]))
    details = {"model": str(folder), "steps": int(result.steps), "refined": refine}
    if refine:
        refined = rigid_registration(fixed, moving, options.seed, num_threads=1, initial=transform)
        transform = refined.transform
        details["refinement_iterations"] = refined.iterations[0]
    return RegistrationOutcome(
        method="agent",
        transform=transform,
        seconds=time.perf_counter() - started,
        details=details,
    )
