"""What ``medrl predict`` writes beside a landmark model's ``.fcsv``: each landmark's agreement
with the others (:mod:`medrl.confidence`), ``NAME_confidence.csv``::

    name,description,residual_mm,confidence,flag,disagreement_mm,spread_mm
    1,AC,1.42,0.980,ok,0.85,0.49
    26,L ventral occipital horn,21.70,0.009,check,14.20,3.89

``flag`` is ``check`` for a landmark further than :data:`medrl.confidence.OUTLIER_MM` from where
the other landmarks put it, ``layout`` for one whose point is where the others put it (both
searches disagreed with them; the residual is the first detection's), and ``scan`` on every
row when the scan as a whole does not have the model's layout (then every confidence is 0 and
``medrl predict`` warns, or fails the scan with ``--strict``). With ``search.layout_weight`` the
residuals and flags are those of the search's own points, before the blend with the layout.
``disagreement_mm`` is the distance between the agent's and the supervised detector's points
for a model that carries a detector (``search.detector_weight``; empty otherwise).
``spread_mm`` is the mean distance of the search's readings (the agent's, the detector's and
their mirror readings, ``search.mirror``) from the point written; empty for a search of one
reading. Both are for the reader; the confidence and the flags are the residual's
(:func:`medrl.confidence.search_confidence` says why).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medrl.agents.search import SearchResult
from medrl.confidence import LandmarkConfidence, search_confidence
from medrl.errors import InputError
from medrl.utils.atomic import atomic_open

CONFIDENCE_SUFFIX = "_confidence.csv"
COLUMNS = (
    "name",
    "description",
    "residual_mm",
    "confidence",
    "flag",
    "disagreement_mm",
    "spread_mm",
)


def confidence_path(landmarks_path: Path) -> Path:
    """``NAME.fcsv`` -> ``NAME_confidence.csv`` beside it."""
    return landmarks_path.with_name(landmarks_path.stem + CONFIDENCE_SUFFIX)


def landmark_check(
    reference_ras: np.ndarray | None, result: SearchResult
) -> LandmarkConfidence | None:
    """The confidence of a landmark search, or None for a model without a layout."""
    if reference_ras is None:
        return None
    reference = np.asarray(reference_ras, dtype=np.float64)
    own = result.own_estimate
    if reference.shape != own.shape:
        return None
    first = result.level_estimates[result.chosen_level] if result.level_estimates else own
    disagreement, spread = None, None
    if result.detector_ras is not None and result.agent_estimate is not None:
        disagreement = np.linalg.norm(result.agent_estimate - result.detector_ras, axis=1)
    if result.readings is not None:
        spread = np.linalg.norm(result.readings - own[None], axis=2).mean(axis=0)
    return search_confidence(reference, first, own, result.consensus_starts, disagreement, spread)


def write_confidence(
    path: Path, result: SearchResult, check: LandmarkConfidence, strict: bool, source: str
) -> str:
    """Write the sidecar atomically and return the scan's warning ("" when plausible);
    InputError naming the scan, before anything is written, when ``strict`` and implausible."""
    warning = ""
    if not check.plausible:
        warning = f"not a brain the model knows: {check.reason}; every confidence is 0"
        if strict:
            raise InputError(f"{warning} (--strict)", source)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        descriptions = list(result.descriptions) + [""] * len(result.names)
        for row, name in enumerate(result.names):
            flag = check.flags[row]
            residual = check.residual_mm[row]
            apart = "" if check.disagreement_mm is None else _mm(check.disagreement_mm[row])
            spread = "" if check.spread_mm is None else _mm(check.spread_mm[row])
            writer.writerow(
                [name, descriptions[row], _mm(residual), f"{check.confidence[row]:.3f}", flag,
                 apart, spread]
            )  # fmt: skip
    return warning


def _mm(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else ""
