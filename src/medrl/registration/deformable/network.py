"""The velocity network: a small 3D U-Net from (fixed, moving) to a stationary velocity field.

Input: a (B, 2, D, H, W) tensor, channel 0 the fixed image and channel 1 the moving image,
both on the same working grid (the moving image already resampled into the fixed image's frame,
see :mod:`medrl.registration.deformable.frames`) and intensity-normalised to about [0, 1].

Output: a (B, 3, D, H, W) stationary velocity field in **voxel units of the working grid**,
channel 0/1/2 along the index axes x/y/z (i, j, k; the W, H, D tensor axes), the convention of
:mod:`medrl.registration.deformable.integrate`. The last convolution starts near zero (weights
N(0, 1e-5), bias 0), so an untrained network predicts almost the identity transform.

Any grid size works: the input is padded (edge values) to a multiple of ``2 ** (levels - 1)``
and the output cropped back.

**Conditioned on lambda** (``NetworkSettings.lambda_range``): one network for every
regularisation weight in a range, as in conditional registration networks (Mok & Chung,
MICCAI 2021) and HyperMorph (Hoopes et al., IPMI 2021). A small MLP maps ``log(lambda)``,
scaled to [-1, 1] over the range, to a per-channel scale and shift (FiLM) applied after every
block of two convolutions; ``forward(pair, lam)`` then needs ``lam``. The MLP's last layer starts
at zero, so the untrained modulation is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NetworkSettings", "VelocityUNet"]

HEAD_INIT_STD = 1e-5
"""Standard deviation of the last convolution's initial weights (near-identity start)."""
FILM_HIDDEN = 32
"""Hidden units of the lambda-conditioning MLP."""


@dataclass(frozen=True)
class NetworkSettings:
    """Shape of :class:`VelocityUNet`."""

    channels: tuple[int, ...] = (8, 16, 32)
    """Feature channels per level, finest first; ``len(channels)`` levels (2 poolings for 3)."""
    negative_slope: float = 0.2
    """LeakyReLU slope."""
    lambda_range: tuple[float, float] | None = None
    """(low, high): the network is conditioned on lambda in this range (module docstring);
    None: a network for one fixed lambda."""

    def __post_init__(self) -> None:
        channels = tuple(int(c) for c in self.channels)
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise ValueError(f"channels must be positive integers, got {self.channels}")
        object.__setattr__(self, "channels", channels)
        if self.lambda_range is not None:
            low, high = (float(v) for v in self.lambda_range)
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
                raise ValueError(f"lambda_range must be 0 < low < high, got {self.lambda_range}")
            object.__setattr__(self, "lambda_range", (low, high))

    def lambda_code(self, lam: float | torch.Tensor) -> torch.Tensor:
        """``log(lambda)`` scaled to [-1, 1] over :attr:`lambda_range` (outside it: beyond)."""
        assert self.lambda_range is not None
        low, high = (math.log(v) for v in self.lambda_range)
        log_lam = torch.log(torch.as_tensor(lam, dtype=torch.float32))
        return 2.0 * (log_lam - low) / (high - low) - 1.0

    @property
    def multiple_vox(self) -> int:
        """Grid sizes are padded to a multiple of this (one halving per coarser level)."""
        return 2 ** (len(self.channels) - 1)


def _modulate(
    x: torch.Tensor, modulations: list[tuple[torch.Tensor, torch.Tensor]] | None, block: int
) -> torch.Tensor:
    if modulations is None:
        return x
    scale, shift = modulations[block]
    return x * scale + shift


def _conv(in_channels: int, out_channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.LeakyReLU(slope),
    )


class VelocityUNet(nn.Module):
    """3D U-Net: two convolutions per level, average pooling down, trilinear upsampling up,
    skip connections by concatenation, a 3-channel velocity head (voxel units)."""

    def __init__(self, settings: NetworkSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or NetworkSettings()
        channels = self.settings.channels
        slope = self.settings.negative_slope
        self.encoders = nn.ModuleList()
        previous = 2
        for width in channels:
            self.encoders.append(
                nn.Sequential(_conv(previous, width, slope), _conv(width, width, slope))
            )
            previous = width
        self.decoders = nn.ModuleList()
        for width in reversed(channels[:-1]):
            self.decoders.append(
                nn.Sequential(_conv(previous + width, width, slope), _conv(width, width, slope))
            )
            previous = width
        self.head = nn.Conv3d(previous, 3, kernel_size=3, padding=1)
        nn.init.normal_(self.head.weight, mean=0.0, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)
        self.film: nn.Sequential | None = None
        self._film_widths = [*channels, *reversed(channels[:-1])]
        if self.settings.lambda_range is not None:
            out = nn.Linear(FILM_HIDDEN, 2 * sum(self._film_widths))
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.film = nn.Sequential(nn.Linear(1, FILM_HIDDEN), nn.LeakyReLU(slope), out)

    @property
    def conditioned(self) -> bool:
        """True when the network takes lambda (``settings.lambda_range`` is set)."""
        return self.film is not None

    def _modulations(
        self, lam: float | torch.Tensor | None, like: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per block, (scale, shift) of shape (1, C, 1, 1, 1); None without conditioning."""
        if self.film is None:
            return None
        if lam is None:
            raise ValueError("this network is conditioned on lambda: call it with lam=")
        code = self.settings.lambda_code(lam).to(like.device, like.dtype).reshape(1, 1)
        values = self.film(code)[0]
        out, start = [], 0
        for width in self._film_widths:
            scale = values[start : start + width].view(1, width, 1, 1, 1)
            shift = values[start + width : start + 2 * width].view(1, width, 1, 1, 1)
            out.append((1.0 + scale, shift))
            start += 2 * width
        return out

    def forward(self, pair: torch.Tensor, lam: float | torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2, D, H, W) fixed + moving -> (B, 3, D, H, W) velocity in working voxels.

        ``lam``: the regularisation weight a conditioned network predicts for (a float or a
        0-d tensor, differentiable); ignored by an unconditioned one."""
        if pair.ndim != 5 or pair.shape[1] != 2:
            raise ValueError(f"expected a (B, 2, D, H, W) tensor, got {tuple(pair.shape)}")
        modulations = self._modulations(lam, pair)
        size = pair.shape[2:]
        multiple = self.settings.multiple_vox
        pad = [(-n) % multiple for n in size]
        x = pair
        if any(pad):
            # F.pad lists the last axis first: (W low, W high, H low, H high, D low, D high)
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        skips = []
        block = 0
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = F.avg_pool3d(x, kernel_size=2)
            x = _modulate(encoder(x), modulations, block)
            block += 1
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = _modulate(decoder(torch.cat([x, skip], dim=1)), modulations, block)
            block += 1
        velocity = self.head(x)
        return velocity[:, :, : size[0], : size[1], : size[2]]
