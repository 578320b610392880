"""The box task's own geometry: Navarro's 11 actions, GIoU distance, sign reward, the view of
the box's contents and the context channel, truth under augmentation, label-free starts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from _synthetic import CENTRE_RAS, CUBOID_NAMES, CUBOIDS_RAS, cuboid_volume
from medrl.config import AugmentConfig, Config, EnvConfig, LevelConfig, TaskConfig
from medrl.data.augment import batch_params
from medrl.data.datalist import Case
from medrl.envs.kernel import render_observation
from medrl.envs.pyramid import build_pyramid
from medrl.tasks.base import Poses
from medrl.tasks.box import BOX_ACTIONS, BoxTask, box_iou_giou

torch.set_num_threads(1)
LEVEL = LevelConfig(spacing_mm=1.5, step_mm=1.5, start_radius_mm=5.0, max_steps=5,
                    step_fraction=0.1, size_range=1.2)  # fmt: skip


def _task(context_mm: float = 0.0) -> BoxTask:
    config = replace(
        Config(),
        task=TaskConfig(kind="box", box_context_mm=context_mm),
        env=EnvConfig(patch_size=9, levels=(LEVEL,)),
    )
    return BoxTask(config)


def test_the_eleven_actions_move_by_a_fraction_of_the_box() -> None:
    task = _task()
    box = torch.tensor([[1.0, 2.0, 3.0, 10.0, 20.0, 40.0]])
    level = torch.zeros(1, dtype=torch.long)
    assert len(BOX_ACTIONS) == task.num_actions == 11

    def moved(name: str) -> np.ndarray:
        action = torch.tensor([BOX_ACTIONS.index(name)])
        return task.move(box, action, level)[0].numpy()

    np.testing.assert_allclose(moved("+R"), [2.0, 2.0, 3.0, 10.0, 20.0, 40.0], rtol=1e-6)
    np.testing.assert_allclose(moved("-A"), [1.0, 0.0, 3.0, 10.0, 20.0, 40.0], rtol=1e-6)
    np.testing.assert_allclose(moved("+S"), [1.0, 2.0, 7.0, 10.0, 20.0, 40.0], rtol=1e-6)
    np.testing.assert_allclose(moved("grow"), [1.0, 2.0, 3.0, 11.0, 22.0, 44.0], rtol=1e-6)
    np.testing.assert_allclose(
        moved("shrink"), [1.0, 2.0, 3.0, 10 / 1.1, 20 / 1.1, 40 / 1.1], rtol=1e-6
    )
    np.testing.assert_allclose(moved("thinner-A"), [1.0, 2.0, 3.0, 10.0, 20 / 1.1, 40.0], rtol=1e-6)


def test_giou_distance_and_sign_reward() -> None:
    task = _task()
    goal = torch.tensor([[0.0, 0.0, 0.0, 10.0, 10.0, 10.0]])
    half = torch.tensor([[2.5, 0.0, 0.0, 5.0, 10.0, 10.0]])  # the right half of the goal
    far = torch.tensor([[30.0, 0.0, 0.0, 10.0, 10.0, 10.0]])  # disjoint, 20 mm gap
    iou, giou = box_iou_giou(half, goal)
    assert float(iou) == 0.5 and float(giou) == 0.5
    iou, giou = box_iou_giou(far, goal)
    assert float(iou) == 0.0 and float(giou) == -0.5  # hull 4000 mm3, union 2000: -(2000/4000)
    assert float(task.distance(goal, goal)) == 0.0
    nearer = torch.tensor([[20.0, 0.0, 0.0, 10.0, 10.0, 10.0]])
    # disjoint boxes still have a gradient: coming closer lowers the distance
    assert float(task.distance(nearer, goal)) < float(task.distance(far, goal))
    d = task.distance(torch.cat([far, nearer]), goal.expand(2, -1))
    assert task.reward(d[:1], d[1:]).tolist() == [1.0]
    assert task.reward(d[1:], d[:1]).tolist() == [-1.0]
    assert bool(task.success(goal, goal)) and not bool(task.success(half, goal))


def _phantom_case() -> Case:
    image, labels = cuboid_volume(noise=0.0)
    return Case("cuboids", image, None, "train", labels=labels, label_names=CUBOID_NAMES)


def test_view_shows_the_box_contents_and_the_context_channel_sees_far() -> None:
    case = _phantom_case()
    task = _task(context_mm=60.0)
    table = task.target_table([case])
    scan = build_pyramid(case.volume, [1.5])
    truth = torch.as_tensor(table.poses[0], dtype=torch.float32)
    far = truth.clone()
    far[:, 0] += 25.0  # 25 mm to the right: the box's own view misses the cuboid
    frames = torch.cat([truth, far])[:, None]
    n = len(frames)
    poses = Poses(
        torch.zeros(n, dtype=torch.long),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.zeros(n, dtype=torch.long),
        frames,
        torch.full((n, 2), -1),
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
    )
    params = batch_params(AugmentConfig(enabled=False), np.zeros(n, np.int64), np.zeros((n, 3)))
    patch = render_observation(task, [scan], task.config.env, poses, params, noise=False)["patch"]
    assert patch.shape == (n, 2, 9, 9, 9)
    # Normalised intensities: the head-sized ball (the 99th percentile) is 1, cuboids 5, 4, 3.
    for row, value in enumerate((5.0, 4.0, 3.0)):
        assert float(patch[row, 0, 4, 4, 4]) == pytest.approx(value, abs=0.05)  # inside it
        assert float(patch[row + 3, 0, 4, 4, 4]) <= 1.0 + 1e-4  # 25 mm off: not the cuboid
        # ... but the 60 mm context cube around the far box still holds the cuboid
        assert bool(torch.isclose(patch[row + 3, 1], torch.tensor(value), atol=0.05).any())
    assert task.features(truth).shape == (3, 3)


def test_truth_under_augmentation_is_the_box_of_the_moved_voxels() -> None:
    case = _phantom_case()
    task = _task()
    table = task.target_table([case])
    for structure, (offset, half) in enumerate(CUBOIDS_RAS):
        expected = np.concatenate([CENTRE_RAS + offset, 2 * half])
        assert np.all(np.abs(table.poses[0][structure] - expected) <= 1.5 + 1e-6)
    # a pure translation by t: the augmented-world box is the true box moved by -t
    config = AugmentConfig(rotation_deg=0.0, scale=0.0, anisotropic_scale=0.0, elastic_mm=0.0)
    params = batch_params(config, np.array([7]), CENTRE_RAS[None])
    shift = params.translation_mm[0].numpy()
    goals = task.goals(table, [0], [1], params)[0].numpy()
    np.testing.assert_allclose(goals[:3], table.poses[0][1][:3] - shift, atol=1e-3)
    np.testing.assert_allclose(goals[3:], table.poses[0][1][3:], atol=1e-3)


def test_label_free_starts_come_from_the_training_prior() -> None:
    case = _phantom_case()
    task = _task()
    table = task.target_table([case])
    scan = build_pyramid(case.volume, [1.5])
    task.fit([scan], table)
    starts = task.initial(scan, num_starts=3, num_targets=3)
    assert starts.shape == (3, 3, 6)
    np.testing.assert_allclose(starts[:, 0], table.poses[0], atol=1e-6)  # same scan: the truth
    step = task.config.search.start_offsets_mm
    np.testing.assert_allclose(starts[:, 1, 1] - starts[:, 0, 1], step)  # +A by the offset
    restored = BoxTask(task.config, task.state_dict())
    np.testing.assert_allclose(restored.initial(scan, 1, 3), starts[:, :1], atol=1e-3)


def test_consensus_starts_carry_the_reference_layout_to_where_the_others_are() -> None:
    """The reference layout (boxes of many structures) fitted to estimates that are the truth
    moved by a rigid map, except one gross failure: the consensus start of the failed
    structure is its moved reference box, and the layout survives a save and load."""
    rng = np.random.default_rng(3)
    task = _task()
    centres = rng.uniform(-30.0, 30.0, size=(12, 3))
    halves = rng.uniform(2.0, 10.0, size=(12, 3))
    corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
    extremes = [c + corners * h for c, h in zip(centres, halves, strict=True)]
    task.reference_centres_ras = centres
    task.reference_extremes_ras = extremes
    task.reference_half_extent_mm = np.zeros(3)
    shift = np.array([6.0, -4.0, 9.0])
    truth = np.concatenate([centres + shift, 2 * halves], axis=1)  # a pure translation
    estimate = truth.copy()
    estimate[4, :3] += [20.0, 0.0, -15.0]  # the search settled on the wrong structure
    starts = task.consensus_starts(estimate)
    assert starts is not None and starts.shape == (12, 1, 6)
    np.testing.assert_allclose(starts[:, 0], truth, atol=1e-6)
    restored = BoxTask(task.config, task.state_dict())
    np.testing.assert_allclose(restored.consensus_starts(estimate), starts, atol=1e-3)
    # no reference (a model trained before the layout existed), or too few structures: none
    assert _task().consensus_starts(estimate) is None
    assert task.consensus_starts(estimate[:3]) is None


def test_the_reference_layout_is_learned_from_the_first_fully_labelled_scan() -> None:
    case = _phantom_case()
    task = _task()
    table = task.target_table([case])
    task.fit([build_pyramid(case.volume, [1.5])], table)
    np.testing.assert_allclose(task.reference_centres_ras, table.poses[0][:, :3])
    # the directional extremes of each cuboid give back its box
    for structure, extremes in enumerate(task.reference_extremes_ras):
        low = extremes.min(axis=0) - task.reference_half_extent_mm
        high = extremes.max(axis=0) + task.reference_half_extent_mm
        np.testing.assert_allclose((low + high) / 2, table.poses[0][structure, :3], atol=1e-6)
        np.testing.assert_allclose(high - low, table.poses[0][structure, 3:], atol=1e-6)
        assert len(extremes) <= 26


def test_a_malformed_reference_layout_is_a_clear_error() -> None:
    from medrl.errors import InputError

    config = _task().config
    with pytest.raises(InputError, match="2 centres but 1 non-empty"):
        BoxTask(config, {"reference": {"centres_ras": [[0, 0, 0], [1, 1, 1]],
                                       "extremes_ras": [[[0, 0, 0]]]}})  # fmt: skip
    with pytest.raises(InputError, match="reference is malformed"):
        BoxTask(config, {"reference": {"centres_ras": [[0, 0]], "extremes_ras": [[[0, 0]]]}})
