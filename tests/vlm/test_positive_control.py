"""The GRPO positive control: the IoU reward must move a miscalibrated policy towards the truth.

The shipped model finds the red box of ``marked-cpu`` items but answers boxes of 0.7 times the
side (it was taught by a tight annotator). A few GRPO steps with the IoU reward, which scores
the drawn box, must make its greedy boxes larger and its IoU higher on validation items it
never trained on. If this fails, the reward, its alignment with the completions, or the
GRPO settings are broken, whatever the anatomy does.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

pytest.importorskip("trl")
pytest.importorskip("SimpleITK")


pytestmark = pytest.mark.usefixtures("offline")


def test_grpo_undoes_what_a_tight_teacher_taught(tmp_path, builtin_data) -> None:
    from medrl.vlm.config import load_vlm_config, task_config
    from medrl.vlm.dataset import write_dataset
    from medrl.vlm.train import run_grpo
    from medrl.vlm.validation import read_curve

    model = resources.files("medrl") / "models" / "vlm-marked-tight"
    config = load_vlm_config(
        "marked-cpu",
        [
            "data.marked_answer_scale=0.7",
            "grpo.max_steps=12",
            "grpo.prompts_per_step=8",
            "grpo.learning_rate=1e-4",
            "grpo.save_steps=100",
            "evaluate.val_every_steps=12",
            "evaluate.val_items=32",
            "threads=2",
        ],
    )
    data = write_dataset(
        tmp_path / "data", 96, 4, seed=11, config=task_config(config), progress=False, num_val=32
    )
    run_grpo(config, data, str(model), tmp_path / "grpo", seed=0)
    before, after = read_curve(tmp_path / "grpo", "grpo")
    assert (before["step"], after["step"]) == (0, 12)
    assert before["median_area_ratio"] < 0.7  # the tight teacher's boxes
    assert after["median_area_ratio"] > before["median_area_ratio"] + 0.15
    assert after["mean_iou"] > before["mean_iou"] + 0.05
    assert after["grounding_parse_rate"] >= 0.95
    # the per-step diagnostics were logged: the training boxes grew too
    history = json.loads((tmp_path / "grpo" / "grpo_summary.json").read_text())["log_history"]
    ratios = [e["diag/median_log_area_ratio"] for e in history if "diag/median_log_area_ratio" in e]
    assert len(ratios) == 12 and ratios[-1] > ratios[0]
    assert all(0 <= e["diag/zero_variance_groups"] <= 1 for e in history if "diag/parse_rate" in e)
