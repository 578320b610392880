"""Left-right mirror readings (``search.mirror``): mirror partners from a layout, the
mirror view of a prepared scan against the scan flipped voxel by voxel, and the agent's and
the detector's mirror-averaged points in the search."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _synthetic import (
    BLOB_NAMES,
    TINY_DETECTOR,
    blob_volume,
    write_blob_datalist,
    write_untrained_model,
)
from medrl.agents.checkpoint import load_model, with_overrides
from medrl.agents.search import model_mirror_partners, search
from medrl.envs.pyramid import build_pyramid
from medrl.envs.sampler import sample_at_ras
from medrl.errors import InputError
from medrl.geometry.mirror import (
    average_with_mirror,
    mirror_partners,
    mirror_pyramid,
    partner_names,
    reflect_points,
    reflection_ras,
)
from medrl.io.images import Volume, read_image
from medrl.supervised.detector import HeatmapDetector
from medrl.supervised.ensemble import DETECTOR_SUBDIR, detected_points

torch.set_num_threads(1)
TINY = TINY_DETECTOR


def test_mirror_partners_pairs_a_layout_about_its_own_midline() -> None:
    plane = 7.0  # the layout's midline is not x = 0
    midline = np.array([[plane, 10.0, 0.0], [plane + 0.5, -20.0, 5.0], [plane - 0.4, 0.0, -15.0]])
    right = np.array([[plane + 15.0, 5.0, 20.0], [plane + 30.0, -25.0, -10.0]])
    left = right * [-1, 1, 1] + [2 * plane, 0, 0] + [0.6, -0.8, 0.5]  # not exactly symmetric
    lonely = np.array([[plane + 40.0, 40.0, 40.0]])  # lateral, with no partner
    layout = np.concatenate([left[[1]], midline[:2], right, lonely, midline[[2]], left[[0]]])
    partners = mirror_partners(layout)
    np.testing.assert_array_equal(partners, [4, 1, 2, 7, 0, -1, 6, 3])
    names = tuple("abcdefgh")
    assert partner_names(names, partners) == {
        "a": "e", "b": "b", "c": "c", "d": "h", "e": "a", "g": "g", "h": "d"
    }  # fmt: skip
    with pytest.raises(ValueError, match="finite"):
        mirror_partners(np.array([[0.0, np.nan, 0.0]]))


def test_reflection_is_its_own_inverse_and_the_average_skips_missing_rows() -> None:
    reflection = reflection_ras(3.0)
    points = np.array([[5.0, 1.0, 2.0], [-4.0, 0.0, 9.0]])
    np.testing.assert_allclose(reflect_points(points, reflection), [[1, 1, 2], [10, 0, 9]])
    np.testing.assert_allclose(reflection @ reflection, np.eye(4))
    other = np.array([[7.0, 3.0, 2.0], [np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(average_with_mirror(points, other), [[6, 2, 2], points[1]])


def _flipped_along_r(volume: Volume) -> tuple[Volume, float]:
    """``volume`` (axis-aligned, R along i) with its voxels flipped along R, and the x_R of the
    grid's central sagittal plane (the plane the flip reflects about)."""
    flipped = replace(volume, array=np.ascontiguousarray(volume.array[:, :, ::-1]))
    nx = volume.array.shape[2]
    centre = volume.index_to_world(np.array([[(nx - 1) / 2, 0.0, 0.0]]), "RAS")[0, 0]
    return flipped, float(centre)


