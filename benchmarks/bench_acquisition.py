"""Acquisition changes: a landmark model on the same brains scanned differently.

Real scans differ from the templates in how they were acquired as well as in anatomy: an
intensity bias field, Rician noise, thicker slices along one axis, a field of view that
reaches down the neck or stops short of the vertex, another storage order of the voxels.
Each case of ``--datalist`` (split ``test``), unmoved and under ``--trials`` random rigid
moves (up to 15 degrees and 20 mm, seeds 1000...), is searched as it is and under each change
below (seeded); the table gives the errors per change, and how far the change moved the
intensity centroid on which the search and the detector's coarse view are centred. A left-out
template's fold model (``bench_loto``) shows how a brain the model never saw fares; the
shipped model on ``builtin:afids`` how the brains it knows do.

PYTHONPATH=. python -m benchmarks.bench_acquisition [--model DIR] [--datalist builtin:afids]
    [--trials 2] [--threads 2]
PYTHONPATH=. python -m benchmarks.bench_acquisition --model runs/loto/f_MNI305 \\
    --datalist builtin:afids4/MNI305 --set search.mirror=true --set search.adaptive_levels=true
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks._common import set_threads
from medrl.agents.checkpoint import load_model, with_overrides
from medrl.agents.search import search
from medrl.data.scenarios import scenario_scans
from medrl.data.sources import load_split
from medrl.data.tissue import head_voxels, tissue_level
from medrl.envs.pyramid import intensity_centre_ras
from medrl.io.images import Volume
from medrl.predict import default_model_dir


def _with_array(volume: Volume, array: np.ndarray, what: str) -> Volume:
    return Volume(
        array=array.astype(np.float32),
        spacing_mm=volume.spacing_mm,
        origin_lps=volume.origin_lps,
        direction_lps=volume.direction_lps,
        source=f"{volume.source} ({what})",
    )


def bias_field(volume: Volume, strength: float, seed: int) -> Volume:
    """``volume`` times a smooth field exp(strength x a random quadratic over the grid)."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in volume.array.shape], indexing="ij")
    terms = [*axes, axes[0] * axes[1], axes[1] * axes[2], axes[0] * axes[2]]
    log_field = sum(c * t for c, t in zip(rng.normal(0, 1, len(terms)), terms, strict=True))
    log_field = strength * log_field / np.abs(log_field).max()
    return _with_array(volume, volume.array * np.exp(log_field), f"bias field {strength:g}")


def rician_noise(volume: Volume, level: float, seed: int) -> Volume:
    """The magnitude of ``volume`` plus complex Gaussian noise of ``level`` x the head's
    tissue level (what a magnitude MR image carries)."""
    rng = np.random.default_rng(seed)
    sigma = level * tissue_level(volume.array)
    real = volume.array + rng.normal(0, sigma, volume.array.shape)
    imaginary = rng.normal(0, sigma, volume.array.shape)
    return _with_array(volume, np.hypot(real, imaginary), f"Rician noise {level:.0%}")


def reslice(volume: Volume, spacing_mm: tuple[float, float, float]) -> Volume:
    """``volume`` on a grid of ``spacing_mm`` (its own axes), each axis smoothed first by a
    Gaussian of sigma 0.5 x sqrt(new^2 - old^2) mm, as the pyramid smooths before it
    resamples: somewhat harsher than a boxcar slice profile of the new thickness."""
    image = volume.to_sitk()
    old = np.asarray(image.GetSpacing())
    new = np.asarray(spacing_mm, dtype=np.float64)
    sigma = 0.5 * np.sqrt(np.clip(new**2 - old**2, 0.0, None))
    if sigma.max() > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigma])
    size = [max(1, int(n)) for n in np.rint(np.asarray(image.GetSize()) * old / new)]
    corner = np.asarray(image.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = corner + direction @ (new / 2)
    resliced = sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, [float(v) for v in origin],
        [float(v) for v in new], image.GetDirection(), 0.0, sitk.sitkFloat32,
    )  # fmt: skip
    return Volume.from_sitk(
        resliced, source=f"{volume.source} ({new[0]:g} x {new[1]:g} x {new[2]:g} mm)"
    )


def _superior_axis(image: sitk.Image) -> tuple[int, bool]:
    """The index axis (x, y, z) that runs closest to superior, and whether index grows upward."""
    direction_lps = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction_lps[2])))  # the S component of each index axis
    return axis, bool(direction_lps[2, axis] > 0)


def add_neck(volume: Volume, extent_mm: float) -> Volume:
    """The field of view extended inferiorly by ``extent_mm`` (along the index axis closest to
    superior), filled with the lowest slice repeated: a crude neck, tissue below the head that
    the templates do not have, which pulls the intensity centroid (where searches start) down,
    as a scanner's field of view does."""
    image = volume.to_sitk()
    axis, up = _superior_axis(image)
    pad = [0, 0, 0]
    pad[axis] = round(extent_mm / image.GetSpacing()[axis])
    zero = [0, 0, 0]
    lower, upper = (pad, zero) if up else (zero, pad)
    padded = sitk.ZeroFluxNeumannPad(image, lower, upper)
    return Volume.from_sitk(padded, source=f"{volume.source} (neck {extent_mm:g} mm)")


