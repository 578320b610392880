"""Tests for medrl.data.augment: landmarks move with the augmented image exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _synthetic import blob_volume
from medrl.config import AugmentConfig
from medrl.data.augment import (
    batch_params,
    intensity_is_identity,
    inverse_transform_points,
    no_augmentation,
    sample_params,
    stack_params,
    transform_points,
)
from medrl.envs.pyramid import ScanPyramid, build_pyramid
from medrl.envs.sampler import cube_offsets, render_patches

# Tiny tensors: torch's thread pool costs far more than it saves here (15x on 2 busy cores).
torch.set_num_threads(1)

#: Stronger than the defaults in every spatial parameter (elastic 5 mm against 3 mm).
STRONG = AugmentConfig(
    rotation_deg=25.0, scale=0.12, anisotropic_scale=0.08, translation_mm=25.0, elastic_mm=5.0
)
#: Spatial augmentation only: the intensity change is the identity.
SPATIAL_ONLY = dataclasses.replace(STRONG, gamma=0.0, contrast=0.0, bias_field=0.0, noise_std=0.0)


def _params(config: AugmentConfig, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-40, 40, size=(count, 3))
    return batch_params(config, np.arange(100 + seed, 100 + seed + count), centres), centres


def _points(centres: np.ndarray, per_episode: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-60, 60, size=(len(centres), per_episode, 3))
    return torch.as_tensor(centres[:, None, :] + offsets, dtype=torch.float32)


# ------------------------------------------------------------------ spatial transform
@pytest.mark.parametrize("config", [AugmentConfig(), STRONG], ids=["default", "strong"])
def test_inverse_then_forward_returns_the_points(config: AugmentConfig) -> None:
    params, centres = _params(config, 48)
    points = _points(centres, 64)
    moved = inverse_transform_points(params, points)
    # The augmentation really moves points (so the round trip below is not trivial) ...
    assert float(torch.linalg.norm(moved - points, dim=-1).median()) > 3.0
    # ... and T(T^-1(l)) = l to well below 1e-3 mm.
    error = float((transform_points(params, moved) - points).abs().max())
    assert error < 1e-3


def test_inverse_is_exact_for_the_documented_precision_at_default_settings() -> None:
    params, centres = _params(AugmentConfig(), 64, seed=3)
    points = _points(centres, 64, seed=4)
    back = transform_points(params, inverse_transform_points(params, points))
    error = float((back - points).abs().max())
    assert error < 1e-4


def test_inverse_converges_for_twice_the_default_elastic_amplitude() -> None:
    """T stays invertible at elastic_mm=6 (300 fixed-point iterations converge to < 1e-4 mm),
    so the documented "well below 1e-4 mm" must hold; with its default 30 iterations
    inverse_transform_points silently returns points up to ~0.4 mm off."""
    config = AugmentConfig(elastic_mm=6.0)
    seeds = np.array([440, 226, 151, 22, 0, 1])  # 4 of 512 seeds where it goes wrong, 2 fine
    params = batch_params(config, seeds, np.zeros((len(seeds), 3)))
    rng = np.random.default_rng(0)
    points = torch.as_tensor(rng.uniform(-80, 80, (len(seeds), 200, 3)), dtype=torch.float32)
    converged = inverse_transform_points(params, points, tol_mm=1e-7, max_iterations=2000)
    error_300 = float((transform_points(params, converged) - points).abs().max())
    assert error_300 < 1e-3
    back = transform_points(params, inverse_transform_points(params, points))
    error_default = float((back - points).abs().max())
    assert error_default < 1e-3


def test_the_inverse_of_a_strong_local_warp_converges_by_damped_steps() -> None:
    """A local warp that expands (strength 1.5) is invertible (the radial map r + 1.5 r
    exp(-r^2 / 2 sigma^2) only grows: its slope is at least 1 - 1.5 / e), but the plain
    fixed-point iteration overshoots near its centre (slope -1.5) and oscillates: a detector
    training run crashed on such a draw at step 633 of seed 1. Damped steps solve it."""
    params, _ = _params(AugmentConfig(local_warps=1, elastic_mm=0.0), 2)
    params = dataclasses.replace(
        params,
        bump_centre_ras=torch.tensor([[[10.0, -5.0, 3.0]], [[0.0, 0.0, 0.0]]]),
        bump_sigma_mm=torch.tensor([[8.0], [8.0]]),
        bump_strength=torch.tensor([[1.5], [0.0]]),
    )
    near = torch.tensor([[[10.0, -5.0, 3.0], [11.0, -4.0, 3.5], [14.0, -5.0, 0.0]]] * 2)
    points = transform_points(params, near)  # points whose preimage lies in the bump's core
    back = inverse_transform_points(params, points)
    assert float((transform_points(params, back) - points).abs().max()) < 1e-4
    np.testing.assert_allclose(back.numpy(), near.numpy(), atol=1e-3)


def test_forward_then_inverse_returns_the_points() -> None:
    params, centres = _params(STRONG, 16, seed=5)
    points = _points(centres, 32, seed=6)
    back = inverse_transform_points(params, transform_points(params, points))
    error = float((back - points).abs().max())
    assert error < 1e-3


def test_disabled_augmentation_is_the_identity() -> None:
    config = AugmentConfig(enabled=False)
    params, centres = _params(config, 8)
    points = _points(centres, 20)
    np.testing.assert_allclose(transform_points(params, points).numpy(), points.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        inverse_transform_points(params, points).numpy(), points.numpy(), atol=1e-4
    )
    # No intensity change either (rendering checks this end to end, see test_envs).
    for name in ("log_gamma", "bias_amp", "noise_std", "elastic_amp_mm", "translation_mm"):
        assert float(getattr(params, name).abs().max()) == 0.0, name
    assert float((params.contrast - 1).abs().max()) == 0.0


def test_sample_params_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    centre = np.array([1.0, -2.0, 3.0])
    first = sample_params(STRONG, 42, centre)
    again = sample_params(STRONG, 42, centre)
    other = sample_params(STRONG, 43, centre)
    assert first.keys() == again.keys() == other.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    np.testing.assert_array_equal(first["centre_ras"], centre)
    for name in ("matrix", "translation_mm", "elastic_amp_mm", "log_gamma", "bias_amp"):
        assert not np.array_equal(first[name], other[name]), name


def test_sample_params_respect_their_ranges() -> None:
    config = AugmentConfig(rotation_deg=10.0, scale=0.05, anisotropic_scale=0.0)
    for seed in range(20):
        params = sample_params(config, seed, np.zeros(3))
        matrix = params["matrix"]
        singular = np.linalg.svd(matrix, compute_uv=False)
        # Isotropic scale only: all singular values equal, within [0.95, 1.05].
        np.testing.assert_allclose(singular, singular[0], rtol=1e-9)
        assert 0.95 - 1e-9 <= singular[0] <= 1.05 + 1e-9
        rotation = matrix / singular[0]
        angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
        assert angle <= 10.0 + 1e-6
        assert np.linalg.det(rotation) > 0
        assert np.all(np.abs(params["translation_mm"]) <= config.translation_mm)


# ------------------------------------------------------------- rendered content
@pytest.fixture(scope="module")
def blobs() -> tuple[ScanPyramid, np.ndarray]:
    volume, centres = blob_volume(noise=1.0)
    return build_pyramid(volume, [2.0]), centres


def _render(scan: ScanPyramid, positions: torch.Tensor, params, patch_size: int = 9):
    n = positions.shape[0]
    return render_patches(
        [scan],
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
        positions,
        params,
        cube_offsets(torch.full((n,), 2.0), patch_size),
    )


def test_patch_at_the_augmented_landmark_shows_the_original_landmark(blobs) -> None:
    scan, centres = blobs
    count = 12
    landmarks = np.tile(centres, (count // len(centres), 1))  # (12, 3): each blob 4 times
    seeds = np.arange(count) + 7
    params = batch_params(SPATIAL_ONLY, seeds, np.tile(scan.centre_ras, (count, 1)))
    original = torch.as_tensor(landmarks, dtype=torch.float32)
    moved = inverse_transform_points(params, original[:, None])[:, 0]
    # The augmentation moves the landmarks by several mm ...
    assert float(torch.linalg.norm(moved - original, dim=-1).min()) > 3.0
    patches = _render(scan, moved, params)
    centre = 9 // 2
    for n in range(count):
        peak = np.unravel_index(int(torch.argmax(patches[n])), patches[n].shape)
        assert peak == (centre, centre, centre), f"episode {n}: blob peak at {peak}"
    # ... and the centre voxel shows exactly what the original image shows at the landmark.
    identity = batch_params(
        AugmentConfig(enabled=False), np.zeros(count, np.int64), np.zeros((count, 3))
    )
    plain = _render(scan, original, identity)
    np.testing.assert_allclose(
        patches[:, centre, centre, centre].numpy(),
        plain[:, centre, centre, centre].numpy(),
        atol=2e-4,
    )
    # Rendering at the un-moved landmark in the augmented image misses the blob centre.
    wrong = _render(scan, original, params)
    misses = [
        np.unravel_index(int(torch.argmax(wrong[n])), wrong[n].shape) != (centre,) * 3
        for n in range(count)
    ]
    assert sum(misses) >= count // 2


def test_oblique_patch_grids_equal_the_pointwise_transform() -> None:
    """The separable fast path on a grid along oblique axes (the plane task's slabs) gives the
    same points and bias field as transforming every grid point."""
    from scipy.spatial.transform import Rotation

    from medrl.data.augment import grid_log_bias, log_bias, transform_grid, transform_points

    config = AugmentConfig(rotation_deg=20.0, elastic_mm=3.0, bias_field=0.3)
    centres = torch.tensor([[5.0, -10.0, 20.0], [-3.0, 4.0, 0.0]])
    params = batch_params(config, np.array([11, 12]), centres)
    axes = torch.as_tensor(
        np.stack([Rotation.from_euler("xyz", a, degrees=True).as_matrix().T
                  for a in ([30, -10, 45], [0, 60, -20])]),  # rows: unit axes
        dtype=torch.float32,
    )  # fmt: skip
    ramp = torch.arange(5, dtype=torch.float32) - 2.0
    offsets = torch.stack([ramp * 3.0, ramp * 2.0, ramp * 1.0])[None].expand(2, -1, -1)
    k, j, i = torch.meshgrid(ramp * 1.0, ramp * 2.0, ramp * 3.0, indexing="ij")
    local = torch.stack([i, j, k], dim=-1).reshape(-1, 3)  # [k, j, i] order, (u, v, n) parts
    points = centres[:, None, :] + torch.einsum("mc,ncd->nmd", local, axes)
    fast = transform_grid(params, centres, offsets, axes)
    torch.testing.assert_close(fast, transform_points(params, points), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(
        grid_log_bias(params, centres, offsets, axes), log_bias(params, points), atol=1e-4,
        rtol=1e-4,
    )  # fmt: skip


def test_the_intensity_lookup_table_swaps_tissue_order_only_when_drawn() -> None:
    """A random lookup table maps the knots to its values and interpolates between them; an
    episode that does not draw it (and every episode of a config without it) is unchanged."""
    from medrl.data.augment import LUT_KNOTS, apply_intensity, remap_intensity

    lut = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.3, 0.7]])
    knots = torch.linspace(0, 1, LUT_KNOTS)[None]
    torch.testing.assert_close(remap_intensity(lut, knots), lut)
    middle = remap_intensity(lut, torch.tensor([[0.1, 0.3, 1.4, -0.2]]))
    torch.testing.assert_close(middle, torch.tensor([[0.45, 0.5, 0.7, 0.0]]))
    plain = dataclasses.replace(SPATIAL_ONLY, intensity_remap=0.0)
    always = dataclasses.replace(SPATIAL_ONLY, intensity_remap=1.0)
    seeds, centres = np.arange(40), np.zeros((40, 3))
    off, on = batch_params(plain, seeds, centres), batch_params(always, seeds, centres)
    assert float(off.remap.sum()) == 0 and float(on.remap.min()) == 1
    # the lookup table is drawn last: every other parameter is the same with or without it
    for name in ("matrix", "elastic_amp_mm", "log_gamma", "noise_std"):
        torch.testing.assert_close(getattr(off, name), getattr(on, name))
    values = torch.rand(40, 50) * 1.2
    zero = torch.zeros_like(values)
    torch.testing.assert_close(apply_intensity(off, values, zero, None), values)
    remapped = apply_intensity(on, values, zero, None)
    torch.testing.assert_close(remapped, remap_intensity(on.lut, values))
    # darker and brighter swap in some episodes: the order of two intensities is not kept
    dark, bright = (
        remap_intensity(on.lut, torch.full((40, 1), 0.3)),
        remap_intensity(on.lut, torch.full((40, 1), 0.8)),
    )
    assert 0 < int((dark > bright).sum()) < 40
    half = batch_params(dataclasses.replace(SPATIAL_ONLY, intensity_remap=0.5), np.arange(400),
                        np.zeros((400, 3)))  # fmt: skip
    assert 0.4 < float(half.remap.mean()) < 0.6


# ------------------------------------------------------------------ local warps
LOCAL = dataclasses.replace(
    SPATIAL_ONLY, local_warps=3, local_warp_strength=0.45, local_warp_sigma_mm=(8.0, 20.0)
)


def test_local_warps_round_trip_exactly_at_their_strongest() -> None:
    params, centres = _params(LOCAL, 32, seed=5)
    assert float(params.bump_strength.abs().max()) > 0.3
    points = _points(centres, 64, seed=6)
    moved = inverse_transform_points(params, points)
    assert float((transform_points(params, moved) - points).abs().max()) < 1e-3


def test_local_warps_centre_on_the_anchors_and_change_nothing_far_away() -> None:
    """With anchors, every bump sits where the affine part puts an anchor (within the 4 mm
    jitter and a few sigma); the displacement it adds vanishes far from it; without local
    warps the parameters drawn before them are unchanged."""
    anchors = np.array([[20.0, -30.0, 10.0], [-25.0, 15.0, -5.0]])
    centre = np.zeros(3)
    plain = dataclasses.replace(LOCAL, local_warps=0)
    for seed in range(20):
        p = sample_params(LOCAL, seed, centre, anchors)
        q = sample_params(plain, seed, centre, anchors)
        for name in ("matrix", "translation_mm", "elastic_amp_mm", "lut"):
            np.testing.assert_array_equal(p[name], q[name])
        assert not np.any(q["bump_strength"])
        # the bump centres, mapped through the affine part, land near an anchor
        mapped = (p["bump_centre_ras"] - centre) @ p["matrix"].T + centre + p["translation_mm"]
        nearest = np.linalg.norm(mapped[:, None] - anchors[None], axis=-1).min(axis=1)
        assert nearest.max() < 20.0
    params = stack_params([sample_params(LOCAL, 3, centre, anchors)])
    at_bumps = params.bump_centre_ras.clone()
    at_bumps[..., 0] += params.bump_sigma_mm  # one sigma away from each centre
    far = params.bump_centre_ras + 200.0
    from medrl.data.augment import _bump_displacement

    assert float(_bump_displacement(params, at_bumps).norm(dim=-1).max()) > 0.5
    assert float(_bump_displacement(params, far).norm(dim=-1).max()) < 1e-6


def test_patch_grids_with_local_warps_equal_the_pointwise_transform() -> None:
    from scipy.spatial.transform import Rotation

    from medrl.data.augment import transform_grid

    centres = torch.tensor([[5.0, -10.0, 20.0], [-3.0, 4.0, 0.0]])
    anchors = [c.numpy()[None] + 3.0 for c in centres]
    params = batch_params(LOCAL, np.array([21, 22]), centres.numpy(), anchors_ras=anchors)
    ramp = torch.arange(7, dtype=torch.float32) - 3.0
    offsets = torch.stack([ramp * 3.0, ramp * 2.0, ramp * 1.0])[None].expand(2, -1, -1)
    k, j, i = torch.meshgrid(ramp * 1.0, ramp * 2.0, ramp * 3.0, indexing="ij")
    local = torch.stack([i, j, k], dim=-1).reshape(-1, 3)
    for axes in (None, torch.as_tensor(
        np.stack([Rotation.from_euler("xyz", a, degrees=True).as_matrix().T
                  for a in ([30, -10, 45], [0, 60, -20])]), dtype=torch.float32,
    )):  # fmt: skip
        rows = torch.eye(3).expand(2, 3, 3) if axes is None else axes
        points = centres[:, None, :] + torch.einsum("mc,ncd->nmd", local, rows)
        fast = transform_grid(params, centres, offsets, axes)
        torch.testing.assert_close(fast, transform_points(params, points), atol=1e-3, rtol=1e-5)
        # the local warps really move the grid (the comparison above is not trivial)
        still = dataclasses.replace(params, bump_strength=torch.zeros_like(params.bump_strength))
        assert float((fast - transform_grid(still, centres, offsets, axes)).abs().max()) > 0.5


def test_a_search_skips_the_identity_intensity_change_with_the_same_patches(monkeypatch) -> None:
    """A search's patches (no augmentation) skip the bias field and gamma but are exactly those
    of the full intensity path (clamped at 0: the noisy blobs have negative values)."""
    from medrl.envs import sampler

    volume, centres = blob_volume(noise=1.0)
    scan = build_pyramid(volume, [2.0, 4.0])
    for level_image in scan.levels:  # values below 0 as well (the full path clamps them)
        level_image.tensor.sub_(0.2)
    count = 6
    params = no_augmentation(scan.centre_ras, count)
    noise = torch.randn(count, 9**3, generator=torch.Generator().manual_seed(0))
    assert intensity_is_identity(params, noise) and intensity_is_identity(params, None)
    position = torch.as_tensor(np.tile(centres[:1], (count, 1)), dtype=torch.float32)
    offsets = cube_offsets(torch.full((count,), 2.0), 9)
    level = torch.tensor([0, 1, 0, 1, 0, 1])
    zero = torch.zeros(count, dtype=torch.long)
    fast = render_patches([scan], zero, level, position, params, offsets, noise)
    monkeypatch.setattr(sampler, "intensity_is_identity", lambda *_: False)
    full = render_patches([scan], zero, level, position, params, offsets, noise)
    assert torch.equal(fast, full) and float(fast.min()) == 0.0 < float(fast.max())
    brighter = dataclasses.replace(params, contrast=params.contrast * 1.1)
    assert not intensity_is_identity(brighter, noise)


@pytest.mark.parametrize("spacings_mm", [[2.0, 4.0], [4.0, 2.0]])
def test_a_blurred_episode_sees_the_next_coarser_level_on_its_own_grid(
    spacings_mm: list[float],
) -> None:
    """blur: 2 mm patches of a blurred episode are the 4 mm copy sampled on the 2 mm grid
    (smoother: less variation between neighbours), whichever order the levels are listed in
    (presets list them coarse first); the coarsest level stays itself."""
    volume, centres = blob_volume(noise=1.0)
    scan = build_pyramid(volume, spacings_mm)
    fine_level, coarse_level = (0, 1) if spacings_mm[0] < spacings_mm[1] else (1, 0)
    count = 40
    plain = dataclasses.replace(SPATIAL_ONLY, rotation_deg=0.0, translation_mm=0.0, scale=0.0,
                                anisotropic_scale=0.0, elastic_mm=0.0)  # fmt: skip
    params = batch_params(dataclasses.replace(plain, blur=0.5), np.arange(count),
                          np.tile(scan.centre_ras, (count, 1)))  # fmt: skip
    blurred = params.blur > 0
    assert 0 < int(blurred.sum()) < count
    still = batch_params(plain, np.arange(count), np.tile(scan.centre_ras, (count, 1)))
    position = torch.as_tensor(np.tile(centres[:1], (count, 1)), dtype=torch.float32)
    offsets = cube_offsets(torch.full((count,), 2.0), 9)
    zero = torch.zeros(count, dtype=torch.long)
    fine, coarse_t = torch.full_like(zero, fine_level), torch.full_like(zero, coarse_level)
    scans = [scan]

    def render(level: torch.Tensor, p) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return render_patches(scans, zero, level, position, p, offsets)

    got, sharp, coarse = render(fine, params), render(fine, still), render(coarse_t, still)
    torch.testing.assert_close(got[blurred], coarse[blurred])
    torch.testing.assert_close(got[~blurred], sharp[~blurred])
    assert float(coarse[0].diff(dim=-1).abs().mean()) < float(sharp[0].diff(dim=-1).abs().mean())
    torch.testing.assert_close(render(coarse_t, params), coarse)  # nothing coarser


# ------------------------------------------------------------------ contrast mix
def _contrast_cases():
    """Three contrasts of one brain (same grid, same landmarks), one other brain on the same
    grid, and the first contrast on a shifted grid."""
    from medrl.data.datalist import Case
    from medrl.io.landmarks import Landmarks

    first, centres = blob_volume(noise=1.0, seed=0)
    marks = Landmarks(("a", "b", "c"), centres)
    inverted = dataclasses.replace(first, array=first.array.max() - first.array)
    noisy, _ = blob_volume(noise=200.0, seed=1)
    shifted = dataclasses.replace(first, origin_lps=np.asarray(first.origin_lps) + 1.0)
    other = Landmarks(("a", "b", "c"), centres + 5.0)
    return [
        Case("t1", first, marks, "train"),
        Case("t2", inverted, marks, "train"),
        Case("pd", noisy, marks, "train"),
        Case("other_brain", noisy, other, "train"),
        Case("other_grid", shifted, marks, "train"),
    ], centres


def test_siblings_are_the_same_brain_on_the_same_grid() -> None:
    from medrl.envs.pyramid import case_pyramids, sibling_groups

    cases, _ = _contrast_cases()
    assert sibling_groups(cases) == [[1, 2], [0, 2], [0, 1], [], []]
    scans = case_pyramids(cases, [2.0])
    assert [s.levels for s in scans[0].siblings] == [scans[1].levels, scans[2].levels]
    assert scans[3].siblings == () and scans[4].siblings == ()
    assert all(s.siblings == () for s in scans[0].siblings)  # no chains


def test_a_mixed_episode_sees_the_convex_blend_of_the_siblings_it_picked() -> None:
    """contrast_mix: a mixed episode's patch is w0 * scan + w1 * sibling_a + w2 * sibling_b
    (weights on the simplex, siblings picked per episode); others see the scan alone, and the
    mix is drawn after everything else."""
    from medrl.data.augment import MIX_SLOTS
    from medrl.envs.pyramid import case_pyramids

    cases, centres = _contrast_cases()
    scans = case_pyramids(cases[:3], [2.0])
    count = 60
    plain = dataclasses.replace(SPATIAL_ONLY, rotation_deg=0.0, translation_mm=0.0, scale=0.0,
                                anisotropic_scale=0.0, elastic_mm=0.0)  # fmt: skip
    mixed_config = dataclasses.replace(plain, contrast_mix=0.5)
    seeds, where = np.arange(count), np.tile(scans[0].centre_ras, (count, 1))
    params, still = batch_params(mixed_config, seeds, where), batch_params(plain, seeds, where)
    for name in ("matrix", "elastic_amp_mm", "lut", "blur", "bump_strength"):
        torch.testing.assert_close(getattr(params, name), getattr(still, name))
    mixed = params.mix[:, 0] < 1
    assert 0.3 < float(mixed.float().mean()) < 0.7
    torch.testing.assert_close(params.mix.sum(dim=1), torch.ones(count))
    assert params.mix.shape == (count, MIX_SLOTS) and float(params.mix.min()) >= 0
    position = torch.as_tensor(np.tile(centres[:1], (count, 1)), dtype=torch.float32)
    offsets = cube_offsets(torch.full((count,), 2.0), 7)
    zero = torch.zeros(count, dtype=torch.long)
    got = render_patches(scans, zero, zero, position, params, offsets).reshape(count, -1)

    lift = 1.0 - min(float(s.levels[0].tensor.min()) for s in scans)

    def raw(scan: ScanPyramid) -> torch.Tensor:  # before the clamp at 0 of apply_intensity
        lifted = dataclasses.replace(scan, siblings=(), levels=tuple(
            dataclasses.replace(lv, tensor=lv.tensor + lift) for lv in scan.levels))  # fmt: skip
        patches = render_patches([lifted], zero, zero, position, still, offsets)
        return patches.reshape(count, -1) - lift

    each = [raw(s) for s in (scans[0], *scans[0].siblings)]
    picks = torch.clamp((params.mix_pick * 2).long(), max=1) + 1  # siblings are 1 and 2
    expected = params.mix[:, :1] * each[0]
    for slot in (1, 2):
        chosen = torch.stack([each[int(picks[n, slot - 1])][n] for n in range(count)])
        expected = expected + params.mix[:, slot : slot + 1] * chosen
    torch.testing.assert_close(got, expected.clamp(min=0.0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[~mixed], each[0][~mixed].clamp(min=0.0), atol=1e-4, rtol=0)
    assert float((got[mixed] - each[0][mixed]).abs().max()) > 0.1
    # a scan without siblings is unchanged by the same parameters
    alone = dataclasses.replace(scans[0], siblings=())
    torch.testing.assert_close(
        render_patches([alone], zero, zero, position, params, offsets).reshape(count, -1),
        each[0].clamp(min=0.0),
        atol=1e-4,
        rtol=0,
    )
