"""Errors that medrl reports to users: each names the file (if any) and the problem."""

from __future__ import annotations

from pathlib import Path


class MedrlError(Exception):
    """Base class for errors caused by user input; the CLI prints them and exits non-zero."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(MedrlError):
    """A file the user supplied is missing, corrupt, unsupported or inconsistent."""


class DataUnavailableError(MedrlError):
    """Built-in data is neither cached nor downloadable."""


class CheckpointError(MedrlError):
    """A model checkpoint is missing, corrupt or from an incompatible version."""
