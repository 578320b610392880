"""The plane task's own geometry: tilts and shifts, training starts within the level's angle
and radius, and the distance it rewards."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from medrl.config import Config, EnvConfig, LevelConfig, TaskConfig
from medrl.geometry.planes import plane_angle_deg
from medrl.tasks.plane import PLANE_ACTIONS, PlaneTask

LEVELS = (
    LevelConfig(spacing_mm=4.0, step_mm=4.0, step_deg=4.0, start_radius_mm=20.0,
                start_angle_deg=35.0, max_steps=5),
    LevelConfig(spacing_mm=1.0, step_mm=0.5, step_deg=0.5, start_radius_mm=2.0,
                start_angle_deg=3.0, max_steps=5),
)  # fmt: skip
GOAL = torch.tensor([[1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])  # MSP-like: n = R, u = A


def _task() -> PlaneTask:
    config = replace(Config(), task=TaskConfig(kind="plane"), env=EnvConfig(levels=LEVELS))
    return PlaneTask(config)


def test_tilts_turn_the_normal_by_the_step_and_shifts_move_along_it() -> None:
    task = _task()
    level = torch.zeros(1, dtype=torch.long)
    for name in PLANE_ACTIONS:
        moved = task.move(GOAL, torch.tensor([PLANE_ACTIONS.index(name)]), level)[0]
        if name.startswith("tilt"):
            assert plane_angle_deg(moved.numpy(), GOAL[0].numpy())[0] == np_approx(4.0)
            torch.testing.assert_close(moved[:3], GOAL[0, :3])
        else:
            sign = 1.0 if name == "+n" else -1.0
            torch.testing.assert_close(moved[:3], GOAL[0, :3] + sign * 4.0 * GOAL[0, 3:6])
        assert abs(float(moved[3:6] @ moved[6:9])) < 1e-6


def np_approx(value: float) -> object:
    import pytest

    return pytest.approx(value, abs=1e-4)


def test_training_starts_lie_within_the_level_angle_and_radius() -> None:
    task = _task()
    rng = np.random.default_rng(0)
    for level, spec in enumerate(LEVELS):
        offsets = np.stack([task.start_offset(level, rng) for _ in range(400)])
        starts = task.displace(GOAL.expand(400, -1), torch.as_tensor(offsets, dtype=torch.float32))
        angles = plane_angle_deg(starts.numpy(), GOAL.expand(400, -1).numpy())
        shifts = np.linalg.norm(starts[:, :3].numpy() - GOAL[0, :3].numpy(), axis=1)
        assert angles.max() <= spec.start_angle_deg + 1e-3
        assert angles.mean() > 0.5 * spec.start_angle_deg  # uniform in a ball: mostly far
        assert shifts.max() <= spec.start_radius_mm + 1e-3


def test_the_acpc_plane_is_made_to_contain_the_msp_normal() -> None:
    task = _task()
    msp = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    tilted = np.array([0.0, 2.0, -4.0, 0.1, 0.05, 0.99, 0.0, 1.0, 0.0])  # rolled towards R
    out = task.finalize(np.stack([msp, tilted]), ["MSP", "ACPC"])
    np.testing.assert_allclose(out[0], msp)
    assert abs(out[1, 3:6] @ msp[3:6]) < 1e-12 and abs(np.linalg.norm(out[1, 3:6]) - 1) < 1e-12
    assert abs(out[1, 3:6] @ out[1, 6:9]) < 1e-12
    np.testing.assert_allclose(out[1, :3], tilted[:3])  # the plane still passes through AC
    # one plane alone is left as it is
    np.testing.assert_allclose(task.finalize(tilted[None], ["ACPC"]), tilted[None])
