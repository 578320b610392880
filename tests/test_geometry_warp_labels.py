"""Tests for medrl.geometry.warp_labels: label maps moved with the evaluation scenarios."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from _synthetic import rotation_matrix
from medrl.data.augment import inverse_transform_points
from medrl.geometry.boxes import (
    box_iou,
    boxes_from_label_map,
    boxes_from_points,
    centre_distance_mm,
    structure_points_ras,
    voxel_half_extent_mm,
)
from medrl.geometry.warp_labels import (
    deform_labels,
    elastic_sample_points_ras,
    grid_centre_ras,
    labels_on_grid,
    move_labels,
)
from medrl.io.images import Volume

NAMES = {1: "big", 2: "small"}


@dataclass(frozen=True)
class Rigid:
    """A rigid motion in RAS (the interface of medrl.evaluation.RigidTransform)."""

    rotation: np.ndarray
    translation_mm: np.ndarray

    def rotation_ras(self) -> np.ndarray:
        return self.rotation


def _image() -> Volume:
    """A 1.5 mm oblique image grid, 48³ voxels (72 mm), centred near RAS (5, -3, 8)."""
    direction = rotation_matrix(10.0, -15.0)
    spacing = np.full(3, 1.5)
    centre_lps = np.array([-5.0, 3.0, 8.0])
    origin = centre_lps - direction @ (spacing * 23.5)
    rng = np.random.default_rng(0)
    return Volume(rng.normal(size=(48, 48, 48)).astype(np.float32), spacing, origin, direction)


def _labels() -> Volume:
    """A cropped 1 mm label map (identity direction): a 12x8x10 mm cuboid and a 4 mm cube."""
    array = np.zeros((30, 26, 28), np.float32)
    array[8:18, 6:14, 5:17] = 1
    array[20:24, 18:22, 20:24] = 2
    return Volume(array, (1.0, 1.0, 1.0), (-12.0, -8.0, -5.0), np.eye(3), source="labels.nii.gz")


def test_labels_on_grid_keeps_boxes() -> None:
    image, labels = _image(), _labels()
    on_grid = labels_on_grid(labels, image)
    assert on_grid.shape_xyz == image.shape_xyz
    np.testing.assert_array_equal(on_grid.direction_lps, image.direction_lps)
    assert set(np.unique(on_grid.array)) == {0.0, 1.0, 2.0}
    _, before = boxes_from_label_map(labels, NAMES)
    _, after = boxes_from_label_map(on_grid, NAMES)
    # Nearest resampling onto an oblique 1.5 mm grid keeps the centres; the boxes grow by
    # about the extent of the (rotated) image voxels.
    assert centre_distance_mm(before, after).max() < 1.0
    growth = after[:, 3:] - before[:, 3:]
    assert growth.min() > -1.0 and growth.max() < 2.0 * voxel_half_extent_mm(image).max() + 0.5
    assert box_iou(before[:1], after[:1])[0] > 0.6


@pytest.mark.parametrize("seed", [0, 1])
def test_moved_labels_follow_the_analytic_motion(seed: int) -> None:
    image, labels = _image(), _labels()
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(12.0)
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    rigid = Rigid(rotation, np.array([6.0, -4.0, 3.0]))
    moved = move_labels(labels, image, rigid)
    assert moved.shape_xyz == image.shape_xyz

    centre = grid_centre_ras(image)
    names, points = structure_points_ras(labels, NAMES)
    moved_points = [(p - centre) @ rotation.T + centre + rigid.translation_mm for p in points]
    # The box of the moved voxels: their moved centres, each grown by a rotated voxel.
    expected = boxes_from_points(moved_points, voxel_half_extent_mm(labels, rotation))
    found_names, found = boxes_from_label_map(moved, NAMES)
    assert found_names == names
    assert centre_distance_mm(found, expected).max() < 1.0
    np.testing.assert_allclose(found[:, 3:], expected[:, 3:], atol=2.5)

    # A landmark inside a structure stays inside the moved structure.
    landmark = np.array([1.5, -1.5, 7.5])  # RAS centre of "big" (LPS (-1.5, 1.5, 7.5))
    index = np.rint(labels.world_to_index(landmark, "RAS")[0]).astype(int)
    assert labels.array[index[2], index[1], index[0]] == 1
    moved_landmark = (landmark - centre) @ rotation.T + centre + rigid.translation_mm
    index = np.rint(moved.world_to_index(moved_landmark, "RAS")[0]).astype(int)
    assert moved.array[index[2], index[1], index[0]] == 1


def test_moved_labels_overlay_the_moved_image() -> None:
    """move_labels and evaluation.move_case move label map and image the same way."""
    from medrl.evaluation import RigidTransform, move_case
    from medrl.io.landmarks import Landmarks

    image, labels = _image(), _labels()
    on_grid = labels_on_grid(labels, image)
    # The image shows the structures: 100 inside "big", 0 elsewhere.
    picture = Volume(
        100.0 * (on_grid.array == 1), image.spacing_mm, image.origin_lps, image.direction_lps
    )
    rigid = RigidTransform(np.array([0.0, 0.6, 0.8]), 14.0, np.array([-5.0, 7.0, 2.0]))
    moved_picture, _ = move_case(picture, Landmarks(("a",), [[0.0, 0.0, 0.0]]), rigid)
    moved = move_labels(on_grid, image, rigid)
    inside_image = moved_picture.array > 50.0
    inside_labels = moved.array == 1
    agreement = np.sum(inside_image & inside_labels) / np.sum(inside_image | inside_labels)
    assert agreement > 0.9


def test_deformed_labels_follow_the_warp() -> None:
    image, labels = _image(), _labels()
    np.testing.assert_array_equal(
        deform_labels(labels, image, 0.0, seed=3).array, labels_on_grid(labels, image).array
    )
    warped = deform_labels(labels, image, 4.0, seed=3)
    assert not np.array_equal(warped.array, labels_on_grid(labels, image).array)
    # Landmarks move like deform_case moves them: the y with y + d(y) = l.
    params, _ = elastic_sample_points_ras(image, 4.0, seed=3)
    _, points = structure_points_ras(labels, NAMES, ["big"])
    landmark = points[0].mean(axis=0)
    moved = inverse_transform_points(
        params, torch.tensor(landmark[None, None], dtype=torch.float32)
    )
    moved_ras = moved[0, 0].numpy().astype(np.float64)
    assert np.linalg.norm(moved_ras - landmark) > 0.5  # the warp does move it
    index = np.rint(warped.world_to_index(moved_ras, "RAS")[0]).astype(int)
    assert warped.array[index[2], index[1], index[0]] == 1
    # The warped structures keep their size roughly (a smooth, small warp).
    _, before = boxes_from_label_map(labels, NAMES)
    _, after = boxes_from_label_map(warped, NAMES)
    np.testing.assert_allclose(after[:, 3:], before[:, 3:], atol=4.0)
