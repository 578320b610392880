"""Validation during training (train.eval_every): moved validation scans, logged errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import medrl
from _synthetic import BLOB_NAMES, blob_volume
from medrl.agents.checkpoint import build_network
from medrl.agents.dqn import Trainer
from medrl.agents.validation import Validator, validation_split
from medrl.config import Config, load_config
from medrl.data.datalist import Case
from medrl.envs.pyramid import build_pyramid
from medrl.errors import InputError
from medrl.io.images import write_image
from medrl.io.landmarks import Landmarks, write_landmarks
from test_agents import BlobSeeker

torch.set_num_threads(1)

SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def case() -> Case:
    volume, blobs = blob_volume()  # 64^3 at 1.5 mm, oblique, three blobs
    return Case("blobs", volume, Landmarks(BLOB_NAMES, blobs, ("a", "b", "c")), "train")


def _config(*overrides: str) -> Config:
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


def test_validator_scores_a_blob_seeker_better_than_an_untrained_network() -> None:
    config = _config("train.eval_scans=2")
    blob = np.array([22.0, -28.0, 39.0])
    volume, _ = blob_volume(blobs_ras=blob[None], sigma_mm=6.0, noise=1.0)
    case = Case("one_blob", volume, Landmarks(("blob",), blob[None]), "train")
    validator = Validator([case], config, ("blob",))
    # The scans really are moved: the truth is not where the blob was.
    assert len(validator.scans) == 2
    for item in validator.scans:
        assert np.linalg.norm(item.truth_ras[0] - blob) > 1.0
    seeker = validator.evaluate(BlobSeeker(), config)
    torch.manual_seed(0)
    untrained = validator.evaluate(build_network(config, 1), config)
    assert seeker["mean_error_mm"] < 3.0, seeker
    assert untrained["mean_error_mm"] > seeker["mean_error_mm"] + 3.0, untrained
    assert set(seeker) >= {"mean_error_mm", "max_error_mm", "mean_error_mm/level0", "seconds"}
    # Deterministic.
    assert validator.evaluate(BlobSeeker(), config)["mean_error_mm"] == seeker["mean_error_mm"]


def test_validator_without_shared_landmarks_is_an_input_error(case: Case) -> None:
    with pytest.raises(InputError, match="no validation case"):
        Validator([case], _config(), ("not_a_blob",))


def test_validation_split_prefers_val_and_never_uses_test(tmp_path: Path, case: Case) -> None:
    write_image(case.volume, tmp_path / "scan.nii.gz")
    assert case.landmarks is not None
    write_landmarks(case.landmarks, tmp_path / "scan.fcsv")

    def datalist(splits: list[str]) -> str:
        path = tmp_path / f"{'_'.join(splits)}.json"
        cases = [
            {"id": f"c{i}", "image": "scan.nii.gz", "landmarks": "scan.fcsv", "split": split}
            for i, split in enumerate(splits)
        ]
        path.write_text(json.dumps({"cases": cases}))
        return str(path)

    assert validation_split(datalist(["train", "test"])) == "train"
    assert validation_split(datalist(["train", "val", "test"])) == "val"
    config = _config(f"train.datalist={datalist(['train', 'val', 'test'])}", "train.eval_scans=3")
    validator = Validator.from_config(config, BLOB_NAMES)
    assert [s.case_id for s in validator.scans] == ["c1_rigid0", "c1_rigid1", "c1_rigid2"]


def _trainer(config: Config, run_dir: Path, case: Case, validator: Validator | None) -> Trainer:
    assert case.landmarks is not None
    scan = build_pyramid(case.volume, [lv.spacing_mm for lv in config.env.levels])
    trainer = Trainer(
        config,
        run_dir,
        scans=[scan],
        targets=[case.landmarks.points_ras],
        names=BLOB_NAMES,
        descriptions=BLOB_NAMES,
    )
    trainer.validator = validator
    return trainer


def test_evaluating_during_training_changes_nothing_and_survives_resuming(
    tmp_path: Path, case: Case
) -> None:
    config = _config("train.eval_every=6", "train.eval_scans=1")
    validator = Validator([case], config, BLOB_NAMES)
    plain = _trainer(_config(), tmp_path / "plain", case, None)
    plain.run(progress=False)
    assert plain.evaluations == [] and plain.updates > 0

    straight = _trainer(config, tmp_path / "straight", case, validator)
    straight.run(progress=False)
    assert [e["step"] for e in straight.evaluations] == [6, 12, 18, 24]
    # Evaluating uses no random stream of the run: the very same network as without it.
    for name, value in plain.network.state_dict().items():
        assert torch.equal(straight.network.state_dict()[name], value), name

    first = _trainer(config, tmp_path / "resumed", case, validator)
    first.run(progress=False, stop_after=12)
    del first
    resumed = _trainer(config, tmp_path / "resumed", case, validator)
    assert resumed.load_checkpoint()
    resumed.run(progress=False)
    for name, value in plain.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[name], value), name
    clocks = ("seconds", "train_seconds")
    strip = [{k: v for k, v in e.items() if k not in clocks} for e in straight.evaluations]
    again = [{k: v for k, v in e.items() if k not in clocks} for e in resumed.evaluations]
    assert again == strip
    # For a learning curve: the updates so far and the run's seconds before each validation.
    assert [e["updates"] for e in straight.evaluations] == sorted(
        e["updates"] for e in straight.evaluations
    )
    assert straight.evaluations[-1]["updates"] == straight.updates
    seconds = [e["train_seconds"] for e in straight.evaluations]
    assert seconds == sorted(seconds) and seconds[0] > 0

    saved = json.loads((tmp_path / "resumed" / "evaluations.json").read_text())
    assert [e["step"] for e in saved] == [6, 12, 18, 24]
    events = EventAccumulator(str(tmp_path / "straight" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("eval/mean_error_mm")
    assert [s.step for s in scalars] == [6, 12, 18, 24]
    assert scalars[-1].value == pytest.approx(straight.evaluations[-1]["mean_error_mm"])


def test_a_run_stopped_by_its_clock_validates_where_it_stopped(
    tmp_path: Path, case: Case, monkeypatch
) -> None:
    """The last point of a learning curve: a run stopped by ``train.max_minutes`` between
    two validations validates once more, at the step where it stopped."""
    import medrl.agents.dqn as dqn

    class Clock:
        """A clock that moves 10 s each time the trainer reads it."""

        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 10.0
            return cls.now

    monkeypatch.setattr(dqn, "time", Clock)
    config = _config("train.eval_every=1000", "train.eval_scans=1", "train.max_minutes=1")
    trainer = _trainer(config, tmp_path / "run", case, Validator([case], config, BLOB_NAMES))
    trainer.run(progress=False)
    assert 0 < trainer.step < config.train.total_steps
    assert [e["step"] for e in trainer.evaluations] == [trainer.step]
    assert trainer.evaluations[0]["updates"] == trainer.updates
    saved = json.loads((tmp_path / "run" / "evaluations.json").read_text())
    assert [e["step"] for e in saved] == [trainer.step]
