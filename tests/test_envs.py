"""Tests for medrl.envs: the pyramid, patch rendering, the batched kernel and its Gym wrappers."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from _synthetic import CENTRE_RAS, blob_volume, ramp_volume
from medrl.config import AugmentConfig, EnvConfig, LevelConfig
from medrl.data.augment import batch_params, transform_points
from medrl.envs.gym import LandmarkEnv, LandmarkVectorEnv
from medrl.envs.landmark import ACTION_NAMES, action_vectors
from medrl.envs.pyramid import (
    build_pyramid,
    intensity_centre_ras,
    normalise_intensity,
)
from medrl.envs.sampler import cube_offsets, render_patches
from medrl.io.images import Volume

LEVELS = (
    LevelConfig(spacing_mm=4.0, step_mm=4.0, start_radius_mm=12.0, max_steps=6),
    LevelConfig(spacing_mm=2.0, step_mm=2.0, start_radius_mm=6.0, max_steps=5),
)
ENV = EnvConfig(patch_size=7, levels=LEVELS)
NO_AUG = AugmentConfig(enabled=False)
VECTORS = action_vectors().numpy().astype(np.float64)

# Tiny tensors: torch's thread pool costs far more than it saves here (15x on 2 busy cores).
torch.set_num_threads(1)


class Case(tuple):
    """(volume, pyramid, blob centres), with a short repr for failure messages."""

    def __repr__(self) -> str:
        return "<synthetic blob case>"


@pytest.fixture(scope="module")
def case() -> Case:
    """An oblique, anisotropic blob scan, its pyramid (4 mm, 2 mm) and the blob centres."""
    volume, blobs = blob_volume(shape_zyx=(40, 48, 44), spacing_mm=(1.5, 1.8, 2.2))
    return Case((volume, build_pyramid(volume, [lv.spacing_mm for lv in LEVELS]), blobs))


def _place(env: LandmarkEnv, position_ras: np.ndarray) -> None:
    """Put the single env's agent at ``position_ras`` with a fresh history (white-box)."""
    kernel = env.kernel
    point = torch.as_tensor(position_ras, dtype=torch.float32)
    kernel.frames[0] = point
    kernel.recent[0] = float("nan")
    kernel.recent[0, -1] = point
    kernel.steps[0] = 0


# ---------------------------------------------------------------------------- pyramid
def test_pyramid_geometry(case) -> None:
    volume, scan, _ = case
    np.testing.assert_allclose(scan.centre_ras, CENTRE_RAS, atol=1e-9)
    np.testing.assert_allclose(scan.index_to_ras, volume.index_to_ras)
    assert len(scan.levels) == 2
    for level, spacing in zip(scan.levels, (4.0, 2.0), strict=True):
        columns = torch.linalg.norm(torch.linalg.inv(level.ras_to_index)[:3, :3], dim=0)
        np.testing.assert_allclose(columns.numpy(), spacing, rtol=1e-5)
        assert tuple(level.tensor.shape[2:]) == tuple(int(v) for v in level.size_xyz.flip(0))
        assert float(level.tensor.max()) > 0.9  # normalised: the 99th percentile maps to 1
    corners = volume.index_to_world(np.array([[0.0, 0, 0], [43, 47, 39], [-0.7, 3, 3]]))
    inside = scan.contains_ras(torch.as_tensor(corners, dtype=torch.float32))
    assert inside.tolist() == [True, True, False]


def test_intensity_centre_is_the_intensity_weighted_centroid() -> None:
    rng = np.random.default_rng(3)
    array = rng.gamma(2.0, size=(9, 11, 13)).astype(np.float32)  # (k, j, i)
    volume = Volume(array, np.array([1.5, 2.0, 2.5]), np.array([4.0, -7.0, 9.0]), np.eye(3))
    weights = np.clip(normalise_intensity(array), 0, None).astype(np.float64)
    k, j, i = np.indices(array.shape)
    index = np.array([(weights * c).sum() for c in (i, j, k)]) / weights.sum()
    np.testing.assert_allclose(intensity_centre_ras(volume), volume.index_to_world(index)[0])


