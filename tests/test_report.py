"""``medrl report``: the HTML page of a tiny train + evaluate run, checked in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _synthetic import BLOB_NAMES, blob_volume
from medrl.agents.checkpoint import load_model
from medrl.agents.search import level_paths
from medrl.cli import main
from medrl.io.images import write_image
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.report.data import read_scalars

torch.set_num_threads(1)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RIGID_TRIALS = 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A smoke-sized training run on synthetic blob scans, evaluated, with its report."""
    folder = tmp_path_factory.mktemp("report")
    train_volume, train_blobs = blob_volume(seed=0)
    test_blobs = train_blobs + np.array([3.0, -2.0, 2.5])
    test_volume, _ = blob_volume(blobs_ras=test_blobs, seed=1)
    cases = []
    for name, volume, blobs in (
        ("train", train_volume, train_blobs),
        ("test", test_volume, test_blobs),
    ):
        write_image(volume, folder / f"{name}.nii.gz")
        write_landmarks(Landmarks(BLOB_NAMES, blobs, ("a", "b", "c")), folder / f"{name}.fcsv")
        cases.append(
            {"id": name, "image": f"{name}.nii.gz", "landmarks": f"{name}.fcsv", "split": name}
        )
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"cases": cases}))
    run = folder / "run"
    train = ["train", "--config", "smoke", "--set", f"train.datalist={datalist}"]
    assert main([*train, "--run-dir", str(run), "--quiet"]) == 0
    evaluate = ["evaluate", "--model", str(run / "model"), "--datalist", str(datalist)]
    rigid = ["--rigid-trials", str(RIGID_TRIALS), "--include-unmoved", "--starts", "3"]
    assert main([*evaluate, *rigid, "--out", str(run / "evaluation")]) == 0
    assert main(["report", str(run)]) == 0
    return run


