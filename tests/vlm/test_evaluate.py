"""Evaluation diagnostics and the paired bootstrap against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from medrl.errors import InputError
from medrl.vlm.evaluate import (
    IOU_BIN_EDGES,
    score_row,
    size_bin,
    summarise,
    write_results,
)
from medrl.vlm.stats import paired_bootstrap

PIXEL_TO_RAS = [2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 10.0]  # 2 mm pixels, slice at z = 10


def _wrap(answer: str) -> str:
    return f"<think>look</think><answer>{answer}</answer>"


def _grounding_row(item_id: str, box_px: list[float], box_format: str = "pixel") -> dict[str, Any]:
    model_size = [140, 112] if box_format == "qwen2.5-vl" else [128, 112]
    return {
        "item_id": item_id,
        "question_type": "ground_structure",
        "task": "grounding",
        "box_format": box_format,
        "image_size": [128, 112],
        "model_size": model_size,
        "box_px": box_px,
        "pixel_to_ras": PIXEL_TO_RAS,
    }


# (row, completion, IoU, area ratio, size bin): true boxes of side 30 (large), 10 (small),
# 15 and sqrt(16 * 12) = 13.9 px (medium)
CASES = [
    (_grounding_row("g1", [10, 10, 40, 40]), _wrap("[10, 10, 40, 40]"), 1.0, 1.0, "large"),
    (_grounding_row("g2", [10, 10, 40, 40]), _wrap("[10, 10, 25, 40]"), 0.5, 0.5, "large"),
    (_grounding_row("g3", [10, 10, 40, 40]), _wrap("[10, 10, 40, 13]"), 0.1, 0.1, "large"),
    (_grounding_row("g4", [50, 50, 60, 60]), _wrap("[52, 50, 62, 60]"), 2 / 3, 1.0, "small"),
    (_grounding_row("g5", [50, 50, 60, 60]), _wrap("[70, 70, 72, 72]"), 0.0, 0.04, "small"),
    (_grounding_row("g6", [20, 20, 35, 35]), _wrap("no box"), 0.0, math.nan, "medium"),
    # Qwen2.5-VL units on the 140 x 112 resized image: x 35 -> 32 px, x 56 -> 51.2 px
    (
        _grounding_row("g7", [32, 20, 48, 32], "qwen2.5-vl"),
        _wrap("[35, 20, 56, 32]"),
        192 / 230.4,
        230.4 / 192,
        "medium",
    ),
]


def _results() -> list[dict[str, Any]]:
    results = [score_row(row, text) for row, text, *_ in CASES]
    vqa = {
        "item_id": "v1",
        "question_type": "plane",
        "task": "vqa",
        "options": ["axial", "coronal", "sagittal"],
        "answer": "A",
    }
    return [*results, score_row(vqa, _wrap("A"))]


def test_score_row_records_iou_and_area_ratio_in_original_pixels() -> None:
    results = _results()
    for result, (row, _text, iou, ratio, _bin) in zip(results, CASES, strict=False):
        assert result["iou"] == pytest.approx(iou)
        assert result["hit"] == (iou > 0.5)
        x1, y1, x2, y2 = row["box_px"]
        assert result["true_area_px"] == pytest.approx((x2 - x1) * (y2 - y1))
        if math.isnan(ratio):
            assert not result["parsed"] and math.isnan(result["area_ratio"])
            assert math.isnan(result["centre_mm"])
        else:
            assert result["parsed"] and result["area_ratio"] == pytest.approx(ratio)
    assert results[0]["centre_mm"] == 0.0
    # g4: centres (57, 55) and (55, 55) px, 2 mm per pixel
    assert results[3]["centre_mm"] == pytest.approx(4.0)
    assert "area_ratio" not in results[-1]  # VQA rows have no box


def test_size_bins_by_the_true_box_side() -> None:
    assert size_bin(143.9) == "small"  # side just below 12 px
    assert size_bin(144.0) == "medium"  # 12 px
    assert size_bin(399.0) == "medium"
    assert size_bin(400.0) == "large"  # 20 px
    assert size_bin(0.0) == "small"
    assert [size_bin(r["true_area_px"]) for r in _results()[:7]] == [c[4] for c in CASES]


def test_summarise_grounding_diagnostics() -> None:
    grounding = summarise(_results())["grounding"]
    # existing keys are unchanged
    assert grounding["n"] == 7
    assert grounding["acc_at_0.5"] == pytest.approx(3 / 7)
    assert grounding["mean_iou"] == pytest.approx((1 + 0.5 + 0.1 + 2 / 3 + 0 + 0 + 0.8333333) / 7)
    assert grounding["parse_failure_rate"] == pytest.approx(1 / 7)
    assert grounding["median_centre_mm"] is not None
    # bins [0, 1e-9], (1e-9, 0.1], (0.1, 0.3], (0.3, 0.5], (0.5, 0.7], (0.7, 1]:
    # g5 and the unparsed g6 | g3 (IoU exactly 0.1) | - | g2 (exactly 0.5) | g4 | g1, g7
    histogram = grounding["iou_histogram"]
    assert [(b["lo"], b["hi"]) for b in histogram] == list(pairwise(IOU_BIN_EDGES))
    assert [b["count"] for b in histogram] == [2, 1, 0, 1, 1, 2]
    # the bins above 0.5 hold exactly the hits of Acc@0.5
    assert sum(b["count"] for b in histogram if b["lo"] >= 0.5) == 3
    assert grounding["iou_zero_share"] == pytest.approx(2 / 7)
    # parsed ratios sorted: 0.04, 0.1, 0.5, 1, 1, 1.2 -> median 0.75, quartiles 0.2 and 1.0
    assert grounding["median_area_ratio"] == pytest.approx(0.75)
    assert grounding["area_ratio_iqr"] == pytest.approx(0.8)
    assert grounding["tiny_box_share"] == pytest.approx(2 / 6)
    by_size = grounding["by_size"]
    assert list(by_size) == ["small", "medium", "large"]
    assert by_size["small"] == {"n": 2, "acc_at_0.5": 0.5, "mean_iou": pytest.approx(1 / 3)}
    assert by_size["medium"] == {"n": 2, "acc_at_0.5": 0.5, "mean_iou": pytest.approx(5 / 12)}
    assert by_size["large"] == {
        "n": 3,
        "acc_at_0.5": pytest.approx(1 / 3),
        "mean_iou": pytest.approx(1.6 / 3),
    }
    # VQA is untouched
    summary = summarise(_results())
    assert summary["vqa"] == {"n": 1, "accuracy": 1.0, "parse_failure_rate": 0.0}


def test_summarise_without_grounding_rows_or_parsed_boxes() -> None:
    for results in ([], _results()[7:]):
        grounding = summarise(results)["grounding"]
        assert grounding["n"] == 0
        for key in ("acc_at_0.5", "mean_iou", "iou_zero_share", "median_area_ratio"):
            assert grounding[key] is None
        assert grounding["area_ratio_iqr"] is None and grounding["tiny_box_share"] is None
        assert [b["count"] for b in grounding["iou_histogram"]] == [0] * 6
        assert all(v == {"n": 0, "acc_at_0.5": None, "mean_iou": None}
                   for v in grounding["by_size"].values())  # fmt: skip
    # only unparsable answers: IoU 0 bin, area statistics None
    unparsed = [score_row(_grounding_row("u", [10, 10, 40, 40]), "garbage")]
    grounding = summarise(unparsed)["grounding"]
    assert grounding["iou_zero_share"] == 1.0 and grounding["median_area_ratio"] is None
    assert grounding["by_size"]["large"] == {"n": 1, "acc_at_0.5": 0.0, "mean_iou": 0.0}


def test_write_results_adds_the_area_ratio_column(tmp_path) -> None:
    results = _results()
    metrics = summarise(results)
    json.dumps(metrics, allow_nan=False)  # no NaN in the JSON
    write_results(tmp_path, results, metrics)
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["item_id", "question_type", "task", "format_ok", "parsed",
                             "correct", "iou", "hit", "centre_mm", "area_ratio",
                             "completion"]  # fmt: skip
    assert float(rows[1]["area_ratio"]) == pytest.approx(0.5)
    assert rows[5]["area_ratio"] == "nan" and rows[7]["area_ratio"] == ""
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert loaded["grounding"]["iou_histogram"][0]["count"] == 2


def test_paired_bootstrap_constant_shift_and_noise() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 200)
    shifted = paired_bootstrap(a, a + 0.05)
    assert shifted["mean_diff"] == pytest.approx(0.05)
    assert shifted["ci_low"] == pytest.approx(0.05) and shifted["ci_high"] == pytest.approx(0.05)
    noisy = paired_bootstrap(a, a + rng.normal(0.02, 0.01, 200))
    assert 0 < noisy["ci_low"] < noisy["mean_diff"] < noisy["ci_high"]
    assert (noisy["n_items"], noisy["n_clusters"]) == (200, 200)
    for seed in range(5):
        b = a + np.random.default_rng(100 + seed).normal(0, 0.1, 200)
        result = paired_bootstrap(a, b, seed=seed)
        half_width = (result["ci_high"] - result["ci_low"]) / 2
        # about 1.96 standard errors of 0.1 / sqrt(200) = 0.0071
        assert result["ci_low"] < 0 < result["ci_high"]
        assert half_width == pytest.approx(1.96 * 0.1 / math.sqrt(200), rel=0.2)
    # the same seed gives the same interval
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)


def test_paired_bootstrap_resamples_clusters() -> None:
    rng = np.random.default_rng(2)
    n = 150
    a, b = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    ids = np.array([f"item{i}" for i in range(n)])
    once = paired_bootstrap(a, b, clusters=ids)
    # every item evaluated under three seeds with the same scores: still n independent items
    tripled = paired_bootstrap(np.tile(a, 3), np.tile(b, 3), clusters=np.tile(ids, 3))
    naive = paired_bootstrap(np.tile(a, 3), np.tile(b, 3))

    def width(result: dict[str, Any]) -> float:
        return result["ci_high"] - result["ci_low"]

    assert (tripled["n_items"], tripled["n_clusters"]) == (3 * n, n)
    assert tripled["mean_diff"] == pytest.approx(once["mean_diff"])
    assert width(tripled) == pytest.approx(width(once), rel=0.1)
    # ignoring the clusters would claim sqrt(3) more precision than there is
    assert width(naive) == pytest.approx(width(once) / math.sqrt(3), rel=0.15)
    # clusters of unequal size: the replicate is the mean over the drawn items
    uneven = paired_bootstrap([0, 0, 0], [1, 1, 4], clusters=[7, 7, 9], n_boot=500)
    assert uneven["mean_diff"] == 2.0 and uneven["n_clusters"] == 2
    assert uneven["ci_low"] == pytest.approx(1.0) and uneven["ci_high"] == pytest.approx(4.0)


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="differ in length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(InputError, match="clusters"):
        paired_bootstrap([1.0, 2.0], [1.0, 2.0], clusters=[0])
    with pytest.raises(InputError, match="empty"):
        paired_bootstrap([], [])
    with pytest.raises(InputError, match="non-finite"):
        paired_bootstrap([1.0, math.nan], [1.0, 2.0])


def test_mean_box_prior_is_the_blind_baseline() -> None:
    from medrl.vlm.prior import MeanBoxPrior, prior_scores

    def row(item: str, name: str, plane: str, box: list[float]) -> dict:
        return {"item_id": item, "structure": name, "plane": plane, "box_px": box}

    train = [
        row("t1", "left Insular Cortex", "axial", [10, 10, 20, 20]),
        row("t2", "left Insular Cortex", "axial", [12, 12, 22, 22]),
        row("t3", "left Insular Cortex", "coronal", [50, 50, 60, 60]),
        {"item_id": "q", "structure": "", "plane": "axial", "box_px": []},  # VQA: ignored
    ]
    prior = MeanBoxPrior(train)
    assert list(prior.box("left Insular Cortex", "axial")) == [11, 11, 21, 21]
    assert list(prior.box("left Insular Cortex", "sagittal")) == pytest.approx(
        [(10 + 12 + 50) / 3, (10 + 12 + 50) / 3, (20 + 22 + 60) / 3, (20 + 22 + 60) / 3]
    )
    test = [
        row("a", "left Insular Cortex", "axial", [11, 11, 21, 21]),  # exactly the prior
        row("b", "left Insular Cortex", "coronal", [0, 0, 5, 5]),  # far from it
    ]
    scores = prior_scores(train, test)
    assert scores["n"] == 2 and scores["items"] == {"a": 1.0, "b": 0.0}
    assert scores["mean_iou"] == 0.5 and scores["acc_at_0.5"] == 0.5
    with pytest.raises(ValueError, match="no grounding rows"):
        MeanBoxPrior([])
