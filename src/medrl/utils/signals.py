"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (schedulers, ``kill``) as users expect them.

* Everywhere, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main
  thread, so ``medrl predict`` and ``medrl evaluate`` stop the way Ctrl-C stops them: the
  output being written is dropped (writes are atomic), the summary of what was done is
  written, and the exit code is 143 (130 for Ctrl-C).
* While training, both signals only set a flag (:func:`deferred_stop`); the trainer stops at
  the end of the current step, writes a checkpoint and raises :class:`StopRequested`, so a
  stop never lands between a gradient step and the replay write that belongs to it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM was received."""


class StopRequested(Exception):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        super().__init__(message)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def install_terminate_handler() -> None:
    """Make SIGTERM raise :class:`Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def deferred_stop() -> Iterator[Callable[[], int | None]]:
    """Within the block SIGINT and SIGTERM are recorded, not raised; yields a function that
    returns the first signal received (None if none). The earlier handlers come back after."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def record(signum: int, frame: FrameType | None) -> None:
        if received:  # a second Ctrl-C: stop now, without waiting for the step to end
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        received.append(signum)

    earlier = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, handler in earlier.items():
            signal.signal(s, handler)
