"""Losses and measures of a registration, all in torch and differentiable where it matters.

Conventions of :mod:`medrl.registration.deformable.integrate`: (B, C, D, H, W) images, (B, 3,
D, H, W) fields in voxels of their grid with channels (x, y, z), (N, 3) voxel points (i, j, k).
Working grids are isotropic, so a distance in voxels times the spacing is a distance in mm.

* :func:`local_ncc_loss`: minus the mean squared local normalised cross-correlation (window
  9 voxels), in [-1, 0]; same contrast.
* :func:`mind_loss`: mean squared difference of MIND-SSC descriptors (Heinrich et al. 2013),
  >= 0; modality-independent (T1w <-> T2w).
* :func:`diffusion_loss`: mean squared forward difference of a (velocity) field, the
  smoothness term weighted by lambda.
* :func:`soft_dice`, :func:`one_hot`: Dice of (soft) one-hot labels.
* :func:`landmark_distances_mm`: target registration error of warped landmarks.
* :func:`jacobian_determinant`, :func:`folding_share`: finite-difference Jacobian of
  ``p + u(p)`` and the share of voxels where it folds (determinant <= 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "NCC_WINDOW_VOX",
    "box_mean",
    "diffusion_loss",
    "folding_share",
    "jacobian_determinant",
    "landmark_distances_mm",
    "local_ncc_loss",
    "mind_loss",
    "mind_ssc",
    "one_hot",
    "similarity_loss",
    "soft_dice",
]

NCC_WINDOW_VOX = 9
"""Side of the cubic window of the local NCC, in voxels."""

_NCC_EPS = 1e-10
"""Added to the product of the local variances (means over the window; intensities in about
[0, 1]): far below real structure (variance 1e-3 gives 1e-6), above float32 round-off of
flat regions (variance ~1e-8). VoxelMorph's 1e-5 on window sums is about 2e-11 here."""


def box_mean(volume: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window``-voxel cube around each voxel (separable; edges: mean of the part
    inside the volume). (B, C, D, H, W) -> same shape."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of voxels, got {window}")
    half = window // 2
    out = volume
    for axis in range(3):
        kernel = [1, 1, 1]
        padding = [0, 0, 0]
        kernel[axis] = window
        padding[axis] = half
        out = F.avg_pool3d(
            out, kernel_size=kernel, stride=1, padding=padding, count_include_pad=False
        )
    return out


def local_ncc_loss(
    fixed: torch.Tensor, warped: torch.Tensor, window: int = NCC_WINDOW_VOX
) -> torch.Tensor:
    """Minus the mean over voxels of the squared local correlation coefficient.

    ``cc = cov^2 / (var_f var_w + eps)`` over a ``window``-voxel cube; -1 for a perfect local
    linear relation, 0 for none. An image with itself gives the minimum, up to ``eps``."""
    mean_f = box_mean(fixed, window)
    mean_w = box_mean(warped, window)
    cov = box_mean(fixed * warped, window) - mean_f * mean_w
    var_f = (box_mean(fixed * fixed, window) - mean_f * mean_f).clamp(min=0.0)
    var_w = (box_mean(warped * warped, window) - mean_w * mean_w).clamp(min=0.0)
    cc = cov * cov / (var_f * var_w + _NCC_EPS)
    return -cc.mean()


# The six neighbours of the centre voxel and the 12 pairs of them sqrt(2) apart (MIND-SSC).
_SIX = ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))
_SSC_PAIRS = tuple(
    (a, b)
    for a in range(6)
    for b in range(a + 1, 6)
    if sum((x - y) ** 2 for x, y in zip(_SIX[a], _SIX[b], strict=True)) == 2
)


def _shifted(padded: torch.Tensor, offset: tuple[int, int, int], pad: int) -> torch.Tensor:
    """The unpadded-size view of ``padded`` (padded by ``pad``) shifted by ``offset`` (d, h, w)."""
    d, h, w = (n - 2 * pad for n in padded.shape[2:])
    od, oh, ow = (pad + o for o in offset)
    return padded[:, :, od : od + d, oh : oh + h, ow : ow + w]


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """(B, 12, D, H, W) MIND-SSC descriptors of a (B, 1, D, H, W) image.

    For each of the 12 pairs of six-neighbourhood voxels (``dilation`` voxels from the centre),
    the patch (side ``2 radius + 1``) mean of squared differences, minus its minimum over the 12,
    divided by their mean (clamped), through ``exp(-x)``."""
    padded = F.pad(image, (dilation,) * 6, mode="replicate")
    channels = []
    for a, b in _SSC_PAIRS:
        first = _shifted(padded, tuple(dilation * v for v in _SIX[a]), dilation)
        second = _shifted(padded, tuple(dilation * v for v in _SIX[b]), dilation)
        channels.append((first - second) ** 2)
    ssd = box_mean(torch.cat(channels, dim=1), 2 * radius + 1)
    ssd = ssd - ssd.min(dim=1, keepdim=True).values
    variance = ssd.mean(dim=1, keepdim=True)
    typical = variance.mean().detach()
    variance = variance.clamp(min=typical * 1e-3 + 1e-12, max=typical * 1e3 + 1e-12)
    return torch.exp(-ssd / variance)


