"""``medrl register --method agent`` with the shipped rigid-registration model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from _registration_data import TEMPLATE, rigid_matrix_ras
from medrl.baselines.registration import working_image
from medrl.cli import main
from medrl.data.builtin import afids_landmarks
from medrl.io.images import Volume, read_image, write_image
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.registration.transforms import move_header


@pytest.fixture(scope="module")
def t2_to_t1(builtin_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The template's T2w (2 mm) moved 25 degrees and 20 mm against its T1w (2 mm)."""
    folder = tmp_path_factory.mktemp("agent_pair")
    landmarks = afids_landmarks(TEMPLATE)
    fixed, moving = (
        Volume.from_sitk(working_image(read_image(builtin_data / name), 2.0), name)
        for name in (f"tpl-{TEMPLATE}_res-01_T1w.nii.gz", f"tpl-{TEMPLATE}_res-01_T2w.nii.gz")
    )
    matrix = rigid_matrix_ras(25.0, (12.0, -10.0, 12.0))
    moved_points = landmarks.points_ras @ matrix[:3, :3].T + matrix[:3, 3]
    files = {name: folder / f"{name}.nii.gz" for name in ("fixed", "moving")}
    write_image(fixed, files["fixed"])
    write_image(move_header(moving, matrix, "moved"), files["moving"])
    files["fixed_landmarks"] = folder / "fixed.fcsv"
    files["landmarks"] = folder / "moving.fcsv"
    write_landmarks(landmarks, files["fixed_landmarks"])
    write_landmarks(Landmarks(landmarks.names, moved_points), files["landmarks"])
    return files


def _register(method: str, files: dict[str, Path], out: Path) -> int:
    """``medrl register`` of the pair ``files`` (with both images' landmarks) into ``out``."""
    argv = ["register", "--method", method, "--out", str(out), "--no-report"]
    for key in ("fixed", "moving", "landmarks", "fixed_landmarks"):
        argv += [f"--{key.replace('_', '-')}", str(files[key])]
    return main(argv)


def test_the_shipped_agent_aligns_a_moved_contrast(t2_to_t1: dict[str, Path], tmp_path) -> None:
    out = tmp_path / "out"
    assert _register("agent", t2_to_t1, out) == 0
    record = json.loads((out / "registration.json").read_text())
    tre = record["metrics"]["landmarks"]
    assert tre["tre_before_mm"]["mean"] > 20.0
    assert tre["tre_after_mm"]["mean"] < 3.0
    transform = sitk.ReadTransform(str(out / "transform.tfm"))
    assert transform.GetName() == "Euler3DTransform"


def test_landmarks_method_aligns_the_anatomy_and_refuses_a_scan_without_it(
    t2_to_t1: dict[str, Path], tmp_path
) -> None:
    """--method landmarks: the agent's search, then the robust rigid fit of the AFIDs the
    shipped landmark model finds in both images; a moving image with no brain in it (noise)
    is an error naming it, with no output folder."""
    import numpy as np

    out = tmp_path / "out"
    assert _register("landmarks", t2_to_t1, out) == 0
    record = json.loads((out / "registration.json").read_text())
    assert record["method"] == "landmarks"
    assert record["details"]["landmarks"] == 32
    tre = record["metrics"]["landmarks"]
    assert tre["tre_before_mm"]["mean"] > 20.0
    assert tre["tre_after_mm"]["mean"] < 2.0
    assert sitk.ReadTransform(str(out / "transform.tfm")).GetName() == "Euler3DTransform"
    # the shipped model reads mirror images (search.mirror); the registration does not, unless
    # asked: --landmark-mirror
    assert record["details"]["landmark_mirror"] is False
    mirrored = tmp_path / "mirrored"
    argv = ["register", "--method", "landmarks", "--landmark-mirror", "--out", str(mirrored),
            "--no-report", "--fixed", str(t2_to_t1["fixed"]), "--moving", str(t2_to_t1["moving"]),
            "--landmarks", str(t2_to_t1["landmarks"]),
            "--fixed-landmarks", str(t2_to_t1["fixed_landmarks"])]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((mirrored / "registration.json").read_text())
    assert record["details"]["landmark_mirror"] is True
    assert record["metrics"]["landmarks"]["tre_after_mm"]["mean"] < 2.0
    plain = sitk.ReadTransform(str(out / "transform.tfm")).GetParameters()
    read_both = sitk.ReadTransform(str(mirrored / "transform.tfm")).GetParameters()
    assert max(abs(a - b) for a, b in zip(plain, read_both, strict=True)) > 1e-4

    noise = tmp_path / "noise.nii.gz"
    fixed = read_image(t2_to_t1["fixed"])
    rng = np.random.default_rng(0)
    array = rng.random(fixed.array.shape).astype(np.float32)
    write_image(Volume(array, fixed.spacing_mm, fixed.origin_lps, fixed.direction_lps), noise)
    refused = tmp_path / "refused"
    argv = ["register", "--method", "landmarks", "--fixed", str(t2_to_t1["fixed"]),
            "--moving", str(noise), "--out", str(refused), "--no-report"]  # fmt: skip
    assert main(argv) != 0
    assert not refused.exists()