def cut_top(volume: Volume, extent_mm: float) -> Volume:
    """The field of view ending ``extent_mm`` below the top of the head: a scan that misses
    the vertex. The top is the highest slice (along the index axis closest to superior) in
    which at least 1 % as many voxels as in the fullest slice are above a tenth of the head's
    tissue level, so that a few bright voxels of background do not count."""
    image = volume.to_sitk()
    axis, up = _superior_axis(image)
    array_axis = 2 - axis  # the array is (z, y, x)
    others = tuple(a for a in range(3) if a != array_axis)
    counts = head_voxels(volume.array).sum(axis=others)
    filled = np.flatnonzero(counts >= 0.01 * counts.max()) if counts.max() > 0 else []
    if len(filled) == 0:
        raise ValueError(f"{volume.source}: no head to cut (the image holds no tissue)")
    size, step = image.GetSize()[axis], round(extent_mm / image.GetSpacing()[axis])
    # slices removed: those above the top of the head, and ``step`` more
    removed = (size - 1 - int(filled.max()) if up else int(filled.min())) + step
    if removed >= size * 3 // 4:
        raise ValueError(
            f"{volume.source}: cutting {extent_mm:g} mm below the top of the head leaves "
            f"{size - removed} of {size} slices"
        )
    cut = [0, 0, 0]
    cut[axis] = removed
    zero = [0, 0, 0]
    lower, upper = (zero, cut) if up else (cut, zero)
    cropped = sitk.Crop(image, lower, upper)
    return Volume.from_sitk(cropped, source=f"{volume.source} (top {extent_mm:g} mm cut)")


def changes(seed: int) -> dict[str, Callable[[Volume], Volume]]:
    def slices(spacing: tuple[float, float, float]) -> Callable[[Volume], Volume]:
        def change(volume: Volume) -> Volume:
            return reslice(volume, tuple(spacing * np.asarray(volume.spacing_mm)))

        return change

    return {
        "as it is": lambda v: v,
        "bias field (x 0.6 to 1.6)": lambda v: bias_field(v, np.log(1.6), seed),
        "Rician noise 3 %": lambda v: rician_noise(v, 0.03, seed),
        "Rician noise 6 %": lambda v: rician_noise(v, 0.06, seed),
        "slices 1.2 x thicker (3rd axis)": slices((1.0, 1.0, 1.2)),
        "slices 3 x thicker (3rd axis)": slices((1.0, 1.0, 3.0)),
        "slices 3 x thicker (1st axis)": slices((3.0, 1.0, 1.0)),
        "bias, noise 4 %, slices 1.2 x": lambda v: slices((1.0, 1.0, 1.2))(
            rician_noise(bias_field(v, np.log(1.6), seed), 0.04, seed)
        ),
        "field of view with a neck (80 mm more below)": lambda v: add_neck(v, 80.0),
        "field of view ending 30 mm below the vertex": lambda v: cut_top(v, 30.0),
        **{f"stored as {code} (the same voxels)": restored(code) for code in ("LPI", "PIR", "SLA")},
    }


def restored(code: str) -> Callable[[Volume], Volume]:
    """The scan's voxels in another storage order (``SimpleITK.DICOMOrient``: axes permuted and
    flipped, the same image in the world)."""

    def change(volume: Volume) -> Volume:
        image = sitk.DICOMOrient(volume.to_sitk(), code)
        return Volume.from_sitk(image, source=f"{volume.source} (stored as {code})")

    return change


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--datalist", default="builtin:afids")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a search setting for the model, e.g. search.mirror=true")  # fmt: skip
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model or default_model_dir(), args.device, task="landmark")
    model = with_overrides(model, args.overrides)
    cases = load_split(args.datalist, "test")
    scans = scenario_scans(cases, rigid_trials=args.trials, include_unmoved=True,
                           landmark_names=model.names)  # fmt: skip
    errors: dict[str, list[np.ndarray]] = {}  # per change: (32,) errors of each scan
    moved: dict[str, list[float]] = {}  # per change: how far the search's centre moved (mm)
    for index, scan in enumerate(scans):
        assert scan.landmarks is not None
        row = {name: i for i, name in enumerate(scan.landmarks.names)}
        order = [row[name] for name in model.names]
        truth = scan.landmarks.points_ras[order]
        centre_ras = intensity_centre_ras(scan.volume)
        for name, change in changes(seed=index).items():
            changed = change(scan.volume)
            moved.setdefault(name, []).append(
                float(np.linalg.norm(intensity_centre_ras(changed) - centre_ras))
            )
            with torch.inference_mode():
                found = search(model, changed, args.device).estimate
            errors.setdefault(name, []).append(np.linalg.norm(found - truth, axis=1))
        print(f"  {scan.case_id} done ({index + 1}/{len(scans)})", flush=True)
    print(f"\n{args.datalist}: {len(scans)} scans x {len(model.names)} landmarks\n")
    print("| acquisition | mean mm | median mm | max mm | > 10 mm | worst landmark (mean mm) "
          "| search centre moved (mean mm) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, values in errors.items():
        e = np.concatenate(values)
        per_landmark = np.mean(values, axis=0)
        worst = int(np.argmax(per_landmark))
        label = model.descriptions[worst] if worst < len(model.descriptions) else ""
        figures = f"{e.mean():.2f} | {np.median(e):.2f} | {e.max():.1f} | {(e > 10).sum()}"
        worst_text = f"{model.names[worst]} {label} ({per_landmark[worst]:.1f})"
        print(f"| {name} | {figures} | {worst_text} | {np.mean(moved[name]):.1f} |")


if __name__ == "__main__":
    main()
