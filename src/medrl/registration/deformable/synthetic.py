"""Known smooth random warps: seeded, diffeomorphic, a few mm, so the truth is exact.

A warp is drawn as a random low-resolution velocity field (independent Gaussian vectors every
``control_spacing_mm``), upsampled trilinearly to the grid, smoothed by a Gaussian and scaled so
that its largest velocity is a random fraction of ``max_velocity_mm``; scaling and squaring
gives the displacement ``u`` of ``phi = exp(v)`` and of its inverse ``exp(-v)``.

A synthetic pair is made from one image (and its labels and landmarks, all on one grid):

* moving = the image as it is (or another contrast of the same, co-registered, anatomy);
* fixed = the image warped by ``phi``: ``fixed(p) = image(phi(p))``, labels by nearest
  neighbour; so the true fixed -> moving map is exactly ``phi`` (``u`` in voxels);
* fixed landmarks ``f = phi^-1(l)`` for the image's landmarks ``l``, and moving landmarks
  ``phi(f)`` (not ``l``): the landmark truth is then exactly consistent with ``phi``, whatever
  the small integration error of ``phi^-1``.

Fields and points follow :mod:`medrl.registration.deformable.integrate` (voxels, (x, y, z)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medrl.registration.deformable.integrate import (
    DEFAULT_INTEGRATION_STEPS,
    integrate_velocity,
    warp,
    warp_points,
)

__all__ = [
    "SyntheticPair",
    "SyntheticWarp",
    "SyntheticWarpSettings",
    "apply_warp",
    "random_warp",
    "seed_for",
]


@dataclass(frozen=True)
class SyntheticWarpSettings:
    """How large and how smooth the random warps are."""

    control_spacing_mm: float = 20.0
    """Spacing of the random low-resolution velocity vectors (the scale of the bumps)."""
    max_velocity_mm: float = 5.0
    """Each warp's largest velocity is drawn uniformly in [min_fraction, 1] x this (the largest
    displacement is about the same)."""
    min_fraction: float = 0.4
    integration_steps: int = DEFAULT_INTEGRATION_STEPS


@dataclass(frozen=True, eq=False)
class SyntheticWarp:
    """A drawn warp on a grid: velocity, ``phi = exp(v)`` and ``phi^-1 = exp(-v)`` (voxels)."""

    velocity_vox: torch.Tensor
    displacement_vox: torch.Tensor
    inverse_vox: torch.Tensor
    spacing_mm: float
    seed: int

    @property
    def max_displacement_mm(self) -> float:
        """Largest displacement of ``phi`` in mm."""
        return float(self.displacement_vox.norm(dim=1).max()) * self.spacing_mm


@dataclass(frozen=True, eq=False)
class SyntheticPair:
    """A fixed image made from a moving one by a known warp, with the exact truth."""

    fixed: torch.Tensor
    """(1, 1, D, H, W) the moving image warped by ``phi``."""
    fixed_labels: torch.Tensor | None
    """(D, H, W) integer labels warped by ``phi`` (nearest), or None."""
    fixed_points_vox: torch.Tensor | None
    """(N, 3) ``phi^-1`` of the landmarks, or None."""
    moving_points_vox: torch.Tensor | None
    """(N, 3) ``phi(fixed_points_vox)``: where each fixed landmark truly lies when moving."""
    warp: SyntheticWarp


def seed_for(role: str, seed: int, *index: int) -> int:
    """A 31-bit seed for the warp numbered ``index`` (one or more non-negative integers) of a
    role (``"train"``, ``"val"``, ``"test"``): a ``numpy.random.SeedSequence`` of the role, the
    seed and the index, so different roles and indices draw independent warps."""
    code = {"train": 1, "val": 2, "test": 3}.get(role)
    if code is None:
        raise ValueError(f"unknown role {role!r}")
    state = np.random.SeedSequence([code, int(seed), *map(int, index)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def _gaussian_smooth(field: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, D, H, W) (edges replicated)."""
    if sigma_vox <= 0:
        return field
    radius = max(1, math.ceil(2.5 * sigma_vox))
    x = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
    kernel = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    kernel = kernel / kernel.sum()
    channels = field.shape[1]
    out = field
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(channels, 1, 1, 1, 1)
        pad = [0] * 6
        # F.pad lists the last axis first
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out


def random_warp(
    shape_dhw: tuple[int, int, int] | torch.Size,
    spacing_mm: float,
    seed: int,
    settings: SyntheticWarpSettings | None = None,
) -> SyntheticWarp:
    """Draw a smooth diffeomorphic warp on a (D, H, W) grid of isotropic ``spacing_mm``."""
    settings = settings or SyntheticWarpSettings()
    shape = tuple(int(n) for n in shape_dhw)
    generator = torch.Generator().manual_seed(int(seed))
    coarse = [
        max(2, math.ceil((n - 1) * spacing_mm / settings.control_spacing_mm) + 1) for n in shape
    ]
    noise = torch.randn(1, 3, *coarse, generator=generator, dtype=torch.float32)
    velocity = F.interpolate(noise, size=shape, mode="trilinear", align_corners=True)
    velocity = _gaussian_smooth(velocity, 0.5 * settings.control_spacing_mm / spacing_mm)
    fraction = settings.min_fraction + (1.0 - settings.min_fraction) * float(
        torch.rand((), generator=generator)
    )
    peak_vox = float(velocity.norm(dim=1).max())
    if peak_vox > 0:
        velocity = velocity * (fraction * settings.max_velocity_mm / spacing_mm / peak_vox)
    with torch.no_grad():
        displacement = integrate_velocity(velocity, settings.integration_steps)
        inverse = integrate_velocity(-velocity, settings.integration_steps)
    return SyntheticWarp(velocity, displacement, inverse, float(spacing_mm), int(seed))


def apply_warp(
    synthetic: SyntheticWarp,
    image: torch.Tensor,
    labels: torch.Tensor | None = None,
    points_vox: torch.Tensor | None = None,
) -> SyntheticPair:
    """The fixed side of a synthetic pair whose moving side is ``image`` / ``labels`` /
    ``points_vox`` (same grid as the warp)."""
    if image.shape[2:] != synthetic.displacement_vox.shape[2:]:
        raise ValueError(
            f"image grid {tuple(image.shape[2:])} is not the warp's "
            f"{tuple(synthetic.displacement_vox.shape[2:])}"
        )
    with torch.no_grad():
        fixed = warp(image, synthetic.displacement_vox.to(image.dtype), padding_mode="border")
        fixed_labels = None
        if labels is not None:
            warped = warp(
                labels[None, None].float(),
                synthetic.displacement_vox,
                mode="nearest",
                padding_mode="border",
            )
            fixed_labels = warped[0, 0].round().to(labels.dtype)
        fixed_points = moving_points = None
        if points_vox is not None:
            fixed_points = warp_points(points_vox, synthetic.inverse_vox)
            moving_points = warp_points(fixed_points, synthetic.displacement_vox)
    return SyntheticPair(fixed, fixed_labels, fixed_points, moving_points, synthetic)
