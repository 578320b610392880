"""Binary masks of image pixels, stored as run lengths so they fit in a dataset column."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2D bool mask in row-major order, starting with a run of False."""
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return [int(r) for r in runs]


def rle_to_mask(runs: Sequence[int], shape_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`; raises ValueError if the runs do not fill ``shape_hw``."""
    height, width = (int(v) for v in shape_hw)
    counts = np.asarray(list(runs), dtype=np.int64)
    if np.any(counts < 0) or int(counts.sum()) != height * width:
        raise ValueError(f"run lengths sum to {int(counts.sum())}, expected {height * width}")
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(height, width)


def box_overlap_px(mask: np.ndarray, box_px: Sequence[float]) -> tuple[float, float]:
    """(Mask pixels inside the box, box area), both in original pixels with continuous edges.

    Each pixel counts with the fraction of it inside the box, so both are exact for boxes with
    fractional edges. The box must already lie within the image.
    """
    height, width = mask.shape
    x1, y1, x2, y2 = (float(v) for v in box_px)
    cols = np.arange(width, dtype=np.float64)
    rows = np.arange(height, dtype=np.float64)
    wx = np.clip(np.minimum(cols + 1, x2) - np.maximum(cols, x1), 0.0, None)
    wy = np.clip(np.minimum(rows + 1, y2) - np.maximum(rows, y1), 0.0, None)
    area_px = float(wx.sum() * wy.sum())
    if area_px <= 0:
        return 0.0, 0.0
    return float(wy @ mask.astype(np.float64) @ wx), area_px


def box_coverage(mask: np.ndarray, box_px: Sequence[float]) -> float:
    """Share of the box area (original pixels, continuous edges) covered by ``mask``.

    Each pixel counts with the fraction of it inside the box, so the value is exact for
    boxes with fractional edges. The box must already lie within the image; 0 if it is empty.
    """
    inside_px, area_px = box_overlap_px(mask, box_px)
    return inside_px / area_px if area_px > 0 else 0.0


def box_dice(mask: np.ndarray, box_px: Sequence[float]) -> float:
    """Dice (F1) of the box region against the mask: ``2 |B ∩ M| / (|B| + |M|)``.

    Areas in original pixels, fractional edge pixels weighted exactly (see
    :func:`box_overlap_px`). 1 only for a box that is exactly a rectangular mask; 0 for an
    empty box or mask.
    """
    inside_px, area_px = box_overlap_px(mask, box_px)
    total_px = area_px + float(np.count_nonzero(mask))
    return 2.0 * inside_px / total_px if total_px > 0 else 0.0
