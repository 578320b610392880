"""3D scalar images: reading, writing, world <-> voxel geometry and isotropic resampling.

Frames (see ``docs/contracts.md``): SimpleITK works in LPS, medrl world points are RAS mm.
Arrays are indexed ``[k, j, i]`` = (z, y, x) as ``sitk.GetArrayFromImage`` returns them;
continuous voxel indices are ``(i, j, k)`` = (x, y, z). All index <-> world conversions go
through :meth:`Volume.index_to_lps_matrix`, the single place that encodes the ITK convention::

    LPS = origin_lps + direction_lps @ (spacing_mm * index_ijk)
    RAS = diag(-1, -1, 1) @ LPS
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from medrl.errors import InputError
from medrl.utils.atomic import TEMP_PREFIX, atomic_path

Frame = Literal["RAS", "LPS"]
Interpolator = Literal["linear", "nearest", "bspline"]

#: LPS <-> RAS is a sign flip of the first two axes (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: Image file suffixes that ``read_image``/``write_image`` accept, longest first.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Suffixes of single DICOM files (files without a suffix are sniffed for the DICM magic).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
#: Formats whose header names a separate data file (written into a temp folder, then moved).
_DETACHED_SUFFIXES: tuple[str, ...] = (".nhdr", ".mhd")

_INTERPOLATORS: dict[str, int] = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def _as_points(points: np.ndarray | list[float] | tuple[float, ...]) -> np.ndarray:
    """Return ``points`` as a float64 (N, 3) array; a single (3,) point becomes (1, 3)."""
    array = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3) or (3,), got {np.shape(points)}")
    return array


def _check_frame(frame: str) -> str:
    if frame not in ("RAS", "LPS"):
        raise ValueError(f"frame must be 'RAS' or 'LPS', got {frame!r}")
    return frame


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar image with its ITK geometry.

    Attributes:
        array: float32 voxels, shape (nz, ny, nx) as ``sitk.GetArrayFromImage`` returns them.
        spacing_mm: (3,) voxel size along the index axes (x, y, z) in mm.
        origin_lps: (3,) LPS position in mm of the centre of voxel index (0, 0, 0).
        direction_lps: (3, 3) ITK direction matrix; column c is index axis c in LPS.
        source: the file the image came from (for messages).
    """

    array: np.ndarray
    spacing_mm: np.ndarray
    origin_lps: np.ndarray
    direction_lps: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        if array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (nz, ny, nx), got shape {array.shape}")
        spacing = np.array(self.spacing_mm, dtype=np.float64).reshape(-1)
        origin = np.array(self.origin_lps, dtype=np.float64).reshape(-1)
        direction = np.array(self.direction_lps, dtype=np.float64)
        if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(f"spacing_mm must be 3 positive numbers, got {self.spacing_mm}")
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise ValueError(f"origin_lps must be 3 finite numbers, got {self.origin_lps}")
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise ValueError(f"direction_lps must be a finite 3x3 matrix, got {direction}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise ValueError(f"direction_lps is singular: {direction.tolist()}")
        for value in (spacing, origin, direction):
            value.flags.writeable = False
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_lps", origin)
        object.__setattr__(self, "direction_lps", direction)
        object.__setattr__(self, "source", str(self.source))

    # ----------------------------------------------------------------- geometry
    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along the index axes (nx, ny, nz)."""
        nz, ny, nx = self.array.shape
        return int(nx), int(ny), int(nz)

    @property
    def index_to_lps_matrix(self) -> np.ndarray:
        """(4, 4) affine mapping (i, j, k, 1) to (L, P, S, 1): the one place of the convention."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_lps @ np.diag(self.spacing_mm)
        affine[:3, 3] = self.origin_lps
        return affine

    @property
    def index_to_ras(self) -> np.ndarray:
        """(4, 4) affine mapping (i, j, k, 1) to (R, A, S, 1)."""
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        return flip @ self.index_to_lps_matrix

    @property
    def ras_to_index(self) -> np.ndarray:
        """(4, 4) affine mapping (R, A, S, 1) to continuous (i, j, k, 1)."""
        return np.linalg.inv(self.index_to_ras)

    def index_to_world(self, index_ijk: np.ndarray, frame: Frame = "RAS") -> np.ndarray:
        """Map continuous voxel indices (N, 3) or (3,) in (i, j, k) order to world mm (N, 3)."""
        _check_frame(frame)
        index = _as_points(index_ijk)
        affine = self.index_to_ras if frame == "RAS" else self.index_to_lps_matrix
        return index @ affine[:3, :3].T + affine[:3, 3]

    def world_to_index(self, points: np.ndarray, frame: Frame = "RAS") -> np.ndarray:
        """Map world points (N, 3) or (3,) in mm to continuous voxel indices (i, j, k), (N, 3)."""
        _check_frame(frame)
        world = _as_points(points)
        affine = self.index_to_ras if frame == "RAS" else self.index_to_lps_matrix
        return np.linalg.solve(affine[:3, :3], (world - affine[:3, 3]).T).T

    def contains_ras(self, points_ras: np.ndarray, margin_vox: float = 0.0) -> np.ndarray:
        """(N,) bool: whether each RAS point lies inside the image, ``margin_vox`` from the edge.

        A point is inside when every continuous index is within
        ``[-0.5 + margin_vox, n - 0.5 - margin_vox]`` (the outer faces of the edge voxels).
        """
        index = self.world_to_index(points_ras, frame="RAS")
        size = np.asarray(self.shape_xyz, dtype=np.float64)
        low = -0.5 + margin_vox
        high = size - 0.5 - margin_vox
        return np.all((index >= low) & (index <= high), axis=1)

    # --------------------------------------------------------------- SimpleITK
    def to_sitk(self) -> sitk.Image:
        """A float32 ``sitk.Image`` with this volume's voxels and geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array, dtype=np.float32))
        image.SetSpacing(tuple(float(v) for v in self.spacing_mm))
        image.SetOrigin(tuple(float(v) for v in self.origin_lps))
        image.SetDirection(tuple(float(v) for v in self.direction_lps.reshape(-1)))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, source: str | Path = "") -> Volume:
        """Build a Volume from a 3D scalar ``sitk.Image`` (cast to float32)."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a scalar image, got a multi-component one")
        if image.GetPixelID() != sitk.sitkFloat32:
            image = sitk.Cast(image, sitk.sitkFloat32)
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing_mm=np.array(image.GetSpacing(), dtype=np.float64),
            origin_lps=np.array(image.GetOrigin(), dtype=np.float64),
            direction_lps=np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3),
            source=str(source),
        )


