"""The page of one registration (``report.html`` of ``medrl register``), self-contained.

Sections: a summary table (method, time, metrics before and after); a checkerboard of the
fixed image against the moving image before (both where their headers put them) and after
registration; the fixed image with the moving image's edges drawn on it, before and after;
the landmarks (fixed, moving before, moved after) with the TRE of each; and, for a
displacement field, its Jacobian determinant (blue: shrinks, red: grows, black contour: folds).
Slices are the three orthogonal mid-slices of the fixed image's voxel grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.report.figures import TRUTH_COLOUR, png_bytes
from medrl.report.html import STYLE, esc, img, table

VIEWS = ("axial (k)", "coronal (j)", "sagittal (i)")
CHECKER_TILES = 8
MOVED_COLOUR = "#d62728"
BEFORE_COLOUR = "#7f7f7f"


def _mid_slices(array: np.ndarray) -> list[np.ndarray]:
    """The mid-slices across k, j and i of a (z, y, x) array."""
    nz, ny, nx = array.shape[:3]
    return [array[nz // 2], array[:, ny // 2], array[:, :, nx // 2]]


def _normalised(array: np.ndarray) -> np.ndarray:
    low, high = np.percentile(array, [1.0, 99.0])
    return np.clip((array - low) / max(float(high - low), 1e-6), 0.0, 1.0)


def _checkerboard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows, cols = a.shape
    tile = max(1, max(rows, cols) // CHECKER_TILES)
    i, j = np.meshgrid(np.arange(rows) // tile, np.arange(cols) // tile, indexing="ij")
    return np.where((i + j) % 2 == 0, a, b)


def _slice_grid(fixed: Volume, pairs: Mapping[str, Volume], mode: str, dpi: int) -> bytes:
    """One row per moving image (``before``/``after``), one column per view."""
    fixed_slices = _mid_slices(_normalised(fixed.array))
    figure, grid = plt.subplots(len(pairs), 3, figsize=(10, 3.3 * len(pairs)), squeeze=False)
    for row, (label, moving) in enumerate(pairs.items()):
        for column, (f, m) in enumerate(
            zip(fixed_slices, _mid_slices(_normalised(moving.array)), strict=True)
        ):
            axes = grid[row, column]
            if mode == "checkerboard":
                axes.imshow(_checkerboard(f, m), cmap="gray", origin="lower")
            else:
                axes.imshow(f, cmap="gray", origin="lower")
                axes.contour(m, levels=[0.3, 0.6], colors=[MOVED_COLOUR], linewidths=0.6)
            axes.set_title(f"{label}: {VIEWS[column]}", fontsize=9)
            axes.set_axis_off()
    figure.tight_layout()
    return png_bytes(figure, dpi)


def _landmark_figure(
    fixed: Landmarks, moving: Landmarks, moved: Landmarks | None, dpi: int
) -> bytes:
    """The landmarks in three projections (RAS mm): fixed (circles), moving before (grey x),
    moved after (red +), each moved one joined to its fixed landmark."""
    names = [n for n in fixed.names if n in moving.names]
    target = fixed.subset(names).points_ras
    before = moving.subset(names).points_ras
    after = moved.subset(names).points_ras if moved is not None else None
    axes_pairs = ((0, 1, "R", "A"), (0, 2, "R", "S"), (1, 2, "A", "S"))
    figure, grid = plt.subplots(1, 3, figsize=(11, 3.8))
    for axes, (u, v, u_name, v_name) in zip(grid, axes_pairs, strict=True):
        axes.scatter(target[:, u], target[:, v], s=28, facecolors="none", edgecolors=TRUTH_COLOUR)
        axes.scatter(before[:, u], before[:, v], s=14, marker="x", color=BEFORE_COLOUR)
        if after is not None:
            axes.scatter(after[:, u], after[:, v], s=22, marker="+", color=MOVED_COLOUR)
            for t, a in zip(target, after, strict=True):
                axes.plot([t[u], a[u]], [t[v], a[v]], color=MOVED_COLOUR, linewidth=0.6)
        axes.set_xlabel(f"{u_name} (mm)")
        axes.set_ylabel(f"{v_name} (mm)")
        axes.set_aspect("equal", adjustable="datalim")
        axes.grid(alpha=0.3)
    grid[0].legend(["fixed", "moving (before)", "moved (after)"], fontsize=7, loc="best")
    figure.tight_layout()
    return png_bytes(figure, dpi)


def _jacobian_figure(det: np.ndarray, dpi: int) -> bytes:
    low = min(float(det.min()), 0.5)
    high = max(float(det.max()), 1.5)
    norm = TwoSlopeNorm(vmin=low, vcenter=1.0, vmax=high)
    figure, grid = plt.subplots(1, 3, figsize=(11, 3.6))
    shown = None
    for axes, view, values in zip(grid, VIEWS, _mid_slices(det), strict=True):
        shown = axes.imshow(values, cmap="RdBu_r", norm=norm, origin="lower")
        if (values <= 0).any():
            axes.contour(values, levels=[0.0], colors="black", linewidths=0.8)
        axes.set_title(view, fontsize=9)
        axes.set_axis_off()
    figure.colorbar(shown, ax=list(grid), shrink=0.8, label="det(Jacobian)")
    return png_bytes(figure, dpi)


def _summary_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = [["method", record.get("method", "")]]
    rows.append(["registration time (s)", float(record.get("seconds") or 0.0)])
    metrics = record.get("metrics") or {}
    landmarks = metrics.get("landmarks")
    if landmarks:
        for stat in ("mean", "median", "max"):
            before = landmarks["tre_before_mm"][stat]
            after = landmarks["tre_after_mm"][stat]
            rows.append([f"TRE {stat} (mm), before -> after", f"{before:.2f} -> {after:.2f}"])
    labels = metrics.get("labels")
    if labels:
        for key, name in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
            unit = "_mm" if key == "hd95" else ""
            before = labels.get(f"mean_{key}_before{unit}")
            after = labels.get(f"mean_{key}_after{unit}")
            rows.append([f"mean {name}, before -> after", f"{_number(before)} -> {_number(after)}"])
    for key, value in (metrics.get("jacobian") or {}).items():
        rows.append([f"Jacobian {key.replace('_', ' ')}", value])
    return rows


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def registration_report(
    record: Mapping[str, Any],
    fixed: Volume,
    before: Volume,
    after: Volume,
    fixed_landmarks: Landmarks | None = None,
    moving_landmarks: Landmarks | None = None,
    moved_landmarks: Landmarks | None = None,
    jacobian: np.ndarray | None = None,
    dpi: int = 80,
) -> str:
    """The HTML page of one registration.

    ``before`` and ``after`` are the moving image on the fixed grid through the identity and
    through the registration; ``record`` is what ``registration.json`` holds; ``jacobian``
    the determinant map of a displacement field (on the field's grid).
    """
    inputs = record.get("inputs") or {}
    title = f"Registration: {record.get('method', '')}"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>",
        f"<p class='note'>fixed: {esc(inputs.get('fixed'))}<br>moving: "
        f"{esc(inputs.get('moving'))}<br>{esc(record.get('convention', ''))}</p>",
        "<h2>Summary</h2>",
        table(["quantity", "value"], _summary_rows(record)),
        "<h2>Checkerboard</h2>",
        "<p class='note'>Tiles alternate between the fixed and the moving image; edges run on "
        "across tiles where the images agree.</p>",
        img(_slice_grid(fixed, {"before": before, "after": after}, "checkerboard", dpi), "grid"),
        "<h2>Edges</h2>",
        "<p class='note'>The fixed image with contours of the moving image (red).</p>",
        img(_slice_grid(fixed, {"before": before, "after": after}, "edges", dpi), "edges"),
    ]
    if fixed_landmarks is not None and moving_landmarks is not None:
        parts += [
            "<h2>Landmarks</h2>",
            img(
                _landmark_figure(fixed_landmarks, moving_landmarks, moved_landmarks, dpi),
                "landmarks",
            ),
        ]
        per_landmark = ((record.get("metrics") or {}).get("landmarks") or {}).get("per_landmark")
        if per_landmark:
            rows = [[r["name"], r["tre_before_mm"], r["tre_after_mm"]] for r in per_landmark]
            parts.append(table(["landmark", "TRE before mm", "TRE after mm"], rows, 1))
    if jacobian is not None:
        parts += [
            "<h2>Jacobian determinant</h2>",
            "<p class='note'>det &lt; 1: the fixed -> moving map shrinks there, &gt; 1: grows, "
            "&le; 0 (black contour): folds.</p>",
            img(_jacobian_figure(jacobian, dpi), "Jacobian determinant"),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
