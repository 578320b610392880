"""The least-squares rigid map between two point sets (Kabsch), in world RAS mm.

One validated numpy fit for one-off uses (the truth of a registration pair, benchmarks);
:func:`medrl.tasks.rigid.fit_rigid` is the batched torch form the rigid task needs per step.
"""

from __future__ import annotations

import numpy as np

from medrl.geometry.robust_affine import apply_affine, robust_weights


def fit_rigid_ras(
    source_ras: np.ndarray, target_ras: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """The least-squares rigid map of ``source_ras`` onto ``target_ras`` as a (4, 4) matrix.

    Kabsch's method: a proper rotation (det +1, never a reflection) and a translation, no
    scaling, minimising ``sum w |R p + t - q|^2`` over the point pairs (``weights`` w >= 0,
    default all 1). For two brains with the same landmarks (e.g. AFIDs) this is their "true"
    rigid registration.

    Raises:
        ValueError: shapes differ or are not (N, 3), fewer than 3 points, non-finite values,
            or the source points are (nearly) collinear (the rotation is then undetermined).
    """
    source = np.asarray(source_ras, dtype=np.float64)
    target = np.asarray(target_ras, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 3 or source.shape != target.shape:
        raise ValueError(f"need two (N, 3) point sets, got {source.shape} and {target.shape}")
    if len(source) < 3:
        raise ValueError(f"a rigid fit needs at least 3 points, got {len(source)}")
    if not (np.all(np.isfinite(source)) and np.all(np.isfinite(target))):
        raise ValueError("the points have NaN or infinite coordinates")
    w = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(source),) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError(f"need {len(source)} finite non-negative weights, not all 0")
    source_centre = (w[:, None] * source).sum(axis=0) / w.sum()
    target_centre = (w[:, None] * target).sum(axis=0) / w.sum()
    covariance = ((source - source_centre) * w[:, None]).T @ (target - target_centre)
    u, _, vt = np.linalg.svd(covariance)
    spread = np.linalg.svd((source - source_centre) * np.sqrt(w)[:, None], compute_uv=False)
    if spread[1] <= 1e-9 * max(spread[0], 1e-12):
        raise ValueError("the source points are collinear: the rotation is undetermined")
    reflection = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, reflection]) @ u.T
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = target_centre - rotation @ source_centre
    return matrix


def fit_rigid_robust(
    source_ras: np.ndarray, target_ras: np.ndarray, iterations: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rigid map of ``source_ras`` onto ``target_ras`` (both (N, 3)) that detection
    failures do not pull: iteratively reweighted Kabsch, Huber's weights for the first half of
    the ``iterations`` and Tukey's biweight after (a pair far off gets weight 0), as
    :func:`medrl.geometry.robust_affine.fit_affine_robust` does for affine maps. Returns the
    (4, 4) matrix, the residuals (N,) in mm and the final weights (N,)."""
    source = np.asarray(source_ras, dtype=np.float64)
    target = np.asarray(target_ras, dtype=np.float64)
    weights = np.ones(len(source))
    for iteration in range(iterations):
        matrix = fit_rigid_ras(source, target, weights)
        residuals = np.linalg.norm(apply_affine(matrix, source) - target, axis=1)
        weights = robust_weights(residuals, iteration >= iterations // 2, 3)
    matrix = fit_rigid_ras(source, target, weights)
    residuals = np.linalg.norm(apply_affine(matrix, source) - target, axis=1)
    return matrix, residuals, weights
