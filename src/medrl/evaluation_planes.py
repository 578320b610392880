"""Evaluation of a plane model: the agent against the affine-registration baseline
(:mod:`medrl.evaluation_family`: moved test scans, truth fitted to the moved AFIDs, the
baseline fits the planes to the atlas's AFIDs carried by affine registration).

Metrics per plane: angle between the normals (degrees), symmetric point-to-plane distance of
the reference points (mm), mean / median / max and the share within 2 degrees and 2 mm.
Reference figures of Alansary et al. (MICCAI 2018, brain MRI, distance): MSP 1.53 mm, AC-PC
1.98 mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrl.agents.checkpoint import Model
from medrl.agents.search import SearchResult
from medrl.data.datalist import Case
from medrl.evaluation_family import (
    AGENT,
    BASELINE,
    FamilySpec,
    Results,
    evaluate_family,
    print_family_table,
)
from medrl.geometry.planes import MIDLINE_AFIDS, plane_angle_deg, plane_distance_mm
from medrl.io.images import Volume
from medrl.io.plane_markups import write_planes

__all__ = ["AGENT", "BASELINE", "PLANES", "evaluate_planes", "plane_rows", "print_plane_tables"]

ALANSARY_2018 = {"MSP": 1.53, "ACPC": 1.98}
"""Mean plane distance (mm) of Alansary et al., MICCAI 2018 (brain MRI, other data)."""
WITHIN_DEG, WITHIN_MM = 2.0, 2.0
PLANE_KEYS = (
    "angle_deg_mean",
    "angle_deg_median",
    "angle_deg_max",
    "distance_mm_mean",
    "distance_mm_median",
    "distance_mm_max",
    "share_within_2deg_2mm",
    "n",
)


def plane_rows(
    results: Results, truth: dict[str, np.ndarray], names: tuple[str, ...]
) -> tuple[list[dict], list[dict]]:
    """Per (method, plane) summary rows and raw rows (one per method, scan and plane)."""
    summary, raw = [], []
    for method, per_case in results.items():
        for row, name in enumerate(names):
            angles, distances = [], []
            for case_id, estimate in per_case.items():
                angle = float(plane_angle_deg(estimate[row], truth[case_id][row])[0])
                distance = float(plane_distance_mm(estimate[row], truth[case_id][row])[0])
                angles.append(angle)
                distances.append(distance)
                raw.append(
                    {"method": method, "case": case_id, "plane": name,
                     "angle_deg": angle, "distance_mm": distance}
                )  # fmt: skip
            a, d = np.asarray(angles), np.asarray(distances)
            within = (a <= WITHIN_DEG) & (d <= WITHIN_MM)
            summary.append(
                {
                    "method": method,
                    "plane": name,
                    "angle_deg_mean": float(a.mean()),
                    "angle_deg_median": float(np.median(a)),
                    "angle_deg_max": float(a.max()),
                    "distance_mm_mean": float(d.mean()),
                    "distance_mm_median": float(np.median(d)),
                    "distance_mm_max": float(d.max()),
                    "share_within_2deg_2mm": float(within.mean()),
                    "n": len(a),
                }
            )
    return summary, raw


def _write_prediction(path: Path, volume: Volume, result: SearchResult) -> None:
    write_planes(path, result.names, result.estimate)


PLANES = FamilySpec(
    task="plane",
    table="planes",
    keys=PLANE_KEYS,
    target_column="plane",
    rows=plane_rows,
    write_prediction=_write_prediction,
    prediction_suffix=".mrk.json",
)


def evaluate_planes(model: Model, test_cases: list[Case], atlas: Case, out_dir: str | Path,
                    **options: object) -> dict:  # fmt: skip
    """:func:`medrl.evaluation_family.evaluate_family` for a plane model (options: the test
    scenario, device, progress, num_starts)."""
    return evaluate_family(
        PLANES, MIDLINE_AFIDS, model, test_cases, atlas, out_dir,
        reference_alansary_2018_distance_mm=ALANSARY_2018, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def print_plane_tables(tables: dict) -> None:
    print_family_table(PLANES, tables)
    reference = ", ".join(f"{k} {v} mm" for k, v in ALANSARY_2018.items())
    print(f"\nreference, Alansary et al. 2018 (brain MRI, not this data): {reference}")
