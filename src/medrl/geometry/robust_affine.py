"""A robust affine map between two layouts of the same targets (world RAS mm).

The targets of a scan keep their relations from brain to brain: O'Neil et al. (2018) fit an
over-determined affine map from a reference layout to the detections, so detections that
disagree with the others show up as large residuals and the map says where they should be.
Here the fit is iteratively reweighted least squares: first Huber weights (a residual beyond
``huber_scale`` robust standard deviations, 1.4826 x the median residual and at least
``min_scale_mm``, gets a weight inversely proportional to its size), then Tukey's biweight,
which gives a residual beyond ``tukey_scale`` robust standard deviations no weight at all, so
gross failures do not pull the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "AffineFit",
    "affine_lstsq",
    "apply_affine",
    "fit_affine_robust",
    "mean_layout",
    "robust_weights",
]


@dataclass(frozen=True)
class AffineFit:
    matrix: np.ndarray
    """(4, 4) homogeneous map from the source layout to the target layout (RAS mm)."""
    residuals_mm: np.ndarray
    """(N,) distance between each target point and its mapped source point (NaN where a
    point was missing)."""
    weights: np.ndarray
    """(N,) the final robust weight of each pair (0 where a point was missing)."""


def apply_affine(matrix: np.ndarray, points_ras: np.ndarray) -> np.ndarray:
    """(N, 3) points mapped by a (4, 4) homogeneous matrix."""
    points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def robust_weights(
    residuals_mm: np.ndarray,
    tukey: bool,
    min_count: int,
    huber_scale: float = 1.345,
    tukey_scale: float = 4.685,
    min_scale_mm: float = 0.5,
) -> np.ndarray:
    """IRLS weights (N,) of point pairs from their residuals (N,): Huber's, or with ``tukey``
    Tukey's biweight, on the robust scale 1.4826 x the median residual (at least
    ``min_scale_mm``). Tukey's weights that leave fewer than ``min_count`` pairs (too few to
    determine the map) fall back to Huber's."""
    scale = max(1.4826 * float(np.median(residuals_mm)), min_scale_mm)
    huber = np.minimum(1.0, huber_scale * scale / np.maximum(residuals_mm, 1e-12))
    if not tukey:
        return huber
    weights = np.clip(1.0 - (residuals_mm / (tukey_scale * scale)) ** 2, 0.0, None) ** 2
    return weights if np.count_nonzero(weights) >= min_count else huber


def fit_affine_robust(
    source_ras: np.ndarray,
    target_ras: np.ndarray,
    iterations: int = 10,
    huber_scale: float = 1.345,
    tukey_scale: float = 4.685,
    min_scale_mm: float = 0.5,
) -> AffineFit:
    """The affine map taking ``source_ras`` (N, 3) onto ``target_ras`` (N, 3), robustly.

    Rows with a non-finite coordinate in either set are left out. ValueError when fewer than
    4 pairs remain or they are coplanar (an affine map is then not determined). The first
    half of the ``iterations`` reweight with Huber's weights, the rest with Tukey's.
    """
    source = np.asarray(source_ras, dtype=np.float64).reshape(-1, 3)
    target = np.asarray(target_ras, dtype=np.float64).reshape(-1, 3)
    if source.shape != target.shape:
        raise ValueError(f"layouts of different sizes: {source.shape} and {target.shape}")
    usable = np.isfinite(source).all(axis=1) & np.isfinite(target).all(axis=1)
    design = np.c_[source[usable], np.ones(int(usable.sum()))]
    if len(design) < 4 or np.linalg.matrix_rank(design - design.mean(axis=0)) < 3:
        raise ValueError(
            f"{int(usable.sum())} usable point pairs do not determine an affine map "
            "(at least 4, not coplanar)"
        )
    goal = target[usable]
    weights = np.ones(len(design))
    for iteration in range(iterations):
        root = np.sqrt(weights)[:, None]
        solution, *_ = np.linalg.lstsq(design * root, goal * root, rcond=None)
        residuals = np.linalg.norm(design @ solution - goal, axis=1)
        tukey = iteration >= iterations // 2
        weights = robust_weights(residuals, tukey, 4, huber_scale, tukey_scale, min_scale_mm)
    matrix = np.eye(4)
    matrix[:3, :3] = solution[:3].T
    matrix[:3, 3] = solution[3]
    all_residuals = np.full(len(source), np.nan)
    all_residuals[usable] = np.linalg.norm(apply_affine(matrix, source[usable]) - goal, axis=1)
    all_weights = np.zeros(len(source))
    all_weights[usable] = weights
    return AffineFit(matrix, all_residuals, all_weights)


def affine_lstsq(source_ras: np.ndarray, target_ras: np.ndarray) -> np.ndarray:
    """(4, 4) least-squares affine map taking ``source_ras`` onto ``target_ras`` (N, 3)."""
    design = np.c_[source_ras, np.ones(len(source_ras))]
    solution, *_ = np.linalg.lstsq(design, target_ras, rcond=None)
    matrix = np.eye(4)
    matrix[:3, :] = solution.T
    return matrix


def _aligned(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` (N, 3) mapped by the least-squares affine map onto ``target`` (N, 3)."""
    return apply_affine(affine_lstsq(source, target), source)


def mean_layout(layouts_ras: list[np.ndarray], iterations: int = 20) -> np.ndarray:
    """The mean shape (N, 3) of several layouts of the same targets, each (N, 3) and complete,
    up to affine maps: generalised Procrustes analysis with affine alignment. Every layout is
    mapped onto the current mean by least squares and the maps' results averaged; the mean is
    kept in the first layout's frame (mapped onto it after each round), so it stays a layout of
    head size and orientation. One layout is returned as it is.

    Each brain differs from a new one by more than an affine map; the mean of several lies
    closer to a new brain than a typical one of them does (docs/tasks.md: the AFIDs of four
    templates), and does not depend on which came first.
    """
    layouts = [np.asarray(layout, dtype=np.float64).reshape(-1, 3) for layout in layouts_ras]
    if not layouts:
        raise ValueError("no layout to average")
    if any(layout.shape != layouts[0].shape for layout in layouts):
        raise ValueError(f"layouts of different sizes: {[layout.shape for layout in layouts]}")
    if not all(np.isfinite(layout).all() for layout in layouts):
        raise ValueError("a layout to average has a missing (non-finite) point")
    mean = layouts[0].copy()
    if len(layouts) == 1:
        return mean
    for _ in range(iterations):
        aligned = np.mean([_aligned(layout, mean) for layout in layouts], axis=0)
        new = _aligned(aligned, layouts[0])
        if np.abs(new - mean).max() < 1e-9:
            return new
        mean = new
    return mean
