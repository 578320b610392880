"""Tests for medrl.baselines.registration on a synthetic, asymmetric 3D head phantom.

The phantom is an analytic function of LPS position (soft-edged ellipsoids and spheres), so
the target can be sampled *exactly* through a known transform (10° rotation, ~8 mm shift,
5% scale) on a grid with an RAS-style direction, with its own noise. LPS/RAS or direction
mistakes and a wrong transform direction (forward vs inverse) all give errors of many mm.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from medrl.baselines.registration import (
    affine_registration,
    map_points_lps,
    propagate_labels,
    propagate_landmarks,
    propagate_landmarks_with_result,
    register_affine,
    working_image,
)
from medrl.geometry.boxes import box_iou, boxes_from_label_map, centre_distance_mm
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.metrics.localization import landmark_errors_mm

SIZE = 64
SPACING_MM = 2.0
# Small spheres (centre LPS mm, radius mm, T1 value, T2 value): the landmarks are their centres.
SPHERES = (
    ((-18.0, 10.0, 8.0), 5.0, 180.0, 30.0),
    ((20.0, -15.0, -5.0), 6.0, 140.0, 110.0),
    ((5.0, 25.0, 15.0), 4.0, 200.0, 20.0),
    ((-10.0, -25.0, -15.0), 7.0, 45.0, 150.0),
    ((15.0, 20.0, -20.0), 5.0, 160.0, 80.0),
)
# Large asymmetric structures (centre LPS mm, radii mm, T1 value, T2 value).
REGIONS = (
    ((0.0, 35.0, -25.0), (28.0, 14.0, 12.0), 120.0, 40.0),
    ((-22.0, -20.0, 10.0), (14.0, 22.0, 16.0), 110.0, 45.0),
    ((8.0, 6.0, 0.0), (10.0, 26.0, 9.0), 20.0, 170.0),
)


def soft_inside(radius_ratio: np.ndarray, radius_mm: float, edge_mm: float = 1.0) -> np.ndarray:
    """~1 inside a shape (ratio < 1), ~0 outside, with an edge about ``edge_mm`` wide."""
    z = np.clip((radius_ratio - 1.0) * radius_mm / edge_mm, -50.0, 50.0)
    return 1.0 / (1.0 + np.exp(z))


def phantom_values(points_lps: np.ndarray, modality: str) -> np.ndarray:
    """Phantom intensity at (N, 3) LPS points; ``"t2"`` remaps every tissue non-monotonically."""
    t1 = modality == "t1"
    x, y, z = points_lps[:, 0], points_lps[:, 1], points_lps[:, 2]
    skull, brain = (40.0, 75.0) if t1 else (100.0, 65.0)
    head = np.sqrt((x / 50.0) ** 2 + ((y - 2.0) / 58.0) ** 2 + (z / 46.0) ** 2)
    values = soft_inside(head, 50.0) * skull + soft_inside(head / 0.88, 44.0) * (brain - skull)
    for (cx, cy, cz), (rx, ry, rz), t1_value, t2_value in REGIONS:
        ratio = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)
        values += soft_inside(ratio, min(rx, ry, rz)) * ((t1_value if t1 else t2_value) - brain)
    for (cx, cy, cz), radius_mm, t1_value, t2_value in SPHERES:
        ratio = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / radius_mm
        values += soft_inside(ratio, radius_mm) * ((t1_value if t1 else t2_value) - brain)
    return values


def true_transform() -> sitk.AffineTransform:
    """Target LPS -> phantom LPS: 10° about a tilted axis, scale 1.05, shift ~7.9 mm."""
    axis = np.array([0.3, 0.2, 1.0])
    axis /= np.linalg.norm(axis)
    rotation = np.asarray(sitk.VersorTransform(tuple(axis), math.radians(10.0)).GetMatrix())
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((1.05 * rotation).tolist())
    transform.SetTranslation((6.0, -4.0, 3.5))
    return transform


def sample_phantom(
    modality: str,
    ras_grid: bool = False,
    transform: sitk.AffineTransform | None = None,
    noise_seed: int = 0,
) -> Volume:
    """64³ 2 mm volume of the phantom seen through ``transform`` (grid LPS -> phantom LPS).

    ``ras_grid`` gives the grid the direction diag(-1, -1, 1) that NIfTI files usually have.
    """
    half_mm = (SIZE - 1) * SPACING_MM / 2.0
    if ras_grid:
        direction = np.diag([-1.0, -1.0, 1.0])
        origin_lps = np.array([half_mm, half_mm, -half_mm])
    else:
        direction = np.eye(3)
        origin_lps = np.full(3, -half_mm)
    k, j, i = np.meshgrid(*(np.arange(SIZE),) * 3, indexing="ij")
    index_ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    points_lps = index_ijk @ (direction * SPACING_MM).T + origin_lps
    if transform is not None:
        points_lps = apply_affine(transform, points_lps)
    values = phantom_values(points_lps, modality)
    values += np.random.default_rng(noise_seed).normal(0.0, 2.0, size=values.shape)
    return Volume(
        array=values.reshape(SIZE, SIZE, SIZE).astype(np.float32),
        spacing_mm=np.full(3, SPACING_MM),
        origin_lps=origin_lps,
        direction_lps=direction,
        source=f"phantom_{modality}.nii.gz",
    )


def apply_affine(transform: sitk.AffineTransform, points_lps: np.ndarray) -> np.ndarray:
    """Vectorised affine transform of many points (map_points_lps is per point)."""
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    translation = np.asarray(transform.GetTranslation())
    return (points_lps - centre) @ matrix.T + centre + translation


def lps_to_ras(points_lps: np.ndarray) -> np.ndarray:
    return np.asarray(points_lps, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def atlas() -> Volume:
    return sample_phantom("t1", noise_seed=1)


@pytest.fixture(scope="module")
def atlas_landmarks() -> Landmarks:
    centres_lps = np.array([centre for centre, *_ in SPHERES])
    return Landmarks(
        names=tuple(f"sphere{i}" for i in range(len(SPHERES))),
        points_ras=lps_to_ras(centres_lps),
        descriptions=tuple(f"centre of sphere {i}" for i in range(len(SPHERES))),
    )


@pytest.fixture(scope="module")
def target() -> Volume:
    return sample_phantom("t1", ras_grid=True, transform=true_transform(), noise_seed=2)


@pytest.fixture(scope="module")
def expected_landmarks(atlas_landmarks: Landmarks) -> Landmarks:
    """Sphere centres in the target: the inverse of the true transform applied to them."""
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
    assert landmarks.descriptions == atlas_landmarks.descriptions
    errors_mm = landmark_errors_mm(landmarks, expected_landmarks)
    assert errors_mm.mean() < 1.5, errors_mm
    assert errors_mm.max() < 2.5, errors_mm
    # Without registration the landmarks would be far off.
    assert landmark_errors_mm(atlas_landmarks, expected_landmarks).mean() > 5.0
    assert result.seconds > 0.0
    assert result.metric_value < -0.5  # Mattes MI is reported negated
    assert all(n > 0 for n in result.iterations)


def test_transform_maps_fixed_points_to_moving_points(
    propagated, expected_landmarks: Landmarks
) -> None:
    _, result = propagated
    target_lps = expected_landmarks.points("LPS")
    recovered_lps = map_points_lps(result.transform, target_lps)
    wanted_lps = map_points_lps(true_transform(), target_lps)
    assert np.linalg.norm(recovered_lps - wanted_lps, axis=1).max() < 2.5
    # The affine stage recovers the 5% scale: determinant ~ 1.05³ (rigid would give 1).
    matrix = np.asarray(result.transform.GetMatrix()).reshape(3, 3)
    assert np.linalg.det(matrix) ** (1 / 3) == pytest.approx(1.05, abs=0.015)


def test_same_seed_is_deterministic(
    propagated, atlas: Volume, atlas_landmarks: Landmarks, target: Volume
) -> None:
    again = propagate_landmarks(atlas, atlas_landmarks, target, seed=0)
    np.testing.assert_array_equal(again.points_ras, propagated[0].points_ras)


def test_register_affine_other_seed(atlas: Volume, target: Volume) -> None:
    transform = register_affine(target, atlas, seed=1)
    assert isinstance(transform, sitk.Transform)
    points_lps = np.array([[10.0, -5.0, 3.0], [-20.0, 15.0, -10.0]])
    error_mm = map_points_lps(transform, points_lps) - map_points_lps(true_transform(), points_lps)
    assert np.linalg.norm(error_mm, axis=1).max() < 2.5


def test_other_contrast_with_mutual_information(
    atlas_landmarks: Landmarks, target: Volume, expected_landmarks: Landmarks
) -> None:
    t2_atlas = sample_phantom("t2", noise_seed=3)
    landmarks = propagate_landmarks(t2_atlas, atlas_landmarks, target, seed=0)
    errors_mm = landmark_errors_mm(landmarks, expected_landmarks)
    assert errors_mm.mean() < 2.0, errors_mm


def test_thread_setting_restored_and_arguments_checked(atlas: Volume) -> None:
    original = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    small = Volume.from_sitk(sitk.Shrink(atlas.to_sitk(), [2, 2, 2]))
    try:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(3)
        result = affine_registration(small, small, seed=0, num_threads=1)
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 3
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(original)
    # An image registered to itself stays (nearly) where it is.
    point_lps = (10.0, -20.0, 5.0)
    assert np.allclose(result.transform.TransformPoint(point_lps), point_lps, atol=1.0)
    with pytest.raises(ValueError, match="num_threads"):
        affine_registration(small, small, num_threads=0)
    with pytest.raises(ValueError, match="seed"):
        affine_registration(small, small, seed=-1)


def test_working_image_block_averages_without_moving_anything() -> None:
    # Anisotropic 1 x 1 x 1.2 mm grid with an RAS-style direction; intensity = L coordinate.
    image = sitk.Image(41, 30, 20, sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 1.2))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    volume = Volume.from_sitk(image)
    k, j, i = np.meshgrid(*(np.arange(n) for n in image.GetSize()[::-1]), indexing="ij")
    index_ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    ramp = volume.index_to_world(index_ijk, frame="LPS")[:, 0].reshape(i.shape)
    volume = Volume(ramp, volume.spacing_mm, volume.origin_lps, volume.direction_lps)

    working = working_image(volume, 2.0)
    assert working.GetSpacing() == pytest.approx((2.0, 2.0, 1.2))  # 1.2 mm axis: factor 1
    assert working.GetSize() == (20, 15, 20)
    assert working.GetDirection() == image.GetDirection()
    # Every output voxel still holds its own L coordinate: nothing moved.
    out = Volume.from_sitk(working)
    k, j, i = np.meshgrid(*(np.arange(n) for n in working.GetSize()[::-1]), indexing="ij")
    index_ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    out_l = out.index_to_world(index_ijk, frame="LPS")[:, 0]
    np.testing.assert_allclose(out.array.reshape(-1), out_l, atol=1e-4)

    # Images already at (or near) the working spacing are used as they are.
    coarse = sitk.Image(10, 10, 10, sitk.sitkFloat32)
    coarse.SetSpacing((2.0, 2.0, 2.0))
    assert working_image(Volume.from_sitk(coarse + 1.0), 2.0).GetSize() == (10, 10, 10)


# ---------------------------------------------------------------------------- label maps
SPHERE_NAMES = {index + 1: f"sphere{index}" for index in range(len(SPHERES))}
REGION_NAMES = {10 + index: f"region{index}" for index in range(len(REGIONS))}


def phantom_labels(points_lps: np.ndarray) -> np.ndarray:
    """Label of each (N, 3) LPS point: 10 + r inside region r, 1 + s inside sphere s, else 0."""
    labels = np.zeros(len(points_lps))
    for index, ((cx, cy, cz), (rx, ry, rz), *_) in enumerate(REGIONS):
        ratio = ((points_lps - (cx, cy, cz)) / (rx, ry, rz)) ** 2
        labels[ratio.sum(axis=1) < 1.0] = 10 + index
    for index, (centre, radius_mm, *_) in enumerate(SPHERES):
        labels[np.linalg.norm(points_lps - centre, axis=1) < radius_mm] = 1 + index
    return labels


def label_map_of(volume: Volume, transform: sitk.AffineTransform | None = None) -> Volume:
    """The phantom's labels on ``volume``'s grid, seen through ``transform`` (grid -> phantom)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.array.shape), indexing="ij")
    points_lps = volume.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3), "LPS")
    if transform is not None:
        points_lps = apply_affine(transform, points_lps)
    array = phantom_labels(points_lps).reshape(volume.array.shape)
    return Volume(array, volume.spacing_mm, volume.origin_lps, volume.direction_lps, "labels")


