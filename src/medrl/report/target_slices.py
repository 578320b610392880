"""The report of a slice evaluation: the distance table, and for every scan and target the
slice the agent chose.

For each target two figures: the scan's own voxel slice the agent chose (the nearest index,
as a user would open it), titled with the agent's, the baseline's and the true index; and
axial, coronal and sagittal views through the true target where the true slice (green), the
agent's (red) and the affine baseline's (blue) cut them, as lines.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medrl.predict_slices import axis_of_normal
from medrl.report.data import ReportData
from medrl.report.figures import png_bytes
from medrl.report.html import esc, img, table, training_section
from medrl.report.planes import plane_figure, read_scan_record, scan_gallery
from medrl.report.slices import ScanImage
from medrl.tasks.slice import slice_distance_mm, slice_index


def voxel_slice(scan: ScanImage, axis: int, index: int) -> np.ndarray:
    """The scan's own slice ``index`` along voxel ``axis`` (rows: the next axis after it)."""
    array = scan.volume.array  # (k, j, i)
    index = int(np.clip(index, 0, scan.volume.shape_xyz[axis] - 1))
    if axis == 2:
        return array[index]
    if axis == 1:
        return array[:, index, :]
    return array[:, :, index]


def chosen_slice_figure(
    scan: ScanImage, axis: int, indices: dict[str, float], dpi: int = 80
) -> bytes:
    """The voxel slice nearest the agent's index, titled with every method's index."""
    figure, axes = plt.subplots(1, 1, figsize=(2.0, 2.0))
    chosen = int(np.rint(indices["agent"]))
    axes.imshow(voxel_slice(scan, axis, chosen), cmap="gray", origin="lower",
                vmin=scan.low, vmax=scan.high)  # fmt: skip
    axes.set_xticks([])
    axes.set_yticks([])
    facts = ", ".join(f"{m} {v:.1f}" for m, v in indices.items())
    axes.set_title(f"{'ijk'[axis]}={chosen}\n{facts}", fontsize=5, pad=2)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.82)
    return png_bytes(figure, dpi)


def _scan_section(record: dict[str, Any], cache: dict, dpi: int) -> str:
    case, names, truth, predictions, parts, scan = read_scan_record(record, cache)
    descriptions = list(record.get("descriptions", [])) + [""] * len(names)
    cells = []
    for row, name in enumerate(names):
        facts = ", ".join(
            f"{m} {slice_distance_mm(p[row], truth[row])[0]:.1f} mm" for m, p in predictions.items()
        )
        label = f"{name} {descriptions[row]}".strip()
        caption = f"<b>{esc(label)}</b>: {esc(facts)}"
        if scan is None:
            cells.append(f'<div class="cell">{caption}</div>')
            continue
        axis = axis_of_normal(scan.volume, truth[row, 3:6])
        poses = {"truth": truth[row], **{m: p[row] for m, p in predictions.items()}}
        indices = {
            m: float(slice_index(scan.volume.index_to_ras, pose[:3], axis)[0])
            for m, pose in poses.items()
        }
        indices = {"agent": indices["agent"], **{m: v for m, v in indices.items() if m != "agent"}}
        chosen = chosen_slice_figure(scan, axis, indices, dpi)
        views = plane_figure(scan, truth[row], {m: p[row] for m, p in predictions.items()}, dpi)
        cells.append(
            f'<div class="cell">{img(chosen, f"{case} {name} chosen slice", "slice")}'
            f"{img(views, f'{case} {name}', 'slice')}{caption}</div>"
        )
    parts.append(f'<div class="grid">{"".join(cells)}</div></section>')
    return "".join(parts)


def render_slice_sections(data: ReportData, max_scans: int, dpi: int) -> list[str]:
    """The body of a slice report (the page frame and the facts table come from the caller)."""
    from medrl.evaluation_slices import FAILURE_MM, SLICE_KEYS

    keys = [*SLICE_KEYS, "seconds_per_scan_median"]
    rows = [[r["method"], r["target"], *(r.get(k, "") for k in keys)] for r in data.overall]
    sections = [
        "<h2>Slices: agent and affine-registration baseline</h2>",
        '<p class="note">Distance between the chosen and the true slice along the slice '
        f"normal (mm); a failure is a distance above {FAILURE_MM:g} mm.</p>",
        table(["method", "target", *keys], rows),
        *training_section(data.scalars),
    ]
    title = "the chosen slice, and where the slices cut three views"
    return sections + scan_gallery(data, max_scans, dpi, title, _scan_section)
