"""How close can anything get? Error floors of the built-in AFIDs test, from the annotations.

Part 1 needs only the embedded landmark files:

- the two independent annotation sets of MNI152NLin2009cAsym against each other;
- the training template's coordinates copied unchanged to MNI152NLin6Asym;
- an *oracle* affine map: least squares from the training template's 32 landmarks to the
  test template's true ones (uses the answers; no method can do better with one affine map),
  on all 32 and leave-one-out (each landmark mapped by the fit to the other 31).

Part 2 (``--evaluation DIR``, a ``medrl evaluate`` output) splits each method's errors into
a systematic part (per landmark, the norm of the mean error vector over the rigid moves, in
the template's frame) and the scatter around it, and adds one agent-based variant: the
training landmarks mapped by a least-squares affine fitted to the agent's 32 detections.

    python -m benchmarks.bench_floor --evaluation /tmp/eval_s1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medrl.data.builtin import afids_landmarks
from medrl.evaluation import CASES_DIR, rigid_from_dict

TRAIN, TEST = "MNI152NLin2009cAsym", "MNI152NLin6Asym"


def _norms(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors, axis=-1)


def affine_fit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 4x3 least-squares affine map of homogeneous ``source`` points onto ``target``."""
    homogeneous = np.c_[source, np.ones(len(source))]
    matrix, *_ = np.linalg.lstsq(homogeneous, target, rcond=None)
    return matrix


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.c_[points, np.ones(len(points))] @ matrix


def leave_one_out_errors(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    errors = []
    for i in range(len(source)):
        keep = np.arange(len(source)) != i
        matrix = affine_fit(source[keep], target[keep])
        errors.append(np.linalg.norm(apply_affine(matrix, source[i : i + 1])[0] - target[i]))
    return np.asarray(errors)


def label_floors() -> list[tuple[str, float]]:
    rater_a = afids_landmarks(TRAIN).points_ras
    rater_b = afids_landmarks(TRAIN, "groundtruth").points_ras
    truth = afids_landmarks(TEST).points_ras
    rows = [
        (f"{TRAIN}: rater set A vs rater set B", _norms(rater_a - rater_b).mean()),
        (f"copy {TRAIN} (set A) coordinates to {TEST}", _norms(rater_a - truth).mean()),
    ]
    for label, source in (("set A", rater_a), ("mean of sets A and B", (rater_a + rater_b) / 2)):
        fitted = apply_affine(affine_fit(source, truth), source)
        rows.append((f"oracle affine ({label}), fit on all 32", _norms(fitted - truth).mean()))
        rows.append(
            (f"oracle affine ({label}), leave-one-out", leave_one_out_errors(source, truth).mean())
        )
    return rows


def evaluation_split(folder: Path) -> list[tuple[str, float, float, float]]:
    """Per method: (name, mean error, systematic part, scatter) in mm."""
    records = [json.loads(p.read_text()) for p in sorted((folder / CASES_DIR).glob("*.json"))]
    if not records:
        raise SystemExit(f"{folder}: no per-scan records in {CASES_DIR}/ (run medrl evaluate)")
    training = afids_landmarks(TRAIN).points_ras
    errors: dict[str, list[np.ndarray]] = {
        "agent": [],
        "affine baseline": [],
        "agent + affine fit": [],
    }
    for record in records:
        truth = np.asarray(record["truth_ras"])
        agent = np.asarray(record["agent_ras"])
        fitted = apply_affine(affine_fit(training, agent), training)
        # Error vectors back in the template's frame: the rigid move rotated them by R.
        rigid = record["scan"].get("rigid")
        rotation = rigid_from_dict(rigid).rotation_ras() if rigid else np.eye(3)
        for name, points in (
            ("agent", agent),
            ("affine baseline", np.asarray(record["baseline_ras"])),
            ("agent + affine fit", fitted),
        ):
            errors[name].append((points - truth) @ rotation)
    rows = []
    for name, per_scan in errors.items():
        stacked = np.stack(per_scan)  # (scans, landmarks, 3)
        mean_vector = stacked.mean(axis=0)
        rows.append(
            (
                name,
                float(_norms(stacked).mean()),
                float(_norms(mean_vector).mean()),
                float(_norms(stacked - mean_vector).mean()),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluation", type=Path, help="a medrl evaluate output folder")
    args = parser.parse_args()
    print("| reference (annotations only) | mean mm |\n|---|---:|")
    for name, value in label_floors():
        print(f"| {name} | {value:.2f} |")
    if args.evaluation:
        print(f"\n{args.evaluation}:\n")
        print("| method | mean mm | systematic mm | scatter mm |\n|---|---:|---:|---:|")
        for name, mean, systematic, scatter in evaluation_split(args.evaluation):
            print(f"| {name} | {mean:.2f} | {systematic:.2f} | {scatter:.2f} |")


if __name__ == "__main__":
    main()
