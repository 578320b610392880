"""Shared fixtures: the built-in data, fetched once per test session whatever the cache holds."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def _uncaptured(request: pytest.FixtureRequest) -> Iterator[None]:
    """Let messages reach the terminal while pytest captures the tests' output."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    disabled = getattr(capture, "global_and_fixture_disabled", None)
    with disabled() if disabled is not None else contextlib.nullcontext():
        yield


@pytest.fixture(scope="session")
def builtin_data(request: pytest.FixtureRequest) -> Path:
    """The built-in AFIDs templates (``builtin:afids``): their cached folder ``.../afids/v1``.

    Calls :func:`medrl.data.builtin.fetch_afids` once per session, in the cache the code under
    test reads (``$MEDRL_CACHE``, else ``~/.cache/medrl``): nothing is downloaded when it is
    already complete, else the two pinned PyPI wheels (about 42 MB) are downloaded with pip, or
    taken from ``$MEDRL_WHEELS``. A test that needs the data fails (never skips) when they cannot
    be obtained; pytest reports the error once per test without trying again.
    """
    from medrl.data.builtin import cache_root, fetch_afids
    from medrl.errors import DataUnavailableError

    started = time.perf_counter()
    with _uncaptured(request):
        print(
            f"\nmedrl tests: fetching the built-in AFIDs templates into {cache_root()} "
            "(pinned PyPI wheels, sha256-checked; nothing is downloaded when cached) ...",
            file=sys.stderr,
            flush=True,
        )
    try:
        folder = fetch_afids(quiet=True)
    except DataUnavailableError as exc:
        problem = str(exc)
    else:
        problem = None
    if problem is not None:  # outside the except block: one message, no chained traceback
        pytest.fail(
            "the tests need the built-in AFIDs templates and they could not be fetched "
            f"(needs the package index once, or MEDRL_WHEELS / MEDRL_CACHE): {problem}",
            pytrace=False,
        )
    with _uncaptured(request):
        print(
            f"medrl tests: built-in AFIDs templates ready in {folder} "
            f"({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return folder


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (restored after): tiny tensors run faster so."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
