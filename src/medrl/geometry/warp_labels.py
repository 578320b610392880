"""Label maps moved with the evaluation scenarios, and the transforms those scenarios share.

:func:`medrl.evaluation.move_case` and :func:`medrl.evaluation.deform_case` move a test scan's
anatomy inside its own grid; the functions here build their transforms
(:func:`rigid_resample_transform`, :func:`elastic_sample_points_ras`), so a label map moved by
:func:`move_labels` / :func:`deform_labels` follows the image exactly. Label maps are resampled
with nearest neighbour onto the *image's* grid: a structure moved beyond the (often cropped)
label-map grid is not cut off.

Frames: world points are RAS mm; SimpleITK transforms work in LPS mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from medrl.config import AugmentConfig
from medrl.data.augment import (
    AugmentParams,
    inverse_transform_points,
    sample_params,
    stack_params,
    transform_points,
)
from medrl.io.images import Volume

__all__ = [
    "LocalWarp",
    "RigidMotion",
    "deform_labels",
    "elastic_sample_points_ras",
    "grid_centre_ras",
    "labels_on_grid",
    "move_labels",
    "rigid_resample_transform",
]

_FLIP = np.array([-1.0, -1.0, 1.0])


class RigidMotion(Protocol):
    """A rigid motion in RAS, like :class:`medrl.evaluation.RigidTransform`."""

    @property
    def translation_mm(self) -> np.ndarray:
        """(3,) shift in RAS mm."""
        ...

    def rotation_ras(self) -> np.ndarray:
        """(3, 3) rotation matrix in RAS."""
        ...


@dataclass(frozen=True)
class LocalWarp:
    """A radial swelling (``strength`` < 0) or shrinking (> 0) of the anatomy at
    ``centre_ras`` (a point of the scan before any warp): the training augmentation's local
    warp (``augment.local_warps``), the displacement ``s (x - c) exp(-|x - c|^2 / 2 sigma^2)``
    of the sampled points. At the centre the anatomy's volume changes by ``1 / (1 + s)^3``
    (s = -0.2: 1.95 times larger; overlapping warps add up). ``|s|`` is kept below 0.5, well
    inside what one warp can take without folding; evaluations check the whole field."""

    centre_ras: tuple[float, float, float]
    sigma_mm: float
    strength: float

    def __post_init__(self) -> None:
        if not (len(self.centre_ras) == 3 and np.all(np.isfinite(self.centre_ras))):
            raise ValueError(
                f"a local warp's centre must be 3 finite RAS mm, got {self.centre_ras}"
            )
        if not self.sigma_mm > 0:
            raise ValueError(f"a local warp's sigma must be > 0 mm, got {self.sigma_mm}")
        if not abs(self.strength) < 0.5:
            raise ValueError(f"a local warp's strength must be in (-0.5, 0.5): {self.strength}")


def grid_centre_ras(volume: Volume) -> np.ndarray:
    """(3,) RAS position of the centre of ``volume``'s grid (continuous index (n - 1) / 2)."""
    centre_index = (np.asarray(volume.shape_xyz, dtype=np.float64) - 1) / 2
    return volume.index_to_world(centre_index[None], "RAS")[0]


def rigid_resample_transform(image: Volume, rigid: RigidMotion) -> sitk.AffineTransform:
    """The SimpleITK transform that moves anatomy rigidly about ``image``'s grid centre.

    The moved image is ``I'(x) = I(R^-1 (x - c - t) + c)`` (rotation R, shift t in RAS, c the
    grid centre); resampling wants output point -> input point, i.e. this inverse motion, in
    LPS: ``sitk.Resample(input, reference, transform, ...)``.
    """
    centre_ras = grid_centre_ras(image)
    # Rotation matrix in RAS, then in LPS (F R F with F = diag(-1, -1, 1)).
    rotation_lps = np.diag(_FLIP) @ rigid.rotation_ras() @ np.diag(_FLIP)
    inverse = sitk.AffineTransform(3)
    inverse.SetMatrix(rotation_lps.T.flatten().tolist())
    inverse.SetCenter((centre_ras * _FLIP).tolist())
    inverse.SetTranslation((-(rotation_lps.T @ (rigid.translation_mm * _FLIP))).tolist())
    return inverse


