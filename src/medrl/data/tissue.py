"""Tissue maps of a brain, for synthetic contrasts in training (``augment.tissue_maps``).

The contrast mix (:mod:`medrl.data.augment`) blends a scan with its *siblings*, other images of
the same brain on the same grid. A brain that comes in one contrast with its skull-stripped copy
(T1w and T1w brain) can then only look like T1w: intracranial CSF and bone stay equally dark
whatever lookup table follows. Its tissue maps as further siblings change that: a blend of the
T1w with its CSF map makes the ventricles bright and the skull dark, as in T2w; with its grey
matter map, grey brighter than white, as in PD. The maps come from a Gaussian mixture of the
brain's skull-stripped contrasts (all of them, as one vector per voxel), fitted inside the
brain: each map is one component's posterior probability, in [0, 1], and 0 outside the brain.

A sibling group gets maps only when it holds an image with skull and a skull-stripped one
(:func:`stripped_members`): the brain is where every stripped image is not exactly 0. Groups
without both are left as they are (a group of stripped images alone cannot be told from
images with skull whose background is exactly 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from medrl.data.datalist import Case
from medrl.envs.pyramid import ScanPyramid, sibling_groups
from medrl.errors import InputError
from medrl.io.images import Volume

TISSUE_CLASSES = 3
"""Components of the mixture: on a brain, CSF, grey and white matter (in no fixed order)."""
_SAMPLE = 200_000
_CHUNK = 250_000
"""Voxels per block when the posteriors of the whole brain are computed."""
_SIGNAL = 0.1
"""Head: where an image is above this fraction of its tissue level (background noise is not)."""
_STRIPPED = 0.2
"""An image is stripped when it is exactly 0 over more than this fraction of the head."""
_ITERATIONS = 60


def tissue_posteriors(
    channels: Sequence[np.ndarray], mask: np.ndarray, classes: int = TISSUE_CLASSES, seed: int = 0
) -> np.ndarray:
    """(classes, *mask.shape) posterior probabilities of a diagonal Gaussian mixture fitted to
    the voxels of ``mask`` (each voxel a vector of the ``channels``' values, each channel
    standardised inside the mask); 0 outside the mask. Seeded: the same input gives the same
    maps. The components start from k-means (:func:`_kmeans`)."""
    inside = np.asarray(mask, dtype=bool)
    if inside.sum() < 10 * classes:
        raise ValueError(
            f"a tissue mixture needs a mask of at least {10 * classes} voxels, "
            f"got {int(inside.sum())}"
        )
    values = np.stack([np.asarray(c, dtype=np.float64)[inside] for c in channels], axis=1)
    values = (values - values.mean(axis=0)) / (values.std(axis=0) + 1e-9)
    rng = np.random.default_rng(seed)
    fit = values[rng.choice(len(values), size=min(_SAMPLE, len(values)), replace=False)]
    means = _kmeans(fit, classes)
    labels = _nearest(fit, means)
    weights = np.bincount(labels, minlength=classes) / len(fit) + 1e-6
    variances = np.stack([fit[labels == k].var(axis=0) if (labels == k).sum() > 1
                          else fit.var(axis=0) for k in range(classes)]) + 1e-4  # fmt: skip
    for _ in range(_ITERATIONS):
        resp = _responsibilities(fit, weights, means, variances)
        totals = resp.sum(axis=0) + 1e-9
        weights = totals / totals.sum()
        means = (resp.T @ fit) / totals[:, None]
        variances = (resp.T @ fit**2) / totals[:, None] - means**2 + 1e-4
    posterior = np.concatenate([
        _responsibilities(values[a : a + _CHUNK], weights, means, variances)
        for a in range(0, len(values), _CHUNK)
    ])  # fmt: skip
    out = np.zeros((classes, *inside.shape), dtype=np.float32)
    for k in range(classes):
        out[k][inside] = posterior[:, k]
    return out


def _kmeans(values: np.ndarray, classes: int, iterations: int = 30) -> np.ndarray:
    """(K, C) k-means centres, started from bins of equal width (not equal count) along the
    values' first principal axis, so that a small tissue (CSF) gets a centre of its own."""
    centred = values - values.mean(axis=0)
    axis = np.linalg.svd(centred[:: max(1, len(values) // 20_000)], full_matrices=False)[2][0]
    score = centred @ axis
    low, high = np.percentile(score, [2.0, 98.0])
    edges = np.linspace(low, high, classes + 1)
    bins = np.clip(np.searchsorted(edges, score) - 1, 0, classes - 1)
    means = np.stack([values[bins == k].mean(axis=0) if (bins == k).any()
                      else values.mean(axis=0) for k in range(classes)])  # fmt: skip
    for _ in range(iterations):
        labels = _nearest(values, means)
        means = np.stack([values[labels == k].mean(axis=0) if (labels == k).any()
                          else means[k] for k in range(classes)])  # fmt: skip
    return means


def _nearest(values: np.ndarray, means: np.ndarray) -> np.ndarray:
    return np.argmin(((values[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)


def _responsibilities(
    values: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray
) -> np.ndarray:
    """(N, K) posterior of each component for each row of ``values`` (N, C)."""
    log_p = (
        np.log(weights)[None]
        - 0.5 * np.log(2 * np.pi * variances).sum(axis=1)[None]
        - 0.5 * (((values[:, None, :] - means[None]) ** 2) / variances[None]).sum(axis=2)
    )
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)


def stripped_members(volumes: Sequence[Volume]) -> list[int]:
    """Indices of the skull-stripped images among images of one brain on one grid: those that
    are exactly 0 over more than a fifth of the head, the voxels where any image is above a
    tenth of its tissue level (so neither an exactly-0 background nor a noisy one counts)."""
    arrays = [np.asarray(v.array) for v in volumes]
    head = np.logical_or.reduce([head_voxels(a) for a in arrays])
    size = int(head.sum())
    if size == 0:
        return []
    return [i for i, a in enumerate(arrays) if int((head & (a == 0)).sum()) > _STRIPPED * size]


def tissue_level(array: np.ndarray) -> float:
    """The median of the values above the mean: the level of the head's tissue, whatever the
    intensity range (0 for a constant image)."""
    above = array[array > array.mean()]
    return float(np.median(above)) if above.size else 0.0


def head_voxels(array: np.ndarray) -> np.ndarray:
    """Where ``array`` is above a tenth of its tissue level: the head, not the background
    (exactly 0 or noise)."""
    return array > _SIGNAL * tissue_level(array)


def tissue_maps(volumes: Sequence[Volume]) -> list[Volume]:
    """The tissue maps of one brain given as ``volumes`` (its images on one grid; see the
    module's docstring), or none when they are not an image with skull and a stripped one."""
    stripped = stripped_members(volumes)
    if not stripped or len(stripped) == len(volumes):
        return []
    mask = np.logical_and.reduce([np.asarray(volumes[i].array) != 0 for i in stripped])
    try:
        posteriors = tissue_posteriors([volumes[i].array for i in stripped], mask)
    except ValueError as error:
        raise InputError(
            f"cannot map the tissues of this brain's skull-stripped images: {error}",
            ", ".join(volumes[i].source for i in stripped),
        ) from error
    grid = volumes[stripped[0]]
    return [
        Volume(p, grid.spacing_mm, grid.origin_lps, grid.direction_lps, f"{grid.source} tissue {k}")
        for k, p in enumerate(posteriors)
    ]


def with_tissue_siblings(
    scans: list[ScanPyramid], cases: Sequence[Case], prepare: Callable[[Volume], ScanPyramid]
) -> list[ScanPyramid]:
    """``scans`` (one per case, siblings attached) with each sibling group's tissue maps,
    prepared by ``prepare`` as the scans were, added to every member's ``siblings``."""
    out = list(scans)
    done: set[int] = set()
    for index, group in enumerate(sibling_groups(list(cases))):
        if index in done or not group:
            continue
        members = sorted({index, *group})
        done.update(members)
        maps = tuple(prepare(v) for v in tissue_maps([cases[j].volume for j in members]))
        for j in members:
            out[j] = replace(out[j], siblings=(*out[j].siblings, *maps))
    return out
