"""builtin:afids4: four templates, each image with and without skull, one left out for testing.

The MNI152NLin2009cAsym and MNI152NLin6Asym images are the real fetched templates; the SPM12
averages are stand-ins cut from MNI152NLin6Asym at 4 mm (CI cannot reach their upstream
repository; their embedded AFIDs are MNI152Lin's and MNI305's, which lie inside it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import medrl.data.spm12 as spm12
from medrl.data.afids4 import afids4_datalist, brain_mask, template_of
from medrl.data.builtin import MNI6_BRAIN_MASK, MNI6_T1W, afids_landmarks_path
from medrl.data.datalist import load_case
from medrl.errors import InputError
from medrl.io.images import read_image, resample_isotropic, write_image
from medrl.io.landmarks import read_landmarks


@pytest.fixture()
def spm12_stand_ins(builtin_data: Path, tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "canonical"
    folder.mkdir()
    coarse = resample_isotropic(read_image(builtin_data / MNI6_T1W), 4.0)
    pinned = {}
    for name in spm12.SPM12_FILES:
        write_image(coarse, folder / name)
        pinned[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    monkeypatch.setattr(spm12, "SPM12_FILES", pinned)
    monkeypatch.setenv(spm12.LOCAL_ENV, str(folder))
    return folder


def test_the_carried_brain_mask_holds_every_landmark_and_a_brain_sized_volume(
    builtin_data: Path,
) -> None:
    image = read_image(builtin_data / MNI6_T1W)
    points = read_landmarks(afids_landmarks_path("MNI152NLin6Asym")).points_ras
    mask = brain_mask(image, points)
    # on its own template the carried mask is the reference mask (holes filled, so a superset)
    reference = read_image(builtin_data / MNI6_BRAIN_MASK).array > 0.5
    assert (mask & reference).sum() / reference.sum() > 0.99
    litres = mask.sum() * np.prod(image.spacing_mm) / 1e6
    assert 1.2 < litres < 2.2
    inside = image.world_to_index(points).round().astype(int)
    assert mask[inside[:, 2], inside[:, 1], inside[:, 0]].all()


def test_afids4_has_every_image_with_and_without_skull_and_leaves_one_template_out(
    spm12_stand_ins: Path, builtin_data: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"  # the fetched AFIDs templates, the rest fresh
    (cache / "afids").mkdir(parents=True)
    (cache / "afids" / builtin_data.name).symlink_to(builtin_data)
    specs = afids4_datalist(cache=cache)
    assert len(specs) == 14 and {s.split for s in specs} == {"train"}
    assert {template_of(s.case_id) for s in specs} == {
        "MNI152NLin2009cAsym", "MNI152NLin6Asym", "MNI152Lin", "MNI305"
    }  # fmt: skip
    held_out = afids4_datalist("MNI305", cache=cache)
    test = sorted(s.case_id for s in held_out if s.split == "test")
    assert test == ["MNI305_T1w", "MNI305_T1w_brain"]
    # a stripped copy: the same image inside the brain, 0 outside, every landmark kept
    by_id = {s.case_id: s for s in held_out}
    plain = load_case(by_id["MNI152NLin2009cAsym_T2w"])
    stripped = load_case(by_id["MNI152NLin2009cAsym_T2w_brain"])
    kept = stripped.volume.array != 0
    assert 0.1 < kept.mean() < 0.5
    np.testing.assert_array_equal(stripped.volume.array[kept], plain.volume.array[kept])
    assert stripped.landmarks is not None and len(stripped.landmarks.names) == 32
    with pytest.raises(InputError, match="MNI999"):
        afids4_datalist("MNI999", cache=cache)
