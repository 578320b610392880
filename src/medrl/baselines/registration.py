"""Classical baselines: rigid, affine and B-spline registration with SimpleITK.

Every evaluation table reports the affine baseline (atlas landmarks mapped to a new image)
next to the learned agent; ``medrl register`` offers all three. The recipe is a standard
SimpleITK one:

* both images are block-averaged to about 2 mm voxels (:data:`WORKING_SPACING_MM`);
* a rigid (Euler) transform is initialised by aligning the centres of mass (MOMENTS);
* a rigid stage (shrink 4-2-1, smoothing 2-1-0 mm) is followed by an affine stage
  (shrink 2-1, smoothing 1-0 mm) started from the rigid result;
* both maximise Mattes mutual information (50 bins, so a T1w atlas can be registered to a
  T2w image) on a seeded random sample of voxels, with a regular-step gradient descent whose
  parameter scales come from physical shifts;
* :func:`rigid_registration` stops after the rigid stage; the B-spline recipe that follows
  the affine stage is :mod:`medrl.baselines.bspline`.

Frames: SimpleITK works in LPS mm. :func:`register_affine` returns the ITK-convention
transform that maps *fixed* physical points to *moving* physical points (LPS);
:func:`propagate_landmarks` converts the RAS landmarks at the edges, and :func:`propagate_labels`
resamples an atlas label map onto the target grid through the same transform.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medrl.errors import InputError
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks

log = logging.getLogger(__name__)

WORKING_SPACING_MM = 2.0
"""Images finer than this are block-averaged to about this spacing before registration."""

DEFAULT_NUM_THREADS = 1
"""Threads used by the registration. With more than one, ITK's per-thread partial sums are
combined in a varying order, so repeated runs differ in the last bits (~1e-12 mm) and, through
the optimiser's step decisions, possibly more; one thread makes the result bit-for-bit
reproducible. The small images (about 2 mm voxels) gain little from more threads anyway."""

HISTOGRAM_BINS = 50
"""Mattes mutual information histogram bins."""


@dataclass(frozen=True)
class _Stage:
    """One registration stage: optimiser settings and its multi-resolution schedule."""

    name: str
    learning_rate: float  # first step, in physical-shift-scaled units (~mm)
    min_step: float
    max_iterations: int  # per level
    relaxation: float  # step multiplier when the gradient turns back
    shrink_factors: tuple[int, ...]
    smoothing_sigmas_mm: tuple[float, ...]
    sampling_percentages: tuple[float, ...]  # per level; fewer samples where voxels are many


RIGID_STAGE = _Stage(
    name="rigid",
    learning_rate=2.0,
    min_step=0.01,
    max_iterations=200,
    relaxation=0.8,
    shrink_factors=(4, 2, 1),
    smoothing_sigmas_mm=(2.0, 1.0, 0.0),
    sampling_percentages=(0.3, 0.1, 0.02),
)
REFINE_STAGE = _Stage(
    name="rigid refinement",
    learning_rate=0.5,
    min_step=0.01,
    max_iterations=100,
    relaxation=0.8,
    shrink_factors=(2, 1),
    smoothing_sigmas_mm=(1.0, 0.0),
    sampling_percentages=(0.1, 0.02),
)
"""The rigid stage's last two levels with a shorter first step: from a transform within a few
mm and degrees (the rigid agent's), where the coarse levels are not needed."""
AFFINE_STAGE = _Stage(
    name="affine",
    learning_rate=1.0,
    min_step=0.01,
    max_iterations=100,
    relaxation=0.8,
    shrink_factors=(2, 1),
    smoothing_sigmas_mm=(1.0, 0.0),
    sampling_percentages=(0.1, 0.02),
)


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """Outcome of :func:`affine_registration`, :func:`rigid_registration` and
    :func:`medrl.baselines.bspline.bspline_registration`.

    Attributes:
        transform: maps fixed LPS points to moving LPS points: a ``sitk.AffineTransform``
            (affine), ``sitk.Euler3DTransform`` (rigid) or ``sitk.DisplacementFieldTransform``
            (B-spline, sampled on a grid over the fixed image).
        seconds: wall-clock time of the whole registration (resampling included).
        metric_value: final Mattes MI of the last stage (negated: lower is better).
        iterations: optimiser iterations per stage (e.g. rigid, affine), all levels together.
        stop_conditions: the optimiser's stop reason per stage (last level).
        inverse: moving -> fixed (LPS), for transforms without an exact ``GetInverse``
            (the B-spline's displacement field); None otherwise.
    """

    transform: sitk.Transform
    seconds: float
    metric_value: float
    iterations: tuple[int, ...]
    stop_conditions: tuple[str, ...]
    inverse: sitk.Transform | None = None


@contextlib.contextmanager
def global_threads(num_threads: int) -> Iterator[None]:
    """Temporarily set SimpleITK's default thread count (restored on exit)."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(num_threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def working_image(volume: Volume, spacing_mm: float) -> sitk.Image:
    """Float32 SimpleITK image with voxels of about ``spacing_mm`` (never finer than given).

    Each axis is shrunk by the largest integer factor that keeps its spacing <= ``spacing_mm``
    by averaging blocks of voxels (``BinShrink``: anti-aliased and fast); physical positions
    are unchanged (the output voxel centres sit at the centres of the averaged blocks).
    """
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    factors = [max(1, int(np.floor(spacing_mm / s + 1e-6))) for s in spacing]
    if all(f == 1 for f in factors):
        return image
    return sitk.BinShrink(image, factors)


def itk_seed(seed: int) -> int:
    """Map a user seed (int >= 0) to a non-zero 32-bit ITK seed.

    SimpleITK reads seed 0 as ``sitkWallClock`` (a different sample every run), so the
    seed is shifted by one.
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed) % (2**32 - 1) + 1


