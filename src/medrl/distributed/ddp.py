"""Data-parallel training under ``torchrun``: process group, seeds, shards and agreement.

``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) starts one process per GPU or CPU slot. Each process
(rank) runs its own environments on its own share of the training cases, with its own replay
and random streams; after every backward pass the gradients are averaged over the ranks
(one all-reduce of a flat buffer), so every rank takes the same optimiser step and the
networks stay identical. Decisions that change how many collective calls a rank makes (start
learning, stop at the time limit) are agreed on by all ranks, so no rank waits forever.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from medrl.errors import InputError

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``world_size == 1`` is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    collective_device: str = "cpu"
    """Where small tensors for collectives live: nccl reduces CUDA tensors, gloo CPU ones."""

    @property
    def active(self) -> bool:
        """True when collective calls are needed (more than one process)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, the model and shows the progress bar."""
        return self.rank == 0

    # ---------------------------------------------------------------- agreement
    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on at least one rank."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int64, device=self.collective_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def all(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on every rank."""
        return not self.any(not flag)

    def same_everywhere(self, value: int) -> bool:
        """True on every rank if ``value`` is the same integer on all ranks."""
        if not self.active:
            return True
        values = torch.tensor([value, -value], dtype=torch.int64, device=self.collective_device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return int(values[0]) == -int(values[1])

    def barrier(self) -> None:
        if self.active:
            cuda = self.collective_device.startswith("cuda")
            dist.barrier(device_ids=[self.local_rank] if cuda else None)

    # ------------------------------------------------------------------ weights
    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (the same starting network)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (one all-reduce in all).

        Every rank receives the same summed buffer, so after the division the gradients, and
        hence the clipped optimiser steps, are bit-identical on all ranks.
        """
        if not self.active:
            return
        params = [p for p in parameters if p.requires_grad]
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for param in params:
            count = param.grad.numel()
            param.grad.copy_(flat[offset : offset + count].view_as(param.grad))
            offset += count

    def shard(self, count: int) -> list[int]:
        """Indices of the training cases this rank learns from.

        Cases are dealt round-robin (rank r gets r, r + world, ...). With fewer cases than
        ranks every rank keeps all cases; the ranks then differ only in their episodes
        (their own environment seeds), i.e. the data is split by episode instead of by case.
        """
        if count >= self.world_size:
            return list(range(self.rank, count, self.world_size))
        return list(range(count))


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    """True when the launcher's environment variables are set (torchrun sets all five)."""
    return all(name in os.environ for name in _LAUNCH_VARS)


def context_from_env() -> DistContext:
    """The process's place in a torchrun job (read from the environment)."""
    try:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise InputError(
            "distributed training needs RANK, WORLD_SIZE and LOCAL_RANK as integers "
            f"(start it with torchrun): {exc}"
        ) from exc
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"RANK={rank} is not within WORLD_SIZE={world_size}")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def rank_device(device: str, ctx: DistContext) -> str:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    kind = torch.device(device).type
    if kind == "cuda" and ctx.active:
        return f"cuda:{ctx.local_rank}"
    return device


def init_distributed(device: str) -> DistContext:
    """Join the torchrun job (nccl on CUDA, gloo on CPU); a single process if not launched."""
    if not launched_by_torchrun():
        return SINGLE
    ctx = context_from_env()
    cuda = torch.device(device).type == "cuda"
    if not ctx.active:
        return ctx
    if cuda:
        if not torch.cuda.is_available():
            raise InputError(f"train.device={device} but CUDA is not available")
        if ctx.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"process LOCAL_RANK={ctx.local_rank} has no GPU of its own: "
                f"{torch.cuda.device_count()} visible; start at most that many per machine "
                "(--nproc_per_node)"
            )
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return replace(ctx, collective_device=f"cuda:{ctx.local_rank}" if cuda else "cpu")


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
