"""Tests for medrl.agents: replay, n-step returns, network, training/resume, models, search."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import medrl
from _synthetic import BLOB_NAMES, blob_volume
from medrl.agents.checkpoint import (
    MODEL_FORMAT_VERSION,
    LandmarkModel,
    build_network,
    load_model,
    save_model_files,
)
from medrl.agents.dqn import Trainer
from medrl.agents.networks import LevelQNetworks, QNetwork
from medrl.agents.replay import NStepAssembler, PoseReplay, split_poses
from medrl.agents.search import search
from medrl.agents.trainer_checkpoint import CHECKPOINT_DIR
from medrl.config import AgentConfig, Config, EnvConfig, load_config
from medrl.envs.pyramid import build_pyramid
from medrl.errors import CheckpointError, InputError
from medrl.tasks.base import Poses

# Tiny tensors: torch's thread pool costs far more than it saves here (15x on 2 busy cores).
torch.set_num_threads(1)

SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"
DESCRIPTIONS = ("first blob", "second blob", "third blob")


class Case(tuple):
    """(volume, pyramid, blob centres), with a short repr for failure messages."""

    def __repr__(self) -> str:
        return "<synthetic blob case>"


@pytest.fixture(scope="module")
def case() -> Case:
    volume, blobs = blob_volume()  # 64^3 at 1.5 mm, oblique
    return Case((volume, build_pyramid(volume, [4.0, 2.0]), blobs))


# ----------------------------------------------------------------------------- replay
def _transitions(count: int, frames: int, history: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "scan": rng.integers(0, 3, count).astype(np.int16),
        "target": rng.integers(0, 30, count).astype(np.int16),
        "level": rng.integers(0, 3, count).astype(np.int8),
        "episode_seed": rng.integers(0, 2**62, count),
        "frames": rng.normal(0, 50, (count, frames, 3)).astype(np.float32),
        "goal": rng.normal(0, 50, (count, 3)).astype(np.float32),
        "actions": rng.integers(-1, 6, (count, history)).astype(np.int8),
        "step": rng.integers(0, 40, count).astype(np.int32),
        "action": rng.integers(0, 6, count).astype(np.int8),
        "reward": rng.uniform(-1, 1, count).astype(np.float32),
        "discount": rng.uniform(0, 1, count).astype(np.float32),
        "next_frames": rng.normal(0, 50, (count, frames, 3)).astype(np.float32),
        "next_actions": rng.integers(-1, 6, (count, history)).astype(np.int8),
        "next_step": rng.integers(0, 40, count).astype(np.int32),
    }


def test_replay_of_a_million_transitions_is_small() -> None:
    env = EnvConfig()
    replay = PoseReplay(10**6, env.frames, env.action_history)
    assert replay.nbytes < 200 * 2**20
    assert replay.nbytes / 10**6 < 100  # bytes per transition (a 15^3 patch alone: 13.5 kB)


def test_replay_add_sample_save_load_round_trip(tmp_path: Path) -> None:
    replay = PoseReplay(50, frames=2, history=4)
    batch = _transitions(30, 2, 4)
    replay.add(batch)
    assert len(replay) == 30
    sample = replay.sample(64, np.random.default_rng(0))
    assert set(sample) == set(batch)
    # Every sampled row is one of the added rows, all fields from the same row.
    for n in range(64):
        (rows,) = np.nonzero(batch["episode_seed"] == sample["episode_seed"][n])
        assert len(rows) == 1
        for name in batch:
            np.testing.assert_array_equal(sample[name][n], batch[name][rows[0]], err_msg=name)
    # Wrap around the ring: 30 + 30 > 50 keeps the newest 50.
    second = _transitions(30, 2, 4, seed=1)
    replay.add(second)
    assert len(replay) == 50 and replay.cursor == 10
    np.testing.assert_array_equal(replay.data["episode_seed"][:10], second["episode_seed"][20:])
    np.testing.assert_array_equal(replay.data["episode_seed"][30:], second["episode_seed"][:20])
    replay.save(tmp_path / "replay.npz")
    loaded = PoseReplay(50, frames=2, history=4)
    loaded.load(tmp_path / "replay.npz")
    assert (len(loaded), loaded.cursor) == (50, 10)
    for name, array in replay.data.items():
        np.testing.assert_array_equal(loaded.data[name], array, err_msg=name)
        assert loaded.data[name].dtype == array.dtype
    # Same sampling stream, same samples.
    a = replay.sample(8, np.random.default_rng(3))
    b = loaded.sample(8, np.random.default_rng(3))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    # split_poses turns a sample into (state, next state) poses.
    state, following = split_poses(a, "cpu")
    np.testing.assert_array_equal(state.frames.numpy(), a["frames"])
    np.testing.assert_array_equal(following.frames.numpy(), a["next_frames"])
    np.testing.assert_array_equal(following.goal.numpy(), a["goal"])
    np.testing.assert_array_equal(following.step, a["next_step"])
    assert state.actions.dtype == torch.long and following.actions.shape == (8, 4)


# --------------------------------------------------------------------------- n-step
def _poses(step: int, num_envs: int = 2) -> Poses:
    """Poses whose ``step`` field (and x coordinate) identify the time step."""
    frames = torch.zeros((num_envs, 1, 3))
    frames[:, 0, 0] = float(step)
    frames[:, 0, 1] = torch.arange(num_envs, dtype=torch.float32)
    return Poses(
        scan=torch.zeros(num_envs, dtype=torch.long),
        target=torch.zeros(num_envs, dtype=torch.long),
        level=torch.zeros(num_envs, dtype=torch.long),
        frames=frames,
        actions=torch.full((num_envs, 2), -1, dtype=torch.long),
        episode_seed=np.arange(num_envs, dtype=np.int64) + 100,
        step=np.full(num_envs, step, dtype=np.int64),
        goal=torch.zeros((num_envs, 3)),
    )


def test_nstep_returns_and_discounts() -> None:
    gamma, n = 0.5, 3
    assembler = NStepAssembler(num_envs=2, n_step=n, gamma=gamma)
    # Env 0: rewards 1, 2, 4, 8, 16, terminated at t=4; then 32, 64 truncated at t=6.
    # Env 1: reward 10 every step, never done.
    rewards0 = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    term0 = [False, False, False, False, True, False, False]
    trunc0 = [False, False, False, False, False, False, True]
    emitted: list[dict[str, np.ndarray]] = []
    for t in range(7):
        out = assembler.add(
            _poses(t),
            np.array([t % 6, 5]),
            np.array([rewards0[t], 10.0]),
            _poses(t + 1),
            np.array([term0[t], False]),
            np.array([trunc0[t], False]),
        )
        emitted.append(out)
    assert emitted[0] is None and emitted[1] is None
    rows = {}
    for out in emitted[2:]:
        for k in range(len(out["step"])):
            env = int(out["frames"][k, 0, 1])
            rows[(env, int(out["step"][k]))] = {name: out[name][k] for name in out}

    def check(env, start, reward, discount, next_step, action=None):
        row = rows.pop((env, start))
        assert row["reward"] == pytest.approx(reward), (env, start)
        assert row["discount"] == pytest.approx(discount), (env, start)
        assert int(row["next_step"]) == next_step, (env, start)
        assert row["next_frames"][0, 0] == next_step
        if action is not None:
            assert int(row["action"]) == action

    g = gamma
    # Full n-step windows: discount gamma^n, bootstrap from n steps later.
    check(0, 0, 1 + g * 2 + g**2 * 4, g**3, 3, action=0)
    check(0, 1, 2 + g * 4 + g**2 * 8, g**3, 4, action=1)
    # Termination at t=4 flushes the window: discount 0, next state = the final pose.
    check(0, 2, 4 + g * 8 + g**2 * 16, 0.0, 5)
    check(0, 3, 8 + g * 16, 0.0, 5)
    check(0, 4, 16.0, 0.0, 5, action=4)
    # Truncation at t=6 flushes too, but bootstraps: discount gamma^k for k rewards.
    check(0, 5, 32 + g * 64, g**2, 7)
    check(0, 6, 64.0, g, 7)
    # Env 1 is unaffected by env 0's episode ends.
    for start in range(5):
        check(1, start, 10 * (1 + g + g**2), g**3, start + 3, action=5)
    assert not rows  # nothing else was emitted


def test_nstep_state_dict_round_trip() -> None:
    first = NStepAssembler(1, 3, 0.9)
    first.add(_poses(0, 1), np.array([2]), np.array([1.0]), _poses(1, 1), [False], [False])
    second = NStepAssembler(1, 3, 0.9)
    second.load_state_dict(first.state_dict())
    args = (_poses(1, 1), np.array([3]), np.array([2.0]), _poses(2, 1), [False], [True])
    a, b = first.add(*args), second.add(*args)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert a["reward"][0] == pytest.approx(1 + 0.9 * 2)


# -------------------------------------------------------------------------- network
def _observation(batch: int, patch: int, frames: int, history: int, landmarks: int, levels: int):
    gen = torch.Generator().manual_seed(0)
    actions = torch.zeros(batch, history * 6)
    actions[:, 3] = 1.0
    return {
        "patch": torch.rand(batch, frames, patch, patch, patch, generator=gen),
        "target": torch.randint(0, landmarks, (batch,), generator=gen),
        "level": torch.randint(0, levels, (batch,), generator=gen),
        "actions": actions,
    }


@pytest.mark.parametrize("patch", [9, 15])
def test_qnetwork_output_shape(patch: int) -> None:
    torch.manual_seed(0)
    config = AgentConfig(channels=(4, 8, 8), hidden=32)
    network = QNetwork(config, patch, frames=2, num_targets=5, num_levels=3, action_history=4)
    q = network(_observation(7, patch, 2, 4, 5, 3))
    assert q.shape == (7, 6) and q.dtype == torch.float32
    assert torch.isfinite(q).all()


def test_dueling_head_has_mean_zero_advantage() -> None:
    torch.manual_seed(0)
    network = QNetwork(AgentConfig(channels=(4, 8), hidden=32), 9, 1, 3, 2, 4)
    values = []
    network.value.register_forward_hook(lambda _m, _i, out: values.append(out.detach()))
    obs = _observation(6, 9, 1, 4, 3, 2)
    q = network(obs).detach()
    # Q = V + A - mean(A): the mean over actions is V, whatever A is.
    landmark_value = values[0][torch.arange(6), obs["target"]]
    torch.testing.assert_close(q.mean(dim=1), landmark_value, atol=1e-6, rtol=0)
    assert network.forward_all(obs).shape == (6, 3, 6)
    assert float(q.std(dim=1).min()) > 0  # the advantages are not all zero
    # The head is conditioned on the landmark.
    other = dict(obs, target=(obs["target"] + 1) % 3)
    assert not torch.allclose(network(other), q)


def test_plain_head_without_dueling() -> None:
    torch.manual_seed(0)
    network = QNetwork(AgentConfig(channels=(4, 8), hidden=32, dueling=False), 9, 1, 3, 2, 4)
    assert network.value is None
    q = network(_observation(6, 9, 1, 4, 3, 2)).detach()
    assert q.shape == (6, 6)
    assert float(q.mean(dim=1).abs().max()) > 0  # no mean-zero constraint


def test_level_networks_send_each_sample_to_its_level() -> None:
    """``agent.level_networks``: each row is its own level's network's output, and a loss on
    the samples of one level trains that level's network only."""
    torch.manual_seed(0)
    config = AgentConfig(channels=(4, 8), hidden=32, level_networks=True)
    network = LevelQNetworks(
        num_levels=3, config=config, patch_size=9, frames=1, num_targets=5, action_history=4
    )
    obs = _observation(10, 9, 1, 4, 5, 3)
    obs["level"] = torch.tensor([0, 2, 1, 2, 0, 1, 1, 2, 0, 2])
    q = network.forward_all(obs)
    assert q.shape == (10, 5, 6)
    for level, single in enumerate(network.levels):
        rows = obs["level"] == level
        part = {k: v[rows] for k, v in obs.items()}
        part["level"] = torch.zeros_like(part["level"])
        torch.testing.assert_close(q[rows], single.forward_all(part))
    only_fine = {k: v[obs["level"] == 2] for k, v in obs.items()}
    network(only_fine).sum().backward()
    grads = [[p.grad for p in single.parameters()] for single in network.levels]
    assert all(g is None for g in grads[0] + grads[1])
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads[2])
    assert network.forward_all({k: v[:0] for k, v in obs.items()}).shape == (0, 5, 6)
    with pytest.raises(ValueError, match="levels outside"):
        network.forward_all(dict(obs, level=obs["level"] + 1))