def _registration_method(stage: _Stage, seed: int) -> sitk.ImageRegistrationMethod:
    """Mattes-MI registration with seeded random sampling and physical-shift scales."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(list(stage.sampling_percentages), itk_seed(seed))
    # Image gradients at the sampled points only, instead of whole gradient images per level.
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=stage.learning_rate,
        minStep=stage.min_step,
        numberOfIterations=stage.max_iterations,
        relaxationFactor=stage.relaxation,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(stage.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(stage.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _run_stage(
    stage: _Stage,
    transform: sitk.Transform,
    fixed: sitk.Image,
    moving: sitk.Image,
    seed: int,
    source: str,
) -> tuple[sitk.ImageRegistrationMethod, int]:
    """Optimise ``transform`` in place; return the method and the iterations run.

    SimpleITK failures (e.g. no overlap left between the images) become :class:`InputError`.
    """
    method = _registration_method(stage, seed)
    method.SetInitialTransform(transform, inPlace=True)
    return method, execute_registration(method, stage.name, fixed, moving, source)


def execute_registration(
    method: sitk.ImageRegistrationMethod,
    name: str,
    fixed: sitk.Image,
    moving: sitk.Image,
    source: str,
) -> int:
    """Run a configured registration; return the iterations run (all levels together).

    SimpleITK failures (e.g. no overlap left between the images) become :class:`InputError`.
    """
    iterations = [0]

    def count() -> None:
        iterations[0] += 1

    method.AddCommand(sitk.sitkIterationEvent, count)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise InputError(
            f"{name} registration failed (do the images overlap and show the same "
            f"anatomy?): {lines[-1] if lines else exc!r}",
            source or None,
        ) from exc
    return iterations[0]


def check_arguments(seed: int, spacing_mm: float, num_threads: int) -> None:
    """ValueError for a bad seed, working spacing or thread count (before any work)."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    itk_seed(seed)