def test_propagated_labels_recover_known_transform(
    propagated, atlas: Volume, target: Volume
) -> None:
    _, result = propagated
    atlas_labels = label_map_of(atlas)
    warped = propagate_labels(atlas, atlas_labels, target, transform=result.transform)
    assert warped.shape_xyz == target.shape_xyz
    np.testing.assert_array_equal(warped.direction_lps, target.direction_lps)
    assert set(np.unique(warped.array)) == set(np.unique(atlas_labels.array))  # nearest only
    names = {**SPHERE_NAMES, **REGION_NAMES}
    expected = label_map_of(target, true_transform())
    _, found_boxes = boxes_from_label_map(warped, names, list(names.values()))
    _, true_boxes = boxes_from_label_map(expected, names, list(names.values()))
    assert centre_distance_mm(found_boxes, true_boxes).max() < 2.0
    assert box_iou(found_boxes, true_boxes).min() > 0.5
    assert box_iou(found_boxes[-3:], true_boxes[-3:]).min() > 0.8  # the large regions
    # Unregistered (the atlas labels simply put on the target grid) the boxes are far off.
    _, unmoved = boxes_from_label_map(atlas_labels, names, list(names.values()))
    assert centre_distance_mm(unmoved, true_boxes).mean() > 5.0


def test_propagate_labels_through_a_given_transform(atlas: Volume) -> None:
    atlas_labels = label_map_of(atlas)
    same = propagate_labels(atlas, atlas_labels, atlas, transform=sitk.AffineTransform(3))
    np.testing.assert_array_equal(same.array, atlas_labels.array)
    shift = sitk.TranslationTransform(3, (4.0, 0.0, 0.0))  # target point -> atlas point + 4 mm L
    shifted = propagate_labels(atlas, atlas_labels, atlas, transform=shift)
    np.testing.assert_array_equal(shifted.array[:, :, :-2], atlas_labels.array[:, :, 2:])
    assert not shifted.array[:, :, -2:].any()  # beyond the atlas: background