# --------------------------------------------------------------------- patch rendering
@pytest.fixture(scope="module")
def ramp() -> Case:
    volume = ramp_volume()
    # 1.2 mm is the finest spacing (no smoothing, linear resampling keeps the ramp exact);
    # 3 mm is smoothed (a Gaussian keeps a linear ramp too, away from the edges).
    return Case((volume, build_pyramid(volume, [1.2, 3.0])))


def _ramp_expected(volume: Volume, points_ras: np.ndarray) -> np.ndarray:
    """The normalised ramp (1st..99th percentile -> 0..1) at RAS points, clamped at 0."""
    low, high = np.percentile(volume.array, [1.0, 99.0])
    raw = (points_ras - CENTRE_RAS) @ np.array([1.0, 2.0, 3.0]) + 500.0
    return np.clip((raw - low) / (high - low), 0.0, None)


@pytest.mark.parametrize("level", [0, 1])
def test_render_patches_samples_a_linear_ramp_in_the_ras_frame(ramp, level: int) -> None:
    volume, scan = ramp
    patch_size, spacing = 5, (1.2, 3.0)[level]
    rng = np.random.default_rng(level)
    positions = CENTRE_RAS + rng.uniform(-4, 4, size=(6, 3))
    identity = batch_params(NO_AUG, np.zeros(6, np.int64), np.zeros((6, 3)))
    patches = render_patches(
        [scan],
        torch.zeros(6, dtype=torch.long),
        torch.full((6,), level, dtype=torch.long),
        torch.as_tensor(positions, dtype=torch.float32),
        identity,
        cube_offsets(torch.full((6,), spacing), patch_size),
        noise=torch.randn(6, patch_size**3),  # scaled by noise_std = 0 without augmentation
    ).numpy()
    assert patches.shape == (6, patch_size, patch_size, patch_size)
    half = patch_size // 2
    offsets = np.arange(patch_size) - half
    kk, jj, ii = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    # patch[k, j, i] samples position + (i, j, k) * spacing along (R, A, S).
    steps_ras = np.stack([ii, jj, kk], axis=-1) * spacing
    for n in range(6):
        expected = _ramp_expected(volume, positions[n] + steps_ras)
        np.testing.assert_allclose(patches[n], expected, atol=2e-4)
    # Along i the ramp rises by 1 per mm, along j by 2, along k by 3 (in raw units).
    low, high = np.percentile(volume.array, [1.0, 99.0])
    unit = spacing / (high - low)
    np.testing.assert_allclose(np.diff(patches[0], axis=2), 1 * unit, atol=2e-4)
    np.testing.assert_allclose(np.diff(patches[0], axis=1), 2 * unit, atol=2e-4)
    np.testing.assert_allclose(np.diff(patches[0], axis=0), 3 * unit, atol=2e-4)


def test_render_patches_goes_through_the_augmentation_transform(ramp) -> None:
    volume, scan = ramp
    config = AugmentConfig(
        rotation_deg=20.0,
        translation_mm=3.0,
        elastic_mm=2.0,
        gamma=0.0,
        contrast=0.0,
        bias_field=0.0,
        noise_std=0.0,
    )
    params = batch_params(config, np.arange(4), np.tile(CENTRE_RAS, (4, 1)))
    positions = torch.as_tensor(CENTRE_RAS + np.array([[1.0, -2, 0.5]] * 4), dtype=torch.float32)
    patches = render_patches(
        [scan],
        torch.zeros(4, dtype=torch.long),
        torch.zeros(4, dtype=torch.long),
        positions,
        params,
        cube_offsets(torch.full((4,), 1.2), 3),
    ).numpy()
    offsets = np.arange(3) - 1
    kk, jj, ii = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    points = positions[:, None, :] + torch.as_tensor(
        np.stack([ii, jj, kk], axis=-1).reshape(-1, 3) * 1.2, dtype=torch.float32
    )
    source = transform_points(params, points).numpy()  # where the samples come from
    expected = _ramp_expected(volume, source.astype(np.float64)).reshape(4, 3, 3, 3)
    np.testing.assert_allclose(patches, expected, atol=2e-4)
    # Different episodes (seeds) see different content at the same position.
    assert not np.allclose(patches[0], patches[1], atol=1e-3)


