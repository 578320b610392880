"""Plane geometry: the MSP and AC-PC planes from AFIDs, angles and distances between planes,
Slicer plane markups, and AC-PC space."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from _synthetic import blob_volume
from medrl.errors import InputError
from medrl.geometry.acpc import acpc_frame, resample_acpc
from medrl.geometry.planes import (
    MIDLINE_AFIDS,
    fit_plane,
    plane_angle_deg,
    plane_distance_mm,
    planes_from_afids,
)
from medrl.io.plane_markups import read_planes, write_planes

# midline AFIDs of a head whose MSP is x = 3 and whose AC-PC line runs along -A
MIDLINE = np.array(
    [[3, 2, -4], [3, -25, -2], [3, -37, -11], [3, -23, -21], [3, -15, -11], [3, -50, -20],
     [3, -8, -13], [3, -30, 3], [3, 30, 10], [3, -38, 8]], dtype=np.float64,
)  # fmt: skip


def _moved(points: np.ndarray, rotation: Rotation, shift: np.ndarray) -> np.ndarray:
    return rotation.apply(points) + shift


def test_planes_of_an_upright_head() -> None:
    planes = planes_from_afids(MIDLINE, MIDLINE_AFIDS)
    msp, acpc = planes
    np.testing.assert_allclose(msp[3:6], [1, 0, 0], atol=1e-9)  # normal to the right
    np.testing.assert_allclose(msp[:3], MIDLINE.mean(axis=0))
    np.testing.assert_allclose(acpc[:3], MIDLINE[0])  # reference point: AC
    # the AC-PC plane contains AC, PC and the MSP normal, and its normal points up
    for point in (MIDLINE[0], MIDLINE[1], MIDLINE[0] + msp[3:6]):
        assert abs((point - acpc[:3]) @ acpc[3:6]) < 1e-9
    assert acpc[5] > 0.99
    for pose in planes:
        assert abs(pose[3:6] @ pose[6:9]) < 1e-9 and pose[7] > 0  # u: anterior, in plane


def test_planes_move_with_the_head() -> None:
    rotation, shift = Rotation.from_euler("xyz", [10, -20, 25], degrees=True), np.array([5, 8, -3])
    before = planes_from_afids(MIDLINE, MIDLINE_AFIDS)
    after = planes_from_afids(_moved(MIDLINE, rotation, shift), MIDLINE_AFIDS)
    np.testing.assert_allclose(after[:, 3:6], rotation.apply(before[:, 3:6]), atol=1e-9)
    np.testing.assert_allclose(after[:, :3], _moved(before[:, :3], rotation, shift), atol=1e-9)


def test_angle_and_distance_between_planes() -> None:
    msp = planes_from_afids(MIDLINE, MIDLINE_AFIDS)[0]
    tilted = msp.copy()
    tilted[3:6] = Rotation.from_euler("z", 3, degrees=True).apply(msp[3:6])
    assert plane_angle_deg(msp, tilted)[0] == pytest.approx(3.0)
    assert plane_angle_deg(msp, msp)[0] == 0.0
    shifted = msp.copy()
    shifted[:3] += [2.0, 0.0, 0.0]  # along the normal
    assert plane_distance_mm(msp, shifted)[0] == pytest.approx(2.0)
    sliding = msp.copy()
    sliding[:3] += [0.0, 30.0, -5.0]  # within the plane: the same plane
    assert plane_distance_mm(msp, sliding)[0] == pytest.approx(0.0, abs=1e-12)


def test_bad_afids_are_clear_errors() -> None:
    with pytest.raises(InputError, match="missing: 19, 20"):
        planes_from_afids(MIDLINE[:8], MIDLINE_AFIDS[:8], "sub-01.fcsv")
    flat = MIDLINE.copy()
    flat[:, 2] = 0.0
    flat[:, 1] = 0.0  # all on one line
    with pytest.raises(InputError, match="do not define a plane"):
        planes_from_afids(flat, MIDLINE_AFIDS)
    with pytest.raises(ValueError, match="at least 3"):
        fit_plane(MIDLINE[:2])


@pytest.mark.parametrize("system", ["RAS", "LPS"])
def test_plane_markups_round_trip(tmp_path, system: str) -> None:
    planes = planes_from_afids(_moved(MIDLINE, Rotation.from_euler("y", 12, degrees=True),
                                      np.zeros(3)), MIDLINE_AFIDS)  # fmt: skip
    path = tmp_path / "scan.mrk.json"
    write_planes(path, ["MSP", "ACPC"], planes, system, ["mid-sagittal", "AC-PC"])
    document = json.loads(path.read_text())
    assert [m["type"] for m in document["markups"]] == ["Plane", "Plane"]
    assert {m["coordinateSystem"] for m in document["markups"]} == {system}
    assert all(m["planeType"] == "pointNormal" for m in document["markups"])
    names, back = read_planes(path)
    assert names == ("MSP", "ACPC")
    np.testing.assert_allclose(back, planes, atol=1e-9)
    with pytest.raises(InputError, match="unique, non-empty"):
        write_planes(tmp_path / "x.mrk.json", ["MSP", "MSP"], planes)
    assert not (tmp_path / "x.mrk.json").exists()


def test_acpc_space_puts_ac_at_the_origin_and_the_planes_on_the_axes() -> None:
    rotation = Rotation.from_euler("xyz", [8, -6, 15], degrees=True)
    volume, _ = blob_volume(shape_zyx=(50, 50, 50), spacing_mm=(2.0, 2.0, 2.0))
    centre = volume.index_to_world(np.array([24.5, 24.5, 24.5]))[0]
    head = _moved(MIDLINE - MIDLINE.mean(axis=0), rotation, centre)
    msp, acpc = planes_from_afids(head, MIDLINE_AFIDS)
    origin, frame = acpc_frame(msp, acpc)
    np.testing.assert_allclose(origin, head[0])
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(frame), 1.0)
    # in AC-PC space, PC lies on the A axis behind AC and every midline AFID has R = 0
    local = (head - origin) @ frame
    np.testing.assert_allclose(local[:, 0], 0.0, atol=1e-9)
    assert abs(local[1, 2]) < 1e-9 and local[1, 1] < 0
    aligned = resample_acpc(volume, msp, acpc)
    # the brightest blob moves to where the frame says
    peak = np.unravel_index(np.argmax(volume.array), volume.array.shape)[::-1]
    peak_ras = volume.index_to_world(np.asarray(peak, dtype=np.float64))[0]
    new_peak = np.unravel_index(np.argmax(aligned.array), aligned.array.shape)[::-1]
    new_peak_ras = aligned.index_to_world(np.asarray(new_peak, dtype=np.float64))[0]
    np.testing.assert_allclose(new_peak_ras, (peak_ras - origin) @ frame, atol=2.5)
    np.testing.assert_allclose(aligned.spacing_mm, 2.0)
