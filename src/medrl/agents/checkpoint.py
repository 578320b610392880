"""Model folders (weights as safetensors + YAML): any task of the family.

A model folder holds ``model.safetensors`` and ``model.yaml``: format and version, medrl
version, the task (its kind and the state its search needs), the target names, the full
config and how it was trained. Everything is written to a temporary folder first and renamed,
so a killed run never leaves a half-written model. Format 1 (``medrl-landmark-dqn``, the
landmark agent before the task family) is read as a landmark model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

import medrl
from medrl.agents.networks import LevelQNetworks, QFunction, QNetwork
from medrl.config import Config
from medrl.errors import CheckpointError, InputError
from medrl.models import default_model_dir
from medrl.supervised.detector_set import Detector
from medrl.tasks import Task, make_task
from medrl.utils.yaml_io import safe_load

MODEL_FORMAT = "medrl-dqn"
MODEL_FORMAT_VERSION = 2
_V1_FORMAT = "medrl-landmark-dqn"


@dataclass
class Model:
    """A trained Q-network with everything needed to run a search with it."""

    network: QFunction
    config: Config
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    meta: dict[str, Any]
    task: Task = None  # type: ignore[assignment]  # default: the config's task, no state
    detector: Detector | None = None
    """The supervised detector the folder carries (``MODEL/detector``), for
    ``search.detector_weight`` (:mod:`medrl.supervised.ensemble`)."""

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = make_task(self.config)

    @property
    def kind(self) -> str:
        return self.task.name


LandmarkModel = Model  # the name before the task family


def build_network(config: Config, num_targets: int, task: Task | None = None) -> QFunction:
    """The Q-network of ``config``: one for all levels, or one per level
    (``agent.level_networks``)."""
    task = task or make_task(config)
    shape = {
        "config": config.agent,
        "patch_size": config.env.patch_size,
        "frames": config.env.frames * task.num_channels,
        "num_targets": num_targets,
        "action_history": config.env.action_history,
        "num_actions": task.num_actions,
        "pose_features": task.pose_features,
    }
    if config.agent.level_networks:
        return LevelQNetworks(num_levels=len(config.env.levels), **shape)
    return QNetwork(num_levels=len(config.env.levels), **shape)  # type: ignore[arg-type]


def save_model_files(
    folder: Path,
    network: QFunction,
    config: Config,
    names: tuple[str, ...],
    descriptions: tuple[str, ...],
    meta: dict[str, Any],
    task: Task | None = None,
) -> None:
    """Write model.safetensors and model.yaml into ``folder`` (an already-temporary folder)."""
    task = task or make_task(config)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    header = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "medrl_version": medrl.__version__,
        "task": {"kind": task.name, "state": task.state_dict()},
        "targets": {"names": list(names), "descriptions": list(descriptions)},
        "training": meta,
        "config": config.to_dict(),
    }
    with open(folder / "model.yaml", "w") as handle:
        yaml.safe_dump(header, handle, sort_keys=False)


def _read_header(header_path: Path) -> dict[str, Any]:
    try:
        header = safe_load(header_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"model.yaml is not valid YAML: {exc}", header_path) from exc
    if not isinstance(header, dict) or header.get("format") not in (MODEL_FORMAT, _V1_FORMAT):
        raise CheckpointError(f"not a {MODEL_FORMAT} model (format field)", header_path)
    version = header.get("format_version")
    expected = 1 if header["format"] == _V1_FORMAT else MODEL_FORMAT_VERSION
    if version != expected:
        raise CheckpointError(
            f"model format version {version} is not supported by medrl {medrl.__version__} "
            f"(expects {expected}); retrain or use a matching medrl version",
            header_path,
        )
    return header


def load_model(
    folder: str | Path, device: torch.device | str = "cpu", task: str | None = None
) -> Model:
    """Load a model folder; a clear CheckpointError for anything missing or incompatible.

    ``task``: the task the caller expects (``medrl predict --task box``); a model of another
    task is an InputError naming the folder.
    """
    folder = Path(folder)
    header_path = folder / "model.yaml"
    weights_path = folder / "model.safetensors"
    if not folder.is_dir():
        raise CheckpointError("model folder does not exist", folder)
    for path in (header_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"missing {path.name} in the model folder", folder)
    header = _read_header(header_path)
    try:
        config = Config.from_dict(header["config"], str(header_path))
        if header["format"] == _V1_FORMAT:
            targets, task_header = header["landmarks"], {"kind": "landmark", "state": {}}
        else:
            targets, task_header = header["targets"], header["task"]
        names = tuple(str(n) for n in targets["names"])
        descriptions = tuple(str(d) for d in targets.get("descriptions", []))
        kind = str(task_header["kind"])
        if config.task.kind != kind:
            config = replace(config, task=replace(config.task, kind=kind))
        model_task = make_task(config, dict(task_header.get("state") or {}))
    except (KeyError, TypeError, InputError) as exc:
        raise CheckpointError(f"model.yaml is incomplete or invalid: {exc}", header_path) from exc
    if task is not None and task != model_task.name:
        raise InputError(
            f"this is a {model_task.name} model, not a {task} model (--task {task}); "
            f"use --task {model_task.name} or a {task} model",
            folder,
        )
    network = build_network(config, len(names), model_task)
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"cannot read weights: {exc}", weights_path) from exc
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights do not match the network described in model.yaml: {exc}", weights_path
        ) from exc
    network.to(device).eval()
    from medrl.supervised.ensemble import model_detector

    detector = model_detector(folder, names, device)
    if detector is None and config.search.detector_weight > 0:
        raise CheckpointError(
            f"search.detector_weight is {config.search.detector_weight:g}, but the folder "
            "carries no detector (python -m medrl.supervised.ensemble attaches one)",
            header_path,
        )
    meta = header.get("training", {})
    return Model(network, config, names, descriptions, meta, model_task, detector)


def with_overrides(model: Model, overrides: list[str], source: str = "override") -> Model:
    """``model`` with ``--set``-style overrides of its search and task settings; the task is
    made again from the new config, keeping its learned state (priors, reference layout)."""
    if not overrides:
        return model
    config = model.config.with_overrides(overrides, source)
    return replace(model, config=config, task=make_task(config, model.task.state_dict()))


def init_network_from(network: QFunction, folder: str | Path, names: tuple[str, ...]) -> None:
    """Copy a model folder's weights into ``network`` (fine-tuning); ``default``: shipped model.

    The model must know the same targets, in the same order, and describe the same network
    (channels, patch, levels, history); anything else is a CheckpointError naming the folder.
    """
    if str(folder) == "default":
        folder = default_model_dir()
    model = load_model(folder)
    if tuple(model.names) != tuple(names):
        raise CheckpointError(
            f"train.init_from: the model's targets {list(model.names)[:4]}... differ from "
            f"this run's {list(names)[:4]}... (names and order must match)",
            folder,
        )
    try:
        network.load_state_dict(model.network.state_dict())
    except RuntimeError as exc:
        raise CheckpointError(
            f"train.init_from: the model's network differs from this run's (compare agent.* "
            f"and env.* with its model.yaml): {exc}",
            folder,
        ) from exc


__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "LandmarkModel",
    "Model",
    "build_network",
    "init_network_from",
    "load_model",
    "save_model_files",
    "with_overrides",
]
