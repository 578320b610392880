"""Tests for medrl.baselines.registration on a synthetic, asymmetric 3D phantom.

The target is the phantom resampled through a known transform (10° rotation, ~8 mm shift,
5% scale) onto a grid with an RAS-style direction, so LPS/RAS or direction mistakes and a
wrong transform direction (forward vs inverse) all produce errors of many millimetres.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from medrl.baselines.registration import (
    _working_image,
    affine_registration,
    map_points_lps,
    propagate_landmarks,
    propagate_landmarks_with_result,
    register_affine,
)
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.metrics.localization import landmark_errors_mm

SIZE = 64
SPACING_MM = 2.0
# (centre LPS mm, sigma mm, amplitude): different sizes/intensities, no symmetry.
BLOBS = (
    ((-18.0, 10.0, 8.0), 5.0, 100.0),
    ((20.0, -15.0, -5.0), 6.0, 60.0),
    ((5.0, 25.0, 15.0), 4.0, 140.0),
    ((-10.0, -25.0, -15.0), 7.0, -40.0),
    ((15.0, 20.0, -20.0), 5.0, 90.0),
)


def phantom_image(modality: str = "t1") -> sitk.Image:
    """64³ phantom at 2 mm (identity direction): soft ellipsoid 'head' plus Gaussian blobs.

    ``modality="t2"`` mimics another contrast: background stays dark, tissue gets brighter
    and the blobs darker than tissue (a non-monotonic intensity mapping).
    """
    origin_lps = -(SIZE - 1) * SPACING_MM / 2.0
    axis_mm = origin_lps + SPACING_MM * np.arange(SIZE)
    z, y, x = np.meshgrid(axis_mm, axis_mm, axis_mm, indexing="ij")
    radius = np.sqrt((x / 46.0) ** 2 + ((y - 4.0) / 54.0) ** 2 + (z / 40.0) ** 2)
    head = 1.0 / (1.0 + np.exp((radius - 1.0) * 12.0))
    blobs = np.zeros_like(x)
    for (cx, cy, cz), sigma_mm, amplitude in BLOBS:
        distance_sq = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
        blobs += amplitude * np.exp(-distance_sq / (2.0 * sigma_mm**2))
    noise = np.random.default_rng(7).normal(0.0, 2.0, size=x.shape)
    if modality == "t1":
        array = 60.0 * head + blobs + noise
    else:
        array = 120.0 * head - 0.8 * blobs + noise
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing([SPACING_MM] * 3)
    image.SetOrigin([origin_lps] * 3)
    return image


def true_transform() -> sitk.AffineTransform:
    """Target LPS -> phantom LPS: 10° about a tilted axis, scale 1.05, shift ~7.9 mm."""
    axis = np.array([0.3, 0.2, 1.0])
    axis /= np.linalg.norm(axis)
    versor = sitk.VersorTransform(tuple(axis), math.radians(10.0))
    matrix = 1.05 * np.asarray(versor.GetMatrix()).reshape(3, 3)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix.ravel().tolist())
    transform.SetTranslation((6.0, -4.0, 3.5))
    return transform


def target_image(phantom: sitk.Image) -> sitk.Image:
    """The phantom seen through :func:`true_transform`, on an RAS-oriented 64³ grid."""
    reference = sitk.Image(SIZE, SIZE, SIZE, sitk.sitkFloat32)
    reference.SetSpacing([SPACING_MM] * 3)
    half_mm = (SIZE - 1) * SPACING_MM / 2.0
    reference.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    reference.SetOrigin((half_mm, half_mm, -half_mm))
    return sitk.Resample(phantom, reference, true_transform(), sitk.sitkLinear, 0.0)


def lps_to_ras(points_lps: np.ndarray) -> np.ndarray:
    return np.asarray(points_lps, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def atlas() -> Volume:
    return Volume.from_sitk(phantom_image("t1"), source="atlas.nii.gz")


@pytest.fixture(scope="module")
def atlas_landmarks() -> Landmarks:
    centres_lps = np.array([centre for centre, _, _ in BLOBS])
    return Landmarks(
        names=tuple(f"blob{i}" for i in range(len(BLOBS))),
        points_ras=lps_to_ras(centres_lps),
        descriptions=tuple(f"centre of blob {i}" for i in range(len(BLOBS))),
    )


@pytest.fixture(scope="module")
def target() -> Volume:
    return Volume.from_sitk(target_image(phantom_image("t1")), source="target.nii.gz")


@pytest.fixture(scope="module")
def expected_landmarks(atlas_landmarks: Landmarks) -> Landmarks:
    """Blob centres in the target: the inverse of the true transform applied to them."""
    inverse = true_transform().GetInverse()
    target_lps = map_points_lps(inverse, atlas_landmarks.points("LPS"))
    return Landmarks(names=atlas_landmarks.names, points_ras=lps_to_ras(target_lps))


@pytest.fixture(scope="module")
def propagated(atlas: Volume, atlas_landmarks: Landmarks, target: Volume):
    return propagate_landmarks_with_result(atlas, atlas_landmarks, target, seed=0)


def test_propagated_landmarks_recover_known_transform(
    propagated, expected_landmarks: Landmarks, atlas_landmarks: Landmarks
) -> None:
    landmarks, result = propagated
    assert landmarks.names == atlas_landmarks.names
    assert tuple(landmarks.descriptions) == tuple(atlas_landmarks.descriptions)
    errors_mm = landmark_errors_mm(landmarks, expected_landmarks)
    assert errors_mm.mean() < 1.5, errors_mm
    assert errors_mm.max() < 3.0, errors_mm
    # Sanity: without registration the landmarks would be far off.
    assert landmark_errors_mm(atlas_landmarks, expected_landmarks).mean() > 5.0
    assert result.seconds > 0.0
    assert result.metric_value < 0.0  # Mattes MI is reported negated


def test_transform_maps_fixed_points_to_moving_points(
    propagated, target: Volume, expected_landmarks: Landmarks
) -> None:
    _, result = propagated
    target_lps = expected_landmarks.points("LPS")
    recovered = map_points_lps(result.transform, target_lps)
    wanted = map_points_lps(true_transform(), target_lps)
    assert np.linalg.norm(recovered - wanted, axis=1).max() < 3.0
    # Recovered matrix ~ 1.05 * rotation: determinant ~ 1.05³.
    matrix = np.asarray(result.transform.GetMatrix()).reshape(3, 3)
    assert np.linalg.det(matrix) == pytest.approx(1.05**3, rel=0.03)


def test_same_seed_is_deterministic(
    propagated, atlas: Volume, atlas_landmarks: Landmarks, target: Volume
) -> None:
    again = propagate_landmarks(atlas, atlas_landmarks, target, seed=0)
    np.testing.assert_array_equal(again.points_ras, propagated[0].points_ras)


def test_register_affine_returns_transform(atlas: Volume, target: Volume) -> None:
    transform = register_affine(target, atlas, seed=1)
    assert isinstance(transform, sitk.Transform)
    point_lps = (10.0, -5.0, 3.0)
    wanted = np.asarray(true_transform().TransformPoint(point_lps))
    assert np.linalg.norm(np.asarray(transform.TransformPoint(point_lps)) - wanted) < 3.0


def test_other_contrast_with_mutual_information(
    atlas_landmarks: Landmarks, target: Volume, expected_landmarks: Landmarks
) -> None:
    t2_atlas = Volume.from_sitk(phantom_image("t2"), source="atlas_t2.nii.gz")
    landmarks = propagate_landmarks(t2_atlas, atlas_landmarks, target, seed=0)
    errors_mm = landmark_errors_mm(landmarks, expected_landmarks)
    assert errors_mm.mean() < 2.0, errors_mm


def test_thread_setting_is_restored(atlas: Volume) -> None:
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    small = Volume.from_sitk(sitk.Shrink(phantom_image("t1"), [2, 2, 2]))
    affine_registration(small, small, seed=0, num_threads=1)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    with pytest.raises(ValueError):
        affine_registration(small, small, num_threads=0)


def test_working_image_keeps_field_of_view() -> None:
    image = sitk.Image(40, 30, 20, sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    volume = Volume.from_sitk(image + 1.0)
    working = _working_image(volume, 2.0)
    assert working.GetSize() == (20, 15, 10)
    assert working.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))

    def centre(img: sitk.Image) -> np.ndarray:
        return np.asarray(
            img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()])
        )

    np.testing.assert_allclose(centre(working), centre(image), atol=1e-9)
    # Interior of a constant image stays constant after smoothing and resampling.
    assert sitk.GetArrayFromImage(working)[5, 7, 10] == pytest.approx(1.0, abs=1e-4)
