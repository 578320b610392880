"""Three orthogonal slices through a landmark with the truth, the predictions and the agent's
search path drawn on them (matplotlib, Agg).

Slices are sampled on world RAS axes through the true landmark, whatever the scan's voxel
grid: axial (R right, A up), coronal (R right, S up), sagittal (A right, S up); the left of
the patient is on the left of the axial and coronal panels (neurological convention). Path
positions off the slice are drawn projected onto it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.ndimage import map_coordinates

from medrl.io.images import Volume, read_image
from medrl.io.landmarks import Landmarks
from medrl.report.figures import METHOD_COLOURS, TRUTH_COLOUR, png_bytes

LEVEL_COLOURS = ("#ff7f0e", "#ffdd33", "#17becf", "#e377c2", "#ffffff")
"""Search path colour per level, coarse to fine."""

# (title, fixed RAS axis, horizontal axis, vertical axis, letters at right and top)
PLANES: tuple[tuple[str, int, int, int, str, str], ...] = (
    ("axial", 2, 0, 1, "R", "A"),
    ("coronal", 1, 0, 2, "R", "S"),
    ("sagittal", 0, 1, 2, "A", "S"),
)
_AXIS_NAMES = "RAS"
_SAMPLES = 120


@dataclass
class ScanImage:
    """A scan ready for slicing: the volume and its display window."""

    volume: Volume
    low: float
    high: float

    @classmethod
    def from_volume(cls, volume: Volume) -> ScanImage:
        low, high = np.percentile(volume.array, [1.0, 99.5])
        return cls(volume, float(low), float(max(high, low + 1e-6)))


def rebuild_scan(record: dict[str, Any], cache: dict[str, Volume]) -> ScanImage:
    """The evaluated image of a case record: its source image, warped and moved as evaluate did."""
    from medrl.data.scenarios import deform_case, move_case, rigid_from_dict, warp_from_dict

    scan = record["scan"]
    image = str(scan["image"])
    if image not in cache:
        cache.clear()  # keep one source image in memory
        cache[image] = read_image(image)
    volume = cache[image]
    anchor = Landmarks(("anchor",), np.zeros((1, 3)))
    if scan.get("elastic"):
        volume, _ = deform_case(volume, anchor, **warp_from_dict(scan["elastic"]))
    if scan.get("rigid"):
        volume, _ = move_case(volume, anchor, rigid_from_dict(scan["rigid"]))
    return ScanImage.from_volume(volume)


def sample_plane(
    scan: ScanImage, centre_ras: np.ndarray, fixed: int, across: int, up: int, half_mm: float
) -> np.ndarray:
    """(rows, columns) intensities of the plane through ``centre_ras`` normal to RAS axis
    ``fixed``; row 0 is the lowest ``up`` coordinate."""
    offsets = np.linspace(-half_mm, half_mm, _SAMPLES)
    grid_up, grid_across = np.meshgrid(offsets, offsets, indexing="ij")
    points = np.tile(np.asarray(centre_ras, dtype=np.float64), (grid_up.size, 1))
    points[:, across] += grid_across.ravel()
    points[:, up] += grid_up.ravel()
    index_ijk = scan.volume.world_to_index(points)
    values = map_coordinates(
        scan.volume.array, index_ijk[:, ::-1].T, order=1, mode="constant", cval=scan.low
    )
    return values.reshape(grid_up.shape)


def landmark_figure(
    scan: ScanImage,
    truth_ras: np.ndarray,
    predictions_ras: dict[str, np.ndarray],
    paths_ras: Sequence[Sequence[Sequence[Sequence[float]]]],
    dpi: int = 80,
) -> bytes:
    """Axial, coronal and sagittal slices through ``truth_ras`` (PNG).

    ``predictions_ras`` maps method name to its (3,) estimate; ``paths_ras[start][level]``
    lists the agent's positions at that level.
    """
    truth_ras = np.asarray(truth_ras, dtype=np.float64)
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in predictions_ras.values()]
    for start in paths_ras:
        points.extend(np.asarray(level, dtype=np.float64).reshape(-1, 3) for level in start)
    spread = max((float(np.abs(p - truth_ras).max()) for p in points if len(p)), default=0.0)
    half_mm = float(np.clip(spread + 8.0, 25.0, 120.0))
    figure, panels = plt.subplots(1, 3, figsize=(4.5, 1.6))
    for axes, (title, fixed, across, up, right, top) in zip(panels, PLANES, strict=True):
        plane = sample_plane(scan, truth_ras, fixed, across, up, half_mm)
        extent = (-half_mm, half_mm, -half_mm, half_mm)
        axes.imshow(
            plane, cmap="gray", origin="lower", extent=extent, vmin=scan.low, vmax=scan.high
        )

        def xy(p: np.ndarray, across: int = across, up: int = up) -> tuple[Any, Any]:
            p = np.asarray(p, dtype=np.float64).reshape(-1, 3) - truth_ras
            return p[:, across], p[:, up]

        for start in paths_ras:
            previous = None
            for level, positions in enumerate(start):
                positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
                if previous is not None and len(positions):
                    positions = np.concatenate([previous[-1:], positions])
                if len(positions):
                    colour = LEVEL_COLOURS[level % len(LEVEL_COLOURS)]
                    axes.plot(*xy(positions), color=colour, linewidth=0.8, alpha=0.9)
                    previous = positions
        for method, point in predictions_ras.items():
            marker = "+" if method == "agent" else "x"
            colour = METHOD_COLOURS.get(method, "#9467bd")
            axes.plot(*xy(point), marker=marker, color=colour, markersize=7, mew=1.6)
        axes.plot(0, 0, marker="o", mfc="none", color=TRUTH_COLOUR, markersize=7, mew=1.4)
        axes.set_xlim(-half_mm, half_mm)
        axes.set_ylim(-half_mm, half_mm)
        axes.set_xticks([])
        axes.set_yticks([])
        value = truth_ras[fixed]
        axes.set_title(f"{title} {_AXIS_NAMES[fixed]}={value:.0f}", fontsize=6, pad=2)
        style = {"color": "white", "fontsize": 5, "transform": axes.transAxes}
        axes.text(0.97, 0.5, right, ha="right", va="center", **style)
        axes.text(0.5, 0.97, top, ha="center", va="top", **style)
        # A scale bar: 10 mm (20 mm in wide panels) at the lower left.
        bar_mm = 10.0 if half_mm <= 60 else 20.0
        x0, y0 = -half_mm * 0.92, -half_mm * 0.9
        axes.plot([x0, x0 + bar_mm], [y0, y0], color="white", linewidth=1.5)
        axes.text(x0, y0 + half_mm * 0.05, f"{bar_mm:g} mm", color="white", fontsize=5)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, wspace=0.04)
    return png_bytes(figure, dpi)
