"""Several supervised heatmap detectors read as one: each landmark is the mean of the members'
points.

Detectors trained alike from different seeds make partly independent errors, so their mean
is closer to the truth than an average member (on every left-out template of the
leave-one-template-out benchmark, BENCHMARKS.md). The members share the pyramid they read
(same coarse and local spacing), so a scan is prepared once for all of them.

A set folder holds ``detector.yaml`` (format ``medrl-heatmap-set``, the landmarks and the
member subfolders) and one detector folder per member::

    python -m medrl.supervised.detector_set OUT_DIR DETECTOR_DIR DETECTOR_DIR [...]

writes one from detector folders (``medrl train-heatmap`` model folders); the folder appears
complete or not at all. :func:`medrl.supervised.detector.load_detector` reads either kind.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medrl.envs.pyramid import ScanPyramid
from medrl.errors import CheckpointError, InputError, MedrlError
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.supervised.detector import (
    HEADER,
    DetectorSettings,
    HeatmapDetector,
    load_single_detector,
    read_detector_header,
)
from medrl.utils.atomic import atomic_dir, atomic_open
from medrl.utils.folder_lock import folder_lock

SET_FORMAT = "medrl-heatmap-set"


@dataclass
class DetectorSet:
    members: tuple[HeatmapDetector, ...]

    def __post_init__(self) -> None:
        mismatch = member_mismatch(self.members)
        if mismatch is not None:
            raise MemberMismatchError(*mismatch)

    @property
    def names(self) -> tuple[str, ...]:
        return self.members[0].names

    @property
    def descriptions(self) -> tuple[str, ...]:
        return self.members[0].descriptions

    @property
    def settings(self) -> DetectorSettings:
        """The first member's settings (the pyramid all members read)."""
        return self.members[0].settings

    @property
    def training(self) -> dict[str, Any]:
        trained = [member.training for member in self.members]
        return {
            "members": trained,
            "steps": [t.get("steps") for t in trained],
            "minutes": sum(float(t.get("minutes") or 0.0) for t in trained),
        }

    def fingerprint(self) -> list[Any]:
        """What the points depend on: each member's settings and weights, in order."""
        return [part for member in self.members for part in member.fingerprint()]

    def prepare(self, volume: Volume, device: torch.device | str = "cpu") -> ScanPyramid:
        return self.members[0].prepare(volume, device)

    @torch.no_grad()
    def detect(self, volume: Volume, device: torch.device | str = "cpu") -> Landmarks:
        position = self.detect_scans([self.prepare(volume, device)])[0]
        return Landmarks(self.names, position, self.descriptions)

    @torch.no_grad()
    def detect_scans(self, scans: list[ScanPyramid]) -> np.ndarray:
        """(len(scans), K, 3) the mean of the members' points, world RAS mm."""
        return np.mean([member.detect_scans(scans) for member in self.members], axis=0)

    def save(self, folder: str | Path) -> None:
        """Each member in its subfolder, then ``detector.yaml`` (which marks it complete); into
        a new folder (:func:`write_detector_set` replaces an existing set as a whole)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        subfolders = [f"member-{index}" for index in range(len(self.members))]
        for member, subfolder in zip(self.members, subfolders, strict=True):
            member.save(folder / subfolder)
        header = {
            "format": SET_FORMAT,
            "names": list(self.names),
            "descriptions": list(self.descriptions),
            "members": subfolders,
        }
        with atomic_open(folder / HEADER) as handle:
            yaml.safe_dump(header, handle, sort_keys=False)


class MemberMismatchError(InputError):
    """A member that cannot join the others: its index and what is wrong with it."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"member {index} {problem}")
        self.index, self.problem = index, problem