def test_level_networks_model_round_trip(tmp_path: Path) -> None:
    config = load_config(SMOKE, ["agent.level_networks=true"])
    torch.manual_seed(2)
    network = build_network(config, len(BLOB_NAMES))
    assert isinstance(network, LevelQNetworks) and len(network.levels) == len(config.env.levels)
    save_model_files(tmp_path, network, config, BLOB_NAMES, DESCRIPTIONS, {"steps": 0})
    model = load_model(tmp_path)
    assert isinstance(model.network, LevelQNetworks)
    for name, value in network.state_dict().items():
        assert torch.equal(model.network.state_dict()[name], value), name


# ------------------------------------------------------------------- training, resume
def _trainer_config(*overrides: str) -> Config:
    return load_config(
        SMOKE,
        [
            "train.total_steps=24",
            "train.num_envs=6",
            "train.checkpoint_every=100",
            "train.log_every=6",
            "agent.learning_starts=24",
            "agent.target_update=3",
            "agent.batch_size=8",
            *overrides,
        ],
    )


def _trainer(config: Config, run_dir: Path, case: Case) -> Trainer:
    _, scan, blobs = case
    return Trainer(
        config, run_dir, scans=[scan], targets=[blobs], names=BLOB_NAMES, descriptions=DESCRIPTIONS
    )


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


