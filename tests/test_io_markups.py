"""Tests for medrl.io.markups: boxes as Slicer ROI markups (.mrk.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medrl.errors import InputError
from medrl.io.markups import read_boxes, write_boxes

NAMES = ("L Subthalamic Nucleus", "R Subthalamic Nucleus", "box, with comma")
BOXES = np.array(
    [
        [-11.0, -13.0, -7.5, 11.0, 13.0, 8.0],
        [10.5, -12.5, -7.5, 10.0, 12.0, 8.0],
        [0.1, 0.2, 0.30000000000000004, 1e-3, 2.5, 0.0],
    ]
)


@pytest.mark.parametrize("system", ["RAS", "LPS"])
def test_round_trip_is_exact(tmp_path: Path, system: str) -> None:
    path = tmp_path / f"boxes_{system}.mrk.json"
    write_boxes(path, NAMES, BOXES, coordinate_system=system)
    names, boxes = read_boxes(path)
    assert names == NAMES
    np.testing.assert_array_equal(boxes, BOXES)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_file_layout_ras_and_lps(tmp_path: Path) -> None:
    write_boxes(tmp_path / "ras.mrk.json", NAMES[:1], BOXES[:1])
    write_boxes(tmp_path / "lps.mrk.json", NAMES[:1], BOXES[:1], coordinate_system="LPS")
    ras = json.loads((tmp_path / "ras.mrk.json").read_text())
    lps = json.loads((tmp_path / "lps.mrk.json").read_text())
    assert "markups-schema-v1.0.3.json" in ras["@schema"]
    (roi,) = ras["markups"]
    assert roi["type"] == "ROI" and roi["roiType"] == "Box" and roi["name"] == NAMES[0]
    assert roi["coordinateSystem"] == "RAS" and roi["coordinateUnits"] == "mm"
    assert roi["center"] == [-11.0, -13.0, -7.5] and roi["size"] == [11.0, 13.0, 8.0]
    assert roi["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    (point,) = roi["controlPoints"]
    assert point["position"] == roi["center"] and point["label"] == NAMES[0]
    (roi,) = lps["markups"]
    assert roi["coordinateSystem"] == "LPS"
    assert roi["center"] == [11.0, 13.0, -7.5]  # R and A negated
    assert roi["size"] == [11.0, 13.0, 8.0]  # sizes do not change
    # Slicer negates the first two rows of the orientation in LPS files.
    assert roi["orientation"] == [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
    assert roi["controlPoints"][0]["position"] == [11.0, 13.0, -7.5]


def _slicer_roi(**fields) -> dict:
    """An ROI markup as Slicer 5 saves it (display and measurements trimmed)."""
    roi = {
        "type": "ROI",
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": 1,
        "roiType": "Box",
        "center": [-10.0, 20.0, 30.0],
        "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
        "size": [2.0, 4.0, 6.0],
        "insideOut": False,
        "controlPoints": [
            {
                "id": "1",
                "label": "R-1",
                "position": [-10.0, 20.0, 30.0],
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "positionStatus": "defined",
            }
        ],
        "measurements": [{"name": "volume", "enabled": False, "units": "cm3"}],
        "display": {"visibility": True, "opacity": 1.0},
    }
    roi.update(fields)
    return roi


def _write(path: Path, markups: list) -> Path:
    schema = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    schema += "Resources/Schema/markups-schema-v1.0.3.json#"
    path.write_text(json.dumps({"@schema": schema, "markups": markups}))
    return path


def test_reads_rois_saved_by_slicer(tmp_path: Path) -> None:
    fiducials = {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": []}
    swapped = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # ROI axes x, y = world A, R
    unnamed = _slicer_roi(coordinateSystem="RAS")  # named by its control point's label
    del unnamed["orientation"]  # optional: then the ROI is axis-aligned
    path = _write(
        tmp_path / "slicer.mrk.json",
        [
            _slicer_roi(name="lps"),
            fiducials,  # other markup types are skipped
            _slicer_roi(
                name="ras", coordinateSystem="RAS", orientation=[1, 0, 0, 0, 1, 0, 0, 0, 1]
            ),
            _slicer_roi(name="swapped", coordinateSystem="RAS", orientation=swapped),
            unnamed,
        ],
    )
    names, boxes = read_boxes(path)
    assert names == ("lps", "ras", "swapped", "R-1")
    np.testing.assert_array_equal(boxes[0], [10.0, -20.0, 30.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(boxes[1], [-10.0, 20.0, 30.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(boxes[2], [-10.0, 20.0, 30.0, 4.0, 2.0, 6.0])
    np.testing.assert_array_equal(boxes[3], boxes[1])


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    cos, sin = np.cos(0.3), np.sin(0.3)
    rotated = [cos, -sin, 0.0, sin, cos, 0.0, 0.0, 0.0, 1.0]
    cases = {
        "rotated": ([_slicer_roi(name="r", orientation=rotated)], "aligned with the world axes"),
        "no_roi": ([{"type": "Fiducial", "controlPoints": []}], "no ROI markups"),
        "dup": ([_slicer_roi(name="a"), _slicer_roi(name="a")], "duplicate ROI name 'a'"),
        "size": ([_slicer_roi(name="s", size=[1.0, 2.0])], "'s'.* size: expected a list of 3"),
        "system": ([_slicer_roi(name="s", coordinateSystem="XYZ")], "coordinate system"),
        "units": ([_slicer_roi(name="s", coordinateUnits="um")], "not mm"),
        "nameless": ([_slicer_roi(controlPoints=[])], "no name"),
        "type": ([_slicer_roi(name="s", roiType="Sphere")], "roiType 'Sphere'"),
    }
    for stem, (markups, message) in cases.items():
        path = _write(tmp_path / f"{stem}.mrk.json", markups)
        with pytest.raises(InputError, match=message) as info:
            read_boxes(path)
        assert info.value.path == str(path), stem
    bad = tmp_path / "bad.mrk.json"
    bad.write_text('{"markups": [')
    with pytest.raises(InputError, match="not valid JSON") as info:
        read_boxes(bad)
    assert str(bad) in str(info.value)
    (tmp_path / "list.mrk.json").write_text("[]")
    with pytest.raises(InputError, match="no 'markups' list"):
        read_boxes(tmp_path / "list.mrk.json")
    with pytest.raises(InputError, match="not found"):
        read_boxes(tmp_path / "missing.mrk.json")


def test_write_errors_leave_no_file(tmp_path: Path) -> None:
    path = tmp_path / "out.mrk.json"
    with pytest.raises(InputError, match="2 names for boxes of shape"):
        write_boxes(path, NAMES[:2], BOXES)
    with pytest.raises(InputError, match="duplicate box name"):
        write_boxes(path, ("a", "a"), BOXES[:2])
    with pytest.raises(InputError, match="non-empty name"):
        write_boxes(path, ("a", " "), BOXES[:2])
    with pytest.raises(InputError, match="finite"):
        write_boxes(path, ("a",), np.array([[np.nan, 0, 0, 1, 1, 1]]))
    with pytest.raises(InputError, match="coordinate system"):
        write_boxes(path, ("a",), BOXES[:1], coordinate_system="IJK")
    assert not list(tmp_path.iterdir())