def test_the_mirror_view_of_a_scan_is_the_scan_flipped_voxel_by_voxel() -> None:
    # axis-aligned in RAS (LPS direction diag(-1, -1, 1)), so flipping the array along i
    # reflects world space about the grid's central sagittal plane
    volume, _ = blob_volume(shape_zyx=(40, 44, 48), spacing_mm=(1.5, 1.5, 1.5),
                            direction_lps=np.diag([-1.0, -1.0, 1.0]), seed=3)  # fmt: skip
    flipped, plane = _flipped_along_r(volume)
    spacings = [6.0, 3.0, 1.5]
    view = mirror_pyramid(build_pyramid(volume, spacings), reflection_ras(plane))
    truth = build_pyramid(flipped, spacings)
    points = torch.as_tensor(
        np.random.default_rng(0).uniform(-25, 25, (200, 3)) + volume.index_to_world(
            np.array([[23.5, 21.5, 19.5]]), "RAS"
        ),
        dtype=torch.float32,
    )  # fmt: skip
    for level in range(len(spacings)):
        np.testing.assert_allclose(
            sample_at_ras(view.levels[level], points),
            sample_at_ras(truth.levels[level], points),
            atol=1e-4,
        )
    np.testing.assert_allclose(view.intensity_centre_ras, truth.intensity_centre_ras, atol=1e-3)
    assert view.contains_ras(points).tolist() == truth.contains_ras(points).tolist()
    # and a detector reads the two alike
    torch.manual_seed(1)
    detector = HeatmapDetector.new(BLOB_NAMES, ("",) * 3, TINY)
    np.testing.assert_allclose(
        detector.detect_scans([mirror_pyramid(detector.prepare(volume), reflection_ras(plane))]),
        detector.detect_scans([detector.prepare(flipped)]),
        atol=1e-3,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_blob_datalist(tmp_path_factory.mktemp("mirror_data"))


def test_the_search_averages_each_reader_with_its_mirror_reading(data, tmp_path) -> None:
    (tmp_path / "model").mkdir()
    model_dir = write_untrained_model(tmp_path / "model")
    torch.manual_seed(4)
    names = tuple(reversed(BLOB_NAMES))  # the detector's order differs from the model's
    detector = HeatmapDetector.new(names, ("",) * 3, TINY)
    detector.training = {"steps": 0}
    detector.save(model_dir / DETECTOR_SUBDIR)
    volume = read_image(data["test"])
    model = with_overrides(load_model(model_dir), ["search.detector_weight=1"])
    with pytest.raises(InputError, match="reference layout"):  # untrained: no layout
        search(with_overrides(model, ["search.mirror=true"]), volume)
    # blob_a and blob_b mirror partners, blob_c on the midline
    model.task.reference_points_ras = np.array(
        [[15.0, 0.0, 0.0], [-15.0, 2.0, 1.0], [0.5, 10.0, -5.0]]
    )
    mirror = model_mirror_partners(model)
    assert mirror == {"blob_a": "blob_b", "blob_b": "blob_a", "blob_c": "blob_c"}
    plain = search(model, volume)
    mirrored = search(with_overrides(model, ["search.mirror=true"]), volume)
    np.testing.assert_allclose(plain.estimate, plain.detector_ras)
    scan = detector.prepare(volume)
    reflection = reflection_ras(float(scan.intensity_centre_ras[0]))
    own, seen = model.detector.detect_scans([scan, mirror_pyramid(scan, reflection)])
    detector_reflection = reflection
    row = {name: i for i, name in enumerate(names)}
    expected = np.stack([
        (own[row[n]] + reflect_points(seen[row[mirror[n]]], reflection)) / 2 for n in BLOB_NAMES
    ])  # fmt: skip
    np.testing.assert_allclose(mirrored.detector_ras, expected, atol=1e-5)
    np.testing.assert_allclose(mirrored.estimate, expected, atol=1e-5)
    np.testing.assert_allclose(plain.detector_ras, own[[row[n] for n in BLOB_NAMES]], atol=1e-5)
    assert np.abs(mirrored.detector_ras - plain.detector_ras).max() > 0.1
    # the agent: its search of the scan and of the mirror image, each landmark from its partner
    agent_alone = with_overrides(model, ["search.detector_weight=0"])
    own_agent = search(agent_alone, volume).estimate
    pyramid = build_pyramid(volume, [level.spacing_mm for level in model.config.env.levels])
    reflection = reflection_ras(float(pyramid.intensity_centre_ras[0]))
    seen_agent = search(agent_alone, volume, scan=mirror_pyramid(pyramid, reflection)).estimate
    partner_row = [BLOB_NAMES.index(mirror[n]) for n in BLOB_NAMES]
    expected_agent = (own_agent + reflect_points(seen_agent[partner_row], reflection)) / 2
    np.testing.assert_allclose(mirrored.agent_estimate, expected_agent, atol=1e-5)
    np.testing.assert_allclose(plain.agent_estimate, own_agent, atol=1e-5)
    # the four readings the point blends, each reflected back: for the confidence's spread
    assert mirrored.readings is not None and mirrored.readings.shape == (4, 3, 3)
    readings = [
        own_agent,
        reflect_points(seen_agent[partner_row], reflection),
        own[[row[n] for n in BLOB_NAMES]],
        2 * expected - own[[row[n] for n in BLOB_NAMES]],
    ]
    np.testing.assert_allclose(mirrored.readings, np.stack(readings), atol=1e-4)
    np.testing.assert_allclose(mirrored.readings[3, :2], np.stack([
        reflect_points(seen[row[mirror[n]]], detector_reflection) for n in BLOB_NAMES[:2]
    ]), atol=1e-4)  # fmt: skip
    alone_mirrored = search(with_overrides(agent_alone, ["search.mirror=true"]), volume)
    np.testing.assert_allclose(alone_mirrored.estimate, expected_agent, atol=1e-5)
    assert alone_mirrored.steps > search(agent_alone, volume).steps
    # a search of some landmarks reads their partners in the mirror image
    one = search(with_overrides(agent_alone, ["search.mirror=true"]), volume, targets=["blob_a"])
    assert one.names == ("blob_a",)
    assert np.isfinite(one.estimate).all()
    # the function the search calls, without a mirror: the detector's own points
    np.testing.assert_allclose(
        detected_points(model.detector, volume, BLOB_NAMES, "cpu"), plain.detector_ras
    )


def test_the_agent_reads_each_landmark_as_its_partner_in_the_mirror_image(builtin_data) -> None:
    """The shipped model on the built-in test brain (2 mm): its search of the mirror image,
    each landmark taken from its partner and reflected back, lands on the same anatomy as its
    search of the scan; without the swap or the reflection the lateral landmarks would land
    on the other side. The search with ``search.mirror`` writes the mean of the two."""
    from medrl.data.builtin import MNI6_T1W
    from medrl.io.images import resample_isotropic
    from medrl.models import default_model_dir

    model = load_model(default_model_dir("landmark"), task="landmark")
    alone = with_overrides(model, ["search.detector_weight=0", "search.mirror=false"])
    volume = resample_isotropic(read_image(builtin_data / MNI6_T1W), 2.0)
    names = model.names
    mirror = model_mirror_partners(model)
    partner = [names.index(mirror[name]) for name in names]
    lateral = [i for i, name in enumerate(names) if mirror[name] != name]
    assert len(lateral) == 22  # the AFIDs' 11 left/right pairs
    with torch.inference_mode():
        own = search(alone, volume).estimate
        pyramid = build_pyramid(volume, [level.spacing_mm for level in model.config.env.levels])
        reflection = reflection_ras(float(pyramid.intensity_centre_ras[0]))
        seen = search(alone, volume, scan=mirror_pyramid(pyramid, reflection)).estimate
        both = search(with_overrides(alone, ["search.mirror=true"]), volume)
    back = reflect_points(seen[partner], reflection)
    assert np.median(np.linalg.norm(back - own, axis=1)) < 3.0

    def median_off(points: np.ndarray) -> float:
        return float(np.median(np.linalg.norm(points[lateral] - own[lateral], axis=1)))

    assert median_off(reflect_points(seen, reflection)) > 10.0  # no partner swap
    assert median_off(seen[partner]) > 10.0  # no reflection
    np.testing.assert_allclose(both.estimate, (own + back) / 2, atol=1e-4)
