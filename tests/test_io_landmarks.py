"""Tests for medrl.io.landmarks: exact round trips, Slicer files, frames, bad inputs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from _synthetic import oblique_volume
from medrl.errors import InputError
from medrl.io.landmarks import (
    Landmarks,
    check_landmarks_inside,
    read_landmarks,
    write_landmarks,
)

AFIDS_FCSV = Path(
    str(resources.files("medrl") / "data/resources/afids/tpl-MNI152NLin2009cAsym_afids.fcsv")
)
FCSV_HEADER = (
    "# Markups fiducial file version = 4.6\n"
    "# CoordinateSystem = {system}\n"
    "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
)


def awkward_landmarks(with_descriptions: bool = True) -> Landmarks:
    """Points whose decimal forms are long, tiny, huge or negative zero; names with commas."""
    points = np.array(
        [
            [1.0 / 3.0, -2.0 / 7.0, np.pi * 1e5],
            [-0.0, 1e-300, -123456.78901234567],
            [np.nextafter(1.0, 2.0), 0.1 + 0.2, -5e-324],
        ]
    )
    names = ("AC", 'L, "quoted" name', "3")
    descriptions = ("anterior commissure", "has, commas", "") if with_descriptions else ()
    return Landmarks(names, points, descriptions)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".fcsv", ".mrk.json", ".csv"])
@pytest.mark.parametrize("system", ["RAS", "LPS"])
def test_round_trip_is_bitwise_exact(tmp_path: Path, suffix: str, system: str) -> None:
    original = awkward_landmarks()
    path = tmp_path / f"points{suffix}"
    write_landmarks(original, path, coordinate_system=system)
    loaded = read_landmarks(path)
    assert loaded.names == original.names
    assert loaded.descriptions == original.descriptions
    assert loaded.points_ras.dtype == np.float64
    assert loaded.points_ras.tobytes() == original.points_ras.tobytes()  # bitwise, -0.0 too
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


@pytest.mark.parametrize("suffix", [".fcsv", ".mrk.json", ".csv"])
def test_lps_file_holds_negated_coordinates(tmp_path: Path, suffix: str) -> None:
    original = awkward_landmarks()
    write_landmarks(original, tmp_path / f"ras{suffix}", coordinate_system="RAS")
    write_landmarks(original, tmp_path / f"lps{suffix}", coordinate_system="LPS")
    text_lps = (tmp_path / f"lps{suffix}").read_text()
    assert "LPS" in text_lps
    assert repr(-1.0 / 3.0) in text_lps and repr(2.0 / 7.0) in text_lps
    assert "RAS" in (tmp_path / f"ras{suffix}").read_text()
    # Reading the LPS file while insisting on RAS is a contradiction.
    with pytest.raises(InputError, match="LPS"):
        read_landmarks(tmp_path / f"lps{suffix}", coordinate_system="RAS")


def test_csv_without_descriptions_round_trip(tmp_path: Path) -> None:
    original = awkward_landmarks(with_descriptions=False)
    write_landmarks(original, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().splitlines()[1] == "name,x,y,z"
    loaded = read_landmarks(tmp_path / "p.csv")
    assert loaded.descriptions == ()
    np.testing.assert_array_equal(loaded.points_ras, original.points_ras)


# ------------------------------------------------------------------------ fcsv
def test_reads_packaged_afids_fcsv() -> None:
    landmarks = read_landmarks(AFIDS_FCSV)
    assert len(landmarks) == 32
    assert landmarks.names[0] == "1" and landmarks.descriptions[0] == "AC"
    assert landmarks.names[-1] == "32"
    np.testing.assert_allclose(landmarks.points_ras[0], [-0.231, 2.93275, -4.899], atol=1e-12)
    np.testing.assert_allclose(landmarks.points("LPS")[0], [0.231, -2.93275, -4.899])


@pytest.mark.parametrize("system_value", ["1", "LPS"])
def test_lps_fcsv_negates_x_and_y(tmp_path: Path, system_value: str) -> None:
    body = "vtkMRMLMarkupsFiducialNode_1,1.5,-2.25,3.0,0,0,0,1,1,1,0,P1,first,\n"
    ras = read_landmarks(_write(tmp_path / "ras.fcsv", FCSV_HEADER.format(system="0") + body))
    lps_path = _write(tmp_path / "lps.fcsv", FCSV_HEADER.format(system=system_value) + body)
    lps = read_landmarks(lps_path)
    np.testing.assert_array_equal(ras.points_ras, [[1.5, -2.25, 3.0]])
    np.testing.assert_array_equal(lps.points_ras, [[-1.5, 2.25, 3.0]])
    assert lps.names == ("P1",) and lps.descriptions == ("first",)


def test_fcsv_uses_columns_line_and_quoted_labels(tmp_path: Path) -> None:
    text = (
        "# Markups fiducial file version = 4.11\n"
        "# CoordinateSystem = RAS\n"
        "# columns = label,desc,x,y,z\n"
        '"Left, lateral",a note,1,2,3\n'
        "\n"
        "B,,4,5,6\n"
    )
    landmarks = read_landmarks(_write(tmp_path / "p.fcsv", text))
    assert landmarks.names == ("Left, lateral", "B")
    assert landmarks.descriptions == ("a note", "")
    np.testing.assert_array_equal(landmarks.points_ras, [[1, 2, 3], [4, 5, 6]])


def test_fcsv_without_coordinate_system_needs_argument(tmp_path: Path) -> None:
    path = _write(tmp_path / "nosys.fcsv", "vtkNode_1,1,2,3,0,0,0,1,1,1,0,A,,\n")
    with pytest.raises(InputError, match="coordinate system unknown") as info:
        read_landmarks(path)
    assert "nosys.fcsv" in str(info.value)
    np.testing.assert_array_equal(read_landmarks(path, "LPS").points_ras, [[-1, -2, 3]])
    np.testing.assert_array_equal(read_landmarks(path, "ras").points_ras, [[1, 2, 3]])


# -------------------------------------------------------------------- mrk.json
def _markup(system: str | None, points: list[dict], kind: str = "Fiducial") -> dict:
    markup: dict = {"type": kind, "coordinateUnits": "mm", "controlPoints": points}
    if system is not None:
        markup["coordinateSystem"] = system
    return markup


def _point(label: str, position: list, status: str = "defined") -> dict:
    return {"id": label, "label": label, "position": position, "positionStatus": status}


def test_mrk_json_reads_all_fiducials_and_skips_undefined(tmp_path: Path) -> None:
    document = {
        "@schema": "https://example/markups-schema-v1.0.3.json#",
        "markups": [
            _markup("LPS", [_point("A", [1.0, 2.0, 3.0]), _point("U", [0, 0, 0], "undefined")]),
            _markup("RAS", [_point("L1", [0, 0, 0])], kind="Line"),
            _markup("RAS", [_point("B", [4.0, 5.0, 6.0])]),
        ],
    }
    path = _write(tmp_path / "p.mrk.json", json.dumps(document))
    with pytest.warns(UserWarning, match="undefined"):
        landmarks = read_landmarks(path)
    assert landmarks.names == ("A", "B")
    np.testing.assert_array_equal(landmarks.points_ras, [[-1, -2, 3], [4, 5, 6]])


def test_mrk_json_written_follows_schema_shape(tmp_path: Path) -> None:
    path = tmp_path / "p.mrk.json"
    write_landmarks(awkward_landmarks(), path, coordinate_system="LPS")
    document = json.loads(path.read_text())
    assert "markups-schema-v1.0.3" in document["@schema"]
    (markup,) = document["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    assert markup["controlPoints"][0]["label"] == "AC"
    assert markup["controlPoints"][0]["position"][0] == -1.0 / 3.0


# ------------------------------------------------------------------------- csv
def test_csv_coordinate_system_from_comment_or_argument(tmp_path: Path) -> None:
    body = "name,x,y,z,description\nA,1,2,3,first\n"
    declared = _write(tmp_path / "declared.csv", "# coordinate_system = LPS\n" + body)
    np.testing.assert_array_equal(read_landmarks(declared).points_ras, [[-1, -2, 3]])
    np.testing.assert_array_equal(read_landmarks(declared, "LPS").points_ras, [[-1, -2, 3]])
    with pytest.raises(InputError, match="but RAS was requested"):
        read_landmarks(declared, "RAS")
    plain = _write(tmp_path / "plain.csv", body)
    assert read_landmarks(plain, "RAS").descriptions == ("first",)
    with pytest.raises(InputError, match="coordinate system unknown") as info:
        read_landmarks(plain)
    assert "plain.csv" in str(info.value)


# ------------------------------------------------------------------- bad inputs
ROW = "vtkNode_{n},{x},2,3,0,0,0,1,1,1,0,{label},,\n"
BAD_FILES: dict[str, tuple[str, str, str]] = {
    # case: (file name, content, text the problem must contain)
    "unknown system": ("sys.fcsv", FCSV_HEADER.format(system="IJK") + ROW, "'IJK'"),
    "empty label": ("nolabel.fcsv", FCSV_HEADER.format(system="0") + ROW, "line 4"),
    "duplicate": (
        "dup.fcsv",
        FCSV_HEADER.format(system="0") + ROW.replace("{label}", "A") * 2,
        "duplicate landmark name 'A'",
    ),
    "non-numeric": (
        "text.fcsv",
        FCSV_HEADER.format(system="0") + ROW.replace("{x}", "abc").replace("{label}", "A"),
        "line 4: x coordinate 'abc' is not a number",
    ),
    "nan": (
        "nan.csv",
        "# coordinate_system = RAS\nname,x,y,z\nA,1,nan,3\n",
        "line 3: y coordinate 'nan' is not finite",
    ),
    "empty": ("empty.fcsv", "", "empty"),
    "blank": ("blank.csv", "\n  \n", "empty"),
    "header only": ("head.fcsv", FCSV_HEADER.format(system="RAS"), "no landmarks"),
    "short row": ("short.fcsv", FCSV_HEADER.format(system="RAS") + "id,1,2\n", "line 4"),
    "csv header": ("nohead.csv", "# coordinate_system = RAS\nA,1,2,3\n", "header row"),
    "csv csv empty name": (
        "noname.csv",
        "# coordinate_system = RAS\nname,x,y,z\n,1,2,3\n",
        "line 3: landmark has no name",
    ),
    "bad json": ("bad.mrk.json", "{not json", "not valid JSON"),
    "json no markups": ("nomk.mrk.json", '{"a": 1}', "no 'markups'"),
    "json system": (
        "sys.mrk.json",
        json.dumps({"markups": [_markup("XYZ", [_point("A", [1, 2, 3])])]}),
        "'XYZ'",
    ),
    "json position": (
        "pos.mrk.json",
        json.dumps({"markups": [_markup("RAS", [_point("A", ["1", 2, 3])])]}),
        "non-numeric",
    ),
    "json duplicate": (
        "dup.mrk.json",
        json.dumps({"markups": [_markup("RAS", [_point("A", [1, 2, 3])] * 2)]}),
        "duplicate",
    ),
    "json no fiducials": (
        "line.mrk.json",
        json.dumps({"markups": [_markup("RAS", [_point("A", [1, 2, 3])], kind="Line")]}),
        "no Fiducial",
    ),
    "unknown suffix": ("points.txt", "A,1,2,3\n", "unsupported"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_input_error_naming_the_file(tmp_path: Path, case: str) -> None:
    name, template, expected = BAD_FILES[case]
    text = template.replace("{n}", "1").replace("{x}", "1").replace("{label}", "")
    path = _write(tmp_path / name, text)
    with pytest.raises(InputError) as info:
        read_landmarks(path)
    assert name in str(info.value)
    assert expected in info.value.problem, info.value.problem


def test_missing_file_and_bad_argument(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gone\.fcsv.*not found"):
        read_landmarks(tmp_path / "gone.fcsv")
    path = _write(tmp_path / "p.csv", "name,x,y,z\nA,1,2,3\n")
    with pytest.raises(InputError, match="'RAS2'"):
        read_landmarks(path, coordinate_system="RAS2")
    with pytest.raises(InputError, match=r"out\.xml"):
        write_landmarks(awkward_landmarks(), tmp_path / "out.xml")
    with pytest.raises(InputError, match="'IJK'"):
        write_landmarks(awkward_landmarks(), tmp_path / "out.fcsv", coordinate_system="IJK")
    assert not (tmp_path / "out.xml").exists() and not (tmp_path / "out.fcsv").exists()


# ---------------------------------------------------------------- Landmarks class
def test_landmarks_validation() -> None:
    with pytest.raises(InputError, match="shape"):
        Landmarks(("A",), np.zeros(3))
    with pytest.raises(InputError, match="non-finite"):
        Landmarks(("A", "B"), [[0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(InputError, match="duplicate"):
        Landmarks(("A", "A"), np.zeros((2, 3)))
    with pytest.raises(InputError, match="no name"):
        Landmarks(("A", " "), np.zeros((2, 3)))
    with pytest.raises(InputError, match="2 names for 3"):
        Landmarks(("A", "B"), np.zeros((3, 3)))
    with pytest.raises(InputError, match="descriptions"):
        Landmarks(("A", "B"), np.zeros((2, 3)), ("x",))


def test_landmarks_points_subset_and_immutability() -> None:
    landmarks = awkward_landmarks()
    np.testing.assert_array_equal(
        landmarks.points("LPS"), landmarks.points_ras * np.array([-1, -1, 1])
    )
    sub = landmarks.subset(["3", "AC"])
    assert sub.names == ("3", "AC") and len(sub) == 2
    assert sub.descriptions == ("", "anterior commissure")
    np.testing.assert_array_equal(sub.points_ras, landmarks.points_ras[[2, 0]])
    with pytest.raises(InputError, match="nope"):
        landmarks.subset(["AC", "nope"])
    with pytest.raises(ValueError):
        landmarks.points_ras[0, 0] = 1.0
    copy = landmarks.points()
    copy[0, 0] = 99.0  # a copy, so the landmarks are unchanged
    assert landmarks.points_ras[0, 0] == 1.0 / 3.0


def test_check_landmarks_inside(tmp_path: Path) -> None:
    volume = oblique_volume()
    inside_ras = volume.index_to_world([[1, 1, 1], [14.4, 12.4, 8.4]])
    outside_ras = volume.index_to_world([[8, 7, -1.0]])[0]
    ok = Landmarks(("a", "b"), inside_ras)
    check_landmarks_inside(ok, volume, tmp_path / "ok.fcsv")
    bad = Landmarks(("a", "far", "b"), np.vstack([inside_ras[0], outside_ras, inside_ras[1]]))
    with pytest.raises(InputError) as info:
        check_landmarks_inside(bad, volume, tmp_path / "bad.fcsv")
    message = str(info.value)
    assert "bad.fcsv" in message and "'far'" in message
    x, y, z = outside_ras
    assert f"({x:.2f}, {y:.2f}, {z:.2f})" in message
