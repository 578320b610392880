"""Frames of the deformable registration: the working grid, and back to world displacement fields.

The network works on a **working grid**: isotropic ``spacing_mm`` voxels (2 mm by default)
covering the fixed image's box in the fixed image's direction
(:func:`medrl.io.images.resample_isotropic` of the fixed image). The moving image is resampled
onto it through the affine pre-alignment ``A`` (fixed -> moving, LPS mm), so both images of the
network's input overlay roughly; their intensities are normalised by
:func:`normalise_intensity`.

The network's displacement ``u`` (working voxels) maps a working voxel ``p`` to ``p + u(p)``
in the same frame, i.e. the world point ``x`` to ``x + D u(W^-1 x)`` where ``W`` is the working
grid's index -> LPS map and ``D`` its direction times spacing. The whole fixed -> moving map is

    T(x) = A(x + D u(W^-1 x))                               (x: fixed LPS mm)

and its inverse (moving -> fixed), with ``u_inv`` from integrating ``-v``,

    T^-1(y) = A^-1(y) + D u_inv(W^-1 A^-1(y))               (y: moving LPS mm).

:func:`displacement_field_transform` samples ``T(x) - x`` on the fixed image's grid (or
``T^-1(y) - y`` on the moving image's grid) as a ``sitk.DisplacementFieldTransform`` in LPS mm,
ITK's convention: ``sitk.Resample(moving, fixed, transform)`` shows the moving image on the
fixed grid. Outside the grid it is sampled on, ITK's field gives zero displacement (the
identity), and ``u`` counts as zero beyond the working grid.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch

from medrl.io.images import Volume, resample_isotropic

__all__ = [
    "NORMALISATION",
    "WORKING_SPACING_MM",
    "affine_parts",
    "displacement_field_transform",
    "normalise_intensity",
    "reference_image",
    "resample_onto",
    "working_grid",
]

WORKING_SPACING_MM = 2.0
"""Default voxel size of the working grid."""

NORMALISATION: dict[str, object] = {
    "kind": "percentile",
    "low_percentile": 0.5,
    "high_percentile": 99.5,
    "clip": [0.0, 1.0],
    "on": "each image after resampling onto the working grid",
}
"""How :func:`normalise_intensity` maps intensities (stored with every model)."""


def normalise_intensity(array: np.ndarray) -> np.ndarray:
    """``(x - p0.5) / (p99.5 - p0.5)`` clipped to [0, 1], float32 (0 for a constant image)."""
    values = np.asarray(array, dtype=np.float32)
    low, high = np.percentile(
        values, [NORMALISATION["low_percentile"], NORMALISATION["high_percentile"]]
    )
    if not np.isfinite(high - low) or high - low <= 0:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def working_grid(fixed: Volume, spacing_mm: float = WORKING_SPACING_MM) -> Volume:
    """The fixed image on the working grid (isotropic ``spacing_mm``, same box and direction)."""
    if np.allclose(fixed.spacing_mm, spacing_mm):
        return fixed
    return resample_isotropic(fixed, float(spacing_mm), "linear")


def reference_image(grid: Volume, pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """An empty ``sitk.Image`` with ``grid``'s geometry (a resampling reference)."""
    image = sitk.Image([int(n) for n in grid.shape_xyz], pixel)
    image.SetSpacing(tuple(float(v) for v in grid.spacing_mm))
    image.SetOrigin(tuple(float(v) for v in grid.origin_lps))
    image.SetDirection(tuple(float(v) for v in grid.direction_lps.reshape(-1)))
    return image


def resample_onto(
    volume: Volume,
    grid: Volume,
    transform: sitk.Transform | None = None,
    interpolator: Literal["linear", "nearest"] = "linear",
    default: float = 0.0,
) -> np.ndarray:
    """``volume`` seen on ``grid``'s voxels through ``transform`` (grid LPS -> volume LPS; None
    = identity): (nz, ny, nx) float32."""
    resampled = sitk.Resample(
        volume.to_sitk(),
        reference_image(grid),
        transform if transform is not None else sitk.Transform(),
        sitk.sitkLinear if interpolator == "linear" else sitk.sitkNearestNeighbor,
        float(default),
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled)


