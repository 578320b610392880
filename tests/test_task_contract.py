"""The contract every task of the family keeps (parametrised over ``medrl.tasks.TASKS``).

Each task gets a synthetic phantom (blobs for landmarks, labelled cuboids for boxes); the same
checks then hold for all: a move and its opposite return the pose; some action lowers the
distance to the goal; observations match the declared spaces and pass Gymnasium's checker; the
vector environment equals single environments step by step; an observation re-rendered from
replay equals the live one; a resumed run equals an uninterrupted one. A new task registered in
``TASKS`` without a phantom here fails ``test_every_task_has_a_phantom``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from _synthetic import CENTRE_RAS, CUBOID_NAMES, blob_volume, cuboid_volume
from medrl.agents.dqn import Trainer
from medrl.agents.replay import NStepAssembler, PoseReplay, split_poses
from medrl.cli import TASK_NAMES
from medrl.config import AugmentConfig, Config, EnvConfig, LevelConfig, TaskConfig, load_config
from medrl.data.augment import batch_params
from medrl.data.datalist import Case
from medrl.envs.gym import TaskEnv, TaskVectorEnv
from medrl.envs.kernel import SearchKernel, render_observation
from medrl.envs.pyramid import case_pyramids
from medrl.geometry.planes import MIDLINE_AFIDS
from medrl.io.landmarks import Landmarks
from medrl.tasks import TASKS, TargetTable, Task, make_task

torch.set_num_threads(1)
SMOKE = Path(__file__).resolve().parents[1] / "src" / "medrl" / "configs" / "smoke.yaml"
LEVELS = (
    LevelConfig(spacing_mm=3.0, step_mm=3.0, start_radius_mm=9.0, max_steps=6,
                step_fraction=0.2, size_range=1.5, step_deg=4.0, start_angle_deg=12.0),
    LevelConfig(spacing_mm=1.5, step_mm=1.5, start_radius_mm=4.0, max_steps=5,
                step_fraction=0.1, size_range=1.2, step_deg=1.5, start_angle_deg=5.0),
)  # fmt: skip
AUGMENT = AugmentConfig(rotation_deg=10.0, translation_mm=4.0, elastic_mm=1.0)


def _config(kind: str) -> Config:
    env = EnvConfig(patch_size=7, levels=LEVELS)
    # the box world also shows its context channel (a 30 mm cube around the box)
    task = TaskConfig(kind=kind, box_context_mm=30.0 if kind == "box" else 0.0)
    return replace(Config(), task=task, env=env, augment=AUGMENT)


def _landmark_world(config: Config) -> tuple[Task, list, TargetTable]:
    volume, blobs = blob_volume(shape_zyx=(40, 40, 40), spacing_mm=(1.5, 1.5, 1.5))
    case = Case("blobs", volume, Landmarks(("a", "b", "c"), blobs), "train")
    return _world(config, [case])


def _box_world(config: Config) -> tuple[Task, list, TargetTable]:
    image, labels = cuboid_volume()
    case = Case("cuboids", image, None, "train", labels=labels, label_names=CUBOID_NAMES)
    return _world(config, [case])


def _plane_world(config: Config) -> tuple[Task, list, TargetTable]:
    """Blobs at the ten midline AFIDs of a tilted mid-sagittal plane (AC and PC first)."""
    offsets = np.array(
        [[0, 8, 0], [0, -8, 2], [1, -14, -6], [0, -8, -14], [-1, -4, -8], [0, -18, 6],
         [0, 2, -10], [1, -12, 8], [-1, 16, 10], [0, -16, 12]], dtype=np.float64,
    )  # fmt: skip
    tilt = np.array([[1.0, 0.0, 0.0], [0.15, 1.0, 0.0], [0.1, 0.0, 1.0]])
    blobs_ras = CENTRE_RAS + offsets @ tilt.T
    volume, blobs = blob_volume(shape_zyx=(40, 40, 40), spacing_mm=(1.5, 1.5, 1.5),
                                blobs_ras=blobs_ras, sigma_mm=3.0)  # fmt: skip
    case = Case("midline", volume, Landmarks(MIDLINE_AFIDS, blobs), "train")
    return _world(config, [case])


def _slice_world(config: Config) -> tuple[Task, list, TargetTable]:
    """The landmark phantom's blobs; its grid is turned 20 degrees against the world, so the
    slice axis is oblique."""
    volume, blobs = blob_volume(shape_zyx=(40, 40, 40), spacing_mm=(1.5, 1.5, 1.5))
    case = Case("oblique-blobs", volume, Landmarks(("a", "b", "c"), blobs), "train")
    return _world(config, [case])


def _rigid_world(config: Config) -> tuple[Task, list, TargetTable]:
    """A registration pair: the blobs as the fixed image, and the same anatomy in another
    contrast (inverted intensities) on another grid as the moving image."""
    offsets = np.array([[14, 9, -10], [-13, -10, 12], [4, -16, -13], [-6, 14, 8], [10, -4, 14]])
    fixed, blobs = blob_volume(shape_zyx=(40, 40, 40), spacing_mm=(1.5, 1.5, 1.5),
                               blobs_ras=CENTRE_RAS + offsets)  # fmt: skip
    other, _ = blob_volume(shape_zyx=(36, 36, 36), spacing_mm=(1.7, 1.7, 1.7),
                           direction_lps=np.eye(3), blobs_ras=blobs, seed=1)  # fmt: skip
    moving = replace(other, array=other.array.max() - other.array)
    names = ("a", "b", "c", "d", "e")
    fixed_case = Case("fixed", fixed, Landmarks(names, blobs), "train")
    moving_case = Case("moving", moving, Landmarks(names, blobs), "train", partner=fixed_case)
    return _world(config, [moving_case])


def _world(config: Config, cases: list[Case]) -> tuple[Task, list, TargetTable]:
    task = make_task(config)
    cases = task.pair_cases(cases)
    table = task.target_table(cases)
    scans = case_pyramids(cases, [lv.spacing_mm for lv in config.env.levels])
    task.fit(scans, table)
    return task, scans, table


WORLDS = {
    "landmark": _landmark_world,
    "box": _box_world,
    "plane": _plane_world,
    "slice": _slice_world,
    "rigid": _rigid_world,
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def world(request) -> tuple[Task, list, TargetTable]:
    return WORLDS[request.param](_config(request.param))


def test_every_task_has_a_phantom_and_a_cli_name() -> None:
    assert set(WORLDS) == set(TASKS)
    assert set(TASK_NAMES) == set(TASKS)  # the CLI's list, kept without importing torch


def _random_poses(
    task: Task, table: TargetTable, count: int, seed: int = 0, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-start-like poses around random goals (offsets times ``scale``), and the goals."""
    rng = np.random.default_rng(seed)
    goals = torch.as_tensor(table.poses[0][rng.integers(0, len(table.names), count)]).float()
    offsets = np.stack([task.start_offset(int(rng.integers(2)), rng) for _ in range(count)])
    offsets_t = torch.as_tensor(offsets * scale, dtype=torch.float32)
    return task.displace(goals, offsets_t), goals


