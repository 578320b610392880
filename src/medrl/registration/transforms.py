"""Registration transforms: rigid fits of landmarks, RAS <-> LPS, inversion, use and files.

Convention (see :mod:`medrl.registration.base`): a registration's transform maps *fixed*
points to *moving* points in LPS mm (ITK's frame), so ``sitk.Resample(moving, fixed, T)``
shows the moving image on the fixed grid; landmarks of the moving image travel with the
inverse. medrl's own points and matrices are RAS: a (4, 4) ``matrix_ras`` maps RAS points,
``F @ matrix_ras @ F`` with ``F = diag(-1, -1, 1, 1)`` is the same map in LPS.

Files: :func:`write_transform` writes linear transforms (rigid, affine) as ITK text ``.tfm``
(``sitk.ReadTransform`` reads them back), displacement fields as a vector image
(``.nii.gz``: three float64 components per voxel, the displacement in LPS mm as ITK and ANTs
write them) that ``sitk.DisplacementFieldTransform(sitk.ReadImage(path))`` reads back, and
other transforms (composites, B-splines) as ITK HDF5 ``.h5``. :func:`read_transform` reads all
three.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medrl.baselines.bspline import invert_displacement_field
from medrl.baselines.registration import map_points_lps
from medrl.errors import InputError
from medrl.geometry.kabsch import fit_rigid_ras  # noqa: F401  (re-exported)
from medrl.io.images import _INTERPOLATORS, IMAGE_SUFFIXES, Interpolator, Volume
from medrl.io.landmarks import Landmarks
from medrl.registration.base import RegistrationOutcome
from medrl.utils.atomic import atomic_path

LPS_RAS_4X4 = np.diag([-1.0, -1.0, 1.0, 1.0])
"""RAS <-> LPS for homogeneous points (its own inverse)."""
LINEAR_SUFFIXES = (".tfm", ".txt", ".h5", ".mat")
"""File types ``sitk.WriteTransform`` writes (ITK text, HDF5, MATLAB)."""
FIELD_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
"""Image file types a displacement field is written to."""


def rigid_ras_to_sitk(matrix_ras: np.ndarray) -> sitk.Transform:
    """A (4, 4) RAS map as the same map of LPS points: an ``Euler3DTransform`` when it is a
    proper rotation plus translation (within 1e-6), else an ``AffineTransform``."""
    matrix = np.asarray(matrix_ras, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"need a finite (4, 4) matrix, got shape {matrix.shape}")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"the last row must be (0, 0, 0, 1), got {matrix[3].tolist()}")
    lps = LPS_RAS_4X4 @ matrix @ LPS_RAS_4X4
    linear, translation = lps[:3, :3], [float(v) for v in lps[:3, 3]]
    orthonormal = np.allclose(linear.T @ linear, np.eye(3), atol=1e-6)
    if orthonormal and np.linalg.det(linear) > 0:
        rigid = sitk.Euler3DTransform()
        rigid.SetMatrix([float(v) for v in linear.reshape(-1)], 1e-6)
        rigid.SetTranslation(translation)
        return rigid
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([float(v) for v in linear.reshape(-1)])
    affine.SetTranslation(translation)
    return affine


def move_header(volume: Volume, matrix_ras: np.ndarray, source: str = "") -> Volume:
    """``volume`` with its world moved by the rigid map ``matrix_ras`` (4, 4, RAS): the voxel
    that was at ``x`` is at ``matrix_ras x``. Only the header changes (origin and direction),
    so nothing is resampled or cropped: an exact misalignment for registration tests."""
    lps = LPS_RAS_4X4 @ np.asarray(matrix_ras, dtype=np.float64) @ LPS_RAS_4X4
    return Volume(
        volume.array,
        volume.spacing_mm,
        lps[:3, :3] @ volume.origin_lps + lps[:3, 3],
        lps[:3, :3] @ volume.direction_lps,
        source=source or volume.source,
    )


def sitk_to_matrix_ras(transform: sitk.Transform) -> np.ndarray:
    """A linear SimpleITK transform (LPS, any centre, composites of linear ones included) as
    the (4, 4) matrix of the same map of RAS points. ValueError for non-linear transforms."""
    if not transform.IsLinear():
        raise ValueError(f"not a linear transform: {transform.GetName()}")
    basis = np.vstack([np.zeros(3), np.eye(3)])
    mapped = map_points_lps(transform, basis)
    lps = np.eye(4)
    lps[:3, :3] = (mapped[1:] - mapped[0]).T
    lps[:3, 3] = mapped[0]
    return LPS_RAS_4X4 @ lps @ LPS_RAS_4X4


def is_displacement_field(transform: sitk.Transform) -> bool:
    """Whether ``transform`` is a ``sitk.DisplacementFieldTransform``."""
    return transform.GetTransformEnum() == sitk.sitkDisplacementField


def invert_transform(transform: sitk.Transform) -> sitk.Transform:
    """The inverse of ``transform``: exact for linear ones (``GetInverse``), by fixed-point
    iteration for a displacement field (:func:`~medrl.baselines.registration.
    invert_displacement_field`, on the field's own grid: good where the inverse's points lie
    inside that grid).

    Raises:
        ValueError: the transform cannot be inverted (singular, or a B-spline).
    """
    if is_displacement_field(transform):
        field = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        return sitk.DisplacementFieldTransform(invert_displacement_field(field))
    try:
        return transform.GetInverse()
    except RuntimeError as exc:
        raise ValueError(f"cannot invert the {transform.GetName()}: {exc}") from exc


def invert(outcome: RegistrationOutcome) -> sitk.Transform:
    """The moving -> fixed transform of a registration: the method's own inverse if it gave
    one (``outcome.inverse``), else :func:`invert_transform` of its transform."""
    if outcome.inverse is not None:
        return outcome.inverse
    return invert_transform(outcome.transform)


def map_landmarks(transform: sitk.Transform, landmarks: Landmarks) -> Landmarks:
    """``landmarks`` (RAS) moved by ``transform`` (LPS), names and descriptions kept.

    To carry a moving image's landmarks onto the fixed image, pass the *inverse* of the
    registration's transform (:func:`invert`).
    """
    mapped_lps = map_points_lps(transform, landmarks.points("LPS"))
    return Landmarks(
        names=tuple(landmarks.names),
        points_ras=mapped_lps * np.array([-1.0, -1.0, 1.0]),
        descriptions=tuple(landmarks.descriptions),
    )


def resample_moving(
    moving: Volume,
    fixed: Volume,
    transform: sitk.Transform,
    interpolator: Interpolator = "linear",
    default_value: float = 0.0,
) -> Volume:
    """``moving`` resampled on ``fixed``'s grid through the fixed -> moving ``transform``.

    ``"nearest"`` for label maps; voxels that map outside ``moving`` get ``default_value``.
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}")
    resampled = sitk.Resample(
        moving.to_sitk(),
        fixed.to_sitk(),
        transform,
        _INTERPOLATORS[interpolator],
        float(default_value),
        sitk.sitkFloat32,
    )
    return Volume.from_sitk(resampled, source=f"{moving.source} (on the grid of {fixed.source})")


