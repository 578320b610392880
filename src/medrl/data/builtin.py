"""Built-in real data: brain MRI templates annotated with the 32 AFIDs landmarks.

The anatomical fiducials (AFIDs) are the work of the AFIDs project: Lau JC, Parrent AG,
Demarco J, et al. "A framework for evaluating correspondence between brain images using
anatomical fiducials." Human Brain Mapping 2019. The coordinates embedded in
``medrl/data/resources/afids/`` come from the repository afids/afids-validator, folder
``afidsvalidator/afids-templates/human/`` (GPL-3.0); the second, independent annotation set of
MNI152NLin2009cAsym (``..._desc-groundtruth_afids.fcsv``) ships in the ``autoafids==0.1.4``
wheel. See ``medrl/data/resources/afids/ATTRIBUTION.md``. Credit the AFIDs project wherever
these coordinates are used or redistributed.

The template images are not embedded. :func:`fetch_afids` obtains them once from two pinned
PyPI wheels (``autoafids==0.1.4`` for MNI152NLin2009cAsym T1w/T2w; ``nimare==0.22.1``, MIT, for
MNI152NLin6Asym T1w, its brain mask and the Harvard-Oxford atlas), checks the sha256 of each
wheel and of each extracted file, and stores only the listed files in
``<cache_root()>/afids/v1/``. Once cached, nothing is downloaded again (it works offline).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from medrl.data.cit168 import cit168_label_map_path, cit168_names_path
from medrl.data.datalist import CaseSpec
from medrl.data.wheels import (
    PinnedWheel,
    check_sha256,
    extract_member,
    obtain_wheel,
    sha256_file,
    wheel_dirs,
)
from medrl.errors import DataUnavailableError, InputError
from medrl.io.landmarks import Landmarks, read_landmarks
from medrl.utils.atomic import atomic_dir, atomic_open

__all__ = [
    "AFIDS_CACHE_SUBDIR",
    "AFIDS_TEMPLATES",
    "HARVARD_OXFORD_ATLAS",
    "HARVARD_OXFORD_LICENSE",
    "MANIFEST_NAME",
    "MNI6_BRAIN_MASK",
    "MNI6_T1W",
    "MNI2009C_T1W",
    "MNI2009C_T2W",
    "PINNED_WHEELS",
    "afids_datalist",
    "afids_file",
    "afids_landmarks",
    "afids_landmarks_path",
    "cache_root",
    "fetch_afids",
]

# Cached file names (basenames of the wheel members).
MNI2009C_T1W = "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
MNI2009C_T2W = "tpl-MNI152NLin2009cAsym_res-01_T2w.nii.gz"
MNI6_T1W = "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"
MNI6_BRAIN_MASK = "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"
HARVARD_OXFORD_ATLAS = "HarvardOxford-cort-maxprob-thr25-2mm.nii.gz"
HARVARD_OXFORD_LICENSE = "Harvard-Oxford-LICENSE"

AFIDS_CACHE_SUBDIR = Path("afids") / "v1"
MANIFEST_NAME = "MANIFEST.json"
_MANIFEST_FORMAT = 1

AFIDS_TEMPLATES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym", "MNI152Lin", "MNI305")

# Embedded landmark files, by (template, rater); rater None is the AFIDs-validator set.
_LANDMARK_FILES: dict[tuple[str, str | None], str] = {
    ("MNI152NLin2009cAsym", None): "tpl-MNI152NLin2009cAsym_afids.fcsv",
    ("MNI152NLin2009cAsym", "groundtruth"): (
        "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
    ),
    ("MNI152NLin6Asym", None): "tpl-MNI152NLin6Asym_afids.fcsv",
    ("MNI152Lin", None): "tpl-MNI152Lin_afids.fcsv",  # the SPM12 averages (medrl.data.spm12)
    ("MNI305", None): "tpl-MNI305_afids.fcsv",
}
_RESOURCE_PACKAGE = "medrl.data"
_RESOURCE_FOLDER = ("resources", "afids")


# Module-level so tests can monkeypatch it (keyed by requirement).
PINNED_WHEELS: dict[str, PinnedWheel] = {
    "autoafids==0.1.4": PinnedWheel(
        requirement="autoafids==0.1.4",
        filename="autoafids-0.1.4-py3-none-any.whl",
        sha256="f949e0e1b01a01de122cd23fc8457444d455e50a7482cf4b2440f505778fcdbc",
        members={
            f"autoafids/resources/{MNI2009C_T1W}": (
                "1f27aabea9f7183dc0c69dafa71e1787b921ca778d655d9c1bf302b273d5627a"
            ),
            f"autoafids/resources/{MNI2009C_T2W}": (
                "6e39951e4478ff041f1290d31935dc05aa5425f9fd3f20ed57d4646f0d5be0ff"
            ),
        },
    ),
    "nimare==0.22.1": PinnedWheel(
        requirement="nimare==0.22.1",
        filename="nimare-0.22.1-py3-none-any.whl",
        sha256="16025cbe44c97fb580fe129df230fca62c97c2c6197887abc83b6081552e7bc1",
        members={
            f"nimare/resources/templates/{MNI6_T1W}": (
                "fbb6e77a6b090368db105d1cab2c13abd141815998b85c95a520d09771f0021c"
            ),
            f"nimare/resources/templates/{MNI6_BRAIN_MASK}": (
                "895cc1e3d13fa00eacf1659bea51a10b384d8bc1d2d751f9a1e131509194c9c9"
            ),
            f"nimare/resources/atlases/{HARVARD_OXFORD_ATLAS}": (
                "586d76a7defd278fcea4d83d301994d7e096aa8272d26e3c7539b4f8ebd588c1"
            ),
            f"nimare/resources/atlases/{HARVARD_OXFORD_LICENSE}": (
                "47255107866a4ad2212c6235a6791df754cb25e6fa25c0c1a5821ac15203f9a9"
            ),
        },
    ),
}

# --------------------------------------------------------------------------------------
# cache location and manifest


def cache_root() -> Path:
    """Return the cache folder: $MEDRL_CACHE, else $XDG_CACHE_HOME/medrl, else ~/.cache/medrl."""
    explicit = os.environ.get("MEDRL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "medrl"
    return Path.home() / ".cache" / "medrl"


def _afids_dir(cache: str | Path | None) -> Path:
    root = cache_root() if cache is None else Path(cache).expanduser()
    return root / AFIDS_CACHE_SUBDIR


def _expected_files() -> dict[str, tuple[PinnedWheel, str, str]]:
    """Map cached basename -> (wheel, member path, member sha256), from ``PINNED_WHEELS``."""
    expected: dict[str, tuple[PinnedWheel, str, str]] = {}
    for wheel in PINNED_WHEELS.values():
        for member, sha in wheel.members.items():
            name = member.rsplit("/", 1)[-1]
            if name in expected:
                raise RuntimeError(f"two pinned wheel members share the file name {name!r}")
            expected[name] = (wheel, member, sha.lower())
    return expected


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def _cache_is_complete(folder: Path, verify: bool = False) -> bool:
    """True when ``folder`` has a manifest matching the pinned table and every file it lists.

    Without ``verify`` each file is checked for existence and size (fast); with ``verify``
    its sha256 is recomputed too.
    """
    manifest = _read_manifest(folder)
    if manifest is None:
        return False
    files = manifest["files"]
    for name, (_wheel, _member, sha) in _expected_files().items():
        entry = files.get(name)
        if not isinstance(entry, dict) or str(entry.get("sha256", "")).lower() != sha:
            return False
        path = folder / name
        try:
            if path.stat().st_size != entry.get("size"):
                return False
        except OSError:
            return False
        if verify and sha256_file(path) != sha:
            return False
    return True


def _complete_cache_or_raise(cache: str | Path | None) -> Path:
    folder = _afids_dir(cache)
    if not _cache_is_complete(folder):
        raise DataUnavailableError(
            "the AFIDs template images have not been fetched yet (or the cache is incomplete); "
            "run `medrl data fetch afids` (needs network once), or set MEDRL_CACHE to a folder "
            f"that already holds {AFIDS_CACHE_SUBDIR.as_posix()}/ with its {MANIFEST_NAME}",
            folder,
        )
    return folder


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _scratch_dir(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".download.", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (excluding) ``stop`` while they are empty."""
    current = folder
    while current != stop and stop in current.parents:
        if current.exists():
            try:
                current.rmdir()
            except OSError:
                return
        current = current.parent


