"""``medrl register`` end to end on the 4 mm template and a rigidly moved copy of it."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _registration_data import moved_copy, rigid_matrix_ras, template_4mm
from _synthetic import oblique_volume
from medrl.cli import main
from medrl.errors import InputError
from medrl.io.images import Volume, write_image
from medrl.io.landmarks import read_landmarks, write_landmarks
from medrl.metrics.registration import tre_mm
from medrl.registration.workflow import get_method, register_pair
from medrl.report.registration import registration_report


@pytest.fixture(scope="module")
def pair(builtin_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fixed and moving images, landmarks and two-label maps as files."""
    folder = tmp_path_factory.mktemp("pair")
    fixed, landmarks = template_4mm(builtin_data)
    moving, moving_landmarks = moved_copy(fixed, landmarks, rigid_matrix_ras())
    labels = (fixed.array > 4000).astype(np.float32) + (fixed.array > 7000)
    fixed_labels = Volume(labels, fixed.spacing_mm, fixed.origin_lps, fixed.direction_lps)
    moved_labels = sitk.Resample(
        fixed_labels.to_sitk(),
        fixed_labels.to_sitk(),
        sitk.ReadTransform(str(_write_truth(folder))),
        sitk.sitkNearestNeighbor,
    )
    files = {name: folder / name for name in ("fixed.nii.gz", "moving.nii.gz")}
    write_image(fixed, files["fixed.nii.gz"])
    write_image(moving, files["moving.nii.gz"])
    labels_of = {"fixed_labels": fixed_labels, "labels": Volume.from_sitk(moved_labels)}
    for name, volume in labels_of.items():
        files[name] = folder / f"{name}.nii.gz"
        write_image(volume, files[name])
    for name, points in (("fixed_landmarks", landmarks), ("landmarks", moving_landmarks)):
        files[name] = folder / f"{name}.fcsv"
        write_landmarks(points, files[name])
    return {"fixed": files["fixed.nii.gz"], "moving": files["moving.nii.gz"], **files}


def _write_truth(folder: Path) -> Path:
    """The moving -> fixed map (the inverse of the move), as a transform file."""
    from medrl.registration.transforms import rigid_ras_to_sitk

    path = folder / "truth_inverse.tfm"
    sitk.WriteTransform(rigid_ras_to_sitk(rigid_matrix_ras()).GetInverse(), str(path))
    return path


def _argv(pair: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "register",
        "--fixed",
        str(pair["fixed"]),
        "--moving",
        str(pair["moving"]),
        "--out",
        str(out),
        "--threads",
        "1",
        *extra,
    ]


def test_register_writes_every_output_and_aligns(pair: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = ["--method", "rigid", "--landmarks", str(pair["landmarks"])]
    extra += ["--fixed-landmarks", str(pair["fixed_landmarks"]), "--labels", str(pair["labels"])]
    assert main(_argv(pair, out, *extra, "--fixed-labels", str(pair["fixed_labels"]))) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "transform.tfm",
        "moved.nii.gz",
        "moved_labels.nii.gz",
        "moved_landmarks.fcsv",
        "registration.json",
        "report.html",
    }
    # The transform aligns the moving landmarks' positions: T(fixed point) = moving point.
    transform = sitk.ReadTransform(str(out / "transform.tfm"))
    fixed_points = read_landmarks(pair["fixed_landmarks"]).points("LPS")
    moving_points = read_landmarks(pair["landmarks"]).points("LPS")
    mapped = np.array([transform.TransformPoint(list(p)) for p in fixed_points])
    assert tre_mm(mapped, moving_points).max() < 1.5
    # ... and the moving image: resampled through it, it overlays the fixed image.
    fixed, moving = sitk.ReadImage(str(pair["fixed"])), sitk.ReadImage(str(pair["moving"]))
    head = sitk.GetArrayFromImage(fixed) > 3000
    target = sitk.GetArrayFromImage(fixed)
    before = np.abs(sitk.GetArrayFromImage(sitk.Resample(moving, fixed)) - target)
    after = np.abs(sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform)) - target)
    assert after[head].mean() < 0.3 * before[head].mean()
    moved_landmarks = read_landmarks(out / "moved_landmarks.fcsv")
    assert tre_mm(moved_landmarks.points("LPS"), fixed_points).max() < 1.5
    record = json.loads((out / "registration.json").read_text())
    assert record["method"] == "rigid" and record["seconds"] > 0
    tre = record["metrics"]["landmarks"]
    assert tre["tre_before_mm"]["mean"] > 8.0 > 1.0 > tre["tre_after_mm"]["mean"]
    labels = record["metrics"]["labels"]
    assert labels["mean_dice_after"] > 0.9 > labels["mean_dice_before"]
    assert labels["mean_hd95_after_mm"] < labels["mean_hd95_before_mm"]
    page = (out / "report.html").read_text()
    for section in ("Summary", "Checkerboard", "Edges", "Landmarks"):
        assert f"<h2>{section}</h2>" in page
    assert "Jacobian" not in page and page.count("data:image/png;base64,") == 3


