"""The models shipped with medrl, one per task (a leaf module: imports nothing heavy)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from medrl.errors import InputError

SHIPPED_MODELS = {
    "landmark": "afids",
    "box": "cit168",
    "plane": "planes",
    "slice": "slices",
    "rigid": "rigid",
}
"""Task -> folder under ``medrl/models/``."""


def default_model_dir(task: str = "landmark") -> Path:
    """The model shipped with medrl for a task."""
    folder = SHIPPED_MODELS.get(task)
    if folder is None:
        raise InputError(
            f"medrl ships no model for task {task!r} (known: {', '.join(SHIPPED_MODELS)})"
        )
    return Path(str(resources.files("medrl") / "models" / folder))