def fetch_afids(
    cache: str | Path | None = None,
    quiet: bool = False,
    wheel_dir: str | Path | None = None,
    verify: bool = False,
) -> Path:
    """Make sure the AFIDs template images are cached; return their folder.

    Args:
        cache: cache root (default :func:`cache_root`); files go to ``<cache>/afids/v1/``.
        quiet: no progress messages on stderr.
        wheel_dir: a folder holding already-downloaded pinned wheels (default: the folders in
            $MEDRL_WHEELS); wheels found there are used instead of ``pip download``.
        verify: re-hash the cached files (sha256) instead of only checking their sizes; files
            that fail are fetched again.

    Once the folder is complete (its ``MANIFEST.json`` lists every pinned file with the right
    sha256 and size) nothing is downloaded. Otherwise only the wheels whose files are missing
    are obtained, each wheel and each extracted file is sha256-checked, and the folder is
    replaced as a whole, with the manifest written last. On any failure the cache is left as
    it was.

    Raises:
        DataUnavailableError: a wheel cannot be obtained (no network and no cache), or a wheel
            or extracted file does not match its pinned sha256.
    """
    folder = _afids_dir(cache)
    if _cache_is_complete(folder, verify=verify):
        _say(quiet, f"medrl: AFIDs templates already cached in {folder}")
        return folder

    expected = _expected_files()
    # Files already in the folder (e.g. copied by hand, or a partial earlier fetch) are reused
    # when their sha256 matches: they are never downloaded again.
    reusable = {
        name
        for name, (_wheel, _member, sha) in expected.items()
        if (folder / name).is_file() and sha256_file(folder / name) == sha
    }
    needed_wheels = [
        wheel
        for wheel in PINNED_WHEELS.values()
        if any(member.rsplit("/", 1)[-1] not in reusable for member in wheel.members)
    ]

    root = folder.parent.parent
    root_existed = root.exists()
    try:
        with _scratch_dir(folder.parent) as scratch, atomic_dir(folder) as staging:
            folders = wheel_dirs(wheel_dir)
            hint = (
                "run `medrl data fetch afids` again; or set MEDRL_CACHE to a folder that "
                f"already holds {AFIDS_CACHE_SUBDIR.as_posix()}/"
            )
            wheel_paths = {
                wheel.requirement: obtain_wheel(
                    wheel, folders, scratch, lambda line: _say(quiet, line), hint
                )
                for wheel in needed_wheels
            }
            manifest_files: dict[str, dict[str, Any]] = {}
            for name, (wheel, member, sha) in expected.items():
                target = staging / name
                if name in reusable:
                    shutil.copy2(folder / name, target)
                    check_sha256(target, sha, f"cached file {name}")
                else:
                    _say(quiet, f"medrl: extracting {name}")
                    extract_member(wheel_paths[wheel.requirement], member, sha, target)
                manifest_files[name] = {
                    "sha256": sha,
                    "size": target.stat().st_size,
                    "source": f"{wheel.requirement}:{member}",
                    "wheel_sha256": wheel.sha256.lower(),
                }
            manifest = {
                "format": _MANIFEST_FORMAT,
                "description": "medrl built-in data: AFIDs template images",
                "files": manifest_files,
            }
            with atomic_open(staging / MANIFEST_NAME, "w", encoding="utf-8") as handle:
                json.dump(manifest, handle, indent=2, sort_keys=True)
                handle.write("\n")
            # temp files/folders are private (0600/0700); give the cache the usual modes
            umask = _current_umask()
            for path in staging.iterdir():
                path.chmod(0o666 & ~umask)
            staging.chmod(0o777 & ~umask)
    except BaseException:
        # Leave no empty folders behind that this call created.
        _remove_empty_parents(folder, root if root_existed else root.parent)
        raise
    _say(quiet, f"medrl: AFIDs templates cached in {folder}")
    return folder


