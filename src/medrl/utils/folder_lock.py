"""One writer per folder: an OS-level lock that dies with the process that holds it.

Every medrl command that writes into a folder (``train --run-dir``, ``evaluate --out``,
``predict --out``) holds an exclusive :func:`fcntl.flock` on ``FOLDER/.medrl.lock`` while it
writes. The kernel releases the lock when the process ends in any way (``kill -9``
included), so a lock never outlives its process; a clean exit also removes the file, and the
file a killed process leaves behind is unlocked and simply reused. A second writer stops at
once with :class:`FolderBusyError`, which names the folder and the holder (host, PID, command, since
when). Readers (``medrl report``, TensorBoard) never take the lock.

``flock`` locks are advisory: they stop other medrl processes, not other programs. On NFS,
Linux emulates them with byte-range locks, which hold across machines when the server
supports them (NFSv4 does).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medrl.errors import MedrlError
from medrl.utils.atomic import remove_stale_temporaries

LOCK_NAME = ".medrl.lock"


class FolderBusyError(MedrlError):
    """Another process is writing into the folder."""


def _holder_text(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["since"])))
        return (
            f"process {info['pid']} on host {info['host']} since {since} "
            f"({info.get('command') or 'medrl'})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are not readable yet)"


def _holder_info(command: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": round(time.time(), 3),
        "command": command or " ".join(sys.argv),
    }


@contextlib.contextmanager
def folder_lock(folder: str | Path, purpose: str, command: str = "") -> Iterator[Path]:
    """Hold the folder's write lock for the block (the folder is created if needed).

    ``purpose`` says what the folder is ("run folder", "output folder") in the error a
    second writer gets. Raises :class:`FolderBusyError` at once, without waiting, when another
    process holds the lock.
    """
    folder = Path(folder)
    lock_path = folder / LOCK_NAME
    fd = _acquire(folder, lock_path, purpose)
    try:
        payload = json.dumps(_holder_info(command)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        # What a killed writer left: ours to remove now (not in a subfolder that another
        # writer holds, such as RUN/evaluation while `medrl evaluate` writes it).
        remove_stale_temporaries(folder, skip_marker=LOCK_NAME)
        yield folder
    finally:
        # Unlinked while still locked: a process that opened the old file before the unlink
        # sees that it is gone (the check in _acquire) and does not count it as the lock.
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(folder: Path, lock_path: Path, purpose: str) -> int:
    """An open, flock-ed descriptor of the folder's current lock file."""
    for _ in range(100):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise MedrlError(f"cannot lock the {purpose}: {exc.strerror}", folder) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusyError(
                f"the {purpose} is being written by {_holder_text(lock_path)}; "
                "wait for it to finish, stop it, or choose another folder",
                folder,
            ) from None
        except OSError as exc:
            os.close(fd)
            raise MedrlError(f"cannot lock the {purpose}: {exc.strerror}", folder) from exc
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as we opened it: take the new one
    raise MedrlError(f"cannot lock the {purpose}: its lock file keeps changing", folder)