# ------------------------------------------------------------------------ reading
def same_grid(a: Volume, b: Volume, tolerance_mm: float = 1e-3) -> bool:
    """Whether two volumes share size, spacing, origin and direction (within ``tolerance_mm``
    for positions and spacings, 1e-4 for the direction cosines)."""
    return (
        a.shape_xyz == b.shape_xyz
        and np.allclose(a.spacing_mm, b.spacing_mm, rtol=0.0, atol=tolerance_mm)
        and np.allclose(a.origin_lps, b.origin_lps, rtol=0.0, atol=tolerance_mm)
        and np.allclose(a.direction_lps, b.direction_lps, rtol=0.0, atol=1e-4)
    )


def _sitk_detail(error: RuntimeError) -> str:
    """The useful part of a SimpleITK exception message, without ITK source paths."""
    text = str(error)
    if "ERROR:" in text:
        text = text.rsplit("ERROR:", 1)[1]
    text = " ".join(text.split())
    return text[:300]


def _image_suffix(path: Path) -> str | None:
    """The recognised image suffix of ``path`` (lower case), or None."""
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def _is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts with a DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the DICOM series in ``folder`` (the one with most files if there are several)."""
    reader = sitk.ImageSeriesReader()
    try:
        series_ids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise InputError(f"cannot scan folder for DICOM: {_sitk_detail(error)}", folder) from None
    if not series_ids:
        raise InputError("folder holds no DICOM series (and is not an image file)", folder)
    files_by_id = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_by_id[sid]))
    if len(series_ids) > 1:
        counts = ", ".join(f"{sid} ({len(files_by_id[sid])} files)" for sid in series_ids)
        warnings.warn(
            f"{folder}: {len(series_ids)} DICOM series found: {counts}; "
            f"reading {chosen}, the one with most files",
            UserWarning,
            stacklevel=3,
        )
    reader.SetFileNames(files_by_id[chosen])
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read DICOM series: {_sitk_detail(error)}", folder) from None


def _read_file(path: Path) -> sitk.Image:
    suffix = _image_suffix(path)
    if suffix is None and not _is_dicom_file(path):
        supported = ", ".join(IMAGE_SUFFIXES + DICOM_SUFFIXES)
        raise InputError(
            f"unsupported image format '{path.suffix}' (supported: {supported}, "
            "or a folder holding a DICOM series)",
            path,
        )
    if path.stat().st_size == 0:
        raise InputError("image file is empty (0 bytes)", path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(
            f"cannot read image (corrupt, truncated or not really {suffix or 'DICOM'}): "
            f"{_sitk_detail(error)}",
            path,
        ) from None


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI-1 datatype codes of float32 / float64


def _nifti_non_finite(path: Path) -> int:
    """Count NaN/Inf voxels in a float NIfTI-1 file, read raw.

    ITK's NIfTI reader silently replaces NaN and Inf by 0, so they have to be found in the
    file itself. Returns 0 for non-float files or anything that is not plain NIfTI-1.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(348)
            if len(header) < 348:
                return 0
            endian = "<" if int.from_bytes(header[:4], "little") == 348 else ">"
            datatype = int(np.frombuffer(header, f"{endian}i2", 1, 70)[0])
            if datatype not in _NIFTI_FLOAT_TYPES:
                return 0
            offset = int(np.frombuffer(header, f"{endian}f4", 1, 108)[0])
            handle.read(max(offset - 348, 0))
            data = np.frombuffer(handle.read(), f"{endian}{_NIFTI_FLOAT_TYPES[datatype]}")
    except (OSError, ValueError, EOFError):
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def _check_voxels(array: np.ndarray, path: Path) -> None:
    """Reject images with no voxels, NaN/Inf voxels, or a single constant value."""
    if array.size == 0:
        raise InputError(f"image has zero voxels (size {array.shape[::-1]})", path)
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.count_nonzero(np.isnan(array)))
        n_inf = int(array.size - np.count_nonzero(finite) - n_nan)
        raise InputError(
            f"image has {n_nan} NaN and {n_inf} infinite voxel(s) out of {array.size}", path
        )
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise InputError(f"image is constant (every voxel is {low:g}): nothing to see", path)