# --------------------------------------------------------------------------------------
# access to cached files and embedded landmarks


def afids_file(name: str, cache: str | Path | None = None) -> Path:
    """Return the cached path of one fetched file (e.g. :data:`MNI6_BRAIN_MASK`).

    Raises:
        InputError: ``name`` is not one of the pinned files.
        DataUnavailableError: the files have not been fetched yet.
    """
    known = sorted(_expected_files())
    if name not in known:
        raise InputError(f"unknown AFIDs data file {name!r}; known files: {', '.join(known)}")
    return _complete_cache_or_raise(cache) / name


def afids_landmarks_path(template: str, rater: str | None = None) -> Path:
    """Return a filesystem path to the embedded AFIDs ``.fcsv`` of ``template``.

    Args:
        template: ``"MNI152NLin2009cAsym"`` or ``"MNI152NLin6Asym"``.
        rater: None for the AFIDs-validator set, or ``"groundtruth"`` for the second,
            independent annotation set of MNI152NLin2009cAsym.
    """
    if template not in AFIDS_TEMPLATES:
        raise InputError(
            f"unknown AFIDs template {template!r}; known templates: {', '.join(AFIDS_TEMPLATES)}"
        )
    key = (template, rater)
    if key not in _LANDMARK_FILES:
        raters = sorted(repr(r) for (t, r) in _LANDMARK_FILES if t == template)
        raise InputError(
            f"unknown rater {rater!r} for AFIDs template {template}; known raters: "
            + ", ".join(raters)
        )
    filename = _LANDMARK_FILES[key]
    resource = resources.files(_RESOURCE_PACKAGE).joinpath(*_RESOURCE_FOLDER, filename)
    if isinstance(resource, Path):
        return resource
    # The package is not on a plain filesystem (e.g. zipped): keep a copy in the cache.
    copy = cache_root() / "afids" / "landmarks" / filename
    if not copy.is_file() or copy.read_bytes() != resource.read_bytes():
        with atomic_open(copy, "wb") as handle:
            handle.write(resource.read_bytes())
    return copy


