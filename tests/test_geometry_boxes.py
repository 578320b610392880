"""Tests for medrl.geometry.boxes: box arithmetic (hand-computed) and boxes of label maps."""

from __future__ import annotations

import numpy as np
import pytest

from _synthetic import rotation_matrix
from medrl.errors import InputError
from medrl.geometry.boxes import (
    box_corners,
    box_iou,
    box_volume_mm3,
    boxes_from_label_map,
    boxes_from_points,
    centre_distance_mm,
    from_min_max,
    structure_points_ras,
    to_min_max,
    voxel_half_extent_mm,
    wall_distance_mm,
)
from medrl.io.images import Volume

CUBE = np.array([0.0, 0.0, 0.0, 2.0, 2.0, 2.0])  # R, A, S in [-1, 1]


def test_iou_hand_computed() -> None:
    shifted = CUBE + np.array([1.0, 0, 0, 0, 0, 0])  # R in [0, 2]: overlap 1 x 2 x 2 = 4, union 12
    inner = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # inside CUBE: 1 / 8
    far = CUBE + np.array([5.0, 0, 0, 0, 0, 0])
    touching = CUBE + np.array([2.0, 0, 0, 0, 0, 0])  # shares a face only
    others = np.stack([CUBE, shifted, inner, far, touching])
    np.testing.assert_allclose(box_iou(CUBE, others), [1.0, 1 / 3, 1 / 8, 0.0, 0.0])
    np.testing.assert_allclose(box_iou(others, CUBE), box_iou(CUBE, others))  # symmetric
    # An anisotropic pair: [0, 4] x [0, 1] x [0, 1] and [2, 6] x [0, 1] x [0, 2]
    a = from_min_max([0, 0, 0, 4, 1, 1])
    b = from_min_max([2, 0, 0, 6, 1, 2])
    np.testing.assert_allclose(box_iou(a, b), [2.0 / (4.0 + 8.0 - 2.0)])
    # Two empty boxes have IoU 0, not NaN.
    flat = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(box_iou(flat, flat), [0.0])


def test_min_max_round_trip_and_corners() -> None:
    boxes = np.array([[1.0, -2.0, 3.0, 2.0, 4.0, 6.0], [0.5, 0.5, 0.5, 0.0, 1.0, 3.0]])
    min_max = to_min_max(boxes)
    np.testing.assert_allclose(min_max[0], [0.0, -4.0, 0.0, 2.0, 0.0, 6.0])
    np.testing.assert_allclose(from_min_max(min_max), boxes)
    np.testing.assert_allclose(box_volume_mm3(boxes), [48.0, 0.0])
    corners = box_corners(boxes[0])
    assert corners.shape == (1, 8, 3)
    np.testing.assert_allclose(corners[0, 0], [0.0, -4.0, 0.0])  # all minima
    np.testing.assert_allclose(corners[0, 7], [2.0, 0.0, 6.0])  # all maxima
    np.testing.assert_allclose(corners[0, 1], [2.0, -4.0, 0.0])  # bit 0: max along R
    np.testing.assert_allclose(corners[0, 4], [0.0, -4.0, 6.0])  # bit 2: max along S
    assert len({tuple(c) for c in corners[0]}) == 8
    np.testing.assert_allclose(corners[0].mean(axis=0), boxes[0, :3])


