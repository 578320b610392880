"""Tests for medrl.metrics.localization: errors, summaries and evaluation tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medrl.errors import InputError
from medrl.io.landmarks import Landmarks
from medrl.metrics.localization import (
    SUMMARY_KEYS,
    evaluation_tables,
    format_table,
    landmark_errors_mm,
    raw_error_rows,
    summarize_errors,
    write_table,
    write_tables,
)

TRUTH = Landmarks(
    names=("AC", "PC", "ICS"),
    points_ras=np.array([[0.0, 2.0, -4.0], [0.0, -24.0, -2.0], [0.0, -10.0, 15.0]]),
    descriptions=("anterior commissure", "posterior commissure", "infracollicular sulcus"),
)


def shifted(landmarks: Landmarks, offsets_ras: dict[str, list[float]]) -> Landmarks:
    """Copy of ``landmarks`` with some points moved by the given RAS offsets."""
    points_ras = np.array(landmarks.points_ras, dtype=np.float64)
    for name, offset in offsets_ras.items():
        points_ras[landmarks.names.index(name)] += offset
    return Landmarks(names=landmarks.names, points_ras=points_ras)


def test_errors_match_by_name_in_truth_order() -> None:
    # Prediction lists the landmarks in another order, with one extra landmark.
    pred = Landmarks(
        names=("ICS", "extra", "AC", "PC"),
        points_ras=np.array(
            [
                [0.0, -10.0, 15.0 + 5.0],  # ICS off by 5 mm in S
                [99.0, 99.0, 99.0],
                [3.0, 2.0 + 4.0, -4.0],  # AC off by (3, 4, 0) -> 5 mm
                [1.0, -24.0 - 2.0, -2.0 + 2.0],  # PC off by (1, -2, 2) -> 3 mm
            ]
        ),
    )
    errors_mm = landmark_errors_mm(pred, TRUTH)
    np.testing.assert_allclose(errors_mm, [5.0, 3.0, 5.0])


def test_errors_zero_for_identical_landmarks() -> None:
    np.testing.assert_array_equal(landmark_errors_mm(TRUTH, TRUTH), np.zeros(3))


def test_missing_names_are_listed() -> None:
    pred = Landmarks(names=("PC",), points_ras=np.zeros((1, 3)))
    with pytest.raises(InputError, match="AC, ICS"):
        landmark_errors_mm(pred, TRUTH)


def test_summary_hand_computed() -> None:
    summary = summarize_errors([1.0, 2.0, 3.0, 12.0])
    assert list(summary) == list(SUMMARY_KEYS)
    assert summary["n"] == 4
    assert summary["mean_mm"] == pytest.approx(4.5)
    assert summary["median_mm"] == pytest.approx(2.5)
    # Sample SD: deviations -3.5, -2.5, -1.5, 7.5 -> squares sum 77 -> sqrt(77 / 3).
    assert summary["sd_mm"] == pytest.approx(math.sqrt(77.0 / 3.0))
    assert summary["max_mm"] == pytest.approx(12.0)
    assert summary["failure_rate_10mm"] == pytest.approx(0.25)
    assert summary["detection_rate_2mm"] == pytest.approx(0.5)  # 2.0 counts (<=)
    assert summary["detection_rate_2_5mm"] == pytest.approx(0.5)
    assert summary["detection_rate_3mm"] == pytest.approx(0.75)
    assert summary["detection_rate_4mm"] == pytest.approx(0.75)


def test_summary_thresholds_are_inclusive_and_failure_strict() -> None:
    summary = summarize_errors(np.array([2.5, 4.0, 10.0]))
    assert summary["detection_rate_2mm"] == 0.0
    assert summary["detection_rate_2_5mm"] == pytest.approx(1 / 3)
    assert summary["detection_rate_4mm"] == pytest.approx(2 / 3)
    assert summary["failure_rate_10mm"] == 0.0  # exactly 10 mm is not a failure


def test_summary_single_error_has_zero_sd() -> None:
    summary = summarize_errors([7.0])
    assert summary["sd_mm"] == 0.0
    assert summary["n"] == 1
    assert summary["mean_mm"] == summary["median_mm"] == summary["max_mm"] == 7.0


@pytest.mark.parametrize("bad", [[1.0, float("nan")], [float("inf")], [], [-1.0]])
def test_summary_rejects_bad_input(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize_errors(bad)


def make_results() -> tuple[dict[str, dict[str, Landmarks]], dict[str, Landmarks]]:
    truth = {"case-a": TRUTH, "case-b": shifted(TRUTH, {"AC": [0.0, 0.0, 1.0]})}
    results = {
        "agent": {
            "case-a": shifted(TRUTH, {"AC": [1.0, 0.0, 0.0]}),  # AC 1 mm
            "case-b": shifted(truth["case-b"], {"PC": [0.0, 3.0, 4.0]}),  # PC 5 mm
        },
        "affine-baseline": {
            "case-a": shifted(TRUTH, {"AC": [0.0, 12.0, 0.0], "ICS": [2.0, 0.0, 0.0]}),
            "case-b": truth["case-b"],
        },
    }
    return results, truth


def test_raw_error_rows() -> None:
    results, truth = make_results()
    rows = raw_error_rows(results, truth)
    assert len(rows) == 2 * 2 * 3
    first = rows[0]
    assert (first["method"], first["case"], first["landmark"]) == ("agent", "case-a", "AC")
    assert first["description"] == "anterior commissure"
    assert first["error_mm"] == pytest.approx(1.0)
    assert first["pred_x_ras"] == pytest.approx(1.0)
    assert first["true_x_ras"] == pytest.approx(0.0)
    errors = {(r["method"], r["case"], r["landmark"]): r["error_mm"] for r in rows}
    assert errors[("agent", "case-b", "PC")] == pytest.approx(5.0)
    assert errors[("affine-baseline", "case-a", "AC")] == pytest.approx(12.0)
    assert errors[("affine-baseline", "case-b", "ICS")] == 0.0


def test_evaluation_tables() -> None:
    results, truth = make_results()
    per_landmark, overall = evaluation_tables(results, truth)
    assert [(r["method"], r["landmark"]) for r in per_landmark] == [
        ("agent", "AC"),
        ("agent", "PC"),
        ("agent", "ICS"),
        ("affine-baseline", "AC"),
        ("affine-baseline", "PC"),
        ("affine-baseline", "ICS"),
    ]
    agent_pc = per_landmark[1]
    assert agent_pc["description"] == "posterior commissure"
    assert agent_pc["n"] == 2
    assert agent_pc["mean_mm"] == pytest.approx(2.5)  # errors 0 and 5
    assert agent_pc["detection_rate_2mm"] == pytest.approx(0.5)
    baseline_ac = per_landmark[3]
    assert baseline_ac["failure_rate_10mm"] == pytest.approx(0.5)
    assert baseline_ac["max_mm"] == pytest.approx(12.0)

    assert [r["method"] for r in overall] == ["agent", "affine-baseline"]
    assert overall[0]["n"] == 6
    assert overall[0]["mean_mm"] == pytest.approx(6.0 / 6)  # 1 + 5 over 6 errors
    assert overall[1]["mean_mm"] == pytest.approx(14.0 / 6)
    assert overall[1]["failure_rate_10mm"] == pytest.approx(1 / 6)


def test_evaluation_tables_missing_case_or_landmark() -> None:
    results, truth = make_results()
    del results["agent"]["case-b"]
    with pytest.raises(InputError, match=r"agent.*case-b"):
        evaluation_tables(results, truth)

    results, truth = make_results()
    results["agent"]["case-a"] = TRUTH.subset(["AC", "PC"])
    with pytest.raises(InputError, match=r"case-a.*ICS"):
        evaluation_tables(results, truth)

    results, truth = make_results()
    results["agent"]["case-z"] = TRUTH
    with pytest.raises(InputError, match="case-z"):
        evaluation_tables(results, truth)


def test_write_csv_and_json_round_trip(tmp_path: Path) -> None:
    results, truth = make_results()
    per_landmark, _ = evaluation_tables(results, truth)

    csv_path = write_table(per_landmark, tmp_path / "sub" / "per_landmark.csv")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        read_back = list(csv.DictReader(handle))
    assert len(read_back) == len(per_landmark)
    assert list(read_back[0]) == list(per_landmark[0])
    for original, row in zip(per_landmark, read_back, strict=True):
        assert row["landmark"] == original["landmark"]
        assert float(row["mean_mm"]) == pytest.approx(original["mean_mm"])
        assert int(row["n"]) == original["n"]

    json_path = write_table(per_landmark, tmp_path / "per_landmark.json")
    assert json.loads(json_path.read_text(encoding="utf-8")) == per_landmark

    csv_out, json_out = write_tables(per_landmark, tmp_path / "tables", "summary")
    assert csv_out == tmp_path / "tables" / "summary.csv" and csv_out.is_file()
    assert json.loads(json_out.read_text(encoding="utf-8")) == per_landmark
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "summary.csv",
        "summary.json",
    ]


def test_write_table_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="xlsx"):
        write_table([{"a": 1}], tmp_path / "table.xlsx")
    assert not list(tmp_path.iterdir())


def test_format_table() -> None:
    rows = [
        {"method": "agent", "n": 12, "mean_mm": 1.23456},
        {"method": "affine-baseline", "n": 3, "mean_mm": 10.0},
    ]
    text = format_table(rows, ["method", "mean_mm", "n"])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["method", "mean_mm", "n"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["agent", "1.23", "12"]
    assert lines[3].split() == ["affine-baseline", "10.00", "3"]
    # Fixed width: numbers right-aligned, so columns end at the same position.
    assert lines[2].index("1.23") + 4 == lines[3].index("10.00") + 5
    assert lines[2].endswith("12") and lines[3].endswith(" 3")
