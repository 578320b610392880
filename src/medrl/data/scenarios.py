"""Test scenarios: a test scan moved rigidly (and optionally warped non-affinely), with every
annotation it carries (landmarks, label maps) moved exactly the same way.

The built-in templates share MNI space, so an unmoved test image only measures memorised
coordinates: evaluations move each test scan by random rigid transforms (the image content is
resampled through the transform, annotations move with it) and, with ``elastic_mm`` > 0, warp
it first by a smooth non-affine field (:func:`deform_case`) that no affine registration can
follow, and with a :class:`Swelling` enlarges structures (such as the lateral ventricles of an
older person's or a patient's brain) by local warps centred among their landmarks. Boxes are
recomputed from the moved label map, as a user's boxes would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from medrl.data.augment import inverse_transform_points
from medrl.data.datalist import Case
from medrl.errors import InputError
from medrl.geometry.warp_labels import (
    LocalWarp,
    deform_labels,
    elastic_sample_points_ras,
    grid_centre_ras,
    labels_on_grid,
    move_labels,
    rigid_resample_transform,
)
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.metrics.registration import jacobian_determinant


@dataclass(frozen=True)
class RigidTransform:
    rotation_axis: np.ndarray
    rotation_deg: float
    translation_mm: np.ndarray  # RAS

    def rotation_ras(self) -> np.ndarray:
        """The 3x3 rotation matrix (Rodrigues) in RAS."""
        axis, angle = self.rotation_axis, np.deg2rad(self.rotation_deg)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_rigid(seed: int, max_rotation_deg: float, max_translation_mm: float) -> RigidTransform:
    """A rotation about a random axis by up to ``max_rotation_deg`` and a shift up to
    ``max_translation_mm`` in a random direction."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    return RigidTransform(
        rotation_axis=axis,
        rotation_deg=float(rng.uniform(-max_rotation_deg, max_rotation_deg)),
        translation_mm=direction * rng.uniform(0, max_translation_mm),
    )


def move_case(
    volume: Volume, landmarks: Landmarks, rigid: RigidTransform
) -> tuple[Volume, Landmarks]:
    """Rigidly move the anatomy inside the scan's own grid; landmarks move the same way.

    The moved image is ``I'(x) = I(R^-1 (x - c - t) + c)``: the head rotated by R about the
    scan centre c and shifted by t (world RAS), resampled (linear) on the original grid.
    """
    centre_ras = grid_centre_ras(volume)
    rotation_ras = rigid.rotation_ras()
    # SimpleITK resampling wants output point -> input point, i.e. the inverse motion.
    inverse = rigid_resample_transform(volume, rigid)
    image = volume.to_sitk()
    moved = sitk.Resample(
        image, image, inverse, sitk.sitkLinear, float(np.min(volume.array)), sitk.sitkFloat32
    )
    moved_points = (landmarks.points_ras - centre_ras) @ rotation_ras.T + centre_ras
    moved_points = moved_points + rigid.translation_mm
    return (
        Volume.from_sitk(moved, source=f"{volume.source} (rigidly moved)"),
        Landmarks(landmarks.names, moved_points, landmarks.descriptions),
    )


def _folds(sampled_ras: np.ndarray, volume: Volume, stride: int = 2) -> bool:
    """Whether the map from the scan's grid to the points it samples (z, y, x, 3) folds, on
    every ``stride``-th voxel (:func:`medrl.metrics.registration.jacobian_determinant`)."""
    coarse = sampled_ras[::stride, ::stride, ::stride].astype(np.float64)
    index_zyx = np.indices(coarse.shape[:3], dtype=np.float64) * stride
    grid_ras = volume.index_to_ras[:3, :3] @ index_zyx[::-1].reshape(3, -1)
    grid_ras = grid_ras.T.reshape(coarse.shape) + volume.index_to_ras[:3, 3]
    field = sitk.GetImageFromArray((coarse - grid_ras) * [-1.0, -1.0, 1.0], isVector=True)
    field.SetSpacing(tuple(float(v) * stride for v in volume.spacing_mm))
    field.SetDirection(tuple(float(v) for v in np.asarray(volume.direction_lps).ravel()))
    field.SetOrigin(tuple(float(v) for v in volume.origin_lps))
    return bool((jacobian_determinant(field) <= 0).any())


