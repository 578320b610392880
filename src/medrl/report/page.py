"""The report page: plain HTML with tables and PNG figures inlined as data URIs."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrl.errors import MedrlError
from medrl.metrics.localization import FAILURE_THRESHOLD_MM, SUMMARY_KEYS
from medrl.report import DEFAULT_MAX_SCANS
from medrl.report.data import ReportData, load_report_data
from medrl.report.figures import (
    METHOD_COLOURS,
    TRUTH_COLOUR,
    cumulative_errors,
    error_bars,
)
from medrl.report.html import STYLE as _STYLE
from medrl.report.html import describe_scan, training_section
from medrl.report.html import esc as _esc
from medrl.report.html import img as _img
from medrl.report.html import table as _table
from medrl.report.slices import LEVEL_COLOURS, landmark_figure, rebuild_scan
from medrl.utils.atomic import atomic_open


def _methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(row["method"]) for row in rows))


def _overall_table(data: ReportData) -> str:
    keys = [*SUMMARY_KEYS, "seconds_per_scan_median"]
    header = ["method", *keys]
    rows = [[row["method"], *(row.get(k, "") for k in keys)] for row in data.overall]
    return _table(header, rows)


def _per_landmark_table(data: ReportData) -> str:
    methods = _methods(data.per_landmark)
    by_key = {(r["method"], str(r["landmark"])): r for r in data.per_landmark}
    landmarks = list(dict.fromkeys(str(r["landmark"]) for r in data.per_landmark))
    header = ["landmark", "description"]
    for method in methods:
        header += [f"{method} mean mm", f"{method} median mm", f"{method} max mm"]
    rows = []
    for name in landmarks:
        first = next(by_key[(m, name)] for m in methods if (m, name) in by_key)
        row: list[Any] = [name, first.get("description", "")]
        for method in methods:
            r = by_key.get((method, name), {})
            row += [r.get("mean_mm", ""), r.get("median_mm", ""), r.get("max_mm", "")]
        rows.append(row)
    return _table(header, rows, error_from=2)


def _key(num_levels: int) -> str:
    def swatch(colour: str, label: str) -> str:
        return f'<span><i class="swatch" style="background:{colour}"></i>{_esc(label)}</span>'

    items = [swatch(TRUTH_COLOUR, "truth (circle)")]
    items += [swatch(c, f"{m} ({'+' if m == 'agent' else 'x'})") for m, c in METHOD_COLOURS.items()]
    names = ["coarsest level", "2nd level", "3rd level", "4th level", "5th level"]
    pairs = list(zip(LEVEL_COLOURS, names, strict=True))[: max(num_levels, 1)]
    items += [swatch(c, f"search path, {n}") for c, n in pairs]
    return f'<p class="key">{"".join(items)}</p>'


def _scan_section(
    record: dict[str, Any], errors: Sequence[Mapping[str, Any]], cache: dict, dpi: int
) -> str:
    case = str(record["case"])
    names = [str(n) for n in record["landmarks"]]
    truth = np.asarray(record["truth_ras"], dtype=np.float64)
    predictions = {
        "agent": np.asarray(record["agent_ras"], dtype=np.float64),
        "affine-baseline": np.asarray(record["baseline_ras"], dtype=np.float64),
    }
    if record.get("supervised_ras") is not None:
        predictions["supervised-heatmap"] = np.asarray(record["supervised_ras"], dtype=np.float64)
    error_of = {(r["method"], str(r["landmark"])): float(r["error_mm"]) for r in errors}
    parts = [f'<section class="scan"><h3>{_esc(case)}</h3>']
    parts.append(f'<p class="note">{_esc(describe_scan(record))}</p>')
    try:
        scan = rebuild_scan(record, cache)
    except (MedrlError, OSError, RuntimeError) as exc:
        parts.append(
            f'<p class="note">slices not drawn: the image cannot be read ({_esc(exc)})</p>'
        )
        scan = None
    cells = []
    for row, name in enumerate(names):
        agent_mm = error_of.get(("agent", name), float("nan"))
        base_mm = error_of.get(("affine-baseline", name), float("nan"))
        description = record["descriptions"][row] if record.get("descriptions") else ""
        label = f"{name} {description}".strip()
        caption = f"<b>{_esc(label)}</b>: agent {agent_mm:.1f} mm, baseline {base_mm:.1f} mm"
        if "supervised-heatmap" in predictions:
            supervised_mm = error_of.get(("supervised-heatmap", name), float("nan"))
            caption += f", supervised {supervised_mm:.1f} mm"
        if scan is None:
            cells.append(f'<div class="cell">{caption}</div>')
            continue
        png = landmark_figure(
            scan,
            truth[row],
            {method: points[row] for method, points in predictions.items()},
            record["search_paths_ras"][row],
            dpi=dpi,
        )
        image = _img(png, f"{case} landmark {label}: slices", css="slice")
        cells.append(f'<div class="cell">{image}{caption}</div>')
    parts.append(f'<div class="grid">{"".join(cells)}</div></section>')
    return "".join(parts)


def _run_facts(data: ReportData) -> str:
    meta = data.model_meta
    summary = data.summary
    facts = [("run folder", str(data.run_dir)), ("evaluation folder", str(data.evaluation_dir))]
    if "steps" in meta:
        facts.append(("training steps", meta["steps"]))
    if meta.get("command"):
        facts.append(("training command", meta["command"]))
    facts.append(("evaluated scans", len(summary.get("cases", []))))
    facts.append(("baseline atlas", summary.get("atlas", "")))
    if "rigid_trials" in summary:
        facts.append(
            (
                "rigid moves",
                f"{summary['rigid_trials']} per test scan, up to "
                f"{summary['max_rotation_deg']}° and {summary['max_translation_mm']} mm "
                f"(seed {summary['seed']})",
            )
        )
    if summary.get("elastic_mm"):
        warp = f"{summary['elastic_mm']:g} mm elastic field on every moved scan (same seeds)"
        facts.append(("non-affine warp", warp))
    rows = "".join(f'<tr><th>{_esc(k)}</th><td class="text">{_esc(v)}</td></tr>' for k, v in facts)
    return f"<table>{rows}</table>"


def render_report(data: ReportData, max_scans: int = DEFAULT_MAX_SCANS, dpi: int = 80) -> str:
    """The whole page as a string."""
    from tqdm import tqdm

    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medrl report: {_esc(data.run_dir.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>medrl {_esc(data.task)} report: {_esc(data.run_dir.name)}</h1>",
        _run_facts(data),
    ]
    if data.task in ("box", "plane", "slice"):
        from medrl.report.boxes import render_box_sections
        from medrl.report.planes import render_plane_sections
        from medrl.report.target_slices import render_slice_sections

        render = {
            "box": render_box_sections,
            "plane": render_plane_sections,
            "slice": render_slice_sections,
        }[data.task]
        sections += render(data, max_scans, dpi)
        sections.append("</body></html>\n")
        return "\n".join(sections)
    sections += [
        "<h2>Overall: agent, affine-registration baseline (and supervised detector)</h2>",
        '<p class="note">Errors are Euclidean distances in mm; a failure is an error above '
        f"{FAILURE_THRESHOLD_MM:g} mm; detection rate at r: share of errors &le; r mm.</p>",
        _overall_table(data),
        "<h2>Error per landmark</h2>",
        _img(error_bars(data.per_landmark), "error per landmark (bars) with the failure line"),
        _img(cumulative_errors(data.errors), "cumulative error curve"),
        _per_landmark_table(data),
        *training_section(data.scalars),
    ]
    shown = data.cases if max_scans <= 0 else data.cases[:max_scans]
    sections.append("<h2>Scans: three slices through each true landmark</h2>")
    sections.append(
        '<p class="note">Each panel is centred on the true landmark; its width is given by the '
        "farthest point drawn. Search paths of every start are projected onto the slice.</p>"
    )
    levels = max(
        (len(start) for r in shown for lm in r["search_paths_ras"] for start in lm), default=1
    )
    sections.append(_key(levels))
    if len(shown) < len(data.cases):
        left = ", ".join(_esc(r["case"]) for r in data.cases[len(shown) :])
        sections.append(
            f'<p class="note">{len(shown)} of {len(data.cases)} scans drawn '
            f"(--max-scans); not drawn: {left}</p>"
        )
    cache: dict = {}
    for record in tqdm(shown, desc="report", unit="scan", file=sys.stderr):
        case_errors = [r for r in data.errors if r["case"] == record["case"]]
        sections.append(_scan_section(record, case_errors, cache, dpi))
    sections.append("</body></html>\n")
    return "\n".join(sections)


def write_report(
    run_dir: Path,
    evaluation_dir: Path | None = None,
    out: Path | None = None,
    max_scans: int = DEFAULT_MAX_SCANS,
    dpi: int = 80,
) -> Path:
    """Write the report of ``run_dir`` (atomically) and return its path."""
    data = load_report_data(run_dir, evaluation_dir)
    page = render_report(data, max_scans, dpi)
    target = out or run_dir / "report.html"
    with atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write(page)
    return target
