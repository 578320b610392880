"""The slice task's own geometry: the scan's slice axis and frame on oblique and flipped grids,
slice indices and spacing, training starts, the distance it rewards, and the per-scan JSON."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from _synthetic import rotation_matrix
from medrl.agents.search import SearchResult
from medrl.config import Config, EnvConfig, LevelConfig, TaskConfig
from medrl.errors import InputError
from medrl.io.images import Volume
from medrl.predict_slices import read_slices, slices_document, write_slices
from medrl.tasks.slice import (
    SliceTask,
    slice_axis_of,
    slice_distance_mm,
    slice_frame,
    slice_index,
    slice_spacing_mm,
)

LEVELS = (
    LevelConfig(spacing_mm=4.0, step_mm=4.0, start_radius_mm=30.0, start_angle_deg=35.0,
                max_steps=5),
    LevelConfig(spacing_mm=1.0, step_mm=0.5, start_radius_mm=2.0, start_angle_deg=35.0,
                max_steps=5),
)  # fmt: skip


def _task(**task: object) -> SliceTask:
    config = replace(
        Config(), task=TaskConfig(kind="slice", **task), env=EnvConfig(levels=LEVELS)
    )  # fmt: skip
    return SliceTask(config)


def _volume(direction_lps: np.ndarray, spacing=(1.0, 1.2, 2.5), shape_zyx=(60, 70, 80)) -> Volume:
    return Volume(np.zeros(shape_zyx, np.float32), np.array(spacing), np.array([5.0, -3.0, 7.0]),
                  direction_lps, "grid")  # fmt: skip


def test_the_axis_closest_to_superior_is_found_on_turned_and_permuted_grids() -> None:
    # voxel axis i runs along S (the direction's columns are the axes i, j, k in LPS)
    sagittal = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    volume = _volume(sagittal)
    assert slice_axis_of(volume.index_to_ras) == 0
    axis, normal, inplane = slice_frame(volume.index_to_ras)
    np.testing.assert_allclose(normal, [0, 0, 1], atol=1e-12)
    assert abs(normal @ inplane) < 1e-12 and np.isclose(np.linalg.norm(inplane), 1.0)
    # turned 25 degrees: still the same axis; the normal follows the grid
    turned = _volume(rotation_matrix(25.0, 0.0))
    axis, normal, _ = slice_frame(turned.index_to_ras)
    assert axis == 2 and np.degrees(np.arccos(normal[2])) == pytest.approx(25.0, abs=1e-6)
    # a user-named axis, and a wrong one
    assert slice_frame(turned.index_to_ras, 0)[0] == 0
    with pytest.raises(InputError, match="slice_axis"):
        slice_axis_of(turned.index_to_ras, 3)


def test_the_frame_does_not_depend_on_the_direction_the_index_runs() -> None:
    """A grid stored upside down (index growing towards I) has the same slices: the same
    frame, so the network sees the same view."""
    up = _volume(np.eye(3))
    down = _volume(np.diag([1.0, 1.0, -1.0]))
    for a, b in zip(slice_frame(up.index_to_ras), slice_frame(down.index_to_ras), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_slice_index_and_spacing_on_an_oblique_grid() -> None:
    volume = _volume(rotation_matrix(20.0, 15.0))
    index = np.array([[10.0, 20.0, 7.25], [3.0, 5.0, 40.0]])
    points = volume.index_to_world(index)
    np.testing.assert_allclose(slice_index(volume.index_to_ras, points, 2), [7.25, 40.0])
    assert slice_spacing_mm(volume.index_to_ras, 2) == pytest.approx(2.5)
    # the distance between the slices of two points, along the normal, is the index gap
    _, normal, inplane = slice_frame(volume.index_to_ras, 2)
    poses = np.concatenate([points, np.tile(np.concatenate([normal, inplane]), (2, 1))], axis=1)
    assert slice_distance_mm(poses[0], poses[1])[0] == pytest.approx(32.75 * 2.5)


def test_moves_follow_the_slice_frame_and_the_distance_weighs_in_plane_offsets_less() -> None:
    task = _task(slice_inplane_weight=0.5)
    goal = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])  # n = S, u = R, v = A
    level = torch.zeros(1, dtype=torch.long)
    expected = {"+n": [1, 2, 7], "-n": [1, 2, -1], "+u": [5, 2, 3], "-u": [-3, 2, 3],
                "+v": [1, 6, 3], "-v": [1, -2, 3]}  # fmt: skip
    for action, name in enumerate(task.actions):
        moved = task.move(goal, torch.tensor([action]), level)
        torch.testing.assert_close(moved[0, :3], torch.tensor(expected[name], dtype=torch.float32))
        torch.testing.assert_close(moved[0, 3:], goal[0, 3:])  # the frame never changes
    aside = goal.clone()
    aside[0, :2] += torch.tensor([12.0, -9.0])  # 15 mm away within the slice
    assert float(task.distance(aside, goal)[0]) == pytest.approx(7.5)
    up = task.move(aside, torch.tensor([0]), level)
    assert float(task.distance(up, goal)[0]) == pytest.approx(4.0 + 7.5)
    # the score is the slice distance alone
    assert task.scores(aside.numpy(), goal.numpy())["slice_error_mm"][0] == pytest.approx(0.0)


def test_training_starts_tilt_the_axis_and_leave_the_slice_within_the_radius() -> None:
    task = _task()
    goal = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]]).expand(500, -1)
    rng = np.random.default_rng(0)
    for level, spec in enumerate(LEVELS):
        offsets = np.stack([task.start_offset(level, rng) for _ in range(500)])
        starts = task.displace(goal, torch.as_tensor(offsets, dtype=torch.float32))
        tilt = np.degrees(np.arccos(np.clip(starts[:, 5].numpy(), -1, 1)))
        assert tilt.max() <= spec.start_angle_deg + 1e-3
        assert tilt.mean() > 0.4 * spec.start_angle_deg
        along = np.abs((starts[:, :3].numpy() * starts[:, 3:6].numpy()).sum(axis=1))
        assert along.max() <= spec.start_radius_mm + 1e-3  # along the start's (tilted) normal
        assert np.median(along) > 0.6 * spec.start_radius_mm  # mostly far, as in a ball
        along = np.abs((starts[:, :3].numpy() * starts[:, 3:6].numpy()).sum(axis=1))
        inplane = np.linalg.norm(starts[:, :3].numpy(), axis=1) ** 2 - along**2
        assert np.sqrt(np.clip(inplane, 0, None)).max() <= spec.start_radius_mm + 1e-2


def _result(volume: Volume, index: np.ndarray, axis: int = 2) -> SearchResult:
    _, normal, inplane = slice_frame(volume.index_to_ras, axis)
    points = volume.index_to_world(index)
    frame = np.tile(np.concatenate([normal, inplane]), (len(index), 1))
    estimate = np.concatenate([points, frame], axis=1)
    return SearchResult(("1", "2"), ("AC", "PC"), estimate, [], [], 0, [])


def test_the_slices_file_names_axis_index_and_position(tmp_path) -> None:
    volume = _volume(np.diag([1.0, 1.0, -1.0]))  # index k grows towards inferior
    result = _result(volume, np.array([[30.0, 35.0, 25.4], [30.0, 35.0, 31.0]]))
    path = tmp_path / "scan.slices.json"
    write_slices(path, volume, result)
    document = read_slices(path)
    assert document["axis"] == 2 and document["slice_count"] == 60
    assert [s["name"] for s in document["slices"]] == ["1", "2"]
    assert document["slices"][0]["index"] == pytest.approx(25.4)
    assert document["slices"][0]["nearest_index"] == 25
    assert document["slice_spacing_mm"] == pytest.approx(2.5)
    # the normal points where the index grows; positions differ by the index gap x spacing
    assert document["normal"][2] == pytest.approx(-1.0)
    gap = document["slices"][1]["position_mm"] - document["slices"][0]["position_mm"]
    assert gap == pytest.approx(5.6 * 2.5, abs=1e-3)
    lps = slices_document(volume, result, "LPS")
    assert lps["slices"][0]["point"][0] == pytest.approx(-document["slices"][0]["point"][0])


def test_a_slice_at_the_edge_of_the_field_of_view_is_an_error_and_nothing_is_written(
    tmp_path,
) -> None:
    volume = _volume(np.eye(3))
    result = _result(volume, np.array([[30.0, 35.0, 40.0], [30.0, 35.0, 1.0]]))
    with pytest.raises(InputError, match="field of view does not contain the slice"):
        write_slices(tmp_path / "x.slices.json", volume, result)
    assert not list(tmp_path.iterdir())
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="medrl-slices"):
        read_slices(tmp_path / "bad.json")