@pytest.mark.parametrize("backup", ["all_actions", "sampled"])
def test_resumed_training_is_identical_to_uninterrupted(
    tmp_path: Path, case: Case, backup: str
) -> None:
    config = _trainer_config(f"agent.backup={backup}")
    straight = _trainer(config, tmp_path / "a", case)
    initial = _state(straight)
    straight.run(progress=False)
    assert straight.step == 24

    first = _trainer(config, tmp_path / "b", case)
    first.run(progress=False, stop_after=12)
    assert first.step == 12
    updates_first_half = first.updates
    assert (tmp_path / "b" / CHECKPOINT_DIR / "trainer_state.pt").is_file()
    # The checkpoint folder is a loadable model folder too.
    snapshot = load_model(tmp_path / "b" / CHECKPOINT_DIR)
    for name, value in first.network.state_dict().items():
        assert torch.equal(snapshot.network.state_dict()[name], value), name
    del first

    resumed = _trainer(config, tmp_path / "b", case)
    assert resumed.load_checkpoint()
    assert resumed.step == 12
    resumed.run(progress=False)
    assert resumed.step == 24

    # The test means something: the network learned in both halves.
    assert 0 < updates_first_half < resumed.updates == straight.updates
    final = _state(straight)
    assert any(not torch.equal(initial[k], final[k]) for k in final)
    for name, value in _state(resumed).items():
        assert torch.equal(value, final[name]), f"network {name} differs after resuming"
    for name, value in resumed.target.state_dict().items():
        assert torch.equal(value, straight.target.state_dict()[name]), f"target {name}"
    assert len(resumed.replay) == len(straight.replay)
    for name, array in straight.replay.data.items():
        np.testing.assert_array_equal(resumed.replay.data[name], array, err_msg=name)
    np.testing.assert_array_equal(resumed.kernel.episode_seed, straight.kernel.episode_seed)
    assert torch.equal(resumed.kernel.frames, straight.kernel.frames)


