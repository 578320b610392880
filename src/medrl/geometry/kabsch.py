"""The least-squares rigid map between two point sets (Kabsch), in world RAS mm.

One validated numpy fit for one-off uses (the truth of a registration pair, benchmarks);
:func:`medrl.tasks.rigid.fit_rigid` is the batched torch form the rigid task needs per step.
"""

from __future__ import annotations

import numpy as np


def fit_rigid_ras(source_ras: np.ndarray, target_ras: np.ndarray) -> np.ndarray:
    """The least-squares rigid map of ``source_ras`` onto ``target_ras`` as a (4, 4) matrix.

    Kabsch's method: a proper rotation (det +1, never a reflection) and a translation, no
    scaling, minimising ``sum |R p + t - q|^2`` over the point pairs. For two brains with the
    same landmarks (e.g. AFIDs) this is their "true" rigid registration.

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
    source_centre, target_centre = source.mean(axis=0), target.mean(axis=0)
    covariance = (source - source_centre).T @ (target - target_centre)
    u, _, vt = np.linalg.svd(covariance)
    spread = np.linalg.svd(source - source_centre, compute_uv=False)
    if spread[1] <= 1e-9 * max(spread[0], 1e-12):
        raise ValueError("the source points are collinear: the rotation is undetermined")
    reflection = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, reflection]) @ u.T
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = target_centre - rotation @ source_centre
    return matrix
