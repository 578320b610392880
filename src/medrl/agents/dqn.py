"""DQN training loop: double Q-learning, dueling head, n-step returns, target network.

Read top to bottom: collect one batched step from the kernel (epsilon-greedy), assemble
n-step transitions into the pose replay, and every so often sample poses, re-render their
observations and take a gradient step on the Huber loss against the (double) target. One
seed drives the episodes, exploration, replay sampling and initialisation. Checkpoints hold
everything (weights, optimiser, replay, environment state, random streams), so a resumed run
continues the very same sequence as an uninterrupted one.

Under ``torchrun`` each process (rank) runs this same loop on its share of the cases with
its own environments, replay and random streams; :mod:`medrl.distributed.ddp` averages the
gradients over the ranks and makes them agree on when to start learning and when to stop.
Rank 0 writes the logs and the shared checkpoint; every other rank checkpoints its own state
beside it (``checkpoints/latest-rank<r>``).
"""

from __future__ import annotations

import copy
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medrl.agents.checkpoint import build_network, init_network_from
from medrl.agents.losses import (
    all_actions_loss,
    check_all_actions_supported,
    landmark_all_actions_loss,
    sampled_loss,
)
from medrl.agents.replay import NStepAssembler, PoseReplay, split_poses
from medrl.agents.trainer_checkpoint import TrainerCheckpoints
from medrl.config import Config, save_config
from medrl.data.augment import AugmentParams
from medrl.data.sources import load_split
from medrl.data.tissue import with_tissue_siblings
from medrl.distributed.ddp import SINGLE, DistContext, rank_device
from medrl.envs.kernel import SearchKernel, render_observation
from medrl.envs.pyramid import ScanPyramid, build_pyramid, case_pyramids, with_siblings_of
from medrl.errors import InputError
from medrl.tasks import LandmarkTask, TargetTable, make_task
from medrl.utils.faults import failpoint
from medrl.utils.signals import StopRequested, deferred_stop


def epsilon_at(config: Config, step: int) -> float:
    agent = config.agent
    horizon = max(1.0, agent.eps_fraction * config.train.total_steps)
    frac = min(1.0, step / horizon)
    return agent.eps_start + frac * (agent.eps_end - agent.eps_start)