def deform_case(
    volume: Volume,
    landmarks: Landmarks,
    elastic_mm: float,
    seed: int,
    local: Sequence[LocalWarp] = (),
) -> tuple[Volume, Landmarks]:
    """Warp the anatomy by a smooth non-affine field; landmarks move with it exactly.

    The field is the training augmentation's elastic displacement (``elastic_mm`` amplitude,
    no affine part, no intensity change) plus the ``local`` warps: ``I'(x) = I(x + d(x))``,
    resampled (linear) on the scan's own grid, and a landmark ``l`` moves to the ``y`` with
    ``y + d(y) = l``. It stands in for anatomy that no affine map can match, as in another
    subject's brain.
    """
    params, sampled_ras = elastic_sample_points_ras(volume, elastic_mm, seed, local)
    nz, ny, nx = volume.array.shape
    what = f"an elastic warp of {elastic_mm:g} mm (seed {seed})"
    if local:
        what += f" with {len(local)} local warp(s) of strength up to "
        what += f"{max(abs(w.strength) for w in local):g}"
    not_invertible = f"{what} is not invertible; use a smaller amplitude or strength"
    if _folds(sampled_ras.reshape(nz, ny, nx, 3), volume):  # no landmark positions exist
        raise InputError(not_invertible, volume.source)
    sample_index = volume.world_to_index(sampled_ras.astype(np.float64), "RAS")
    coordinates = sample_index[:, ::-1].T.reshape(3, nz, ny, nx)  # (z, y, x) axes
    warped = ndimage.map_coordinates(
        volume.array, coordinates, order=1, mode="constant", cval=float(volume.array.min())
    )
    points = torch.tensor(landmarks.points_ras, dtype=torch.float32).reshape(1, -1, 3)
    try:
        moved = inverse_transform_points(params, points)[0].numpy().astype(np.float64)
    except RuntimeError as exc:
        raise InputError(not_invertible, volume.source) from exc
    deformed = Volume(
        warped.astype(np.float32),
        volume.spacing_mm,
        volume.origin_lps,
        volume.direction_lps,
        source=f"{volume.source} (elastically deformed)",
    )
    return deformed, Landmarks(landmarks.names, moved, landmarks.descriptions)


def warp_to_dict(elastic_mm: float, seed: int, local: Sequence[LocalWarp] = ()) -> dict:
    """A scan record's ``elastic`` entry (JSON): what :func:`deform_case` was given."""
    record: dict[str, Any] = {"elastic_mm": elastic_mm, "seed": seed}
    if local:
        record["local"] = [
            {"centre_ras": list(w.centre_ras), "sigma_mm": w.sigma_mm, "strength": w.strength}
            for w in local
        ]
    return record


def warp_from_dict(record: dict) -> dict[str, Any]:
    """:func:`deform_case`'s keyword arguments from a record's ``elastic`` entry."""
    local = tuple(
        LocalWarp(tuple(float(v) for v in w["centre_ras"]), float(w["sigma_mm"]),
                  float(w["strength"]))
        for w in record.get("local", ())
    )  # fmt: skip
    return {"elastic_mm": float(record["elastic_mm"]), "seed": int(record["seed"]), "local": local}


def rigid_to_dict(rigid: RigidTransform) -> dict:
    return {
        "rotation_axis": rigid.rotation_axis.tolist(),
        "rotation_deg": rigid.rotation_deg,
        "translation_mm": rigid.translation_mm.tolist(),
    }


def rigid_from_dict(record: dict) -> RigidTransform:
    return RigidTransform(
        rotation_axis=np.asarray(record["rotation_axis"], dtype=np.float64),
        rotation_deg=float(record["rotation_deg"]),
        translation_mm=np.asarray(record["translation_mm"], dtype=np.float64),
    )


@dataclass(frozen=True)
class Swelling:
    """Structures enlarged (``strength`` < 0) or shrunk (> 0) in every test scan: one local
    warp (:class:`~medrl.geometry.warp_labels.LocalWarp`) centred at the centroid of each group
    of landmarks, e.g. ``(("15", "17"), ("16", "18"))``: the AFIDs on the right and the left
    lateral ventricle, whose enlargement with age and disease moves them apart."""

    groups: tuple[tuple[str, ...], ...]
    sigma_mm: float = 15.0
    strength: float = -0.2

    def __post_init__(self) -> None:
        if not self.groups or not all(self.groups):
            raise ValueError(f"a swelling needs groups of landmark names, got {self.groups}")
        LocalWarp((0.0, 0.0, 0.0), self.sigma_mm, self.strength)  # the same checks, up front

    def local_warps(self, landmarks: Landmarks | None, source: str) -> tuple[LocalWarp, ...]:
        """The warps on a scan with these ``landmarks``; InputError naming ``source`` when a
        group's landmark is missing."""
        known: dict[str, np.ndarray] = {}
        if landmarks is not None:
            known = dict(zip(landmarks.names, landmarks.points_ras, strict=True))
        warps = []
        for group in self.groups:
            missing = [name for name in group if name not in known]
            if missing:
                raise InputError(
                    f"a swelling centred among landmarks {list(group)} needs them, but the "
                    f"scan lacks {missing}",
                    source,
                )
            centre = np.mean([known[name] for name in group], axis=0)
            warps.append(LocalWarp(tuple(float(v) for v in centre), self.sigma_mm, self.strength))
        return tuple(warps)


