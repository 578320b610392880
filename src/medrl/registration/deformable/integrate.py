"""Scaling and squaring of a stationary velocity field, and warping images, labels and points.

Conventions (the whole package uses them):

* images and labels are (B, C, D, H, W) tensors, i.e. (B, C, nz, ny, nx) as
  ``sitk.GetArrayFromImage`` orders a volume;
* a displacement or velocity field is a (B, 3, D, H, W) tensor **in voxel units of its grid**,
  channel 0/1/2 along the index axes x/y/z (i, j, k; tensor axes W, H, D);
* points are (N, 3) continuous voxel indices (i, j, k) of the same grid;
* a displacement ``u`` stands for the map ``phi(p) = p + u(p)``; warping an image samples it at
  ``phi``: ``warped(p) = image(phi(p))``. In registration ``phi`` maps a fixed voxel to the
  moving voxel it corresponds to (ITK's fixed -> moving convention), so ``warp(moving, u)``
  overlays the fixed image and fixed points travel to moving points with :func:`warp_points`.

Sampling uses ``grid_sample`` (trilinear, or nearest for labels) with ``align_corners=True``:
normalised coordinate -1 / +1 is the centre of the first / last voxel. Inside
:func:`twice_differentiable` trilinear sampling is done by index gathers instead, which autograd
can differentiate twice on every device (CUDA has no derivative of ``grid_sampler_3d_backward``;
the bilevel hypergradient needs one).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_INTEGRATION_STEPS",
    "compose",
    "identity_grid",
    "integrate_velocity",
    "sample_field",
    "to_normalised",
    "trilinear",
    "twice_differentiable",
    "warp",
    "warp_points",
]

DEFAULT_INTEGRATION_STEPS = 7
"""Scaling-and-squaring steps: the velocity is divided by 2**7 = 128, then squared 7 times."""


def identity_grid(
    shape_dhw: tuple[int, int, int] | torch.Size,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(1, 3, D, H, W) voxel coordinates (x, y, z) of every voxel (the identity map)."""
    d, h, w = (int(n) for n in shape_dhw)
    z, y, x = torch.meshgrid(
        torch.arange(d, device=device, dtype=dtype),
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([x, y, z])[None]


def to_normalised(
    points_vox: torch.Tensor, shape_dhw: tuple[int, int, int] | torch.Size
) -> torch.Tensor:
    """Voxel coordinates (..., 3) in (x, y, z) order -> ``grid_sample``'s [-1, 1] coordinates."""
    d, h, w = (int(n) for n in shape_dhw)
    sizes = torch.tensor([w, h, d], device=points_vox.device, dtype=points_vox.dtype)
    return 2.0 * points_vox / (sizes - 1).clamp(min=1) - 1.0


_GATHER_SAMPLING = False


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Within the block, trilinear :func:`warp` and :func:`sample_field` use :func:`trilinear`
    (differentiable twice on CPU and CUDA) instead of ``grid_sample``."""
    global _GATHER_SAMPLING
    previous, _GATHER_SAMPLING = _GATHER_SAMPLING, True
    try:
        yield
    finally:
        _GATHER_SAMPLING = previous


def trilinear(image: torch.Tensor, positions_vox: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """``image`` (B, C, D, H, W) at (B, 3, ...) voxel positions (x, y, z), trilinear; the same
    values as ``grid_sample(align_corners=True)`` with ``padding_mode`` ``"zeros"`` or
    ``"border"``, written with gathers so that autograd differentiates it to any order."""
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    batch, channels, d, h, w = image.shape
    out_shape = positions_vox.shape[2:]
    sizes = (w, h, d)
    coords = [positions_vox[:, axis].reshape(batch, -1) for axis in range(3)]
    if padding_mode == "border":
        coords = [c.clamp(0, n - 1) for c, n in zip(coords, sizes, strict=True)]
    lows = [c.detach().floor() for c in coords]
    fractions = [c - low for c, low in zip(coords, lows, strict=True)]
    flat = image.reshape(batch, channels, d * h * w)
    result = image.new_zeros(batch, channels, coords[0].shape[1])
    for corner in itertools.product((0, 1), repeat=3):
        weight = torch.ones_like(coords[0])
        inside = torch.ones_like(coords[0], dtype=torch.bool)
        index = []
        for axis, offset in enumerate(corner):
            at = lows[axis] + offset
            weight = weight * (fractions[axis] if offset else 1.0 - fractions[axis])
            inside = inside & (at >= 0) & (at <= sizes[axis] - 1)
            index.append(at.clamp(0, sizes[axis] - 1).long())
        linear = (index[2] * h + index[1]) * w + index[0]
        values = torch.gather(flat, 2, linear[:, None].expand(batch, channels, -1))
        result = result + values * (weight * inside.to(weight.dtype))[:, None]
    return result.reshape(batch, channels, *out_shape)


def warp(
    image: torch.Tensor,
    displacement_vox: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """``image`` (B, C, D, H, W) sampled at ``p + u(p)`` for every voxel ``p`` of ``u``.

    ``displacement_vox`` is (B, 3, D', H', W') on the output grid, in voxels of ``image``'s grid
    (usually the same grid). ``mode``: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``
    (labels); ``padding_mode``: ``"zeros"`` (images), ``"border"`` (fields).
    """
    positions = identity_grid(
        displacement_vox.shape[2:], displacement_vox.device, displacement_vox.dtype
    )
    positions = positions + displacement_vox
    if _GATHER_SAMPLING and mode == "bilinear":
        return trilinear(image, positions.to(image.dtype), padding_mode)
    grid = to_normalised(positions.permute(0, 2, 3, 4, 1), image.shape[2:])
    if image.dtype != grid.dtype:
        grid = grid.to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def integrate_velocity(
    velocity_vox: torch.Tensor, steps: int = DEFAULT_INTEGRATION_STEPS
) -> torch.Tensor:
    """Displacement ``u`` of ``exp(v)`` by scaling and squaring: ``u = v / 2**steps``, then
    ``steps`` times ``u <- u + u o (id + u)``. Both (B, 3, D, H, W) in voxels.

    The result is a diffeomorphism for a smooth enough ``v``; ``exp(-v)`` is its inverse. A zero
    field gives the identity, a constant field ``c`` the translation by ``c``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    displacement = velocity_vox / (2**steps)
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement, padding_mode="border")
    return displacement


def compose(outer_vox: torch.Tensor, inner_vox: torch.Tensor) -> torch.Tensor:
    """Displacement of ``phi_outer o phi_inner``: ``u_inner + u_outer(p + u_inner(p))``."""
    return inner_vox + warp(outer_vox, inner_vox, padding_mode="border")


def sample_field(field: torch.Tensor, points_vox: torch.Tensor) -> torch.Tensor:
    """(N, C) values of a (1, C, D, H, W) field at (N, 3) voxel points (trilinear, border)."""
    if field.shape[0] != 1:
        raise ValueError(f"expected a single field (batch 1), got batch {field.shape[0]}")
    if _GATHER_SAMPLING:
        positions = points_vox.to(field.dtype).T.reshape(1, 3, -1)
        return trilinear(field, positions, "border").reshape(field.shape[1], -1).T
    grid = to_normalised(points_vox, field.shape[2:]).to(field.dtype).reshape(1, 1, 1, -1, 3)
    values = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return values.reshape(field.shape[1], -1).T


def warp_points(points_vox: torch.Tensor, displacement_vox: torch.Tensor) -> torch.Tensor:
    """``phi(p) = p + u(p)`` for (N, 3) voxel points ``p`` and a (1, 3, D, H, W) ``u``."""
    return points_vox + sample_field(displacement_vox, points_vox).to(points_vox.dtype)
