"""One writer per folder (medrl.utils.folder_lock), across real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medrl.errors import MedrlError
from medrl.utils.folder_lock import LOCK_NAME, FolderBusyError, folder_lock

SRC = Path(__file__).resolve().parents[1] / "src"


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it until it is killed."""
    code = textwrap.dedent(
        f"""
        import time
        from medrl.utils.folder_lock import folder_lock
        with folder_lock({str(folder)!r}, "run folder", "holder-for-test"):
            print("locked", flush=True)
            time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_stops_at_once_and_is_told_who_holds_the_folder(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "run")
    try:
        started = time.monotonic()
        with pytest.raises(FolderBusyError) as caught, folder_lock(tmp_path / "run", "run folder"):
            pytest.fail("the lock was taken twice")
        assert time.monotonic() - started < 2.0  # no waiting
        message = str(caught.value)
        assert str(tmp_path / "run") in message
        assert f"process {holder.pid}" in message and socket.gethostname() in message
        assert "holder-for-test" in message and "since" in message
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the file stays, the lock does not
    with folder_lock(tmp_path / "run", "run folder", "next"):
        assert "next" in (tmp_path / "run" / LOCK_NAME).read_text()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # a clean exit removes it


def test_the_lock_holds_within_one_process_and_is_released_on_error(tmp_path: Path) -> None:
    busy = pytest.raises(FolderBusyError, match="output folder is being written by")
    with folder_lock(tmp_path, "output folder"), busy, folder_lock(tmp_path, "output folder"):
        pytest.fail("the lock was taken twice")
    with pytest.raises(RuntimeError), folder_lock(tmp_path, "output folder"):
        raise RuntimeError("boom")
    with folder_lock(tmp_path, "output folder"):  # released by the error above
        pass
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    refused = pytest.raises(MedrlError, match="cannot lock the run folder")
    with refused as caught, folder_lock(blocker / "run", "run folder"):
        pytest.fail("locked a folder inside a file")
    assert str(blocker / "run") in str(caught.value)


def test_the_next_writer_removes_leftover_temporaries_but_not_in_a_held_subfolder(
    tmp_path: Path,
) -> None:
    from medrl.utils.atomic import TEMP_PREFIX

    run = tmp_path / "run"
    (run / "checkpoints" / f"{TEMP_PREFIX}latest.abc").mkdir(parents=True)
    (run / f"{TEMP_PREFIX}history.json.x.json").write_text("{")
    (run / "history.json").write_text("{}")
    busy = run / "evaluation"
    holder = hold_lock(busy)
    (busy / f"{TEMP_PREFIX}summary.json.y.json").write_text("in flight")
    try:
        with folder_lock(run, "run folder"):
            names = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    finally:
        holder.kill()
        holder.wait()
    assert names == sorted(
        [
            "checkpoints",
            "evaluation",
            "evaluation/.medrl-tmp.summary.json.y.json",
            f"evaluation/{LOCK_NAME}",
            "history.json",
            LOCK_NAME,
        ]
    )
