"""The SPM12 averages' fetch: taken from a local folder, sha256-checked, cached atomically;
their datalist loads with the embedded AFIDs, which define the planes. The files here are
small stand-ins with their own checksums (CI cannot reach the upstream repository); the real
files' checksums are the pinned ones in ``medrl.data.spm12``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import medrl.data.spm12 as spm12
from _synthetic import blob_volume
from medrl.data.datalist import load_case
from medrl.errors import DataUnavailableError
from medrl.geometry.planes import planes_from_afids
from medrl.io.images import write_image


@pytest.fixture()
def source(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "canonical"
    folder.mkdir()
    pinned = {}
    for seed, name in enumerate(spm12.SPM12_FILES):
        volume, _ = blob_volume(shape_zyx=(20, 20, 20), spacing_mm=(10.0, 10.0, 10.0),
                                seed=seed)  # fmt: skip
        write_image(volume, folder / name)
        pinned[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    monkeypatch.setattr(spm12, "SPM12_FILES", pinned)
    return folder


def test_fetch_from_a_local_folder_and_load_the_cases(source: Path, tmp_path: Path) -> None:
    folder = spm12.fetch_spm12(source, cache=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(spm12.SPM12_FILES)
    # cached: a second fetch needs no source at all
    assert spm12.fetch_spm12("/nonexistent", cache=tmp_path) == folder
    specs = spm12.spm12_datalist(cache=tmp_path)
    assert [s.case_id for s in specs] == list(spm12.SPM12_CASES)
    case = load_case(specs[-1])  # MNI305, with its embedded AFIDs
    assert case.landmarks is not None and len(case.landmarks.names) == 32
    msp, acpc = planes_from_afids(case.landmarks.points_ras, case.landmarks.names)
    assert abs(msp[3]) > 0.99 and acpc[5] > 0.9  # the MSP faces R, the AC-PC plane S
    # MNI305's AC-PC line is not MNI152NLin2009cAsym's: an anatomy of its own
    assert np.all(np.isfinite(acpc))


def test_a_corrupt_file_is_refused_and_nothing_is_cached(source: Path, tmp_path: Path) -> None:
    data = bytearray((source / "avg305T1.nii").read_bytes())
    data[-10] ^= 0xFF
    (source / "avg305T1.nii").write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(DataUnavailableError, match=r"avg305T1\.nii .* has sha256"):
        spm12.fetch_spm12(source, cache=cache)
    left = sorted(p.name for p in (cache / "spm12" / "v1").iterdir())
    assert "avg305T1.nii" not in left and not any(n.startswith(".medrl") for n in left)
    (source / "avg152PD.nii").unlink()
    with pytest.raises(DataUnavailableError, match=r"has no avg152PD\.nii"):
        spm12.fetch_spm12(source, cache=tmp_path / "cache2")
