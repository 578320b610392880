"""Tests for medrl.registration.transforms: rigid fits, RAS <-> LPS, inversion, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _registration_data import rigid_matrix_ras
from _synthetic import oblique_volume
from medrl.baselines.registration import map_points_lps
from medrl.errors import InputError
from medrl.geometry.kabsch import fit_rigid_robust
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.registration.base import RegistrationOutcome
from medrl.registration.transforms import (
    fit_rigid_ras,
    invert,
    invert_transform,
    map_landmarks,
    read_transform,
    resample_moving,
    rigid_ras_to_sitk,
    sitk_to_matrix_ras,
    transform_file_name,
    write_transform,
)

FLIP = np.array([-1.0, -1.0, 1.0])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _points(count: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-60.0, 60.0, (count, 3))


def test_kabsch_recovers_a_known_rigid_map_exactly() -> None:
    truth = rigid_matrix_ras(25.0, (10.0, -3.0, 7.5))
    source = _points()
    fitted = fit_rigid_ras(source, _apply(truth, source))
    np.testing.assert_allclose(fitted, truth, atol=1e-10)


def test_kabsch_never_reflects_and_rejects_bad_input() -> None:
    source = _points()
    fitted = fit_rigid_ras(source, source * np.array([-1.0, 1.0, 1.0]))  # a mirror image
    assert np.linalg.det(fitted[:3, :3]) == pytest.approx(1.0)
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="collinear"):
        fit_rigid_ras(line, line)
    with pytest.raises(ValueError, match="at least 3"):
        fit_rigid_ras(source[:2], source[:2])
    with pytest.raises(ValueError, match="NaN"):
        fit_rigid_ras(np.full((4, 3), np.nan), source[:4])


def test_weighted_and_robust_kabsch_ignore_what_they_should() -> None:
    """Weight 0 drops a pair; the robust fit finds the map despite gross outliers (failed
    detections 20-40 mm off) and gives them weight 0, where the plain fit is pulled."""
    truth = rigid_matrix_ras(18.0, (4.0, 9.0, -6.0))
    source = _points(32, seed=3)
    target = _apply(truth, source) + np.random.default_rng(4).normal(0.0, 0.5, (32, 3))
    target[[2, 11, 20]] += np.array([[25.0, 0.0, 0.0], [0.0, -40.0, 0.0], [0.0, 12.0, 18.0]])
    weights = np.ones(32)
    weights[[2, 11, 20]] = 0.0
    dropped = fit_rigid_ras(source, target, weights)
    np.testing.assert_allclose(dropped[:3, 3], truth[:3, 3], atol=0.5)
    matrix, residuals, robust = fit_rigid_robust(source, target)
    assert robust[[2, 11, 20]].tolist() == [0.0, 0.0, 0.0] and robust.min() == 0.0
    assert np.count_nonzero(robust > 0) >= 27
    assert residuals[[2, 11, 20]].min() > 10.0
    points_error = np.linalg.norm(_apply(matrix, source) - _apply(truth, source), axis=1)
    plain_error = np.linalg.norm(
        _apply(fit_rigid_ras(source, target), source) - _apply(truth, source), axis=1
    )
    assert points_error.mean() < 0.5 < plain_error.mean()
    with pytest.raises(ValueError, match="weights"):
        fit_rigid_ras(source, target, np.zeros(32))
    with pytest.raises(ValueError, match="weights"):
        fit_rigid_ras(source, target, -weights)


def test_ras_matrix_becomes_the_same_map_of_lps_points() -> None:
    """90 degrees about S takes R to A: RAS (10, 0, 0) -> (0, 10, 0), i.e. LPS (-10, 0, 0)
    -> (0, -10, 0); the shift (1, 2, 3) RAS is (-1, -2, 3) LPS."""
    matrix = np.eye(4)
    matrix[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    matrix[:3, 3] = [1.0, 2.0, 3.0]
    transform = rigid_ras_to_sitk(matrix)
    assert isinstance(transform, sitk.Euler3DTransform)
    np.testing.assert_allclose(transform.TransformPoint((-10.0, 0.0, 0.0)), (-1.0, -12.0, 3.0))
    np.testing.assert_allclose(sitk_to_matrix_ras(transform), matrix, atol=1e-12)
    scaled = matrix.copy()
    scaled[:3, :3] *= 1.1
    assert isinstance(rigid_ras_to_sitk(scaled), sitk.AffineTransform)


def test_matrix_of_a_centred_transform_matches_its_points() -> None:
    transform = rigid_ras_to_sitk(rigid_matrix_ras())
    centred = sitk.Euler3DTransform(transform)
    centred.SetCenter((5.0, -7.0, 2.0))  # another map: the matrix must follow the centre
    matrix = sitk_to_matrix_ras(centred)
    points = _points()
    mapped = map_points_lps(centred, points * FLIP) * FLIP
    np.testing.assert_allclose(_apply(matrix, points), mapped, atol=1e-9)
    with pytest.raises(ValueError, match="not a linear"):
        sitk_to_matrix_ras(sitk.BSplineTransform(3))


def _field_transform() -> sitk.DisplacementFieldTransform:
    """A smooth displacement field (a few mm) on a small oblique grid."""
    reference = oblique_volume(shape_zyx=(12, 14, 16), spacing_mm=(3.0, 3.0, 3.0)).to_sitk()
    bspline = sitk.BSplineTransformInitializer(reference, [2, 2, 2])
    bspline.SetParameters(np.random.default_rng(1).normal(0, 2.0, len(bspline.GetParameters())))
    field = sitk.TransformToDisplacementField(
        bspline,
        sitk.sitkVectorFloat64,
        reference.GetSize(),
        reference.GetOrigin(),
        reference.GetSpacing(),
        reference.GetDirection(),
    )
    return sitk.DisplacementFieldTransform(field)


def _inner_points(transform: sitk.DisplacementFieldTransform) -> np.ndarray:
    field = transform.GetDisplacementField()
    size = np.asarray(field.GetSize())
    index = np.random.default_rng(2).uniform(0.0, 1.0, (10, 3)) * (size - 7) + 3
    return np.array([field.TransformContinuousIndexToPhysicalPoint(list(i)) for i in index])


@pytest.mark.parametrize("kind", ["euler", "affine", "field"])
def test_write_read_round_trip_maps_the_same_points(tmp_path: Path, kind: str) -> None:
    if kind == "field":
        transform = _field_transform()
        points = _inner_points(transform)
    else:
        transform = rigid_ras_to_sitk(rigid_matrix_ras())
        if kind == "affine":
            transform = sitk.AffineTransform(3)
            transform.SetMatrix((1.1, 0.1, 0.0, 0.0, 0.9, 0.05, 0.02, 0.0, 1.0))
            transform.SetTranslation((3.0, -2.0, 1.0))
            transform.SetCenter((10.0, 5.0, -5.0))
        points = _points()
    path = tmp_path / transform_file_name(transform)
    write_transform(transform, path)
    assert path.name == ("transform.nii.gz" if kind == "field" else "transform.tfm")
    if kind == "field":
        again = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path)))
    else:
        again = sitk.ReadTransform(str(path))
    for reread in (again, read_transform(path)):
        np.testing.assert_allclose(
            map_points_lps(reread, points), map_points_lps(transform, points), atol=1e-9
        )
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporaries left


def test_write_transform_checks_the_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"field\.tfm.*displacement field"):
        write_transform(_field_transform(), tmp_path / "field.tfm")
    with pytest.raises(InputError, match=r"rigid\.nii\.gz"):
        write_transform(sitk.Euler3DTransform(), tmp_path / "rigid.nii.gz")
    with pytest.raises(InputError, match="not found"):
        read_transform(tmp_path / "missing.tfm")


def test_inverses() -> None:
    rigid = rigid_ras_to_sitk(rigid_matrix_ras())
    points = _points()
    back = map_points_lps(invert_transform(rigid), map_points_lps(rigid, points))
    np.testing.assert_allclose(back, points, atol=1e-9)
    field = _field_transform()
    inner = _inner_points(field)
    round_trip = map_points_lps(invert_transform(field), map_points_lps(field, inner))
    np.testing.assert_allclose(round_trip, inner, atol=0.1)
    own = sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
    outcome = RegistrationOutcome("x", field, 1.0, inverse=own)
    assert invert(outcome) is own
    assert invert(RegistrationOutcome("x", rigid, 1.0)).GetName() == "Euler3DTransform"


def test_map_landmarks_and_resample_moving() -> None:
    landmarks = Landmarks(("a", "b"), np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, 6.0]]), ("x", "y"))
    shift = sitk.TranslationTransform(3, (1.0, 2.0, 3.0))  # LPS
    moved = map_landmarks(shift, landmarks)
    assert moved.names == ("a", "b") and moved.descriptions == ("x", "y")
    np.testing.assert_allclose(moved.points_ras, landmarks.points_ras + np.array([-1.0, -2.0, 3.0]))
    volume = oblique_volume()
    # The fixed -> moving map is the identity: the moving image is unchanged on its own grid.
    same = resample_moving(volume, volume, sitk.Transform(3, sitk.sitkIdentity))
    np.testing.assert_allclose(same.array, volume.array, atol=1e-3)
    outside = resample_moving(
        volume, volume, sitk.TranslationTransform(3, (1e4, 0, 0)), "nearest", -5
    )
    assert np.all(outside.array == -5)


def test_move_header_moves_every_voxel_by_the_map_and_keeps_the_voxels() -> None:
    from medrl.registration.transforms import move_header

    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    volume = Volume(np.arange(210, dtype=np.float32).reshape(5, 6, 7), [1.0, 2.0, 3.0],
                    [10.0, -5.0, 3.0], direction, "x")  # fmt: skip
    rotation = sitk.VersorTransform((0.0, 0.6, 0.8), 0.4).GetMatrix()
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = np.reshape(rotation, (3, 3)), [4.0, -2.0, 9.0]
    moved = move_header(volume, matrix)
    index = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [6.0, 5.0, 4.0]])
    expected = volume.index_to_world(index, "RAS") @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(moved.index_to_world(index, "RAS"), expected, atol=1e-9)
    assert np.array_equal(moved.array, volume.array)
