"""The report of a plane evaluation: angle and distance tables, and the planes drawn over the
scan.

For every evaluated scan and plane, three slices (axial, coronal, sagittal) through the true
plane's reference point show where the true plane (green), the agent's (red) and the affine
baseline's (blue) cut the slice, as lines; a plane (nearly) parallel to a slice is not drawn
on it. Tables: angle (degrees) and distance (mm) per plane, agent beside baseline, and the
reference figures of Alansary et al. 2018.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medrl.errors import MedrlError
from medrl.geometry.planes import plane_angle_deg, plane_distance_mm
from medrl.report.data import ReportData
from medrl.report.figures import METHOD_COLOURS, TRUTH_COLOUR, png_bytes
from medrl.report.html import describe_scan, esc, img, table, training_section
from medrl.report.slices import PLANES, ScanImage, rebuild_scan, sample_plane

PLANE_METHODS = ("agent", "affine-baseline")
_HALF_MM = 80.0


def plane_trace(
    pose: np.ndarray, centre: np.ndarray, fixed: int, across: int, up: int
) -> np.ndarray | None:
    """(2, 2) end points (across, up; relative to ``centre``) of the line where the plane
    ``pose`` cuts the slice through ``centre`` normal to RAS axis ``fixed``; None when the
    plane is (nearly) parallel to the slice."""
    normal, point = pose[3:6], pose[:3] - centre
    a, u = normal[across], normal[up]
    constant = float(normal @ point)  # on the slice (offset 0 along ``fixed``): a x + u y = c
    if np.hypot(a, u) < 0.2:
        return None
    if abs(u) >= abs(a):
        xs = np.array([-_HALF_MM, _HALF_MM])
        return np.stack([xs, (constant - a * xs) / u], axis=1)
    ys = np.array([-_HALF_MM, _HALF_MM])
    return np.stack([(constant - u * ys) / a, ys], axis=1)


def plane_figure(
    scan: ScanImage, truth: np.ndarray, predictions: dict[str, np.ndarray], dpi: int = 80
) -> bytes:
    figure, panels = plt.subplots(1, 3, figsize=(4.5, 1.6))
    centre = truth[:3]
    planes = {"truth": truth, **predictions}
    for axes, (title, fixed, across, up, right, top) in zip(panels, PLANES, strict=True):
        image = sample_plane(scan, centre, fixed, across, up, _HALF_MM)
        extent = (-_HALF_MM, _HALF_MM, -_HALF_MM, _HALF_MM)
        axes.imshow(image, cmap="gray", origin="lower", extent=extent, vmin=scan.low,
                    vmax=scan.high)  # fmt: skip
        for method, pose in planes.items():
            line = plane_trace(np.asarray(pose, dtype=np.float64), centre, fixed, across, up)
            if line is None:
                continue
            colour = TRUTH_COLOUR if method == "truth" else METHOD_COLOURS.get(method, "#9467bd")
            axes.plot(line[:, 0], line[:, 1], color=colour, linewidth=1.0)
        axes.set_xlim(-_HALF_MM, _HALF_MM)
        axes.set_ylim(-_HALF_MM, _HALF_MM)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"{title} {'RAS'[fixed]}={centre[fixed]:.0f}", fontsize=6, pad=2)
        style = {"color": "white", "fontsize": 5, "transform": axes.transAxes}
        axes.text(0.97, 0.5, right, ha="right", va="center", **style)
        axes.text(0.5, 0.97, top, ha="center", va="top", **style)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, wspace=0.04)
    return png_bytes(figure, dpi)


class ScanRecord(NamedTuple):
    """One evaluated scan of the plane family, read from its case record."""

    case: str
    names: list[str]
    truth: np.ndarray  # (T, D)
    predictions: dict[str, np.ndarray]  # method -> (T, D)
    parts: list[str]  # the section's opening HTML
    scan: ScanImage | None  # None when the image cannot be rebuilt (said in ``parts``)


def read_scan_record(record: dict[str, Any], cache: dict) -> ScanRecord:
    """The poses of a case record and its rebuilt image, with the section's heading."""
    case = str(record["case"])
    predictions = {
        m: np.asarray(record["resume"][m]["poses"], dtype=np.float64) for m in PLANE_METHODS
    }
    parts = [f'<section class="scan"><h3>{esc(case)}</h3>',
             f'<p class="note">{esc(describe_scan(record))}</p>']  # fmt: skip
    try:
        scan: ScanImage | None = rebuild_scan(record, cache)
    except (MedrlError, OSError, RuntimeError) as exc:
        parts.append(f'<p class="note">slices not drawn: the image cannot be read ({esc(exc)})</p>')
        scan = None
    names = [str(n) for n in record["targets"]]
    truth = np.asarray(record["truth_poses"], dtype=np.float64)
    return ScanRecord(case, names, truth, predictions, parts, scan)


