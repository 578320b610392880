"""The box agent end to end through the ``medrl`` command, on a labelled cuboid phantom:
train (resumable), predict (Slicer ROI markups), evaluate against the affine-atlas baseline,
report; and the errors a user meets (wrong task, unknown structure, bad label maps)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medrl
from _synthetic import CUBOID_NAMES, cuboid_volume
from medrl.agents.checkpoint import load_model
from medrl.cli import main
from medrl.geometry.boxes import box_iou, boxes_from_label_map
from medrl.io.images import Volume, write_image
from medrl.io.markups import read_boxes

torch.set_num_threads(1)
SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"
BOX_SETTINGS = [
    "task.kind=box",
    "train.total_steps=30",
    "train.num_envs=4",
    "agent.learning_starts=16",
    "agent.batch_size=4",
    "agent.channels=[4]",
    "train.eval_every=15",  # validation during training: the trained box prior, moved labels
    "env.levels=[{spacing_mm: 3.0, step_mm: 3.0, step_fraction: 0.2, start_radius_mm: 8.0, "
    "size_range: 1.5, max_steps: 6}, {spacing_mm: 1.5, step_mm: 1.5, step_fraction: 0.1, "
    "start_radius_mm: 3.0, size_range: 1.2, max_steps: 5}]",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A training and a test phantom (the test one shifted by a few mm), label maps, names."""
    folder = tmp_path_factory.mktemp("box_data")
    names = folder / "names.json"
    names.write_text(json.dumps({str(k): v for k, v in CUBOID_NAMES.items()}))
    cases = []
    for split, shift, seed in (("train", 0.0, 0), ("test", 3.0, 1)):
        image, labels = cuboid_volume(
            centre_ras=np.array([10.0 + shift, -20.0, 30.0 - shift]), seed=seed
        )
        write_image(image, folder / f"{split}.nii.gz")
        write_image(labels, folder / f"{split}_labels.nii.gz")
        cases.append(
            {
                "id": split,
                "image": f"{split}.nii.gz",
                "labels": f"{split}_labels.nii.gz",
                "label_names": "names.json",
                "split": split,
            }
        )
    datalist = folder / "cases.json"
    datalist.write_text(json.dumps({"cases": cases}))
    return {"folder": folder, "datalist": datalist, "test": folder / "test.nii.gz"}


@pytest.fixture(scope="module")
def box_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("box_run")
    argv = ["train", "--config", str(SMOKE), "--run-dir", str(run), "--quiet"]
    settings = [*BOX_SETTINGS, f"train.datalist={data['datalist']}"]
    assert main([*argv, *(x for s in settings for x in ("--set", s))]) == 0
    return run


def test_train_writes_a_box_model_with_its_task_and_prior(box_run: Path) -> None:
    header = yaml.safe_load((box_run / "model" / "model.yaml").read_text())
    assert header["format"] == "medrl-dqn" and header["task"]["kind"] == "box"
    assert header["targets"]["names"] == list(CUBOID_NAMES.values())
    prior = np.asarray(header["task"]["state"]["prior_size_mm"])
    # the mean size of each cuboid on the training phantom (1.5 mm voxels, full voxel extent)
    assert prior.shape == (3, 3) and np.all(prior > 4.0) and np.all(prior < 20.0)
    model = load_model(box_run / "model")
    assert model.kind == "box" and model.task.num_actions == 11
    evaluations = json.loads((box_run / "evaluations.json").read_text())
    assert [e["step"] for e in evaluations] == [15.0, 30.0]
    assert all(0.0 <= e["mean_iou"] <= 1.0 for e in evaluations)
    assert "search_level_validation_mean_iou" in header["training"]
    # the reference layout is stored, but 3 structures cannot determine an affine map: the
    # export's validation found no second search to choose
    reference = header["task"]["state"]["reference"]
    assert len(reference["centres_ras"]) == len(reference["extremes_ras"]) == 3
    assert header["config"]["search"]["consensus_level"] == -1


def test_refit_rewrites_the_task_state_and_keeps_the_weights(
    box_run: Path, data, tmp_path: Path
) -> None:
    from medrl.agents.refit import main as refit_main

    folder = tmp_path / "run" / "model"
    shutil.copytree(box_run / "model", folder)
    header = yaml.safe_load((folder / "model.yaml").read_text())
    header["task"]["state"].pop("reference")  # as a model trained before the layout existed
    (folder / "model.yaml").write_text(yaml.safe_dump(header, sort_keys=False))
    weights = (folder / "model.safetensors").read_bytes()
    assert refit_main([str(folder), "--datalist", str(data["datalist"])]) == 0
    refitted = yaml.safe_load((folder / "model.yaml").read_text())
    assert (folder / "model.safetensors").read_bytes() == weights
    assert len(refitted["task"]["state"]["reference"]["centres_ras"]) == 3
    assert refitted["task"]["state"]["prior_size_mm"] == header["task"]["state"]["prior_size_mm"]
    assert refitted["config"]["search"]["consensus_level"] == -1
    assert not any(p.name.startswith(".medrl") for p in (tmp_path / "run").iterdir())
    assert refit_main([str(tmp_path / "missing")]) == 2


