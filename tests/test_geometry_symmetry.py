"""The mid-sagittal plane as the plane of mirror symmetry: found from a plane a few degrees off,
on a synthetic scan symmetric about a known tilted plane and on a rigidly moved real brain; the
plane task's refinement keeps the AC-PC plane perpendicular to the refined MSP."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from _synthetic import CENTRE_RAS, _grid_volume, rotation_matrix
from medrl.config import Config, EnvConfig, LevelConfig, TaskConfig
from medrl.data.scenarios import random_rigid, scenario_scans
from medrl.data.sources import load_split
from medrl.envs.pyramid import build_pyramid
from medrl.geometry.planes import (
    MIDLINE_AFIDS,
    plane_angle_deg,
    plane_distance_mm,
    planes_from_afids,
)
from medrl.geometry.symmetry import SymmetrySettings, find_symmetry_plane, refine_symmetry_plane
from medrl.io.images import Volume
from medrl.tasks.plane import PlaneTask, rotate


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


TRUE_NORMAL = _unit(np.array([1.0, np.tan(np.radians(7.0)), np.tan(np.radians(-4.0))]))
TRUE_POINT = np.asarray(CENTRE_RAS, dtype=np.float64) + np.array([3.0, 0.0, 0.0])


def _pose(point: np.ndarray, normal: np.ndarray) -> np.ndarray:
    axis = _unit(np.array([0.0, 1.0, 0.0]) - normal[1] * normal)
    return np.concatenate([point, normal, axis])


def _symmetric_scan() -> Volume:
    """Gaussian blobs of random heights and their mirror images (the same height) across the
    plane through ``TRUE_POINT`` with normal ``TRUE_NORMAL``, on an oblique 2 mm grid."""
    rng = np.random.default_rng(3)
    half = TRUE_POINT + rng.uniform(-35.0, 35.0, size=(20, 3))
    mirrored = half - 2.0 * np.outer((half - TRUE_POINT) @ TRUE_NORMAL, TRUE_NORMAL)
    heights = rng.uniform(200.0, 1000.0, size=20)
    empty, ras = _grid_volume((60, 60, 60), (2.0, 2.0, 2.0), rotation_matrix(20.0, 20.0),
                              CENTRE_RAS)  # fmt: skip
    array = np.zeros(ras.shape[:3])
    for height, a, b in zip(heights, half, mirrored, strict=True):
        for centre in (a, b):
            array += height * np.exp(-np.sum((ras - centre) ** 2, axis=-1) / (2 * 5.0**2))
    return replace(empty, array=array.astype(np.float32))


def _tilted_start(degrees: float, shift_mm: float) -> np.ndarray:
    normal = rotate(
        torch.tensor(TRUE_NORMAL[None]), torch.tensor([[0.0, 0.0, np.radians(degrees)]])
    )[0].numpy()
    return _pose(TRUE_POINT + shift_mm * TRUE_NORMAL, normal)


def test_the_plane_of_symmetry_is_found_from_a_plane_degrees_off() -> None:
    scan = build_pyramid(_symmetric_scan(), [2.0])
    truth = _pose(TRUE_POINT, TRUE_NORMAL)
    start = _tilted_start(4.0, 3.0)
    assert plane_angle_deg(start, truth)[0] > 3.9
    result = refine_symmetry_plane(scan.levels[0], start, SymmetrySettings(half_width_mm=20.0))
    assert result.accepted
    assert result.correlation > result.start_correlation
    assert plane_angle_deg(result.pose, truth)[0] < 0.3
    assert plane_distance_mm(result.pose, truth)[0] < 0.3
    assert abs(float(result.pose[3:6] @ result.pose[6:9])) < 1e-9


def test_a_refinement_beyond_the_allowed_tilt_keeps_the_start() -> None:
    scan = build_pyramid(_symmetric_scan(), [2.0])
    start = _tilted_start(4.0, 0.0)
    settings = SymmetrySettings(half_width_mm=20.0, max_angle_deg=1.0)
    result = refine_symmetry_plane(scan.levels[0], start, settings)
    assert not result.accepted
    np.testing.assert_array_equal(result.pose, start)


def test_on_a_moved_real_brain_the_symmetry_plane_is_found_from_8_degrees_off(
    builtin_data,
) -> None:
    case = load_split("builtin:afids", "train")[0]
    (moved,) = scenario_scans([case], rigid_trials=1, seed=4321, landmark_names=MIDLINE_AFIDS)
    assert random_rigid(4321, 15.0, 20.0).rotation_deg > 5.0  # the scan is truly moved
    truth = planes_from_afids(moved.landmarks.points_ras, moved.landmarks.names)[0]
    start = truth.copy()
    start[3:6] = rotate(
        torch.tensor(truth[None, 3:6]), torch.tensor([[0.0, np.radians(8.0), 0.0]])
    )[0].numpy()
    start[:3] += 4.0 * start[3:6]
    scan = build_pyramid(moved.volume, [4.0, 2.0])
    result = find_symmetry_plane(scan.levels[0], scan.levels[1], start)
    assert result.accepted and result.correlation > result.start_correlation
    assert plane_angle_deg(start, truth)[0] > 7.9
    assert plane_angle_deg(result.pose, truth)[0] < 1.0
    assert plane_distance_mm(result.pose, truth)[0] < 1.0


@pytest.mark.parametrize("symmetry", [False, True])
def test_the_plane_task_refines_the_msp_and_keeps_the_acpc_plane_perpendicular(
    symmetry: bool,
) -> None:
    levels = tuple(
        LevelConfig(spacing_mm=mm, step_mm=1.0, start_radius_mm=2.0, max_steps=5)
        for mm in (4.0, 2.0)
    )
    task_config = TaskConfig(kind="plane", plane_symmetry=symmetry)
    config = replace(Config(), task=task_config, env=EnvConfig(levels=levels))
    task = PlaneTask(config)
    scan = build_pyramid(_symmetric_scan(), [4.0, 2.0])
    msp = _tilted_start(4.0, 2.0)
    up = _unit(np.cross(TRUE_NORMAL, [0.0, 1.0, 0.0]) * -1.0)
    acpc = np.concatenate([TRUE_POINT, up, _unit(np.cross(up, msp[3:6]))])
    estimate = np.stack([msp, acpc])
    refined = task.refine(scan, estimate, ["MSP", "ACPC"])
    if not symmetry:
        np.testing.assert_array_equal(refined, estimate)
        return
    truth = _pose(TRUE_POINT, TRUE_NORMAL)
    assert plane_angle_deg(refined[0], truth)[0] < 0.3
    assert abs(float(refined[0, 3:6] @ refined[1, 3:6])) < 1e-9
