"""Tests for medrl.metrics.registration against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from _synthetic import rotation_matrix
from medrl.errors import InputError
from medrl.io.images import Volume
from medrl.metrics.registration import (
    dice_per_label,
    hd95_mm_per_label,
    jacobian_determinant,
    jacobian_stats,
    tre_mm,
)


def _labels(array: np.ndarray, spacing=(1.0, 1.0, 1.0), source: str = "labels") -> Volume:
    return Volume(array.astype(np.float32), np.array(spacing), np.zeros(3), np.eye(3), source)


def _cube(shape: tuple[int, int, int], start_xyz: tuple[int, int, int], side: int) -> np.ndarray:
    array = np.zeros(shape, dtype=np.float32)
    i, j, k = start_xyz
    array[k : k + side, j : j + side, i : i + side] = 1
    return array


def test_tre_is_the_distance_per_point() -> None:
    a = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    b = np.array([[3.0, 4.0, 0.0], [1.0, 2.0, 3.0]])
    np.testing.assert_allclose(tre_mm(a, b), [5.0, 0.0])


def test_tre_rejects_nan_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="NaN"):
        tre_mm(np.array([[np.nan, 0.0, 0.0]]), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shape"):
        tre_mm(np.zeros((2, 3)), np.zeros((3, 3)))


def test_dice_of_cubes_offset_by_one_voxel() -> None:
    a = _cube((20, 20, 20), (5, 5, 5), 10)
    b = _cube((20, 20, 20), (6, 5, 5), 10)  # one voxel along x: overlap 9 x 10 x 10
    b[0, 0, 0] = 2  # a second label only in b
    scores = dice_per_label(_labels(a), _labels(b))
    assert scores[1] == pytest.approx(2 * 900 / 2000)
    assert scores[2] == 0.0
    assert np.isnan(dice_per_label(_labels(a), _labels(b), values=[7])[7])


def test_label_maps_on_different_grids_are_an_input_error() -> None:
    a = _labels(_cube((20, 20, 20), (5, 5, 5), 10), source="a.nii.gz")
    b = _labels(_cube((20, 20, 20), (5, 5, 5), 10), spacing=(2, 1, 1), source="b.nii.gz")
    with pytest.raises(InputError, match=r"b\.nii\.gz.*grid of a\.nii\.gz"):
        dice_per_label(a, b)
    with pytest.raises(InputError, match="grid"):
        hd95_mm_per_label(a, b)


def _sphere(
    shape: tuple[int, int, int], centre_zyx_mm, radius_mm: float, spacing_zyx
) -> np.ndarray:
    grid = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing_zyx, strict=True)), indexing="ij"
    )
    squared = sum((g - c) ** 2 for g, c in zip(grid, centre_zyx_mm, strict=True))
    return (squared <= radius_mm**2).astype(np.float32)


def test_hd95_of_a_sphere_shifted_by_3_mm() -> None:
    """For a shift d, the distance of a surface point to the other surface is about d |cos t|,
    uniform on [0, d] over the sphere: its 95th percentile is about 0.95 d."""
    spacing_zyx = (1.0, 1.0, 1.0)
    a = _sphere((50, 50, 50), (25.0, 25.0, 22.0), 12.0, spacing_zyx)
    b = _sphere((50, 50, 50), (25.0, 25.0, 25.0), 12.0, spacing_zyx)
    hd95 = hd95_mm_per_label(_labels(a), _labels(b))[1]
    assert 2.4 < hd95 < 3.4
    assert hd95_mm_per_label(_labels(a), _labels(a))[1] == 0.0


def test_hd95_uses_the_physical_spacing() -> None:
    """The same 3 mm shift on 1.5 mm voxels along x (two voxels)."""
    spacing_xyz = (1.5, 1.0, 1.0)
    spacing_zyx = spacing_xyz[::-1]
    a = _sphere((40, 40, 40), (20.0, 20.0, 27.0), 10.0, spacing_zyx)
    b = _sphere((40, 40, 40), (20.0, 20.0, 30.0), 10.0, spacing_zyx)
    hd95 = hd95_mm_per_label(_labels(a, spacing_xyz), _labels(b, spacing_xyz))[1]
    assert 2.4 < hd95 < 3.6
    assert np.isnan(hd95_mm_per_label(_labels(a, spacing_xyz), _labels(b, spacing_xyz), [3])[3])


def _linear_field(matrix: np.ndarray, direction: np.ndarray, spacing=(2.0, 1.5, 1.0)) -> sitk.Image:
    """u(x) = A x on an oblique grid (x: LPS mm of each voxel centre)."""
    shape_zyx = (7, 9, 11)
    reference = sitk.Image([shape_zyx[2], shape_zyx[1], shape_zyx[0]], sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetOrigin((-10.0, 5.0, 3.0))
    reference.SetDirection(tuple(direction.reshape(-1)))
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    affine = direction @ np.diag(spacing)
    points = index @ affine.T + np.asarray(reference.GetOrigin())
    displacement = (points @ matrix.T).reshape(*shape_zyx, 3)
    field = sitk.GetImageFromArray(displacement, isVector=True)
    field.CopyInformation(reference)
    return field


def test_jacobian_of_a_linear_field_on_an_oblique_grid() -> None:
    matrix = np.array([[0.1, 0.05, 0.0], [-0.02, 0.2, 0.03], [0.04, 0.0, -0.1]])
    field = _linear_field(matrix, rotation_matrix(20.0, 30.0))
    det = jacobian_determinant(field)
    assert det.shape == (7, 9, 11)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + matrix), rtol=1e-10)
    stats = jacobian_stats(det)
    assert stats["folding_share"] == 0.0
    assert stats["log_det_std"] == pytest.approx(0.0, abs=1e-10)
    assert stats["det_mean"] == pytest.approx(np.linalg.det(np.eye(3) + matrix))


def test_jacobian_matches_itk_on_an_axis_aligned_grid() -> None:
    rng = np.random.default_rng(0)
    field = sitk.GetImageFromArray(rng.normal(0.0, 0.3, (6, 7, 8, 3)), isVector=True)
    field.SetSpacing((1.0, 2.0, 1.5))
    itk = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    np.testing.assert_allclose(
        jacobian_determinant(field)[1:-1, 1:-1, 1:-1], itk[1:-1, 1:-1, 1:-1], rtol=1e-5
    )


def test_a_folding_field_has_a_positive_folding_share() -> None:
    matrix = np.diag([-1.5, 0.0, 0.0])  # x -> -0.5 x: the map turns space inside out
    det = jacobian_determinant(_linear_field(matrix, np.eye(3)))
    stats = jacobian_stats(det)
    assert stats["folding_share"] == 1.0
    assert stats["det_max"] == pytest.approx(-0.5)
    assert np.isnan(stats["log_det_std"])
    half = np.zeros(det.shape, dtype=bool)
    half[:3] = True
    assert jacobian_stats(det, half)["voxels"] == half.sum()
