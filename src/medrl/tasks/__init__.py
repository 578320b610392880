"""The search-agent family: one file per kind of agent, on the protocol of :mod:`.base`."""

from __future__ import annotations

from typing import Any

from medrl.config import Config
from medrl.errors import InputError
from medrl.tasks.base import Poses, TargetTable, Task
from medrl.tasks.box import BoxTask
from medrl.tasks.landmark import LandmarkTask
from medrl.tasks.plane import PlaneTask
from medrl.tasks.rigid import RigidTask
from medrl.tasks.slice import SliceTask

TASKS: dict[str, type[Task]] = {
    "landmark": LandmarkTask,
    "box": BoxTask,
    "plane": PlaneTask,
    "slice": SliceTask,
    "rigid": RigidTask,
}

__all__ = [
    "TASKS",
    "BoxTask",
    "LandmarkTask",
    "PlaneTask",
    "Poses",
    "RigidTask",
    "SliceTask",
    "TargetTable",
    "Task",
    "make_task",
]


def make_task(config: Config, state: dict[str, Any] | None = None) -> Task:
    """The task named by ``config.task.kind``."""
    kind = config.task.kind
    if kind not in TASKS:
        raise InputError(f"unknown task.kind {kind!r} (known: {', '.join(TASKS)})")
    return TASKS[kind](config, state)