def _rigid_stage(
    fixed_image: sitk.Image,
    moving_image: sitk.Image,
    seed: int,
    source: str,
    initial: sitk.Euler3DTransform | None = None,
) -> tuple[sitk.Euler3DTransform, sitk.ImageRegistrationMethod, int]:
    """The rigid stage shared by every recipe: MOMENTS initialisation, then :data:`RIGID_STAGE`;
    or, from an ``initial`` transform already close (the rigid agent's), :data:`REFINE_STAGE`.

    Returns the optimised transform, the registration method (metric value, stop reason) and
    the iterations run.
    """
    if initial is not None:
        rigid = sitk.Euler3DTransform(initial)
        stage = REFINE_STAGE
    else:
        rigid = sitk.Euler3DTransform(
            sitk.CenteredTransformInitializer(
                fixed_image,
                moving_image,
                sitk.Euler3DTransform(),
                sitk.CenteredTransformInitializerFilter.MOMENTS,
            )
        )
        stage = RIGID_STAGE
    method, iterations = _run_stage(stage, rigid, fixed_image, moving_image, seed, source)
    return rigid, method, iterations


def _affine_stage(
    rigid: sitk.Euler3DTransform,
    fixed_image: sitk.Image,
    moving_image: sitk.Image,
    seed: int,
    source: str,
) -> tuple[sitk.AffineTransform, sitk.ImageRegistrationMethod, int]:
    """:data:`AFFINE_STAGE` started from the rigid result."""
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    method, iterations = _run_stage(AFFINE_STAGE, affine, fixed_image, moving_image, seed, source)
    return affine, method, iterations


def affine_stages(
    fixed_image: sitk.Image, moving_image: sitk.Image, seed: int, source: str
) -> tuple[
    sitk.AffineTransform,
    tuple[sitk.ImageRegistrationMethod, int],
    tuple[sitk.ImageRegistrationMethod, int],
]:
    """The affine recipe on working images: the rigid stage, then the affine stage from it.
    Returns the affine transform and (method, iterations) of each stage."""
    rigid, rigid_method, rigid_iterations = _rigid_stage(fixed_image, moving_image, seed, source)
    affine, affine_method, affine_iterations = _affine_stage(
        rigid, fixed_image, moving_image, seed, source
    )
    return affine, (rigid_method, rigid_iterations), (affine_method, affine_iterations)


