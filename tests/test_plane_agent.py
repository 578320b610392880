"""The plane agent end to end through the ``medrl`` command, on a midline phantom (blobs at
the ten midline AFIDs): train, predict (Slicer plane markups, AC-PC-aligned scan), evaluate
against the affine baseline, report; and the errors a user meets."""

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
from medrl.geometry.planes import MIDLINE_AFIDS, planes_from_afids
from medrl.io.images import read_image, write_image
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.io.plane_markups import read_planes

torch.set_num_threads(1)
SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"
PLANE_SETTINGS = [
    "task.kind=plane",
    "train.total_steps=30",
    "train.num_envs=4",
    "agent.learning_starts=16",
    "agent.batch_size=4",
    "agent.channels=[4]",
    "env.levels=[{spacing_mm: 3.0, step_mm: 3.0, step_deg: 4.0, start_radius_mm: 6.0, "
    "start_angle_deg: 10.0, max_steps: 6}, {spacing_mm: 1.5, step_mm: 1.0, step_deg: 1.0, "
    "start_radius_mm: 2.0, start_angle_deg: 3.0, max_steps: 5}]",
]
OFFSETS = np.array(
    [[0, 8, 0], [0, -8, 2], [1, -14, -6], [0, -8, -14], [-1, -4, -8], [0, -18, 6],
     [0, 2, -10], [1, -12, 8], [-1, 16, 10], [0, -16, 12]], dtype=np.float64,
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plane_data")
    cases = []
    for split, shift, seed in (("train", 0.0, 0), ("test", 2.0, 1)):
        blobs_ras = CENTRE_RAS + OFFSETS + np.array([shift, 0.0, -shift])
        volume, blobs = blob_volume(shape_zyx=(40, 40, 40), blobs_ras=blobs_ras, sigma_mm=3.0,
                                    seed=seed)  # fmt: skip
        write_image(volume, folder / f"{split}.nii.gz")
        write_landmarks(Landmarks(MIDLINE_AFIDS, blobs), folder / f"{split}.fcsv")
        cases.append({"id": split, "image": f"{split}.nii.gz", "landmarks": f"{split}.fcsv",
                      "split": split})  # fmt: skip
    datalist = folder / "cases.json"
    datalist.write_text(json.dumps({"cases": cases}))
    return {"folder": folder, "datalist": datalist, "test": folder / "test.nii.gz"}


@pytest.fixture(scope="module")
def plane_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("plane_run")
    argv = ["train", "--config", str(SMOKE), "--run-dir", str(run), "--quiet"]
    settings = [*PLANE_SETTINGS, f"train.datalist={data['datalist']}"]
    assert main([*argv, *(x for s in settings for x in ("--set", s))]) == 0
    return run


def test_train_writes_a_plane_model_with_its_prior(plane_run: Path, data) -> None:
    header = yaml.safe_load((plane_run / "model" / "model.yaml").read_text())
    assert header["task"]["kind"] == "plane"
    assert header["targets"]["names"] == ["MSP", "ACPC"]
    state = header["task"]["state"]
    truth = planes_from_afids(CENTRE_RAS + OFFSETS, MIDLINE_AFIDS)
    # the prior normals are the training planes' (one training scan)
    np.testing.assert_allclose(state["prior_normal_ras"], truth[:, 3:6], atol=1e-4)


def test_predict_writes_plane_markups_and_the_acpc_aligned_scan(
    plane_run: Path, data, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    assert main(["predict", "--task", "plane", "--model", str(plane_run / "model"), "--image",
                 str(data["test"]), "--out", str(out), "--write-aligned"]) == 0  # fmt: skip
    names, planes = read_planes(out / "test.mrk.json")
    assert names == ("MSP", "ACPC")
    np.testing.assert_allclose(np.linalg.norm(planes[:, 3:6], axis=1), 1.0, atol=1e-6)
    document = json.loads((out / "test.mrk.json").read_text())
    assert [m["type"] for m in document["markups"]] == ["Plane", "Plane"]
    aligned = read_image(out / "test_acpc.nii.gz")
    assert aligned.array.shape[0] > 10 and float(aligned.array.max()) > 100.0
    # a box model's option on a plane model, and --write-aligned with another task: errors
    code = main(["predict", "--task", "box", "--model", str(plane_run / "model"), "--image",
                 str(data["test"]), "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2 and not (tmp_path / "x").exists()


def test_a_scan_that_cuts_off_the_planes_is_a_clear_error(
    plane_run: Path, data, tmp_path: Path, capsys
) -> None:
    volume = read_image(data["test"])
    cut = volume.array[:8].copy()  # the lowest 8 slices only: the planes lie above them
    from medrl.io.images import Volume

    small = Volume(cut, volume.spacing_mm, volume.origin_lps, volume.direction_lps)
    write_image(small, tmp_path / "cut.nii.gz")
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(plane_run / "model"), "--image",
                 str(tmp_path / "cut.nii.gz"), "--out", str(out)])  # fmt: skip
    assert code != 0
    assert not (out / "cut.mrk.json").exists()
    summary = (out / "summary.csv").read_text()
    assert "field of view does not contain" in summary


def test_evaluate_and_report_a_plane_model(plane_run: Path, data, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(plane_run / "model"), "--datalist",
                 str(data["datalist"]), "--rigid-trials", "1", "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "plane" and summary["cases"] == ["test_rigid0"]
    rows = json.loads((out / "planes.json").read_text())
    assert {(r["method"], r["plane"]) for r in rows} == {
        (m, p) for m in ("agent", "affine-baseline") for p in ("MSP", "ACPC")
    }
    by = {(r["method"], r["plane"]): r for r in rows}
    # the two phantoms differ by a 2 mm shift: the affine baseline finds the planes
    assert by[("affine-baseline", "MSP")]["angle_deg_mean"] < 5.0
    assert all(0 <= r["share_within_2deg_2mm"] <= 1 for r in rows)
    assert main(["report", str(out), "--dpi", "40"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "medrl plane report" in page and page.count("data:image/png;base64,") == 2
