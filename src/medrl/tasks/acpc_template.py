"""The AC-PC plane through a template's commissures, carried onto the scan by a local 2D
registration of the mid-sagittal plane (``task.plane_acpc_template``).

Once the MSP is right (mirror symmetry, :mod:`medrl.geometry.symmetry`), the AC-PC plane's only
freedom left is its pitch about the MSP normal, and AC and PC are only 25-28 mm apart: 1 mm
across the AC-PC line is 2 degrees. This step reads that pitch the way atlas-based AC-PC
detection does: it samples the scan on its MSP around the plane agent's AC (a thin slab,
1 mm samples, the third ventricle, the commissures, the fornix, the thalamus and the
midbrain), samples a template's MSP around its own AC the same way, registers the two 2D
images (a similarity map, 4 degrees of freedom: rotation, scale and shift in the plane; Mattes
mutual information, so any contrast; SimpleITK, two resolutions), and carries the template's
AC and PC onto the scan. The AC-PC plane is put through them, containing the MSP normal.

The two images are sampled in the same frame (origin at AC, first axis along AC -> PC, second
axis the AC-PC plane's normal, superior), so the registration starts at the identity and only
has to correct what the agent got wrong: a few degrees of pitch and a few mm. The result is
used only when it is plausible (the scale within :data:`SCALE_RANGE`, and the checks of
:func:`medrl.tasks.acpc_locator.checked_acpc_plane`: AC and PC 15-40 mm apart, the plane
within 10 degrees of the agent's); otherwise
the agent's plane stands and a warning names the scan.

``task.plane_acpc_template``: ``""`` (off), ``"builtin:afids"`` (MNI152NLin2009cAsym T1w and
its AFIDs from medrl's built-in data, the plane models' training brain) or
``"IMAGE,LANDMARKS"`` (an image and a landmarks file with AFIDs 1, 2 and the midline AFIDs).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
import torch

from medrl.envs.pyramid import LevelImage, ScanPyramid, build_pyramid, level_spacings_mm
from medrl.envs.sampler import sample_at_ras
from medrl.errors import InputError
from medrl.geometry.planes import ACPC_AFIDS, planes_from_afids
from medrl.tasks.acpc_locator import checked_acpc_plane

__all__ = [
    "SCALE_RANGE",
    "WINDOW_MM",
    "MidsagittalTemplate",
    "acpc_from_template",
    "load_template",
    "sample_midsagittal",
]

WINDOW_MM = ((-30.0, 60.0), (-35.0, 35.0))
"""The 2D window around AC: along AC -> PC (PC lies at about +27 mm), and along the AC-PC
plane's normal (superior positive). It holds the third ventricle, the commissures, the
fornix, the body of the corpus callosum's lower edge, the thalamus and the midbrain."""
SAMPLE_MM = 1.0
"""Sample spacing in the plane."""
SLAB_MM = (-1.0, 0.0, 1.0)
"""Offsets along the MSP normal averaged into each 2D sample (a thin slab, less noise)."""
SCALE_RANGE = (0.8, 1.25)
"""Plausible scale of the template's midline onto the scan's."""


@dataclass(frozen=True)
class MidsagittalTemplate:
    """A template's mid-sagittal image in its AC-PC frame, with its commissures."""

    image: np.ndarray
    """(V, U) float32 samples, U along AC -> PC, V along the AC-PC plane's normal."""
    ac_uv_mm: np.ndarray
    """(2,) AC in the frame (the origin: zeros)."""
    pc_uv_mm: np.ndarray
    """(2,) PC in the frame."""
    source: str