def member_mismatch(members: tuple[HeatmapDetector, ...]) -> tuple[int, str] | None:
    """(index, what is wrong) of the first member that cannot join the others in a set, or
    None: a set has two members or more, all of the same landmarks in the same order, reading
    the same pyramid, and no two of the same weights."""
    if len(members) < 2:
        return 0, f"is the only member: a set has two or more, got {len(members)}"
    first = members[0]
    for index, member in enumerate(members[1:], start=1):
        if member.names != first.names:
            return index, "reads other landmarks (or in another order) than the first member"
        if member.settings.spacings_mm[:2] != first.settings.spacings_mm[:2]:
            return index, (
                f"reads the scan at {member.settings.spacings_mm[:2]} mm, the first member at "
                f"{first.settings.spacings_mm[:2]} mm: they cannot share a prepared scan"
            )
        for other in members[:index]:
            if _same_weights(member, other):
                return index, "has the weights of an earlier member (a set of copies)"
    return None


def _same_weights(a: HeatmapDetector, b: HeatmapDetector) -> bool:
    states = [(a.coarse.state_dict(), b.coarse.state_dict()),
              (a.local.state_dict(), b.local.state_dict())]  # fmt: skip
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in states)


Detector = HeatmapDetector | DetectorSet
"""What a model folder's ``detector`` subfolder holds: one detector or a set."""


def load_detector_set(
    folder: Path, header: dict[str, Any], device: torch.device | str
) -> DetectorSet:
    """The set ``folder`` (its ``detector.yaml`` read as ``header``); CheckpointError naming
    the folder when a member is missing, broken or does not fit the others."""
    subfolders = header.get("members")
    if not isinstance(subfolders, list) or not all(isinstance(s, str) for s in subfolders):
        raise CheckpointError("detector.yaml of a set lists no member subfolders", folder)
    for subfolder in subfolders:
        if Path(subfolder).name != subfolder or subfolder in ("", ".", ".."):
            raise CheckpointError(f"member {subfolder!r} is not a subfolder of the set", folder)
    if len(set(subfolders)) < len(subfolders):
        raise CheckpointError("detector.yaml of a set lists a member twice", folder)
    names = header.get("names")
    if not isinstance(names, list):
        raise CheckpointError("detector.yaml of a set lists no landmark names", folder)
    paths = [folder / s for s in subfolders]
    try:
        detector_set = DetectorSet(tuple(load_single_detector(path, device) for path in paths))
    except MemberMismatchError as exc:
        where = paths[exc.index] if paths else folder
        raise CheckpointError(f"this member of the set {exc.problem}", where) from exc
    if list(detector_set.names) != [str(n) for n in names]:
        raise CheckpointError("the set's landmarks are not its members' landmarks", folder)
    return detector_set


def write_detector_set(out_dir: str | Path, detector_dirs: list[str | Path]) -> DetectorSet:
    """The detectors ``detector_dirs`` as a set in ``out_dir``, written whole or not at all.
    ``out_dir`` may replace an earlier set, nothing else, and none of the inputs."""
    out, sources = Path(out_dir), [Path(d) for d in detector_dirs]
    for source in sources:
        if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
            raise InputError(f"the set would replace its member {source}", out)
    if out.exists() and not _is_set_dir(out):
        raise InputError("exists and is not a detector set: choose a new folder", out)
    try:
        detector_set = DetectorSet(tuple(load_single_detector(source) for source in sources))
    except MemberMismatchError as exc:
        where = sources[exc.index] if sources else out
        raise InputError(f"this detector {exc.problem}", where) from exc
    with folder_lock(out.resolve().parent, "detector set's parent folder"), atomic_dir(out) as tmp:
        detector_set.save(tmp)
    return detector_set


def _is_set_dir(folder: Path) -> bool:
    try:
        return read_detector_header(folder).get("format") == SET_FORMAT
    except CheckpointError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medrl.supervised.detector_set", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("out_dir")
    parser.add_argument("detector_dirs", nargs="+")
    args = parser.parse_args(argv)
    try:
        detector_set = write_detector_set(args.out_dir, args.detector_dirs)
    except MedrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = [asdict(m.settings) for m in detector_set.members]
    rounds = sorted({s["local_rounds"] for s in settings})
    print(
        f"{args.out_dir}: {len(detector_set.members)} detectors of "
        f"{len(detector_set.names)} landmarks (local rounds {rounds})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