@dataclass
class ScenarioScan:
    """One scan of an evaluation: the (moved) image and its (moved) annotations."""

    case_id: str
    volume: Volume
    landmarks: Landmarks | None
    labels: Volume | None
    """The case's label map on the scan's grid, moved with it (None without one)."""
    label_names: dict[int, str] | None
    record: dict
    """What was done to the source image (its path, the rigid move, the warp), as JSON."""


def scenario_scans(
    cases: list[Case],
    rigid_trials: int = 5,
    max_rotation_deg: float = 15.0,
    max_translation_mm: float = 20.0,
    seed: int = 1000,
    include_unmoved: bool = False,
    elastic_mm: float = 0.0,
    landmark_names: tuple[str, ...] | None = None,
    with_labels: bool = False,
    swelling: Swelling | None = None,
) -> list[ScenarioScan]:
    """Every case (unmoved if asked or ``rigid_trials == 0``) and its ``rigid_trials`` moved
    copies ``<case>_rigid<k>`` (``<case>_elastic<k>`` when also warped, seeded like the move;
    ``<case>_swollen<k>`` when ``swelling`` enlarges structures first, centred among the case's
    own landmarks; only moved copies are swollen: ``swelling`` needs ``rigid_trials`` > 0 and
    no unmoved copy).

    ``landmark_names`` keeps those landmarks (cases without landmarks are skipped);
    ``with_labels`` moves the label map too (cases without one are skipped).
    """
    if swelling is not None and (include_unmoved or rigid_trials == 0):
        raise ValueError("a swelling applies to the moved copies: rigid_trials > 0, no unmoved")
    scans: list[ScenarioScan] = []
    for case in cases:
        landmarks = None
        if landmark_names is not None:
            if case.landmarks is None:
                continue
            known = [n for n in landmark_names if n in case.landmarks.names]
            landmarks = case.landmarks.subset(known)
        labels = None
        if with_labels:
            if case.labels is None:
                continue
            labels = labels_on_grid(case.labels, case.volume)
        origin = {"case": case.case_id, "image": case.volume.source}
        local = () if swelling is None else swelling.local_warps(case.landmarks, case.volume.source)
        names = case.label_names
        if include_unmoved or rigid_trials == 0:
            record = {**origin, "rigid": None}
            scans.append(ScenarioScan(case.case_id, case.volume, landmarks, labels, names, record))
        for trial in range(rigid_trials):
            rigid = random_rigid(seed + trial, max_rotation_deg, max_translation_mm)
            volume, moved, moved_labels, kind, warp = case.volume, landmarks, labels, "rigid", None
            if elastic_mm > 0 or local:
                field: dict[str, Any] = {
                    "elastic_mm": elastic_mm,
                    "seed": seed + trial,
                    "local": local,
                }
                warp = warp_to_dict(**field)
                if moved_labels is not None:
                    moved_labels = deform_labels(moved_labels, volume, **field)
                volume, moved = _deform(volume, moved, **field)
                kind = "swollen" if local else "elastic"
            if moved_labels is not None:
                moved_labels = move_labels(moved_labels, volume, rigid)
            volume, moved = _move(volume, moved, rigid)
            record = {**origin, "elastic": warp, "rigid": rigid_to_dict(rigid)}
            case_id = f"{case.case_id}_{kind}{trial}"
            scans.append(ScenarioScan(case_id, volume, moved, moved_labels, names, record))
    return scans


_NO_POINTS = Landmarks((), np.zeros((0, 3)))


def _move(volume: Volume, landmarks: Landmarks | None, rigid: RigidTransform):
    moved, points = move_case(volume, landmarks or _NO_POINTS, rigid)
    return moved, (points if landmarks is not None else None)


def _deform(
    volume: Volume,
    landmarks: Landmarks | None,
    elastic_mm: float,
    seed: int,
    local: Sequence[LocalWarp] = (),
):
    warped, points = deform_case(volume, landmarks or _NO_POINTS, elastic_mm, seed, local)
    return warped, (points if landmarks is not None else None)
