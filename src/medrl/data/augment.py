"""Augmentation drawn at episode start: a spatial transform and an intensity change.

Nothing is resampled up front. An episode's augmented image is defined pointwise,

    I_aug(x) = g(I(T(x)), x),   T(x) = M (x - c) + c + t + d(x),

where ``x`` is a point of the augmented world (RAS mm), ``M`` combines a rotation and
(an)isotropic scaling about the image centre ``c``, ``t`` is a translation and ``d`` a smooth
displacement: a sum of a few random sinusoidal modes (global, smooth shape change) plus, with
``local_warps``, a few local radial bumps ``s (x - b) exp(-|x - b|^2 / 2 sigma^2)`` centred
near targets of the scan (structures such as the ventricles swell or shrink locally between
people). Both are infinitely differentiable with a gradient small enough for ``T`` to stay
invertible. ``g`` applies, with probability
``intensity_remap``, a random lookup table (a piecewise-linear map of the normalised intensity,
0 kept at 0 so air stays dark, knots at 0.2 ... 1 drawn uniformly in [0, 1]: tissues change
their order of brightness, as between T1w, T2w and PD contrasts), then gamma, contrast, a
smooth multiplicative bias field and noise. With probability ``contrast_mix`` the scan's
values are first a random convex blend of the scan and two of its *siblings*, other contrasts
of the same brain on the same grid (:func:`medrl.envs.pyramid.sibling_groups`): a blend of
T1w and T2w looks like PD, a fused T1w/T2* image is one, and where the contrasts differ in
skull-stripping the scalp's brightness varies; unlike a lookup table of one contrast, a blend
can make tissues that one contrast shows alike (CSF and bone in T1w) differ. With probability
``blur`` an episode sees the scan one level coarser (smoother) than its patches' spacing.
Patches are rendered by pushing their sample points through ``T``, so an augmented episode
costs no more than a plain one (a mixed one samples the siblings too), and a transition in the
replay is re-rendered from the episode's seed alone.

A landmark ``l`` of the original image lies at ``T^{-1}(l)`` in the augmented image;
:func:`inverse_transform_points` solves ``T(y) = l`` by fixed-point iteration to well below
1e-4 mm, so landmarks move with the image exactly (to floating-point precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medrl.config import AugmentConfig

_NUM_BIAS_MODES = 3
LUT_KNOTS = 6
MIX_SLOTS = 3
"""A mixed-contrast episode blends the scan with up to two of its siblings."""
"""Knots of the random intensity lookup table at 0, 0.2, ..., 1 (normalised intensity)."""


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation parameters of a batch of episodes, as tensors with a leading batch axis."""

    matrix: torch.Tensor  # (N, 3, 3)
    centre_ras: torch.Tensor  # (N, 3)
    translation_mm: torch.Tensor  # (N, 3)
    elastic_freq: torch.Tensor  # (N, K, 3) angular frequency vectors, rad/mm
    elastic_phase: torch.Tensor  # (N, K)
    elastic_amp_mm: torch.Tensor  # (N, 3, K)
    bias_freq: torch.Tensor  # (N, B, 3)
    bias_phase: torch.Tensor  # (N, B)
    bias_amp: torch.Tensor  # (N, B)
    log_gamma: torch.Tensor  # (N,)
    contrast: torch.Tensor  # (N,)
    noise_std: torch.Tensor  # (N,)
    remap: torch.Tensor  # (N,) 1: the lookup table applies, 0: it does not
    lut: torch.Tensor  # (N, LUT_KNOTS) output values at the knots
    bump_centre_ras: torch.Tensor  # (N, L, 3) local warp centres, augmented world
    bump_sigma_mm: torch.Tensor  # (N, L)
    bump_strength: torch.Tensor  # (N, L) s; 0: no local warp
    blur: torch.Tensor  # (N,) 1: patches come from the next coarser level's copy of the scan
    mix: torch.Tensor  # (N, MIX_SLOTS) weights of the scan and of two of its siblings (sum 1)
    mix_pick: torch.Tensor  # (N, MIX_SLOTS - 1) in [0, 1): which siblings (x their count)

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def index(self, idx: torch.Tensor) -> AugmentParams:
        return AugmentParams(*(getattr(self, name)[idx] for name in _FIELDS))

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(*(getattr(self, name).to(device) for name in _FIELDS))


