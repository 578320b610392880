"""GRPO grounding diagnostics: the per-step statistics and the weight-0 reward that logs them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medrl.errors import InputError
from medrl.vlm.diagnostics import grounding_statistics, make_grounding_diagnostics
from medrl.vlm.rewards import format_reward, iou_reward

TRUE = [10.0, 10.0, 30.0, 30.0]


def _answer(box: list[float]) -> str:
    return "<think>x</think><answer>[{}, {}, {}, {}]</answer>".format(*(int(v) for v in box))


def test_statistics_by_hand() -> None:
    preds = [np.array(TRUE), np.array([10.0, 10.0, 20.0, 20.0]), None, np.array(TRUE)]
    stats = grounding_statistics(preds, [TRUE] * 4, [1.0, 0.25, 0.0, 1.0], ["a", "a", "b", "b"])
    assert stats["parse_rate"] == 0.75
    assert stats["mean_iou"] == pytest.approx((1 + 0.25 + 0 + 1) / 4)
    assert stats["hit_share"] == 0.5 and stats["iou_zero_share"] == 0.25
    assert stats["median_log_area_ratio"] == pytest.approx(0.0)  # ratios 1, 0.25, 1
    assert stats["tiny_box_share"] == 0.0  # 0.25 is not below a quarter
    assert stats["centre_error_px"] == pytest.approx(0.0)
    assert stats["group_reward_std"] == pytest.approx((0.375 + 0.5) / 2)
    assert stats["zero_variance_groups"] == 0.0
    assert stats["distinct_boxes"] == pytest.approx(1.5)  # group a: 2 boxes, b: 1
    assert stats["groups_with_hit"] == 1.0
    same = grounding_statistics([None, None], [TRUE, TRUE], [0.0, 0.0], ["c", "c"])
    assert same["zero_variance_groups"] == 1.0 and same["parse_rate"] == 0.0
    assert "centre_error_px" not in same


def test_the_reward_logs_per_step_and_never_rewards() -> None:
    funcs = {"format_reward": format_reward, "iou_reward": iou_reward}
    diagnose = make_grounding_diagnostics(funcs, {"format_reward": 0.1, "iou_reward": 1.0}, 2)
    assert diagnose.__name__ == "grounding_diagnostics"
    logged: dict[str, float] = {}
    completions = [_answer(TRUE), "no box", _answer([0, 0, 5, 5]), _answer([0, 0, 5, 5]), "A"]
    columns = {
        "box_px": [TRUE, TRUE, TRUE, TRUE, []],
        "box_format": ["pixel"] * 5,
        "image_size": [[64, 64]] * 5,
        "model_size": [[64, 64]] * 5,
        "item_id": ["a", "a", "b", "b", "v"],
    }
    values = diagnose([None] * 5, completions, log_metric=logged.__setitem__, **columns)
    assert values == [0.0] * 5
    assert logged["diag/parse_rate"] == pytest.approx(0.75)  # 3 of the 4 grounding rows
    assert logged["diag/groups_with_hit"] == pytest.approx(0.5)
    # group b: two identical boxes, one reward: no signal
    assert logged["diag/zero_variance_groups"] == pytest.approx(0.5)
    assert logged["diag/distinct_boxes"] == pytest.approx(1.0)
    assert all(math.isfinite(v) for v in logged.values())
    # VQA-only batches log nothing
    logged.clear()
    diagnose([None], ["A"], log_metric=logged.__setitem__, box_px=[[]])
    assert logged == {}


def test_curriculum_stages() -> None:
    from medrl.vlm.sft import curriculum_stages

    assert curriculum_stages({"epochs": 6}) == [(0.0, 6.0)]
    stages = curriculum_stages({"epochs": 6, "curriculum": [400, 150], "curriculum_epochs": 2})
    assert stages == [(400.0, 2.0), (150.0, 2.0), (0.0, 6.0)]
    with pytest.raises(InputError, match="large targets first"):
        curriculum_stages({"epochs": 6, "curriculum": [150, 400]})


def test_validation_curve_does_not_repeat_after_a_resume_or_restart(tmp_path) -> None:
    import json

    from medrl.vlm.validation import ValidationCallback, read_curve

    path = tmp_path / "validation.jsonl"
    lines = [
        {"phase": "sft", "step": 0}, {"phase": "sft", "step": 10},
        {"phase": "grpo", "step": 0}, {"phase": "grpo", "step": 10}, {"phase": "grpo", "step": 20},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    callback = ValidationCallback([], None, tmp_path, 10, 8, 1, "grpo")
    callback.forget_after(10)  # resumed at step 10: step 20 will be evaluated again
    assert [r["step"] for r in read_curve(tmp_path, "grpo")] == [0, 10]
    assert [r["step"] for r in read_curve(tmp_path, "sft")] == [0, 10]  # other phase kept
    callback.forget_after(0)  # started over
    assert read_curve(tmp_path, "grpo") == [] and len(read_curve(tmp_path)) == 2


def test_sft_options_can_be_set_on_any_preset() -> None:
    from medrl.vlm.config import load_vlm_config

    config = load_vlm_config(
        "tiny-cpu",
        ["sft.max_steps=5", "grpo.train_items=16", "evaluate.val_every_steps=2",
         "data.num_val=8", "data.marked_line_px=2"],
    )  # fmt: skip
    assert config["sft"]["max_steps"] == 5 and config["data"]["num_val"] == 8
    with pytest.raises(InputError, match=r"unknown config key 'sft\.max_stepz'"):
        load_vlm_config("tiny-cpu", ["sft.max_stepz=5"])
