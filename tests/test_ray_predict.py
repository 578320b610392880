"""Prediction with Ray Data on a small local Ray cluster (2 CPUs on this machine)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import medrl
from _synthetic import BLOB_NAMES, blob_volume
from medrl.agents.checkpoint import build_network, save_model_files
from medrl.cli import main
from medrl.config import load_config
from medrl.errors import MedrlError
from medrl.io.images import write_image
from medrl.io.landmarks import read_landmarks
from medrl.predict import ScanPredictor
from medrl.scan_jobs import jobs_from_folder

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

SMOKE = Path(medrl.__file__).parent / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU Ray cluster (workers inherit this process's environment)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["scan"]: row for row in csv.DictReader(handle)}


def test_ray_prediction_matches_local_and_skips_done_scans(cluster, tmp_path: Path) -> None:
    from medrl.distributed.ray_predict import predict_with_ray

    torch.manual_seed(0)
    config = load_config(SMOKE)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    network = build_network(config, len(BLOB_NAMES))
    save_model_files(model_dir, network, config, BLOB_NAMES, ("a", "b", "c"), {})
    scans = tmp_path / "scans"
    for index in range(3):
        volume, _ = blob_volume(shape_zyx=(32, 32, 32), spacing_mm=(2.0, 2.0, 2.0), seed=index)
        write_image(volume, scans / f"scan{index}.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"
    jobs = jobs_from_folder(scans, out)

    with pytest.raises(MedrlError, match="1 of 4 scans failed"):
        predict_with_ray(jobs, out, model_dir, workers=2)
    summary = _summary(out)
    assert [summary[k]["status"] for k in sorted(summary)] == ["failed", "ok", "ok", "ok"]
    assert "broken.nii.gz" in summary["broken.nii.gz"]["error"]

    # The Ray workers wrote what this process would write.
    local = ScanPredictor(model_dir)
    for job in jobs[1:]:
        expected = local.predict_landmarks(job)
        found = read_landmarks(job.output)
        assert found.names == BLOB_NAMES
        np.testing.assert_allclose(found.points_ras, expected.points_ras, atol=1e-3)

    # A rerun skips the scans that are done (nothing is sent to the cluster).
    (scans / "broken.nii.gz").unlink()
    jobs = jobs_from_folder(scans, out)
    rows = predict_with_ray(jobs, out, model_dir, workers=2)
    assert [row["status"] for row in rows] == ["skipped"] * 3

    # The command line reaches the same code (here: everything is done already).
    argv = ["predict", "--ray", "--model", str(model_dir), "--input-dir", str(scans)]
    assert main([*argv, "--out", str(out)]) == 0
    assert [row["status"] for row in _summary(out).values()] == ["skipped"] * 3
