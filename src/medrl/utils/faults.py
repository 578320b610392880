"""Failpoints: places where a test can make medrl kill itself, to prove nothing is lost.

The fault-injection suite (``tests/test_faults.py``) sets ``MEDRL_FAILPOINTS`` to a comma-separated
list of ``NAME:N`` (or ``NAME:N@RANK`` for one torchrun rank): the N-th time the process passes
the failpoint NAME it sends itself SIGKILL, which no handler can catch, like a machine that
loses power or a scheduler that runs out of patience. Unset (always, outside the tests) a
failpoint costs one dictionary lookup.

Failpoints: ``train-step`` (after an environment step, before learning), ``train-learn``
(after a gradient step), ``atomic-replace`` (a temporary file or folder is fully written and
about to replace its target: every checkpoint, model, prediction, table and summary passes
it).
"""

from __future__ import annotations

import os
import signal

ENV = "MEDRL_FAILPOINTS"
LOG_ENV = "MEDRL_FAILPOINTS_LOG"
"""A file to which every pass of a failpoint appends its name (so a test can count the
moments of a run, then pick some at random)."""

_armed: dict[str, int] | None = None
_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    rank = os.environ.get("RANK", "0")
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rest = item.partition(":")
        count, _, only_rank = rest.partition("@")
        if only_rank and only_rank != rank:
            continue
        armed[name] = int(count or 1)
    return armed


def failpoint(name: str) -> None:
    """Kill this process (SIGKILL) if the failpoint ``name`` is armed for this pass."""
    global _armed
    if _armed is None:
        _armed = _parse(os.environ.get(ENV, ""))
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as handle:
            handle.write(name + "\n")
    if name not in _armed:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
