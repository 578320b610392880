"""The classical deformable baseline: the affine recipe of :mod:`medrl.baselines.registration`,
then a cubic B-spline.

:func:`bspline_registration` adds a B-spline stage after the affine one (control points every
:data:`BSPLINE_MESH_SPACING_MM`, 2 levels, Mattes MI, L-BFGS-B) and returns the whole
fixed -> moving map as a displacement field on a grid over the fixed image, with its inverse
(:func:`invert_displacement_field`). Frames and conventions are those of
:mod:`medrl.baselines.registration` (LPS mm, fixed -> moving).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import SimpleITK as sitk

from medrl.baselines.registration import (
    DEFAULT_NUM_THREADS,
    HISTOGRAM_BINS,
    WORKING_SPACING_MM,
    RegistrationResult,
    affine_stages,
    check_arguments,
    execute_registration,
    global_threads,
    itk_seed,
    log_result,
    working_image,
)
from medrl.io.images import Volume

BSPLINE_MESH_SPACING_MM = 30.0
"""Control points of the B-spline stage are about this far apart (the same mesh at both
levels)."""
BSPLINE_SHRINK_FACTORS = (2, 1)
BSPLINE_SMOOTHING_SIGMAS_MM = (1.0, 0.0)
BSPLINE_SAMPLES = 8_000
"""Voxels sampled per level of the B-spline stage. ITK's v4 metrics treat a B-spline as a
transform of global support, so an evaluation costs (samples x control points): the sample
is a fixed number rather than a share of the voxels, and the mesh is coarse."""
BSPLINE_MAX_ITERATIONS = 25
"""L-BFGS-B iterations per level of the B-spline stage."""
INVERSE_FIELD_ITERATIONS = 30
"""Fixed-point iterations inverting the B-spline's displacement field."""