def test_load_checkpoint_without_checkpoint_and_with_other_landmarks(
    tmp_path: Path, case: Case
) -> None:
    config = _trainer_config("train.total_steps=2")
    trainer = _trainer(config, tmp_path / "run", case)
    assert trainer.load_checkpoint() is False
    trainer.run(progress=False)
    _, scan, blobs = case
    other = Trainer(
        config,
        tmp_path / "run",
        scans=[scan],
        targets=[blobs],
        names=("x", "y", "z"),
        descriptions=DESCRIPTIONS,
    )
    with pytest.raises(CheckpointError, match="other targets"):
        other.load_checkpoint()


def test_resume_with_another_num_envs_is_a_checkpoint_error(tmp_path: Path, case: Case) -> None:
    """``medrl train`` resumes by default; a changed train.num_envs must give a clear
    CheckpointError (the CLI prints it), not a ValueError from deep inside."""
    _trainer(_trainer_config("train.total_steps=2"), tmp_path / "run", case).run(progress=False)
    config = _trainer_config("train.total_steps=4", "train.num_envs=4")
    with pytest.raises(CheckpointError):
        _trainer(config, tmp_path / "run", case).load_checkpoint()


# --------------------------------------------------------------------- model folders
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    config = load_config(SMOKE)
    network = build_network(config, len(BLOB_NAMES))
    folder = tmp_path_factory.mktemp("model")
    save_model_files(folder, network, config, BLOB_NAMES, DESCRIPTIONS, {"steps": 0})
    return folder


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(model_dir, target)
    return target