def rigid_registration(
    fixed: Volume,
    moving: Volume,
    seed: int = 0,
    *,
    spacing_mm: float = WORKING_SPACING_MM,
    num_threads: int = DEFAULT_NUM_THREADS,
    initial: sitk.Euler3DTransform | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` rigidly: the rigid stage of :func:`affine_registration`
    (or, from an ``initial`` transform, its refinement: :data:`REFINE_STAGE`).

    The result's transform is a ``sitk.Euler3DTransform`` mapping fixed LPS points to moving
    LPS points. Deterministic like :func:`affine_registration`.
    """
    check_arguments(seed, spacing_mm, num_threads)
    started = time.perf_counter()
    with global_threads(num_threads):
        fixed_image = working_image(fixed, spacing_mm)
        moving_image = working_image(moving, spacing_mm)
        rigid, method, iterations = _rigid_stage(
            fixed_image, moving_image, seed, moving.source, initial
        )
    result = RegistrationResult(
        transform=rigid,
        seconds=time.perf_counter() - started,
        metric_value=float(method.GetMetricValue()),
        iterations=(iterations,),
        stop_conditions=(method.GetOptimizerStopConditionDescription(),),
    )
    log_result("rigid", fixed, moving, result)
    return result


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
    Bit-for-bit deterministic for a given ``seed`` with ``num_threads=1`` (the default);
    SimpleITK's global thread setting is restored afterwards.
    """
    check_arguments(seed, spacing_mm, num_threads)
    started = time.perf_counter()
    with global_threads(num_threads):
        fixed_image = working_image(fixed, spacing_mm)
        moving_image = working_image(moving, spacing_mm)
        affine, (rigid_method, rigid_iterations), (affine_method, affine_iterations) = (
            affine_stages(fixed_image, moving_image, seed, moving.source)
        )
    result = RegistrationResult(
        transform=affine,
        seconds=time.perf_counter() - started,
        metric_value=float(affine_method.GetMetricValue()),
        iterations=(rigid_iterations, affine_iterations),
        stop_conditions=(
            rigid_method.GetOptimizerStopConditionDescription(),
            affine_method.GetOptimizerStopConditionDescription(),
        ),
    )
    log_result("affine", fixed, moving, result)
    return result


def log_result(name: str, fixed: Volume, moving: Volume, result: RegistrationResult) -> None:
    log.info(
        "%s registration of %s to %s: %.2f s, Mattes MI %.4f, iterations %s",
        name,
        moving.source or "moving image",
        fixed.source or "fixed image",
        result.seconds,
        result.metric_value,
        result.iterations,
    )


def register_affine(fixed: Volume, moving: Volume, seed: int = 0) -> sitk.Transform:
    """Affine transform mapping fixed physical points (LPS) to moving physical points.

    See :func:`affine_registration` for the recipe and for the time taken.
    """
    return affine_registration(fixed, moving, seed).transform


def map_points_lps(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    """Apply a SimpleITK transform to (N, 3) LPS points; returns (N, 3) float64 LPS."""
    points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    mapped = [transform.TransformPoint([float(v) for v in point]) for point in points]
    return np.asarray(mapped, dtype=np.float64).reshape(-1, 3)


def propagate_landmarks_with_result(
    atlas: Volume,
    atlas_landmarks: Landmarks,
    target: Volume,
    seed: int = 0,
    *,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> tuple[Landmarks, RegistrationResult]:
    """:func:`propagate_landmarks`, also returning the registration (transform, time, metric)."""
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
    """Map atlas landmarks (RAS) onto ``target`` by affine registration of atlas to target.

    The registration uses fixed=target, moving=atlas, so its transform maps target points to
    atlas points; the landmarks are mapped with its inverse. Time taken is logged (INFO) and
    available from :func:`propagate_landmarks_with_result`.
    """
    landmarks, _ = propagate_landmarks_with_result(atlas, atlas_landmarks, target, seed)
    return landmarks


def propagate_labels(
    atlas: Volume,
    atlas_labels: Volume,
    target: Volume,
    seed: int = 0,
    transform: sitk.Transform | None = None,
    *,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> Volume:
    """Map an atlas label map onto ``target``'s grid by affine registration of atlas to target.

    The registration is the one :func:`propagate_landmarks` uses (fixed=target, moving=atlas),
    so its transform maps target points to atlas points: exactly what resampling the atlas
    labels onto the target grid needs (nearest neighbour; 0 where the atlas labels do not
    reach). Pass ``transform`` (e.g. ``affine_registration(target, atlas, seed).transform``)
    to reuse a registration already computed, so that landmarks and labels share it; ``seed``
    and ``num_threads`` are then unused. Boxes of the result come from
    :func:`medrl.geometry.boxes.boxes_from_label_map`.
    """
    if transform is None:
        transform = affine_registration(target, atlas, seed, num_threads=num_threads).transform
    reference = sitk.Image(list(target.shape_xyz), sitk.sitkUInt8)
    reference.SetSpacing(tuple(float(v) for v in target.spacing_mm))
    reference.SetOrigin(tuple(float(v) for v in target.origin_lps))
    reference.SetDirection(tuple(float(v) for v in target.direction_lps.reshape(-1)))
    warped = sitk.Resample(
        atlas_labels.to_sitk(),
        reference,
        transform,
        sitk.sitkNearestNeighbor,
        0.0,
        sitk.sitkFloat32,
    )
    return Volume.from_sitk(warped, source=f"{atlas_labels.source} (propagated to {target.source})")
