"""End to end on the tiny model: medrl vlm data -> sft -> grpo -> evaluate (a few steps)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("SimpleITK")


pytestmark = pytest.mark.usefixtures("offline")


def test_grpo_config_sets_drifting_defaults_explicitly(tmp_path) -> None:
    from medrl.vlm.config import load_vlm_config
    from medrl.vlm.train import grpo_args

    config = load_vlm_config("tiny-cpu", ["grpo.beta=0.04", "grpo.loss_type=grpo"])
    args = grpo_args(config, tmp_path, seed=0, device="cpu")
    grpo = config["grpo"]
    assert args.num_generations == grpo["num_generations"] == 4
    assert args.per_device_train_batch_size == grpo["prompts_per_step"] * 4
    assert (args.beta, args.loss_type) == (0.04, "grpo")
    assert (args.epsilon, args.epsilon_high) == (grpo["epsilon"], grpo["epsilon_high"])
    assert args.scale_rewards == "group" and args.temperature == grpo["temperature"]
    assert args.max_completion_length == grpo["max_completion_length"]
    # the four rewards, then grounding_diagnostics: weight 0, it only logs
    assert args.reward_weights == [0.5, 1.0, 1.0, 0.5, 0.0]
    big = load_vlm_config("qwen2.5-vl-3b")
    assert big["model"]["lora"] and big["grpo"]["loss_type"] == "grpo"


def test_bad_config_values_are_named() -> None:
    from medrl.errors import InputError
    from medrl.vlm.config import load_vlm_config

    with pytest.raises(InputError, match="no config file or vlm preset"):
        load_vlm_config("huge-tpu")
    with pytest.raises(InputError, match=r"unknown config key 'grpo\.betta'"):
        load_vlm_config("tiny-cpu", ["grpo.betta=0.1"])


def test_data_sft_grpo_evaluate_end_to_end(tmp_path, capsys, builtin_data) -> None:
    from medrl.cli import main

    data = tmp_path / "data"
    common = ["--set", "threads=1"]
    assert main(["vlm", "data", "--out", str(data), "--num-train", "8", "--num-test", "4",
                 "--quiet", *common]) == 0  # fmt: skip
    sft = [
        "--set", "sft.epochs=1", "--set", "sft.batch_size=4", "--set", "sft.max_length=400",
    ]  # fmt: skip
    assert main(["vlm", "sft", "--data", str(data), "--run-dir", str(tmp_path / "sft"),
                 *common, *sft]) == 0  # fmt: skip
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    assert (tmp_path / "sft" / "model" / "processor_config.json").is_file()
    # run again: resumes from the last checkpoint (no step left) and keeps the trained weights
    from safetensors.torch import load_file

    trained = load_file(tmp_path / "sft" / "model" / "model.safetensors")
    assert main(["vlm", "sft", "--data", str(data), "--run-dir", str(tmp_path / "sft"),
                 *common, *sft]) == 0  # fmt: skip
    resumed = load_file(tmp_path / "sft" / "model" / "model.safetensors")
    assert trained.keys() == resumed.keys()
    assert all(bool((trained[k] == resumed[k]).all()) for k in trained)
    grpo = [
        "--set", "grpo.max_steps=2", "--set", "grpo.prompts_per_step=1",
        "--set", "grpo.num_generations=2", "--set", "grpo.max_completion_length=8",
    ]  # fmt: skip
    assert main(["vlm", "grpo", "--data", str(data), "--model", str(tmp_path / "sft" / "model"),
                 "--run-dir", str(tmp_path / "grpo"), *common, *grpo]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "grpo" / "grpo_summary.json").read_text())
    assert summary["steps"] == 2 and summary["steps_per_second"] > 0
    logged = summary["log_history"][0]
    for name in ("format_reward", "choice_accuracy_reward", "iou_reward", "semantic_reward"):
        assert f"rewards/{name}/mean" in logged
    assert list((tmp_path / "grpo" / "logs").rglob("events.out.tfevents*"))
    samples = list((tmp_path / "grpo" / "logs" / "samples").rglob("events.out.tfevents*"))
    assert samples and samples[0].stat().st_size > 100  # completions as TensorBoard text
    capsys.readouterr()
    assert main(["vlm", "evaluate", "--data", str(data), "--model",
                 str(tmp_path / "grpo" / "model"), "--out", str(tmp_path / "eval"),
                 "--set", "evaluate.max_new_tokens=8", "--quiet", *common]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 4 and 0 <= metrics["parse_failure_rate"] <= 1
    assert (tmp_path / "eval" / "predictions.csv").read_text().count("\n") >= 5
    assert "grounding" in json.loads(capsys.readouterr().out)
    # a missing model folder is a clear error, not a traceback
    assert main(["vlm", "evaluate", "--data", str(data), "--model", str(tmp_path / "none"),
                 "--out", str(tmp_path / "e2"), *common]) == 2  # fmt: skip
