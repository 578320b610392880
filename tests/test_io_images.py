"""Tests for medrl.io.images: geometry, format round trips, DICOM series, bad inputs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _synthetic import oblique_volume, rotation_matrix, write_dicom_series
from medrl.errors import InputError
from medrl.io.images import Volume, read_image, resample_isotropic, write_image

FLIP = np.array([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------- geometry
def test_world_index_round_trip_oblique_anisotropic() -> None:
    volume = oblique_volume()
    rng = np.random.default_rng(1)
    index = rng.uniform(-2, 18, size=(50, 3))
    for frame in ("RAS", "LPS"):
        world = volume.index_to_world(index, frame=frame)
        np.testing.assert_allclose(volume.world_to_index(world, frame=frame), index, atol=1e-9)
    # A single (3,) point is accepted and comes back as (1, 3).
    assert volume.index_to_world(np.array([1.0, 2.0, 3.0])).shape == (1, 3)


def test_world_matches_simpleitk_lps_and_ras_is_sign_flip() -> None:
    volume = oblique_volume()
    image = volume.to_sitk()
    index = np.array([[0.0, 0.0, 0.0], [3.25, 7.5, 1.75], [15.0, 13.0, 9.0], [-0.5, 2.0, 4.4]])
    expected_lps = np.array([image.TransformContinuousIndexToPhysicalPoint(p) for p in index])
    np.testing.assert_allclose(volume.index_to_world(index, frame="LPS"), expected_lps, atol=1e-9)
    np.testing.assert_allclose(volume.index_to_world(index), expected_lps * FLIP, atol=1e-9)
    # The origin is the LPS position of voxel (0, 0, 0), not a corner.
    np.testing.assert_allclose(expected_lps[0], volume.origin_lps)
    # Back from SimpleITK's physical points to its continuous index.
    back = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in expected_lps])
    np.testing.assert_allclose(volume.world_to_index(expected_lps, frame="LPS"), back, atol=1e-9)


def test_affines_are_inverse_and_carry_spacing() -> None:
    volume = oblique_volume()
    np.testing.assert_allclose(volume.index_to_ras @ volume.ras_to_index, np.eye(4), atol=1e-12)
    column_norms = np.linalg.norm(volume.index_to_ras[:3, :3], axis=0)
    np.testing.assert_allclose(column_norms, [0.8, 1.3, 2.5])
    np.testing.assert_allclose(volume.index_to_ras[:3, 3], volume.origin_lps * FLIP)
    np.testing.assert_array_equal(volume.index_to_ras[3], [0, 0, 0, 1])
    assert volume.shape_xyz == (16, 14, 10)


def test_contains_ras_edges_and_margin() -> None:
    volume = oblique_volume()
    index = np.array(
        [
            [-0.499, 0, 0],
            [-0.51, 0, 0],
            [15.499, 13.499, 9.499],
            [15.51, 0, 0],
            [0, 0, 9.6],
            [8, 7, 5],
        ]
    )
    inside = volume.contains_ras(volume.index_to_world(index))
    np.testing.assert_array_equal(inside, [True, False, True, False, False, True])
    with_margin = volume.contains_ras(volume.index_to_world(index), margin_vox=2.0)
    np.testing.assert_array_equal(with_margin, [False, False, False, False, False, True])


def test_volume_validates_arguments() -> None:
    good = oblique_volume()
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((3, 3)), good.spacing_mm, good.origin_lps, good.direction_lps)
    with pytest.raises(ValueError, match="spacing"):
        Volume(good.array, [1.0, 0.0, 1.0], good.origin_lps, good.direction_lps)
    with pytest.raises(ValueError, match="singular"):
        Volume(good.array, good.spacing_mm, good.origin_lps, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="frame"):
        good.index_to_world([0, 0, 0], frame="IJK")  # type: ignore[arg-type]
    cast = Volume(np.ones((2, 2, 2), dtype=np.int16), [1, 1, 1], [0, 0, 0], np.eye(3))
    assert cast.array.dtype == np.float32


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"])
def test_write_read_round_trip_keeps_geometry(tmp_path: Path, suffix: str) -> None:
    volume = oblique_volume()
    path = tmp_path / f"case.v1{suffix}"
    write_image(volume, path)
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded.array, volume.array)
    assert loaded.array.dtype == np.float32
    np.testing.assert_allclose(loaded.spacing_mm, volume.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(loaded.origin_lps, volume.origin_lps, atol=1e-4)
    np.testing.assert_allclose(loaded.direction_lps, volume.direction_lps, atol=1e-4)
    assert loaded.source == str(path)
    # No temporary files are left behind; detached formats keep exactly header + data.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any(name.startswith(".") for name in names), names
    assert len(names) == (2 if suffix in (".mhd", ".nhdr") else 1), names


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "img.mha"
    write_image(oblique_volume(seed=1), path)
    second = oblique_volume(seed=2)
    write_image(second, path)
    np.testing.assert_array_equal(read_image(path).array, second.array)


def test_write_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"img\.png"):
        write_image(oblique_volume(), tmp_path / "img.png")
    assert list(tmp_path.iterdir()) == []


def test_size_one_axis_is_fine(tmp_path: Path) -> None:
    volume = oblique_volume(shape_zyx=(1, 6, 7))
    path = tmp_path / "thin.nii.gz"
    write_image(volume, path)
    loaded = read_image(path)
    assert loaded.shape_xyz == (7, 6, 1)


# ---------------------------------------------------------------------------- DICOM
def _ct_like(shape_zyx: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, size=shape_zyx).astype(np.int16)


def test_dicom_series_folder(tmp_path: Path) -> None:
    array = _ct_like((6, 9, 8))
    spacing, origin = (0.7, 0.9, 2.5), (-50.0, -60.5, 30.0)
    direction = rotation_matrix(10.0, 0.0)
    write_dicom_series(tmp_path / "series", array, spacing, origin, direction, "1.2.3.4.5.1")
    volume = read_image(tmp_path / "series")
    assert volume.shape_xyz == (8, 9, 6)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))
    np.testing.assert_allclose(volume.spacing_mm, spacing, atol=1e-4)
    np.testing.assert_allclose(volume.origin_lps, origin, atol=1e-4)
    np.testing.assert_allclose(volume.direction_lps, direction, atol=1e-4)


def test_single_dicom_file(tmp_path: Path) -> None:
    array = _ct_like((3, 5, 4))
    files = write_dicom_series(tmp_path, array, (0.5, 0.5, 1.0), (1.0, 2.0, 3.0), None, "1.2.3.9")
    volume = read_image(files[1])
    assert volume.shape_xyz == (4, 5, 1)
    np.testing.assert_array_equal(volume.array[0], array[1].astype(np.float32))
    np.testing.assert_allclose(volume.origin_lps, (1.0, 2.0, 4.0), atol=1e-4)


def test_dicom_file_without_suffix_is_sniffed(tmp_path: Path) -> None:
    array = _ct_like((2, 5, 4))
    files = write_dicom_series(tmp_path / "s", array, (0.5, 0.5, 1.0), (0, 0, 0), None, "1.2.7")
    bare = files[0].rename(tmp_path / "IM0001")
    np.testing.assert_array_equal(read_image(bare).array[0], array[0].astype(np.float32))


def test_dicom_folder_with_two_series_reads_the_larger(tmp_path: Path) -> None:
    small, large = _ct_like((3, 5, 4), seed=1), _ct_like((5, 5, 4), seed=2)
    write_dicom_series(tmp_path, small, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), None, "1.2.3.4.1")
    write_dicom_series(tmp_path, large, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), None, "1.2.3.4.2")
    with pytest.warns(UserWarning, match="2 DICOM series"):
        volume = read_image(tmp_path)
    assert volume.shape_xyz == (4, 5, 5)
    np.testing.assert_array_equal(volume.array, large.astype(np.float32))


# ----------------------------------------------------------------------- bad inputs
def _write_raw(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def _write_sitk(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, regex the message must match besides the file name)."""
    mha_zero = "ObjectType = Image\nNDims = 3\nDimSize = 4 4 0\nElementType = MET_FLOAT\n"
    mha_trunc = "ObjectType = Image\nNDims = 3\nDimSize = 40 40 40\nElementType = MET_FLOAT\n"
    nan = np.ones((3, 4, 5), dtype=np.float32)
    nan[0, 0, :2] = np.nan
    nan[1, 1, 1] = np.inf
    rgb = sitk.Compose([sitk.GetImageFromArray(np.random.rand(3, 4, 5))] * 3)
    vol4d = sitk.GetImageFromArray(np.random.rand(2, 3, 4, 5), isVector=False)
    (tmp / "empty_dir").mkdir()
    return {
        "missing": (tmp / "missing.nii.gz", "not found"),
        "unsupported": (_write_raw(tmp / "notes.txt", "hello"), "unsupported"),
        "garbage": (_write_raw(tmp / "garbage.nii.gz", b"\x00garbage" * 20), "cannot read"),
        "empty file": (_write_raw(tmp / "empty.nrrd", b""), "empty"),
        "truncated": (_write_raw(tmp / "trunc.mha", mha_trunc + "ElementDataFile = LOCAL\n1"), ""),
        "2D": (_write_sitk(tmp / "flat.nrrd", sitk.GetImageFromArray(np.random.rand(4, 5))), "2D"),
        "4D": (_write_sitk(tmp / "movie.nii.gz", vol4d), "4D"),
        "vector": (_write_sitk(tmp / "rgb.mha", rgb), "3 components"),
        "zero": (_write_raw(tmp / "zero.mha", mha_zero + "ElementDataFile = LOCAL\n"), "zero"),
        "nan": (_write_sitk(tmp / "nan.mha", sitk.GetImageFromArray(nan)), "2 NaN and 1 inf"),
        "constant": (
            _write_sitk(tmp / "const.nii.gz", sitk.GetImageFromArray(np.full((3, 4, 5), 7.0))),
            "constant",
        ),
        "no dicom": (tmp / "empty_dir", "no DICOM series"),
    }


