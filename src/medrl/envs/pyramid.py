"""A scan prepared for the environment: normalised, smoothed and resampled once per scale level."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
import torch

from medrl.data.datalist import Case
from medrl.io.images import Volume, resample_isotropic, same_grid


@dataclass(frozen=True, eq=False)
class LevelImage:
    """The scan at one scale level, as a tensor with its world geometry."""

    tensor: torch.Tensor  # (1, 1, nz, ny, nx) float32
    ras_to_index: torch.Tensor  # (4, 4) float32: RAS mm -> continuous (i, j, k)
    size_xyz: torch.Tensor  # (3,) float32


@dataclass(frozen=True, eq=False)
class ScanPyramid:
    """One scan at every scale level, plus what the environment needs to know about it."""

    levels: tuple[LevelImage, ...]
    centre_ras: np.ndarray  # (3,) geometric centre of the scan
    intensity_centre_ras: np.ndarray  # (3,) intensity-weighted centroid (where searches start)
    index_to_ras: np.ndarray  # (4, 4) of the original grid
    size_xyz: np.ndarray  # (3,) of the original grid
    source: str
    partner: ScanPyramid | None = None
    """A registration pair's fixed image (this scan is the moving one); None otherwise."""
    siblings: tuple[ScanPyramid, ...] = ()
    """Other contrasts of the same brain on the same grid (training only: the contrast-mix
    augmentation blends them); each sibling has none of its own."""

    def contains_ras(self, points_ras: torch.Tensor, margin_vox: float = 0.0) -> torch.Tensor:
        """Whether points (..., 3) lie inside the original image grid."""
        ras_to_index = torch.as_tensor(
            np.linalg.inv(self.index_to_ras), dtype=points_ras.dtype, device=points_ras.device
        )
        index = points_ras @ ras_to_index[:3, :3].T + ras_to_index[:3, 3]
        size = torch.as_tensor(self.size_xyz, dtype=points_ras.dtype, device=points_ras.device)
        inside = (index >= -0.5 + margin_vox) & (index <= size - 0.5 - margin_vox)
        return inside.all(dim=-1)


def level_spacings_mm(scan: ScanPyramid) -> list[float]:
    """The sample spacing of each level of ``scan`` (mm, from its world-to-index map)."""
    return [
        float(1.0 / torch.linalg.norm(level.ras_to_index[:3, :3].double(), dim=1).mean())
        for level in scan.levels
    ]


def coarser_levels(scan: ScanPyramid) -> list[int]:
    """For each level of ``scan``, the level with the next larger spacing (itself for the
    coarsest), whatever order the levels are listed in."""
    spacings = level_spacings_mm(scan)
    out = []
    for index, spacing in enumerate(spacings):
        larger = [(s, i) for i, s in enumerate(spacings) if s > spacing * 1.001]
        out.append(min(larger)[1] if larger else index)
    return out


