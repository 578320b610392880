"""Heatmap networks: a small 3D U-Net with one output channel per landmark, and the
expected position under each channel's softmax (integral regression, Sun et al. 2018).

The coarse network sees the whole head (``COARSE_SIZE``^3 samples at ``COARSE_SPACING_MM``) and
writes heatmaps at half that resolution; the local network sees ``LOCAL_SIZE``^3 samples at
``LOCAL_SPACING_MM`` around a coarse estimate and writes heatmaps at half that resolution too.
Both are the same architecture with different widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1),
        nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
    )


class HeatmapNet(nn.Module):
    """(B, 1, S, S, S) patches -> (B, K, S/2, S/2, S/2) heatmap logits.

    Encoder: ``width`` channels at S, 2x at S/2, 4x at S/4, 8x at S/8; decoder back to S/2 with
    skip connections; a 1x1x1 head per landmark.
    """

    def __init__(self, num_landmarks: int, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = _block(1, w)
        self.down1 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))
        self.down2 = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w))
        self.down3 = nn.Sequential(_block(4 * w, 8 * w, 2), _block(8 * w, 8 * w))
        self.up2 = _block(8 * w + 4 * w, 4 * w)
        self.up1 = _block(4 * w + 2 * w, 4 * w)
        self.head = nn.Conv3d(4 * w, num_landmarks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.down1(self.stem(x))  # S/2
        s2 = self.down2(s1)  # S/4
        s3 = self.down3(s2)  # S/8
        u2 = F.interpolate(s3, size=s2.shape[-3:], mode="trilinear", align_corners=False)
        u2 = self.up2(torch.cat([u2, s2], dim=1))
        u1 = F.interpolate(u2, size=s1.shape[-3:], mode="trilinear", align_corners=False)
        return self.head(self.up1(torch.cat([u1, s1], dim=1)))


def heatmap_axes_mm(size: int, spacing_mm: float, device: torch.device | str) -> torch.Tensor:
    """(size // 2,) offsets (mm) of the heatmap voxels from the patch centre along one axis:
    the heatmap's voxel i covers input samples 2i and 2i + 1."""
    half = size // 2
    ramp = torch.arange(half, dtype=torch.float32, device=device) * 2.0 + 0.5
    return (ramp - (size - 1) / 2) * spacing_mm


def expected_offsets(logits: torch.Tensor, axis_mm: torch.Tensor) -> torch.Tensor:
    """(B, K, 3) expected offset (mm, patch axes in [k, j, i] order flipped to [x, y, z]) under
    each channel's softmax over (B, K, H, H, H) logits."""
    b, k, h = logits.shape[0], logits.shape[1], logits.shape[2]
    prob = torch.softmax(logits.reshape(b, k, -1), dim=-1).reshape(b, k, h, h, h)
    along_z = (prob.sum(dim=(3, 4)) * axis_mm).sum(-1)
    along_y = (prob.sum(dim=(2, 4)) * axis_mm).sum(-1)
    along_x = (prob.sum(dim=(2, 3)) * axis_mm).sum(-1)
    return torch.stack([along_x, along_y, along_z], dim=-1)


def peak_offsets(logits: torch.Tensor, axis_mm: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """(B, K, 3) expected offsets (mm) under each channel's softmax restricted to the
    (2 radius + 1)^3 voxels around its peak: robust to a second mode elsewhere."""
    b, k, h = logits.shape[0], logits.shape[1], logits.shape[2]
    peak = logits.reshape(b, k, -1).argmax(dim=-1)
    index = torch.arange(h, device=logits.device)
    near_z = (index - (peak // (h * h))[..., None]).abs() <= radius
    near_y = (index - ((peak // h) % h)[..., None]).abs() <= radius
    near_x = (index - (peak % h)[..., None]).abs() <= radius
    near = near_z[..., :, None, None] & near_y[..., None, :, None] & near_x[..., None, None, :]
    return expected_offsets(logits.masked_fill(~near, float("-inf")), axis_mm)


def gaussian_target(
    offsets_mm: torch.Tensor, axis_mm: torch.Tensor, sigma_mm: float
) -> torch.Tensor:
    """(B, K, H, H, H) normalised Gaussian heatmaps (sum 1) at offsets (B, K, 3) [x, y, z] mm."""
    gx = torch.exp(-((axis_mm - offsets_mm[..., 0:1]) ** 2) / (2 * sigma_mm**2))
    gy = torch.exp(-((axis_mm - offsets_mm[..., 1:2]) ** 2) / (2 * sigma_mm**2))
    gz = torch.exp(-((axis_mm - offsets_mm[..., 2:3]) ** 2) / (2 * sigma_mm**2))
    grid = gz[..., :, None, None] * gy[..., None, :, None] * gx[..., None, None, :]
    return grid / grid.sum(dim=(-3, -2, -1), keepdim=True).clamp(min=1e-12)
