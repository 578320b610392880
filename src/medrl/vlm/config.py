"""The ``medrl vlm`` presets: nested YAML sections (model, data, sft, grpo, evaluate)."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medrl.errors import InputError

if TYPE_CHECKING:
    from medrl.vlm.tasks import TaskConfig

PRESETS = ("tiny-cpu", "small-gpu", "qwen2.5-vl-3b")
SECTIONS = ("model", "data", "sft", "grpo", "evaluate", "threads")


def preset_path(name: str) -> Path:
    return Path(str(resources.files("medrl") / "configs" / "vlm" / f"{name}.yaml"))


def load_vlm_config(value: str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """A preset name (``tiny-cpu``, ``qwen2.5-vl-3b``) or YAML path, with ``a.b=value`` overrides.

    Raises:
        InputError: unknown preset, unreadable YAML, unknown section or key in an override.
    """
    value = value or "tiny-cpu"
    path = Path(value)
    if not path.is_file():
        if value not in PRESETS:
            raise InputError(f"no config file or vlm preset named {value!r} (presets: {PRESETS})")
        path = preset_path(value)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read vlm config: {exc}", path) from exc
    if not isinstance(config, dict) or set(config) - set(SECTIONS):
        raise InputError(f"a vlm config has the sections {SECTIONS}", path)
    config = copy.deepcopy(config)
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = config
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise InputError(f"unknown config key {key!r}")
            node = node[part]
        if not isinstance(node, dict) or (parts[-1] not in node and parts[0] != "model"):
            raise InputError(f"unknown config key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    config["source"] = str(path)
    return config


def task_config(config: dict[str, Any]) -> TaskConfig:
    """The :class:`TaskConfig` of a config's ``data`` section (sizes excluded)."""
    from medrl.vlm.tasks import TaskConfig

    data = {k: v for k, v in config.get("data", {}).items() if k not in ("num_train", "num_test")}
    try:
        return TaskConfig(**data)
    except TypeError as exc:
        raise InputError(f"bad data section: {exc}") from exc