def normalise_intensity(array: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile of the scan to 0..1 (robust to outliers and background)."""
    low, high = np.percentile(array, [1.0, 99.0])
    if high <= low:
        low, high = float(array.min()), float(array.max())
    scale = 1.0 / max(high - low, 1e-6)
    return ((array - low) * scale).astype(np.float32)


def _level_volume(volume: Volume, spacing_mm: float) -> Volume:
    """Smooth (anti-aliasing) and resample to isotropic ``spacing_mm``."""
    finest = float(np.min(volume.spacing_mm))
    image = volume.to_sitk()
    if spacing_mm > finest * 1.01:
        sigma_mm = 0.5 * np.sqrt(max(spacing_mm**2 - finest**2, 0.0))
        image = sitk.SmoothingRecursiveGaussian(image, float(sigma_mm))
    smoothed = Volume.from_sitk(image, source=volume.source)
    same_grid = np.allclose(volume.spacing_mm, spacing_mm)
    return smoothed if same_grid else resample_isotropic(smoothed, spacing_mm)


def build_pyramid(
    volume: Volume,
    spacings_mm: list[float],
    device: torch.device | str = "cpu",
    normalise: bool = True,
) -> ScanPyramid:
    """Prepare ``volume`` for the environment at each of ``spacings_mm`` (one per level); its
    intensities are normalised (:func:`normalise_intensity`) unless ``normalise`` is False
    (maps already in [0, 1], such as tissue probabilities)."""
    normalised = Volume(
        array=normalise_intensity(volume.array) if normalise else volume.array,
        spacing_mm=volume.spacing_mm,
        origin_lps=volume.origin_lps,
        direction_lps=volume.direction_lps,
        source=volume.source,
    )
    levels: list[LevelImage] = []
    # Finest level first; each coarser level is smoothed from the next finer one (cheaper
    # than smoothing the full-resolution scan again, and the same Gaussian overall).
    order = np.argsort(spacings_mm)
    built: dict[int, Volume] = {}
    source = normalised
    for index in order:
        source = _level_volume(source, float(spacings_mm[index]))
        built[int(index)] = source
    for index in range(len(spacings_mm)):
        level = built[index]
        levels.append(
            LevelImage(
                tensor=torch.from_numpy(np.ascontiguousarray(level.array, dtype=np.float32))[
                    None, None
                ].to(device),
                ras_to_index=torch.as_tensor(level.ras_to_index, dtype=torch.float32).to(device),
                size_xyz=torch.as_tensor(level.shape_xyz, dtype=torch.float32).to(device),
            )
        )
    centre_ras, intensity_centre_ras = _centres_ras(normalised)
    return ScanPyramid(
        levels=tuple(levels),
        centre_ras=centre_ras,
        intensity_centre_ras=intensity_centre_ras,
        index_to_ras=np.asarray(volume.index_to_ras, dtype=np.float64),
        size_xyz=np.asarray(volume.shape_xyz, dtype=np.float64),
        source=volume.source,
    )


def _centres_ras(normalised: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The grid centre and the intensity-weighted centroid of a normalised volume (RAS mm)."""
    shape_xyz = np.asarray(normalised.shape_xyz, dtype=np.float64)
    centre_index = (shape_xyz - 1) / 2
    index_to_ras = np.asarray(normalised.index_to_ras, dtype=np.float64)
    weights = np.clip(normalised.array, 0, None)
    # the centroid from the three marginal profiles (sums over planes, in float64): the same
    # moments as weighting every voxel by its index, without (k, j, i) arrays of the volume
    planes_k = weights.sum(axis=(1, 2), dtype=np.float64)
    rows = weights.sum(axis=0, dtype=np.float64)  # (j, i)
    total = planes_k.sum()
    if total > 0:
        centroid_index = (
            np.array(
                [
                    rows.sum(axis=0) @ np.arange(rows.shape[1]),
                    rows.sum(axis=1) @ np.arange(rows.shape[0]),
                    planes_k @ np.arange(planes_k.shape[0]),
                ]
            )
            / total
        )
    else:
        centroid_index = centre_index
    to_ras = index_to_ras[:3, :3]
    return (
        to_ras @ centre_index + index_to_ras[:3, 3],
        to_ras @ centroid_index + index_to_ras[:3, 3],
    )


def intensity_centre_ras(volume: Volume) -> np.ndarray:
    """(3,) where :func:`build_pyramid` puts a scan's ``intensity_centre_ras``."""
    normalised = replace(volume, array=normalise_intensity(volume.array))
    return _centres_ras(normalised)[1]


def build_pair_pyramid(
    moving: Volume, fixed: Volume, spacings_mm: list[float], device: torch.device | str = "cpu"
) -> ScanPyramid:
    """The moving image's pyramid with the fixed image's as its ``partner`` (registration)."""
    partner = build_pyramid(fixed, spacings_mm, device)
    return replace(build_pyramid(moving, spacings_mm, device), partner=partner)


def _same_anatomy(a: Case, b: Case) -> bool:
    """The same brain: identical landmarks, or (without landmarks) identical label maps."""
    if a.landmarks is not None and b.landmarks is not None:
        pa, pb = np.asarray(a.landmarks.points_ras), np.asarray(b.landmarks.points_ras)
        same_names = tuple(a.landmarks.names) == tuple(b.landmarks.names)
        return same_names and pa.shape == pb.shape and np.array_equal(pa, pb, equal_nan=True)
    if a.landmarks is not None or b.landmarks is not None:
        return False
    if a.labels is None or b.labels is None:
        return False
    return same_grid(a.labels, b.labels) and np.array_equal(a.labels.array, b.labels.array)


def sibling_groups(cases: list[Case]) -> list[list[int]]:
    """For each case, the indices of its siblings: the other single-image cases (not
    registration pairs) whose image lies on the same grid and which mark the same anatomy
    (identical landmarks, or identical label maps) -- other contrasts of the same brain, as
    templates and co-registered multi-contrast scans come."""
    out: list[list[int]] = [[] for _ in cases]
    for i, a in enumerate(cases):
        if a.partner is not None:
            continue
        for j in range(i + 1, len(cases)):
            b = cases[j]
            if b.partner is None and same_grid(a.volume, b.volume) and _same_anatomy(a, b):
                out[i].append(j)
                out[j].append(i)
    return out


def with_siblings_of(cases: list[Case], shard: list[int]) -> list[int]:
    """The cases a process holding ``shard`` (indices into ``cases``) must prepare: its own and
    their siblings (:func:`sibling_groups` over all of ``cases``), so that a brain's contrasts
    stay together whichever process a case is dealt to."""
    groups = sibling_groups(cases)
    return sorted({*shard, *(j for i in shard for j in groups[i])})


def case_pyramids(
    cases: list[Case], spacings_mm: list[float], device: torch.device | str = "cpu"
) -> list[ScanPyramid]:
    """The pyramid of every case (with its ``partner``'s for registration pairs, and its
    ``siblings``, see :func:`sibling_groups`); an image shared by several cases is prepared
    once."""
    built: dict[int, ScanPyramid] = {}

    def pyramid(volume: Volume) -> ScanPyramid:
        if id(volume) not in built:
            built[id(volume)] = build_pyramid(volume, spacings_mm, device)
        return built[id(volume)]

    out = []
    for case in cases:
        scan = pyramid(case.volume)
        if case.partner is not None:
            scan = replace(scan, partner=pyramid(case.partner.volume))
        out.append(scan)
    return attach_siblings(out, cases)


def attach_siblings(scans: list[ScanPyramid], cases: list[Case]) -> list[ScanPyramid]:
    """``scans`` (one per case, none with siblings yet) with each one's ``siblings`` (see
    :func:`sibling_groups`) set to the other scans of its group."""
    return [
        replace(scan, siblings=tuple(scans[j] for j in group)) if group else scan
        for scan, group in zip(scans, sibling_groups(cases), strict=True)
    ]
