"""The AC-PC plane put through AC and PC found by a landmark model (``task.plane_acpc_landmarks``).

The AC-PC plane is defined by two points, the anterior and posterior commissures (AFIDs 1 and
2), and the MSP normal it contains. Once the MSP is right (mirror symmetry,
:mod:`medrl.geometry.symmetry`), the plane's only freedom left is its pitch about the MSP
normal, and AC and PC are only 25-28 mm apart: 1 mm across the AC-PC line is 2 degrees. The
plane agent reads that pitch from the look of a whole oblique slab, which it learned on the
anatomy it was trained on; a landmark agent finds each commissure from its own neighbourhood,
down to 1 mm samples. This step searches AC and PC with a landmark model (those two targets
only, in the plane search's pyramid) and puts the AC-PC plane through them.

The found pair is used only when it is plausible: AC and PC between
:data:`AC_PC_DISTANCE_MM` apart, and the plane through them within
:data:`MAX_DISAGREEMENT_DEG` of the plane agent's own AC-PC plane (two independent readings of
the scan that disagree that much mean one of them failed). Otherwise the agent's plane stands
and a warning names the scan.

``task.plane_acpc_landmarks``: ``""`` (off), ``"builtin:NAME"`` (a model shipped with medrl,
:func:`medrl.models.shipped_model_dir`) or the folder of a landmark model whose targets include
AFIDs 1 and 2 (a relative folder is taken from the working directory). Its scale levels must
be among the plane model's (both use 4, 2 and 1 mm).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from medrl.envs.pyramid import ScanPyramid, level_spacings_mm
from medrl.errors import InputError
from medrl.geometry.planes import ACPC_AFIDS, acpc_plane, plane_angle_deg

__all__ = [
    "AC_PC_DISTANCE_MM",
    "MAX_DISAGREEMENT_DEG",
    "acpc_from_landmarks",
    "checked_acpc_plane",
    "locator_dir",
]

AC_PC_DISTANCE_MM = (15.0, 40.0)
"""Plausible AC-PC distances (adults: about 23-30 mm)."""
MAX_DISAGREEMENT_DEG = 10.0
"""The landmark plane is used only within this angle of the plane agent's own."""


def locator_dir(setting: str) -> Path:
    """The landmark model folder that ``task.plane_acpc_landmarks`` names."""
    from medrl.models import shipped_model_dir

    if setting.startswith("builtin:"):
        return shipped_model_dir(setting.removeprefix("builtin:"))
    return Path(setting)


@lru_cache(maxsize=4)
def _locator(folder: str, device: str):  # type: ignore[no-untyped-def]
    from medrl.agents.checkpoint import load_model, with_overrides

    # the agent's search alone: the locator reads the plane agent's pyramid, which has no
    # volume for a carried detector to prepare (and the mirror readings were not measured here)
    model = with_overrides(
        load_model(folder, device, task="landmark"),
        ["search.detector_weight=0", "search.mirror=false"],
    )
    missing = [name for name in ACPC_AFIDS if name not in model.names]
    if missing:
        raise InputError(
            f"task.plane_acpc_landmarks: the landmark model has no AFID(s) {', '.join(missing)} "
            "(AC, PC)",
            folder,
        )
    return model


def _sub_pyramid(scan: ScanPyramid, spacings_mm: list[float], folder: str) -> ScanPyramid:
    """``scan`` with only the levels the landmark model uses, in its order."""
    have = level_spacings_mm(scan)
    rows = []
    for spacing in spacings_mm:
        close = [i for i, s in enumerate(have) if abs(s - spacing) < 1e-3 * spacing]
        if not close:
            raise InputError(
                f"task.plane_acpc_landmarks: the landmark model searches at {spacing:g} mm, "
                f"which the plane model's levels ({', '.join(f'{s:g}' for s in have)} mm) lack",
                folder,
            )
        rows.append(close[0])
    if rows == list(range(len(have))):
        return scan
    return ScanPyramid(
        tuple(scan.levels[i] for i in rows),
        scan.centre_ras,
        scan.intensity_centre_ras,
        scan.index_to_ras,
        scan.size_xyz,
        scan.source,
    )


def checked_acpc_plane(
    msp_normal: np.ndarray,
    ac_ras: np.ndarray,
    pc_ras: np.ndarray,
    agent_acpc_pose: np.ndarray,
    how: str,
) -> tuple[np.ndarray | None, str]:
    """(9,) the AC-PC plane through ``ac_ras`` and ``pc_ras`` containing ``msp_normal`` and
    facing the way ``agent_acpc_pose`` does, and ``""``; or None and what makes it implausible
    (AC and PC outside :data:`AC_PC_DISTANCE_MM`, or the plane more than
    :data:`MAX_DISAGREEMENT_DEG` from the agent's). ``how`` says how AC and PC were got
    ("found", "carried") in the message."""
    distance_mm = float(np.linalg.norm(np.asarray(pc_ras) - np.asarray(ac_ras)))
    low, high = AC_PC_DISTANCE_MM
    if not low <= distance_mm <= high:
        return None, f"AC and PC {how} {distance_mm:.1f} mm apart (plausible: {low:g}-{high:g} mm)"
    try:
        plane = acpc_plane(msp_normal, ac_ras, pc_ras, up=agent_acpc_pose[3:6])
    except ValueError as exc:
        return None, str(exc)
    disagreement = float(plane_angle_deg(plane, agent_acpc_pose)[0])
    if disagreement > MAX_DISAGREEMENT_DEG:
        return None, (
            f"the plane through the AC and PC {how} lies {disagreement:.1f} degrees from the "
            f"plane agent's (more than {MAX_DISAGREEMENT_DEG:g})"
        )
    return plane, ""


def acpc_from_landmarks(
    scan: ScanPyramid, msp_pose: np.ndarray, agent_acpc_pose: np.ndarray, setting: str
) -> np.ndarray:
    """(9,) the AC-PC plane through the AC and PC that the landmark model named by ``setting``
    finds in ``scan``, containing the normal of ``msp_pose``; ``agent_acpc_pose`` where the
    pair is implausible (with a warning naming the scan)."""
    from medrl.agents.search import search

    folder = str(locator_dir(setting))
    device = scan.levels[0].tensor.device
    model = _locator(folder, str(device))
    spacings = [lv.spacing_mm for lv in model.config.env.levels]
    pyramid = _sub_pyramid(scan, spacings, folder)
    with torch.inference_mode():
        found = search(model, None, device, scan=pyramid, targets=ACPC_AFIDS)  # type: ignore[arg-type]
    names = list(found.names)
    ac, pc = (found.estimate[names.index(name), :3] for name in ACPC_AFIDS)
    plane, problem = checked_acpc_plane(msp_pose[3:6], ac, pc, agent_acpc_pose, "found")
    if plane is not None:
        return plane
    warnings.warn(
        f"{scan.source}: the AC-PC plane is the plane agent's own, not through the AC and PC "
        f"the landmark model found: {problem}",
        stacklevel=2,
    )
    return agent_acpc_pose