class Trainer(TrainerCheckpoints):
    """Owns the environment, networks, replay and random streams of one training run.

    The task (``config.task.kind``) decides the poses, actions and observations; the loop
    below is the same for every task. ``scans`` with ``targets`` (landmarks: per-scan (L, 3)
    arrays) or ``table`` skip loading the datalist (tests, benchmarks).
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        scans: list[ScanPyramid] | None = None,
        targets: list[np.ndarray] | None = None,
        names: tuple[str, ...] = (),
        descriptions: tuple[str, ...] = (),
        command: str = "",
        dist: DistContext = SINGLE,
        table: TargetTable | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.command = command
        self.dist = dist
        train = config.train
        self.device = torch.device(rank_device(train.device, dist))
        if train.threads > 0:
            torch.set_num_threads(train.threads)
        _seed_everything(train.seed)
        self.task = make_task(config)
        if scans is None:
            cases = self.task.pair_cases(load_split(train.datalist, "train"))
            full = self.task.target_table(cases, train.landmarks)
            shard = dist.shard(len(cases))
            extra = [full.extra[i] for i in shard] if full.extra else []
            table = TargetTable(
                full.names, full.descriptions, [full.poses[i] for i in shard], extra
            )
            spacings = [lv.spacing_mm for lv in config.env.levels]
            # the shard's cases and their siblings (which may be dealt to other processes)
            held = with_siblings_of(cases, shard)
            held_cases = [cases[i] for i in held]
            scans = case_pyramids(held_cases, spacings, self.device)
            if config.augment.tissue_maps:
                scans = with_tissue_siblings(
                    scans,
                    held_cases,
                    lambda volume: build_pyramid(volume, spacings, self.device, normalise=False),
                )
            scans = [scans[held.index(i)] for i in shard]
        elif table is None:
            assert targets is not None
            names = names or tuple(f"L{i}" for i in range(len(targets[0])))
            table = TargetTable(tuple(names), tuple(descriptions or names), list(targets))
        assert table is not None
        self.scans, self.table = scans, table
        self.task.fit(scans, table)
        self.targets_ras = torch.as_tensor(np.stack(table.poses), dtype=torch.float32).to(
            self.device
        )
        if config.agent.backup not in ("sampled", "all_actions"):
            raise InputError(
                f"agent.backup must be sampled or all_actions, not {config.agent.backup!r}"
            )
        if config.agent.backup == "all_actions":
            check_all_actions_supported(config)
        self.names, self.descriptions = table.names, table.descriptions
        # Rank r's slot i behaves like environment seed + r * num_envs + i: the ranks together
        # run the episodes one process with world_size * num_envs slots would run.
        env_seed = train.seed + dist.rank * train.num_envs
        self.kernel = SearchKernel(
            self.task,
            scans,
            table,
            config.env,
            config.augment,
            train.num_envs,
            self.device,
            env_seed,
        )
        self.network = build_network(config, len(self.names), self.task).to(self.device)
        if train.init_from:
            init_network_from(self.network, train.init_from, self.names)
        dist.broadcast_parameters(self.network)
        self.target = copy.deepcopy(self.network).eval()
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=config.agent.lr, foreach=True
        )
        self.replay = PoseReplay(
            config.agent.replay_size,
            config.env.frames,
            config.env.action_history,
            self.task.pose_dim,
        )
        self.assembler = NStepAssembler(train.num_envs, config.agent.n_step, config.agent.gamma)
        self.rng = np.random.default_rng(
            train.seed + 7919 if dist.rank == 0 else [train.seed + 7919, dist.rank]
        )
        self.step = 0
        self.updates = 0
        self.update_credit = 0.0
        self.history: list[dict[str, float]] = []
        self.kernel.reset()
        self.writer: Any = None
        self.extra_meta: dict[str, Any] = {}
        self.evaluations: list[dict[str, float]] = []
        self.run_started = time.perf_counter()
        self.validator: Any = None  # medrl.agents.validation.Validator, made on first use

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], epsilon: float) -> torch.Tensor:
        q = self.network(obs)
        greedy = q.argmax(dim=1)
        explore = torch.as_tensor(self.rng.uniform(size=len(greedy)) < epsilon, device=self.device)
        random_actions = torch.as_tensor(
            self.rng.integers(0, q.shape[1], size=len(greedy)), device=self.device
        )
        return torch.where(explore, random_actions, greedy)

    def collect(self) -> dict[str, float]:
        epsilon = epsilon_at(self.config, self.step)
        poses = self.kernel.poses()
        obs = render_observation(self.task, self.scans, self.config.env, poses, self.kernel.params)
        actions = self.act(obs, epsilon)
        reward, terminated, truncated, info = self.kernel.step(actions)
        next_poses = self.kernel.poses()
        done_t = terminated | truncated
        done = done_t.cpu().numpy()
        batch = self.assembler.add(
            poses,
            actions.cpu().numpy(),
            reward.cpu().numpy(),
            next_poses,
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
        )
        if batch is not None:
            self.replay.add(batch)
        key = f"final_{self.task.distance_name}"
        stats = {
            **{
                f"{key}/level{lv}": float(
                    info["distance"][done_t & (self.kernel.level == lv)].mean()
                )
                for lv in range(self.kernel.num_levels)
                if (done & (self.kernel.level == lv).cpu().numpy()).any()
            },
            "epsilon": epsilon,
            "reward": float(reward.mean()),
            "episodes_done": float(done.sum()),
            key: float(info["distance"][done_t].mean()) if done.any() else float("nan"),
            "success": float(terminated.float().mean()),
        }
        self.kernel.reset(done)
        self.step += 1
        return stats

    # ---------------------------------------------------------------- learning
    def _params_for(self, scan: np.ndarray, seeds: np.ndarray) -> AugmentParams:
        return self.kernel.params_for([int(s) for s in scan], seeds)

    def learn(self) -> float:
        agent = self.config.agent
        batch = self.replay.sample(agent.batch_size, self.rng)
        state, following = split_poses(batch, self.device)
        params = self._params_for(batch["scan"], batch["episode_seed"])
        if agent.backup == "all_actions" and isinstance(self.task, LandmarkTask):
            loss = landmark_all_actions_loss(
                self.network,
                self.target,
                self.task,
                self.scans,
                self.targets_ras,
                state,
                params,
                self.kernel.inside,
            )
        elif agent.backup == "all_actions":
            loss = all_actions_loss(
                self.network, self.target, self.task, self.scans, state, params, self.kernel.inside
            )
        else:
            env = self.config.env
            loss = sampled_loss(
                self.network,
                self.target,
                render_observation(self.task, self.scans, env, state, params),
                render_observation(self.task, self.scans, env, following, params),
                torch.as_tensor(batch["action"].astype(np.int64), device=self.device),
                torch.as_tensor(batch["reward"], device=self.device),
                torch.as_tensor(batch["discount"], device=self.device),
                agent.double,
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.network.parameters())
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), agent.grad_clip)
        self.optimizer.step()
        self.updates += 1
        if self.updates % agent.target_update == 0:
            self.target.load_state_dict(self.network.state_dict())
        return float(loss.detach())

    # --------------------------------------------------------------- the loop
    def run(self, progress: bool = True, stop_after: int | None = None) -> None:
        """Train until ``total_steps`` (or ``stop_after`` more steps, for tests of resuming).

        SIGINT or SIGTERM stops the run at the end of the current step with a checkpoint
        (:class:`medrl.utils.signals.StopRequested`).
        """
        train, main = self.config.train, self.dist.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if main:
            save_config(self.config, self.run_dir / "config.yaml")
            self._open_writer()
        end = (
            train.total_steps
            if stop_after is None
            else min(train.total_steps, self.step + stop_after)
        )
        bar = tqdm(
            total=train.total_steps,
            initial=self.step,
            disable=not (progress and main),
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        minutes = train.max_minutes
        self.run_started = time.perf_counter()
        deadline = time.perf_counter() + 60 * minutes if minutes > 0 else float("inf")
        with deferred_stop() as received:
            self._loop(end, deadline, bar, received)
        bar.close()
        if self.writer is not None:
            self.writer.flush()

    def _loop(
        self,
        end: int,
        deadline: float,
        bar: Any,
        received: Callable[[], int | None],
    ) -> None:
        train, agent = self.config.train, self.config.agent
        main = self.dist.is_main
        window: list[dict[str, float]] = []
        started = time.perf_counter()
        start_step, start_updates = self.step, self.updates
        learning = False  # every rank has learning_starts transitions (it stays so)
        while self.step < end:
            if self.dist.any(received() is not None):  # SIGINT/SIGTERM: stop between steps
                self.save_checkpoint()
                bar.close()
                signum = received() or signal.SIGTERM
                raise StopRequested(
                    signum,
                    f"stopped by {signal.Signals(signum).name} at step {self.step}; the "
                    f"checkpoint is saved: run the same command to resume {self.run_dir}",
                )
            if self.dist.any(time.perf_counter() > deadline):
                if main:
                    print(
                        f"\ntime limit of {train.max_minutes} min reached at step {self.step}",
                        file=sys.stderr,
                    )
                if train.eval_every > 0 and main and self.step % train.eval_every:
                    self.validate()  # where the clock stopped it, for the learning curve
                self.save_checkpoint()
                break
            stats = self.collect()
            failpoint("train-step")
            learning = learning or self.dist.all(len(self.replay) >= agent.learning_starts)
            if learning:
                self.update_credit += agent.updates_per_step
                losses = []
                while self.update_credit >= 1.0:
                    losses.append(self.learn())
                    failpoint("train-learn")
                    self.update_credit -= 1.0
                if losses:
                    stats["loss"] = float(np.mean(losses))
            window.append(stats)
            bar.update(1)
            if self.step % train.log_every == 0 or self.step == end:
                elapsed = max(time.perf_counter() - started, 1e-9)
                record = _mean_stats(window)
                record.update(
                    step=self.step,
                    updates=self.updates,
                    elapsed_s=elapsed,
                    # all ranks together; every rank takes the same (averaged) updates
                    env_steps_per_s=(self.step - start_step)
                    * train.num_envs
                    * self.dist.world_size
                    / elapsed,
                    updates_per_s=(self.updates - start_updates) / elapsed,
                )
                if main:
                    self._log(record)
                bar.set_postfix(
                    eps=f"{record['epsilon']:.2f}",
                    dist=f"{record.get(f'final_{self.task.distance_name}', float('nan')):.2f}",
                    loss=f"{record.get('loss', float('nan')):.3f}",
                )
                window = []
            if (
                train.eval_every > 0
                and main
                and (self.step % train.eval_every == 0 or self.step == train.total_steps)
            ):
                self.validate()
            if self.step % train.checkpoint_every == 0 or self.step == end:
                self.save_checkpoint()

    def validate(self) -> dict[str, float]:
        """Search the moved validation scans with the current network; log the errors."""
        from medrl.agents.validation import Validator

        if self.validator is None:
            self.validator = Validator.from_config(self.config, self.names, self.device)
        result = self.validator.evaluate(self.network, self.config, self.task)
        # train_seconds: wall time of this run() call before the validation (with earlier
        # validations' seconds included): the x axis of a learning curve.
        run_seconds = time.perf_counter() - self.run_started - result["seconds"]
        record = {
            "step": float(self.step),
            "updates": float(self.updates),
            "train_seconds": run_seconds,
            **result,
        }
        self.evaluations.append(record)
        self._open_writer()
        for key, value in result.items():
            if np.isfinite(value):
                self.writer.add_scalar(f"eval/{key}", value, self.step)
        return record

    def _open_writer(self) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log(self, record: dict[str, float]) -> None:
        self.history.append(record)
        for key, value in record.items():
            if key != "step" and np.isfinite(value):
                self.writer.add_scalar(f"train/{key}", value, int(record["step"]))


def _mean_stats(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for stats in window for k in stats}
    out = {}
    for key in keys:
        values = [s[key] for s in window if key in s and np.isfinite(s[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
