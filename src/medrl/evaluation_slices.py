"""Evaluation of a slice model: the agent against the affine-registration baseline
(:mod:`medrl.evaluation_family`). The truth is the slice through the moved landmark along the
moved scan's own slice axis; the baseline takes the slice through the atlas's landmark carried
by affine registration. Metric: the distance between the slices along their normal (mm), mean /
median / max, and the failure rate (distance above 5 mm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrl.agents.checkpoint import Model
from medrl.agents.search import SearchResult
from medrl.data.datalist import Case
from medrl.evaluation_family import FamilySpec, Results, evaluate_family, print_family_table
from medrl.io.images import Volume
from medrl.predict_slices import write_slices
from medrl.tasks.slice import slice_distance_mm

FAILURE_MM = 5.0
SLICE_KEYS = (
    "distance_mm_mean",
    "distance_mm_median",
    "distance_mm_max",
    "failure_rate_over_5mm",
    "n",
)


def slice_rows(
    results: Results, truth: dict[str, np.ndarray], names: tuple[str, ...]
) -> tuple[list[dict], list[dict]]:
    """Per (method, target) summary rows and raw rows (one per method, scan and target)."""
    summary, raw = [], []
    for method, per_case in results.items():
        for row, name in enumerate(names):
            distances = []
            for case_id, estimate in per_case.items():
                true = truth[case_id][row]
                distance = float(slice_distance_mm(estimate[row], true)[0])
                distances.append(distance)
                raw.append(
                    {"method": method, "case": case_id, "target": name, "distance_mm": distance,
                     "position_mm": float(estimate[row, :3] @ true[3:6]),
                     "truth_position_mm": float(true[:3] @ true[3:6])}
                )  # fmt: skip
            d = np.asarray(distances)
            summary.append(
                {
                    "method": method,
                    "target": name,
                    "distance_mm_mean": float(d.mean()),
                    "distance_mm_median": float(np.median(d)),
                    "distance_mm_max": float(d.max()),
                    "failure_rate_over_5mm": float((d > FAILURE_MM).mean()),
                    "n": len(d),
                }
            )
    return summary, raw


def _write_prediction(path: Path, volume: Volume, result: SearchResult) -> None:
    write_slices(path, volume, result)


SLICES = FamilySpec(
    task="slice",
    table="slices",
    keys=SLICE_KEYS,
    target_column="target",
    rows=slice_rows,
    write_prediction=_write_prediction,
    prediction_suffix=".slices.json",
)


def evaluate_slices(model: Model, test_cases: list[Case], atlas: Case, out_dir: str | Path,
                    **options: object) -> dict:  # fmt: skip
    """:func:`medrl.evaluation_family.evaluate_family` for a slice model: the targets are the
    slices through the model's landmarks (options: the test scenario, device, progress,
    num_starts)."""
    return evaluate_family(
        SLICES,
        tuple(model.names),
        model,
        test_cases,
        atlas,
        out_dir,
        **options,  # type: ignore[arg-type]
    )


def print_slice_tables(tables: dict) -> None:
    print_family_table(SLICES, tables)
