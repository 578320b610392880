"""How far to trust each found landmark: its agreement with the other landmarks.

The model keeps a reference layout of its landmarks (those of a training scan). After a search,
that layout is fitted to the found points by a robust affine map
(:func:`medrl.geometry.robust_affine.fit_affine_robust`: a landmark the search got badly wrong
has no say in the fit), and each landmark's **residual** is how far it lies from where the
other landmarks put it. People differ by more than an affine map, so a residual of a few mm is
normal; a detection 20 mm off the layout is not (O'Neil et al. 2018 fit such an over-determined
affine map to catch detection failures). Confidence is ``exp(-(residual / 2 / TOLERANCE_MM)^2)``:
1 on the layout, 0.78 at 5 mm, 0.37 at 10 mm, 0.02 at 20 mm.

The whole scan is checked too. A scan that is not a brain the model knows (noise, a CT, a knee)
gets points with no common layout: the robust fit leaves a large typical residual, or needs a
map that no head needs (scaled below 0.6 or above 1.6, or mirrored). Then every confidence is
set to 0 and the check names the reason.

A landmark whose detection lies far from the layout is searched again from where the others
put it (:meth:`medrl.tasks.landmark.LandmarkTask.consensus_starts`); if that search walks away
again, the layout's position is written, flagged ``layout``, with the confidence of the first
detection (:func:`search_confidence`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medrl.geometry.robust_affine import fit_affine_robust

TOLERANCE_MM = 5.0
"""Residual (mm) at which the confidence is exp(-1/4) = 0.78."""
OUTLIER_MM = 10.0
"""A landmark further than this from where the others put it is searched again and flagged."""
MAX_TYPICAL_RESIDUAL_MM = 6.0
"""A scan whose median residual exceeds this does not have the model's layout."""
SCALE_RANGE = (0.6, 1.6)
"""Singular values of the fitted map a head can need (people and templates lie well inside)."""


@dataclass(frozen=True)
class LandmarkConfidence:
    """Per landmark of a search: residual (mm), confidence in [0, 1] and a flag: ``ok``,
    ``check`` (far from the layout), ``layout`` (the point is where the other landmarks put it:
    both searches disagreed with them) or ``scan`` (the scan does not have the layout)."""

    residual_mm: np.ndarray
    confidence: np.ndarray
    flags: tuple[str, ...]
    plausible: bool
    reason: str
    disagreement_mm: np.ndarray | None = None
    """(T,) distance between the agent's and the supervised detector's points (None without a
    detector)."""
    spread_mm: np.ndarray | None = None
    """(T,) mean distance of the search's readings from its point (None for one reading)."""


@dataclass(frozen=True)
class LayoutCheck:
    residual_mm: np.ndarray
    """(T,) distance of each landmark from where the fitted layout puts it (NaN: not found)."""
    expected_ras: np.ndarray
    """(T, 3) where the fitted layout puts each landmark."""
    confidence: np.ndarray
    """(T,) in [0, 1]."""
    plausible: bool
    reason: str
    """Why the scan is not plausible ("" when it is)."""

    @property
    def outliers(self) -> np.ndarray:
        """(T,) bool: landmarks further than :data:`OUTLIER_MM` from the fitted layout."""
        return np.nan_to_num(self.residual_mm, nan=np.inf) > OUTLIER_MM


def check_layout(reference_ras: np.ndarray, found_ras: np.ndarray) -> LayoutCheck:
    """Fit the reference layout (T, 3) to the found points (T, 3) and judge both."""
    reference = np.asarray(reference_ras, dtype=np.float64).reshape(-1, 3)
    found = np.asarray(found_ras, dtype=np.float64).reshape(-1, 3)
    count = len(found)
    try:
        fit = fit_affine_robust(reference, found)
    except ValueError as exc:
        nan = np.full(count, np.nan)
        return LayoutCheck(nan, np.full((count, 3), np.nan), np.zeros(count), False, str(exc))
    expected = fit.matrix[:3, :3] @ reference.T
    expected = expected.T + fit.matrix[:3, 3]
    residual = fit.residuals_mm
    confidence = _confidence(residual)
    singular = np.linalg.svd(fit.matrix[:3, :3], compute_uv=False)
    typical = float(np.nanmedian(residual))
    reason = ""
    if np.linalg.det(fit.matrix[:3, :3]) <= 0:
        reason = "the landmarks found form a mirrored layout"
    elif singular.min() < SCALE_RANGE[0] or singular.max() > SCALE_RANGE[1]:
        reason = (
            f"the landmarks found need the layout scaled by {singular.min():.2f}-"
            f"{singular.max():.2f} (a head needs {SCALE_RANGE[0]}-{SCALE_RANGE[1]})"
        )
    elif typical > MAX_TYPICAL_RESIDUAL_MM:
        reason = (
            f"the landmarks found lie a median {typical:.1f} mm from any affine copy of the "
            f"model's layout (a brain it knows: below {MAX_TYPICAL_RESIDUAL_MM:g} mm)"
        )
    if reason:
        confidence = np.zeros(count)
    return LayoutCheck(residual, expected, confidence, not reason, reason)


def _confidence(residual_mm: np.ndarray) -> np.ndarray:
    return np.exp(-((np.nan_to_num(residual_mm, nan=np.inf) / (2 * TOLERANCE_MM)) ** 2))


def search_confidence(
    reference_ras: np.ndarray,
    first_ras: np.ndarray,
    final_ras: np.ndarray,
    layout_starts_ras: np.ndarray | None,
    disagreement_mm: np.ndarray | None = None,
    spread_mm: np.ndarray | None = None,
) -> LandmarkConfidence:
    """The confidence of a landmark search: the layout check of the final points, except that
    a landmark the search replaced by the layout's position (its final point equals its
    second-search start) keeps the residual of its first detection, which disagreed.

    ``disagreement_mm`` (the distance between the agent's and a supervised detector's points,
    :mod:`medrl.supervised.ensemble`) and ``spread_mm`` (the mean distance of the search's
    readings from its point: the agent's, the detector's and their mirror readings) are carried
    along for the confidence file; they do not change the confidence. Added to the residual,
    the spread ranked the errors above 5 mm better on the scans of the leave-one-template-out
    folds (AUROC 0.81 against 0.74) but worse on those of ``bench_confidence`` (0.83 against
    0.85, BENCHMARKS.md): no consistent gain."""
    final = check_layout(reference_ras, final_ras)
    residual = final.residual_mm.copy()
    replaced = np.zeros(len(residual), dtype=bool)
    if layout_starts_ras is not None:
        starts = np.asarray(layout_starts_ras, dtype=np.float64).reshape(-1, 3)
        same = np.linalg.norm(np.asarray(final_ras) - starts, axis=1) < 1e-6
        replaced = np.isfinite(starts).all(axis=1) & same
    if replaced.any():
        first = check_layout(reference_ras, first_ras).residual_mm
        residual[replaced] = first[replaced]
    if not final.plausible:
        flags = ("scan",) * len(residual)
        zero = np.zeros(len(residual))
        return LandmarkConfidence(
            residual, zero, flags, False, final.reason, disagreement_mm, spread_mm
        )
    far = np.nan_to_num(residual, nan=np.inf) > OUTLIER_MM
    flags = tuple(
        "layout" if r else ("check" if f else "ok") for r, f in zip(replaced, far, strict=True)
    )
    return LandmarkConfidence(
        residual, _confidence(residual), flags, True, "", disagreement_mm, spread_mm
    )
