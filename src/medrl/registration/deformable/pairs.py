"""Training, validation and test pairs from the built-in brains (``builtin:afids4``).

Four templates (MNI152NLin2009cAsym, MNI152NLin6Asym, MNI152Lin, MNI305), several contrasts,
each with and without skull, all with the 32 AFIDs. Roles:

* **test** (never used for training or for choosing lambda): the real pair
  :data:`TEST_TEMPLATE_PAIR` (moving MNI305 onto fixed MNI152NLin2009cAsym, either direction
  excluded from training), and synthetic warps of :data:`SYNTHETIC_TEST_TEMPLATE` (where the
  CIT168 labels are exact) with seeds of the ``"test"`` stream; that template's images are
  never warped for training.
* **validation** (the outer loss of the bilevel optimisation, and the grid search's score): the
  real pair :data:`VAL_TEMPLATE_PAIR` (either direction excluded from training) and synthetic
  warps of :data:`SYNTHETIC_VAL_TEMPLATES` with seeds of the ``"val"`` stream.
* **training**: every other ordered pair of different templates (same skull variant, contrasts
  as the similarity allows), and synthetic warps, drawn on the fly, of the images of every
  template but the synthetic test one (seeds of the ``"train"`` stream).

A real pair is prepared on the fixed image's working grid: the moving image goes through the
affine pre-alignment (:func:`medrl.baselines.registration.affine_registration`, computed once
per ordered template pair on the skull-stripped T1w images and shared by all variants), both
are intensity-normalised, and the moving landmarks are mapped into the fixed frame by the
inverse affine. Landmark distances of a real pair are thus measured in the fixed image's mm.

The CIT168 labels (defined on MNI152NLin2009cAsym) are carried onto the other templates by the
least-squares affine map between their AFIDs: approximate anatomy, but for synthetic pairs the
truth is exact whatever the labels (the same warp moves image and labels).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from medrl.baselines.registration import affine_registration
from medrl.data.afids4 import AFIDS4_TEMPLATES, afids4_datalist, template_of
from medrl.data.cit168 import cit168_label_map
from medrl.data.datalist import Case, load_case
from medrl.geometry.robust_affine import affine_lstsq
from medrl.io.images import Volume
from medrl.registration.deformable.frames import (
    normalise_intensity,
    resample_onto,
    working_grid,
)
from medrl.registration.deformable.synthetic import (
    SyntheticWarpSettings,
    apply_warp,
    random_warp,
    seed_for,
)
from medrl.utils.atomic import atomic_path

__all__ = [
    "SYNTHETIC_TEST_TEMPLATE",
    "SYNTHETIC_VAL_TEMPLATES",
    "TEST_TEMPLATE_PAIR",
    "VAL_TEMPLATE_PAIR",
    "Pair",
    "PairSet",
    "Source",
    "TemplateLibrary",
    "build_pair_set",
    "carried_cit168",
    "contrast_of",
    "prepare_real_pair",
    "source_from_case",
    "synthetic_pair",
]

TEST_TEMPLATE_PAIR = ("MNI152NLin2009cAsym", "MNI305")
"""(fixed, moving) templates of the held-out real test pair."""
VAL_TEMPLATE_PAIR = ("MNI152NLin6Asym", "MNI152Lin")
"""(fixed, moving) templates of the real validation pair."""
SYNTHETIC_TEST_TEMPLATE = "MNI152NLin2009cAsym"
"""The template whose images are warped for the synthetic test pairs only."""
SYNTHETIC_VAL_TEMPLATES = ("MNI152NLin6Asym", "MNI152Lin")
"""Templates whose T1w images are warped (``"val"`` seeds) for the synthetic validation pairs."""
_REFERENCE_TEMPLATE = "MNI152NLin2009cAsym"  # the CIT168 atlas' world
_FLIP = np.diag([-1.0, -1.0, 1.0])


def contrast_of(case_id: str) -> str:
    """``"MNI152Lin_T2w_brain"`` -> ``"T2w"``."""
    rest = case_id[len(template_of(case_id)) + 1 :]
    return rest.removesuffix("_brain")


def _variant(case_id: str) -> str:
    return "_brain" if case_id.endswith("_brain") else ""


@dataclass(frozen=True, eq=False)
class Pair:
    """A prepared pair on the fixed image's working grid (tensors on the CPU, float32).

    Points are (N, 3) working voxels; ``moving_points_vox`` is where each fixed landmark truly
    lies, mapped into the fixed frame (real pairs: by the inverse affine)."""

    name: str
    kind: str
    """``"real"`` or ``"synthetic"``."""
    fixed: torch.Tensor
    moving: torch.Tensor
    spacing_mm: float
    same_contrast: bool
    fixed_points_vox: torch.Tensor | None = None
    moving_points_vox: torch.Tensor | None = None
    fixed_labels: torch.Tensor | None = None
    moving_labels: torch.Tensor | None = None
    true_displacement_vox: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class Source:
    """One anatomy on its working grid, warped on the fly into synthetic pairs.

    ``images`` maps a contrast to the normalised (1, 1, D, H, W) image; all contrasts share the
    anatomy (co-registered images of one template, one skull variant)."""

    name: str
    images: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    points_vox: torch.Tensor | None
    spacing_mm: float


@dataclass(frozen=True, eq=False)
class PairSet:
    """What a training run uses: real training pairs, synthetic sources, validation pairs."""

    train_real: list[Pair]
    train_sources: list[Source]
    val: list[Pair]
    spacing_mm: float
    facts: dict[str, Any] = field(default_factory=dict)


def carried_cit168(
    grid: Volume, points_ras: np.ndarray | None, reference_points_ras: np.ndarray | None
) -> np.ndarray:
    """CIT168 labels (int16) on ``grid``: carried by the AFIDs affine map from ``points_ras``
    (this image's) to ``reference_points_ras`` (MNI152NLin2009cAsym's); both None: the image
    is in MNI152NLin2009cAsym's world already."""
    atlas = cit168_label_map()
    transform = sitk.AffineTransform(3)
    if points_ras is not None and reference_points_ras is not None:
        ras = affine_lstsq(np.asarray(points_ras), np.asarray(reference_points_ras))
        transform.SetMatrix(tuple(float(v) for v in (_FLIP @ ras[:3, :3] @ _FLIP).reshape(-1)))
        transform.SetTranslation(tuple(float(v) for v in _FLIP @ ras[:3, 3]))
    labels = resample_onto(atlas, grid, transform, "nearest", 0.0)
    return np.rint(labels).astype(np.int16)