def _images(page: str) -> list[bytes]:
    return [
        base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def test_evaluation_saves_what_the_report_draws(run_dir: Path) -> None:
    records = sorted((run_dir / "evaluation" / "cases").glob("*.json"))
    assert [p.stem for p in records] == ["test", "test_rigid0", "test_rigid1"]
    record = json.loads(records[1].read_text(encoding="utf-8"))
    assert record["landmarks"] == list(BLOB_NAMES)
    assert record["scan"]["rigid"] is not None and record["scan"]["image"].endswith("test.nii.gz")
    for key in ("truth_ras", "agent_ras", "baseline_ras"):
        assert np.asarray(record[key]).shape == (3, 3)
    paths = record["search_paths_ras"]
    assert len(paths) == 3 and all(len(starts) == 3 for starts in paths)  # 3 landmarks x 3 starts
    searched = load_model(run_dir / "model").config.search.levels  # chosen after training
    assert {len(start) for starts in paths for start in starts} == {searched}
    first = np.asarray(paths[0][0][0])
    assert first.ndim == 2 and first.shape[1] == 3 and np.isfinite(first).all()
    # Consecutive positions differ (repeats of a settled agent are dropped).
    assert (np.abs(np.diff(first, axis=0)).max(axis=1) > 1e-6).all()


def test_level_paths_splits_by_level_and_drops_repeats() -> None:
    path = np.array([[0, 0, 0], [4, 0, 0], [4, 0, 0], [4, 0, 0], [4, 2, 0], [4, 2, 0]], float)
    levels = np.array([0, 0, 0, 1, 1, 1])
    coarse, fine, unused = level_paths(path, levels, 3)
    np.testing.assert_array_equal(coarse, [[0, 0, 0], [4, 0, 0]])
    np.testing.assert_array_equal(fine, [[4, 0, 0], [4, 2, 0]])
    assert unused.shape == (0, 3)


def test_report_page_holds_tables_and_figures(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    # Agent and baseline in the same tables; every scan has its section.
    assert page.count("affine-baseline") >= 2 and "failure" in page
    for case in ("test", "test_rigid0", "test_rigid1"):
        assert f"<h3>{case}</h3>" in page
    # 3 summary figures (error bars, cumulative curve, training curves) and one slice figure
    # per landmark and scan; each is a real PNG.
    images = _images(page)
    assert len(images) == 3 + 3 * (1 + RIGID_TRIALS)
    sizes = [Image.open(io.BytesIO(png)).size for png in images]
    assert all(width > 100 and height > 50 for width, height in sizes)
    assert "No training logs" not in page


def test_training_curves_come_from_tensorboard(run_dir: Path) -> None:
    scalars = read_scalars(run_dir / "tensorboard")
    for tag in ("train/epsilon", "train/reward", "train/loss"):
        assert tag in scalars and len(scalars[tag].steps) >= 1
    assert np.all(np.diff(scalars["train/epsilon"].steps) > 0)


def test_report_of_an_evaluation_folder_alone(run_dir: Path, tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation"
    shutil.copytree(run_dir / "evaluation", evaluation)
    out = tmp_path / "page.html"
    assert main(["report", str(evaluation), "--out", str(out), "--max-scans", "1"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "No training logs" in page
    assert "1 of 3 scans drawn" in page
    assert len(_images(page)) == 2 + 3  # no training curves; one scan drawn


def test_reevaluating_into_a_folder_drops_the_older_scans(run_dir: Path, tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation"
    shutil.copytree(run_dir / "evaluation", evaluation)
    older = sorted(p.name for p in (evaluation / "cases").glob("*.json"))
    assert len(older) == RIGID_TRIALS + 1
    datalist = run_dir.parent / "datalist.json"
    evaluate = ["evaluate", "--model", str(run_dir / "model"), "--datalist", str(datalist)]
    assert main([*evaluate, "--rigid-trials", "1", "--out", str(evaluation)]) == 0
    assert sorted(p.name for p in (evaluation / "cases").glob("*.json")) == ["test_rigid0.json"]
    out = tmp_path / "page.html"
    assert main(["report", str(evaluation), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "test_rigid1" not in page and "nan mm" not in page


def test_report_without_evaluation_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no evaluation found" in err and "medrl evaluate" in err
    assert not (tmp_path / "report.html").exists()


_CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const result = images.map(img => ({alt: img.alt, complete: img.complete,
                                     width: img.naturalWidth, height: img.naturalHeight}));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_opens_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    """Chromium loads the page and decodes every figure (naturalWidth > 0)."""
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _CHECK_SCRIPT + "</body>"), encoding="utf-8")
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(
        command, capture_output=True, encoding="utf-8", errors="replace", timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == 3 + 3 * (1 + RIGID_TRIALS)
    assert all(image["complete"] and image["width"] > 0 and image["height"] > 0 for image in images)
    assert any("cumulative error" in image["alt"] for image in images)


def test_search_records_every_step_of_the_path(run_dir: Path) -> None:
    """Each recorded position is one move (one step of its level) from the one before:
    the recorded path is not overwritten by later steps of the search."""
    from medrl.agents.search import search
    from medrl.io.images import read_image

    model = load_model(run_dir / "model")
    result = search(model, read_image(run_dir.parent / "test.nii.gz"), num_starts=2)
    steps_mm = [level.step_mm for level in model.config.env.levels]
    moves = 0
    for starts, levels in zip(result.paths_ras, result.path_levels, strict=True):
        for path, level in zip(starts, levels, strict=True):
            for index in range(1, len(path) - 1):  # the last entry is the settled mean
                if level[index] != level[index - 1]:
                    continue
                jump = float(np.linalg.norm(path[index] - path[index - 1]))
                assert jump == pytest.approx(0.0, abs=1e-4) or jump == pytest.approx(
                    steps_mm[level[index]], abs=1e-3
                )
                moves += jump > 1e-4
    assert moves > 0


def test_scalars_of_a_resumed_run_and_the_evaluation_curve(tmp_path: Path) -> None:
    """Two event files (a run resumed at step 20 redoes step 20); eval/mean_error_mm is
    plotted when the training logged it."""
    from torch.utils.tensorboard import SummaryWriter

    from medrl.report.figures import training_curves

    folder = tmp_path / "tensorboard"
    first = SummaryWriter(str(folder), filename_suffix=".a")
    for step in (10, 20):
        first.add_scalar("train/loss", 1.0 / step, step)
    first.close()
    second = SummaryWriter(str(folder), filename_suffix=".b")
    for step in (20, 30):
        second.add_scalar("train/loss", 2.0 / step, step)
        second.add_scalar("eval/mean_error_mm", 50.0 - step, step)
    second.close()
    scalars = read_scalars(folder)
    np.testing.assert_array_equal(scalars["train/loss"].steps, [10, 20, 30])
    np.testing.assert_allclose(scalars["train/loss"].values, [0.1, 0.1, 2.0 / 30], rtol=1e-6)
    np.testing.assert_allclose(scalars["eval/mean_error_mm"].values, [30.0, 20.0])
    png = training_curves(scalars)
    assert png is not None and Image.open(io.BytesIO(png)).size[0] > 300
    assert training_curves({}) is None


def test_scalars_follow_the_order_files_were_written_not_their_names(tmp_path: Path) -> None:
    """A writer's per-process counter does not sort (``...9.a`` before ``...10.b`` by name):
    the resumed run (written second, named first) still wins, and the steps the first run
    logged after the checkpoint but the resumed run never logged again are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "tensorboard"
    written = []
    for suffix, steps, scale in ((".first", (10, 20, 30, 40), 1.0), (".second", (20, 30), 2.0)):
        writer = SummaryWriter(str(folder), filename_suffix=suffix)
        for step in steps:
            writer.add_scalar("train/loss", scale * step, step)
        writer.close()
        written.append(next(folder.glob(f"*{suffix}")))
    written[0].rename(folder / "events.out.tfevents.1.host.1.9.a")
    written[1].rename(folder / "events.out.tfevents.1.host.1.10.b")
    (folder / "events.out.tfevents.1.host.1.11.c").write_bytes(b"")  # never flushed
    scalars = read_scalars(folder)
    np.testing.assert_array_equal(scalars["train/loss"].steps, [10, 20, 30])
    np.testing.assert_allclose(scalars["train/loss"].values, [10.0, 40.0, 60.0])


def test_report_rebuilds_a_warped_and_moved_scan_as_evaluate_made_it(tmp_path: Path) -> None:
    from medrl.evaluation import deform_case, move_case, random_rigid, rigid_to_dict
    from medrl.report.slices import rebuild_scan

    volume, blobs = blob_volume(noise=0.0, sigma_mm=3.0)
    path = tmp_path / "blobs.nii.gz"
    write_image(volume, path)
    landmarks = Landmarks(BLOB_NAMES, blobs)
    rigid = random_rigid(4, 15.0, 20.0)
    warped, _ = deform_case(volume, landmarks, elastic_mm=5.0, seed=7)
    expected, _ = move_case(warped, landmarks, rigid)
    scan = {"image": str(path), "elastic": {"elastic_mm": 5.0, "seed": 7}}
    rebuilt = rebuild_scan({"scan": {**scan, "rigid": rigid_to_dict(rigid)}}, {})
    np.testing.assert_allclose(rebuilt.volume.array, expected.array, atol=1e-2)
    rigid_only, _ = move_case(volume, landmarks, rigid)
    assert np.abs(rigid_only.array - expected.array).max() > 50  # the warp is visible