def affine_parts(transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
    """``(M, b)`` with ``transform(x) = M x + b`` (LPS mm) for an affine/rigid SimpleITK
    transform (None: the identity). Raises ValueError for other transforms."""
    if transform is None:
        return np.eye(3), np.zeros(3)
    dimension = transform.GetDimension()
    if dimension != 3:
        raise ValueError(f"expected a 3D transform, got {dimension}D")
    if transform.GetName() == "IdentityTransform":
        return np.eye(3), np.zeros(3)
    # Fit (M, b) from the images of four points; then check it on a fifth (exact if affine).
    points = np.array(
        [[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100], [37, -53, 71]], dtype=np.float64
    )
    mapped = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points])
    b = mapped[0]
    matrix = (mapped[1:4] - b).T / 100.0
    if not np.allclose(matrix @ points[4] + b, mapped[4], atol=1e-6):
        raise ValueError(f"{transform.GetName()} is not an affine transform")
    return matrix, b


def displacement_field_transform(
    displacement_vox: torch.Tensor,
    grid: Volume,
    reference: Volume,
    *,
    before: sitk.Transform | None = None,
    after: sitk.Transform | None = None,
    threads: int | None = None,
) -> sitk.DisplacementFieldTransform:
    """``x -> after(y + D u(W^-1 y))`` with ``y = before(x)``, sampled as a displacement field
    (LPS mm, float64) on ``reference``'s grid.

    Forward (fixed -> moving): ``u`` the network's displacement, ``reference`` the fixed image,
    ``after`` the affine ``A``. Inverse (moving -> fixed): ``u_inv``, ``reference`` the moving
    image, ``before`` = ``A^-1``. ``u`` is (1, 3, D, H, W) on ``grid``, interpolated linearly
    (ITK); beyond the working grid (half a voxel past its edge voxels) ``u`` counts as zero, so
    there only ``before`` / ``after`` act. The composition is sampled by SimpleITK's
    ``TransformToDisplacementFieldFilter`` (``threads``: its thread count, None = ITK's)."""
    if displacement_vox.ndim != 5 or displacement_vox.shape[:2] != (1, 3):
        raise ValueError(f"expected a (1, 3, D, H, W) field, got {tuple(displacement_vox.shape)}")
    if tuple(displacement_vox.shape[2:]) != grid.array.shape:
        raise ValueError(
            f"field grid {tuple(displacement_vox.shape[2:])} is not the working grid "
            f"{grid.array.shape}"
        )
    step = grid.direction_lps @ np.diag(grid.spacing_mm)  # D: voxel (x, y, z) -> LPS mm
    voxels = displacement_vox.detach()[0].permute(1, 2, 3, 0).double().cpu().numpy()
    field = sitk.GetImageFromArray(voxels @ step.T, isVector=True)
    field.SetSpacing(tuple(float(v) for v in grid.spacing_mm))
    field.SetOrigin(tuple(float(v) for v in grid.origin_lps))
    field.SetDirection(tuple(float(v) for v in grid.direction_lps.reshape(-1)))
    # SimpleITK applies the transform added last first: after(working(before(x))).
    composite = sitk.CompositeTransform(3)
    if after is not None:
        composite.AddTransform(after)
    composite.AddTransform(sitk.DisplacementFieldTransform(field))
    if before is not None:
        composite.AddTransform(before)
    sampler = sitk.TransformToDisplacementFieldFilter()
    sampler.SetReferenceImage(reference_image(reference))
    sampler.SetOutputPixelType(sitk.sitkVectorFloat64)
    if threads is not None and threads > 0:
        sampler.SetNumberOfThreads(int(threads))
    return sitk.DisplacementFieldTransform(sampler.Execute(composite))
