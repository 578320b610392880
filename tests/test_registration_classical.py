"""Tests for the classical methods (rigid, affine, B-spline) on the AFIDs template at 4 mm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _registration_data import moved_copy, padded, rigid_matrix_ras, smooth_warp, template_4mm
from medrl.baselines.bspline import bspline_registration
from medrl.baselines.registration import (
    affine_registration,
    map_points_lps,
    rigid_registration,
)
from medrl.io.images import Volume
from medrl.metrics.registration import tre_mm
from medrl.registration.base import METHODS, RegisterOptions, RegistrationOutcome
from medrl.registration.transforms import invert, is_displacement_field, map_landmarks


@pytest.fixture(scope="module")
def template(builtin_data: Path):
    return template_4mm(builtin_data)


def test_rigid_recovers_a_known_rigid_move(template) -> None:
    fixed, landmarks = template
    moving, moving_landmarks = moved_copy(fixed, landmarks, rigid_matrix_ras())
    result = rigid_registration(fixed, moving, seed=0)
    assert isinstance(result.transform, sitk.Euler3DTransform)
    assert len(result.iterations) == 1 and result.iterations[0] > 0
    moved = map_landmarks(result.transform.GetInverse(), moving_landmarks)
    before = tre_mm(landmarks.points_ras, moving_landmarks.points_ras)
    after = tre_mm(landmarks.points_ras, moved.points_ras)
    assert before.mean() > 8.0
    assert after.max() < 1.5
    again = rigid_registration(fixed, moving, seed=0)
    assert again.transform.GetParameters() == result.transform.GetParameters()


def test_methods_are_registered_with_their_outcomes(template) -> None:
    import medrl.registration.classical  # noqa: F401

    assert {"rigid", "affine", "bspline"} <= set(METHODS)
    fixed, landmarks = template
    moving, _ = moved_copy(fixed, landmarks, rigid_matrix_ras(5.0, (3.0, 0.0, 0.0)))
    outcome = METHODS["affine"](fixed, moving, RegisterOptions(threads=1))
    assert outcome.method == "affine"
    assert outcome.transform.GetName() == "AffineTransform"
    assert set(outcome.details["iterations"]) == {"rigid", "affine"}
    assert outcome.seconds > 0 and outcome.inverse is None


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def test_bspline_improves_on_affine_for_a_smooth_warp(template) -> None:
    """The moving image is the (padded) template through a smooth random warp W (about 2.4 mm
    on average in the head): ``moving(x) = fixed(W(x))``."""
    fixed = padded(template[0])
    warp = smooth_warp(fixed)
    moving = Volume.from_sitk(
        sitk.Resample(fixed.to_sitk(), fixed.to_sitk(), warp, sitk.sitkLinear, 0.0), "warped"
    )
    head = fixed.array > 3000

    def scores(transform: sitk.Transform) -> tuple[float, float]:
        image = sitk.Resample(moving.to_sitk(), fixed.to_sitk(), transform, sitk.sitkLinear)
        array = sitk.GetArrayFromImage(image)
        return _ncc(fixed.array, array, head), _dice(head, array > 3000)

    affine = affine_registration(fixed, moving, seed=0)
    bspline = bspline_registration(
        fixed, moving, seed=0, samples=3000, max_iterations=20, mesh_spacing_mm=80.0
    )
    assert is_displacement_field(bspline.transform)
    assert len(bspline.iterations) == 3
    ncc_affine, dice_affine = scores(affine.transform)
    ncc_bspline, dice_bspline = scores(bspline.transform)
    assert ncc_bspline > ncc_affine + 0.005
    assert dice_bspline > dice_affine
    # The inverse undoes the forward map inside the head.
    index = np.argwhere(head)[::97][:, ::-1].astype(np.float64)
    points = fixed.index_to_world(index, "LPS")
    forward = map_points_lps(bspline.transform, points)
    outcome = RegistrationOutcome("bspline", bspline.transform, 1.0, inverse=bspline.inverse)
    np.testing.assert_allclose(map_points_lps(invert(outcome), forward), points, atol=0.3)
