"""Paired comparisons of two models evaluated on the same test items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medrl.errors import InputError

__all__ = ["paired_bootstrap"]

_CONFIDENCE = 0.95
_MAX_DRAWS_PER_CHUNK = 4_000_000  # cluster draws held in memory at once (32 MB of int64)


def _vector(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be numbers: {error}") from None
    if array.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} has {int(np.sum(~np.isfinite(array)))} non-finite values")
    return array


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    clusters: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean per-item difference ``b - a`` with a 95 % cluster-bootstrap percentile interval.

    ``a[i]`` and ``b[i]`` are the scores of two models on item ``i`` (e.g. IoU or hit).
    ``clusters[i]`` labels items that are not independent, e.g. the test item id when the
    same item was evaluated under several seeds: whole clusters are resampled with
    replacement, so repeating items does not narrow the interval. Without ``clusters`` each
    item is its own cluster. Each bootstrap replicate is the mean difference over the items of
    the drawn clusters.

    Returns:
        ``{"mean_diff", "ci_low", "ci_high", "n_items", "n_clusters"}``.

    Raises:
        InputError: ``a`` and ``b`` (and ``clusters``) differ in length, are empty, not
            one-dimensional or not finite, or ``n_boot`` < 1.
    """
    first, second = _vector(a, "a"), _vector(b, "b")
    if first.shape != second.shape:
        raise InputError(f"a and b differ in length: {first.size} and {second.size} items")
    if first.size == 0:
        raise InputError("a and b are empty: nothing to compare")
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    diff = second - first
    if clusters is None:
        labels = np.arange(diff.size)
    else:
        cluster_array = np.asarray(clusters)
        if cluster_array.shape != diff.shape:
            raise InputError(
                f"clusters has {cluster_array.size} labels for {diff.size} items "
                f"(shape {cluster_array.shape})"
            )
        _, labels = np.unique(cluster_array, return_inverse=True)
        labels = labels.reshape(-1)
    n_clusters = int(labels.max()) + 1
    sums = np.bincount(labels, weights=diff, minlength=n_clusters)
    counts = np.bincount(labels, minlength=n_clusters).astype(np.float64)

    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n_clusters)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        drawn = rng.integers(0, n_clusters, size=(stop - start, n_clusters))
        replicates[start:stop] = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = 100.0 * (1.0 - _CONFIDENCE) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return {
        "mean_diff": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n_items": int(diff.size),
        "n_clusters": n_clusters,
    }