def _bad_input(tmp_path: Path, kind: str, pair: dict[str, Path]) -> tuple[list[str], Path]:
    """A command whose input ``kind`` is broken, and the file its error must name."""
    fixed = sitk.ReadImage(str(pair["fixed"]))
    bad = tmp_path / f"{kind}.nii.gz"
    extra: list[str] = []
    if kind == "far-away":
        fixed.SetOrigin([v + 1000.0 for v in fixed.GetOrigin()])
        sitk.WriteImage(fixed, str(bad))
    elif kind == "flat":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((20, 30))), str(bad))
    elif kind == "nan":
        array = sitk.GetArrayFromImage(fixed)
        array[5, 5, 5] = np.nan
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(fixed)
        sitk.WriteImage(image, str(bad))
    elif kind == "corrupt":
        bad.write_bytes(gzip.compress(b"not an image at all" * 20))
    elif kind == "labels-grid":
        write_image(oblique_volume(), bad)
        extra = ["--labels", str(bad)]
    argv = _argv(pair, tmp_path / "out", *extra)
    if kind != "labels-grid":
        argv[argv.index("--moving") + 1] = str(bad)
    return argv, bad


@pytest.mark.parametrize("kind", ["far-away", "flat", "labels-grid", "nan", "corrupt"])
def test_bad_inputs_fail_naming_the_file_and_write_nothing(
    pair: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    argv, bad = _bad_input(tmp_path, kind, pair)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert str(bad) in error
    expected = {
        "far-away": f"fixed image {re.escape(str(pair['fixed']))} do not overlap",
        "flat": "2D",
        "labels-grid": "not on the grid of the moving image",
        "nan": "NaN",
        "corrupt": "cannot read image",
    }[kind]
    assert re.search(expected, error), error
    assert not (tmp_path / "out").exists()


def test_unknown_method_lists_the_known_ones(pair, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(pair, tmp_path / "out", "--method", "nope"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'nope'" in error and "'affine'" in error
    assert not (tmp_path / "out").exists()
    assert get_method("rigid").__name__ == "rigid"
    with pytest.raises(InputError, match=r"unknown registration method 'nope'.*affine"):
        get_method("nope")


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def test_batch_skips_done_pairs_and_records_failures(
    pair: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datalist = tmp_path / "pairs.csv"
    missing = tmp_path / "missing.nii.gz"
    good = [str(pair[k]) for k in ("fixed", "moving", "landmarks", "fixed_landmarks")]
    rows = [
        ["id", "fixed", "moving", "landmarks", "fixed_landmarks"],
        ["good", *good],
        ["bad", str(pair["fixed"]), missing.name, "", ""],  # relative to the datalist
    ]
    with open(datalist, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    out = tmp_path / "out"
    argv = ["register", "--datalist", str(datalist), "--out", str(out), "--method", "rigid"]
    argv += ["--no-report", "--threads", "1"]
    assert main(argv) == 2
    assert "1 of 2 pairs failed" in capsys.readouterr().err
    summary = _summary(out)
    assert summary["good"]["status"] == "ok" and float(summary["good"]["tre_after_mm"]) < 1.0
    assert summary["bad"]["status"] == "failed" and str(missing) in summary["bad"]["error"]
    assert (out / "good" / "registration.json").is_file() and not (out / "bad").exists()
    assert not (out / "good" / "report.html").exists()
    stamp = (out / "good" / "registration.json").stat().st_mtime_ns
    assert main(argv) == 2
    summary = _summary(out)
    assert summary["good"]["status"] == "skipped" and summary["good"]["tre_after_mm"]
    assert (out / "good" / "registration.json").stat().st_mtime_ns == stamp
    assert main([*argv, "--overwrite"]) == 2
    assert (out / "good" / "registration.json").stat().st_mtime_ns != stamp


def test_batch_datalist_errors_name_the_datalist_and_row(tmp_path: Path, capsys) -> None:
    datalist = tmp_path / "pairs.csv"
    datalist.write_text("id,fixed,moving\na,f.nii.gz,m.nii.gz\na,f.nii.gz,m.nii.gz\n")
    assert main(["register", "--datalist", str(datalist), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert str(datalist) in error and "line 3: duplicate id 'a'" in error
    datalist.write_text('{"pairs": [{"id": "a", "fixed": "f.nii.gz"}]}')
    datalist = datalist.rename(tmp_path / "pairs.json")
    assert main(["register", "--datalist", str(datalist), "--out", str(tmp_path / "o")]) == 2
    assert "pair 1: no moving" in capsys.readouterr().err


def test_a_second_run_replaces_the_outputs(pair: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    register_pair(pair["fixed"], pair["moving"], out, "rigid", labels=pair["labels"], report=False)
    assert (out / "moved_labels.nii.gz").is_file()
    (out / "notes.txt").write_text("mine")
    record = register_pair(pair["fixed"], pair["moving"], out, "rigid", report=False)
    names = {p.name for p in out.iterdir()}
    assert names == {"transform.tfm", "moved.nii.gz", "registration.json", "notes.txt"}
    assert record["inputs"]["labels"] is None


def test_report_shows_the_jacobian_of_a_field() -> None:
    fixed = oblique_volume()
    det = np.full((5, 6, 7), 1.2)
    det[2, 3, 3] = -0.1
    page = registration_report(
        {"method": "x", "seconds": 1.0, "metrics": {"jacobian": {"folding_share": 0.01}}},
        fixed,
        fixed,
        fixed,
        jacobian=det,
    )
    assert "<h2>Jacobian determinant</h2>" in page and "folding share" in page
    assert "<h2>Landmarks</h2>" not in page
