"""The field-of-view changes of benchmarks/bench_acquisition keep every voxel where it was in
the world: the neck only adds slices below, the cut only removes slices above."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.bench_acquisition import add_neck, cut_top

from medrl.io.images import Volume


def _head(direction_lps: np.ndarray) -> Volume:
    """A 12 x 10 x 16 grid (2 mm in z) holding a block of tissue that ends 3 slices below the
    top of the field of view (in world terms, whichever way the index runs)."""
    rng = np.random.default_rng(0)
    array = np.zeros((16, 10, 12), dtype=np.float32)
    array[:, 2:8, 2:10] = rng.uniform(50, 100, size=(16, 6, 8))
    if direction_lps[2, 2] > 0:  # index z grows superior: the top slices are the last ones
        array[13:] = 0
    else:
        array[:3] = 0
    return Volume(array, (1.0, 1.5, 2.0), (5.0, -3.0, 10.0), direction_lps, source="head.nii.gz")


def _value_at(volume: Volume, point_ras: np.ndarray) -> float:
    i, j, k = np.rint(volume.world_to_index(point_ras[None])[0]).astype(int)
    return float(volume.array[k, j, i])


@pytest.mark.parametrize("flip", [False, True])
def test_neck_adds_slices_below_and_moves_nothing(flip: bool) -> None:
    direction = np.diag([-1.0, -1.0, -1.0 if flip else 1.0])
    head = _head(direction)
    necked = add_neck(head, 10.0)  # 5 slices of 2 mm
    assert necked.array.shape == (21, 10, 12)
    z_ras = [necked.index_to_world(np.array([[0, 0, k]]))[0, 2] for k in (0, 20)]
    old_z = [head.index_to_world(np.array([[0, 0, k]]))[0, 2] for k in (0, 15)]
    assert min(z_ras) == pytest.approx(min(old_z) - 10.0)
    assert max(z_ras) == pytest.approx(max(old_z))
    for index in ([3, 4, 0], [6, 5, 7], [9, 2, 15]):
        point = head.index_to_world(np.array([index], dtype=float))[0]
        assert _value_at(necked, point) == head.array[index[2], index[1], index[0]]
    lowest = head.array[0] if not flip else head.array[-1]
    point = head.index_to_world(np.array([[4, 4, 0 if not flip else 15]], dtype=float))[0]
    below = point - np.array([0.0, 0.0, 8.0])
    assert _value_at(necked, below) == lowest[4, 4]


@pytest.mark.parametrize("flip", [False, True])
def test_cut_ends_the_scan_below_the_top_of_the_head(flip: bool) -> None:
    direction = np.diag([-1.0, -1.0, -1.0 if flip else 1.0])
    head = _head(direction)
    cut = cut_top(head, 4.0)  # the head's top slice is index 12 (or 3); 2 more go
    assert cut.array.shape == (11, 10, 12)  # slices 0-10 (or 5-15) stay
    top_ras = head.index_to_world(np.array([[0, 0, 12 if not flip else 3]], dtype=float))[0, 2]
    z_ras = [cut.index_to_world(np.array([[0, 0, k]], dtype=float))[0, 2] for k in (0, 10)]
    assert max(z_ras) == pytest.approx(top_ras - 4.0)
    point = cut.index_to_world(np.array([[5, 5, 4]], dtype=float))[0]
    assert _value_at(cut, point) == _value_at(head, point)
