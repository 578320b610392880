"""The landmark model's confidence (agreement with the other landmarks, :mod:`medrl.confidence`)
and its second search of outliers, on held-out templates and on input that is not a brain.

Test scans: MNI152NLin6Asym T1w and the SPM12 averages (MNI152Lin T1w/T2w/PD, MNI305 T1w), each
with its own AFIDs, moved by ``--trials`` random rigid transforms (up to 15 degrees, 20 mm,
seeds 1000...) and, with ``--elastic-mm``, warped. For every scan the model searches with and
without its second search of outliers (``search.consensus_level``). Prints per template the
mean error and the landmarks above 10 mm with and without it, and how well the residual ranks
the real errors: Spearman's rank correlation, the area under the ROC curve for telling errors
above 5 mm from the rest, and the flagged landmarks (residual above 10 mm) against the errors
above 10 mm; beside the residual, the residual plus the spread of the search's readings
(``spread_mm`` of ``medrl predict``'s confidence file), a candidate that was not adopted.
Last, the verdict on a 60^3 volume of uniform noise.
With ``--fold TEMPLATE=DIR`` (repeatable) each model of a leave-one-template-out fold is
measured on its left-out template only (the templates whose name starts with TEMPLATE).

PYTHONPATH=. python -m benchmarks.bench_confidence [--model DIR | --fold T=DIR ...] [--trials 3]
    [--elastic-mm 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from benchmarks._common import set_threads
from benchmarks._family import SHARED_SPM12, test_templates
from medrl.agents.checkpoint import load_model
from medrl.agents.search import search
from medrl.confidence import OUTLIER_MM, check_layout
from medrl.data.scenarios import scenario_scans
from medrl.io.images import Volume
from medrl.models import default_model_dir
from medrl.predict_confidence import landmark_check


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney); NaN if one
    class is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--fold", action="append", default=[], metavar="TEMPLATE=DIR")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--elastic-mm", type=float, default=0.0)
    parser.add_argument("--spm12-dir", default=str(SHARED_SPM12) if SHARED_SPM12.is_dir() else None)
    args = parser.parse_args()
    set_threads(args.threads)
    folds = dict(item.split("=", 1) for item in args.fold) or {"": args.model}
    print("\n| template | mean mm without / with second search | > 10 mm without / with | "
          "Spearman residual-error | AUROC (> 5 mm) residual / + spread | flagged: errors "
          "> 10 mm found / flags | s per scan with |")  # fmt: skip
    print("|---|---|---|---:|---|---|---:|")
    pooled: dict[str, list] = {"residual": [], "uncertain": [], "error": []}
    templates = test_templates(args.spm12_dir)
    model = None
    for prefix, model_dir in folds.items():
        model = load_model(model_dir or default_model_dir("landmark"), task="landmark")
        for template, cases in templates.items():
            if template.startswith(prefix):
                _template_row(model, template, cases, args, pooled)
    residual, error = np.concatenate(pooled["residual"]), np.concatenate(pooled["error"])
    uncertain = np.concatenate(pooled["uncertain"])
    print(f"\nall templates: Spearman residual {spearmanr(residual, error).statistic:.2f}, "
          f"+ spread {spearmanr(uncertain, error).statistic:.2f}; AUROC (> 5 mm) residual "
          f"{auroc(residual, error > 5.0):.2f}, + spread {auroc(uncertain, error > 5.0):.2f}; "
          f"errors > 5 mm: {int((error > 5).sum())} of {len(error)}")  # fmt: skip
    assert model is not None
    rng = np.random.default_rng(0)
    noise = Volume(rng.random((60, 60, 60)).astype(np.float32), np.ones(3), np.zeros(3),
                   np.eye(3), "uniform noise")  # fmt: skip
    with torch.inference_mode():
        found = search(model, noise).estimate
    check = check_layout(model.task.reference_points_ras, found)
    print(f"noise 60^3: plausible {check.plausible} ({check.reason or 'no reason'}), "
          f"max confidence {check.confidence.max():.3f}")  # fmt: skip


def _template_row(model, template: str, cases: list, args, pooled: dict[str, list]) -> None:  # type: ignore[no-untyped-def]
    """Search every moved scan of one template with and without the second search; print its
    row and add its residuals, residuals plus spreads and errors to ``pooled``."""
    scans = scenario_scans(cases, args.trials, elastic_mm=args.elastic_mm,
                           landmark_names=tuple(model.names))  # fmt: skip
    errors: dict[str, list] = {"without": [], "with": []}
    residuals, uncertain, seconds = [], [], []
    for scan in scans:
        truth = np.stack([scan.landmarks.points_ras[scan.landmarks.names.index(n)]
                          for n in model.names])  # fmt: skip
        with torch.inference_mode():
            plain = search(model, scan.volume, consensus_level=-1)
            started = time.perf_counter()
            second = search(model, scan.volume)
            seconds.append(time.perf_counter() - started)
        errors["without"].append(np.linalg.norm(plain.estimate - truth, axis=1))
        errors["with"].append(np.linalg.norm(second.estimate - truth, axis=1))
        confidence = landmark_check(model.task.reference_points_ras, second)
        assert confidence is not None
        residuals.append(confidence.residual_mm)
        spread = confidence.spread_mm
        uncertain.append(confidence.residual_mm + (0.0 if spread is None else spread))
    without, with_ = np.concatenate(errors["without"]), np.concatenate(errors["with"])
    residual, doubt = np.concatenate(residuals), np.concatenate(uncertain)
    pooled["residual"].append(residual)
    pooled["uncertain"].append(doubt)
    pooled["error"].append(with_)
    rho = spearmanr(residual, with_).statistic
    flagged, failed = residual > OUTLIER_MM, with_ > 10.0
    print(
        f"| {template} | {without.mean():.2f} / {with_.mean():.2f} | "
        f"{int((without > 10).sum())} / {int(failed.sum())} of {len(with_)} | {rho:.2f} | "
        f"{auroc(residual, with_ > 5.0):.2f} / {auroc(doubt, with_ > 5.0):.2f} | "
        f"{int((flagged & failed).sum())} of {int(failed.sum())} / {int(flagged.sum())} | "
        f"{np.median(seconds):.2f} |"
    )


if __name__ == "__main__":
    main()