def afids_landmarks(template: str, rater: str | None = None) -> Landmarks:
    """Return the 32 embedded AFIDs of ``template`` (world RAS mm).

    Names are ``"1"`` .. ``"32"`` (the AFIDs numbering); descriptions are the anatomical names
    (``"AC"``, ``"PC"``, ...). ``rater="groundtruth"`` selects the second annotation set of
    MNI152NLin2009cAsym (mean 0.77 mm from the default set: a floor for any method).

    Raises:
        InputError: unknown template or rater; the message lists the known ones.
    """
    return read_landmarks(afids_landmarks_path(template, rater))


def afids_datalist(cache: str | Path | None = None) -> list[CaseSpec]:
    """Return the built-in AFIDs cases (fetched images + embedded landmarks and label map).

    Train: ``MNI152NLin2009cAsym_T1w`` and ``MNI152NLin2009cAsym_T2w``; test:
    ``MNI152NLin6Asym_T1w``. Every case also gets the embedded CIT168 atlas of 32 subcortical
    nuclei (:mod:`medrl.data.cit168`) as its label map, with its names. The atlas was made on
    MNI152NLin2009cAsym; on MNI152NLin6Asym it is carried over by MNI coordinates (both
    templates share MNI space but differ by a few mm), so its boxes there are approximate.

    Raises:
        DataUnavailableError: the images have not been fetched (run ``medrl data fetch afids``).
    """
    folder = _complete_cache_or_raise(cache)
    labels, label_names = cit168_label_map_path(), cit168_names_path()
    return [
        CaseSpec(
            case_id="MNI152NLin2009cAsym_T1w",
            image=folder / MNI2009C_T1W,
            landmarks=afids_landmarks_path("MNI152NLin2009cAsym"),
            split="train",
            labels=labels,
            label_names=label_names,
        ),
        CaseSpec(
            case_id="MNI152NLin2009cAsym_T2w",
            image=folder / MNI2009C_T2W,
            landmarks=afids_landmarks_path("MNI152NLin2009cAsym"),
            split="train",
            labels=labels,
            label_names=label_names,
        ),
        CaseSpec(
            case_id="MNI152NLin6Asym_T1w",
            image=folder / MNI6_T1W,
            landmarks=afids_landmarks_path("MNI152NLin6Asym"),
            split="test",
            labels=labels,
            label_names=label_names,
        ),
    ]