def test_distances_hand_computed() -> None:
    moved = CUBE + np.array([3.0, 4.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(centre_distance_mm(CUBE, moved), [5.0])
    # Walls: R and A walls each move by 3 and 4 mm, S walls stay: (3 + 3 + 4 + 4) / 6.
    np.testing.assert_allclose(wall_distance_mm(CUBE, moved), [14.0 / 6.0])
    grown = np.array([1.0, 0.0, 0.0, 4.0, 2.0, 2.0])  # R in [-1, 3]: only the max-R wall moves
    np.testing.assert_allclose(wall_distance_mm(CUBE, grown), [2.0 / 6.0])
    np.testing.assert_allclose(centre_distance_mm(CUBE, grown), [1.0])


def test_bad_boxes_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative size"):
        box_iou(CUBE, [0, 0, 0, -1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        box_iou(CUBE, [0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        to_min_max([np.nan, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="pair"):
        box_iou(np.stack([CUBE] * 2), np.stack([CUBE] * 3))
    with pytest.raises(ValueError, match="max below"):
        from_min_max([1, 0, 0, 0, 1, 1])


def _label_map(array_zyx: np.ndarray, spacing, origin_lps, direction_lps, source="lab.nii.gz"):
    return Volume(array_zyx.astype(np.float32), spacing, origin_lps, direction_lps, source)


def test_box_of_a_cuboid_label_on_an_ras_grid() -> None:
    # NIfTI-like grid: direction diag(-1, -1, 1), so index i grows towards R (= -L).
    array = np.zeros((6, 8, 10))
    array[1:3, 3:6, 2:5] = 4  # k 1..2, j 3..5, i 2..4
    array[5, 7, 9] = 9  # a one-voxel structure in the far corner
    labels = _label_map(array, (1.0, 2.0, 3.0), (10.0, 20.0, -5.0), np.diag([-1.0, -1.0, 1.0]))
    names, boxes = boxes_from_label_map(labels, {4: "cuboid", 9: "dot", 7: "absent"})
    assert names == ("cuboid", "dot")  # empty structures are left out when none are asked for
    # R = -L = -(10 - i * 1) = i - 10: voxels 2..4 span i in [1.5, 4.5] -> R in [-8.5, -5.5].
    # A = -(20 - 2 j) = 2 j - 20: j in [2.5, 5.5] -> A in [-15, -9].
    # S = -5 + 3 k: k in [0.5, 2.5] -> S in [-3.5, 2.5].
    np.testing.assert_allclose(to_min_max(boxes[0]), [[-8.5, -15.0, -3.5, -5.5, -9.0, 2.5]])
    # The dot at (i, j, k) = (9, 7, 5): centre RAS (-1, -6, 10), size = spacing.
    np.testing.assert_allclose(boxes[1], [-1.0, -6.0, 10.0, 1.0, 2.0, 3.0])
    names, points = structure_points_ras(labels, {4: "cuboid", 9: "dot"}, ["dot", "cuboid"])
    assert names == ("dot", "cuboid")
    assert [len(p) for p in points] == [1, 2 * 3 * 3]
    np.testing.assert_allclose(points[0], [[-1.0, -6.0, 10.0]])
    np.testing.assert_allclose(boxes_from_points(points[1:], [0.5, 1.0, 1.5]), boxes[:1])


def test_box_of_an_oblique_voxel_counts_its_corners() -> None:
    # One voxel of 1 mm on a grid rotated 45° about S: its corners reach sqrt(2)/2 along R, A.
    array = np.zeros((3, 3, 3))
    array[1, 1, 1] = 1
    direction = rotation_matrix(0.0, 45.0)
    labels = _label_map(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    _, boxes = boxes_from_label_map(labels, {1: "voxel"}, ["voxel"])
    centre = labels.index_to_world([1.0, 1.0, 1.0], "RAS")[0]
    np.testing.assert_allclose(boxes[0, :3], centre, atol=1e-12)
    np.testing.assert_allclose(boxes[0, 3:], [np.sqrt(2.0), np.sqrt(2.0), 1.0], atol=1e-12)
    np.testing.assert_allclose(voxel_half_extent_mm(labels), [np.sqrt(0.5), np.sqrt(0.5), 0.5])
    # Rotating the voxel back by -45° about S makes it axis-aligned again.
    undo = np.array([[1.0, 1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, np.sqrt(2.0)]]) / np.sqrt(2)
    np.testing.assert_allclose(voxel_half_extent_mm(labels, undo), [0.5, 0.5, 0.5], atol=1e-12)


def test_label_map_errors_name_file_and_structure() -> None:
    array = np.zeros((4, 4, 4))
    array[1, 1, 1] = 1
    labels = _label_map(array, (1.0,) * 3, (0.0,) * 3, np.eye(3), source="/data/seg.nii.gz")
    names = {1: "L Putamen", 2: "R Putamen"}
    with pytest.raises(InputError, match="'R Putamen' \\(label 2\\) has no voxels") as info:
        boxes_from_label_map(labels, names, ["L Putamen", "R Putamen"])
    assert info.value.path == "/data/seg.nii.gz"
    with pytest.raises(InputError, match="known structures: L Putamen, R Putamen"):
        boxes_from_label_map(labels, names, ["Putamen"])
    with pytest.raises(InputError, match="used for label values 1 and 2"):
        boxes_from_label_map(labels, {1: "same", 2: "same"})
    with pytest.raises(InputError, match="twice"):
        boxes_from_label_map(labels, names, ["L Putamen", "L Putamen"])
    names_found, boxes = boxes_from_label_map(labels, {2: "R Putamen"})
    assert names_found == () and boxes.shape == (0, 6)
