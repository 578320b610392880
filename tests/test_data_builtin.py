"""Tests for medrl.data.builtin: pinned-wheel fetch into the cache, embedded AFIDs, datalist.

Fetch tests use small fake wheels (zip files with the pinned member names holding tiny NIfTI
images) and a monkeypatched sha256 table, so they are fast and need no network. One test checks
the real pinned files, fetched once per session by the ``builtin_data`` fixture (conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medrl.data import builtin, wheels
from medrl.data.builtin import (
    MANIFEST_NAME,
    MNI6_BRAIN_MASK,
    MNI2009C_T1W,
    afids_datalist,
    afids_file,
    afids_landmarks,
    cache_root,
    fetch_afids,
)
from medrl.data.wheels import PinnedWheel, PipDownloadError
from medrl.errors import DataUnavailableError, InputError
from medrl.io.images import read_image

REAL_TABLE = dict(builtin.PINNED_WHEELS)
# Members of the fake wheels that are NOT in the table (must never be extracted).
EXTRA_MEMBERS = {
    "autoafids-0.1.4-py3-none-any.whl": ["autoafids/__init__.py", "autoafids/resources/x.fcsv"],
    "nimare-0.22.1-py3-none-any.whl": ["nimare/__init__.py"],
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tiny_nifti_bytes(tmp_dir: Path, seed: int) -> bytes:
    """A 6x5x4 random NIfTI image, as the bytes of a .nii.gz file."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100.0, 10.0, (4, 5, 6)).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    path = tmp_dir / f"tiny_{seed}.nii.gz"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def _member_bytes(member: str, tmp_dir: Path, seed: int) -> bytes:
    if member.endswith(".nii.gz"):
        return _tiny_nifti_bytes(tmp_dir, seed)
    return f"license text for {member}\n".encode()


