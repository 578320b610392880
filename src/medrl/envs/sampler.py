"""Batched patch rendering: patches around many poses, over many scans, in one pass per scan.

A patch of ``P x P x P`` samples is axis-aligned with the (augmented) world RAS frame:
``patch[k, j, i]`` samples the point ``centre + (o_R[i], o_A[j], o_S[k])``, with the offsets
given per pose (the task decides them: a cube at the level's spacing for a landmark, the box
and its context for a box). Sample points go through the episode's augmentation
transform, then through the scan's RAS->index affine, and are read with trilinear
interpolation (``grid_sample``); outside the scan is 0 (background after normalisation).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medrl.data.augment import (
    AugmentParams,
    apply_intensity,
    grid_log_bias,
    intensity_is_identity,
    transform_grid,
)
from medrl.envs.pyramid import LevelImage, ScanPyramid, coarser_levels


def patch_offsets(patch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Offsets (P^3, 3) in voxels along (R, A, S), ordered so a reshape gives [k, j, i]."""
    half = patch_size // 2
    r = torch.arange(-half, patch_size - half, dtype=torch.float32, device=device)
    kk, jj, ii = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([ii, jj, kk], dim=-1).reshape(-1, 3)


def cube_offsets(spacing_mm: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Offsets (N, P) in mm of a cube patch centred on its voxel ``P // 2`` at each spacing."""
    half = patch_size // 2
    axis = torch.arange(-half, patch_size - half, dtype=torch.float32, device=spacing_mm.device)
    return spacing_mm[:, None] * axis[None, :]


def episode_noise(
    episode_seeds: np.ndarray, steps: np.ndarray, size: int, device: torch.device | str
) -> torch.Tensor:
    """Noise (N, size) that depends only on (episode seed, step): re-rendering reproduces it."""
    out = torch.empty((len(episode_seeds), size), dtype=torch.float32)
    gen = torch.Generator()
    for n, (seed, step) in enumerate(zip(episode_seeds, steps, strict=True)):
        gen.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
        out[n] = torch.randn(size, generator=gen)
    return out.to(device)


def grid_coordinates(image: LevelImage, points_ras: torch.Tensor) -> torch.Tensor:
    """(M, 3) world RAS points -> ``grid_sample`` coordinates of ``image`` ([-1, 1],
    ``align_corners=True``): RAS -> index -> grid, folded into one affine map."""
    affine = image.ras_to_index
    scale = 2.0 / (image.size_xyz - 1.0).clamp(min=1.0)
    to_grid = affine[:3, :3] * scale[:, None]
    shift = affine[:3, 3] * scale - 1.0
    return torch.addmm(shift, points_ras, to_grid.T)


def sample_at_ras(image: LevelImage, points_ras: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``image`` at points (..., 3) world RAS mm (0 outside the scan)."""
    flat = points_ras.reshape(-1, 3).to(torch.float32)
    grid = grid_coordinates(image, flat).reshape(1, 1, 1, -1, 3)
    values = F.grid_sample(
        image.tensor, grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return values.reshape(points_ras.shape[:-1])


def _sample(image: LevelImage, grid: torch.Tensor, rows: int) -> torch.Tensor:
    sampled = F.grid_sample(
        image.tensor, grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return sampled.reshape(rows, -1)


def _blend_siblings(
    scan: ScanPyramid,
    level: int,
    grid: torch.Tensor,
    params: AugmentParams,
    rows: torch.Tensor,
    own: torch.Tensor,
) -> torch.Tensor:
    """The contrast mix (:mod:`medrl.data.augment`): ``own`` (R, M) values of ``scan`` blended
    with those of the siblings each row's episode picked, on the same sample grid (siblings
    share the scan's grid), for the rows whose episode mixes."""
    weights = params.mix[rows]
    mixing = weights[:, 0] < 1.0
    if not bool(mixing.any()):
        return own
    count = len(scan.siblings)
    picks = torch.clamp((params.mix_pick[rows] * count).long(), max=count - 1)
    out = own * weights[:, :1]
    size = own.shape[1]
    cells = grid.reshape(len(rows), size, 3)
    for index, sibling in enumerate(scan.siblings):
        share = (weights[:, 1:] * (picks == index)).sum(dim=1)
        chosen = torch.nonzero(mixing & (share > 0), as_tuple=True)[0]
        if len(chosen) == 0:
            continue
        sub = cells[chosen].reshape(1, -1, *grid.shape[2:])
        sampled = _sample(sibling.levels[level], sub, len(chosen))
        out[chosen] += share[chosen, None] * sampled
    return out


def render_patches(
    scans: list[ScanPyramid],
    scan_index: torch.Tensor,
    level: torch.Tensor,
    position_ras: torch.Tensor,
    params: AugmentParams,
    offsets_mm: torch.Tensor,
    noise: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
    partner: bool = False,
) -> torch.Tensor:
    """Render patches (N, P, P, P) for N poses.

    Args:
        scans: the prepared scans.
        scan_index: (N,) which scan each pose looks at.
        level: (N,) scale level of each pose (which smoothed copy of the scan is sampled).
        position_ras: (N, 3) centre of each patch, augmented world RAS mm.
        params: (N,) augmentation of each pose's episode.
        offsets_mm: (N, 3, P) sample offsets along R, A, S (or (N, P), the same on each axis).
        noise: optional (N, P^3) standard-normal noise, scaled by the episode's noise level.
        axes: optional (N, 3, 3) unit grid axes (rows, RAS) of oblique patches; offsets are
            then along these axes (default: R, A, S).
        partner: sample each scan's ``partner`` (a registration pair's fixed image) instead.
    """
    n = position_ras.shape[0]
    patch_size = offsets_mm.shape[-1]
    device = position_ras.device
    num_levels = len(scans[0].levels)
    source_points = transform_grid(params, position_ras, offsets_mm, axes)
    values = torch.zeros((n, patch_size**3), dtype=torch.float32, device=device)
    # a blurred episode samples the next coarser level's smoothed copy on the same grid
    source_level = level
    if bool((params.blur > 0).any()):
        coarser = torch.as_tensor(coarser_levels(scans[0]), device=level.device)
        source_level = torch.where(params.blur.to(level.device) > 0, coarser[level], level)
    keys = scan_index * num_levels + source_level
    for key in torch.unique(keys).tolist():
        rows = torch.nonzero(keys == key, as_tuple=True)[0]
        scan = scans[key // num_levels]
        if partner:
            if scan.partner is None:
                raise ValueError(f"{scan.source}: no partner image (not a registration pair)")
            scan = scan.partner
        image = scan.levels[key % num_levels]
        grid = grid_coordinates(image, source_points[rows].reshape(-1, 3))
        grid = grid.reshape(1, len(rows) * patch_size, patch_size, patch_size, 3)
        sampled = _sample(image, grid, len(rows))
        if scan.siblings and not partner:
            sampled = _blend_siblings(scan, key % num_levels, grid, params, rows, sampled)
        values[rows] = sampled
    if intensity_is_identity(params, noise):  # a search: what apply_intensity gives, exactly
        values = torch.clamp(values, min=0.0)
    else:
        log_bias = grid_log_bias(params, position_ras, offsets_mm, axes)
        values = apply_intensity(params, values, log_bias, noise)
    return values.reshape(n, patch_size, patch_size, patch_size)
