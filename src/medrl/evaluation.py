"""Evaluation: the agent against the affine-registration baseline, on held-out scans.

The built-in templates share MNI space, so an unmoved test image only measures memorised
coordinates. Each test scan is therefore also evaluated under random rigid transforms
(``rigid_trials`` of them): the image content is resampled through the transform and the
true landmarks are moved with it. With ``elastic_mm`` > 0 every moved scan is first warped
by a smooth non-affine field (:func:`deform_case`), which no affine registration can follow.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from medrl.agents.checkpoint import LandmarkModel
from medrl.agents.search import SearchResult, level_paths, search
from medrl.baselines.registration import propagate_landmarks
from medrl.data.augment import inverse_transform_points
from medrl.data.datalist import Case
from medrl.errors import InputError
from medrl.geometry.warp_labels import (
    elastic_sample_points_ras,
    grid_centre_ras,
    rigid_resample_transform,
)
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks, write_landmarks
from medrl.metrics.localization import (
    SUMMARY_KEYS,
    evaluation_tables,
    format_table,
    raw_error_rows,
    write_tables,
)
from medrl.utils.atomic import atomic_open

AGENT = "agent"
BASELINE = "affine-baseline"
SUMMARY_COLUMNS = ["method", *SUMMARY_KEYS]
CASES_DIR = "cases"
"""Folder of the evaluation output with one JSON per evaluated scan (for ``medrl report``)."""


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


def deform_case(
    volume: Volume, landmarks: Landmarks, elastic_mm: float, seed: int
) -> tuple[Volume, Landmarks]:
    """Warp the anatomy by a smooth non-affine field; landmarks move with it exactly.

    The field is the training augmentation's elastic displacement alone (``elastic_mm``
    amplitude, no affine part, no intensity change): ``I'(x) = I(x + d(x))``, resampled
    (linear) on the scan's own grid, and a landmark ``l`` moves to the ``y`` with
    ``y + d(y) = l``. It stands in for anatomy that no affine map can match, as in another
    subject's brain.
    """
    params, sampled_ras = elastic_sample_points_ras(volume, elastic_mm, seed)
    nz, ny, nx = volume.array.shape
    sample_index = volume.world_to_index(sampled_ras.astype(np.float64), "RAS")
    coordinates = sample_index[:, ::-1].T.reshape(3, nz, ny, nx)  # (z, y, x) axes
    warped = ndimage.map_coordinates(
        volume.array, coordinates, order=1, mode="constant", cval=float(volume.array.min())
    )
    points = torch.tensor(landmarks.points_ras, dtype=torch.float32)[None]
    try:
        moved = inverse_transform_points(params, points)[0].numpy().astype(np.float64)
    except RuntimeError as exc:  # the field folds over itself: no landmark positions exist
        raise InputError(
            f"an elastic warp of {elastic_mm:g} mm (seed {seed}) is not invertible; "
            "use a smaller amplitude",
            volume.source,
        ) from exc
    deformed = Volume(
        warped.astype(np.float32),
        volume.spacing_mm,
        volume.origin_lps,
        volume.direction_lps,
        source=f"{volume.source} (elastically deformed)",
    )
    return deformed, Landmarks(landmarks.names, moved, landmarks.descriptions)


def evaluate(
    model: LandmarkModel,
    test_cases: list[Case],
    atlas: Case,
    out_dir: str | Path,
    rigid_trials: int = 5,
    max_rotation_deg: float = 15.0,
    max_translation_mm: float = 20.0,
    seed: int = 1000,
    include_unmoved: bool = False,
    device: str = "cpu",
    progress: bool = True,
    num_starts: int | None = None,
    elastic_mm: float = 0.0,
) -> dict:
    """Run agent and baseline on every test case (moved ``rigid_trials`` times); write tables.

    ``elastic_mm`` > 0 warps each moved scan first (:func:`deform_case`, seeded like the
    rigid move) and names the scans ``<case>_elastic<trial>`` instead of ``_rigid<trial>``.
    """
    out_dir = Path(out_dir)
    truth: dict[str, Landmarks] = {}
    results: dict[str, dict[str, Landmarks]] = {AGENT: {}, BASELINE: {}}
    timings: dict[str, list[float]] = {AGENT: [], BASELINE: []}
    assert atlas.landmarks is not None
    atlas_landmarks = atlas.landmarks.subset(list(model.names))
    jobs: list[tuple[str, Volume, Landmarks, dict]] = []
    for case in test_cases:
        if case.landmarks is None:
            continue
        case_truth = case.landmarks.subset([n for n in model.names if n in case.landmarks.names])
        origin = {"case": case.case_id, "image": case.volume.source}
        if include_unmoved or rigid_trials == 0:
            jobs.append((case.case_id, case.volume, case_truth, {**origin, "rigid": None}))
        for trial in range(rigid_trials):
            rigid = random_rigid(seed + trial, max_rotation_deg, max_translation_mm)
            volume, moved, kind, warp = case.volume, case_truth, "rigid", None
            if elastic_mm > 0:
                warp = {"elastic_mm": elastic_mm, "seed": seed + trial}
                volume, moved = deform_case(volume, moved, **warp)
                kind = "elastic"
            volume, moved = move_case(volume, moved, rigid)
            scan = {**origin, "elastic": warp, "rigid": rigid_to_dict(rigid)}
            jobs.append((f"{case.case_id}_{kind}{trial}", volume, moved, scan))
    current = {f"{case_id}.json" for case_id, _, _, _ in jobs}
    if (out_dir / CASES_DIR).is_dir():  # drop records of an earlier evaluation into this folder
        for path in (out_dir / CASES_DIR).glob("*.json"):
            if path.name not in current:
                path.unlink()
    for index, (case_id, volume, case_truth, scan) in enumerate(jobs):
        if progress:
            print(f"[{index + 1}/{len(jobs)}] evaluating {case_id}", file=sys.stderr, flush=True)
        truth[case_id] = case_truth
        started = time.perf_counter()
        with torch.inference_mode():
            result = search(model, volume, device, num_starts=num_starts)
        found = result.landmarks
        timings[AGENT].append(time.perf_counter() - started)
        results[AGENT][case_id] = found.subset(list(case_truth.names))
        started = time.perf_counter()
        baseline = propagate_landmarks(atlas.volume, atlas_landmarks, volume, seed=0)
        timings[BASELINE].append(time.perf_counter() - started)
        results[BASELINE][case_id] = baseline.subset(list(case_truth.names))
        write_landmarks(found, out_dir / "predictions" / f"{case_id}.fcsv")
        record = case_record(case_id, scan, case_truth, result, results[BASELINE][case_id])
        with atomic_open(out_dir / CASES_DIR / f"{case_id}.json") as handle:
            json.dump(record, handle)
    per_landmark, overall = evaluation_tables(results, truth)
    for row in overall:
        row["seconds_per_scan_median"] = float(np.median(timings[row["method"]]))
    write_tables(per_landmark, out_dir, "per_landmark")
    write_tables(overall, out_dir, "overall")
    write_tables(raw_error_rows(results, truth), out_dir, "errors")
    summary = {
        "overall": overall,
        "cases": list(truth),
        "atlas": atlas.case_id,
        "model": {
            "meta": model.meta,
            "levels_mm": [lv.spacing_mm for lv in model.config.env.levels],
        },
        "rigid_trials": rigid_trials,
        "max_rotation_deg": max_rotation_deg,
        "max_translation_mm": max_translation_mm,
        "elastic_mm": elastic_mm,
        "seed": seed,
    }
    with atomic_open(out_dir / "summary.json") as handle:
        json.dump(summary, handle, indent=2, default=str)
    return {"per_landmark": per_landmark, "overall": overall}


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


def _rounded(points: np.ndarray) -> list:
    return np.round(np.asarray(points, dtype=np.float64), 2).tolist()


def case_record(
    case_id: str, scan: dict, truth: Landmarks, result: SearchResult, baseline: Landmarks
) -> dict:
    """What ``medrl report`` draws for one evaluated scan, as plain JSON (world RAS mm).

    ``scan`` names the source image and the rigid move applied to it (None: unmoved), so the
    report can rebuild the evaluated image. ``search_paths_ras[landmark][start][level]`` lists
    the positions the agent visited at that level, coarse to fine, without repeats.
    """
    found = result.landmarks
    num_levels = len(result.level_points_ras)
    index = {name: row for row, name in enumerate(found.names)}
    paths = []
    for name in truth.names:
        row = index[name]
        starts = zip(result.paths_ras[row], result.path_levels[row], strict=True)
        paths.append(
            [[_rounded(p) for p in level_paths(path, lv, num_levels)] for path, lv in starts]
        )
    return {
        "case": case_id,
        "scan": scan,
        "landmarks": list(truth.names),
        "descriptions": [truth.description(name) for name in truth.names],
        "truth_ras": _rounded(truth.points_ras),
        "agent_ras": _rounded(found.subset(list(truth.names)).points_ras),
        "baseline_ras": _rounded(baseline.points_ras),
        "search_paths_ras": paths,
    }


def select_search_levels(
    model: LandmarkModel,
    cases: list[Case],
    trials: int = 2,
    seed: int = 77,
    device: str = "cpu",
) -> tuple[int, list[float]]:
    """How many levels the search should use: the count with the lowest mean error on
    ``cases`` (the training scans) under random rigid moves, never on test data.

    Returns the chosen count and the mean error after each level.
    """
    config = model.config
    model = replace(model, config=replace(config, search=replace(config.search, levels=0)))
    errors: list[list[float]] = [[] for _ in config.env.levels]
    for case in cases:
        if case.landmarks is None:
            continue
        truth = case.landmarks.subset(list(model.names))
        for trial in range(trials):
            volume, moved = move_case(case.volume, truth, random_rigid(seed + trial, 15.0, 20.0))
            with torch.inference_mode():
                result = search(model, volume, device, num_starts=1)
            for level, points in enumerate(result.level_points_ras):
                errors[level].extend(np.linalg.norm(points - moved.points_ras, axis=1).tolist())
    means = [float(np.mean(e)) if e else float("inf") for e in errors]
    return int(np.argmin(means)) + 1, means


def print_tables(tables: dict) -> None:
    per_landmark = tables["per_landmark"]
    columns = ["method", "landmark", "description", "mean_mm", "median_mm", "max_mm"]
    print(format_table(per_landmark, columns))
    print()
    print(format_table(tables["overall"], [*SUMMARY_COLUMNS, "seconds_per_scan_median"]))