def elastic_sample_points_ras(
    image: Volume, elastic_mm: float, seed: int, local: Sequence[LocalWarp] = ()
) -> tuple[AugmentParams, np.ndarray]:
    """The smooth non-affine warp of :func:`medrl.evaluation.deform_case` on ``image``'s grid.

    The field is the training augmentation's elastic displacement alone (``elastic_mm``
    amplitude, seeded, about the grid centre) plus the ``local`` warps, each centred where the
    elastic field puts its centre's anatomy: the warped image is ``I'(x) = I(x + d(x))``.
    Returns the parameters (to move points with
    :func:`medrl.data.augment.inverse_transform_points`) and ``x + d(x)`` for every voxel
    ``x`` of the grid, (nz * ny * nx, 3) float32 RAS in array order (z, y, x).
    """
    spatial = AugmentConfig(
        rotation_deg=0.0, scale=0.0, anisotropic_scale=0.0, translation_mm=0.0,
        elastic_mm=elastic_mm, gamma=0.0, contrast=0.0, bias_field=0.0, noise_std=0.0,
    )  # fmt: skip
    params = stack_params([sample_params(spatial, seed, grid_centre_ras(image))])
    if local:
        anatomy_ras = torch.tensor([[w.centre_ras for w in local]], dtype=torch.float64)
        params = replace(
            params,  # bumps centred on the y with y + d_elastic(y) = the anatomy's point
            bump_centre_ras=inverse_transform_points(params, anatomy_ras).float(),
            bump_sigma_mm=torch.tensor([[w.sigma_mm for w in local]], dtype=torch.float32),
            bump_strength=torch.tensor([[w.strength for w in local]], dtype=torch.float32),
        )
    nz, ny, nx = image.array.shape
    index = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1)
    index = index.transpose(2, 1, 0, 3).reshape(-1, 3)  # (z, y, x) order, (i, j, k) columns
    grid_ras = torch.as_tensor(image.index_to_world(index, "RAS"), dtype=torch.float32)
    sampled_ras = transform_points(params, grid_ras[None])[0].numpy()
    return params, sampled_ras


def _label_volume(array: np.ndarray, image: Volume, source: str) -> Volume:
    return Volume(
        array.astype(np.float32), image.spacing_mm, image.origin_lps, image.direction_lps, source
    )


def _resample_nearest(labels: Volume, image: Volume, transform: sitk.Transform) -> np.ndarray:
    """Labels sampled (nearest) at ``transform(x)`` for every voxel x of ``image``'s grid."""
    reference = sitk.Image(list(image.shape_xyz), sitk.sitkUInt8)
    reference.SetSpacing(tuple(float(v) for v in image.spacing_mm))
    reference.SetOrigin(tuple(float(v) for v in image.origin_lps))
    reference.SetDirection(tuple(float(v) for v in image.direction_lps.reshape(-1)))
    resampled = sitk.Resample(
        labels.to_sitk(), reference, transform, sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(resampled)


def labels_on_grid(labels: Volume, image: Volume) -> Volume:
    """``labels`` resampled (nearest neighbour) onto ``image``'s grid, unmoved (0 outside)."""
    array = _resample_nearest(labels, image, sitk.Transform())
    return _label_volume(array, image, f"{labels.source} (on the grid of {image.source})")


def move_labels(labels: Volume, image: Volume, rigid: RigidMotion) -> Volume:
    """``labels`` moved like :func:`medrl.evaluation.move_case` moves ``image``.

    Same transform (:func:`rigid_resample_transform` of ``image``), nearest neighbour, onto
    ``image``'s grid; voxels whose source lies outside the label map get 0.
    """
    array = _resample_nearest(labels, image, rigid_resample_transform(image, rigid))
    return _label_volume(array, image, f"{labels.source} (rigidly moved)")


def deform_labels(
    labels: Volume, image: Volume, elastic_mm: float, seed: int, local: Sequence[LocalWarp] = ()
) -> Volume:
    """``labels`` warped like :func:`medrl.evaluation.deform_case` warps ``image``.

    Same field (:func:`elastic_sample_points_ras` of ``image``, ``elastic_mm``, ``seed``,
    ``local``): ``L'(x) = L(x + d(x))`` on ``image``'s grid, nearest neighbour, 0 outside the
    label map.
    """
    _, sampled_ras = elastic_sample_points_ras(image, elastic_mm, seed, local)
    sample_index = labels.world_to_index(sampled_ras.astype(np.float64), "RAS")
    nz, ny, nx = image.array.shape
    coordinates = sample_index[:, ::-1].T.reshape(3, nz, ny, nx)  # label-map (z, y, x) axes
    warped = ndimage.map_coordinates(
        labels.array, np.rint(coordinates), order=0, mode="constant", cval=0.0
    )
    return _label_volume(warped, image, f"{labels.source} (elastically deformed)")
