"""Tests for medrl.data.datalist: JSON/CSV datalists, path resolution, errors, load_case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medrl.data.datalist import CaseSpec, load_case, read_datalist, write_datalist
from medrl.errors import InputError

# Image: 10x10x10 voxels of 2 mm, identity direction, origin (0, 0, 0) LPS, so it covers
# LPS x, y, z in [0, 18] mm, i.e. RAS x, y in [-18, 0] and z in [0, 18].
LANDMARKS_RAS = np.array([[-5.0, -6.0, 7.0], [-12.5, -3.0, 14.0]])


def _write_image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(50.0, 5.0, (10, 10, 10)).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _write_fcsv(path: Path, points_ras: np.ndarray, names: list[str]) -> Path:
    lines = [
        "# Markups fiducial file version = 4.6",
        "# CoordinateSystem = 0",
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID",
    ]
    for index, (name, point) in enumerate(zip(names, points_ras, strict=True), start=1):
        x, y, z = point
        lines.append(
            f"vtkMRMLMarkupsFiducialNode_{index},{x},{y},{z},0,0,0,1,1,1,0,{name},d{name},"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "a": _write_image(tmp_path / "data" / "images" / "a.nii.gz", seed=1),
        "b": _write_image(tmp_path / "data" / "images" / "b, with space.nii.gz", seed=2),
        "a_fcsv": _write_fcsv(tmp_path / "data" / "lm" / "a.fcsv", LANDMARKS_RAS, ["p1", "p2"]),
    }


def _cases(files: dict[str, Path]) -> list[CaseSpec]:
    return [
        CaseSpec("case-a", files["a"], files["a_fcsv"], "train", "RAS"),
        CaseSpec("case b", files["b"], None, "test"),
        CaseSpec("case-c", files["a"], files["a_fcsv"], "val"),
    ]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_round_trip(files: dict[str, Path], tmp_path: Path, suffix: str) -> None:
    cases = _cases(files)
    path = tmp_path / "lists" / f"datalist{suffix}"
    write_datalist(cases, path)
    assert read_datalist(path) == cases
    text = path.read_text()
    # written relative to the datalist's folder
    assert "../data/images/a.nii.gz" in text
    assert str(tmp_path) not in text
    # rewriting what was read gives the same file
    write_datalist(read_datalist(path), path)
    assert path.read_text() == text


def test_csv_layout(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "dl.csv"
    write_datalist(_cases(files)[1:], path)  # no coordinate systems: 4 columns
    lines = path.read_text().splitlines()
    assert lines[0] == "id,image,landmarks,split"
    assert lines[1] == 'case b,"data/images/b, with space.nii.gz",,test'


def test_json_layout(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "dl.json"
    write_datalist(_cases(files)[:2], path)
    document = json.loads(path.read_text())
    assert document["cases"][0] == {
        "id": "case-a",
        "image": "data/images/a.nii.gz",
        "landmarks": "data/lm/a.fcsv",
        "split": "train",
        "coordinate_system": "RAS",
    }
    assert "landmarks" not in document["cases"][1]


def test_paths_outside_the_tree_are_written_absolute(
    files: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "dl.json"
    far = CaseSpec("far", Path("/dev/null"), None, "train")  # shares only "/" with tmp_path
    write_datalist([far], path)
    assert json.loads(path.read_text())["cases"][0]["image"] == "/dev/null"
    assert read_datalist(path) == [far]


def test_relative_paths_and_defaults(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / "dl.json").write_text(
        json.dumps(
            {
                "cases": [
                    {"id": "a", "image": "images/a.nii.gz", "landmarks": "lm/a.fcsv"},
                    {"id": "b", "image": "./images/../images/a.nii.gz", "landmarks": None},
                ]
            }
        )
    )
    a, b = read_datalist(folder / "dl.json")
    assert a == CaseSpec("a", files["a"], files["a_fcsv"], "train", None)
    assert b == CaseSpec("b", files["a"], None, "train", None)

    (folder / "dl.csv").write_text("id,image,landmarks\na,images/a.nii.gz,\n")
    (spec,) = read_datalist(folder / "dl.csv")
    assert spec == CaseSpec("a", files["a"], None, "train", None)


def test_coordinate_system_is_normalised(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "data" / "dl.csv"
    path.write_text(
        "id,image,landmarks,split,coordinate_system\na,images/a.nii.gz,lm/a.fcsv,test,lps\n"
    )
    (spec,) = read_datalist(path)
    assert spec.landmarks_coordinate_system == "LPS" and spec.split == "test"


IMAGE = "images/a.nii.gz"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.json", '{"cases": [', "not valid JSON"),
        ("list.json", "[]", "expected a JSON object"),
        ("empty.json", '{"cases": []}', "no cases"),
        (
            "noimage.json",
            '{"cases": [{"id": "x"}]}',
            r"case 1 \(id 'x'\): missing required field 'image'",
        ),
        ("noid.csv", f"image,split\n{IMAGE},train\n", "lacks required column"),
        ("ragged.csv", f"id,image,landmarks,split\na,{IMAGE},,train,extra\n", "line 2"),
        ("quote.csv", f'id,image\n"a,{IMAGE}\n', "CSV"),
        ("unknowncol.csv", f"id,image,landmark\na,{IMAGE},x\n", "unknown column"),
        ("unknownfield.json", '{"cases": [{"id": "a", "image": "i", "lm": 1}]}', "'lm'"),
        ("split.csv", f"id,image,split\na,{IMAGE},training\n", "unknown split 'training'"),
        ("cs.csv", f"id,image,coordinate_system\na,{IMAGE},XYZ\n", "coordinate_system"),
        ("dup.csv", f"id,image\na,{IMAGE}\nb,{IMAGE}\na,{IMAGE}\n", "line 4: duplicate id 'a'"),
        ("dup.json", json.dumps({"cases": [{"id": "a", "image": IMAGE}] * 2}), "case 2"),
        ("noimg.csv", "id,image\na,images/missing.nii.gz\n", "images/missing.nii.gz"),
        ("nolm.csv", f"id,image,landmarks\na,{IMAGE},lm/missing.fcsv\n", "lm/missing.fcsv"),
        ("type.json", '{"cases": [{"id": 3, "image": "i"}]}', "must be a string"),
        ("list.txt", "id,image\n", "unknown datalist format '.txt'"),
    ],
)
def test_errors_name_the_datalist(
    files: dict[str, Path], tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / "data" / name
    path.write_text(content)
    with pytest.raises(InputError, match=expected) as info:
        read_datalist(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_missing_datalist(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(InputError, match="does not exist") as info:
        read_datalist(path)
    assert info.value.path == str(path)


def test_check_files_can_be_skipped(tmp_path: Path) -> None:
    path = tmp_path / "dl.csv"
    path.write_text("id,image\na,later.nii.gz\n")
    (spec,) = read_datalist(path, check_files=False)
    assert spec.image == tmp_path / "later.nii.gz"


def test_write_rejects_bad_cases(files: dict[str, Path], tmp_path: Path) -> None:
    twice = [CaseSpec("a", files["a"], None, "train")] * 2
    with pytest.raises(InputError, match="duplicate id 'a'"):
        write_datalist(twice, tmp_path / "dl.json")
    with pytest.raises(InputError, match="unknown split"):
        write_datalist([CaseSpec("a", files["a"], None, "dev")], tmp_path / "dl.json")
    with pytest.raises(InputError, match="format"):
        write_datalist(twice[:1], tmp_path / "dl.yaml")
    assert not (tmp_path / "dl.json").exists() and not (tmp_path / "dl.yaml").exists()


def test_load_case(files: dict[str, Path]) -> None:
    spec = CaseSpec("case-a", files["a"], files["a_fcsv"], "val")
    case = load_case(spec)
    assert (case.case_id, case.split) == ("case-a", "val")
    assert case.volume.shape_xyz == (10, 10, 10)
    assert case.landmarks is not None
    assert case.landmarks.names == ("p1", "p2")
    np.testing.assert_allclose(case.landmarks.points_ras, LANDMARKS_RAS)

    resampled = load_case(spec, spacing_mm=1.5)
    np.testing.assert_allclose(resampled.volume.spacing_mm, 1.5)
    assert resampled.volume.shape_xyz[0] > 10

    no_landmarks = load_case(CaseSpec("b", files["b"], None, "test"))
    assert no_landmarks.landmarks is None


def test_load_case_uses_the_datalist_coordinate_system(
    files: dict[str, Path], tmp_path: Path
) -> None:
    # A name,x,y,z .csv does not say its frame: the datalist's coordinate_system decides.
    points_lps = LANDMARKS_RAS * np.array([-1.0, -1.0, 1.0])
    rows = [f"p{i},{x},{y},{z}" for i, (x, y, z) in enumerate(points_lps, start=1)]
    (tmp_path / "data" / "lm" / "a_lps.csv").write_text("name,x,y,z\n" + "\n".join(rows) + "\n")
    datalist = tmp_path / "data" / "dl.csv"
    datalist.write_text(
        "id,image,landmarks,split,coordinate_system\na,images/a.nii.gz,lm/a_lps.csv,train,LPS\n"
    )
    (spec,) = read_datalist(datalist)
    case = load_case(spec)
    assert case.landmarks is not None
    np.testing.assert_allclose(case.landmarks.points_ras, LANDMARKS_RAS)


def test_load_case_landmark_outside_image(files: dict[str, Path], tmp_path: Path) -> None:
    outside = np.array([[-5.0, -6.0, 7.0], [40.0, -6.0, 7.0]])  # RAS x = 40 is off the image
    fcsv = _write_fcsv(tmp_path / "out.fcsv", outside, ["inside", "far-right"])
    with pytest.raises(InputError, match="far-right"):
        load_case(CaseSpec("a", files["a"], fcsv, "train"))


def test_load_case_rejects_bad_spacing(files: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="spacing"):
        load_case(CaseSpec("a", files["a"], None, "train"), spacing_mm=0.0)
