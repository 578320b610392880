"""Test scans with enlarged structures (``Swelling``): the image and the landmarks follow the
same local warp, and a bad request fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medrl.data.augment import transform_points
from medrl.data.datalist import Case
from medrl.data.scenarios import Swelling, deform_case, scenario_scans
from medrl.errors import InputError
from medrl.geometry.warp_labels import LocalWarp, elastic_sample_points_ras
from medrl.io.images import Volume, read_image
from medrl.io.landmarks import Landmarks
from medrl.report.html import describe_scan
from medrl.report.slices import rebuild_scan

RADIUS_MM = 8.0
NAMES = ("right", "left", "far")


def _ventricle() -> tuple[Volume, Landmarks]:
    """A 1 mm, 48^3 scan with a bright ball (radius 8 mm, a 1 mm soft edge) at the grid
    centre, landmarks on its right and left wall, and one far from it."""
    n = 48
    origin_lps = np.full(3, -(n - 1) / 2)  # (0, 0, 0) at the grid centre
    volume = Volume(np.zeros((n, n, n), np.float32), (1.0, 1.0, 1.0), origin_lps, np.eye(3))
    index = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1)[..., ::-1]
    radius = np.linalg.norm(volume.index_to_world(index.reshape(-1, 3), "RAS"), axis=1)
    ball = 1.0 / (1.0 + np.exp((radius - RADIUS_MM) / 0.5))
    volume = Volume(
        (100.0 * ball).reshape(n, n, n).astype(np.float32),
        (1.0, 1.0, 1.0),
        origin_lps,
        np.eye(3),
        source="ball.nii.gz",
    )
    points = np.array([[RADIUS_MM, 0.0, 0.0], [-RADIUS_MM, 0.0, 0.0], [0.0, 20.0, 0.0]])
    return volume, Landmarks(NAMES, points)


def _value_at(volume: Volume, point_ras: np.ndarray) -> float:
    index = np.rint(volume.world_to_index(point_ras[None], "RAS")[0]).astype(int)
    return float(volume.array[index[2], index[1], index[0]])


@pytest.mark.parametrize("strength", [-0.2, 0.2])
def test_a_local_warp_swells_or_shrinks_the_structure_and_its_landmarks_stay_on_its_wall(
    strength: float,
) -> None:
    volume, landmarks = _ventricle()
    swelling = Swelling(groups=(("right", "left"),), sigma_mm=10.0, strength=strength)
    (warp,) = swelling.local_warps(landmarks, "scan.nii.gz")
    np.testing.assert_allclose(warp.centre_ras, [0.0, 0.0, 0.0], atol=1e-9)
    warped, moved = deform_case(volume, landmarks, 0.0, seed=0, local=(warp,))
    # the ball's volume (voxels above half its peak) grows for s < 0 and shrinks for s > 0
    ratio = np.sum(warped.array > 50.0) / np.sum(volume.array > 50.0)
    assert (ratio > 1.3) if strength < 0 else (ratio < 0.75)
    # the wall landmarks move apart (or together), along x, symmetric about the centre
    width = moved.points_ras[0, 0] - moved.points_ras[1, 0]
    assert (width > 2 * RADIUS_MM * 1.12) if strength < 0 else (width < 2 * RADIUS_MM * 0.9)
    np.testing.assert_allclose(moved.points_ras[0], -moved.points_ras[1], atol=1e-3)
    # each moved wall landmark is still on the wall: half the ball's intensity there
    for point in moved.points_ras[:2]:
        assert 25.0 < _value_at(warped, point) < 75.0
    # the far landmark (2 sigma out) moves less than the walls
    far_shift = np.linalg.norm(moved.points_ras[2] - landmarks.points_ras[2])
    assert far_shift < abs(width - 2 * RADIUS_MM) / 2


def test_scenario_scans_swell_every_moved_copy_and_record_it() -> None:
    volume, landmarks = _ventricle()
    case = Case("ball", volume, landmarks, "test")
    swelling = Swelling(groups=(("right", "left"),), sigma_mm=12.0, strength=-0.2)
    scans = scenario_scans([case], 2, 10.0, 5.0, seed=7, swelling=swelling, landmark_names=NAMES)
    assert [scan.case_id for scan in scans] == ["ball_swollen0", "ball_swollen1"]
    for scan in scans:
        (local,) = scan.record["elastic"]["local"]
        assert local["strength"] == -0.2 and local["sigma_mm"] == 12.0
        assert scan.landmarks is not None
        moved = scan.landmarks.points_ras
        assert np.linalg.norm(moved[0] - moved[1]) > 2 * RADIUS_MM * 1.12  # rigid keeps it
        for point in moved[:2]:
            assert 25.0 < _value_at(scan.volume, point) < 75.0
    plain = scenario_scans([case], 1, 10.0, 5.0, seed=7, landmark_names=NAMES)[0]
    assert plain.case_id == "ball_rigid0"
    assert np.linalg.norm(np.diff(plain.landmarks.points_ras[:2], axis=0)) == pytest.approx(
        2 * RADIUS_MM, abs=1e-3
    )


def test_a_swelling_needs_its_landmarks_and_moved_copies() -> None:
    volume, landmarks = _ventricle()
    case = Case("ball", volume, landmarks, "test")
    missing = Swelling(groups=(("right", "15"),))
    with pytest.raises(InputError, match=r"lacks \['15'\]") as info:
        scenario_scans([case], 1, swelling=missing)
    assert "ball.nii.gz" in str(info.value)  # names the scan
    with pytest.raises(ValueError, match="moved copies"):
        scenario_scans([case], 0, swelling=Swelling(groups=(("right",),)))
    with pytest.raises(ValueError, match="strength"):
        LocalWarp((0.0, 0.0, 0.0), 10.0, -0.6)
    with pytest.raises(ValueError, match="strength"):  # checked when the swelling is made
        Swelling(groups=(("right",),), strength=0.7)
    with pytest.raises(ValueError, match="groups"):
        Swelling(groups=((),))
    with pytest.raises(ValueError, match="sigma"):
        LocalWarp((0.0, 0.0, 0.0), 0.0, -0.2)
    with pytest.raises(ValueError, match="finite"):
        LocalWarp((0.0, float("nan"), 0.0), 10.0, -0.2)


def _ball_centroid_ras(volume: Volume) -> np.ndarray:
    inside = np.argwhere(volume.array > 50.0)[:, ::-1]  # (i, j, k)
    return volume.index_to_world(inside.mean(axis=0)[None], "RAS")[0]


def test_with_an_elastic_warp_the_swelling_stays_centred_on_its_anatomy() -> None:
    """The bump is centred where the elastic field puts the landmarks' centroid: the warped
    scan samples that anatomy at the bump's centre, and the ball swells about its own centre
    (its centroid is where the elastic warp alone puts it)."""
    volume, landmarks = _ventricle()
    swelling = Swelling(groups=(("right", "left"),), sigma_mm=10.0, strength=-0.3)
    (warp,) = swelling.local_warps(landmarks, "x")
    params, _ = elastic_sample_points_ras(volume, 6.0, 3, (warp,))
    centre = params.bump_centre_ras
    assert torch.linalg.norm(centre[0, 0] - torch.tensor(warp.centre_ras)) > 3.0
    sampled = transform_points(params, centre)[0, 0].double().numpy()
    np.testing.assert_allclose(sampled, warp.centre_ras, atol=1e-3)
    elastic, _ = deform_case(volume, landmarks, 6.0, seed=3)
    swollen, moved = deform_case(volume, landmarks, 6.0, seed=3, local=(warp,))
    assert np.linalg.norm(_ball_centroid_ras(elastic)) > 5.0  # the elastic warp moves it
    np.testing.assert_allclose(_ball_centroid_ras(swollen), _ball_centroid_ras(elastic), atol=0.3)
    for point in moved.points_ras[:2]:
        assert 25.0 < _value_at(swollen, point) < 75.0


def test_label_maps_swell_with_the_image() -> None:
    volume, landmarks = _ventricle()
    labels = Volume(
        (volume.array > 50.0).astype(np.float32),
        volume.spacing_mm,
        volume.origin_lps,
        volume.direction_lps,
        source="ball_labels.nii.gz",
    )
    case = Case("ball", volume, landmarks, "test", labels=labels, label_names={1: "ball"})
    swelling = Swelling(groups=(("right", "left"),), sigma_mm=10.0, strength=-0.2)
    (scan,) = scenario_scans([case], 1, 10.0, 5.0, seed=3, swelling=swelling, with_labels=True)
    assert scan.labels is not None
    grown = np.sum(scan.labels.array == 1) / np.sum(labels.array == 1)
    assert grown > 1.3
    agreement = np.sum((scan.labels.array == 1) & (scan.volume.array > 50.0)) / np.sum(
        (scan.labels.array == 1) | (scan.volume.array > 50.0)
    )
    assert agreement > 0.85  # nearest-neighbour labels against a linearly resampled edge


def test_the_report_rebuilds_a_swollen_scan_from_its_record(tmp_path: Path) -> None:
    volume, landmarks = _ventricle()
    path = tmp_path / "ball.nii.gz"
    sitk.WriteImage(volume.to_sitk(), str(path))
    case = Case("ball", read_image(path), landmarks, "test")
    swelling = Swelling(groups=(("right", "left"),), sigma_mm=10.0, strength=-0.2)
    (scan,) = scenario_scans([case], 1, 10.0, 5.0, seed=3, elastic_mm=3.0, swelling=swelling)
    record = json.loads(json.dumps({"scan": scan.record}))  # as evaluate writes it
    rebuilt = rebuild_scan(record, {})
    np.testing.assert_allclose(rebuilt.volume.array, scan.volume.array, atol=1e-3)
    described = describe_scan(record)
    assert "1 local warp(s) of strength up to 0.2" in described and "3 mm elastic" in described
