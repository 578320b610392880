"""The slice agent end to end through the ``medrl`` command, on a phantom of blobs named like
AFIDs (1 = AC, 2 = PC) in an oblique grid: train, predict (one JSON per scan, another slice axis
on request), evaluate against the affine baseline, report; and the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medrl
from _synthetic import CENTRE_RAS, blob_volume
from medrl.cli import main
from medrl.io.images import Volume, read_image, write_image
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.predict_slices import read_slices
from medrl.tasks.slice import slice_index

torch.set_num_threads(1)
SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"
SLICE_SETTINGS = [
    "task.kind=slice",
    "train.total_steps=30",
    "train.num_envs=4",
    "agent.learning_starts=16",
    "agent.batch_size=4",
    "agent.channels=[4]",
    "env.levels=[{spacing_mm: 3.0, step_mm: 3.0, start_radius_mm: 9.0, start_angle_deg: 10.0, "
    "max_steps: 6}, {spacing_mm: 1.5, step_mm: 1.0, start_radius_mm: 2.0, "
    "start_angle_deg: 10.0, max_steps: 5}]",
]
OFFSETS = np.array(
    [[0, 8, 0], [0, -8, 2], [1, -14, -6], [0, -8, -14], [-1, -4, -8], [0, -18, 6],
     [0, 2, -10], [1, -12, 8], [-1, 16, 10], [0, -16, 12]], dtype=np.float64,
)  # fmt: skip
NAMES = tuple(str(n) for n in range(1, 11))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slice_data")
    cases = []
    for split, shift, seed in (("train", 0.0, 0), ("test", 2.0, 1)):
        blobs_ras = CENTRE_RAS + OFFSETS + np.array([shift, 0.0, -shift])
        volume, blobs = blob_volume(shape_zyx=(40, 40, 40), spacing_mm=(2.0, 2.0, 2.0),
                                    blobs_ras=blobs_ras, sigma_mm=3.0,
                                    seed=seed)  # fmt: skip
        write_image(volume, folder / f"{split}.nii.gz")
        write_landmarks(Landmarks(NAMES, blobs), folder / f"{split}.fcsv")
        cases.append({"id": split, "image": f"{split}.nii.gz", "landmarks": f"{split}.fcsv",
                      "split": split})  # fmt: skip
    datalist = folder / "cases.json"
    datalist.write_text(json.dumps({"cases": cases}))
    return {"folder": folder, "datalist": datalist, "test": folder / "test.nii.gz"}


@pytest.fixture(scope="module")
def slice_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("slice_run")
    argv = ["train", "--config", str(SMOKE), "--run-dir", str(run), "--quiet"]
    settings = [*SLICE_SETTINGS, f"train.datalist={data['datalist']}"]
    assert main([*argv, *(x for s in settings for x in ("--set", s))]) == 0
    return run


def test_train_defaults_to_the_ac_and_pc_slices_and_learns_their_prior(slice_run: Path) -> None:
    header = yaml.safe_load((slice_run / "model" / "model.yaml").read_text())
    assert header["task"]["kind"] == "slice"
    assert header["targets"]["names"] == ["1", "2"]  # AC and PC of the AFIDs, by default
    prior = np.asarray(header["task"]["state"]["prior_offset_ras"])
    assert prior.shape == (2, 3) and np.isfinite(prior).all()


def test_predict_writes_one_slices_file_per_scan_on_the_axis_asked_for(
    slice_run: Path, data, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    assert main(["predict", "--task", "slice", "--model", str(slice_run / "model"), "--image",
                 str(data["test"]), "--out", str(out)]) == 0  # fmt: skip
    document = read_slices(out / "test.slices.json")
    volume = read_image(data["test"])
    assert document["axis"] == 2  # the phantom's grid is turned 20 degrees: k is closest to S
    for entry in document["slices"]:
        index = slice_index(volume.index_to_ras, np.array(entry["point"]), 2)[0]
        assert entry["index"] == pytest.approx(index, abs=1e-2)
        assert 0 <= entry["nearest_index"] < volume.shape_xyz[2]
    other = tmp_path / "pred_i"
    assert main(["predict", "--model", str(slice_run / "model"), "--image", str(data["test"]),
                 "--out", str(other), "--slice-axis", "0"]) == 0  # fmt: skip
    assert read_slices(other / "test.slices.json")["axis"] == 0


def test_wrong_task_options_and_a_cut_off_scan_are_clear_errors(
    slice_run: Path, data, tmp_path: Path
) -> None:
    model = str(slice_run / "model")
    for extra in (["--task", "box"], ["--write-aligned"]):
        out = tmp_path / "x"
        code = main(["predict", "--model", model, "--image", str(data["test"]), "--out",
                     str(out), *extra])  # fmt: skip
        assert code == 2 and not out.exists()
    volume = read_image(data["test"])
    small = Volume(volume.array[:8].copy(), volume.spacing_mm, volume.origin_lps,
                   volume.direction_lps)  # fmt: skip
    write_image(small, tmp_path / "cut.nii.gz")
    out = tmp_path / "pred"
    code = main(["predict", "--model", model, "--image", str(tmp_path / "cut.nii.gz"),
                 "--out", str(out)])  # fmt: skip
    assert code != 0 and not (out / "cut.slices.json").exists()
    assert "field of view does not contain" in (out / "summary.csv").read_text()


def test_evaluate_and_report_a_slice_model(slice_run: Path, data, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(slice_run / "model"), "--datalist",
                 str(data["datalist"]), "--rigid-trials", "1", "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "slice" and summary["cases"] == ["test_rigid0"]
    rows = json.loads((out / "slices.json").read_text())
    assert {(r["method"], r["target"]) for r in rows} == {
        (m, t) for m in ("agent", "affine-baseline") for t in ("1", "2")
    }
    assert all(0 <= r["failure_rate_over_5mm"] <= 1 for r in rows)
    # the table's distance is the gap between the written slice and the true one
    raw = json.loads((out / "slices_raw.json").read_text())
    written = read_slices(out / "predictions" / "test_rigid0.slices.json")["slices"]
    for entry in written:
        agent = next(r for r in raw if r["method"] == "agent" and r["target"] == entry["name"])
        assert agent["position_mm"] == pytest.approx(entry["position_mm"], abs=1e-2)
        gap = abs(agent["position_mm"] - agent["truth_position_mm"])
        assert agent["distance_mm"] == pytest.approx(gap, abs=1e-6)
        row = next(r for r in rows if r["method"] == "agent" and r["target"] == entry["name"])
        assert row["failure_rate_over_5mm"] == float(gap > 5.0)
    assert main(["report", str(out), "--dpi", "40"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    # per target: the chosen slice and the three views
    assert "medrl slice report" in page and page.count("data:image/png;base64,") == 4
