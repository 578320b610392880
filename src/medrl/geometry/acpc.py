"""AC-PC space: a scan resampled so that its world axes follow its mid-sagittal and AC-PC
planes, with the anterior commissure at the origin (the usual first step of stereotactic
planning).

The AC-PC frame of a scan: R' is the MSP's normal (to the right), S' the AC-PC plane's normal
made perpendicular to R' (upwards), A' = S' x R' (forwards, along the AC-PC line), origin AC
(the AC-PC plane's reference point). A point ``x'`` in AC-PC space is ``AC + [R' A' S'] x'`` in
the scan's world.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medrl.errors import InputError
from medrl.io.images import Volume

__all__ = ["acpc_frame", "resample_acpc"]

_FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS


def acpc_frame(msp_pose: np.ndarray, acpc_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(origin_ras (3,), rotation (3, 3) with columns R', A', S') of the AC-PC frame."""
    right = np.asarray(msp_pose[3:6], dtype=np.float64)
    right = right / np.linalg.norm(right)
    up = np.asarray(acpc_pose[3:6], dtype=np.float64)
    up = up - (up @ right) * right
    if np.linalg.norm(up) < 1e-6:
        raise InputError("the MSP and AC-PC planes are parallel: no AC-PC frame")
    up /= np.linalg.norm(up)
    forward = np.cross(up, right)
    return np.asarray(acpc_pose[:3], dtype=np.float64), np.stack([right, forward, up], axis=1)


def resample_acpc(
    volume: Volume, msp_pose: np.ndarray, acpc_pose: np.ndarray, spacing_mm: float | None = None
) -> Volume:
    """``volume`` resampled (linear) on an axis-aligned grid of AC-PC space covering the whole
    scan; cubic voxels of ``spacing_mm`` (default: the scan's finest spacing)."""
    origin_ras, rotation = acpc_frame(msp_pose, acpc_pose)
    spacing = float(spacing_mm or np.min(volume.spacing_mm))
    # the scan's corners in AC-PC coordinates give the extent of the new grid
    nx, ny, nz = volume.shape_xyz
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
    corners_ras = volume.index_to_world(corners.astype(np.float64), "RAS")
    local = (corners_ras - origin_ras) @ rotation  # (8, 3) in AC-PC RAS
    low, high = local.min(axis=0), local.max(axis=0)
    size = np.ceil((high - low) / spacing).astype(int) + 1
    reference = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    reference.SetSpacing([spacing] * 3)
    reference.SetDirection(tuple(_FLIP.reshape(-1)))  # an axis-aligned RAS grid, in LPS terms
    reference.SetOrigin(tuple(_FLIP @ low))  # voxel 0 at the lowest R, A, S
    # output physical (LPS of AC-PC space) -> input physical (LPS of the scan's world)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple((_FLIP @ rotation @ _FLIP).reshape(-1)))
    transform.SetTranslation(tuple(_FLIP @ origin_ras))
    resampled = sitk.Resample(
        volume.to_sitk(), reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    return Volume.from_sitk(resampled, volume.source)
