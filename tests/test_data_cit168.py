"""Tests for medrl.data.cit168: the embedded CIT168 atlas, its names, boxes and built-in cases."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medrl.data import cit168
from medrl.data.cit168 import (
    CIT168_NAMES,
    cit168_label_map,
    cit168_label_map_path,
    cit168_names,
    cit168_names_path,
    is_cit168_label_map,
)
from medrl.data.datalist import load_case
from medrl.data.label_maps import read_label_names
from medrl.errors import InputError
from medrl.geometry.boxes import boxes_from_label_map


def test_names() -> None:
    names = cit168_names()
    assert list(names) == list(range(1, 33))
    assert names[1] == "L Putamen" and names[2] == "R Putamen"
    assert names[32] == "R Subthalamic Nucleus"
    assert names[17] == "L Substantia-Nigra-pars-reticulata"  # trailing space stripped
    assert tuple(names.values()) == CIT168_NAMES
    assert all(name == name.strip() for name in CIT168_NAMES)
    assert all(name.startswith(("L ", "R ")) for name in CIT168_NAMES)
    # The names file is in the datalist's label_names format.
    assert read_label_names(cit168_names_path()) == names


def test_label_map_geometry_and_values() -> None:
    labels = cit168_label_map()
    assert labels.shape_xyz == (79, 69, 54)
    np.testing.assert_allclose(labels.spacing_mm, 1.0)
    np.testing.assert_allclose(labels.index_to_world([0, 0, 0], "RAS")[0], [-39.0, -40.0, -23.0])
    values, counts = np.unique(labels.array, return_counts=True)
    assert values.tolist() == list(range(33))
    assert counts[1] == 7810 and counts[21] == 44  # L putamen, L ventral tegmental area


def test_boxes_are_lateralised_and_mirror_ish() -> None:
    names, boxes = boxes_from_label_map(cit168_label_map(), cit168_names())
    assert names == CIT168_NAMES
    left, right = boxes[0::2], boxes[1::2]
    assert np.all(left[:, 0] < 0) and np.all(right[:, 0] > 0)  # R < 0 is the left hemisphere
    # Mirror images across the midline, to a few mm: R centres opposite, A/S centres and sizes
    # alike.
    np.testing.assert_allclose(left[:, 0], -right[:, 0], atol=1.5)
    np.testing.assert_allclose(left[:, 1:3], right[:, 1:3], atol=2.5)
    np.testing.assert_allclose(left[:, 3:], right[:, 3:], atol=3.0)
    putamen = boxes[0]
    np.testing.assert_allclose(putamen, [-24.5, -2.0, 0.0, 22.0, 45.0, 33.0])
    assert np.all(boxes[:, 3:] >= 4.0) and np.all(boxes[:, 3:] <= 64.0)


def test_corrupt_embedded_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for original in (cit168_label_map_path(), cit168_names_path()):
        copy = tmp_path / original.name
        shutil.copyfile(original, copy)
    names = tmp_path / cit168.CIT168_NAMES_FILE
    names.write_text(names.read_text().replace("Putamen", "Putamem"))
    monkeypatch.setattr(cit168, "_resource_path", lambda filename: tmp_path / filename)
    cit168_label_map()  # the untouched copy is fine
    with pytest.raises(InputError, match="corrupt or was modified") as info:
        cit168_names()
    assert info.value.path == str(names)


def test_is_cit168_label_map(tmp_path: Path) -> None:
    assert is_cit168_label_map(cit168_label_map_path())
    copy = shutil.copyfile(cit168_label_map_path(), tmp_path / "atlas.nii.gz")
    assert is_cit168_label_map(copy)
    assert not is_cit168_label_map(cit168_names_path())
    assert not is_cit168_label_map(tmp_path / "missing.nii.gz")


def test_attribution_lists_the_embedded_files() -> None:
    folder = cit168_label_map_path().parent
    text = (folder / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in text and "Pauli" in text and "180063" in text
    assert "f6f98294c1fa89a3a32e8a44eab92368374150a0" in text
    pattern = re.compile(r"^([0-9a-f]{64})  (\S+)$", re.MULTILINE)
    listed = {name: sha for sha, name in pattern.findall(text)}
    assert set(listed) == {cit168.CIT168_LABEL_MAP_FILE, cit168.CIT168_NAMES_FILE}
    for name, sha in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha


def test_builtin_cases_carry_the_atlas(builtin_data) -> None:
    """The built-in cases (templates fetched by the session fixture) carry the atlas."""
    from medrl.data.builtin import afids_datalist

    specs = afids_datalist()
    assert all(spec.labels == cit168_label_map_path() for spec in specs)
    for spec in specs:
        case = load_case(spec)
        assert case.labels is not None and case.label_names == cit168_names()
        names, boxes = boxes_from_label_map(case.labels, case.label_names)
        assert len(names) == 32
        assert np.all(case.volume.contains_ras(boxes[:, :3])), spec.case_id