def test_predict_writes_slicer_roi_markups(box_run: Path, data, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    model = str(box_run / "model")
    assert main(["predict", "--task", "box", "--model", model, "--image", str(data["test"]),
                 "--out", str(out)]) == 0  # fmt: skip
    written = out / "test.mrk.json"
    document = json.loads(written.read_text())
    markups = document["markups"]
    assert [m["type"] for m in markups] == ["ROI"] * 3
    assert [m["name"] for m in markups] == list(CUBOID_NAMES.values())
    names, boxes = read_boxes(written)
    assert names == tuple(CUBOID_NAMES.values())
    assert np.all(np.isfinite(boxes)) and np.all(boxes[:, 3:] > 0)
    summary = (out / "summary.csv").read_text()
    assert "targets" in summary.splitlines()[0] and ",ok," in summary
    # The task is read from the model when --task is not given: same output again (skipped).
    assert main(["predict", "--model", model, "--image", str(data["test"]),
                 "--out", str(out)]) == 0  # fmt: skip


def test_a_box_model_with_task_landmark_is_a_clear_error(
    box_run: Path, data, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "pred"
    code = main(["predict", "--task", "landmark", "--model", str(box_run / "model"),
                 "--image", str(data["test"]), "--out", str(out)])  # fmt: skip
    assert code == 2
    assert "box model, not a landmark model" in capsys.readouterr().err
    assert not out.exists()
    code = main(["evaluate", "--task", "landmark", "--model", str(box_run / "model"),
                 "--datalist", str(data["datalist"]), "--out", str(tmp_path / "e")])  # fmt: skip
    assert code == 2 and not (tmp_path / "e").exists()


def test_evaluate_and_report_a_box_model(box_run: Path, data, tmp_path: Path, capsys) -> None:
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(box_run / "model"), "--datalist",
                 str(data["datalist"]), "--rigid-trials", "1", "--elastic-mm", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "box" and summary["atlas"] == "train"
    assert summary["cases"] == ["test_elastic0"]
    overall = {r["method"]: r for r in json.loads((out / "boxes_overall.json").read_text())}
    assert set(overall) == {"agent", "affine-atlas-baseline"}
    # The phantoms differ by a 3 mm shift: affine registration of the atlas finds the boxes.
    assert overall["affine-atlas-baseline"]["iou_mean"] > 0.4
    record = json.loads((out / "cases" / "test_elastic0.json").read_text())
    truth = np.asarray(record["truth_boxes"])
    agent = np.asarray(record["agent_boxes"])
    raw = json.loads((out / "boxes_raw.json").read_text())
    ious = [r["iou"] for r in raw if r["method"] == "agent"]
    np.testing.assert_allclose(ious, box_iou(agent, truth), atol=0.01)
    assert (out / "predictions" / "test_elastic0.mrk.json").is_file()
    # Run again into the same folder (as after a kill): the finished scan is kept, not redone,
    # and the tables come out the same.
    tables = (out / "boxes_raw.json").read_text()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(box_run / "model"), "--datalist",
                 str(data["datalist"]), "--rigid-trials", "1", "--elastic-mm", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "[1/1] done earlier, kept test_elastic0" in capsys.readouterr().err
    assert (out / "boxes_raw.json").read_text() == tables
    assert main(["report", str(out), "--max-scans", "1", "--dpi", "40"]) == 0
    page = (out / "report.html").read_text()
    assert "medrl box report" in page and "IoU per structure" in page
    assert page.count("data:image/png;base64,") == 1 + 3  # IoU bars, one per structure


def test_true_boxes_of_the_phantom_are_its_cuboids(data) -> None:
    from medrl.data.datalist import load_case, read_datalist

    case = load_case(read_datalist(data["datalist"])[0])
    assert case.labels is not None and case.label_names == CUBOID_NAMES
    names, boxes = boxes_from_label_map(case.labels, case.label_names)
    assert names == tuple(CUBOID_NAMES.values())
    # cuboid a: half size (7, 5, 4) mm -> voxel centres within, plus half a voxel
    assert np.all(np.abs(boxes[0, 3:] - 2 * np.array([7.0, 5.0, 4.0])) <= 1.5 + 1e-6)


def test_training_on_an_unknown_structure_is_a_clear_error(data, tmp_path: Path, capsys) -> None:
    argv = ["train", "--config", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--quiet"]
    settings = [*BOX_SETTINGS, f"train.datalist={data['datalist']}",
                "train.landmarks=[cuboid_a, R Subthalamic Nucleus]"]  # fmt: skip
    assert main([*argv, *(x for s in settings for x in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert "R Subthalamic Nucleus" in err and "cuboid_a" in err
    assert not (tmp_path / "r" / "model").exists()


def test_an_empty_structure_is_a_clear_error(data, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "empty"
    shutil.copytree(data["folder"], folder)
    from medrl.io.images import read_image

    labels = read_image(folder / "train_labels.nii.gz")
    array = labels.array.copy()
    array[array == 3] = 0  # cuboid_c has no voxels left in the training label map
    geometry = (labels.spacing_mm, labels.origin_lps, labels.direction_lps)
    write_image(Volume(array, *geometry, "labels"), folder / "train_labels.nii.gz")
    argv = ["train", "--config", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--quiet"]
    settings = [*BOX_SETTINGS, f"train.datalist={folder / 'cases.json'}",
                "train.landmarks=[cuboid_a, cuboid_c]"]  # fmt: skip
    assert main([*argv, *(x for s in settings for x in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert "cuboid_c" in err and "train_labels.nii.gz" in err