def _suffix(path: Path, allowed: tuple[str, ...]) -> str | None:
    name = path.name.lower()
    return next((s for s in allowed if name.endswith(s)), None)


def transform_file_name(transform: sitk.Transform, stem: str = "transform") -> str:
    """``stem.nii.gz`` for a displacement field, ``stem.tfm`` for a linear transform and
    ``stem.h5`` for anything else (what :func:`write_transform` writes each as)."""
    if is_displacement_field(transform):
        return f"{stem}.nii.gz"
    return f"{stem}.tfm" if transform.IsLinear() else f"{stem}.h5"


def write_transform(transform: sitk.Transform, path: str | Path) -> None:
    """Write ``transform`` atomically: a displacement field as a vector image (``.nii.gz``,
    ``.nii``, ``.mha``, ``.nrrd``), any other transform with ``sitk.WriteTransform`` (``.tfm``,
    ``.txt``, ``.h5``, ``.mat``). InputError, naming the file, for a suffix that does not fit."""
    path = Path(path)
    field = is_displacement_field(transform)
    allowed = FIELD_SUFFIXES if field else LINEAR_SUFFIXES
    if _suffix(path, allowed) is None:
        kind = "a displacement field" if field else f"a {transform.GetName()}"
        raise InputError(f"cannot write {kind} here: use one of {', '.join(allowed)}", path)
    try:
        with atomic_path(path) as tmp:
            if field:
                image = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
                sitk.WriteImage(image, str(tmp), useCompression=True)
            else:
                sitk.WriteTransform(transform, str(tmp))
    except RuntimeError as exc:
        raise InputError(f"cannot write transform: {str(exc).strip()[-300:]}", path) from None


def read_transform(path: str | Path) -> sitk.Transform:
    """Read a transform written by :func:`write_transform` (or any ITK transform file, or a
    displacement field image: 3 components per voxel, LPS mm)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("transform file not found", path)
    try:
        if _suffix(path, IMAGE_SUFFIXES) is not None:
            image = sitk.ReadImage(str(path))
            if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
                raise InputError("a displacement field needs 3 components per 3D voxel", path)
            return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
        return sitk.ReadTransform(str(path)).Downcast()
    except RuntimeError as exc:
        raise InputError(f"cannot read transform: {str(exc).strip()[-300:]}", path) from None
