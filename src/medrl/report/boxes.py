"""The report of a box evaluation: IoU tables and bars, and the boxes drawn over the scan.

For every evaluated scan and structure, three slices (axial, coronal, sagittal) through the
true box's centre show the true box (green), the agent's (red) and the affine-atlas
baseline's (blue) as rectangles where they cut the slice, so a user sees at a glance where
and how the agent is wrong. Tables: IoU, centre and wall distances per structure and overall,
agent beside baseline, and the reference figures of Navarro et al. 2020.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from medrl.errors import MedrlError
from medrl.geometry.boxes import box_iou
from medrl.metrics.boxes import BOX_SUMMARY_KEYS, IOU_THRESHOLD, OVERALL_BOX_KEYS
from medrl.report.data import ReportData
from medrl.report.figures import (
    METHOD_COLOURS,
    TRUTH_COLOUR,
    method_colour,
    png_bytes,
)
from medrl.report.html import describe_scan, esc, img, table, training_section
from medrl.report.slices import PLANES, ScanImage, rebuild_scan, sample_plane

BOX_METHODS = ("agent", "affine-atlas-baseline")
BOX_COLOURS = {"agent": METHOD_COLOURS["agent"], "affine-atlas-baseline": "#1f77b4"}


def _cuts(box: np.ndarray, fixed: int, value: float) -> bool:
    return abs(value - box[fixed]) <= box[3 + fixed] / 2


def box_figure(
    scan: ScanImage, truth: np.ndarray, predictions: Mapping[str, np.ndarray], dpi: int = 80
) -> bytes:
    """Slices through the true box's centre with every box drawn where it cuts the slice
    (dashed where it does not reach the slice: its outline projected)."""
    truth = np.asarray(truth, dtype=np.float64)
    boxes = {"truth": truth, **{m: np.asarray(b, dtype=np.float64) for m, b in predictions.items()}}
    reach = max(float(np.max(np.abs(b[:3] - truth[:3]) + b[3:] / 2)) for b in boxes.values())
    half_mm = float(np.clip(reach + 10.0, 20.0, 120.0))
    figure, panels = plt.subplots(1, 3, figsize=(4.5, 1.6))
    for axes, (title, fixed, across, up, right, top) in zip(panels, PLANES, strict=True):
        plane = sample_plane(scan, truth[:3], fixed, across, up, half_mm)
        extent = (-half_mm, half_mm, -half_mm, half_mm)
        axes.imshow(
            plane, cmap="gray", origin="lower", extent=extent, vmin=scan.low, vmax=scan.high
        )
        for method, box in boxes.items():
            colour = TRUTH_COLOUR if method == "truth" else BOX_COLOURS.get(method, "#9467bd")
            corner = (
                box[across] - box[3 + across] / 2 - truth[across],
                box[up] - box[3 + up] / 2 - truth[up],
            )
            axes.add_patch(
                Rectangle(
                    corner,
                    box[3 + across],
                    box[3 + up],
                    fill=False,
                    edgecolor=colour,
                    linewidth=1.1,
                    linestyle="-" if _cuts(box, fixed, truth[fixed]) else ":",
                )
            )
        axes.set_xlim(-half_mm, half_mm)
        axes.set_ylim(-half_mm, half_mm)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"{title} {'RAS'[fixed]}={truth[fixed]:.0f}", fontsize=6, pad=2)
        style = {"color": "white", "fontsize": 5, "transform": axes.transAxes}
        axes.text(0.97, 0.5, right, ha="right", va="center", **style)
        axes.text(0.5, 0.97, top, ha="center", va="top", **style)
        x0, y0 = -half_mm * 0.92, -half_mm * 0.9
        axes.plot([x0, x0 + 10.0], [y0, y0], color="white", linewidth=1.5)
        axes.text(x0, y0 + half_mm * 0.05, "10 mm", color="white", fontsize=5)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, wspace=0.04)
    return png_bytes(figure, dpi)


def iou_bars(per_structure: Sequence[Mapping[str, Any]], dpi: int = 100) -> bytes:
    """Mean IoU per structure (one bar per method; whisker down to the worst) and the 0.5 line."""
    methods = list(dict.fromkeys(str(r["method"]) for r in per_structure))
    names = list(dict.fromkeys(str(r["structure"]) for r in per_structure))
    width = 0.8 / max(len(methods), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 3.6))
    x = np.arange(len(names))
    for m, method in enumerate(methods):
        rows = {str(r["structure"]): r for r in per_structure if r["method"] == method}
        mean = np.array([rows[n]["iou_mean"] if n in rows else np.nan for n in names])
        worst = np.array([rows[n]["iou_min"] if n in rows else np.nan for n in names])
        offset = (m - (len(methods) - 1) / 2) * width
        colour = BOX_COLOURS.get(method, method_colour(method, m))
        axes.bar(x + offset, mean, width, color=colour, label=f"{method} (mean)")
        axes.errorbar(
            x + offset,
            mean,
            yerr=[np.nan_to_num(mean - worst), np.zeros_like(mean)],
            fmt="none",
            ecolor="0.25",
            elinewidth=0.7,
            capsize=1.5,
        )
    axes.axhline(IOU_THRESHOLD, color="black", linestyle="--", linewidth=1)
    axes.set_ylim(0, 1.0)
    axes.set_xticks(x, names, rotation=75, ha="right", fontsize=7)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylabel("IoU; whisker: worst")
    axes.set_title("IoU per structure over all evaluated scans")
    axes.legend(fontsize=8, loc="upper right")
    axes.grid(axis="y", alpha=0.3)
    return png_bytes(figure, dpi)


def _per_structure_table(data: ReportData) -> str:
    methods = list(dict.fromkeys(str(r["method"]) for r in data.per_landmark))
    by_key = {(r["method"], str(r["structure"])): r for r in data.per_landmark}
    names = list(dict.fromkeys(str(r["structure"]) for r in data.per_landmark))
    header = ["structure"]
    for method in methods:
        header += [f"{method} IoU mean", f"{method} IoU min", f"{method} centre mm"]
    rows = []
    for name in names:
        row: list[Any] = [name]
        for method in methods:
            r = by_key.get((method, name), {})
            row += [r.get("iou_mean", ""), r.get("iou_min", ""), r.get("centre_mm_mean", "")]
        rows.append(row)
    return table(header, rows)


def _scan_section(record: dict[str, Any], cache: dict, dpi: int) -> str:
    case = str(record["case"])
    names = [str(n) for n in record["structures"]]
    truth = np.asarray(record["truth_boxes"], dtype=np.float64)
    predictions = {
        "agent": np.asarray(record["agent_boxes"], dtype=np.float64),
        "affine-atlas-baseline": np.asarray(record["baseline_boxes"], dtype=np.float64),
    }
    iou = {m: box_iou(b, truth) for m, b in predictions.items()}
    parts = [f'<section class="scan"><h3>{esc(case)}</h3>']
    parts.append(f'<p class="note">{esc(describe_scan(record))}</p>')
    try:
        scan = rebuild_scan(record, cache)
    except (MedrlError, OSError, RuntimeError) as exc:
        parts.append(f'<p class="note">slices not drawn: the image cannot be read ({esc(exc)})</p>')
        scan = None
    cells = []
    for row, name in enumerate(names):
        caption = (
            f"<b>{esc(name)}</b>: IoU agent {iou['agent'][row]:.2f}, "
            f"baseline {iou['affine-atlas-baseline'][row]:.2f}"
        )
        if scan is None:
            cells.append(f'<div class="cell">{caption}</div>')
            continue
        png = box_figure(scan, truth[row], {m: b[row] for m, b in predictions.items()}, dpi)
        cells.append(
            f'<div class="cell">{img(png, f"{case} {name}: boxes", "slice")}{caption}</div>'
        )
    parts.append(f'<div class="grid">{"".join(cells)}</div></section>')
    return "".join(parts)


def render_box_sections(data: ReportData, max_scans: int, dpi: int) -> list[str]:
    """The body of a box report (the page frame and the facts table come from the caller)."""
    from tqdm import tqdm

    keys = [*OVERALL_BOX_KEYS, "seconds_per_scan_median"]
    rows = [[r["method"], *(r.get(k, "") for k in keys)] for r in data.overall]
    reference = data.summary.get("reference_navarro_2020", {})
    sections = [
        "<h2>Overall: box agent and affine-atlas baseline</h2>",
        '<p class="note">IoU of each predicted box with the true box (the tight box of the '
        "structure's labels in the evaluated scan); centre: distance between box centres; "
        "wall: mean distance between corresponding box walls (mm).</p>",
        table(["method", *keys], rows),
    ]
    if reference:
        shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in reference.items())
        sections.append(
            f'<p class="note">Reference, Navarro et al. 2020 (CT organs; another data set, '
            f"for scale only): {esc(shown)}.</p>"
        )
    sections += [
        "<h2>IoU per structure</h2>",
        img(iou_bars(data.per_landmark), "IoU per structure with the 0.5 line"),
        _per_structure_table(data),
    ]
    sections += training_section(data.scalars)
    shown_cases = data.cases if max_scans <= 0 else data.cases[:max_scans]
    sections.append("<h2>Scans: the boxes on three slices through each true box</h2>")
    swatches = [("truth", TRUTH_COLOUR), *BOX_COLOURS.items()]
    key = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{esc(m)}</span>' for m, c in swatches
    )
    sections.append(
        f'<p class="key">{key}</p><p class="note">Solid: the box cuts the slice; dotted: it '
        "does not reach it (its outline projected).</p>"
    )
    if len(shown_cases) < len(data.cases):
        left = ", ".join(esc(r["case"]) for r in data.cases[len(shown_cases) :])
        sections.append(
            f'<p class="note">{len(shown_cases)} of {len(data.cases)} scans drawn '
            f"(--max-scans); not drawn: {left}</p>"
        )
    cache: dict = {}
    for record in tqdm(shown_cases, desc="report", unit="scan", file=sys.stderr):
        sections.append(_scan_section(record, cache, dpi))
    return sections


__all__ = ["BOX_SUMMARY_KEYS", "box_figure", "iou_bars", "render_box_sections"]
