"""Replay of poses, not patches: an observation is re-rendered from its pose when sampled.

A transition stores the scan, target, level, the recent poses, the recent actions, the
episode's seed and step (which fix its augmentation and noise) and its goal pose: about 70
bytes for a landmark with the default settings, against ~13 kB for a 15^3 float32 patch. The
schema follows the task's pose size. n-step returns are assembled per environment slot before
a transition is stored.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import torch

from medrl.tasks.base import Poses


def _fields(frames: int, history: int, pose_dim: int) -> dict[str, tuple[tuple[int, ...], type]]:
    return {
        "scan": ((), np.int16),
        "target": ((), np.int16),
        "level": ((), np.int8),
        "episode_seed": ((), np.int64),
        "frames": ((frames, pose_dim), np.float32),
        "goal": ((pose_dim,), np.float32),
        "actions": ((history,), np.int8),
        "step": ((), np.int32),
        "action": ((), np.int8),
        "reward": ((), np.float32),
        "discount": ((), np.float32),
        "next_frames": ((frames, pose_dim), np.float32),
        "next_actions": ((history,), np.int8),
        "next_step": ((), np.int32),
    }


class PoseReplay:
    """Uniform replay over pose transitions, in fixed-size NumPy ring buffers."""

    def __init__(self, capacity: int, frames: int, history: int, pose_dim: int = 3) -> None:
        self.capacity = int(capacity)
        self.frames = frames
        self.history = history
        self.data = {
            name: np.zeros((self.capacity, *shape), dtype=dtype)
            for name, (shape, dtype) in _fields(frames, history, pose_dim).items()
        }
        self.size = 0
        self.cursor = 0

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.data.values())

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict[str, np.ndarray]) -> None:
        count = len(batch["action"])
        index = (self.cursor + np.arange(count)) % self.capacity
        for name, array in self.data.items():
            array[index] = batch[name]
        self.cursor = int((self.cursor + count) % self.capacity)
        self.size = int(min(self.size + count, self.capacity))

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index = rng.integers(0, self.size, size=batch_size)
        return {name: array[index] for name, array in self.data.items()}

    def save(self, path: str | Path) -> None:
        """Write to an open-able path (the caller makes it atomic)."""
        with open(path, "wb") as handle:
            np.savez(
                handle,
                size=self.size,
                cursor=self.cursor,
                **{k: v[: self.size] for k, v in self.data.items()},
            )

    def load(self, path: str | Path) -> None:
        with np.load(path) as archive:
            self.size = int(archive["size"])
            self.cursor = int(archive["cursor"])
            for name, array in self.data.items():
                array[: self.size] = archive[name]


def split_poses(batch: dict[str, np.ndarray], device: torch.device | str) -> tuple[Poses, Poses]:
    """The (state, next state) poses of sampled transitions, as tensors."""

    def tensor(name: str) -> torch.Tensor:
        return torch.as_tensor(batch[name].astype(np.int64), device=device)

    common = (tensor("scan"), tensor("target"), tensor("level"))
    seeds = batch["episode_seed"].astype(np.int64)
    goal = torch.as_tensor(batch["goal"], device=device)
    state = Poses(
        *common,
        torch.as_tensor(batch["frames"], device=device),
        tensor("actions"),
        seeds,
        batch["step"].astype(np.int64),
        goal,
    )
    following = Poses(
        *common,
        torch.as_tensor(batch["next_frames"], device=device),
        tensor("next_actions"),
        seeds,
        batch["next_step"].astype(np.int64),
        goal,
    )
    return state, following


class NStepAssembler:
    """Turns per-step (pose, action, reward) of every slot into n-step transitions."""

    def __init__(self, num_envs: int, n_step: int, gamma: float) -> None:
        self.n_step = n_step
        self.gamma = gamma
        self.pending: list[deque] = [deque() for _ in range(num_envs)]

    def state_dict(self) -> list[list[tuple]]:
        return [list(queue) for queue in self.pending]

    def load_state_dict(self, state: list[list[tuple]]) -> None:
        self.pending = [deque(items) for items in state]

    def add(
        self,
        poses: Poses,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_poses: Poses,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> dict[str, np.ndarray] | None:
        """Record one batched step; return the transitions that are complete (or None)."""
        rows = _pose_rows(poses)
        next_rows = _pose_rows(next_poses)
        out: list[dict] = []
        for i, queue in enumerate(self.pending):
            queue.append((rows[i], int(actions[i]), float(rewards[i])))
            done = bool(terminated[i] or truncated[i])
            if len(queue) == self.n_step or done:
                while queue and (len(queue) == self.n_step or done):
                    out.append(self._emit(queue, next_rows[i], bool(terminated[i])))
                    queue.popleft()
        if not out:
            return None
        return {name: np.stack([t[name] for t in out]) for name in out[0]}

    def _emit(self, queue: deque, next_row: dict, terminated: bool) -> dict:
        row, action, _ = queue[0]
        ret = sum(self.gamma**j * r for j, (_, _, r) in enumerate(queue))
        discount = 0.0 if terminated else self.gamma ** len(queue)
        return {
            **row,
            "action": action,
            "reward": ret,
            "discount": discount,
            "next_frames": next_row["frames"],
            "next_actions": next_row["actions"],
            "next_step": next_row["step"],
        }


def _pose_rows(poses: Poses) -> list[dict]:
    scan = poses.scan.cpu().numpy()
    target = poses.target.cpu().numpy()
    level = poses.level.cpu().numpy()
    frames = poses.frames.cpu().numpy()
    actions = poses.actions.cpu().numpy()
    assert poses.goal is not None
    goal = poses.goal.cpu().numpy()
    return [
        {
            "scan": scan[i],
            "target": target[i],
            "level": level[i],
            "episode_seed": poses.episode_seed[i],
            "frames": frames[i],
            "goal": goal[i],
            "actions": actions[i],
            "step": poses.step[i],
        }
        for i in range(len(scan))
    ]