BAD_CASES = [
    "missing",
    "unsupported",
    "garbage",
    "empty file",
    "truncated",
    "2D",
    "4D",
    "vector",
    "zero",
    "nan",
    "constant",
    "no dicom",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs_raise_input_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path, pattern = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert path.name in message
    assert info.value.path == str(path)
    if pattern:
        assert pattern in info.value.problem, message


# ----------------------------------------------------------------------- resampling
def test_resample_isotropic_geometry() -> None:
    volume = oblique_volume()
    out = resample_isotropic(volume, 1.1)
    extent = np.array(volume.shape_xyz) * volume.spacing_mm
    assert out.shape_xyz == tuple(math.ceil(e / 1.1) for e in extent)
    np.testing.assert_allclose(out.spacing_mm, [1.1, 1.1, 1.1])
    np.testing.assert_allclose(out.direction_lps, volume.direction_lps)
    # Same outer corner of voxel (0, 0, 0).
    np.testing.assert_allclose(
        out.index_to_world([-0.5, -0.5, -0.5]), volume.index_to_world([-0.5, -0.5, -0.5])
    )
    # Exact multiples do not gain a voxel: 10 x 2.5 mm -> 25 voxels of 1 mm.
    assert resample_isotropic(volume, 0.1).shape_xyz[2] == 250


def test_resample_nearest_samples_the_containing_voxel() -> None:
    volume = oblique_volume()
    labels = np.arange(volume.array.size, dtype=np.float32).reshape(volume.array.shape)
    labelled = Volume(labels, volume.spacing_mm, volume.origin_lps, volume.direction_lps)
    out = resample_isotropic(labelled, 0.9, interpolator="nearest")
    rng = np.random.default_rng(3)
    nx, ny, nz = out.shape_xyz
    new_index = np.stack([rng.integers(0, n, 40) for n in (nx, ny, nz)], axis=1)
    old_index = np.rint(labelled.world_to_index(out.index_to_world(new_index))).astype(int)
    keep = np.all((old_index >= 0) & (old_index < np.array(labelled.shape_xyz)), axis=1)
    assert keep.sum() > 30
    i, j, k = old_index[keep].T
    ni, nj, nk = new_index[keep].T
    np.testing.assert_array_equal(out.array[nk, nj, ni], labels[k, j, i])


@pytest.mark.parametrize("interpolator", ["linear", "bspline"])
def test_resample_keeps_blob_at_same_world_position(interpolator: str) -> None:
    blob_ijk = (6.0, 5.0, 4.0)
    volume = oblique_volume(shape_zyx=(10, 14, 16), blob_ijk=blob_ijk)
    blob_ras = volume.index_to_world(blob_ijk)
    out = resample_isotropic(volume, 0.75, interpolator=interpolator)  # type: ignore[arg-type]
    peak_ijk = np.array(np.unravel_index(np.argmax(out.array), out.array.shape)[::-1])
    expected_ijk = out.world_to_index(blob_ras)[0]
    assert np.all(np.abs(peak_ijk - expected_ijk) <= 0.5 + 1e-6), (peak_ijk, expected_ijk)
    assert out.array.max() > 0.9 * volume.array.max()


def test_resample_rejects_bad_arguments() -> None:
    volume = oblique_volume()
    with pytest.raises(ValueError, match="spacing"):
        resample_isotropic(volume, 0.0)
    with pytest.raises(ValueError, match="interpolator"):
        resample_isotropic(volume, 1.0, interpolator="cubic")  # type: ignore[arg-type]


def test_no_warnings_for_plain_read(tmp_path: Path) -> None:
    path = tmp_path / "a.nrrd"
    write_image(oblique_volume(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(path)