def read_image(path: str | Path) -> Volume:
    """Read a 3D scalar image as a float32 :class:`Volume`, keeping its geometry.

    Accepts NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
    ``.mhd``), a single DICOM file, or a folder holding a DICOM series (if it holds several,
    the one with most files is read and a warning says so).

    Raises:
        InputError: the file is missing, unsupported, unreadable, not 3D, not scalar, empty,
            constant, or has NaN/Inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("image file not found", path)
    image = _read_dicom_series(path) if path.is_dir() else _read_file(path)

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(colour or vector image); a scalar (grey-level) image is needed",
            path,
        )
    if image.GetDimension() != 3:
        raise InputError(
            f"image is {image.GetDimension()}D with size {image.GetSize()}; a 3D image is needed",
            path,
        )
    try:
        image = sitk.Cast(image, sitk.sitkFloat32)
    except RuntimeError as error:
        raise InputError(f"cannot convert voxels to float: {_sitk_detail(error)}", path) from None
    array = sitk.GetArrayFromImage(image)
    _check_voxels(array, path)
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        bad = _nifti_non_finite(path)
        if bad:
            raise InputError(f"image has {bad} NaN or infinite voxel(s) out of {array.size}", path)
    try:
        return Volume.from_sitk(image, source=str(path))
    except ValueError as error:  # e.g. a degenerate direction matrix in the header
        raise InputError(f"invalid image geometry: {error}", path) from None


# ------------------------------------------------------------------------ writing
def write_image(volume: Volume, path: str | Path) -> None:
    """Write ``volume`` as float32 to ``path`` atomically; the format follows the suffix.

    Single-file formats go through :func:`medrl.utils.atomic.atomic_path`. Detached-header
    formats (``.mhd``, ``.nhdr``) are written into a temporary folder beside the target and
    moved into place data file first, header last.
    """
    path = Path(path)
    suffix = _image_suffix(path)
    if suffix is None or suffix in DICOM_SUFFIXES:
        raise InputError(
            f"cannot write image format '{path.suffix}' (supported: {', '.join(IMAGE_SUFFIXES)})",
            path,
        )
    image = volume.to_sitk()
    try:
        if suffix in _DETACHED_SUFFIXES:
            _write_detached(image, path)
        else:
            with atomic_path(path) as tmp:
                sitk.WriteImage(image, str(tmp), useCompression=True)
    except RuntimeError as error:
        raise InputError(f"cannot write image: {_sitk_detail(error)}", path) from None


def _write_detached(image: sitk.Image, path: Path) -> None:
    """Write a header + data file pair under their final names, then move them into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(tmp_dir / path.name), useCompression=True)
        written = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)  # header last
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --------------------------------------------------------------------- resampling
def resample_isotropic(
    volume: Volume, spacing_mm: float, interpolator: Interpolator = "linear"
) -> Volume:
    """Resample ``volume`` to cubic voxels of ``spacing_mm`` covering the same physical box.

    The output keeps the direction and the outer corner of voxel (0, 0, 0); its size along
    each axis is ``ceil(extent / spacing_mm)`` where ``extent = n * old_spacing``. Voxels
    beyond the input (at most one new voxel per axis) get the image minimum.
    """
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm must be a positive number, got {spacing_mm}")
    if interpolator not in _INTERPOLATORS:
        raise ValueError(
            f"interpolator must be one of {sorted(_INTERPOLATORS)}, got {interpolator!r}"
        )
    extent_mm = np.asarray(volume.shape_xyz, dtype=np.float64) * volume.spacing_mm
    # The small tolerance keeps exact multiples (e.g. 3 * 0.1 / 0.1) from gaining a voxel.
    new_size = [max(1, math.ceil(e / spacing_mm - 1e-6)) for e in extent_mm]
    new_spacing = np.full(3, float(spacing_mm))
    corner_lps = volume.origin_lps - volume.direction_lps @ (volume.spacing_mm / 2.0)
    new_origin = corner_lps + volume.direction_lps @ (new_spacing / 2.0)
    resampled = sitk.Resample(
        volume.to_sitk(),
        [int(n) for n in new_size],
        sitk.Transform(),
        _INTERPOLATORS[interpolator],
        tuple(float(v) for v in new_origin),
        tuple(float(v) for v in new_spacing),
        tuple(float(v) for v in volume.direction_lps.reshape(-1)),
        float(volume.array.min()) if volume.array.size else 0.0,
        sitk.sitkFloat32,
    )
    return Volume.from_sitk(resampled, source=volume.source)
