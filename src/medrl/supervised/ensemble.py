"""The landmark agent and the supervised heatmap detector as one model.

A landmark model folder may carry a supervised detector (a ``medrl train-heatmap`` model
folder) in its subfolder ``detector``. With ``search.detector_weight`` w > 0 the search writes
each landmark at ``(1 - w) x`` the agent's point ``+ w x`` the detector's, and ``medrl
predict``'s confidence file adds how far the two readers disagree (``disagreement_mm``). The
two are trained differently (a Q-network moving a point through patches against a CNN reading
whole-head and local heatmaps), so their errors are partly independent: on every
left-out template of the leave-one-template-out benchmark the blend beat the agent alone
(BENCHMARKS.md; the shipped model uses w 0.75, with ``search.mirror``, where each reader also
reads the scan's mirror image).

    python -m medrl.supervised.ensemble MODEL_DIR DETECTOR_DIR [--weight 0.5]

copies the detector into the model folder and sets ``search.detector_weight`` (the folder is
replaced as a whole, so an interrupted call leaves the model as it was).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medrl.errors import CheckpointError, InputError, MedrlError
from medrl.geometry.mirror import mirror_pyramid, reflection_ras, with_mirror_reading
from medrl.io.images import Volume
from medrl.supervised.detector import is_detector_dir, load_detector
from medrl.supervised.detector_set import Detector
from medrl.utils.atomic import atomic_dir
from medrl.utils.folder_lock import folder_lock
from medrl.utils.yaml_io import safe_load

DETECTOR_SUBDIR = "detector"


def model_detector(
    model_dir: str | Path, names: tuple[str, ...], device: torch.device | str = "cpu"
) -> Detector | None:
    """The detector a model folder carries (None without one); CheckpointError when it is
    broken or does not know every landmark of the model."""
    folder = Path(model_dir) / DETECTOR_SUBDIR
    if not folder.exists():
        return None
    return detector_knowing(load_detector(folder, device), names, folder)


def detector_knowing(detector: Detector, names: tuple[str, ...], folder: Path) -> Detector:
    """``detector``, or CheckpointError naming ``folder`` when it lacks one of ``names``."""
    missing = [name for name in names if name not in detector.names]
    if missing:
        raise CheckpointError(
            f"the detector does not know the model's landmark(s) {', '.join(missing)}", folder
        )
    return detector


def detected_points(
    detector: Detector,
    volume: Volume,
    names: tuple[str, ...],
    device: torch.device | str,
    mirror: dict[str, str] | None = None,
) -> np.ndarray:
    """(len(names), 3) the detector's points of ``names`` in ``volume``, world RAS mm.

    With ``mirror`` (each landmark's mirror partner, :func:`medrl.geometry.mirror.partner_names`)
    the detector also reads the scan's left-right mirror image, in the same batch, and each
    landmark is the mean of its reading in the scan and its partner's reading in the mirror
    image, reflected back (landmarks without a partner: the scan's reading alone).
    """
    return detected_readings(detector, volume, names, device, mirror)[-1]


def detected_readings(
    detector: Detector,
    volume: Volume,
    names: tuple[str, ...],
    device: torch.device | str,
    mirror: dict[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The detector's reading of the scan alone and its points (:func:`detected_points`), each
    (len(names), 3) world RAS mm; the two are the same array without ``mirror``."""
    scan = detector.prepare(volume, device)
    row = {name: index for index, name in enumerate(detector.names)}
    if not mirror:
        points = detector.detect_scans([scan])[0][[row[name] for name in names]]
        return points, points
    reflection = reflection_ras(float(scan.intensity_centre_ras[0]))
    own, mirrored = detector.detect_scans([scan, mirror_pyramid(scan, reflection)])
    own_rows = own[[row[name] for name in names]]
    return own_rows, with_mirror_reading(names, own_rows, row, mirrored, mirror, reflection)


def attach_detector(model_dir: str | Path, detector_dir: str | Path, weight: float) -> None:
    """Copy the detector ``detector_dir`` into the landmark model ``model_dir`` and set its
    ``search.detector_weight``; the model folder is replaced as a whole."""
    from medrl.agents.checkpoint import load_model

    if not 0.0 <= weight <= 1.0:
        raise InputError(f"the detector's weight is in [0, 1], got {weight}")
    folder, source = Path(model_dir), Path(detector_dir)
    if not is_detector_dir(source):
        raise CheckpointError("not a supervised detector folder (no detector.yaml)", source)
    model = load_model(folder, task="landmark")
    detector = detector_knowing(load_detector(source), model.names, source)
    header: dict[str, Any] = safe_load((folder / "model.yaml").read_text())
    header["config"].setdefault("search", {})["detector_weight"] = float(weight)
    training = header.get("training")
    if isinstance(training, dict):
        training["detector"] = {
            "weight": float(weight),
            "steps": detector.training.get("steps"),
            "minutes": detector.training.get("minutes"),
        }
    with atomic_dir(folder) as tmp:
        for item in folder.iterdir():
            if item.name in ("model.yaml", DETECTOR_SUBDIR):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        shutil.copytree(source, tmp / DETECTOR_SUBDIR)
        with open(tmp / "model.yaml", "w") as handle:
            yaml.safe_dump(header, handle, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medrl.supervised.ensemble", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("model_dir")
    parser.add_argument("detector_dir")
    parser.add_argument("--weight", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        with folder_lock(Path(args.model_dir).parent, "attach-detector"):
            attach_detector(args.model_dir, args.detector_dir, args.weight)
    except MedrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model_dir}: detector attached, search.detector_weight {args.weight}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
