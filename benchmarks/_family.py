"""What the plane and slice benchmarks share: the held-out test templates and the scenarios.

Test templates: MNI152NLin6Asym T1w (``builtin:afids``, test split) and the SPM12 averages
(``builtin:spm12``: MNI152Lin T1w, T2w, PD and MNI305 T1w), each with its own AFIDs, none seen
in training (MNI152NLin2009cAsym T1w/T2w). Scenarios, each a ``medrl evaluate`` run written
under the output folder: ``rigid15`` (random rigid moves up to 15 degrees and 20 mm, seeds
1000...), ``rigid30`` (up to 30 degrees) and ``warp15`` (up to 15 degrees plus a smooth 3 mm
non-affine warp). The baseline carries the MNI152NLin2009cAsym AFIDs by affine registration.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from medrl.data.datalist import Case
from medrl.data.sources import load_split
from medrl.data.spm12 import fetch_spm12

SCENARIOS = {
    "rigid15": {"max_rotation_deg": 15.0, "elastic_mm": 0.0},
    "rigid30": {"max_rotation_deg": 30.0, "elastic_mm": 0.0},
    "warp15": {"max_rotation_deg": 15.0, "elastic_mm": 3.0},
}
SHARED_SPM12 = Path(__file__).resolve().parents[2] / "shared" / "data" / "templates"


def add_family_arguments(parser, out: str) -> None:  # type: ignore[no-untyped-def]
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--spm12-dir", default=str(SHARED_SPM12) if SHARED_SPM12.is_dir() else None)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", default=out)


def test_templates(spm12_dir: str | None) -> dict[str, list[Case]]:
    fetch_spm12(spm12_dir)
    return {
        "MNI152NLin6Asym": load_split("builtin:afids", "test"),
        **{case.case_id: [case] for case in load_split("builtin:spm12", "test")},
    }


def run_scenarios(
    evaluate: Callable[..., dict],
    table: str,
    model: object,
    args,  # type: ignore[no-untyped-def]
    report: Callable[[list[dict], str], None],
) -> list[dict]:
    """Every scenario on every template: rows of ``table`` with template and scenario."""
    atlas = load_split("builtin:afids", "train")[0]
    templates = test_templates(args.spm12_dir)
    out = Path(args.out)
    everything = []
    for scenario in args.scenarios.split(","):
        settings = SCENARIOS[scenario]
        rows = []
        for template, cases in templates.items():
            with torch.inference_mode():
                tables = evaluate(
                    model, cases, atlas, out / scenario / template, rigid_trials=args.trials,
                    max_rotation_deg=settings["max_rotation_deg"],
                    elastic_mm=settings["elastic_mm"], progress=False,
                )  # fmt: skip
            for row in tables[table]:
                rows.append({"template": template, "scenario": scenario, **row})
        report(rows, f"{scenario}: {settings}")
        everything += rows
    return everything