def _bspline_stage(
    initial: sitk.Transform,
    fixed_image: sitk.Image,
    moving_image: sitk.Image,
    seed: int,
    source: str,
    mesh_spacing_mm: float,
    samples: int,
    max_iterations: int,
) -> tuple[sitk.BSplineTransform, sitk.ImageRegistrationMethod, int]:
    """A cubic B-spline on top of ``initial`` (kept fixed), 2 levels, Mattes MI, L-BFGS-B.

    The returned B-spline maps fixed points to the space ``initial`` starts from, so the
    whole fixed -> moving map is ``initial`` after it.
    """
    grid = _field_grid(fixed_image)
    extent_mm = np.asarray(grid["size"]) * np.asarray(grid["outputSpacing"])
    mesh = [max(1, round(float(e) / mesh_spacing_mm)) for e in extent_mm]
    # The B-spline covers the field's grid (the fixed image and a voxel of margin): outside
    # its domain it is the identity, a jump the sampled field must not show.
    domain = sitk.Image(grid["size"], sitk.sitkUInt8)
    domain.SetOrigin(grid["outputOrigin"])
    domain.SetSpacing(grid["outputSpacing"])
    domain.SetDirection(grid["outputDirection"])
    bspline = sitk.BSplineTransformInitializer(domain, mesh, order=3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    voxels = float(np.prod(fixed_image.GetSize()))
    percentages = [min(1.0, samples * f**3 / voxels) for f in BSPLINE_SHRINK_FACTORS]
    method.SetMetricSamplingPercentagePerLevel(percentages, itk_seed(seed))
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=max_iterations,
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=4 * max_iterations,
        costFunctionConvergenceFactor=1e7,
    )
    method.SetShrinkFactorsPerLevel(list(BSPLINE_SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(BSPLINE_SMOOTHING_SIGMAS_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetMovingInitialTransform(initial)
    # One mesh for both levels: L-BFGS-B keeps its parameter scales across levels, so a mesh
    # refined between levels (scaleFactors) is rejected.
    method.SetInitialTransform(bspline, inPlace=True)
    iterations = execute_registration(method, "B-spline", fixed_image, moving_image, source)
    return bspline, method, iterations


def _field_grid(image: sitk.Image) -> dict[str, Any]:
    """``image``'s grid grown by one voxel on every side (size, origin, spacing, direction).

    A displacement field transform is the identity outside its grid; the margin keeps the
    outer half voxel of the fixed image inside.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64) - direction @ spacing
    return {
        "size": [int(n) + 2 for n in image.GetSize()],
        "outputOrigin": tuple(float(v) for v in origin),
        "outputSpacing": tuple(float(v) for v in spacing),
        "outputDirection": tuple(float(v) for v in direction.reshape(-1)),
    }


def invert_displacement_field(field: sitk.Image) -> sitk.Image:
    """The inverse of a displacement field on its own grid, by fixed-point iteration
    (``sitk.InvertDisplacementField``, :data:`INVERSE_FIELD_ITERATIONS`, to 0.01 mm at worst
    and 0.0001 mm on average when it converges). Good where the inverse's points lie inside
    the grid, i.e. for displacements small against the grid's extent."""
    return sitk.InvertDisplacementField(
        field,
        maximumNumberOfIterations=INVERSE_FIELD_ITERATIONS,
        maxErrorToleranceThreshold=0.01,
        meanErrorToleranceThreshold=0.0001,
    )


def _sampled_field(transform: sitk.Transform, grid: dict[str, Any]) -> sitk.Image:
    """``transform`` sampled on ``grid`` as a float64 displacement field (LPS mm)."""
    return sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, **grid)


def bspline_registration(
    fixed: Volume,
    moving: Volume,
    seed: int = 0,
    *,
    spacing_mm: float = WORKING_SPACING_MM,
    num_threads: int = DEFAULT_NUM_THREADS,
    mesh_spacing_mm: float = BSPLINE_MESH_SPACING_MM,
    samples: int = BSPLINE_SAMPLES,
    max_iterations: int = BSPLINE_MAX_ITERATIONS,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: the affine recipe, then a cubic B-spline.

    Returns a ``sitk.DisplacementFieldTransform`` (fixed LPS -> moving LPS, the affine part
    included) sampled at the working spacing on a grid over the fixed image (one voxel of
    margin; outside it the field is the identity), and as ``inverse`` the moving -> fixed map:
    the exact inverse of the affine, then the B-spline part inverted by fixed-point iteration
    (``sitk.InvertDisplacementField``). Stages: rigid, affine, B-spline. Deterministic for a
    given ``seed`` with ``num_threads=1`` (seeded sampling; L-BFGS-B itself is deterministic).
    """
    check_arguments(seed, spacing_mm, num_threads)
    if not mesh_spacing_mm > 0:
        raise ValueError(f"mesh_spacing_mm must be positive, got {mesh_spacing_mm}")
    if samples < 100 or max_iterations < 1:
        raise ValueError(
            f"need samples >= 100 and max_iterations >= 1, got {samples}, {max_iterations}"
        )
    started = time.perf_counter()
    with global_threads(num_threads):
        fixed_image = working_image(fixed, spacing_mm)
        moving_image = working_image(moving, spacing_mm)
        affine, (rigid_method, rigid_iterations), (affine_method, affine_iterations) = (
            affine_stages(fixed_image, moving_image, seed, moving.source)
        )
        bspline, bspline_method, bspline_iterations = _bspline_stage(
            affine,
            fixed_image,
            moving_image,
            seed,
            moving.source,
            mesh_spacing_mm,
            samples,
            max_iterations,
        )
        grid = _field_grid(fixed_image)
        # CompositeTransform applies its last transform first: the B-spline, then the affine.
        forward = sitk.DisplacementFieldTransform(
            _sampled_field(sitk.CompositeTransform([affine, bspline]), grid)
        )
        bspline_inverse = invert_displacement_field(_sampled_field(bspline, grid))
        inverse = sitk.CompositeTransform(
            [sitk.DisplacementFieldTransform(bspline_inverse), affine.GetInverse()]
        )
    result = RegistrationResult(
        transform=forward,
        seconds=time.perf_counter() - started,
        metric_value=float(bspline_method.GetMetricValue()),
        iterations=(rigid_iterations, affine_iterations, bspline_iterations),
        stop_conditions=(
            rigid_method.GetOptimizerStopConditionDescription(),
            affine_method.GetOptimizerStopConditionDescription(),
            bspline_method.GetOptimizerStopConditionDescription(),
        ),
        inverse=inverse,
    )
    log_result("B-spline", fixed, moving, result)
    return result
