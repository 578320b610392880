"""Classical baseline: atlas landmarks mapped to a new image by affine registration.

Every evaluation table reports this baseline next to the learned agent. The recipe is a
standard SimpleITK one: both images are smoothed and resampled to about 2 mm, a rigid
(Euler) stage initialised at the centres of mass is followed by an affine stage, each
maximising Mattes mutual information (50 bins, so T1w can be registered to T2w) with a fixed
random sampling seed, over a 4-2-1 shrink pyramid.

Frames: SimpleITK works in LPS mm. :func:`register_affine` returns the ITK-convention
transform that maps *fixed* physical points to *moving* physical points (LPS);
:func:`propagate_landmarks` converts the RAS landmarks at the edges.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medrl.errors import InputError
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks

log = logging.getLogger(__name__)

WORKING_SPACING_MM = 2.0
"""Images finer than this are smoothed and resampled to it before registration."""

DEFAULT_NUM_THREADS = 2
"""Threads used by the registration; fixed (not the machine's core count) so that the
floating-point summation order, and therefore the result, is the same on every machine."""

HISTOGRAM_BINS = 50
SAMPLING_PERCENTAGE = 0.15
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS_MM = (2.0, 1.0, 0.0)


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """Outcome of :func:`affine_registration`.

    ``transform`` maps fixed LPS points to moving LPS points (an ``sitk.AffineTransform``);
    ``metric_value`` is the final Mattes MI (negative; lower is better); ``iterations`` and
    ``stop_conditions`` are per stage (rigid, affine) at the finest level.
    """

    transform: sitk.AffineTransform
    seconds: float
    metric_value: float
    iterations: tuple[int, int]
    stop_conditions: tuple[str, str]


@contextlib.contextmanager
def _global_threads(num_threads: int) -> Iterator[None]:
    """Temporarily set SimpleITK's default thread count (restored on exit)."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(num_threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _working_image(volume: Volume, spacing_mm: float) -> sitk.Image:
    """Float32 SimpleITK image, smoothed and resampled to ``spacing_mm`` if it is finer."""
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if np.all(spacing >= spacing_mm * 0.9):
        return image
    new_spacing = np.maximum(spacing, spacing_mm)
    # Anti-aliasing: Gaussian with sigma ~ half the new spacing, only along downsampled axes.
    sigmas_mm = np.sqrt(np.maximum(new_spacing**2 - spacing**2, 0.0)) / 2.0
    smoothed = sitk.SmoothingRecursiveGaussian(image, [float(s) for s in sigmas_mm])
    size = np.asarray(image.GetSize(), dtype=np.float64)
    new_size = [max(int(round(n)), 1) for n in size * spacing / new_spacing]
    # Keep the field of view centred: the first voxel centre moves by half the spacing change.
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    new_origin = origin + direction @ ((new_spacing - spacing) / 2.0)
    return sitk.Resample(
        smoothed,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in new_origin],
        [float(v) for v in new_spacing],
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _itk_seed(seed: int) -> int:
    """Map a user seed (int >= 0) to a non-zero 32-bit ITK seed (0 means 'wall clock')."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed) % (2**32 - 1) + 1


def _registration_method(
    seed: int,
    learning_rate: float,
    iterations: int,
    shrink_factors: Sequence[int],
    smoothing_sigmas_mm: Sequence[float],
) -> sitk.ImageRegistrationMethod:
    """Mattes-MI registration with seeded random sampling and physical-shift scales."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK treats seed 0 as sitkWallClock (non-deterministic), so shift by one.
    method.SetMetricSamplingPercentage(SAMPLING_PERCENTAGE, _itk_seed(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _execute(
    method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, source: str
) -> None:
    """Run a registration stage; SimpleITK failures become :class:`InputError`."""
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise InputError(
            f"affine registration failed (do the images overlap and show the same anatomy?): "
            f"{message}",
            source or None,
        ) from exc


def affine_registration(
    fixed: Volume,
    moving: Volume,
    seed: int = 0,
    *,
    spacing_mm: float = WORKING_SPACING_MM,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (rigid, then affine) and report time and metric.

    The returned transform maps fixed physical points (LPS mm) to moving physical points,
    i.e. ``moving`` resampled through it onto the fixed grid overlays ``fixed``.
    Deterministic for a given ``seed`` and ``num_threads``.
    """
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    started = time.perf_counter()
    with _global_threads(num_threads):
        fixed_image = _working_image(fixed, spacing_mm)
        moving_image = _working_image(moving, spacing_mm)

        rigid = sitk.CenteredTransformInitializer(
            fixed_image,
            moving_image,
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
        rigid = sitk.Euler3DTransform(rigid)
        rigid_method = _registration_method(
            seed, 2.0, 100, SHRINK_FACTORS, SMOOTHING_SIGMAS_MM
        )
        rigid_method.SetInitialTransform(rigid, inPlace=True)
        _execute(rigid_method, fixed_image, moving_image, moving.source)

        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        affine_method = _registration_method(
            seed, 1.0, 100, SHRINK_FACTORS[1:], SMOOTHING_SIGMAS_MM[1:]
        )
        affine_method.SetInitialTransform(affine, inPlace=True)
        _execute(affine_method, fixed_image, moving_image, moving.source)
    seconds = time.perf_counter() - started
    result = RegistrationResult(
        transform=affine,
        seconds=seconds,
        metric_value=float(affine_method.GetMetricValue()),
        iterations=(
            int(rigid_method.GetOptimizerIteration()),
            int(affine_method.GetOptimizerIteration()),
        ),
        stop_conditions=(
            rigid_method.GetOptimizerStopConditionDescription(),
            affine_method.GetOptimizerStopConditionDescription(),
        ),
    )
    log.info(
        "affine registration %s -> %s: %.2f s, Mattes MI %.4f, iterations %s",
        moving.source or "moving",
        fixed.source or "fixed",
        seconds,
        result.metric_value,
        result.iterations,
    )
    return result


def register_affine(fixed: Volume, moving: Volume, seed: int = 0) -> sitk.Transform:
    """Affine transform mapping fixed physical points (LPS) to moving physical points.

    See :func:`affine_registration` for the recipe and for the time taken.
    """
    return affine_registration(fixed, moving, seed).transform


def map_points_lps(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    """Apply a SimpleITK transform to (N, 3) LPS points; returns (N, 3) float64."""
    points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    return np.array(
        [transform.TransformPoint([float(v) for v in point]) for point in points],
        dtype=np.float64,
    ).reshape(-1, 3)


def propagate_landmarks_with_result(
    atlas: Volume,
    atlas_landmarks: Landmarks,
    target: Volume,
    seed: int = 0,
    *,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> tuple[Landmarks, RegistrationResult]:
    """:func:`propagate_landmarks`, also returning the registration (time, metric, transform)."""
    result = affine_registration(target, atlas, seed, num_threads=num_threads)
    # result.transform maps target -> atlas; landmarks travel atlas -> target (the inverse).
    inverse = result.transform.GetInverse()
    target_lps = map_points_lps(inverse, atlas_landmarks.points("LPS"))
    target_ras = target_lps * np.array([-1.0, -1.0, 1.0])
    landmarks = Landmarks(
        names=tuple(atlas_landmarks.names),
        points_ras=target_ras,
        descriptions=tuple(atlas_landmarks.descriptions),
    )
    return landmarks, result


def propagate_landmarks(
    atlas: Volume, atlas_landmarks: Landmarks, target: Volume, seed: int = 0
) -> Landmarks:
    """Map atlas landmarks (RAS) onto ``target`` through an affine atlas-to-target registration.

    The registration uses fixed=target, moving=atlas, so its transform maps target points to
    atlas points; the landmarks are mapped with its inverse. Time taken is logged (INFO) and
    available from :func:`propagate_landmarks_with_result`.
    """
    landmarks, _ = propagate_landmarks_with_result(atlas, atlas_landmarks, target, seed)
    return landmarks


__all__ = [
    "RegistrationResult",
    "affine_registration",
    "map_points_lps",
    "propagate_landmarks",
    "propagate_landmarks_with_result",
    "register_affine",
]
