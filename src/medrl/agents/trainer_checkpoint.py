"""Saving and resuming a DQN training run: the trainer's checkpoint and its model folder.

A checkpoint holds everything a run needs to continue the very same sequence as an
uninterrupted one: weights, target network, optimiser, replay, environment state and random
streams. Rank 0's checkpoint folder (:data:`CHECKPOINT_DIR`) is also a loadable model folder;
under ``torchrun`` every other rank keeps its own state beside it (``...-rank<r>``). Folders
are written atomically, so a run killed while saving keeps its previous checkpoint.

:class:`TrainerCheckpoints` is the part of :class:`medrl.agents.dqn.Trainer` that does this;
it reads the trainer's attributes declared below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrl.agents.checkpoint import save_model_files
from medrl.agents.replay import NStepAssembler, PoseReplay
from medrl.config import Config
from medrl.distributed.ddp import DistContext
from medrl.envs.kernel import SearchKernel
from medrl.errors import CheckpointError
from medrl.tasks.base import Task
from medrl.utils.atomic import atomic_dir, atomic_open

__all__ = ["CHECKPOINT_DIR", "STATE_FILE", "TrainerCheckpoints"]

CHECKPOINT_DIR = "checkpoints/latest"
"""Rank 0's checkpoint (a loadable model folder too); rank r > 0 uses ``...-rank<r>``."""
STATE_FILE = "trainer_state.pt"
"""The trainer's state inside a checkpoint folder (beside ``replay.npz``)."""


class TrainerCheckpoints:
    """Model files, checkpoint save and resume of a :class:`~medrl.agents.dqn.Trainer`."""

    config: Config
    run_dir: Path
    command: str
    dist: DistContext
    device: torch.device
    task: Task
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    network: torch.nn.Module
    target: torch.nn.Module
    optimizer: torch.optim.Optimizer
    replay: PoseReplay
    assembler: NStepAssembler
    kernel: SearchKernel
    rng: np.random.Generator
    step: int
    updates: int
    update_credit: float
    history: list[dict[str, float]]
    evaluations: list[dict[str, float]]
    extra_meta: dict[str, Any]

    def model_meta(self) -> dict[str, Any]:
        return {
            "seed": self.config.train.seed,
            "steps": self.step,
            "updates": self.updates,
            "command": self.command,
            **({"processes": self.dist.world_size} if self.dist.active else {}),
            **self.extra_meta,
        }

    def _model_files(self, folder: Path) -> None:
        save_model_files(
            folder,
            self.network,
            self.config,
            self.names,
            self.descriptions,
            self.model_meta(),
            self.task,
        )

    def save_model(self, folder: str | Path) -> None:
        with atomic_dir(folder) as tmp:
            self._model_files(tmp)

    def checkpoint_dir(self) -> Path:
        """This rank's checkpoint folder."""
        suffix = f"-rank{self.dist.rank}" if self.dist.rank > 0 else ""
        return self.run_dir / (CHECKPOINT_DIR + suffix)

    def save_checkpoint(self) -> Path:
        """Every rank writes its own folder (atomically); rank 0's is also a model folder."""
        folder = self.checkpoint_dir()
        kernel = self.kernel
        state = {
            "world_size": self.dist.world_size,
            "rank": self.dist.rank,
            "step": self.step,
            "updates": self.updates,
            "update_credit": self.update_credit,
            "network": self.network.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "kernel": kernel.state_dict(),
            "assembler": self.assembler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "evaluations": self.evaluations,
            "names": self.names,
            "task": self.task.name,
        }
        with atomic_dir(folder) as tmp:
            if self.dist.is_main:
                self._model_files(tmp)
            torch.save(state, tmp / STATE_FILE)
            self.replay.save(tmp / "replay.npz")
        if self.dist.is_main:
            with atomic_open(self.run_dir / "history.json") as handle:
                json.dump(self.history, handle)
            if self.evaluations:
                with atomic_open(self.run_dir / "evaluations.json") as handle:
                    json.dump(self.evaluations, handle)
        return folder

    def load_checkpoint(self) -> bool:
        """Restore the latest checkpoint of this run folder; False if there is none.

        Under torchrun every rank restores its own folder; the ranks must all find one, from
        the same step (a run killed while the ranks were writing them cannot be resumed).
        """
        folder = self.checkpoint_dir()
        state_path = folder / STATE_FILE
        found = state_path.is_file()
        if not self.dist.same_everywhere(int(found)):
            raise CheckpointError(
                f"only some of the {self.dist.world_size} processes find their checkpoint "
                "(checkpoints/latest*); use --restart",
                self.run_dir,
            )
        if not found:
            return False
        failure: CheckpointError | None = None
        try:
            state = self._read_checkpoint(folder, state_path)
        except CheckpointError as exc:
            failure = exc
        # Every rank learns whether any failed, so none is left waiting in a collective call.
        if self.dist.any(failure is not None):
            raise failure or CheckpointError(
                "another process could not resume from its checkpoint; use --restart",
                self.run_dir,
            )
        self.step, self.updates = state["step"], state["updates"]
        self.update_credit = state["update_credit"]
        self.rng.bit_generator.state = state["rng"]
        self.kernel.load_state_dict(state["kernel"])
        self.assembler.load_state_dict(state["assembler"])
        torch.set_rng_state(state["torch_rng"])
        self.history = state["history"]
        self.evaluations = state.get("evaluations", [])
        if not self.dist.same_everywhere(self.step):
            raise CheckpointError(
                "the processes' checkpoints are from different steps (the run was stopped "
                "while writing them); use --restart",
                self.run_dir,
            )
        return True

    def _read_checkpoint(self, folder: Path, state_path: Path) -> dict[str, Any]:
        """Load this rank's checkpoint and check it fits the run (CheckpointError if not)."""
        try:
            state = torch.load(state_path, map_location=self.device, weights_only=False)
            world_size = int(state.get("world_size", 1))
            if world_size != self.dist.world_size:
                raise CheckpointError(
                    f"checkpoint was written by {world_size} process(es), this run has "
                    f"{self.dist.world_size}; resume with as many or use --restart",
                    folder,
                )
            if tuple(state["names"]) != self.names:
                raise CheckpointError("checkpoint was trained on other targets", folder)
            if "kernel_rngs" in state or state.get("task", "landmark") != self.task.name:
                raise CheckpointError(
                    "checkpoint is from another task or an older medrl (before the task "
                    "family); use --restart",
                    folder,
                )
            if len(state["kernel"]["rngs"]) != self.kernel.num_envs:
                raise CheckpointError(
                    f"checkpoint has {len(state['kernel']['rngs'])} environments, the config "
                    f"{self.kernel.num_envs} (train.num_envs); use the run's config or --restart",
                    folder,
                )
            self.network.load_state_dict(state["network"])
            self.target.load_state_dict(state["target"])
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # a resumed run takes agent.lr as set now
                group["lr"] = self.config.agent.lr
            self.replay.load(folder / "replay.npz")
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"cannot resume from this checkpoint (corrupt or from another config): {exc}",
                folder,
            ) from exc
        return state
