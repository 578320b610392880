"""The classical SimpleITK registrations as ``medrl register`` methods: rigid, affine, bspline.

Each wraps a function of :mod:`medrl.baselines.registration` or
:mod:`medrl.baselines.bspline` (same recipe, same seed
handling) and returns a :class:`~medrl.registration.base.RegistrationOutcome` with the
fixed -> moving transform (LPS mm) and the optimiser's facts in ``details``. The working
spacing is the baselines' 2 mm; ``options.threads`` threads are used (the results are
bit-for-bit reproducible with one).
"""

from __future__ import annotations

from typing import Any

from medrl.baselines.bspline import BSPLINE_MESH_SPACING_MM, bspline_registration
from medrl.baselines.registration import (
    RegistrationResult,
    affine_registration,
    rigid_registration,
)
from medrl.io.images import Volume
from medrl.registration.base import RegisterOptions, RegistrationOutcome, register_method

STAGES = {
    "rigid": ("rigid",),
    "affine": ("rigid", "affine"),
    "bspline": ("rigid", "affine", "bspline"),
}
"""The optimisation stages of each method, in order."""


def _outcome(method: str, result: RegistrationResult) -> RegistrationOutcome:
    """A baseline's result as a registration outcome (details: per-stage facts)."""
    stages = STAGES[method]
    details: dict[str, Any] = {
        "metric": "Mattes mutual information (negated: lower is better)",
        "metric_value": result.metric_value,
        "iterations": dict(zip(stages, result.iterations, strict=True)),
        "stop_conditions": dict(zip(stages, result.stop_conditions, strict=True)),
    }
    return RegistrationOutcome(
        method=method,
        transform=result.transform,
        seconds=result.seconds,
        details=details,
        inverse=result.inverse,
    )


@register_method("rigid")
def rigid(fixed: Volume, moving: Volume, options: RegisterOptions) -> RegistrationOutcome:
    """Rigid (Euler3D) registration: MOMENTS start, Mattes MI, shrink 4-2-1."""
    result = rigid_registration(fixed, moving, options.seed, num_threads=options.threads)
    return _outcome("rigid", result)


@register_method("affine")
def affine(fixed: Volume, moving: Volume, options: RegisterOptions) -> RegistrationOutcome:
    """The affine baseline: the rigid stage, then an affine stage."""
    result = affine_registration(fixed, moving, options.seed, num_threads=options.threads)
    return _outcome("affine", result)


@register_method("bspline")
def bspline(fixed: Volume, moving: Volume, options: RegisterOptions) -> RegistrationOutcome:
    """The affine baseline, then a cubic B-spline; a displacement field with its inverse."""
    result = bspline_registration(fixed, moving, options.seed, num_threads=options.threads)
    outcome = _outcome("bspline", result)
    outcome.details["mesh_spacing_mm"] = BSPLINE_MESH_SPACING_MM
    return outcome
