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


# --------------------------------------------------------------------------------------
# label maps and label names


def _write_labels(path: Path, array_zyx: np.ndarray, origin_lps=(0.0, 0.0, 0.0)) -> Path:
    """A label map on a 2 mm identity grid (like the ``files`` images by default)."""
    array = np.asarray(array_zyx)
    image = sitk.GetImageFromArray(array.astype(np.uint8 if array.dtype.kind in "iub" else "f4"))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin(origin_lps)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _two_structures() -> np.ndarray:
    array = np.zeros((10, 10, 10), np.uint8)
    array[2:4, 2:5, 3:6] = 1
    array[6:8, 6:8, 6:8] = 2
    return array


@pytest.fixture
def label_files(files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "data" / "labels"
    folder.mkdir(parents=True)
    (folder / "names.tsv").write_text("# structures\nvalue\tname\n1\tleft thing\n2\tright thing \n")
    (folder / "names.json").write_text(json.dumps({"0": "background", "2": "b", "1": "a"}))
    return {
        **files,
        "labels": _write_labels(folder / "a_dseg.nii.gz", _two_structures()),
        "tsv": folder / "names.tsv",
        "json": folder / "names.json",
    }


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_label_fields_round_trip(label_files: dict[str, Path], tmp_path: Path, suffix: str) -> None:
    f = label_files
    cases = [
        CaseSpec("a", f["a"], f["a_fcsv"], "train", None, f["labels"], f["tsv"]),
        CaseSpec("b", f["b"], None, "test", "LPS", f["labels"]),
        CaseSpec("c", f["a"], None, "val"),
    ]
    path = tmp_path / "lists" / f"datalist{suffix}"
    write_datalist(cases, path)
    assert read_datalist(path) == cases
    text = path.read_text()
    assert "../data/labels/a_dseg.nii.gz" in text and "../data/labels/names.tsv" in text
    if suffix == ".csv":
        assert (
            text.splitlines()[0] == "id,image,landmarks,split,coordinate_system,labels,label_names"
        )
    else:
        records = json.loads(text)["cases"]
        assert records[1]["labels"] == "../data/labels/a_dseg.nii.gz"
        assert "label_names" not in records[1] and "labels" not in records[2]


def test_load_case_with_labels(label_files: dict[str, Path]) -> None:
    f = label_files
    case = load_case(CaseSpec("a", f["a"], None, "train", labels=f["labels"], label_names=f["tsv"]))
    assert case.labels is not None and case.labels.shape_xyz == (10, 10, 10)
    assert case.label_names == {1: "left thing", 2: "right thing"}  # stripped
    np.testing.assert_array_equal(case.labels.array, _two_structures())
    json_case = load_case(
        CaseSpec("a", f["a"], None, "train", labels=f["labels"], label_names=f["json"]),
        spacing_mm=3.0,  # the image is resampled, the label map keeps its grid
    )
    assert json_case.label_names == {1: "a", 2: "b"}  # value 0 (background) is ignored
    assert json_case.volume.spacing_mm[0] == 3.0 and json_case.labels is not None
    assert json_case.labels.spacing_mm[0] == 2.0
    plain = load_case(CaseSpec("a", f["a"], None, "train"))
    assert plain.labels is None and plain.label_names is None


def test_cit168_label_map_needs_no_names(label_files: dict[str, Path], tmp_path: Path) -> None:
    from medrl.data.cit168 import cit168_label_map_path, cit168_names

    # A copy of the embedded atlas is recognised by content; the test image (LPS 0..18 mm)
    # overlaps its world box.
    copy = tmp_path / "atlas.nii.gz"
    copy.write_bytes(cit168_label_map_path().read_bytes())
    case = load_case(CaseSpec("a", label_files["a"], None, "train", labels=copy))
    assert case.label_names == cit168_names()


def _expect(spec: CaseSpec, message: str, path: Path) -> None:
    with pytest.raises(InputError, match=message) as info:
        load_case(spec)
    assert info.value.path == str(path)


def test_label_map_errors_name_the_file(label_files: dict[str, Path], tmp_path: Path) -> None:
    f = label_files
    image, tsv, good = f["a"], f["tsv"], f["labels"]

    def spec(labels: Path, names: Path | None = tsv) -> CaseSpec:
        return CaseSpec("a", image, None, "train", labels=labels, label_names=names)

    fractional = _write_labels(tmp_path / "frac.nii.gz", _two_structures() * 0.5)
    _expect(spec(fractional), "non-integer values", fractional)
    negative = _write_labels(tmp_path / "neg.nii.gz", _two_structures().astype(float) - 1.0)
    _expect(spec(negative), "negative values", negative)
    far = _write_labels(tmp_path / "far.nii.gz", _two_structures(), origin_lps=(300.0, 0.0, 0.0))
    _expect(spec(far), "lie outside the image", far)
    # Only the structures need to overlap: here the grid starts outside the image but its
    # structures (voxels 3..7 along x: centres at LPS -8 .. 0 mm) reach into it (LPS >= -1).
    edge = _write_labels(tmp_path / "edge.nii.gz", _two_structures(), origin_lps=(-14.0, 0, 0))
    assert load_case(spec(edge)).labels is not None
    empty = _write_labels(tmp_path / "empty.nii.gz", np.zeros((4, 4, 4), np.uint8))
    _expect(spec(empty), "cannot use as a label map", empty)
    text = tmp_path / "text.nii.gz"
    text.write_text("not an image")
    _expect(spec(text), "cannot use as a label map", text)
    _expect(spec(tmp_path / "gone.nii.gz"), "not found", tmp_path / "gone.nii.gz")
    _expect(spec(good, None), "needs a label names file", good)

    one_name = tmp_path / "one.tsv"
    one_name.write_text("1\tonly\n")
    _expect(spec(good, one_name), "have no name: 2", one_name)
    for name, content, message in [
        ("list.json", "[1, 2]", "expected a JSON object"),
        ("bad.json", '{"1": ', "not valid JSON"),
        ("key.json", '{"one": "a"}', "key 'one': label value 'one' is not an integer"),
        ("blank.json", '{"1": " "}', "label 1 has no name"),
        ("cols.tsv", "1\ta\n2 b\n", "line 2: expected 'value<TAB>name'"),
        ("neg.tsv", "-1\ta\n", "negative"),
        (
            "dupname.tsv",
            "1\ta\n2\ta\n",
            "line 2: duplicate structure name 'a' \\(also at line 1\\)",
        ),
        ("dupvalue.tsv", "1\ta\n1\tb\n", "label value 1 is named twice"),
        ("none.tsv", "# nothing\n", "names no label values"),
        ("names.yaml", "1: a\n", "unknown label names format"),
    ]:
        names = tmp_path / name
        names.write_text(content)
        _expect(spec(good, names), message, names)


def test_datalist_label_field_errors(label_files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "data"
    cases = [
        ("orphan.json", {"id": "a", "image": IMAGE, "label_names": "labels/names.tsv"}, "without"),
        ("nolabels.json", {"id": "a", "image": IMAGE, "labels": "labels/x.nii.gz"}, "x.nii.gz"),
        (
            "nonames.json",
            {"id": "a", "image": IMAGE, "labels": "labels/a_dseg.nii.gz", "label_names": "n.tsv"},
            "label names file .*n.tsv does not exist",
        ),
    ]
    for name, record, message in cases:
        path = folder / name
        path.write_text(json.dumps({"cases": [record]}))
        with pytest.raises(InputError, match=message) as info:
            read_datalist(path)
        assert info.value.path == str(path)
    csv_path = folder / "labels.csv"
    csv_path.write_text(f"id,image,labels,label_names\na,{IMAGE},labels/a_dseg.nii.gz,\n")
    (spec,) = read_datalist(csv_path)
    assert spec.labels == label_files["labels"] and spec.label_names is None
    with pytest.raises(InputError, match="without labels"):
        write_datalist(
            [CaseSpec("a", label_files["a"], None, "train", label_names=csv_path)],
            folder / "w.json",
        )