_FIELDS = tuple(AugmentParams.__dataclass_fields__)


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation about a uniformly random axis by an angle uniform in [-max_deg, max_deg]."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis) + 1e-12
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _random_modes(
    rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12
    wavelengths = rng.uniform(wavelength_mm[0], wavelength_mm[1], size=(count, 1))
    return directions * (2 * np.pi / wavelengths), rng.uniform(0, 2 * np.pi, size=count)


def _bumps(
    config: AugmentConfig,
    rng: np.random.Generator,
    on: float,
    matrix: np.ndarray,
    centre_ras: np.ndarray,
    translation_mm: np.ndarray,
    anchors_ras: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Local warps: centres near random anchors (targets of the original image), placed in
    the augmented world through the inverse of the affine part so that they sit on the
    anchors' anatomy; without anchors, uniformly within 40 mm of the image centre."""
    count = max(config.local_warps, 1)
    active = on * (config.local_warps > 0)
    anchors = None if anchors_ras is None else np.asarray(anchors_ras, dtype=np.float64)
    if anchors is not None:
        anchors = anchors[np.isfinite(anchors).all(axis=1)]
    if anchors is not None and len(anchors):
        picked = anchors[rng.integers(len(anchors), size=count)]
        picked = picked + rng.normal(0.0, 4.0, size=(count, 3))
    else:
        picked = centre_ras + rng.uniform(-40.0, 40.0, size=(count, 3))
    inverse = np.linalg.inv(matrix)
    centres = (picked - centre_ras - translation_mm) @ inverse.T + centre_ras
    low, high = config.local_warp_sigma_mm
    return {
        "bump_centre_ras": centres,
        "bump_sigma_mm": rng.uniform(low, high, size=count),
        "bump_strength": active
        * rng.uniform(-config.local_warp_strength, config.local_warp_strength, size=count),
    }


def sample_params(
    config: AugmentConfig,
    seed: int,
    centre_ras: np.ndarray,
    anchors_ras: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Draw one episode's parameters from ``seed`` (identity when augmentation is disabled).

    ``anchors_ras`` (K, 3), the targets of the scan in its own world (NaN rows ignored), are
    where local warps centre; they change nothing else.
    """
    rng = np.random.default_rng(seed)
    k = max(config.elastic_modes, 1)
    on = 1.0 if config.enabled else 0.0
    rotation = _random_rotation(rng, config.rotation_deg * on)
    iso = rng.uniform(1 - config.scale, 1 + config.scale) if on else 1.0
    aniso = 1 + on * rng.uniform(-config.anisotropic_scale, config.anisotropic_scale, size=3)
    elastic_freq, elastic_phase = _random_modes(rng, k, config.elastic_wavelength_mm)
    bias_freq, bias_phase = _random_modes(rng, _NUM_BIAS_MODES, (150.0, 400.0))
    matrix = rotation @ np.diag(iso * aniso)
    centre = np.asarray(centre_ras, dtype=np.float64)
    translation = on * rng.uniform(-config.translation_mm, config.translation_mm, 3)
    params = {
        "matrix": matrix,
        "centre_ras": centre,
        "translation_mm": translation,
        "elastic_freq": elastic_freq,
        "elastic_phase": elastic_phase,
        "elastic_amp_mm": on * rng.normal(0, config.elastic_mm / np.sqrt(k), size=(3, k)),
        "bias_freq": bias_freq,
        "bias_phase": bias_phase,
        "bias_amp": on * rng.normal(0, config.bias_field / np.sqrt(_NUM_BIAS_MODES), 3),
        "log_gamma": np.float64(on * rng.uniform(-config.gamma, config.gamma)),
        "contrast": np.float64(1 + on * rng.uniform(-config.contrast, config.contrast)),
        "noise_std": np.float64(on * rng.uniform(0, config.noise_std)),
        # drawn last, so that every earlier parameter is what it was before the lookup table
        "remap": np.float64(on * (rng.uniform() < config.intensity_remap)),
        "lut": np.concatenate([[0.0], rng.uniform(0.0, 1.0, LUT_KNOTS - 1)]),
    }
    # drawn after everything else, so that the earlier parameters do not depend on them
    params.update(_bumps(config, rng, on, matrix, centre, translation, anchors_ras))
    params["blur"] = np.float64(on * (rng.uniform() < config.blur))
    params.update(_contrast_mix(config, rng, on))
    return params


def _contrast_mix(config: AugmentConfig, rng: np.random.Generator, on: float) -> dict[str, Any]:
    """Weights of a convex blend of the scan with two of its siblings (other contrasts of the
    same brain on the same grid), uniform on the simplex, with probability ``contrast_mix``;
    otherwise the scan alone. Drawn last, so that every earlier parameter is unchanged."""
    mixed = on * (rng.uniform() < config.contrast_mix)
    weights = rng.dirichlet(np.ones(MIX_SLOTS))
    pick = rng.uniform(0.0, 1.0, MIX_SLOTS - 1)
    alone = np.eye(MIX_SLOTS)[0]
    return {"mix": weights if mixed else alone, "mix_pick": pick}


def stack_params(
    items: list[dict[str, np.ndarray]], device: torch.device | str = "cpu"
) -> AugmentParams:
    """Stack per-episode parameter dicts into one batched :class:`AugmentParams`."""
    return AugmentParams(
        *(
            torch.as_tensor(np.stack([item[name] for item in items]), dtype=torch.float32).to(
                device
            )
            for name in _FIELDS
        )
    )


def batch_params(
    config: AugmentConfig,
    seeds: np.ndarray,
    centres_ras: np.ndarray,
    device: torch.device | str = "cpu",
    anchors_ras: list[np.ndarray] | None = None,
) -> AugmentParams:
    """Parameters of a batch of episodes: one seed, scan centre and (optionally) anchor set
    (see :func:`sample_params`) each."""
    anchors: list[np.ndarray | None] = (
        [None] * len(seeds) if anchors_ras is None else list(anchors_ras)
    )
    return stack_params(
        [
            sample_params(config, int(s), c, a)
            for s, c, a in zip(seeds, centres_ras, anchors, strict=True)
        ],
        device,
    )


def no_augmentation(
    centre_ras: np.ndarray, n: int = 1, device: torch.device | str = "cpu"
) -> AugmentParams:
    """Parameters of ``n`` episodes that leave the scan as it is (searches, detection)."""
    params = batch_params(
        AugmentConfig(enabled=False), np.zeros(1, np.int64), np.asarray(centre_ras)[None], device
    )
    return params.index(torch.zeros(n, dtype=torch.long, device=params.matrix.device))


def _bump_displacement(params: AugmentParams, points_ras: torch.Tensor) -> torch.Tensor:
    """Local warps' displacement (N, M, 3) at points (N, M, 3)."""
    rel = points_ras[:, :, None, :] - params.bump_centre_ras[:, None, :, :]  # (N, M, L, 3)
    sigma = params.bump_sigma_mm[:, None, :]
    weight = torch.exp(-(rel * rel).sum(-1) / (2 * sigma * sigma))
    weight = weight * params.bump_strength[:, None, :]
    return (rel * weight[..., None]).sum(2)


def _has_bumps(params: AugmentParams) -> bool:
    return bool((params.bump_strength != 0).any())


def _has_waves(params: AugmentParams) -> bool:
    return bool((params.elastic_amp_mm != 0).any())


def _elastic(params: AugmentParams, points_ras: torch.Tensor) -> torch.Tensor:
    """Non-affine displacement (N, M, 3) at points (N, M, 3): sinusoids plus local warps."""
    angles = torch.bmm(points_ras, params.elastic_freq.transpose(1, 2))
    waves = torch.sin(angles + params.elastic_phase[:, None, :])
    out = torch.bmm(waves, params.elastic_amp_mm.transpose(1, 2))
    if _has_bumps(params):
        out = out + _bump_displacement(params, points_ras)
    return out


def _affine(params: AugmentParams, points_ras: torch.Tensor) -> torch.Tensor:
    centre = params.centre_ras[:, None, :]
    rel = points_ras - centre
    matrix = params.matrix[:, None]  # (N, 1, 3, 3); written out: bmm with K=3 is slow on CPU
    moved = rel[..., 0:1] * matrix[..., 0] + rel[..., 1:2] * matrix[..., 1]
    moved = moved + rel[..., 2:3] * matrix[..., 2]
    return moved + centre + params.translation_mm[:, None, :]


def transform_points(params: AugmentParams, points_ras: torch.Tensor) -> torch.Tensor:
    """Map augmented-world points (N, M, 3) to the original image's world: ``T(x)``."""
    return _affine(params, points_ras) + _elastic(params, points_ras)


def grid_sinusoids(
    freq: torch.Tensor,
    phase: torch.Tensor,
    centre_ras: torch.Tensor,
    offsets_mm: torch.Tensor,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sin(w . x + phase)`` (N, K, P^3) on the grid ``x = centre + sum_c o_c a_c``.

    The same values as evaluating every point, but the grid is separable: with complex
    exponentials only 3P values per mode need a transcendental function, the P^3 grid is
    products. ``offsets_mm`` is (N, P) (the same along each axis) or (N, 3, P); the grid axes
    ``a_c`` are the rows of ``axes`` (N, 3, 3), unit vectors in RAS (default: R, A, S, an
    axis-aligned grid); the grid is ordered [k, j, i] like a patch.
    """
    n, k = phase.shape
    offsets_mm = per_axis_offsets(offsets_mm)
    p = offsets_mm.shape[2]
    base = torch.einsum("nkc,nc->nk", freq, centre_ras) + phase
    ones = torch.ones((), dtype=freq.dtype, device=freq.device)
    # the frequency of each mode along each grid axis: w . a_c
    along = freq if axes is None else torch.einsum("nkd,ncd->nkc", freq, axes.to(freq.dtype))

    def axis(c: int) -> torch.Tensor:
        return torch.polar(ones.expand(n, k, p), along[:, :, c, None] * offsets_mm[:, c, None, :])

    full = (
        torch.polar(ones.expand(n, k), base)[:, :, None, None, None]
        * axis(2)[:, :, :, None, None]
        * axis(1)[:, :, None, :, None]
        * axis(0)[:, :, None, None, :]
    )
    return full.imag.reshape(n, k, p**3)


def per_axis_offsets(offsets_mm: torch.Tensor) -> torch.Tensor:
    """Grid offsets as (N, 3, P): (N, P) offsets are the same along R, A and S."""
    if offsets_mm.dim() == 2:
        return offsets_mm[:, None, :].expand(-1, 3, -1)
    return offsets_mm


def transform_grid(
    params: AugmentParams,
    centre_ras: torch.Tensor,
    offsets_mm: torch.Tensor,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T(x)`` (N, P^3, 3) on each patch grid ``x = centre + sum_c o_c a_c`` ([k, j, i]).

    ``offsets_mm`` is (N, P) or (N, 3, P) and ``axes`` (N, 3, 3) or None (see
    :func:`grid_sinusoids`). The fast path of :func:`transform_points` for patches: both the
    affine part and the elastic modes are separable along the grid axes, oblique ones too.
    """
    offsets_mm = per_axis_offsets(offsets_mm)
    n, _, p = offsets_mm.shape
    matrix = params.matrix
    base = torch.bmm(matrix, (centre_ras - params.centre_ras)[:, :, None])[:, :, 0]
    base = base + params.centre_ras + params.translation_mm
    # the image of each grid axis under the affine part: M a_c (column c of M when a_c = e_c)
    mapped = matrix if axes is None else torch.bmm(matrix, axes.to(matrix.dtype).transpose(1, 2))
    along = [offsets_mm[:, c, :, None] * mapped[:, None, :, c] for c in range(3)]  # (N, P, 3)
    affine = (
        base[:, None, None, None, :]
        + along[2][:, :, None, None, :]
        + along[1][:, None, :, None, :]
        + along[0][:, None, None, :, :]
    ).reshape(n, p**3, 3)
    out = affine
    if _has_waves(params):  # searches and detection have none: skip P^3 x K sinusoids
        waves = grid_sinusoids(
            params.elastic_freq, params.elastic_phase, centre_ras, offsets_mm, axes
        )
        out = out + torch.bmm(params.elastic_amp_mm, waves).transpose(1, 2)
    if _has_bumps(params):
        unit = torch.eye(3, dtype=offsets_mm.dtype, device=offsets_mm.device).expand(n, 3, 3)
        grid_axes = unit if axes is None else axes.to(offsets_mm.dtype)
        steps = [offsets_mm[:, c, :, None] * grid_axes[:, None, c, :] for c in range(3)]
        points = (
            centre_ras[:, None, None, None, :]
            + steps[2][:, :, None, None, :]
            + steps[1][:, None, :, None, :]
            + steps[0][:, None, None, :, :]
        ).reshape(n, p**3, 3)
        out = out + _bump_displacement(params, points)
    return out


def grid_log_bias(
    params: AugmentParams,
    centre_ras: torch.Tensor,
    offsets_mm: torch.Tensor,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log of the multiplicative bias field (N, P^3) on each patch grid."""
    waves = grid_sinusoids(params.bias_freq, params.bias_phase, centre_ras, offsets_mm, axes)
    return torch.bmm(params.bias_amp[:, None, :], waves)[:, 0]


def log_bias(params: AugmentParams, points_ras: torch.Tensor) -> torch.Tensor:
    """Log of the multiplicative bias field (N, M) at arbitrary points (N, M, 3)."""
    angles = torch.bmm(points_ras, params.bias_freq.transpose(1, 2))
    return (torch.sin(angles + params.bias_phase[:, None, :]) @ params.bias_amp[:, :, None])[..., 0]


def inverse_transform_points(
    params: AugmentParams, points_ras: torch.Tensor, tol_mm: float = 1e-5, max_iterations: int = 500
) -> torch.Tensor:
    """Solve ``T(y) = points`` for y (N, M, 3): where original points lie after augmentation.

    Fixed-point iteration in float64 until the update is below ``tol_mm``. Where a strong local
    warp makes the plain iteration overshoot and oscillate (the field is still invertible),
    it is repeated with damped steps (half, then a quarter of each update); a RuntimeError if
    none converges (an elastic field too strong to be invertible).
    """
    if points_ras.numel() == 0:
        return points_ras.clone()
    double = AugmentParams(*(getattr(params, name).double() for name in _FIELDS))
    target = points_ras.double()
    centre = double.centre_ras[:, None, :]
    inverse = torch.linalg.inv(double.matrix)
    base = target - centre - double.translation_mm[:, None, :]
    start = torch.einsum("nij,nmj->nmi", inverse, base) + centre
    for damping in (1.0, 0.5, 0.25):
        y = start
        for _ in range(int(max_iterations / damping)):
            y_next = torch.einsum("nij,nmj->nmi", inverse, base - _elastic(double, y)) + centre
            update = y_next - y
            y = y + damping * update
            if torch.max(torch.abs(update)) < tol_mm:
                return y.to(points_ras.dtype)
    raise RuntimeError("the augmentation's elastic field is not invertible; lower elastic_mm")


def remap_intensity(lut: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Values (N, M), clamped to [0, 1], through piecewise-linear lookup tables (N, K) with
    knots evenly spaced over [0, 1]."""
    knots = lut.shape[1] - 1
    position = torch.clamp(values, 0.0, 1.0) * knots
    lower = torch.clamp(position.floor().long(), max=knots - 1)
    fraction = position - lower
    low = torch.gather(lut, 1, lower)
    high = torch.gather(lut, 1, lower + 1)
    return low + (high - low) * fraction


def intensity_is_identity(params: AugmentParams, noise: torch.Tensor | None) -> bool:
    """Whether :func:`apply_intensity` changes nothing but clamping at 0 (every episode without
    lookup table, gamma, contrast, bias field or noise: a search or a detection)."""
    return (
        not bool((params.remap > 0).any())
        and bool((params.log_gamma == 0).all())
        and bool((params.contrast == 1).all())
        and bool((params.bias_amp == 0).all())
        and (noise is None or bool((params.noise_std == 0).all()))
    )


def apply_intensity(
    params: AugmentParams,
    values: torch.Tensor,
    log_bias_field: torch.Tensor,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Lookup table (where ``remap``), gamma, contrast, bias field (given as its log, (N, M))
    and noise on values (N, M)."""
    if bool((params.remap > 0).any()):
        values = torch.where(params.remap[:, None] > 0, remap_intensity(params.lut, values), values)
    gamma = torch.exp(params.log_gamma)[:, None]
    out = torch.clamp(values, min=0.0) ** gamma * params.contrast[:, None]
    out = out * torch.exp(log_bias_field)
    if noise is not None:
        out = out + noise * params.noise_std[:, None]
    return out
