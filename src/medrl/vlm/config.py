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

PRESETS = ("tiny-cpu", "small-gpu", "qwen2.5-vl-3b", "grounding-cpu", "marked-cpu")
NUM_KEYS = ("num_train", "num_val", "num_test")
"""``data`` keys that size the splits (the rest of the section is the task config)."""
SECTIONS = ("model", "data", "sft", "grpo", "evaluate", "threads")
# What a config file must hold (the commands read these without defaults); every other key
# has a default. A file is checked as a whole: it is not merged over a preset.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("init",),
    "data": (),
    "sft": ("epochs", "learning_rate", "batch_size", "max_length"),
    "grpo": (
        "max_steps",
        "learning_rate",
        "prompts_per_step",
        "num_generations",
        "beta",
        "loss_type",
        "epsilon",
        "epsilon_high",
        "scale_rewards",
        "num_iterations",
        "max_completion_length",
        "temperature",
        "top_p",
        "top_k",
        "mask_truncated_completions",
        "reward_weights",
    ),
    "evaluate": (),
}


def preset_path(name: str) -> Path:
    return Path(str(resources.files("medrl") / "configs" / "vlm" / f"{name}.yaml"))


def load_vlm_config(value: str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """A preset name (``tiny-cpu``, ``qwen2.5-vl-3b``) or YAML path, with ``a.b=value`` overrides.

    A config file must have the sections and keys of :data:`REQUIRED_KEYS` (copy a preset
    from ``src/medrl/configs/vlm/`` to start one); it is not merged over a preset.

    Raises:
        InputError: unknown preset, unreadable YAML, a missing or unknown section, a missing
            required key, unknown section or key in an override.
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
    _check_required(config, path)
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
        known = parts[-1] in node or parts[0] == "model" or _optional(parts)
        if not isinstance(node, dict) or not known:
            raise InputError(f"unknown config key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    config["source"] = str(path)
    config["overrides"] = list(overrides or [])
    return config


OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "sft": (
        "warmup_ratio", "gradient_accumulation_steps", "logging_steps", "lr_scheduler",
        "max_steps", "save_steps", "curriculum", "curriculum_epochs", "train_items",
    ),
    "grpo": ("diagnostics", "train_items", "save_steps", "use_vllm", "vllm_mode",
             "log_completions"),
    "evaluate": ("batch_size", "max_new_tokens", "val_every_steps", "val_items"),
}  # fmt: skip
"""Keys with a default that ``--set`` may add to a config file that lacks them (every
``data`` key of :class:`~medrl.vlm.tasks.TaskConfig` and ``data.num_*`` too)."""


def _optional(parts: list[str]) -> bool:
    if len(parts) != 2:
        return False
    section, key = parts
    if section == "data":
        from dataclasses import fields

        from medrl.vlm.tasks import TaskConfig

        return key in NUM_KEYS or key in {f.name for f in fields(TaskConfig)}
    return key in OPTIONAL_KEYS.get(section, ())


def _check_required(config: dict[str, Any], path: Path) -> None:
    missing_sections = [name for name in REQUIRED_KEYS if name not in config]
    if missing_sections:
        raise InputError(
            f"vlm config lacks the sections {missing_sections}; a config file needs "
            f"{list(REQUIRED_KEYS)} (copy a preset from src/medrl/configs/vlm/)",
            path,
        )
    for name, keys in REQUIRED_KEYS.items():
        section = config[name]
        if section is None and not keys:
            config[name] = {}
            continue
        if not isinstance(section, dict):
            raise InputError(f"section {name!r} of a vlm config must be a mapping", path)
        missing = [f"{name}.{key}" for key in keys if key not in section]
        if missing:
            raise InputError(f"vlm config lacks the keys {missing}", path)


def task_config(config: dict[str, Any]) -> TaskConfig:
    """The :class:`TaskConfig` of a config's ``data`` section (sizes excluded).

    Raises:
        InputError: naming the config file (and the ``--set`` overrides) for an unknown key or
            value in the section: box format, image size or aspect ratio, question types.
    """
    from medrl.vlm.tasks import TaskConfig

    data = {k: v for k, v in config.get("data", {}).items() if k not in NUM_KEYS}
    try:
        return TaskConfig(**data)
    except (TypeError, ValueError, InputError) as exc:
        overrides = config.get("overrides") or []
        where = f" (with --set {' '.join(overrides)})" if overrides else ""
        problem = exc.problem if isinstance(exc, InputError) else str(exc)
        raise InputError(f"bad data section{where}: {problem}", config.get("source")) from exc


def decoding_settings(config: dict[str, Any]) -> tuple[int, int]:
    """``(max_new_tokens, batch_size)`` of greedy decoding, from the ``evaluate`` section
    (defaults 40 and 16): the same for test evaluation and for validation during training."""
    evaluation = config.get("evaluate") or {}
    return int(evaluation.get("max_new_tokens", 40)), int(evaluation.get("batch_size", 16))