def test_a_move_and_its_opposite_return_the_pose(world) -> None:
    task, _, table = world
    poses, _ = _random_poses(task, table, 20)
    assert len(task.opposite) == task.num_actions
    for level in range(len(LEVELS)):
        levels = torch.full((len(poses),), level)
        for action, back in enumerate(task.opposite):
            if back < 0:
                continue
            assert task.opposite[back] == action
            there = task.move(poses, torch.full((len(poses),), action), levels)
            assert not torch.allclose(there, poses)
            again = task.move(there, torch.full((len(poses),), back), levels)
            torch.testing.assert_close(again, poses, atol=1e-4, rtol=1e-5)


def test_the_oracle_action_lowers_the_distance(world) -> None:
    """From poses well away from the goal (3x the training start offsets: beyond the step
    resolution of the coarse level), some action brings the pose closer."""
    task, _, table = world
    poses, goals = _random_poses(task, table, 40, seed=1, scale=3.0)
    for level in range(len(LEVELS)):
        levels = torch.full((len(poses),), level)
        successors = task.successors(poses, levels)  # (N, A, D)
        assert successors.shape == (len(poses), task.num_actions, task.pose_dim)
        d_now = task.distance(poses, goals)
        d_next = task.distance(
            successors.reshape(-1, task.pose_dim), goals.repeat_interleave(task.num_actions, 0)
        ).reshape(len(poses), -1)
        improves = d_next.min(dim=1).values < d_now - 1e-6
        assert bool(improves.all()), f"level {level}: no action helps {int((~improves).sum())}"
        # and the reward of the best action is positive
        best = d_next.argmin(dim=1)
        reward = task.reward(d_now, d_next[torch.arange(len(poses)), best])
        assert bool((reward > 0).all())
        # the goal itself succeeds and is at distance 0
        assert bool(task.success(goals, goals).all())
        torch.testing.assert_close(task.distance(goals, goals), torch.zeros(len(goals)))


