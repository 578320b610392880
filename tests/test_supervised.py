"""The supervised heatmap detector: heatmap read-out, learning on the blob scans, files,
exact resume, and its row in ``medrl evaluate --supervised``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _synthetic import BLOB_NAMES, TINY_DETECTOR, write_blob_datalist, write_untrained_model
from medrl.cli import main
from medrl.config import Config, TrainConfig
from medrl.errors import CheckpointError, InputError
from medrl.io.images import read_image
from medrl.io.landmarks import read_landmarks
from medrl.supervised.detector import load_detector, load_single_detector
from medrl.supervised.network import (
    expected_offsets,
    gaussian_target,
    heatmap_axes_mm,
    peak_offsets,
)
from medrl.supervised.training import DetectorTrainer, TrainSettings

torch.set_num_threads(1)
TINY = TINY_DETECTOR


def test_the_expected_and_the_peak_position_of_heatmaps() -> None:
    axis = heatmap_axes_mm(32, 2.0, "cpu")
    truth = torch.tensor([[[6.3, -11.0, 2.5]]])
    logits = torch.log(gaussian_target(truth, axis, 3.0) + 1e-12)
    torch.testing.assert_close(expected_offsets(logits, axis), truth, atol=0.02, rtol=0)
    torch.testing.assert_close(peak_offsets(logits, axis), truth, atol=0.1, rtol=0)
    # a weaker second mode far away pulls the expectation but not the peak's window
    other = torch.tensor([[[-20.0, 14.0, -10.0]]])
    mixed = torch.log(
        gaussian_target(truth, axis, 3.0) + 0.5 * gaussian_target(other, axis, 3.0) + 1e-12
    )
    assert float((expected_offsets(mixed, axis) - truth).norm()) > 5.0
    torch.testing.assert_close(peak_offsets(mixed, axis), truth, atol=0.2, rtol=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_blob_datalist(tmp_path_factory.mktemp("supervised_data"))


def _config(datalist: Path) -> Config:
    return Config(train=TrainConfig(datalist=str(datalist), seed=3))


def _settings(steps: int) -> TrainSettings:
    return TrainSettings(minutes=30.0, max_steps=steps, coarse_batch=2, local_batch=4,
                         local_jitter_mm=3.0, lr=3e-3, checkpoint_every=10)  # fmt: skip


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("supervised_run")
    DetectorTrainer(_config(data["datalist"]), run, _settings(150), TINY).run(progress=False)
    return run


def test_training_learns_the_landmarks_of_an_unseen_scan(data, trained: Path, tmp_path) -> None:
    detector = load_detector(trained / "model")
    assert detector.training["steps"] == 150
    test_volume = read_image(data["test"])
    test_blobs = read_landmarks(data["test"].with_suffix("").with_suffix(".fcsv")).points_ras
    found = detector.detect(test_volume)
    errors = np.linalg.norm(found.points_ras - test_blobs, axis=1)
    untrained = DetectorTrainer(_config(data["datalist"]), tmp_path, _settings(0), TINY)
    before = untrained.detector.detect(test_volume)
    errors_before = np.linalg.norm(before.points_ras - test_blobs, axis=1)
    assert errors.mean() < 4.0, errors
    assert errors.mean() < 0.5 * errors_before.mean()


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(data, tmp_path: Path) -> None:
    config = _config(data["datalist"])
    straight = DetectorTrainer(config, tmp_path / "straight", _settings(20), TINY)
    straight.run(progress=False)
    DetectorTrainer(config, tmp_path / "resumed", _settings(10), TINY).run(progress=False)
    resumed = DetectorTrainer(config, tmp_path / "resumed", _settings(20), TINY)
    resumed.run(progress=False)
    assert resumed.step == 20
    for a, b in zip(straight.detector.local.parameters(), resumed.detector.local.parameters(),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_run_resumes_across_reading_settings_but_not_across_trained_ones(data, tmp_path) -> None:
    config = _config(data["datalist"])
    DetectorTrainer(config, tmp_path, _settings(10), replace(TINY, local_rounds=2)).run(
        progress=False
    )
    resumed = DetectorTrainer(config, tmp_path, _settings(20), replace(TINY, local_rounds=1))
    resumed.run(progress=False)
    straight = DetectorTrainer(config, tmp_path / "straight", _settings(20), TINY)
    straight.run(progress=False)
    for a, b in zip(straight.detector.local.parameters(), resumed.detector.local.parameters(),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # resumed, not restarted
    assert load_single_detector(tmp_path / "model").settings.local_rounds == 1
    other = DetectorTrainer(config, tmp_path, _settings(30), replace(TINY, local_width=6))
    with pytest.raises(InputError, match="other landmarks or settings"):
        other.run(progress=False)


def _average(weights: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    average = weights[0]
    for w in weights[1:]:
        average = {k: decay * average[k] + (1.0 - decay) * w[k] for k in average}
    return average


def test_the_model_is_the_moving_average_of_the_weights_and_resumes(data, tmp_path) -> None:
    """With average_decay the written model is the moving average of the step-by-step
    weights (computed here by hand); a resumed run writes the same one; a checkpoint without
    an average starts it from its weights."""
    config = _config(data["datalist"])
    probe = DetectorTrainer(config, tmp_path / "probe", _settings(6), TINY)
    raw = []
    for _ in range(6):
        probe.train_step()
        raw.append({k: v.detach().clone() for k, v in probe.detector.local.state_dict().items()})
    averaged = replace(_settings(6), average_decay=0.8)
    DetectorTrainer(config, tmp_path / "straight", averaged, TINY).run(progress=False)
    model = load_single_detector(tmp_path / "straight" / "model").local.state_dict()
    last = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["local"]
    for key, expected in _average(raw, 0.8).items():
        torch.testing.assert_close(model[key], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(last[key], raw[-1][key], atol=1e-5, rtol=1e-4)
    assert any(float((model[k] - raw[-1][k]).abs().max()) > 1e-4 for k in model)
    DetectorTrainer(config, tmp_path / "resumed", replace(averaged, max_steps=3), TINY).run(
        progress=False
    )
    DetectorTrainer(config, tmp_path / "resumed", averaged, TINY).run(progress=False)
    resumed = load_single_detector(tmp_path / "resumed" / "model").local.state_dict()
    DetectorTrainer(config, tmp_path / "late", _settings(3), TINY).run(progress=False)
    DetectorTrainer(config, tmp_path / "late", averaged, TINY).run(progress=False)
    late = load_single_detector(tmp_path / "late" / "model").local.state_dict()
    for key, expected in _average(raw[2:], 0.8).items():
        torch.testing.assert_close(resumed[key], model[key], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(late[key], expected, atol=1e-5, rtol=1e-4)
    DetectorTrainer(config, tmp_path / "late", replace(averaged, max_steps=7, average_decay=0.0),
                    TINY).run(progress=False)  # fmt: skip
    plain = load_single_detector(tmp_path / "late" / "model").local.state_dict()
    last = torch.load(tmp_path / "late" / "checkpoint.pt", weights_only=False)["local"]
    for key, value in plain.items():  # resumed without the average: its last weights
        torch.testing.assert_close(value, last[key])
    with pytest.raises(InputError, match="decay"):
        replace(averaged, average_decay=1.0)


def test_the_cooldown_takes_the_rate_to_zero_and_a_resumed_run_follows_it(data, tmp_path) -> None:
    config = _config(data["datalist"])
    cooled = replace(_settings(8), cooldown_steps=4)
    interrupted = DetectorTrainer(config, tmp_path / "resumed", cooled, TINY)
    rates = [interrupted.learning_rate(step) for step in range(8)]
    np.testing.assert_allclose(rates, 3e-3 * np.array([1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2]))
    interrupted.run_dir.mkdir(parents=True)
    for _ in range(5):  # stopped inside the cool-down
        interrupted.train_step()
    interrupted.save_checkpoint()
    resumed = DetectorTrainer(config, tmp_path / "resumed", cooled, TINY)
    resumed.run(progress=False)
    straight = DetectorTrainer(config, tmp_path / "straight", cooled, TINY)
    straight.run(progress=False)
    constant = DetectorTrainer(config, tmp_path / "constant", _settings(8), TINY)
    constant.run(progress=False)
    pairs = zip(straight.detector.local.parameters(), resumed.detector.local.parameters(),
                constant.detector.local.parameters(), strict=True)  # fmt: skip
    moved = 0.0
    for a, b, c in pairs:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        moved = max(moved, float((a - c).detach().abs().max()))
    assert moved > 1e-4  # the cool-down changed the weights
    with pytest.raises(InputError, match="cool-down"):
        replace(cooled, cooldown_steps=9)


def test_bad_training_settings_exit_2_before_the_run_folder_exists(data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    base = ["train-heatmap", "--set", f"train.datalist={data['datalist']}", "--run-dir", str(run)]
    for extra, message in ((["--average-decay", "1.5"], "decay"),
                           (["--steps", "10", "--cooldown-steps", "20"], "cool-down"),
                           (["--cooldown-steps", "20"], "needs --steps")):  # fmt: skip
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
        assert not run.exists()


def test_detector_files_round_trip_and_bad_ones_are_named(trained: Path, data, tmp_path) -> None:
    detector = load_detector(trained / "model")
    copy = tmp_path / "copy"
    detector.save(copy)
    again = load_detector(copy)
    test_volume = read_image(data["test"])
    np.testing.assert_array_equal(
        detector.detect(test_volume).points_ras, again.detect(test_volume).points_ras
    )
    header = yaml.safe_load((copy / "detector.yaml").read_text())
    header["format"] = "medrl-dqn"
    (copy / "detector.yaml").write_text(yaml.safe_dump(header))
    with pytest.raises(CheckpointError, match=r"detector\.yaml"):
        load_detector(copy)
    with pytest.raises(CheckpointError, match="not a supervised detector"):
        load_detector(tmp_path)


def test_evaluate_adds_the_supervised_row(trained: Path, data, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    model = write_untrained_model(tmp_path / "model")
    out = tmp_path / "evaluation"
    argv = ["evaluate", "--model", str(model), "--datalist", str(data["datalist"]),
            "--atlas", str(data["datalist"]), "--rigid-trials", "1", "--out", str(out),
            "--supervised", str(trained / "model")]  # fmt: skip
    assert main(argv) == 0
    overall = json.loads((out / "overall.json").read_text())
    methods = {row["method"]: row for row in overall}
    assert set(methods) == {"agent", "affine-baseline", "supervised-heatmap"}
    assert methods["supervised-heatmap"]["n"] == len(BLOB_NAMES)
    record = json.loads((out / "cases" / "test_rigid0.json").read_text())
    assert np.asarray(record["supervised_ras"]).shape == (len(BLOB_NAMES), 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["supervised"]["steps"] == 150
    # an evaluation without the detector does not reuse these records
    assert main(argv[:-2]) == 0
    overall = json.loads((out / "overall.json").read_text())
    assert {row["method"] for row in overall} == {"agent", "affine-baseline"}


def test_training_sees_the_levels_detection_builds(data) -> None:
    from medrl.envs.pyramid import build_pyramid, coarser_levels
    from medrl.supervised.training import training_pyramid

    volume = read_image(data["test"])
    trained_on = training_pyramid(volume, TINY)
    detected_on = build_pyramid(volume, TINY.spacings_mm[:2])
    for level in (0, 1):
        assert torch.equal(trained_on.levels[level].tensor, detected_on.levels[level].tensor)
    assert coarser_levels(trained_on) == [0, 2, 0]  # local blurs to the 3 mm copy


def test_training_blends_the_contrasts_of_one_brain_as_the_agent_does(data, tmp_path) -> None:
    """A second contrast of the training scan (same grid, same landmarks) is its sibling, so
    ``augment.contrast_mix`` reaches the detector too; another brain is not."""
    import json
    import shutil
    from dataclasses import replace as swap

    from medrl.io.images import write_image

    folder = data["datalist"].parent
    volume = read_image(folder / "train.nii.gz")
    write_image(swap(volume, array=volume.array.max() - volume.array), tmp_path / "t2.nii.gz")
    for name in ("train", "test"):
        shutil.copy(folder / f"{name}.nii.gz", tmp_path / f"{name}.nii.gz")
        shutil.copy(folder / f"{name}.fcsv", tmp_path / f"{name}.fcsv")
    cases = [
        {"id": "t1", "image": "train.nii.gz", "landmarks": "train.fcsv", "split": "train"},
        {"id": "t2", "image": "t2.nii.gz", "landmarks": "train.fcsv", "split": "train"},
        {"id": "other", "image": "test.nii.gz", "landmarks": "test.fcsv", "split": "train"},
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"cases": cases}))
    trainer = DetectorTrainer(_config(tmp_path / "datalist.json"), tmp_path / "run",
                              _settings(0), TINY)  # fmt: skip
    first, second, other = trainer.scans
    assert [s.levels for s in first.siblings] == [second.levels]
    assert [s.levels for s in second.siblings] == [first.levels]
    assert other.siblings == ()