def _write_wheel(path: Path, contents: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in contents.items():
            archive.writestr(member, data)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Fake wheels in ``wheels/``, a matching pinned table, an empty cache, pip that fails."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    table: dict[str, PinnedWheel] = {}
    contents_by_wheel: dict[str, dict[str, bytes]] = {}
    seed = 0
    for requirement, real in REAL_TABLE.items():
        contents: dict[str, bytes] = {}
        for member in real.members:
            seed += 1
            contents[member] = _member_bytes(member, scratch, seed)
        for extra in EXTRA_MEMBERS[real.filename]:
            contents[extra] = b"not to be extracted\n"
        _write_wheel(wheel_dir / real.filename, contents)
        table[requirement] = PinnedWheel(
            requirement=requirement,
            filename=real.filename,
            sha256=_sha256((wheel_dir / real.filename).read_bytes()),
            members={m: _sha256(contents[m]) for m in real.members},
        )
        contents_by_wheel[real.filename] = contents
    monkeypatch.setattr(builtin, "PINNED_WHEELS", table)
    for name in ("MEDRL_CACHE", "MEDRL_WHEELS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    pip_calls: list[str] = []

    def failing_pip(requirement: str, dest_dir: Path) -> None:
        pip_calls.append(requirement)
        raise PipDownloadError(
            f"ERROR: No matching distribution found for {requirement} (fake: no network)"
        )

    monkeypatch.setattr(wheels, "pip_download", failing_pip)
    return {
        "wheel_dir": wheel_dir,
        "cache": tmp_path / "cache",
        "table": table,
        "contents": contents_by_wheel,
        "pip_calls": pip_calls,
    }


def _listed_basenames(table: dict[str, PinnedWheel]) -> set[str]:
    return {m.rsplit("/", 1)[-1] for wheel in table.values() for m in wheel.members}


def _all_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_fetch_extracts_only_listed_members(fake: dict) -> None:
    folder = fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"])

    assert folder == fake["cache"] / "afids" / "v1"
    names = {p.name for p in folder.iterdir()}
    assert names == _listed_basenames(fake["table"]) | {MANIFEST_NAME}
    # nothing else anywhere in the cache (no scratch folders, no extra members)
    assert {p.relative_to(folder).as_posix() for p in _all_files(fake["cache"])} == names
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for wheel in fake["table"].values():
        for member, sha in wheel.members.items():
            name = member.rsplit("/", 1)[-1]
            data = (folder / name).read_bytes()
            assert data == fake["contents"][wheel.filename][member]
            assert manifest["files"][name]["sha256"] == sha
            assert manifest["files"][name]["size"] == len(data)
    assert fake["pip_calls"] == []
    volume = read_image(folder / MNI2009C_T1W)
    assert volume.shape_xyz == (6, 5, 4)


def test_fetch_reports_progress_on_stderr_unless_quiet(
    fake: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch_afids(cache=fake["cache"], wheel_dir=fake["wheel_dir"])
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "extracting" in captured.err and "cached in" in captured.err
    fetch_afids(cache=fake["cache"], quiet=True)
    assert capsys.readouterr().err == ""


def test_wheel_sha256_mismatch_leaves_cache_empty(
    fake: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = dict(fake["table"])
    good = table["nimare==0.22.1"]
    table["nimare==0.22.1"] = replace(good, sha256="0" * 64)
    monkeypatch.setattr(builtin, "PINNED_WHEELS", table)

    with pytest.raises(DataUnavailableError) as info:
        fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"])
    message = str(info.value)
    assert "nimare-0.22.1-py3-none-any.whl" in message
    assert "0" * 64 in message and good.sha256 in message  # expected and actual
    assert _all_files(fake["cache"]) == []
    assert not (fake["cache"] / "afids" / "v1").exists()


def test_tampered_member_is_rejected(fake: dict) -> None:
    # Rebuild the autoafids wheel with a changed T1w but keep the wheel sha256 in the table
    # consistent, so that only the member check can catch it.
    wheel = fake["table"]["autoafids==0.1.4"]
    contents = dict(fake["contents"][wheel.filename])
    member = f"autoafids/resources/{MNI2009C_T1W}"
    contents[member] = contents[member] + b"tampered"
    path = fake["wheel_dir"] / wheel.filename
    _write_wheel(path, contents)
    fake["table"]["autoafids==0.1.4"] = replace(wheel, sha256=_sha256(path.read_bytes()))

    with pytest.raises(DataUnavailableError) as info:
        fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"])
    message = str(info.value)
    assert member in message
    assert wheel.members[member] in message and _sha256(contents[member]) in message
    assert _all_files(fake["cache"]) == []


def test_second_fetch_is_offline(fake: dict) -> None:
    first = fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"])
    # no wheels, pip fails: the cache alone must be enough
    for wheel in fake["wheel_dir"].iterdir():
        wheel.unlink()
    second = fetch_afids(cache=fake["cache"], quiet=True)
    assert second == first
    assert fetch_afids(cache=fake["cache"], quiet=True, verify=True) == first
    assert fake["pip_calls"] == []
    assert afids_file(MNI6_BRAIN_MASK, cache=fake["cache"]) == first / MNI6_BRAIN_MASK


def test_verify_detects_same_size_corruption_and_refetches(fake: dict) -> None:
    folder = fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"])
    target = folder / MNI2009C_T1W
    original = target.read_bytes()
    target.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])  # same size

    # the quick check (sizes) does not notice; verify=True does, and pip cannot help
    assert fetch_afids(cache=fake["cache"], quiet=True) == folder
    with pytest.raises(DataUnavailableError, match=r"autoafids==0\.1\.4"):
        fetch_afids(cache=fake["cache"], quiet=True, verify=True)
    assert fake["pip_calls"] == ["autoafids==0.1.4"]  # only the wheel with the bad file
    # with the wheel at hand it repairs the file
    fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"], verify=True)
    assert target.read_bytes() == original


def test_files_already_in_cache_are_reused_without_manifest(fake: dict) -> None:
    folder = fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"])
    (folder / MANIFEST_NAME).unlink()  # e.g. files copied by hand into MEDRL_CACHE
    with pytest.raises(DataUnavailableError, match="medrl data fetch afids"):
        afids_datalist(cache=fake["cache"])
    assert fetch_afids(cache=fake["cache"], quiet=True) == folder  # no wheels, no pip
    assert fake["pip_calls"] == []
    assert (folder / MANIFEST_NAME).is_file()


def test_no_cache_and_pip_failure_explains_the_fix(fake: dict) -> None:
    with pytest.raises(DataUnavailableError) as info:
        fetch_afids(cache=fake["cache"], quiet=True)
    message = str(info.value)
    assert "autoafids==0.1.4" in message
    assert "ERROR: No matching distribution found for autoafids==0.1.4" in message
    assert "MEDRL_CACHE" in message and "MEDRL_WHEELS" in message and "wheel_dir" in message
    assert _all_files(fake["cache"]) == []
    assert not fake["cache"].exists()  # no empty folders left behind either


def test_pip_error_last_line_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
        assert "--only-binary=:all:" in command and command[-1] == "autoafids==0.1.4"
        stderr = "WARNING: Retrying ...\nERROR: Could not find a version\nERROR: last words\n"
        return subprocess.CompletedProcess(command, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(PipDownloadError, match="ERROR: last words"):
        wheels.pip_download("autoafids==0.1.4", tmp_path)


def test_wheels_from_environment_variable(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRL_WHEELS", str(fake["wheel_dir"]))
    monkeypatch.setenv("MEDRL_CACHE", str(fake["cache"]))
    assert cache_root() == fake["cache"]
    folder = fetch_afids(quiet=True)
    assert folder == fake["cache"] / "afids" / "v1"
    assert fake["pip_calls"] == []


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEDRL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "medrl"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "medrl"
    monkeypatch.setenv("MEDRL_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_afids_file_rejects_unknown_names(fake: dict) -> None:
    with pytest.raises(InputError, match=MNI6_BRAIN_MASK):
        afids_file("brain.nii.gz", cache=fake["cache"])
    with pytest.raises(DataUnavailableError, match="medrl data fetch afids"):
        afids_file(MNI6_BRAIN_MASK, cache=fake["cache"])


@pytest.mark.parametrize("template", ["MNI152NLin2009cAsym", "MNI152NLin6Asym"])
def test_afids_landmarks(template: str) -> None:
    landmarks = afids_landmarks(template)
    assert landmarks.names == tuple(str(i) for i in range(1, 33))
    assert landmarks.descriptions[:2] == ("AC", "PC")
    assert landmarks.points_ras.shape == (32, 3)
    # AC is near the MNI origin, PC about 25-28 mm behind it (RAS: y decreases)
    ac, pc = landmarks.points_ras[0], landmarks.points_ras[1]
    assert np.linalg.norm(ac) < 6.0
    assert 20.0 < ac[1] - pc[1] < 32.0


def test_afids_rater_sets_differ_by_about_0_77_mm() -> None:
    default = afids_landmarks("MNI152NLin2009cAsym")
    second = afids_landmarks("MNI152NLin2009cAsym", rater="groundtruth")
    assert second.names == default.names
    distances_mm = np.linalg.norm(default.points_ras - second.points_ras, axis=1)
    assert 0.6 < distances_mm.mean() < 0.9
    assert distances_mm.max() < 3.0


def test_afids_landmarks_unknown_template_or_rater() -> None:
    with pytest.raises(InputError) as info:
        afids_landmarks("Colin27")
    assert "MNI152NLin2009cAsym" in str(info.value) and "MNI152NLin6Asym" in str(info.value)
    with pytest.raises(InputError, match="groundtruth"):
        afids_landmarks("MNI152NLin2009cAsym", rater="rater7")
    with pytest.raises(InputError):
        afids_landmarks("MNI152NLin6Asym", rater="groundtruth")


def test_afids_datalist_before_and_after_fetch(fake: dict) -> None:
    with pytest.raises(DataUnavailableError, match="medrl data fetch afids"):
        afids_datalist(cache=fake["cache"])
    folder = fetch_afids(cache=fake["cache"], quiet=True, wheel_dir=fake["wheel_dir"])
    specs = afids_datalist(cache=fake["cache"])
    assert [(s.case_id, s.split) for s in specs] == [
        ("MNI152NLin2009cAsym_T1w", "train"),
        ("MNI152NLin2009cAsym_T2w", "train"),
        ("MNI152NLin6Asym_T1w", "test"),
    ]
    for spec in specs:
        assert spec.image.parent == folder and spec.image.is_file()
        assert spec.landmarks is not None and spec.landmarks.is_file()
        assert spec.landmarks.name.startswith(f"tpl-{spec.case_id.rsplit('_', 1)[0]}_")


def test_real_data(builtin_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pinned files: exactly those listed, their sha256, landmarks inside the images."""
    monkeypatch.setattr(builtin, "PINNED_WHEELS", REAL_TABLE)

    def no_pip(requirement: str, dest_dir: Path) -> None:
        raise AssertionError("must not download again: the files are cached and intact")

    monkeypatch.setattr(wheels, "pip_download", no_pip)
    folder = builtin_data
    cache = folder.parent.parent
    assert {p.name for p in folder.iterdir()} == _listed_basenames(REAL_TABLE) | {MANIFEST_NAME}
    assert fetch_afids(cache=cache, quiet=True, verify=True) == folder  # re-hashes every file
    for spec in afids_datalist(cache=cache):
        volume = read_image(spec.image)
        template = spec.case_id.rsplit("_", 1)[0]
        landmarks = afids_landmarks(template)
        assert volume.contains_ras(landmarks.points_ras, margin_vox=5.0).all(), spec.case_id
        # 1 mm templates
        np.testing.assert_allclose(volume.spacing_mm, 1.0, atol=1e-3)