def test_model_folder_round_trip(model_dir: Path) -> None:
    model = load_model(model_dir)
    assert model.names == BLOB_NAMES and model.descriptions == DESCRIPTIONS
    assert model.config == load_config(SMOKE)
    assert model.meta == {"steps": 0}
    assert not model.network.training
    header = yaml.safe_load((model_dir / "model.yaml").read_text())
    assert header["format_version"] == MODEL_FORMAT_VERSION
    assert header["medrl_version"] == medrl.__version__
    torch.manual_seed(1)
    reference = build_network(load_config(SMOKE), len(BLOB_NAMES))
    for name, value in reference.state_dict().items():
        assert torch.equal(model.network.state_dict()[name], value), name


def test_load_model_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as info:
        load_model(missing)
    assert info.value.path == str(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("name", ["model.yaml", "model.safetensors"])
def test_load_model_missing_file(model_dir: Path, tmp_path: Path, name: str) -> None:
    folder = _copy(model_dir, tmp_path)
    (folder / name).unlink()
    with pytest.raises(CheckpointError, match=name) as info:
        load_model(folder)
    assert str(folder) in str(info.value)


@pytest.mark.parametrize("version", [MODEL_FORMAT_VERSION + 1, 0, "1", None])
def test_load_model_wrong_format_version(model_dir: Path, tmp_path: Path, version) -> None:
    folder = _copy(model_dir, tmp_path)
    header = yaml.safe_load((folder / "model.yaml").read_text())
    header["format_version"] = version
    (folder / "model.yaml").write_text(yaml.safe_dump(header, sort_keys=False))
    with pytest.raises(CheckpointError, match="format version") as info:
        load_model(folder)
    assert info.value.path == str(folder / "model.yaml")


def test_load_model_wrong_format_name(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(model_dir, tmp_path)
    header = yaml.safe_load((folder / "model.yaml").read_text())
    header["format"] = "something-else"
    (folder / "model.yaml").write_text(yaml.safe_dump(header))
    with pytest.raises(CheckpointError, match="format"):
        load_model(folder)


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_load_model_corrupt_weights(model_dir: Path, tmp_path: Path, damage: str) -> None:
    folder = _copy(model_dir, tmp_path)
    weights = folder / "model.safetensors"
    if damage == "random":
        weights.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert info.value.path == str(weights)
    assert str(weights) in str(info.value)


def test_load_model_weights_from_another_network(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(model_dir, tmp_path)
    header = yaml.safe_load((folder / "model.yaml").read_text())
    header["targets"]["names"].append("extra")  # one more landmark embedding row
    (folder / "model.yaml").write_text(yaml.safe_dump(header, sort_keys=False))
    with pytest.raises(CheckpointError, match="do not match") as info:
        load_model(folder)
    assert info.value.path == str(folder / "model.safetensors")


def test_load_model_invalid_yaml(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(model_dir, tmp_path)
    (folder / "model.yaml").write_text("format: [unclosed\n")
    with pytest.raises(CheckpointError, match="YAML") as info:
        load_model(folder)
    assert info.value.path == str(folder / "model.yaml")


# ---------------------------------------------------------------------------- search
def test_search_returns_named_finite_points_inside_the_image(model_dir: Path, case: Case) -> None:
    volume, _, _ = case
    model = load_model(model_dir)
    result = search(model, volume)
    landmarks = result.landmarks
    assert landmarks.names == BLOB_NAMES
    assert landmarks.descriptions == DESCRIPTIONS
    assert landmarks.points_ras.shape == (3, 3)
    assert np.isfinite(landmarks.points_ras).all()
    assert volume.contains_ras(landmarks.points_ras).all()
    assert len(result.paths_ras) == 3 and len(result.paths_ras[0]) == model.config.search.num_starts
    for path in result.paths_ras[0]:
        assert volume.contains_ras(path).all()
    assert result.steps > 0
    again = search(model, volume)
    np.testing.assert_array_equal(again.landmarks.points_ras, landmarks.points_ras)


class BlobSeeker(nn.Module):
    """A hand-made 'Q-network' that moves towards brighter patch halves along R, A and S.

    patch[k, j, i] samples along (S, A, R), and actions are +R, -R, +A, -A, +S, -S: if the
    search and the renderer disagreed about frames, this agent would walk away from the blob.
    """

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        patch = obs["patch"][:, 0]
        half = patch.shape[-1] // 2
        grads = []
        for dim in (3, 2, 1):  # i (R), j (A), k (S)
            upper = patch.narrow(dim, half + 1, half).mean(dim=(1, 2, 3))
            lower = patch.narrow(dim, 0, half).mean(dim=(1, 2, 3))
            grads += [upper - lower, lower - upper]
        return torch.stack(grads, dim=1)


def test_search_with_a_blob_seeking_agent_finds_the_blob() -> None:
    config = load_config(SMOKE)
    blob = np.array([22.0, -28.0, 39.0])  # ~14 mm from the image centre
    volume, _ = blob_volume(blobs_ras=blob[None], sigma_mm=6.0, noise=1.0)
    model = LandmarkModel(BlobSeeker(), config, ("blob",), ("",), {})
    result = search(model, volume)
    error = float(np.linalg.norm(result.landmarks.points_ras[0] - blob))
    assert error < 2.0, f"found {result.landmarks.points_ras[0]}, blob at {blob}"


def test_init_from_starts_a_run_from_a_model_folder(model_dir: Path, tmp_path: Path, case: Case):
    config = _trainer_config(f"train.init_from={model_dir}", "train.total_steps=2")
    trainer = _trainer(config, tmp_path / "run", case)
    shipped = load_model(model_dir).network.state_dict()
    for name, value in trainer.network.state_dict().items():
        assert torch.equal(value, shipped[name]), name
        assert torch.equal(trainer.target.state_dict()[name], shipped[name]), name
    fresh = _trainer(_trainer_config("train.total_steps=2"), tmp_path / "fresh", case)
    assert any(not torch.equal(v, shipped[k]) for k, v in fresh.network.state_dict().items())


def test_init_from_another_model_is_a_checkpoint_error(
    model_dir: Path, tmp_path: Path, case: Case
) -> None:
    _, scan, blobs = case
    config = _trainer_config(f"train.init_from={model_dir}")
    with pytest.raises(CheckpointError, match="targets"):
        Trainer(config, tmp_path / "a", scans=[scan], targets=[blobs], names=("x", "y", "z"))
    wider = _trainer_config(f"train.init_from={model_dir}", "agent.hidden=48")
    with pytest.raises(CheckpointError, match="network differs"):
        _trainer(wider, tmp_path / "b", case)
    with pytest.raises(CheckpointError, match="does not exist"):
        _trainer(_trainer_config(f"train.init_from={tmp_path / 'nope'}"), tmp_path / "c", case)


def test_float_settings_accept_exponents_without_a_dot() -> None:
    assert _trainer_config("agent.lr=1e-4").agent.lr == pytest.approx(1e-4)
    with pytest.raises(InputError, match=r"agent\.lr must be float"):
        _trainer_config("agent.lr=fast")


def test_a_resumed_run_takes_the_learning_rate_set_now(tmp_path: Path, case: Case) -> None:
    """Resuming with another agent.lr (annealing by hand) must use it, not the checkpoint's."""
    first = _trainer(_trainer_config(), tmp_path / "run", case)
    first.run(progress=False, stop_after=12)
    assert first.updates > 0
    resumed = _trainer(_trainer_config("agent.lr=1e-5"), tmp_path / "run", case)
    assert resumed.load_checkpoint()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [pytest.approx(1e-5)]
    assert resumed.optimizer.state  # the Adam moments did come from the checkpoint
