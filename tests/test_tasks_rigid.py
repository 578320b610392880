"""The rigid-registration task: its truth, its geometry and its two-image observation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from _synthetic import CENTRE_RAS, blob_volume
from medrl.config import AugmentConfig, Config, EnvConfig, LevelConfig, TaskConfig
from medrl.data.augment import batch_params
from medrl.data.datalist import Case
from medrl.data.scenarios import RigidTransform, move_case
from medrl.envs.kernel import render_observation
from medrl.envs.pyramid import case_pyramids
from medrl.errors import InputError
from medrl.geometry.warp_labels import grid_centre_ras
from medrl.io.landmarks import Landmarks
from medrl.tasks import Poses, make_task
from medrl.tasks.rigid import fit_rigid, pose_from_matrix, pose_matrix_ras, rotation_matrices

torch.set_num_threads(1)
NAMES = ("a", "b", "c", "d", "e")
OFFSETS = np.array([[14, 9, -10], [-13, -10, 12], [4, -16, -13], [-6, 14, 8], [10, -4, 14]])
LEVELS = (
    LevelConfig(spacing_mm=3.0, step_mm=3.0, start_radius_mm=9.0, max_steps=6, step_deg=4.0,
                start_angle_deg=12.0),
    LevelConfig(spacing_mm=1.5, step_mm=1.5, start_radius_mm=4.0, max_steps=5, step_deg=1.5,
                start_angle_deg=5.0),
)  # fmt: skip


def _config(**task: object) -> Config:
    return replace(
        Config(),
        task=TaskConfig(kind="rigid", rigid_radius_mm=20.0, rigid_view_radius_mm=8.0, **task),  # type: ignore[arg-type]
        env=EnvConfig(patch_size=9, levels=LEVELS),
        augment=AugmentConfig(rotation_deg=10.0, translation_mm=4.0, elastic_mm=0.0),
    )


def _fixed() -> Case:
    volume, blobs = blob_volume(shape_zyx=(40, 40, 40), blobs_ras=CENTRE_RAS + OFFSETS)
    return Case("fixed", volume, Landmarks(NAMES, blobs), "train")


def _rigid(angle_deg: float, shift_mm: tuple[float, float, float]) -> RigidTransform:
    axis = np.array([0.3, -0.5, 0.8])
    return RigidTransform(axis / np.linalg.norm(axis), angle_deg, np.asarray(shift_mm, float))


def test_the_truth_of_a_rigidly_moved_copy_is_the_move() -> None:
    fixed = _fixed()
    assert fixed.landmarks is not None
    rigid = _rigid(12.0, (5.0, -3.0, 2.0))
    moved, landmarks = move_case(fixed.volume, fixed.landmarks, rigid)
    pair = Case("moved", moved, landmarks, "train", partner=fixed)
    task = make_task(_config())
    table = task.target_table([pair])
    matrix = pose_matrix_ras(table.poses[0][0])
    # move_case: x -> R (x - g) + g + t about the grid centre g: fixed -> moving points
    centre = grid_centre_ras(fixed.volume)
    rotation = rigid.rotation_ras()
    expected = np.eye(4)
    expected[:3, :3] = rotation
    expected[:3, 3] = centre + rigid.translation_mm - rotation @ centre
    np.testing.assert_allclose(matrix, expected, atol=1e-5)
    # the pose's centre is the fixed image's intensity centroid, and the pose round-trips
    np.testing.assert_allclose(pose_matrix_ras(pose_from_matrix(matrix, centre)), matrix)


def test_pairs_of_one_anatomy_and_of_all_cases() -> None:
    fixed = _fixed()
    assert fixed.landmarks is not None
    other = Landmarks(NAMES, fixed.landmarks.points_ras + np.array([3.0, 0.0, 0.0]))
    shifted = Case("other", fixed.volume, other, "train")
    same = make_task(_config()).pair_cases([fixed, shifted])
    assert sorted(c.case_id for c in same) == ["fixed_to_fixed", "other_to_other"]
    every = make_task(_config(rigid_pairs="all")).pair_cases([fixed, shifted])
    assert len(every) == 4
    alone = Case("alone", fixed.volume, Landmarks(NAMES[:3], fixed.landmarks.points_ras[:3]), "x")
    with pytest.raises(InputError, match="no registration pairs"):
        make_task(_config()).pair_cases([alone])


def test_the_goal_under_augmentation_is_the_identity_for_one_anatomy() -> None:
    fixed = _fixed()
    pair = replace(fixed, case_id="self", partner=fixed)
    config = _config()
    task = make_task(config)
    table = task.target_table([pair])
    scans = case_pyramids([pair], [lv.spacing_mm for lv in LEVELS])
    params = batch_params(config.augment, np.array([1, 2, 3]), np.stack([scans[0].centre_ras] * 3))
    goals = task.goals(table, [0, 0, 0], [0, 0, 0], params)
    eye = torch.eye(3).reshape(1, 9).expand(3, -1)
    torch.testing.assert_close(goals[:, 3:12], eye, atol=1e-4, rtol=0)
    torch.testing.assert_close(goals[:, 12:], torch.zeros(3, 3), atol=1e-3, rtol=0)


def test_views_show_the_same_anatomy_at_the_truth_only() -> None:
    """Fixed and moving channels agree at the true pose of a moved copy, not 20 degrees and
    4 mm off."""
    fixed = _fixed()
    assert fixed.landmarks is not None
    moved, landmarks = move_case(fixed.volume, fixed.landmarks, _rigid(15.0, (6.0, 4.0, -5.0)))
    pair = Case("moved", moved, landmarks, "train", partner=fixed)
    config = _config()
    task = make_task(config)
    table = task.target_table([pair])
    scans = case_pyramids([pair], [lv.spacing_mm for lv in LEVELS])
    truth = torch.as_tensor(table.poses[0], dtype=torch.float32)
    off = task.displace(truth, torch.tensor([[0.0, 0.0, np.radians(20.0), 4.0, 0.0, 0.0]]))
    params = batch_params(replace(config.augment, enabled=False), np.zeros(1, np.int64),
                          scans[0].centre_ras[None])  # fmt: skip

    def correlation(pose: torch.Tensor) -> float:
        poses = Poses(
            torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
            torch.ones(1, dtype=torch.long), pose[:, None], torch.full((1, 0), -1),
            np.zeros(1, np.int64), np.zeros(1, np.int64),
        )  # fmt: skip
        patch = render_observation(task, scans, config.env, poses, params, noise=False)["patch"][0]
        assert patch.shape[0] == 18  # 9 sites x (fixed, moving)
        return float(np.corrcoef(patch[0::2].reshape(-1), patch[1::2].reshape(-1))[0, 1])

    assert correlation(truth) > 0.97
    assert correlation(off) < correlation(truth) - 0.1


def test_kabsch_recovers_a_rotation_and_a_shift() -> None:
    rng = np.random.default_rng(0)
    points = torch.as_tensor(rng.normal(size=(1, 10, 3)) * 30)
    rotation = rotation_matrices(torch.tensor([[0.2, -0.4, 0.3]], dtype=torch.float64))
    shift = torch.tensor([[4.0, -2.0, 7.0]], dtype=torch.float64)
    found_rotation, found_shift = fit_rigid(points, points @ rotation.transpose(1, 2) + shift)
    torch.testing.assert_close(found_rotation, rotation)
    torch.testing.assert_close(found_shift, shift)


def test_a_pose_becomes_the_same_map_as_an_itk_transform_of_lps_points() -> None:
    from medrl.baselines.registration import map_points_lps
    from medrl.registration.transforms import LPS_RAS_4X4, rigid_ras_to_sitk

    rotation = rotation_matrices(torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64))[0]
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation.numpy(), [5.0, -7.0, 12.0]
    pose = pose_from_matrix(matrix, np.array([1.0, -20.0, 15.0]))
    transform = rigid_ras_to_sitk(pose_matrix_ras(pose))
    flip = LPS_RAS_4X4[:3, :3]
    points_ras = np.random.default_rng(0).normal(size=(6, 3)) * 40
    mapped_ras = map_points_lps(transform, points_ras @ flip) @ flip
    np.testing.assert_allclose(mapped_ras, points_ras @ matrix[:3, :3].T + matrix[:3, 3], atol=1e-9)


def test_training_starts_lie_within_the_levels_angle_and_radius() -> None:
    task = make_task(_config())
    rng = np.random.default_rng(0)
    for level, spec in enumerate(LEVELS):
        offsets = np.stack([task.start_offset(level, rng) for _ in range(200)])
        angles_deg = np.degrees(np.linalg.norm(offsets[:, :3], axis=1))
        shifts_mm = np.linalg.norm(offsets[:, 3:], axis=1)
        assert angles_deg.max() <= spec.start_angle_deg + 1e-9
        assert angles_deg.max() > 0.8 * spec.start_angle_deg  # they fill the ball
        assert np.median(angles_deg) > 0.6 * spec.start_angle_deg
        assert shifts_mm.max() <= spec.start_radius_mm + 1e-9
