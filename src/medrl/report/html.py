"""HTML pieces shared by the report pages: escaping, tables, inline images, scan captions."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from medrl.metrics.localization import FAILURE_THRESHOLD_MM
from medrl.report.data import Scalars
from medrl.report.figures import data_uri, training_curves

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
td.fail { background: #fdd; }
.figure { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; }
.cell { border: 1px solid #ddd; padding: 2px; font-size: 0.75em; }
.cell img { display: block; }
.key span { display: inline-block; margin-right: 1.2em; }
.swatch { display: inline-block; width: 1.6em; height: 0.8em; vertical-align: middle;
          margin-right: 0.3em; border: 1px solid #888; }
.note { color: #555; font-size: 0.9em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def cell(value: Any, css: str = "") -> str:
    if isinstance(value, float):
        text = "" if not np.isfinite(value) else f"{value:.2f}"
    else:
        text = esc(value)
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    classes = " ".join(c for c in (css, "" if numeric else "text") if c)
    return f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], error_from: int = -1) -> str:
    """An HTML table; from column ``error_from`` on, errors above the failure line are shaded."""
    head = "".join(f"<th>{esc(h.replace('_', ' '))}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for column, value in enumerate(row):
            failed = (
                0 <= error_from <= column
                and isinstance(value, float)
                and value > FAILURE_THRESHOLD_MM
            )
            cells.append(cell(value, "fail" if failed else ""))
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img(png: bytes, alt: str, css: str = "figure") -> str:
    return f'<img class="{css}" alt="{esc(alt)}" src="{data_uri(png)}">'


def describe_scan(record: dict[str, Any]) -> str:
    """``image PATH (how it was moved and warped)`` of an evaluation's case record."""
    rigid = record["scan"].get("rigid")
    moved = (
        f"rigidly moved: {rigid['rotation_deg']:.1f}° rotation, "
        f"{float(np.linalg.norm(rigid['translation_mm'])):.1f} mm shift"
        if rigid
        else "unmoved"
    )
    warp = record["scan"].get("elastic")
    if warp:
        local = warp.get("local", ())
        if local:
            strongest = max(abs(float(w["strength"])) for w in local)
            moved = f"{len(local)} local warp(s) of strength up to {strongest:g}, {moved}"
        if warp["elastic_mm"] > 0:
            moved = f"warped by a {warp['elastic_mm']:g} mm elastic field, {moved}"
    return f"image {record['scan']['image']} ({moved})"


def training_section(scalars: dict[str, Scalars]) -> list[str]:
    """The "Training curves" heading and the curves of the run's logs (or a note that none
    were found)."""
    curves = training_curves(scalars)
    shown = (
        img(curves, "training curves")
        if curves is not None
        else '<p class="note">No training logs (RUN_DIR/tensorboard) were found.</p>'
    )
    return ["<h2>Training curves</h2>", shown]
