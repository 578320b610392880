"""The robust affine fit between two layouts of the same targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medrl.geometry.robust_affine import apply_affine, fit_affine_robust


def _layout(count: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-40.0, 40.0, size=(count, 3))


def _known_map() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", [12, -7, 20], degrees=True).as_matrix() @ np.diag(
        [1.05, 0.95, 1.1]
    )
    matrix[:3, 3] = [5.0, -12.0, 30.0]
    return matrix


def test_an_exact_map_is_recovered_despite_gross_outliers() -> None:
    source = _layout()
    truth = _known_map()
    target = apply_affine(truth, source)
    target[[3, 11]] += [[25.0, 0.0, 0.0], [0.0, -30.0, 10.0]]  # two failed detections
    fit = fit_affine_robust(source, target)
    np.testing.assert_allclose(fit.matrix, truth, atol=1e-3)
    inliers = np.setdiff1d(np.arange(len(source)), [3, 11])
    assert np.all(fit.residuals_mm[inliers] < 1e-3)
    assert fit.residuals_mm[3] == pytest.approx(25.0, abs=1e-2)
    assert fit.residuals_mm[11] == pytest.approx(np.hypot(30.0, 10.0), abs=1e-2)
    assert np.all(fit.weights[[3, 11]] < 0.1) and np.all(fit.weights[inliers] == 1.0)
    # plain least squares is pulled by the same outliers
    plain = fit_affine_robust(source, target, iterations=1)
    assert np.abs(plain.matrix - truth).max() > 0.01


def test_missing_points_are_left_out_and_reported_as_nan() -> None:
    source = _layout()
    truth = _known_map()
    target = apply_affine(truth, source)
    target[5] = np.nan
    fit = fit_affine_robust(source, target)
    np.testing.assert_allclose(fit.matrix, truth, atol=1e-6)
    assert np.isnan(fit.residuals_mm[5]) and fit.weights[5] == 0.0


def test_too_few_or_coplanar_points_do_not_determine_a_map() -> None:
    source = _layout(3)
    with pytest.raises(ValueError, match="3 usable point pairs"):
        fit_affine_robust(source, source)
    flat = _layout(10)
    flat[:, 2] = 4.0
    with pytest.raises(ValueError, match="not coplanar"):
        fit_affine_robust(flat, flat)
    with pytest.raises(ValueError, match="different sizes"):
        fit_affine_robust(_layout(10), _layout(9))
