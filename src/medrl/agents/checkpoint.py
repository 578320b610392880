"""Model folders (weights as safetensors + YAML) and resumable training checkpoints.

A model folder holds ``model.safetensors`` and ``model.yaml`` (format version, medrl version,
the full config, the landmark names, and how it was trained). Everything is written to a
temporary folder first and renamed, so a killed run never leaves a half-written model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

import medrl
from medrl.agents.networks import QNetwork
from medrl.config import Config
from medrl.envs.landmark import NUM_ACTIONS
from medrl.errors import CheckpointError, InputError

MODEL_FORMAT = "medrl-landmark-dqn"
MODEL_FORMAT_VERSION = 1


@dataclass
class LandmarkModel:
    """A trained Q-network with everything needed to run a search with it."""

    network: QNetwork
    config: Config
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    meta: dict[str, Any]


def build_network(config: Config, num_landmarks: int) -> QNetwork:
    return QNetwork(
        config.agent,
        patch_size=config.env.patch_size,
        frames=config.env.frames,
        num_landmarks=num_landmarks,
        num_levels=len(config.env.levels),
        action_history=config.env.action_history,
        num_actions=NUM_ACTIONS,
    )


def save_model_files(
    folder: Path,
    network: QNetwork,
    config: Config,
    names: tuple[str, ...],
    descriptions: tuple[str, ...],
    meta: dict[str, Any],
) -> None:
    """Write model.safetensors and model.yaml into ``folder`` (an already-temporary folder)."""
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    header = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "medrl_version": medrl.__version__,
        "landmarks": {"names": list(names), "descriptions": list(descriptions)},
        "training": meta,
        "config": config.to_dict(),
    }
    with open(folder / "model.yaml", "w") as handle:
        yaml.safe_dump(header, handle, sort_keys=False)


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> LandmarkModel:
    """Load a model folder; a clear CheckpointError for anything missing or incompatible."""
    folder = Path(folder)
    header_path = folder / "model.yaml"
    weights_path = folder / "model.safetensors"
    if not folder.is_dir():
        raise CheckpointError("model folder does not exist", folder)
    for path in (header_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"missing {path.name} in the model folder", folder)
    try:
        header = yaml.safe_load(header_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"model.yaml is not valid YAML: {exc}", header_path) from exc
    if not isinstance(header, dict) or header.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"not a {MODEL_FORMAT} model (format field)", header_path)
    version = header.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"model format version {version} is not supported by medrl {medrl.__version__} "
            f"(expects {MODEL_FORMAT_VERSION}); retrain or use a matching medrl version",
            header_path,
        )
    try:
        config = Config.from_dict(header["config"], str(header_path))
        names = tuple(str(n) for n in header["landmarks"]["names"])
        descriptions = tuple(str(d) for d in header["landmarks"].get("descriptions", []))
    except (KeyError, TypeError, InputError) as exc:
        raise CheckpointError(f"model.yaml is incomplete or invalid: {exc}", header_path) from exc
    network = build_network(config, len(names))
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
    return LandmarkModel(network, config, names, descriptions, header.get("training", {}))


def init_network_from(network: QNetwork, folder: str | Path, names: tuple[str, ...]) -> None:
    """Copy a model folder's weights into ``network`` (fine-tuning); ``default``: shipped model.

    The model must know the same landmarks, in the same order, and describe the same network
    (channels, patch, levels, history); anything else is a CheckpointError naming the folder.
    """
    if str(folder) == "default":
        from medrl.predict import default_model_dir

        folder = default_model_dir()
    model = load_model(folder)
    if tuple(model.names) != tuple(names):
        raise CheckpointError(
            f"train.init_from: the model's landmarks {list(model.names)[:4]}... differ from "
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