def test_observations_match_the_spaces_and_pass_the_gymnasium_checker(world) -> None:
    task, scans, table = world
    env = TaskEnv(task, scans, table, AUGMENT)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert env.action_space.n == task.num_actions
    assert obs["patch"].shape[0] == task.config.env.frames * task.num_channels
    assert info["pose"].shape == (task.pose_dim,)
    for action in range(task.num_actions):
        obs, reward, *_ = env.step(action)
        assert env.observation_space.contains(obs) and np.isfinite(reward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # checker notes about float precision of the Box
        check_env(TaskEnv(task, scans, table, AUGMENT), skip_render_check=True)


def test_vector_env_equals_single_envs_step_by_step(world) -> None:
    task, scans, table = world
    count, seed = 3, 21
    vector = TaskVectorEnv(task, scans, table, count, AUGMENT)
    singles = [TaskEnv(task, scans, table, AUGMENT) for _ in range(count)]
    obs_v, _ = vector.reset(seed=seed)
    obs_s = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    ended = np.zeros(count, dtype=bool)
    for t in range(25):
        actions = rng.integers(0, task.num_actions, size=count)
        obs_v, rew_v, term_v, trunc_v, info_v = vector.step(actions)
        for i, env in enumerate(singles):
            if ended[i]:
                obs_s[i], _ = env.reset()
                rew, term, trunc, info = 0.0, False, False, None
            else:
                obs_s[i], rew, term, trunc, info = env.step(int(actions[i]))
            where = f"step {t}, env {i}"
            for key, value in obs_s[i].items():
                np.testing.assert_allclose(obs_v[key][i], value, atol=1e-5, err_msg=where)
            assert rew_v[i] == pytest.approx(rew, abs=1e-5), where
            assert (bool(term_v[i]), bool(trunc_v[i])) == (term, trunc), where
            if info is not None:
                np.testing.assert_allclose(info_v["pose"][i], info["pose"], atol=1e-5)
        ended = np.asarray(term_v) | np.asarray(trunc_v)


def test_replay_rerenders_the_live_observation(world) -> None:
    task, scans, table = world
    config = task.config
    kernel = SearchKernel(task, scans, table, config.env, AUGMENT, 4, seed=5)
    kernel.reset()
    replay = PoseReplay(64, config.env.frames, config.env.action_history, task.pose_dim)
    assembler = NStepAssembler(4, n_step=1, gamma=0.9)
    live: dict[tuple[int, int], np.ndarray] = {}
    rng = np.random.default_rng(0)
    for _ in range(8):
        poses = kernel.poses()
        obs = kernel.observe()
        for i in range(4):
            live[(int(poses.episode_seed[i]), int(poses.step[i]))] = obs["patch"][i].numpy()
        actions = torch.as_tensor(rng.integers(0, task.num_actions, 4))
        reward, terminated, truncated, _ = kernel.step(actions)
        batch = assembler.add(
            poses,
            actions.numpy(),
            reward.numpy(),
            kernel.poses(),
            terminated.numpy(),
            truncated.numpy(),
        )
        if batch is not None:
            replay.add(batch)
        kernel.reset(terminated.numpy() | truncated.numpy())
    sample = replay.sample(16, np.random.default_rng(1))
    state, _ = split_poses(sample, "cpu")
    centres = np.stack([scans[int(s)].centre_ras for s in sample["scan"]])
    params = batch_params(AUGMENT, sample["episode_seed"], centres)
    again = render_observation(task, scans, config.env, state, params)["patch"].numpy()
    for n in range(16):
        key = (int(sample["episode_seed"][n]), int(sample["step"][n]))
        np.testing.assert_allclose(again[n], live[key], atol=1e-5)


def test_resumed_training_equals_uninterrupted(world, tmp_path: Path) -> None:
    task, scans, table = world
    config = load_config(
        SMOKE,
        [
            f"task.kind={task.name}",
            "train.total_steps=16",
            "train.num_envs=4",
            "train.checkpoint_every=100",
            "train.log_every=4",
            "agent.learning_starts=16",
            "agent.batch_size=4",
            "agent.target_update=3",
            "agent.channels=[4]",
        ],
    )
    config = replace(config, task=task.config.task, env=_config(task.name).env, augment=AUGMENT)

    def trainer(folder: str) -> Trainer:
        return Trainer(config, tmp_path / folder, scans=scans, table=table)

    straight = trainer("a")
    before = {k: v.clone() for k, v in straight.network.state_dict().items()}
    straight.run(progress=False)
    first = trainer("b")
    first.run(progress=False, stop_after=8)
    first.save_checkpoint()
    resumed = trainer("b")
    assert resumed.load_checkpoint()
    resumed.run(progress=False)
    assert resumed.updates == straight.updates > 0
    after = straight.network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after)
    for name, value in resumed.network.state_dict().items():
        assert torch.equal(value, after[name]), name
    assert torch.equal(resumed.kernel.frames, straight.kernel.frames)


