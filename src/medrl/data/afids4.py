"""Built-in training data of four brains: every template with AFIDs, with skull and without.

``builtin:afids4`` joins the built-in AFIDs templates (:mod:`medrl.data.builtin`:
MNI152NLin2009cAsym T1w/T2w, MNI152NLin6Asym T1w) and the SPM12 averages
(:mod:`medrl.data.spm12`: MNI152Lin T1w/T2w/PD, MNI305 T1w): four anatomies (four different
averages of different people) in three contrasts. Each image comes twice, as it is and
skull-stripped (case id ``<case>_brain``), since users' scans come both ways.

``builtin:afids4/<TEMPLATE>`` leaves one template out: its cases form the ``test`` split, the
others the ``train`` split (leave-one-template-out evaluation, ``benchmarks/bench_loto.py``).
Without a template every case is ``train``.

The skull-stripped copies are derived here, reproducibly, and cached in
``<cache_root()>/afids4/v1/``: the brain mask of MNI152NLin6Asym (from the nimare wheel, see
:mod:`medrl.data.builtin`) is carried onto each image by the affine map that takes the image's
32 AFIDs onto MNI152NLin6Asym's (least squares), then the voxels outside it are set to 0.
Credit the AFIDs project, templateflow/nimare and SPM12 as their modules say.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_closing, binary_fill_holes, map_coordinates

from medrl.data.builtin import (
    MNI6_BRAIN_MASK,
    afids_datalist,
    afids_file,
    afids_landmarks_path,
    cache_root,
)
from medrl.data.datalist import CaseSpec
from medrl.data.spm12 import spm12_datalist
from medrl.errors import InputError
from medrl.geometry.robust_affine import affine_lstsq
from medrl.io.images import Volume, read_image, write_image
from medrl.io.landmarks import read_landmarks

__all__ = ["AFIDS4_TEMPLATES", "afids4_datalist", "brain_mask", "template_of"]

AFIDS4_TEMPLATES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym", "MNI152Lin", "MNI305")
CACHE_SUBDIR = Path("afids4") / "v1"
BRAIN_SUFFIX = "_brain"
_MASK_TEMPLATE = "MNI152NLin6Asym"


def template_of(case_id: str) -> str:
    """The template a built-in case id belongs to (``MNI305_T1w_brain`` -> ``MNI305``)."""
    for template in AFIDS4_TEMPLATES:
        if case_id.startswith(template + "_"):
            return template
    raise InputError(f"{case_id!r} is not a case of builtin:afids4")


def brain_mask(
    image: Volume, landmarks_ras: np.ndarray, cache: str | Path | None = None
) -> np.ndarray:
    """Boolean brain mask on ``image``'s grid: MNI152NLin6Asym's mask carried by the affine map
    between the image's 32 AFIDs (``landmarks_ras``, in the built-in order) and its own.

    The reference mask is closed (3 voxels) and its holes filled first: it leaves out parts of
    the ventricles and cisterns, which skull stripping keeps (once per process: the same
    reference serves every image)."""
    mask = _reference_mask(cache)
    reference = read_landmarks(afids_landmarks_path(_MASK_TEMPLATE)).points_ras
    to_reference = affine_lstsq(np.asarray(landmarks_ras, dtype=np.float64), reference)
    # image index -> image RAS -> reference RAS -> mask index, as one affine map
    index_map = mask.ras_to_index @ to_reference @ image.index_to_ras
    nz, ny, nx = image.array.shape
    out = np.zeros(image.array.shape, dtype=bool)
    j, i = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    plane = np.stack([i.ravel(), j.ravel(), np.zeros(i.size), np.ones(i.size)])
    for k in range(nz):  # one slice at a time: a 1 mm head is 8 million voxels
        plane[2] = k
        ijk = (index_map @ plane)[:3]
        values = map_coordinates(mask.array, ijk[::-1], order=1, mode="constant", cval=0.0)
        out[k] = values.reshape(ny, nx) >= 0.5
    return out


@functools.lru_cache(maxsize=1)
def _reference_mask(cache: str | Path | None) -> Volume:
    mask = read_image(afids_file(MNI6_BRAIN_MASK, cache))
    solid = binary_fill_holes(binary_closing(mask.array > 0.5, iterations=3))
    return Volume(solid.astype(np.float32), mask.spacing_mm, mask.origin_lps, mask.direction_lps)


def _stripped(spec: CaseSpec, folder: Path, cache: str | Path | None) -> CaseSpec:
    path = folder / f"{spec.case_id}{BRAIN_SUFFIX}.nii.gz"
    if not path.is_file():
        image = read_image(spec.image)
        assert spec.landmarks is not None
        points = read_landmarks(spec.landmarks).points_ras
        keep = brain_mask(image, points, cache)
        write_image(
            Volume(
                np.where(keep, image.array, 0.0).astype(np.float32),
                image.spacing_mm,
                image.origin_lps,
                image.direction_lps,
            ),
            path,
        )
    return CaseSpec(
        case_id=spec.case_id + BRAIN_SUFFIX,
        image=path,
        landmarks=spec.landmarks,
        split=spec.split,
    )


def afids4_datalist(
    leave_out: str | None = None, cache: str | Path | None = None
) -> list[CaseSpec]:
    """The 14 cases of ``builtin:afids4`` (7 images, each with and without skull).

    Args:
        leave_out: a template of :data:`AFIDS4_TEMPLATES` whose cases become ``test`` (the
            rest ``train``); None: all ``train``.

    Raises:
        InputError: an unknown template.
        DataUnavailableError: the AFIDs templates have not been fetched, or the SPM12 averages
            cannot be fetched.
    """
    if leave_out is not None and leave_out not in AFIDS4_TEMPLATES:
        raise InputError(
            f"unknown template {leave_out!r} to leave out (known: {', '.join(AFIDS4_TEMPLATES)})"
        )
    base = [
        CaseSpec(case_id=s.case_id, image=s.image, landmarks=s.landmarks, split="train")
        for s in afids_datalist(cache) + spm12_datalist(cache)
    ]
    folder = (cache_root() if cache is None else Path(cache)) / CACHE_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    specs: list[CaseSpec] = []
    for spec in base:
        split = "test" if template_of(spec.case_id) == leave_out else "train"
        plain = CaseSpec(spec.case_id, spec.image, spec.landmarks, split)
        specs += [plain, _stripped(plain, folder, cache)]
    return specs
