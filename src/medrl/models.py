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
    return _models_root() / folder


def _models_root() -> Path:
    return Path(str(resources.files("medrl") / "models"))


def shipped_model_dir(name: str) -> Path:
    """A model folder shipped with medrl by its folder name (``builtin:NAME`` in settings,
    e.g. ``builtin:afids``, the default landmark model; the folders of :data:`SHIPPED_MODELS`)."""
    folder = _models_root() / name
    if "/" in name or not name or not (folder / "model.yaml").is_file():
        raise InputError(f"medrl ships no model named {name!r}")
    return folder
