"""What every registration method returns, and the registry ``medrl register`` picks from.

Convention (ITK's): a registration of ``moving`` to ``fixed`` returns a transform that maps
points of the *fixed* image (LPS mm) to points of the *moving* image, so that
``sitk.Resample(moving, fixed, transform)`` shows the moving image aligned on the fixed grid.
Labels of the moving image travel the same way (nearest neighbour); landmarks of the moving
image travel with the inverse (moving -> fixed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from medrl.io.images import Volume


@dataclass(frozen=True)
class RegisterOptions:
    """What a method may need besides the two images."""

    seed: int = 0
    model_dir: Path | None = None
    """A trained model (agent, deformable); None = the shipped default of the method."""
    landmark_model_dir: Path | None = None
    """The landmark model of ``--method landmarks``; None = the shipped AFIDs model."""
    landmark_mirror: bool = False
    """``--method landmarks``: the landmark searches also read each image's mirror image
    (``search.mirror``). Off by default, whatever the landmark model says: the rigid fit
    averages every landmark, so the mirror's gain there is small (median TRE 0.85 -> 0.75 mm
    on held-out MNI305 pairs) for 1.6 times the time (BENCHMARKS.md)."""
    device: str = "cpu"
    threads: int = 2


@dataclass(frozen=True, eq=False)
class RegistrationOutcome:
    """One registration: the fixed -> moving transform (LPS mm) and how it was found."""

    method: str
    transform: sitk.Transform
    """Rigid/affine (``.tfm``) or a ``sitk.DisplacementFieldTransform`` (fixed -> moving)."""
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    """Method-specific facts for the summary (iterations, metric value, lambda, ...)."""
    inverse: sitk.Transform | None = None
    """moving -> fixed, when the method has it (a displacement field's inverse field);
    None: rigid/affine transforms are inverted exactly by ``GetInverse``."""


RegistrationMethod = Callable[[Volume, Volume, RegisterOptions], RegistrationOutcome]
"""``method(fixed, moving, options) -> outcome``."""

METHODS: dict[str, RegistrationMethod] = {}


def register_method(name: str) -> Callable[[RegistrationMethod], RegistrationMethod]:
    """Decorator adding a method to :data:`METHODS` under ``name``."""

    def add(function: RegistrationMethod) -> RegistrationMethod:
        METHODS[name] = function
        return function

    return add
