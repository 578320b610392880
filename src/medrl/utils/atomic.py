"""Atomic file output: write to a temporary file beside the target, then rename.

Temporary names start with :data:`TEMP_PREFIX`. A process killed mid-write (``kill -9``, power
loss) leaves such a temporary behind but never a partial file under the final name; the next
writer of the folder removes the leftovers once it holds the folder's lock
(:func:`remove_stale_temporaries`, called by :func:`medrl.utils.folder_lock.folder_lock`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medrl.errors import MedrlError
from medrl.utils.faults import failpoint

TEMP_PREFIX = ".medrl-tmp."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path``.

    If the block raises, the temporary file is removed and ``path`` is left untouched.
    Works for files written by third-party libraries (SimpleITK, safetensors) that want a path.
    """
    target = Path(path)
    suffix = "".join(target.suffixes) or ".tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{target.name}.", suffix=suffix, dir=target.parent
        )
    except OSError as exc:
        _raise_write_error(exc, target)
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp
        failpoint("atomic-replace")
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_write_error(exc, target)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces the folder ``path`` as a whole."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent))
    except OSError as exc:
        _raise_write_error(exc, target)
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        failpoint("atomic-replace")
        if target.exists():
            old = target.with_name(f"{TEMP_PREFIX}{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_write_error(exc, target)
        raise


def _write_failure(exc: BaseException) -> str | None:
    """What went wrong, if ``exc`` is a failed write: an OSError (full disk, file-size limit,
    read-only folder), also when a third-party writer (torch, safetensors) wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    wrapped = re.search(r"(?:I/O error|IoError)\W+(.*?)\s*\(os error \d+\)", text)
    if wrapped:
        return wrapped.group(1)
    if isinstance(exc, RuntimeError) and "write" in text:
        return text
    return None


def _raise_write_error(exc: BaseException, target: Path) -> None:
    """A failed write as a user error that names the file."""
    if isinstance(exc, MedrlError):
        return
    detail = _write_failure(exc)
    if detail is not None:
        raise MedrlError(
            f"cannot write ({detail}); the earlier version, if any, is left as it was", target
        ) from exc


def remove_stale_temporaries(folder: str | Path, skip_marker: str = "") -> list[Path]:
    """Remove what killed writers left in ``folder`` (at any depth): the temporaries of
    :func:`atomic_path` and :func:`atomic_dir`. Only safe while holding the folder's lock;
    subfolders holding a file named ``skip_marker`` (another writer's lock) are left alone."""
    removed = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if skip_marker and here != Path(folder) and skip_marker in files:
            dirs[:] = []
            continue
        for name in [d for d in dirs if d.startswith(TEMP_PREFIX)]:
            shutil.rmtree(here / name, ignore_errors=True)
            removed.append(here / name)
        dirs[:] = [d for d in dirs if not d.startswith(TEMP_PREFIX)]
        for name in files:
            if name.startswith(TEMP_PREFIX):
                (here / name).unlink(missing_ok=True)
                removed.append(here / name)
    return removed
