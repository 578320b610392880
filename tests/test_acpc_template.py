"""The AC-PC plane through a template's commissures carried by a 2D registration of the
mid-sagittal plane (``task.plane_acpc_template``, :mod:`medrl.tasks.acpc_template`): the 2D
registration recovers a known similarity map, the carried plane corrects a plane agent's pitch
and in-plane offset on a rigidly moved real brain in another contrast than the template's, the
fallback to the agent's plane, and the settings a user can get wrong."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medrl.agents.checkpoint import load_model, with_overrides
from medrl.config import Config, EnvConfig, LevelConfig, TaskConfig
from medrl.data.scenarios import scenario_scans
from medrl.data.sources import load_split
from medrl.envs.pyramid import build_pyramid
from medrl.errors import InputError
from medrl.geometry.planes import plane_angle_deg, plane_distance_mm, planes_from_afids
from medrl.io.images import Volume
from medrl.models import default_model_dir
from medrl.tasks.acpc_template import (
    SAMPLE_MM,
    WINDOW_MM,
    MidsagittalTemplate,
    acpc_from_template,
    register_midsagittal,
)
from medrl.tasks.plane import PlaneTask, rotate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def moved_t2w(builtin_data):  # type: ignore[no-untyped-def]
    """MNI152NLin2009cAsym T2w (the template is its T1w) under a random rigid move, the
    planes fitted to its moved AFIDs, and its pyramid at the plane model's levels."""
    case = next(c for c in load_split("builtin:afids", "train") if "T2w" in c.case_id)
    assert case.landmarks is not None
    (scan,) = scenario_scans([case], rigid_trials=1, seed=1357,
                             landmark_names=tuple(case.landmarks.names))  # fmt: skip
    truth = planes_from_afids(scan.landmarks.points_ras, scan.landmarks.names)
    return scan, truth, build_pyramid(scan.volume, [4.0, 2.0, 1.0])


def _plane_task(template: str = "") -> PlaneTask:
    levels = tuple(
        LevelConfig(spacing_mm=mm, step_mm=mm, start_radius_mm=2.0, max_steps=5)
        for mm in (4.0, 2.0, 1.0)
    )
    task_config = TaskConfig(kind="plane", plane_acpc_template=template)
    return PlaneTask(replace(Config(), task=task_config, env=EnvConfig(levels=levels)))


def _off(pose: np.ndarray, pitch_deg: float, along_mm: float) -> np.ndarray:
    """``pose`` turned by ``pitch_deg`` about its in-plane axis ``u`` and its point moved
    ``along_mm`` within the plane (a plane agent's error: pitch, and where on the plane)."""
    out = pose.copy()
    turn = torch.tensor(pose[None, 6:9] * np.radians(pitch_deg))
    out[3:6] = rotate(torch.tensor(pose[None, 3:6]), turn)[0].numpy()
    in_plane = np.cross(out[3:6], pose[6:9])
    out[:3] = pose[:3] + along_mm * in_plane / np.linalg.norm(in_plane)
    return out


def test_the_2d_registration_recovers_a_known_similarity_map() -> None:
    rng = np.random.default_rng(0)
    (u_lo, u_hi), (v_lo, v_hi) = WINDOW_MM
    shape = (round((v_hi - v_lo) / SAMPLE_MM) + 1, round((u_hi - u_lo) / SAMPLE_MM) + 1)
    smooth = sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32)), 4.0
    )
    image = sitk.GetArrayFromImage(smooth)
    template = MidsagittalTemplate(image, np.zeros(2), np.array([27.0, 0.5]), "synthetic")
    # the scan: the template seen through a similarity map (scan frame -> template frame)
    truth = sitk.Similarity2DTransform(1.06, np.radians(4.0), (2.5, -3.0), (0.0, 0.0))
    moving = sitk.GetImageFromArray(image)
    moving.SetSpacing((SAMPLE_MM, SAMPLE_MM))
    moving.SetOrigin((u_lo, v_lo))
    scan_image = sitk.GetArrayFromImage(sitk.Resample(moving, moving, truth, sitk.sitkLinear))
    ac, pc, scale = register_midsagittal(scan_image, template)
    inverse = truth.GetInverse()
    np.testing.assert_allclose(ac, inverse.TransformPoint((0.0, 0.0)), atol=0.3)
    np.testing.assert_allclose(pc, inverse.TransformPoint((27.0, 0.5)), atol=0.3)
    assert scale == pytest.approx(1.06, abs=0.01)


def test_the_carried_plane_corrects_the_agents_pitch_and_offset(moved_t2w) -> None:
    _, truth, pyramid = moved_t2w
    msp, acpc = truth
    off = _off(acpc, 5.0, 6.0)
    assert plane_angle_deg(off, acpc)[0] == pytest.approx(5.0, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plausible: no warning
        refined = _plane_task("builtin:afids").refine(
            pyramid, np.stack([msp, off]), ["MSP", "ACPC"]
        )
    np.testing.assert_array_equal(refined[0], msp)
    assert abs(float(refined[1, 3:6] @ msp[3:6])) < 1e-9  # it contains the MSP normal
    assert float(refined[1, 3:6] @ acpc[3:6]) > 0  # and still faces up
    assert plane_angle_deg(refined[1], acpc)[0] < 1.0
    assert plane_distance_mm(refined[1], acpc)[0] < 1.0
    assert np.linalg.norm(refined[1, :3] - acpc[:3]) < 1.5  # its point is the carried AC


def test_a_scan_without_a_midline_keeps_the_agents_plane_with_a_warning(moved_t2w) -> None:
    scan, truth, _ = moved_t2w
    volume = scan.volume
    blank = Volume(
        np.zeros_like(volume.array), volume.spacing_mm, volume.origin_lps, volume.direction_lps,
        source="blank.nii.gz",
    )  # fmt: skip
    pyramid = build_pyramid(blank, [1.0])
    with pytest.warns(UserWarning, match="plane agent's own") as caught:
        kept = acpc_from_template(pyramid, truth[0], truth[1], "builtin:afids")
    np.testing.assert_array_equal(kept, truth[1])
    assert "blank.nii.gz" in str(caught[0].message)


def test_template_settings_a_user_can_get_wrong(moved_t2w, tmp_path) -> None:
    _, truth, pyramid = moved_t2w
    with pytest.raises(InputError, match="IMAGE,LANDMARKS"):
        acpc_from_template(pyramid, truth[0], truth[1], "MNI152NLin2009cAsym")
    with pytest.raises(InputError, match=r"a\.nii\.gz: image file not found"):
        acpc_from_template(pyramid, truth[0], truth[1], f"{tmp_path}/a.nii.gz,{tmp_path}/a.fcsv")
    plane_model = load_model(default_model_dir("plane"), task="plane")
    both = ["task.plane_acpc_landmarks=builtin:afids", "task.plane_acpc_template=builtin:afids"]
    with pytest.raises(InputError, match="choose one"):  # refused before any search
        with_overrides(plane_model, both)