class TemplateLibrary:
    """The built-in cases, loaded once, and the affine maps between templates (cached in
    memory, and in ``cache_dir`` as ``.tfm`` files when given)."""

    def __init__(
        self,
        spacing_mm: float,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.spacing_mm = float(spacing_mm)
        self.seed = int(seed)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.log = log or (lambda message: None)
        self.specs = {spec.case_id: spec for spec in afids4_datalist()}
        self._affines: dict[tuple[str, str], sitk.Transform] = {}
        self._cases: dict[str, Case] = {}
        self._grids: dict[str, Volume] = {}
        self._labels: dict[str, np.ndarray] = {}

    @property
    def case_ids(self) -> list[str]:
        return list(self.specs)

    def case(self, case_id: str) -> Case:
        """The case at its own resolution."""
        if case_id not in self._cases:
            self._cases[case_id] = load_case(self.specs[case_id])
        return self._cases[case_id]

    def grid(self, case_id: str) -> Volume:
        """The case's image on its working grid."""
        if case_id not in self._grids:
            self._grids[case_id] = working_grid(self.case(case_id).volume, self.spacing_mm)
        return self._grids[case_id]

    def reference_points_ras(self) -> np.ndarray:
        landmarks = self.case(f"{_REFERENCE_TEMPLATE}_T1w").landmarks
        assert landmarks is not None
        return landmarks.points_ras

    def labels(self, case_id: str) -> np.ndarray:
        """CIT168 labels on the case's working grid (exact for MNI152NLin2009cAsym)."""
        if case_id not in self._labels:
            case = self.case(case_id)
            if template_of(case_id) == _REFERENCE_TEMPLATE or case.landmarks is None:
                labels = carried_cit168(self.grid(case_id), None, None)
            else:
                labels = carried_cit168(
                    self.grid(case_id), case.landmarks.points_ras, self.reference_points_ras()
                )
            self._labels[case_id] = labels
        return self._labels[case_id]

    def affine(self, fixed_template: str, moving_template: str) -> sitk.Transform:
        """Fixed -> moving affine between two templates (skull-stripped T1w images)."""
        key = (fixed_template, moving_template)
        if key in self._affines:
            return self._affines[key]
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"affine_{fixed_template}_{moving_template}_{self.seed}.tfm"
            if path.is_file():
                self._affines[key] = sitk.ReadTransform(str(path))
                return self._affines[key]
        started = time.perf_counter()
        result = affine_registration(
            self.case(f"{fixed_template}_T1w_brain").volume,
            self.case(f"{moving_template}_T1w_brain").volume,
            self.seed,
        )
        self.log(
            f"affine {moving_template} -> {fixed_template}: {time.perf_counter() - started:.1f} s"
        )
        if path is not None:
            with atomic_path(path) as tmp:
                sitk.WriteTransform(result.transform, str(tmp))
        self._affines[key] = result.transform
        return result.transform


def prepare_real_pair(
    fixed_grid: Volume,
    moving: Volume,
    affine: sitk.Transform,
    fixed_points_ras: np.ndarray | None = None,
    moving_points_ras: np.ndarray | None = None,
    name: str = "",
    same_contrast: bool = True,
) -> Pair:
    """A :class:`Pair` of ``fixed_grid`` (the fixed image on its working grid) and ``moving``
    seen through ``affine`` (fixed -> moving), with landmarks in working voxels."""
    spacing = float(fixed_grid.spacing_mm[0])
    moving_array = resample_onto(moving, fixed_grid, affine, "linear", float(moving.array.min()))
    fixed_tensor = torch.from_numpy(normalise_intensity(fixed_grid.array))[None, None]
    moving_tensor = torch.from_numpy(normalise_intensity(moving_array))[None, None]
    fixed_points = moving_points = None
    if fixed_points_ras is not None and moving_points_ras is not None:
        fixed_points = torch.from_numpy(
            fixed_grid.world_to_index(np.asarray(fixed_points_ras), "RAS")
        ).float()
        inverse = affine.GetInverse()
        moving_lps = np.asarray(moving_points_ras) * np.array([-1.0, -1.0, 1.0])
        in_fixed = np.array(
            [inverse.TransformPoint(tuple(float(v) for v in p)) for p in moving_lps]
        )
        moving_points = torch.from_numpy(fixed_grid.world_to_index(in_fixed, "LPS")).float()
    return Pair(
        name=name,
        kind="real",
        fixed=fixed_tensor,
        moving=moving_tensor,
        spacing_mm=spacing,
        same_contrast=same_contrast,
        fixed_points_vox=fixed_points,
        moving_points_vox=moving_points,
    )


def source_from_case(library: TemplateLibrary, case_id: str) -> Source:
    """The anatomy of ``case_id`` with every contrast of its template (same skull variant)."""
    template, variant = template_of(case_id), _variant(case_id)
    images = {}
    for other in library.case_ids:
        if template_of(other) == template and _variant(other) == variant:
            grid = library.grid(other)
            images[contrast_of(other)] = torch.from_numpy(normalise_intensity(grid.array))[
                None, None
            ]
    grid = library.grid(case_id)
    case = library.case(case_id)
    points = None
    if case.landmarks is not None:
        points = torch.from_numpy(grid.world_to_index(case.landmarks.points_ras, "RAS")).float()
    labels = torch.from_numpy(library.labels(case_id).astype(np.int64))
    # the named contrast first: the default moving image
    ordered = {contrast_of(case_id): images.pop(contrast_of(case_id)), **images}
    return Source(case_id, ordered, labels, points, float(grid.spacing_mm[0]))


def synthetic_pair(
    source: Source,
    seed: int,
    settings: SyntheticWarpSettings | None = None,
    fixed_contrast: str | None = None,
    moving_contrast: str | None = None,
) -> Pair:
    """A synthetic pair: fixed = ``source`` in ``fixed_contrast`` warped by a random warp of
    ``seed``, moving = ``source`` in ``moving_contrast`` (both default: the first contrast)."""
    first = next(iter(source.images))
    fixed_contrast = fixed_contrast or first
    moving_contrast = moving_contrast or first
    image = source.images[fixed_contrast]
    drawn = random_warp(image.shape[2:], source.spacing_mm, seed, settings)
    made = apply_warp(drawn, image, source.labels, source.points_vox)
    return Pair(
        name=f"{source.name}:{fixed_contrast}->{moving_contrast}:warp{seed}",
        kind="synthetic",
        fixed=made.fixed,
        moving=source.images[moving_contrast],
        spacing_mm=source.spacing_mm,
        same_contrast=fixed_contrast == moving_contrast,
        fixed_points_vox=made.fixed_points_vox,
        moving_points_vox=made.moving_points_vox,
        fixed_labels=made.fixed_labels,
        moving_labels=source.labels,
        true_displacement_vox=drawn.displacement_vox,
    )


def _real_pairs(
    library: TemplateLibrary,
    template_pairs: Sequence[tuple[str, str]],
    cross_contrast: bool,
    variants: Sequence[str],
    contrasts: Sequence[str] | None = None,
) -> list[Pair]:
    pairs = []
    for fixed_template, moving_template in template_pairs:
        for variant in variants:
            fixed_ids = [
                c
                for c in library.case_ids
                if template_of(c) == fixed_template and _variant(c) == variant
            ]
            moving_ids = [
                c
                for c in library.case_ids
                if template_of(c) == moving_template and _variant(c) == variant
            ]
            for fixed_id, moving_id in itertools.product(fixed_ids, moving_ids):
                same = contrast_of(fixed_id) == contrast_of(moving_id)
                if not same and not cross_contrast:
                    continue
                if contrasts is not None and not {
                    contrast_of(fixed_id),
                    contrast_of(moving_id),
                } <= set(contrasts):
                    continue
                fixed_case, moving_case = library.case(fixed_id), library.case(moving_id)
                names = fixed_case.landmarks.names if fixed_case.landmarks else ()
                moving_points = (
                    moving_case.landmarks.subset(names).points_ras
                    if moving_case.landmarks and names
                    else None
                )
                pairs.append(
                    prepare_real_pair(
                        library.grid(fixed_id),
                        moving_case.volume,
                        library.affine(fixed_template, moving_template),
                        fixed_case.landmarks.points_ras if fixed_case.landmarks else None,
                        moving_points,
                        name=f"{moving_id}->{fixed_id}",
                        same_contrast=same,
                    )
                )
    return pairs


def build_pair_set(
    library: TemplateLibrary,
    *,
    cross_contrast: bool = False,
    val_synthetic_pairs: int = 4,
    synthetic_settings: SyntheticWarpSettings | None = None,
    variants: Sequence[str] = ("", "_brain"),
    train_template_pairs: Sequence[tuple[str, str]] | None = None,
    contrasts: Sequence[str] | None = None,
) -> PairSet:
    """Prepare the real training and validation pairs and the synthetic sources (see the
    module docstring for the roles). ``cross_contrast``: also pairs of different contrasts
    (for a modality-independent similarity). ``train_template_pairs`` (default: all allowed)
    and ``contrasts`` (default: all) restrict the real training pairs, e.g. for a quick run."""
    held_out = {frozenset(TEST_TEMPLATE_PAIR), frozenset(VAL_TEMPLATE_PAIR)}
    allowed = [
        (f, m)
        for f, m in itertools.permutations(AFIDS4_TEMPLATES, 2)
        if frozenset((f, m)) not in held_out
    ]
    if train_template_pairs is None:
        train_template_pairs = allowed
    bad = [p for p in train_template_pairs if tuple(p) not in allowed]
    if bad:
        raise ValueError(f"template pairs {bad} are held out or unknown; allowed: {allowed}")
    started = time.perf_counter()
    train_real = _real_pairs(library, train_template_pairs, cross_contrast, variants, contrasts)
    val = _real_pairs(library, [VAL_TEMPLATE_PAIR], False, variants, ("T1w",))
    val_ids = [
        c
        for c in library.case_ids
        if template_of(c) in SYNTHETIC_VAL_TEMPLATES
        and contrast_of(c) == "T1w"
        and _variant(c) in variants
    ]
    for index in range(val_synthetic_pairs):
        source = source_from_case(library, val_ids[index % len(val_ids)])
        val.append(synthetic_pair(source, seed_for("val", library.seed, index), synthetic_settings))
    train_sources = [
        source_from_case(library, c)
        for c in library.case_ids
        if template_of(c) != SYNTHETIC_TEST_TEMPLATE
        and _variant(c) in variants
        and (contrasts is None or contrast_of(c) in contrasts)
    ]
    facts = {
        "train_real_pairs": [p.name for p in train_real],
        "train_synthetic_sources": [s.name for s in train_sources],
        "val_pairs": [p.name for p in val],
        "test_real_pair": f"{TEST_TEMPLATE_PAIR[1]} -> {TEST_TEMPLATE_PAIR[0]}",
        "synthetic_test_template": SYNTHETIC_TEST_TEMPLATE,
        "prepare_seconds": round(time.perf_counter() - started, 1),
    }
    return PairSet(train_real, train_sources, val, library.spacing_mm, facts)
