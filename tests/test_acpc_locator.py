"""The AC-PC plane through the commissures that a landmark model finds
(``task.plane_acpc_landmarks``, :mod:`medrl.tasks.acpc_locator`): on a rigidly moved real brain
with the one-brain landmark model as the locator (``golden/afids_2009c_model``, trained on this
template), a search of some of a model's targets, the fallback to the plane agent's own plane,
and the settings a user can get wrong."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medrl.agents.checkpoint import load_model, with_overrides
from medrl.agents.search import search
from medrl.config import Config, EnvConfig, LevelConfig, TaskConfig
from medrl.data.scenarios import scenario_scans
from medrl.data.sources import load_split
from medrl.envs.pyramid import build_pyramid
from medrl.errors import InputError
from medrl.geometry.planes import plane_angle_deg, plane_distance_mm, planes_from_afids
from medrl.models import default_model_dir
from medrl.tasks.acpc_locator import MAX_DISAGREEMENT_DEG, acpc_from_landmarks, locator_dir
from medrl.tasks.plane import PlaneTask, rotate

torch.set_num_threads(1)
LOCATOR = str(Path(__file__).parent / "golden" / "afids_2009c_model")


@pytest.fixture(scope="module")
def moved(builtin_data):  # type: ignore[no-untyped-def]
    """MNI152NLin2009cAsym T1w under a random rigid move, its AFIDs moved with it, the planes
    fitted to them, and its pyramid at the plane model's levels (4, 2, 1 mm)."""
    case = load_split("builtin:afids", "train")[0]
    assert case.landmarks is not None
    (scan,) = scenario_scans([case], rigid_trials=1, seed=2468,
                             landmark_names=tuple(case.landmarks.names))  # fmt: skip
    truth = planes_from_afids(scan.landmarks.points_ras, scan.landmarks.names)
    return scan, truth, build_pyramid(scan.volume, [4.0, 2.0, 1.0])


def _plane_task(setting: str) -> PlaneTask:
    levels = tuple(
        LevelConfig(spacing_mm=mm, step_mm=mm, start_radius_mm=2.0, max_steps=5)
        for mm in (4.0, 2.0, 1.0)
    )
    task_config = TaskConfig(kind="plane", plane_acpc_landmarks=setting)
    return PlaneTask(replace(Config(), task=task_config, env=EnvConfig(levels=levels)))


def _pitched(pose: np.ndarray, degrees: float) -> np.ndarray:
    """``pose`` turned by ``degrees`` about its in-plane axis ``u``."""
    out = pose.copy()
    turn = torch.tensor(pose[None, 6:9] * np.radians(degrees))
    out[3:6] = rotate(torch.tensor(pose[None, 3:6]), turn)[0].numpy()
    return out


def test_a_search_of_some_targets_finds_what_the_full_search_finds(moved) -> None:
    scan, _, pyramid = moved
    model = load_model(LOCATOR)
    with torch.inference_mode():
        full = search(model, scan.volume, scan=pyramid, consensus_level=-1)
        some = search(model, scan.volume, scan=pyramid, targets=("2", "1"))
    assert some.names == ("1", "2")  # the model's order
    rows = [model.names.index("1"), model.names.index("2")]
    np.testing.assert_allclose(some.estimate, full.estimate[rows], atol=1e-3)
    assert len(some.paths) == 2 and some.consensus_starts is None
    with pytest.raises(InputError, match="no target"):
        search(model, scan.volume, scan=pyramid, targets=("1", "AC"))


def test_the_acpc_plane_goes_through_the_commissures_the_locator_finds(moved) -> None:
    _, truth, pyramid = moved
    msp, acpc = truth
    off = _pitched(acpc, 6.0)  # the plane agent's AC-PC plane, 6 degrees of pitch off
    assert plane_angle_deg(off, acpc)[0] == pytest.approx(6.0, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plausible pair: no warning
        refined = _plane_task(LOCATOR).refine(pyramid, np.stack([msp, off]), ["MSP", "ACPC"])
    np.testing.assert_array_equal(refined[0], msp)
    assert abs(float(refined[1, 3:6] @ msp[3:6])) < 1e-9  # it contains the MSP normal
    assert float(refined[1, 3:6] @ acpc[3:6]) > 0  # and still faces up
    assert plane_angle_deg(refined[1], acpc)[0] < 2.0
    assert plane_distance_mm(refined[1], acpc)[0] < 1.0
    # the plane agent's own plane is kept without the setting
    unrefined = _plane_task("").refine(pyramid, np.stack([msp, off]), ["MSP", "ACPC"])
    np.testing.assert_array_equal(unrefined[1], off)


def test_a_locator_that_disagrees_with_the_plane_agent_leaves_its_plane_with_a_warning(
    moved,
) -> None:
    _, truth, pyramid = moved
    msp, acpc = truth
    far = _pitched(acpc, MAX_DISAGREEMENT_DEG + 8.0)
    with pytest.warns(UserWarning, match="plane agent's own") as caught:
        kept = acpc_from_landmarks(pyramid, msp, far, LOCATOR)
    np.testing.assert_array_equal(kept, far)
    assert pyramid.source in str(caught[0].message)


def test_the_shipped_landmark_model_locates_with_its_agent_alone(moved) -> None:
    """builtin:afids carries a detector (and reads mirror images); the locator has only the
    plane agent's pyramid, no volume for the detector, and searches with the agent alone."""
    _, truth, pyramid = moved
    msp, acpc = truth
    assert load_model(default_model_dir("landmark")).config.search.detector_weight > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plausible pair: no fallback warning
        plane = acpc_from_landmarks(pyramid, msp, _pitched(acpc, 4.0), "builtin:afids")
    assert abs(float(plane[3:6] @ msp[3:6])) < 1e-9  # through the AC and PC it found
    assert plane_angle_deg(plane, _pitched(acpc, 4.0))[0] > 0.1  # not the fallback
    assert plane_angle_deg(plane, acpc)[0] < MAX_DISAGREEMENT_DEG
    # searching a pyramid alone with the detector on is a clear error, not a crash
    with pytest.raises(InputError, match="needs the scan itself"):
        search(load_model(default_model_dir("landmark")), None, scan=pyramid)  # type: ignore[arg-type]


def test_locator_settings_a_user_can_get_wrong(moved) -> None:
    _, truth, pyramid = moved
    with pytest.raises(InputError, match="ships no model"):
        acpc_from_landmarks(pyramid, truth[0], truth[1], "builtin:no-such-model")
    with pytest.raises(InputError, match="not a landmark model"):
        acpc_from_landmarks(pyramid, truth[0], truth[1], str(default_model_dir("box")))
    coarse = build_pyramid(moved[0].volume, [4.0, 2.0])
    with pytest.raises(InputError, match="searches at 1 mm"):
        acpc_from_landmarks(coarse, truth[0], truth[1], LOCATOR)


def test_overrides_switch_the_locator_on_and_keep_the_plane_models_priors() -> None:
    model = load_model(default_model_dir("plane"), task="plane")
    assert model.config.task.plane_acpc_landmarks == ""  # off in the shipped model
    on = with_overrides(model, ["task.plane_acpc_landmarks=builtin:afids"])
    assert on.task.config.task.plane_acpc_landmarks == "builtin:afids"
    assert locator_dir("builtin:afids") == default_model_dir("landmark")
    np.testing.assert_array_equal(on.task.prior_normal_ras, model.task.prior_normal_ras)
    np.testing.assert_array_equal(on.task.prior_offset_ras, model.task.prior_offset_ras)