def test_render_patches_is_zero_outside_the_scan(ramp) -> None:
    _, scan = ramp
    identity = batch_params(NO_AUG, np.zeros(1, np.int64), np.zeros((1, 3)))
    far = torch.as_tensor(CENTRE_RAS + np.array([[500.0, 0.0, 0.0]]), dtype=torch.float32)
    patch = render_patches(
        [scan],
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        far,
        identity,
        cube_offsets(torch.full((1,), 1.2), 5),
    )
    assert float(patch.abs().max()) == 0.0


# ------------------------------------------------------------------ gymnasium checks
def test_single_env_passes_the_gymnasium_env_checker(case) -> None:
    _, scan, blobs = case
    env = LandmarkEnv([scan], [blobs], ENV, AugmentConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded Box / no render modes: by design
        check_env(env.unwrapped)


def test_step_info_is_not_changed_by_a_later_reset(case) -> None:
    """Gymnasium: returned data must not be reused; the info arrays must be copies."""
    _, scan, blobs = case
    env = LandmarkEnv([scan], [blobs], ENV, AugmentConfig())
    env.reset(seed=5)
    obs, _, _, _, info = env.step(0)
    kept = {k: np.array(v, copy=True) for k, v in info.items()}
    kept_obs = {k: np.array(v, copy=True) for k, v in obs.items()}
    env.reset(seed=9)
    env.step(1)
    for key, value in kept.items():
        np.testing.assert_array_equal(info[key], value, err_msg=f"info[{key!r}]")
    for key, value in kept_obs.items():
        np.testing.assert_array_equal(obs[key], value, err_msg=f"obs[{key!r}]")


def test_observation_matches_the_space(case) -> None:
    _, scan, blobs = case
    config = dataclasses.replace(ENV, frames=2, action_history=3)
    env = LandmarkEnv([scan], [blobs], config, AugmentConfig())
    obs, _ = env.reset(seed=1)
    assert obs["patch"].shape == (2, 7, 7, 7)
    assert obs["actions"].shape == (3 * 6,)
    assert not obs["actions"].any()  # no action taken yet
    obs, *_ = env.step(2)
    obs, *_ = env.step(5)
    history = obs["actions"].reshape(3, 6)
    # Most recent first, one-hot.
    assert history[0].argmax() == 5 and history[1].argmax() == 2 and not history[2].any()
    assert env.observation_space.contains(obs)


# ------------------------------------------------------------ vector == single envs
def _step_all(vector, singles, actions, ended):
    obs_v, rew_v, term_v, trunc_v, info_v = vector.step(actions)
    rows = []
    for i, env in enumerate(singles):
        if ended[i]:
            obs, info = env.reset()
            rows.append((obs, 0.0, False, False, info))
        else:
            rows.append(env.step(int(actions[i])))
    return (obs_v, rew_v, term_v, trunc_v, info_v), rows


def _make_envs(case, count: int = 4):
    _, scan, blobs = case
    # A second scan (the same blobs, moved) so episodes also differ in their scan.
    other_volume, other_blobs = blob_volume(
        shape_zyx=(40, 48, 44),
        spacing_mm=(1.5, 1.8, 2.2),
        blobs_ras=blobs + np.array([3.0, -2.0, 1.0]),
        seed=1,
    )
    scans = [scan, build_pyramid(other_volume, [lv.spacing_mm for lv in LEVELS])]
    targets = [blobs, other_blobs]
    config = dataclasses.replace(
        ENV,
        levels=tuple(dataclasses.replace(lv, max_steps=3 + i) for i, lv in enumerate(LEVELS)),
    )
    vector = LandmarkVectorEnv(scans, targets, count, config, AugmentConfig())
    singles = [LandmarkEnv(scans, targets, config, AugmentConfig()) for _ in range(count)]
    return vector, singles


def test_vector_env_matches_single_envs_step_by_step(case) -> None:
    seed, count = 11, 4
    vector, singles = _make_envs(case, count)
    obs_v, info_v = vector.reset(seed=seed)
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=seed + i)
        for key in obs:
            np.testing.assert_allclose(obs_v[key][i], obs[key], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(info_v["pose"][i], info["pose"], atol=1e-5)
    rng = np.random.default_rng(0)
    ended = np.zeros(count, dtype=bool)
    autoresets = np.zeros(count, dtype=int)
    for t in range(30):
        actions = rng.integers(0, 6, size=count)
        (obs_v, rew_v, term_v, trunc_v, info_v), rows = _step_all(vector, singles, actions, ended)
        autoresets += ended
        for i, (obs, rew, term, trunc, info) in enumerate(rows):
            where = f"step {t}, env {i}"
            for key in obs:
                np.testing.assert_allclose(
                    obs_v[key][i], obs[key], atol=1e-5, err_msg=f"{where}: {key}"
                )
            np.testing.assert_allclose(rew_v[i], rew, atol=1e-5, err_msg=where)
            assert bool(term_v[i]) == term, where
            assert bool(trunc_v[i]) == trunc, where
            np.testing.assert_allclose(info_v["pose"][i], info["pose"], atol=1e-5, err_msg=where)
            if ended[i]:  # next-step autoreset: reward 0, not done
                assert rew_v[i] == 0.0 and not term_v[i] and not trunc_v[i], where
        ended = np.asarray(term_v) | np.asarray(trunc_v)
    assert autoresets.min() >= 2, autoresets  # every env went through autoresets


def test_vector_env_info_after_autoreset_describes_the_new_episode(case) -> None:
    seed, count = 11, 4
    vector, singles = _make_envs(case, count)
    vector.reset(seed=seed)
    for i, env in enumerate(singles):
        env.reset(seed=seed + i)
    rng = np.random.default_rng(0)
    ended = np.zeros(count, dtype=bool)
    checked = 0
    for _ in range(12):
        actions = rng.integers(0, 6, size=count)
        (_, _, term_v, trunc_v, info_v), rows = _step_all(vector, singles, actions, ended)
        for i in np.flatnonzero(ended):
            info = rows[i][4]
            assert info_v["distance"][i] == pytest.approx(info["distance"], abs=1e-4)
            checked += 1
        ended = np.asarray(term_v) | np.asarray(trunc_v)
    assert checked > 0


# ------------------------------------------------------------------------- rewards
def _reset_fixed(env: LandmarkEnv, seed: int = 3, level: int = 0):
    return env.reset(seed=seed, options={"scan": 0, "target": 1, "level": level})


def test_reset_options_and_start_radius(case) -> None:
    _, scan, blobs = case
    env = LandmarkEnv([scan], [blobs], ENV, NO_AUG)
    for seed in range(12):
        level = seed % 2
        obs, info = _reset_fixed(env, seed, level)
        assert int(obs["target"]) == 1 and int(obs["level"]) == level
        # Without augmentation the target is the landmark itself.
        np.testing.assert_allclose(env.kernel.goal[0].numpy(), blobs[1], atol=1e-3)
        assert info["distance"] <= LEVELS[level].start_radius_mm + 1e-4
        assert bool(scan.contains_ras(torch.as_tensor(info["pose"][None]))[0])


@pytest.mark.parametrize("clip", [100.0, 0.5])
def test_reward_is_the_clipped_decrease_of_distance(case, clip: float) -> None:
    _, scan, blobs = case
    config = dataclasses.replace(ENV, reward_clip_mm=clip, success_radius_mm=0.01)
    env = LandmarkEnv([scan], [blobs], config, NO_AUG)
    rewards = []
    start = scan.centre_ras + np.array([1.0, -2.0, 0.5])
    for action in range(6):
        _reset_fixed(env)
        _place(env, start)
        target = env.kernel.goal[0].numpy().astype(np.float64)
        _, reward, terminated, truncated, info = env.step(action)
        moved = start + 4.0 * VECTORS[action]
        np.testing.assert_allclose(info["pose"], moved, atol=1e-4)
        decrease = np.linalg.norm(start - target) - np.linalg.norm(moved - target)
        assert reward == pytest.approx(np.clip(decrease, -clip, clip), abs=1e-4), ACTION_NAMES[
            action
        ]
        assert info["distance"] == pytest.approx(np.linalg.norm(moved - target), abs=1e-4)
        assert not terminated and not truncated
        rewards.append(reward)
    # The move with the largest component towards the target is rewarded.
    offset = target - start
    toward = int(np.argmax(VECTORS @ offset))
    assert rewards[toward] > 0
    assert rewards[toward ^ 1] < 0  # the opposite move (actions come in +/- pairs)
    assert max(abs(r) for r in rewards) <= clip + 1e-6


def test_reaching_the_target_terminates(case) -> None:
    _, scan, blobs = case
    env = LandmarkEnv([scan], [blobs], ENV, NO_AUG)
    _reset_fixed(env)
    target = env.kernel.goal[0].numpy().astype(np.float64)
    _place(env, target + np.array([4.0, 0.0, 0.0]))
    _, reward, terminated, truncated, info = env.step(1)  # -R: onto the target
    assert terminated and not truncated
    assert reward == pytest.approx(ENV.reward_clip_mm)
    assert info["distance"] < ENV.success_radius_mm


def test_moves_out_of_the_image_are_refused_and_penalised(case) -> None:
    volume, scan, blobs = case
    config = dataclasses.replace(ENV, out_of_image_penalty=0.7)
    env = LandmarkEnv([scan], [blobs], config, NO_AUG)
    _reset_fixed(env)
    # The centre of the i = 0 face, a quarter voxel inside the image.
    _, ny, nz = volume.shape_xyz
    edge = volume.index_to_world(np.array([-0.25, (ny - 1) / 2, (nz - 1) / 2]))[0]
    proposed = edge + 4.0 * VECTORS
    index = volume.world_to_index(proposed)
    outward = int(np.argmin(index[:, 0]))
    inward = int(np.argmax(index[:, 0]))
    assert index[outward, 0] < -1.0 and volume.contains_ras(proposed[inward : inward + 1])[0]
    _place(env, edge)
    _, reward, terminated, _, info = env.step(outward)
    assert reward == pytest.approx(-0.7)
    assert not info["inside"] and not terminated
    np.testing.assert_allclose(info["pose"], edge, atol=1e-4)  # refused: no move
    _, reward, _, _, info = env.step(inward)
    assert info["inside"] and reward != pytest.approx(-0.7)
    np.testing.assert_allclose(info["pose"], proposed[inward], atol=1e-4)


# --------------------------------------------------------------------- oscillation
@pytest.mark.parametrize("repeats", [3, 5])
def test_oscillation_truncates_an_agent_going_back_and_forth(case, repeats: int) -> None:
    _, scan, blobs = case
    levels = tuple(dataclasses.replace(lv, max_steps=100) for lv in LEVELS)
    config = dataclasses.replace(
        ENV, levels=levels, oscillation_window=20, oscillation_repeats=repeats
    )
    env = LandmarkEnv([scan], [blobs], config, NO_AUG)
    _reset_fixed(env, level=0)
    _place(env, scan.centre_ras)  # at least 15 mm from every blob
    truncated_at = None
    for step in range(1, 3 * repeats + 1):
        _, _, terminated, truncated, info = env.step(0 if step % 2 else 1)  # +R, -R, +R, ...
        assert not terminated
        if truncated:
            assert info["oscillating"]
            truncated_at = step
            break
        assert not info["oscillating"]
    # The start position is seen for the (repeats + 1)-th time after 2 * repeats steps.
    assert truncated_at == 2 * repeats


def test_moving_on_is_not_oscillation(case) -> None:
    _, scan, blobs = case
    levels = tuple(dataclasses.replace(lv, max_steps=100) for lv in LEVELS)
    env = LandmarkEnv([scan], [blobs], dataclasses.replace(ENV, levels=levels), NO_AUG)
    _reset_fixed(env, level=1)
    _place(env, scan.centre_ras)
    for action in [0, 2, 4, 0, 2, 4, 1, 3, 5]:  # a staircase: no position twice
        _, _, _, truncated, info = env.step(action)
        assert not truncated and not info["oscillating"]


def test_step_budget_truncates(case) -> None:
    _, scan, blobs = case
    env = LandmarkEnv([scan], [blobs], ENV, NO_AUG)
    _reset_fixed(env, level=1)
    _place(env, scan.centre_ras)
    outcomes = [env.step(a)[3] for a in [0, 2, 4, 0, 2]]  # max_steps = 5 at level 1
    assert outcomes == [False, False, False, False, True]