def test_no_action_history_stays_empty_in_kernel_search_and_losses(world) -> None:
    """``env.action_history: 0`` (the box preset): no history column ever appears."""
    task, scans, table = world
    config = replace(task.config, env=replace(task.config.env, action_history=0))
    task = type(task)(config, task.state_dict())
    kernel = SearchKernel(task, scans, table, config.env, AUGMENT, 3, seed=2)
    kernel.reset()
    for _ in range(4):
        kernel.step(torch.randint(0, task.num_actions, (3,)))
    obs = kernel.observe()
    assert kernel.actions.shape == (3, 0) and obs["actions"].shape == (3, 0)
    from medrl.agents.checkpoint import Model, build_network
    from medrl.agents.losses import all_actions_loss, landmark_all_actions_loss
    from medrl.agents.search import search
    from medrl.tasks import LandmarkTask

    network = build_network(config, len(table.names), task)
    params = kernel.params
    if isinstance(task, LandmarkTask):
        targets = torch.as_tensor(np.stack(table.poses), dtype=torch.float32)
        loss = landmark_all_actions_loss(
            network, network, task, scans, targets, kernel.poses(), params, kernel.inside
        )
    else:
        loss = all_actions_loss(
            network, network, task, scans, kernel.poses(), params, kernel.inside
        )
    assert torch.isfinite(loss)
    model = Model(network.eval(), config, table.names, table.names, {}, task)
    case_volume = scans[0]
    result = search(model, None, scan=case_volume)  # type: ignore[arg-type]
    assert np.isfinite(result.estimate).all()


def test_gamma_zero_backup_skips_successors_with_the_same_targets(world) -> None:
    """With ``agent.gamma`` 0 the all-actions losses (the generic one, and the landmark
    task's crop path) evaluate no successor: the value is the one the full backup gives when
    the bootstrap term is (almost) switched off, and the target network is never called."""
    from medrl.agents.checkpoint import build_network
    from medrl.agents.losses import all_actions_loss, landmark_all_actions_loss
    from medrl.tasks import LandmarkTask

    class Untouchable(torch.nn.Module):
        def forward_all(self, obs):  # type: ignore[no-untyped-def]
            raise AssertionError("the target network was evaluated with gamma 0")

        forward = forward_all

    task, scans, table = world
    targets = torch.as_tensor(np.stack(table.poses), dtype=torch.float32)

    def loss_of(network, target, variant, state):  # type: ignore[no-untyped-def]
        if isinstance(variant, LandmarkTask):
            return landmark_all_actions_loss(
                network, target, variant, scans, targets, state, kernel.params, kernel.inside
            )
        return all_actions_loss(
            network, target, variant, scans, state, kernel.params, kernel.inside
        )

    kernel = SearchKernel(task, scans, table, task.config.env, AUGMENT, 4, seed=3)
    kernel.reset()
    kernel.step(torch.randint(0, task.num_actions, (4,)))
    losses = []
    for gamma in (0.0, 1e-12):
        config = replace(task.config, agent=replace(task.config.agent, gamma=gamma))
        variant = type(task)(config, task.state_dict())
        torch.manual_seed(0)
        network = build_network(config, len(table.names), variant)
        state = kernel.poses()
        target = Untouchable() if gamma == 0 else network
        losses.append(loss_of(network, target, variant, state).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-9)
