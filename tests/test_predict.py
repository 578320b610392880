"""Batch prediction: folders and datalists of scans, atomic per-scan outputs, reruns, failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import medrl
from _synthetic import BLOB_NAMES, blob_volume, write_dicom_series, write_untrained_model
from medrl.cli import main
from medrl.errors import InputError
from medrl.io.images import write_image
from medrl.io.landmarks import read_landmarks
from medrl.predict import ScanPredictor
from medrl.scan_jobs import find_scans, jobs_from_folder, jobs_from_images

torch.set_num_threads(1)

SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained model (the pipeline, not the accuracy, is under test here)."""
    return write_untrained_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Scans in nested folders: two share a file name, one is a DICOM series, one is corrupt,
    plus files that are no scans (a landmarks file, a hidden temp file)."""
    root = tmp_path_factory.mktemp("archive")
    volume, _ = blob_volume(shape_zyx=(32, 32, 32), spacing_mm=(2.0, 2.0, 2.0))
    write_image(volume, root / "site1" / "scan.nii.gz")
    write_image(volume, root / "site2" / "scan.nii.gz")
    write_image(volume, root / "site2" / "other.mha")
    write_dicom_series(
        root / "site3" / "dicom",
        np.clip(volume.array, 0, 3000),
        (2.0, 2.0, 2.0),
        tuple(volume.origin_lps),
        volume.direction_lps,
    )
    (root / "site4").mkdir()
    (root / "site4" / "broken.nii.gz").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "site1" / "notes.fcsv").write_text("# not a scan\n")
    (root / "site1" / ".scan.nii.gz.tmp.nii.gz").write_bytes(b"half written")
    return root


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["scan"]: row for row in csv.DictReader(handle)}


def test_find_scans_sees_files_and_dicom_folders(archive: Path) -> None:
    found = [p.relative_to(archive).as_posix() for p in find_scans(archive)]
    assert found == [
        "site1/scan.nii.gz",
        "site2/other.mha",
        "site2/scan.nii.gz",
        "site3/dicom",
        "site4/broken.nii.gz",
    ]


def test_folder_outputs_mirror_the_scan_paths(archive: Path, tmp_path: Path) -> None:
    outputs = [
        j.output.relative_to(tmp_path).as_posix() for j in jobs_from_folder(archive, tmp_path)
    ]
    assert outputs == [
        "site1/scan.fcsv",
        "site2/other.fcsv",
        "site2/scan.fcsv",
        "site3/dicom.fcsv",
        "site4/broken.fcsv",
    ]


def test_images_with_the_same_name_get_distinct_outputs(archive: Path, tmp_path: Path) -> None:
    images = [archive / "site1" / "scan.nii.gz", archive / "site2" / "scan.nii.gz"]
    outputs = [
        j.output.relative_to(tmp_path).as_posix() for j in jobs_from_images(images, tmp_path)
    ]
    assert outputs == ["site1/scan.fcsv", "site2/scan.fcsv"]
    unique = jobs_from_images([archive / "site2" / "other.mha"], tmp_path)
    assert unique[0].output == tmp_path / "other.fcsv"


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no scans found"):
        jobs_from_folder(tmp_path, tmp_path / "out")


def test_predict_folder_skips_done_scans_and_records_failures(
    model_dir: Path, archive: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--input-dir", str(archive), "--out", str(out)]
    assert main(argv) == 2  # one scan failed
    captured = capsys.readouterr()
    err = captured.err
    assert "1 of 5 scans failed" in err and "predict" in err  # the summary and the progress bar
    printed = sorted(Path(line).relative_to(out).as_posix() for line in captured.out.split())
    assert len(printed) == 4 and all(p.endswith(".fcsv") for p in printed)  # the ones written
    summary = _summary(out)
    assert {k: v["status"] for k, v in summary.items()} == {
        "site1/scan.nii.gz": "ok",
        "site2/other.mha": "ok",
        "site2/scan.nii.gz": "ok",
        "site3/dicom": "ok",
        "site4/broken.nii.gz": "failed",
    }
    assert str(archive / "site4" / "broken.nii.gz") in summary["site4/broken.nii.gz"]["error"]
    assert float(summary["site1/scan.nii.gz"]["seconds"]) > 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "site1/scan.fcsv",
        "site2/other.fcsv",
        "site2/scan.fcsv",
        "site3/dicom.fcsv",
        "summary.csv",
    ]  # no output for the broken scan, no temporary files left
    for name in ("site1/scan.fcsv", "site3/dicom.fcsv"):
        found = read_landmarks(out / name)
        assert found.names == BLOB_NAMES and np.isfinite(found.points_ras).all()

    # A rerun skips what is done and retries the failure.
    before = (out / "site1/scan.fcsv").stat().st_mtime_ns
    assert main(argv) == 2
    summary = _summary(out)
    assert [v["status"] for v in summary.values()] == ["skipped"] * 4 + ["failed"]
    assert (out / "site1/scan.fcsv").stat().st_mtime_ns == before

    # Once the scan is repaired, only it is predicted; --overwrite redoes everything.
    (archive / "site4" / "broken.nii.gz").unlink()
    assert main(argv) == 0
    assert [v["status"] for v in _summary(out).values()] == ["skipped"] * 4
    assert main([*argv, "--overwrite"]) == 0
    assert [v["status"] for v in _summary(out).values()] == ["ok"] * 4


def test_predict_datalist_without_labels(model_dir: Path, archive: Path, tmp_path: Path) -> None:
    datalist = tmp_path / "scans.json"
    cases = [
        {"id": "patient-1", "image": str(archive / "site2" / "other.mha")},
        {"id": "patient-2", "image": str(tmp_path / "gone.nii.gz"), "split": "test"},
    ]
    datalist.write_text(json.dumps({"cases": cases}))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--datalist", str(datalist), "--out", str(out)]
    assert main([*argv, "--coordinate-system", "LPS"]) == 2
    summary = _summary(out)
    assert summary["patient-1"]["status"] == "ok"
    assert summary["patient-2"]["status"] == "failed"
    assert "gone.nii.gz" in summary["patient-2"]["error"]
    assert "LPS" in (out / "patient-1.fcsv").read_text()


def test_interrupted_run_keeps_finished_scans(
    model_dir: Path, archive: Path, tmp_path: Path, monkeypatch
) -> None:
    """Ctrl-C during the second scan: the first output and a summary stay, nothing half
    written; the rerun starts at the second scan."""
    out = tmp_path / "out"
    images = [archive / "site2" / "other.mha", archive / "site1" / "scan.nii.gz"]
    argv = ["predict", "--model", str(model_dir), "--out", str(out)]
    argv += [item for image in images for item in ("--image", str(image))]
    real = ScanPredictor.predict
    calls = []

    def interrupted(self, job):
        calls.append(job.scan)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, job)

    monkeypatch.setattr(ScanPredictor, "predict", interrupted)
    assert main(argv) == 130
    assert sorted(p.name for p in out.iterdir()) == ["other.fcsv", "summary.csv"]
    assert [row["status"] for row in _summary(out).values()] == ["ok"]
    monkeypatch.setattr(ScanPredictor, "predict", real)
    assert main(argv) == 0
    assert [row["status"] for row in _summary(out).values()] == ["skipped", "ok"]


def test_bad_model_stops_before_any_scan(archive: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--model", str(tmp_path / "nope"), "--input-dir", str(archive)]
    assert main([*argv, "--out", str(out)]) == 2
    assert not out.exists()
    assert str(tmp_path / "nope") in capsys.readouterr().err
