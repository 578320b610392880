"""Small registration pairs for the tests: the AFIDs template at 4 mm and moved copies of it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medrl.baselines.registration import working_image
from medrl.data.builtin import afids_landmarks
from medrl.io.images import Volume, read_image
from medrl.io.landmarks import Landmarks
from medrl.registration.transforms import map_landmarks, rigid_ras_to_sitk

TEMPLATE = "MNI152NLin2009cAsym"
T1W = f"tpl-{TEMPLATE}_res-01_T1w.nii.gz"


def template_4mm(builtin_data: Path) -> tuple[Volume, Landmarks]:
    """The T1w template block-averaged to 4 mm voxels (48 x 57 x 48) and its AFIDs."""
    volume = Volume.from_sitk(working_image(read_image(builtin_data / T1W), 4.0), "template")
    return volume, afids_landmarks(TEMPLATE)


def rigid_matrix_ras(angle_deg: float = 10.0, shift_mm=(6.0, -4.0, 3.0)) -> np.ndarray:
    """A rotation about a tilted axis through the origin and a shift, (4, 4) RAS."""
    axis = np.array([0.2, 0.3, 1.0]) / np.linalg.norm([0.2, 0.3, 1.0])
    versor = sitk.VersorTransform(tuple(axis), math.radians(angle_deg))
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(versor.GetMatrix()).reshape(3, 3)
    matrix[:3, 3] = shift_mm
    return matrix


def moved_copy(
    fixed: Volume, landmarks: Landmarks, matrix_ras: np.ndarray
) -> tuple[Volume, Landmarks]:
    """The image and landmarks that ``matrix_ras`` (fixed -> moving, RAS) maps the fixed
    ones to: ``moving(T(x)) = fixed(x)``, on the fixed grid."""
    transform = rigid_ras_to_sitk(matrix_ras)
    image = sitk.Resample(
        fixed.to_sitk(), fixed.to_sitk(), transform.GetInverse(), sitk.sitkLinear, 0.0
    )
    return Volume.from_sitk(image, "moved"), map_landmarks(transform, landmarks)


def padded(volume: Volume, voxels: int = 4) -> Volume:
    """``volume`` with ``voxels`` of zeros on every side (the head then lies inside the FOV)."""
    image = sitk.ConstantPad(volume.to_sitk(), [voxels] * 3, [voxels] * 3, 0.0)
    return Volume.from_sitk(image, volume.source)


def smooth_warp(volume: Volume, amplitude_mm: float = 5.0, seed: int = 3) -> sitk.Transform:
    """A smooth random warp over ``volume``: a B-spline on a 2 x 2 x 2 mesh."""
    warp = sitk.BSplineTransformInitializer(volume.to_sitk(), [2, 2, 2], order=3)
    rng = np.random.default_rng(seed)
    warp.SetParameters(rng.normal(0.0, amplitude_mm, len(warp.GetParameters())).tolist())
    return warp