def _scan_section(record: dict[str, Any], cache: dict, dpi: int) -> str:
    case, names, truth, predictions, parts, scan = read_scan_record(record, cache)
    cells = []
    for row, name in enumerate(names):
        facts = ", ".join(
            f"{m} {plane_angle_deg(p[row], truth[row])[0]:.1f}° / "
            f"{plane_distance_mm(p[row], truth[row])[0]:.1f} mm"
            for m, p in predictions.items()
        )
        caption = f"<b>{esc(name)}</b>: {esc(facts)}"
        if scan is None:
            cells.append(f'<div class="cell">{caption}</div>')
            continue
        png = plane_figure(scan, truth[row], {m: p[row] for m, p in predictions.items()}, dpi)
        cells.append(f'<div class="cell">{img(png, f"{case} {name}", "slice")}{caption}</div>')
    parts.append(f'<div class="grid">{"".join(cells)}</div></section>')
    return "".join(parts)


def render_plane_sections(data: ReportData, max_scans: int, dpi: int) -> list[str]:
    """The body of a plane report (the page frame and the facts table come from the caller)."""
    from medrl.evaluation_planes import PLANE_KEYS

    keys = [*PLANE_KEYS, "seconds_per_scan_median"]
    rows = [[r["method"], r["plane"], *(r.get(k, "") for k in keys)] for r in data.overall]
    sections = [
        "<h2>Planes: agent and affine-registration baseline</h2>",
        '<p class="note">Angle between the normals (degrees) and the symmetric distance of the '
        "reference points from the other plane (mm); share within 2° and 2 mm.</p>",
        table(["method", "plane", *keys], rows),
    ]
    reference = data.summary.get("reference_alansary_2018_distance_mm", {})
    if reference:
        shown = ", ".join(f"{k} {v} mm" for k, v in reference.items())
        sections.append(
            f'<p class="note">Reference, Alansary et al. 2018 (brain MRI; another data set, '
            f"for scale only): {esc(shown)}.</p>"
        )
    sections += training_section(data.scalars)
    sections += scan_gallery(data, max_scans, dpi, "where each plane cuts three slices",
                             _scan_section)  # fmt: skip
    return sections


def scan_gallery(
    data: ReportData,
    max_scans: int,
    dpi: int,
    title: str,
    scan_section: Callable[[dict[str, Any], dict, int], str],
) -> list[str]:
    """The per-scan part of a plane-family report: a heading, the colour key of truth, agent
    and baseline, and ``scan_section(record, image cache, dpi)`` of each scan drawn."""
    from tqdm import tqdm

    shown = data.cases if max_scans <= 0 else data.cases[:max_scans]
    swatches = [("truth", TRUTH_COLOUR), *((m, METHOD_COLOURS[m]) for m in PLANE_METHODS)]
    key = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{esc(m)}</span>' for m, c in swatches
    )
    sections = [f"<h2>Scans: {esc(title)}</h2>", f'<p class="key">{key}</p>']
    cache: dict = {}
    for record in tqdm(shown, desc="report", unit="scan", file=sys.stderr):
        sections.append(scan_section(record, cache, dpi))
    return sections
