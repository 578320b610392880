"""The field-of-view changes of benchmarks/bench_acquisition keep every voxel where it was in
the world: the neck only adds slices below, the cut only removes slices above the head's top,
whichever index axis runs superior and in which direction."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.bench_acquisition import add_neck, cut_top

from medrl.io.images import Volume

# direction (LPS columns of the index axes i, j, k): axial with k up or down, and a sagittal
# storage with j up or down (S along the second index axis)
DIRECTIONS = {
    "k up": np.diag([-1.0, -1.0, 1.0]),
    "k down": np.diag([-1.0, -1.0, -1.0]),
    "j up": np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "j down": np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}
TOP_S_MM = 12.0
"""The head's tissue ends at this height (RAS S, mm); the field of view goes higher."""


def _superior_mm(volume: Volume) -> np.ndarray:
    """(z, y, x) array of each voxel centre's height (RAS S, mm)."""
    k, j, i = np.indices(volume.array.shape)
    points = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    return volume.index_to_world(points)[:, 2].reshape(volume.array.shape)


def _head(name: str) -> Volume:
    """A 12 x 14 x 16 grid (2 mm along the axis that runs superior): random tissue up to
    ``TOP_S_MM``, nothing above."""
    direction = DIRECTIONS[name]
    spacing = (1.0, 2.0, 1.5) if name.startswith("j") else (1.0, 1.5, 2.0)
    empty = Volume(np.zeros((16, 14, 12)), spacing, (5.0, -3.0, -8.0), direction, "head.nii.gz")
    tissue = np.random.default_rng(0).uniform(50, 100, size=empty.array.shape)
    return Volume(np.where(_superior_mm(empty) <= TOP_S_MM, tissue, 0.0), spacing,
                  empty.origin_lps, direction, "head.nii.gz")  # fmt: skip


def _value_at(volume: Volume, point_ras: np.ndarray) -> float:
    i, j, k = np.rint(volume.world_to_index(point_ras[None])[0]).astype(int)
    return float(volume.array[k, j, i])


def _same_voxels(smaller: Volume, larger: Volume) -> None:
    """Every voxel of ``smaller`` has its value at the same world point in ``larger``."""
    k, j, i = np.indices(smaller.array.shape)
    points = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    world = smaller.index_to_world(points)
    index = np.rint(larger.world_to_index(world)).astype(int)
    np.testing.assert_array_equal(
        larger.array[index[:, 2], index[:, 1], index[:, 0]], smaller.array.ravel()
    )


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_neck_adds_slices_below_and_moves_nothing(name: str) -> None:
    head = _head(name)
    necked = add_neck(head, 10.0)  # 5 slices of 2 mm
    slices = 14 if name.startswith("j") else 16  # along the axis that runs superior
    assert necked.array.size == head.array.size // slices * (slices + 5)
    before, after = _superior_mm(head), _superior_mm(necked)
    assert after.min() == pytest.approx(before.min() - 10.0)
    assert after.max() == pytest.approx(before.max())
    _same_voxels(head, necked)
    # below the old field of view: the lowest slice, repeated
    bottom = head.index_to_world(np.argwhere(before == before.min())[:1, ::-1].astype(float))[0]
    assert _value_at(necked, bottom - [0.0, 0.0, 8.0]) == _value_at(head, bottom)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_cut_ends_the_scan_below_the_top_of_the_head(name: str) -> None:
    head = _head(name)
    top = _superior_mm(head)[head.array > 0].max()  # the highest slice with tissue
    assert top <= TOP_S_MM
    # a bright voxel of background at the top of the field of view is not the head
    flecked = head.array.copy()
    flecked[np.unravel_index(np.argmax(_superior_mm(head)), flecked.shape)] = 500.0
    cut = cut_top(Volume(flecked, head.spacing_mm, head.origin_lps, head.direction_lps), 4.0)
    assert _superior_mm(cut).max() == pytest.approx(top - 4.0)
    assert _superior_mm(cut).min() == pytest.approx(_superior_mm(head).min())
    _same_voxels(cut, head)


def test_a_cut_that_leaves_no_scan_or_finds_no_head_is_refused() -> None:
    head = _head("k up")
    with pytest.raises(ValueError, match="leaves 1 of 16 slices"):
        cut_top(head, 20.0)
    with pytest.raises(ValueError, match="no head"):
        cut_top(Volume(np.zeros((4, 4, 4)), (1, 1, 1), (0, 0, 0), np.eye(3), "empty.nii.gz"), 5.0)