def _frame(msp_normal: np.ndarray, acpc_normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame's two axes: ``u`` in the MSP and the AC-PC plane, posterior (along AC -> PC),
    and ``v`` the AC-PC normal, superior (signs by the world axes: scans turned by less than
    90 degrees)."""
    n = np.asarray(msp_normal, dtype=np.float64)
    n = n / np.linalg.norm(n) * (1.0 if n[0] >= 0 else -1.0)  # right
    v = np.asarray(acpc_normal, dtype=np.float64)
    v = v / np.linalg.norm(v) * (1.0 if v[2] >= 0 else -1.0)  # superior
    u = np.cross(n, v)  # right x superior = posterior: AC -> PC
    return u / np.linalg.norm(u), v


def sample_midsagittal(
    level: LevelImage,
    ac_ras: np.ndarray,
    msp_normal: np.ndarray,
    acpc_normal: np.ndarray,
) -> np.ndarray:
    """(V, U) the slab-averaged samples of ``level`` on the frame at ``ac_ras`` (:data:`WINDOW_MM`,
    :data:`SAMPLE_MM`; zero outside the scan)."""
    u, v = _frame(msp_normal, acpc_normal)
    n = np.asarray(msp_normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    (u_lo, u_hi), (v_lo, v_hi) = WINDOW_MM
    us = np.arange(u_lo, u_hi + 1e-6, SAMPLE_MM)
    vs = np.arange(v_lo, v_hi + 1e-6, SAMPLE_MM)
    grid_v, grid_u = np.meshgrid(vs, us, indexing="ij")  # (V, U)
    points = []
    for offset in SLAB_MM:
        points.append(
            np.asarray(ac_ras, dtype=np.float64)
            + grid_u[..., None] * u
            + grid_v[..., None] * v
            + offset * n
        )
    stacked = torch.as_tensor(np.stack(points), dtype=torch.float32)  # (slab, V, U, 3)
    values = sample_at_ras(level, stacked.to(level.tensor.device)).mean(dim=0)
    return values.cpu().numpy().astype(np.float32)


def _template_spec(setting: str) -> tuple[str, str]:
    if setting == "builtin:afids":
        from medrl.data.builtin import afids_file, afids_landmarks_path

        image = afids_file("tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
        return str(image), str(afids_landmarks_path("MNI152NLin2009cAsym"))
    parts = [part.strip() for part in setting.split(",")]
    if len(parts) != 2 or not all(parts):
        raise InputError(
            "task.plane_acpc_template must be '', 'builtin:afids' or 'IMAGE,LANDMARKS', "
            f"got {setting!r}"
        )
    return parts[0], parts[1]


@lru_cache(maxsize=4)
def load_template(setting: str) -> MidsagittalTemplate:
    """The template that ``task.plane_acpc_template`` names, sampled in its own AC-PC frame
    (its MSP and AC-PC plane from its AFIDs); InputError naming the file on bad input."""
    from medrl.io.images import read_image
    from medrl.io.landmarks import read_landmarks

    image_path, landmarks_path = _template_spec(setting)
    volume = read_image(image_path)
    landmarks = read_landmarks(landmarks_path)
    names = list(landmarks.names)
    planes = planes_from_afids(landmarks.points_ras, names, landmarks_path)  # needs AC, PC
    ac, pc = (np.asarray(landmarks.points_ras[names.index(name)]) for name in ACPC_AFIDS)
    level = build_pyramid(volume, [SAMPLE_MM]).levels[0]
    image = sample_midsagittal(level, ac, planes[0, 3:6], planes[1, 3:6])
    u, v = _frame(planes[0, 3:6], planes[1, 3:6])
    pc_uv = np.array([(pc - ac) @ u, (pc - ac) @ v])
    return MidsagittalTemplate(image, np.zeros(2), pc_uv, image_path)


def _as_sitk(image: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(image.astype(np.float32))  # (V, U) -> x = U, y = V
    out.SetSpacing((SAMPLE_MM, SAMPLE_MM))
    out.SetOrigin((WINDOW_MM[0][0], WINDOW_MM[1][0]))
    return out


def register_midsagittal(
    scan_image: np.ndarray, template: MidsagittalTemplate
) -> tuple[np.ndarray, np.ndarray, float]:
    """AC and PC (2, each (2,) in the scan's frame) carried from the template, and the scale
    of the similarity map found (scan frame -> template frame)."""
    fixed, moving = _as_sitk(scan_image), _as_sitk(template.image)
    transform = sitk.Similarity2DTransform()
    transform.SetCenter((0.0, 0.0))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    inverse = transform.GetInverse()
    ac = np.array(inverse.TransformPoint(tuple(float(x) for x in template.ac_uv_mm)))
    pc = np.array(inverse.TransformPoint(tuple(float(x) for x in template.pc_uv_mm)))
    return ac, pc, float(transform.GetScale())


def acpc_from_template(
    scan: ScanPyramid, msp_pose: np.ndarray, agent_acpc_pose: np.ndarray, setting: str
) -> np.ndarray:
    """(9,) the AC-PC plane through the template's AC and PC carried onto ``scan``
    (``setting``: ``task.plane_acpc_template``), containing the normal of ``msp_pose``;
    ``agent_acpc_pose`` where the result is implausible (with a warning naming the scan)."""
    template = load_template(setting)
    spacings = np.asarray(level_spacings_mm(scan))
    level = scan.levels[int(np.argmin(np.abs(spacings - SAMPLE_MM)))]
    msp_normal = np.asarray(msp_pose[3:6], dtype=np.float64)
    acpc_normal = np.asarray(agent_acpc_pose[3:6], dtype=np.float64)
    ac_ras = np.asarray(agent_acpc_pose[:3], dtype=np.float64)
    ac_ras = ac_ras - ((ac_ras - msp_pose[:3]) @ msp_normal) * msp_normal  # onto the MSP
    image = sample_midsagittal(level, ac_ras, msp_normal, acpc_normal)
    problem = ""
    if float(image.std()) <= 1e-6:
        problem = "the scan is blank around the agent's AC"
    else:
        ac_uv, pc_uv, scale = register_midsagittal(image, template)
        u, v = _frame(msp_normal, acpc_normal)
        ac, pc = (ac_ras + p[0] * u + p[1] * v for p in (ac_uv, pc_uv))
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            problem = f"the midline registration scaled by {scale:.2f}"
        else:
            plane, problem = checked_acpc_plane(msp_normal, ac, pc, agent_acpc_pose, "carried")
            if plane is not None:
                return plane
    warnings.warn(
        f"{scan.source}: the AC-PC plane is the plane agent's own, not the template's carried "
        f"by the midline registration: {problem}",
        stacklevel=2,
    )
    return agent_acpc_pose
