"""Summary figures of a report (matplotlib, Agg) as PNG bytes."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from medrl.metrics.localization import FAILURE_THRESHOLD_MM
from medrl.report.data import TRAINING_CURVES, Scalars

METHOD_COLOURS = {
    "agent": "#d62728",
    "affine-baseline": "#1f77b4",
    "supervised-heatmap": "#9467bd",
}
TRUTH_COLOUR = "#2ca02c"
_OTHER_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def method_colour(method: str, index: int = 0) -> str:
    return METHOD_COLOURS.get(method, _OTHER_COLOURS[index % len(_OTHER_COLOURS)])


def png_bytes(figure: Figure, dpi: int) -> bytes:
    """Render and close ``figure``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(row["method"]) for row in rows))


def error_bars(per_landmark: Sequence[Mapping[str, Any]], dpi: int = 100) -> bytes:
    """Mean error per landmark (bars, one per method; whiskers to the max) and the 10 mm line."""
    methods = _methods(per_landmark)
    landmarks = list(dict.fromkeys(str(row["landmark"]) for row in per_landmark))
    labels = {}
    for row in per_landmark:
        name = str(row["landmark"])
        labels[name] = f"{name} {row.get('description') or ''}".strip()
    width = 0.8 / max(len(methods), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.32 * len(landmarks) + 2), 3.6))
    x = np.arange(len(landmarks))
    top = FAILURE_THRESHOLD_MM
    for m, method in enumerate(methods):
        rows = {str(r["landmark"]): r for r in per_landmark if r["method"] == method}
        mean = np.array([rows[n]["mean_mm"] if n in rows else np.nan for n in landmarks])
        peak = np.array([rows[n]["max_mm"] if n in rows else np.nan for n in landmarks])
        offset = (m - (len(methods) - 1) / 2) * width
        axes.bar(x + offset, mean, width, color=method_colour(method, m), label=f"{method} (mean)")
        axes.errorbar(
            x + offset,
            mean,
            yerr=[np.zeros_like(mean), np.nan_to_num(peak - mean)],
            fmt="none",
            ecolor="0.25",
            elinewidth=0.7,
            capsize=1.5,
        )
        top = max(top, float(np.nanmax(peak)) if np.isfinite(peak).any() else top)
    axes.axhline(FAILURE_THRESHOLD_MM, color="black", linestyle="--", linewidth=1)
    axes.text(
        len(landmarks) - 0.5,
        FAILURE_THRESHOLD_MM,
        f" failure ({FAILURE_THRESHOLD_MM:g} mm)",
        va="bottom",
        ha="right",
        fontsize=8,
    )
    axes.set_ylim(0, top * 1.08)
    axes.set_xticks(x, [labels[n] for n in landmarks], rotation=75, ha="right", fontsize=7)
    axes.set_xlim(-0.6, len(landmarks) - 0.4)
    axes.set_ylabel("error (mm); whisker: max")
    axes.set_title("Error per landmark over all evaluated scans")
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(axis="y", alpha=0.3)
    return png_bytes(figure, dpi)


def cumulative_errors(errors: Sequence[Mapping[str, Any]], dpi: int = 100) -> bytes:
    """Share of landmarks found within d mm, for each method."""
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    largest = FAILURE_THRESHOLD_MM
    for m, method in enumerate(_methods(errors)):
        values = np.sort([float(r["error_mm"]) for r in errors if r["method"] == method])
        if not len(values):
            continue
        share = np.arange(1, len(values) + 1) / len(values)
        x = np.concatenate([[0.0], values])
        y = np.concatenate([[0.0], share])
        axes.step(x, y, where="post", color=method_colour(method, m), label=method)
        largest = max(largest, float(values[-1]))
    axes.axvline(FAILURE_THRESHOLD_MM, color="black", linestyle="--", linewidth=1)
    axes.set_xlim(0, largest * 1.05)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("distance d (mm)")
    axes.set_ylabel("share of landmarks within d")
    axes.set_title("Cumulative error")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    return png_bytes(figure, dpi)


def training_curves(scalars: Mapping[str, Scalars], dpi: int = 100) -> bytes | None:
    """One panel per logged curve (reward, loss, epsilon, distance, evaluation error);
    ``None`` if the run logged none of them."""
    present = [(tag, title) for tag, title in TRAINING_CURVES if tag in scalars]
    if not present:
        return None
    columns = min(3, len(present))
    rows = -(-len(present) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.5 * rows), squeeze=False)
    for axes in grid.flat[len(present) :]:
        axes.set_visible(False)
    for axes, (tag, title) in zip(grid.flat, present, strict=False):
        series = scalars[tag]
        marker = "o" if len(series.steps) < 30 else None
        axes.plot(series.steps, series.values, marker=marker, markersize=3, linewidth=1.2)
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("training step", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return png_bytes(figure, dpi)
