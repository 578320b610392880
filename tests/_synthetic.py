"""Small synthetic images and DICOM series for the I/O tests (no real data needed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medrl.io.images import Volume
from medrl.supervised.detector import DetectorSettings


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


# ------------------------------------------------------------- environment / agent tests
#: RAS centre of the blob and ramp volumes (away from 0 to catch centre/origin mix-ups).
CENTRE_RAS = np.array([10.0, -20.0, 30.0])
#: Blob centres relative to CENTRE_RAS (mm, RAS): well apart, within 20 mm of the centre.
BLOB_OFFSETS_RAS = np.array([[14.0, 9.0, -10.0], [-13.0, -10.0, 12.0], [4.0, -16.0, -13.0]])
BLOB_NAMES = ("blob_a", "blob_b", "blob_c")


def _grid_volume(
    shape_zyx: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    direction_lps: np.ndarray,
    centre_ras: np.ndarray,
) -> tuple[Volume, np.ndarray]:
    """An all-zero volume whose centre lies at ``centre_ras``, and the RAS point of each voxel
    as an array (nz, ny, nx, 3)."""
    nz, ny, nx = shape_zyx
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    direction = np.asarray(direction_lps, dtype=np.float64)
    centre_lps = np.asarray(centre_ras, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
    half_index = (np.array([nx, ny, nz], dtype=np.float64) - 1) / 2
    origin_lps = centre_lps - direction @ (spacing * half_index)
    empty = Volume(np.zeros(shape_zyx, np.float32), spacing, origin_lps, direction, "synthetic")
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    ras = empty.index_to_world(index, "RAS").reshape(nz, ny, nx, 3)
    return empty, ras


def blob_volume(
    shape_zyx: tuple[int, int, int] = (64, 64, 64),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    direction_lps: np.ndarray | None = None,
    blobs_ras: np.ndarray | None = None,
    sigma_mm: float = 4.0,
    noise: float = 5.0,
    centre_ras: np.ndarray = CENTRE_RAS,
    seed: int = 0,
) -> tuple[Volume, np.ndarray]:
    """An oblique volume of Gaussian blobs (peaks 1000, 800, 600, ...) on a weak noise floor.

    Returns the volume and the blob centres (B, 3) RAS mm (default: ``CENTRE_RAS`` plus
    ``BLOB_OFFSETS_RAS``). The direction defaults to ``rotation_matrix(20, 20)``.
    """
    if direction_lps is None:
        direction_lps = rotation_matrix(20.0, 20.0)
    if blobs_ras is None:
        blobs_ras = np.asarray(centre_ras) + BLOB_OFFSETS_RAS
    blobs_ras = np.atleast_2d(np.asarray(blobs_ras, dtype=np.float64))
    empty, ras = _grid_volume(shape_zyx, spacing_mm, direction_lps, centre_ras)
    array = np.zeros(shape_zyx, np.float64)
    for index, blob in enumerate(blobs_ras):
        dist2 = np.sum((ras - blob) ** 2, axis=-1)
        array += (1000.0 - 200.0 * index) * np.exp(-dist2 / (2 * sigma_mm**2))
    array += np.random.default_rng(seed).normal(0.0, noise, shape_zyx)
    volume = Volume(
        array.astype(np.float32), empty.spacing_mm, empty.origin_lps, empty.direction_lps, "blobs"
    )
    return volume, blobs_ras


def ramp_volume(
    gradient_ras: tuple[float, float, float] = (1.0, 2.0, 3.0),
    offset: float = 500.0,
    shape_zyx: tuple[int, int, int] = (40, 36, 32),
    spacing_mm: tuple[float, float, float] = (1.2, 1.5, 2.0),
    direction_lps: np.ndarray | None = None,
    centre_ras: np.ndarray = CENTRE_RAS,
) -> Volume:
    """An oblique, anisotropic volume with voxel values ``gradient . (RAS - centre) + offset``."""
    if direction_lps is None:
        direction_lps = rotation_matrix(25.0, -30.0)
    empty, ras = _grid_volume(shape_zyx, spacing_mm, direction_lps, centre_ras)
    array = (ras - np.asarray(centre_ras)) @ np.asarray(gradient_ras, dtype=np.float64) + offset
    return Volume(
        array.astype(np.float32), empty.spacing_mm, empty.origin_lps, empty.direction_lps, "ramp"
    )


def write_untrained_model(folder: Path) -> Path:
    """An untrained smoke-preset model for the blob landmarks (seeded), saved in ``folder``."""
    import torch

    import medrl
    from medrl.agents.checkpoint import build_network, save_model_files
    from medrl.config import load_config

    torch.manual_seed(0)
    config = load_config(Path(medrl.__file__).parent / "configs" / "smoke.yaml")
    network = build_network(config, len(BLOB_NAMES))
    save_model_files(folder, network, config, BLOB_NAMES, ("a", "b", "c"), {})
    return folder


#: Cuboid structures of the box phantom: centre offset from CENTRE_RAS and half size (mm, RAS).
CUBOIDS_RAS = (
    (np.array([12.0, 8.0, -9.0]), np.array([7.0, 5.0, 4.0])),
    (np.array([-11.0, -9.0, 10.0]), np.array([4.0, 6.0, 3.0])),
    (np.array([3.0, -14.0, -12.0]), np.array([3.0, 3.0, 5.0])),
)
CUBOID_NAMES = {1: "cuboid_a", 2: "cuboid_b", 3: "cuboid_c"}


def cuboid_volume(
    shape_zyx: tuple[int, int, int] = (48, 48, 48),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    centre_ras: np.ndarray = CENTRE_RAS,
    noise: float = 5.0,
    seed: int = 0,
) -> tuple[Volume, Volume]:
    """An axis-aligned volume of bright cuboids (1000, 800, 600) on a faint head-sized ball,
    and its label map on the same grid (labels 1, 2, 3: ``CUBOID_NAMES``)."""
    empty, ras = _grid_volume(shape_zyx, spacing_mm, np.eye(3), centre_ras)
    relative = ras - np.asarray(centre_ras)
    array = np.where(np.linalg.norm(relative, axis=-1) < 30.0, 200.0, 0.0)
    labels = np.zeros(shape_zyx, np.uint8)
    for index, (offset, half) in enumerate(CUBOIDS_RAS):
        inside = np.all(np.abs(relative - offset) <= half, axis=-1)
        array = np.where(inside, 1000.0 - 200.0 * index, array)
        labels[inside] = index + 1
    array = array + np.random.default_rng(seed).normal(0.0, noise, shape_zyx)
    geometry = (empty.spacing_mm, empty.origin_lps, empty.direction_lps)
    image = Volume(array.astype(np.float32), *geometry, "cuboids")
    return image, Volume(labels, *geometry, "cuboid labels")


def write_blob_datalist(folder: Path) -> dict[str, Path]:
    """Train and test blob scans (NIfTI; the test scan the same anatomy shifted by a few mm,
    other noise) with .fcsv landmarks and a JSON datalist ``datalist.json`` in ``folder``."""
    import json

    from medrl.io.images import write_image
    from medrl.io.landmarks import Landmarks, write_landmarks

    train_volume, train_blobs = blob_volume(seed=0)
    test_blobs = train_blobs + np.array([3.0, -2.0, 2.5])
    test_volume, _ = blob_volume(blobs_ras=test_blobs, seed=1)
    paths = {}
    for name, volume, blobs in (
        ("train", train_volume, train_blobs),
        ("test", test_volume, test_blobs),
    ):
        write_image(volume, folder / f"{name}.nii.gz")
        write_landmarks(Landmarks(BLOB_NAMES, blobs, ("a", "b", "c")), folder / f"{name}.fcsv")
        paths[name] = folder / f"{name}.nii.gz"
    cases = [
        {"id": name, "image": f"{name}.nii.gz", "landmarks": f"{name}.fcsv", "split": name}
        for name in ("train", "test")
    ]
    (folder / "datalist.json").write_text(json.dumps({"cases": cases}))
    paths["datalist"] = folder / "datalist.json"
    return paths


#: A supervised detector small enough for the tests (16^3 patches, 4 channels).
TINY_DETECTOR = DetectorSettings(
    coarse_size=16, coarse_spacing_mm=6.0, coarse_width=4, local_size=16,
    local_spacing_mm=1.5, local_width=4, blur_spacing_mm=3.0,
)  # fmt: skip