def mind_loss(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the MIND-SSC descriptors (0 for identical images)."""
    return (mind_ssc(fixed) - mind_ssc(warped)).pow(2).mean()


def similarity_loss(
    kind: str, fixed: torch.Tensor, warped: torch.Tensor, window: int = NCC_WINDOW_VOX
) -> torch.Tensor:
    """``"ncc"``: :func:`local_ncc_loss`; ``"mind"``: :func:`mind_loss`."""
    if kind == "ncc":
        return local_ncc_loss(fixed, warped, window)
    if kind == "mind":
        return mind_loss(fixed, warped)
    raise ValueError(f"unknown similarity {kind!r} (known: 'ncc', 'mind')")


def diffusion_loss(field: torch.Tensor) -> torch.Tensor:
    """Mean squared spatial gradient of a (B, 3, D, H, W) field (forward differences, voxel
    units): the mean over x, y, z of the mean over voxels and channels of the squared
    difference."""
    dz = field[:, :, 1:] - field[:, :, :-1]
    dy = field[:, :, :, 1:] - field[:, :, :, :-1]
    dx = field[:, :, :, :, 1:] - field[:, :, :, :, :-1]
    return (dx.pow(2).mean() + dy.pow(2).mean() + dz.pow(2).mean()) / 3.0


def one_hot(labels: torch.Tensor, values: torch.Tensor | list[int]) -> torch.Tensor:
    """(D, H, W) integer labels -> (1, len(values), D, H, W) float indicator of each value."""
    values = torch.as_tensor(values, device=labels.device, dtype=labels.dtype)
    return (labels[None] == values.view(-1, 1, 1, 1)).float()[None]


def soft_dice(
    prediction: torch.Tensor, truth: torch.Tensor, eps: float = 1e-6, squared: bool = False
) -> torch.Tensor:
    """Mean Dice over channels of (B, C, ...) soft labels, counting only channels present in
    ``truth``; 1 for perfect overlap. ``squared``: squares in the denominator (V-Net), 1 exactly
    when the two soft maps are equal. Returns a 0-d tensor (NaN when no channel is present)."""
    dims = tuple(range(2, truth.ndim))
    overlap = (prediction * truth).sum(dims)
    if squared:
        total = prediction.pow(2).sum(dims) + truth.pow(2).sum(dims)
    else:
        total = prediction.sum(dims) + truth.sum(dims)
    present = truth.sum(dims) > 0
    dice = 2.0 * overlap / (total + eps)
    return dice[present].mean()


def landmark_distances_mm(
    points_vox: torch.Tensor, target_vox: torch.Tensor, spacing_mm: float
) -> torch.Tensor:
    """(N,) distances in mm between (N, 3) voxel points of an isotropic ``spacing_mm`` grid."""
    return (points_vox - target_vox).pow(2).sum(-1).add(1e-12).sqrt() * spacing_mm


def jacobian_determinant(displacement_vox: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) determinant of the Jacobian of ``p + u(p)`` (central differences inside,
    one-sided at the edges; exact for a linear ``u``)."""
    # d u_c / d axis for axis (x, y, z) = tensor dims (4, 3, 2)
    derivatives = torch.gradient(displacement_vox, dim=(4, 3, 2))
    # jacobian[..., c, a] = d u_c / d x_a + delta_ca
    jacobian = torch.stack(derivatives, dim=-1)  # (B, 3, D, H, W, 3)
    jacobian = jacobian.permute(0, 2, 3, 4, 1, 5)  # (B, D, H, W, 3, 3)
    eye = torch.eye(3, device=displacement_vox.device, dtype=displacement_vox.dtype)
    return torch.linalg.det(jacobian + eye)


def folding_share(displacement_vox: torch.Tensor) -> float:
    """Share of voxels (0..1) where the Jacobian determinant of ``p + u(p)`` is <= 0."""
    with torch.no_grad():
        return float((jacobian_determinant(displacement_vox) <= 0).float().mean())
