"""Tests for medrl.metrics.boxes: hand-computed IoUs and distances, tables and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medrl.errors import InputError
from medrl.metrics.boxes import (
    BOX_SUMMARY_KEYS,
    OVERALL_BOX_KEYS,
    box_evaluation_tables,
    box_raw_rows,
    format_table,
    summarize_boxes,
    write_box_tables,
)

NAMES = ("L Putamen", "R Putamen")
TRUE = np.array([[-24.0, 0.0, 0.0, 2.0, 2.0, 2.0], [24.0, 0.0, 0.0, 2.0, 4.0, 2.0]])


def _shift(boxes: np.ndarray, r_mm: float) -> np.ndarray:
    moved = boxes.copy()
    moved[:, 0] += r_mm
    return moved


@pytest.fixture
def tables():
    truth = {"a": (NAMES, TRUE), "b": (NAMES, TRUE + np.array([0, 5.0, 0, 0, 0, 0]))}
    results = {
        "perfect": {case: (names, boxes.copy()) for case, (names, boxes) in truth.items()},
        # 1 mm along R on 2 mm wide boxes: IoU (1 * h * d) / (2 * 2 h d - h d) = 1/3; the two
        # R walls move by 1 mm, the other four stay: wall error 2/6 mm.
        "shifted": {
            # reversed order and an extra structure: matched by name, extras ignored
            "a": (("extra", *NAMES[::-1]), np.vstack([TRUE[:1], _shift(TRUE, 1.0)[::-1]])),
            "b": (NAMES, _shift(truth["b"][1], 1.0)),
        },
    }
    return results, truth


def test_raw_rows_hand_computed(tables) -> None:
    results, truth = tables
    rows = box_raw_rows(results, truth)
    assert len(rows) == 2 * 2 * 2
    assert [(r["method"], r["case"], r["structure"]) for r in rows[:2]] == [
        ("perfect", "a", "L Putamen"),
        ("perfect", "a", "R Putamen"),
    ]
    perfect = [r for r in rows if r["method"] == "perfect"]
    assert all(r["iou"] == 1.0 and r["centre_mm"] == 0.0 and r["wall_mm"] == 0.0 for r in perfect)
    shifted = [r for r in rows if r["method"] == "shifted"]
    np.testing.assert_allclose([r["iou"] for r in shifted], 1 / 3)
    np.testing.assert_allclose([r["centre_mm"] for r in shifted], 1.0)
    np.testing.assert_allclose([r["wall_mm"] for r in shifted], 2 / 6)


def test_tables(tables, tmp_path: Path) -> None:
    results, truth = tables
    per_structure, overall, raw = box_evaluation_tables(results, truth)
    assert [(r["method"], r["structure"]) for r in per_structure] == [
        ("perfect", "L Putamen"),
        ("perfect", "R Putamen"),
        ("shifted", "L Putamen"),
        ("shifted", "R Putamen"),
    ]
    assert list(per_structure[0]) == ["method", "structure", *BOX_SUMMARY_KEYS]
    assert list(overall[0]) == ["method", *OVERALL_BOX_KEYS]
    row = per_structure[2]
    assert row["n"] == 2 and isinstance(row["n"], int)
    assert row["iou_mean"] == pytest.approx(1 / 3) and row["share_iou_over_0_5"] == 0.0
    assert row["centre_mm_median"] == pytest.approx(1.0)
    assert overall[0]["iou_min"] == 1.0 and overall[0]["share_iou_over_0_5"] == 1.0
    assert overall[1]["n"] == 4 and overall[1]["iou_sd"] == pytest.approx(0.0, abs=1e-12)
    assert overall[1]["wall_mm_mean"] == pytest.approx(1 / 3)
    assert len(raw) == 8

    paths = write_box_tables(tmp_path, per_structure, overall, raw)
    assert sorted(p.name for p in paths) == sorted(
        f"boxes_{stem}.{ext}"
        for stem in ("per_structure", "overall", "raw")
        for ext in ("csv", "json")
    )
    assert json.loads((tmp_path / "boxes_overall.json").read_text())[1]["method"] == "shifted"
    text = format_table(overall, ["method", "iou_mean", "centre_mm_mean", "n"])
    assert "shifted" in text and "0.33" in text and "1.00" in text


def test_summary_statistics() -> None:
    summary = summarize_boxes([0.2, 0.6, 1.0], [3.0, 1.0, 0.0], [1.0, 1.0, 4.0])
    assert summary["iou_mean"] == pytest.approx(0.6)
    assert summary["iou_median"] == pytest.approx(0.6)
    assert summary["iou_sd"] == pytest.approx(0.4)
    assert summary["share_iou_over_0_5"] == pytest.approx(2 / 3)
    assert summary["centre_mm_median"] == 1.0 and summary["wall_mm_mean"] == 2.0
    assert summarize_boxes([0.5], [1.0], [1.0])["share_iou_over_0_5"] == 0.0  # strictly above
    with pytest.raises(ValueError, match="empty"):
        summarize_boxes([], [], [])
    with pytest.raises(ValueError, match="NaN"):
        summarize_boxes([np.nan], [0.0], [0.0])


def test_errors(tables) -> None:
    results, truth = tables
    lacking = {"m": {"a": (NAMES[:1], TRUE[:1]), "b": truth["b"]}}
    with pytest.raises(InputError, match=r"method 'm', case 'a': no box for 1 .*R Putamen"):
        box_evaluation_tables(lacking, truth)
    with pytest.raises(InputError, match="no boxes for case"):
        box_evaluation_tables({"m": {"a": truth["a"]}}, truth)
    with pytest.raises(InputError, match="without ground truth: c"):
        box_evaluation_tables({"m": {**results["perfect"], "c": truth["a"]}}, truth)
    with pytest.raises(InputError, match="2 structure names for 1 boxes"):
        box_evaluation_tables({"m": {"a": (NAMES, TRUE[:1]), "b": truth["b"]}}, truth)
    with pytest.raises(InputError, match="duplicate structure name"):
        box_evaluation_tables({"m": {"a": truth["a"]}}, {"a": (("x", "x"), TRUE)})
    with pytest.raises(InputError, match="no methods"):
        box_evaluation_tables({}, truth)
