"""The robust affine fit between two layouts of the same targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medrl.geometry.robust_affine import apply_affine, fit_affine_robust, mean_layout


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


def test_the_mean_layout_of_affine_copies_is_the_first_layout() -> None:
    first = _layout(32, seed=4)
    copies = [
        first,
        apply_affine(_known_map(), first),
        apply_affine(np.linalg.inv(_known_map()), first),
    ]
    np.testing.assert_allclose(mean_layout(copies), first, atol=1e-8)
    np.testing.assert_array_equal(mean_layout([first]), first)


def test_the_mean_layout_lies_halfway_between_two_brains() -> None:
    """Two layouts that differ by more than an affine map: the mean (in the first's frame) is
    equally far, up to an affine map, from each, and nearer to each than they are to each
    other; a third brain drawn from the same spread is nearer to the mean than to either."""
    rng = np.random.default_rng(5)
    shape = _layout(32, seed=6)
    brains = [shape + rng.normal(0.0, 2.0, size=shape.shape) for _ in range(3)]
    second = apply_affine(_known_map(), brains[1])
    mean = mean_layout([brains[0], second])

    def residual(a: np.ndarray, b: np.ndarray) -> float:
        design = np.c_[a, np.ones(len(a))]
        solution, *_ = np.linalg.lstsq(design, b, rcond=None)
        return float(np.linalg.norm(design @ solution - b, axis=1).mean())

    to_first, to_second = residual(mean, brains[0]), residual(mean, second)
    assert to_first == pytest.approx(to_second, rel=0.05)
    assert max(to_first, to_second) < 0.6 * residual(brains[0], second)
    assert residual(mean, brains[2]) < min(
        residual(brains[0], brains[2]), residual(second, brains[2])
    )
    assert np.abs(mean - brains[0]).max() < 10.0  # kept in the first layout's frame


def test_layouts_to_average_must_be_complete_and_alike() -> None:
    first = _layout(10)
    with pytest.raises(ValueError, match="different sizes"):
        mean_layout([first, first[:9]])
    broken = first.copy()
    broken[2, 1] = np.nan
    with pytest.raises(ValueError, match="missing"):
        mean_layout([first, broken])
    with pytest.raises(ValueError, match="no layout"):
        mean_layout([])
