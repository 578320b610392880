"""Small synthetic images and DICOM series for the I/O tests (no real data needed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medrl.io.images import Volume


def rotation_matrix(angle_x_deg: float, angle_z_deg: float) -> np.ndarray:
    """A proper rotation: ``angle_x_deg`` about x, then ``angle_z_deg`` about z."""
    ax, az = np.deg2rad(angle_x_deg), np.deg2rad(angle_z_deg)
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rot_z @ rot_x


def oblique_volume(
    shape_zyx: tuple[int, int, int] = (10, 14, 16),
    spacing_mm: tuple[float, float, float] = (0.8, 1.3, 2.5),
    blob_ijk: tuple[float, float, float] | None = None,
    seed: int = 0,
) -> Volume:
    """An oblique (20° about x and z), anisotropic volume with noise and a bright Gaussian blob.

    The blob is centred at continuous index ``blob_ijk`` (default: the middle of the image).
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    if blob_ijk is None:
        blob_ijk = ((nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2)
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    spacing = np.asarray(spacing_mm)
    dist2_mm = (
        ((i - blob_ijk[0]) * spacing[0]) ** 2
        + ((j - blob_ijk[1]) * spacing[1]) ** 2
        + ((k - blob_ijk[2]) * spacing[2]) ** 2
    )
    array = 1000.0 * np.exp(-dist2_mm / (2 * 3.0**2)) + rng.normal(0.0, 1.0, shape_zyx)
    return Volume(
        array=array.astype(np.float32),
        spacing_mm=spacing,
        origin_lps=np.array([-30.5, 12.25, 7.0]),
        direction_lps=rotation_matrix(20.0, 20.0),
        source="synthetic",
    )


def write_dicom_series(
    folder: Path,
    array_zyx: np.ndarray,
    spacing_mm: tuple[float, float, float],
    origin_lps: tuple[float, float, float],
    direction_lps: np.ndarray | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Write ``array_zyx`` as an int16 CT-like DICOM series, one file per slice.

    Follows SimpleITK's "DicomSeriesFromArray" example: each slice carries its own
    ImagePositionPatient (0020|0032), the shared ImageOrientationPatient (0020|0037) and a
    common SeriesInstanceUID (0020|000e); PixelSpacing comes from the slice spacing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(array_zyx, dtype=np.int16))
    image.SetSpacing(spacing_mm)
    image.SetOrigin(origin_lps)
    direction = np.eye(3) if direction_lps is None else np.asarray(direction_lps)
    image.SetDirection(tuple(float(v) for v in direction.reshape(-1)))
    date, clock = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    uid = series_uid or f"1.2.826.0.1.3680043.2.1125.{date}.{clock}"
    d = image.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    shared = [
        ("0008|0031", clock),
        ("0008|0021", date),
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0008|0060", "CT"),
        ("0020|000d", uid + ".1"),  # StudyInstanceUID
        ("0020|000e", uid),  # SeriesInstanceUID
        ("0020|0037", orientation),
        ("0008|103e", "medrl synthetic"),
        ("0018|0050", str(spacing_mm[2])),  # SliceThickness
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for index in range(image.GetDepth()):
        slice_image = image[:, :, index]
        for tag, value in shared:
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        slice_image.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        slice_image.SetMetaData("0020|0013", str(index + 1))  # InstanceNumber
        slice_image.SetMetaData("0008|0018", f"{uid}.{index + 1}")  # SOPInstanceUID
        path = folder / f"ct_{uid.replace('.', '_')}_{index:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_image)
        paths.append(path)
    return paths
