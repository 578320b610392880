"""Q-learning targets for sampled pose transitions.

Two backups, chosen by ``agent.backup``:

* ``sampled``: the classic n-step (double) DQN target for the action that was taken,
  ``y = R_n + gamma^n Q_target(s_n, argmax_a Q_online(s_n, a))``.
* ``all_actions``: every task's dynamics are known exactly (the task's ``move``, the reward
  from its ``distance`` to the goal), so every sampled state is backed up for all actions at
  once with the one-step double-DQN target
  ``y_a = r(s, a) + gamma (1 - terminal) Q_target(s'_a, argmax Q_online(s'_a, .))``
  (close to Liao et al.'s greedy supervision, with bootstrapping). In general this renders
  the A successor observations of each sample (:func:`all_actions_loss`). The landmark task
  has a fast path (:func:`landmark_all_actions_loss`): one patch of ``P + 2`` voxels per
  state, of which the current patch and the six neighbours are crops (this needs
  ``step_mm == spacing_mm`` at every level), backed up for every landmark near the agent, not
  only the one its episode searches for (the network has one head per landmark and the
  targets of all landmarks are known). Six targets per sample instead of one, for about 1.5x
  the rendering cost.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medrl.agents.networks import QFunction
from medrl.config import Config
from medrl.data.augment import AugmentParams, inverse_transform_points
from medrl.envs.kernel import action_history_one_hot, render_observation
from medrl.envs.pyramid import ScanPyramid
from medrl.errors import InputError
from medrl.tasks.base import InsideFn, Poses, Task, advance, push_history
from medrl.tasks.landmark import ACTION_NAMES, LandmarkTask, action_vectors

NUM_ACTIONS = len(ACTION_NAMES)


def double_q_bootstrap(
    online: QFunction, target: QFunction, next_obs: dict[str, torch.Tensor], double: bool
) -> torch.Tensor:
    """max-Q of next states: evaluated by the target net, chosen by the online net if double."""
    with torch.no_grad():
        next_q_target = target(next_obs)
        chooser = online(next_obs) if double else next_q_target
        return next_q_target.gather(1, chooser.argmax(dim=1, keepdim=True))[:, 0]


def sampled_loss(
    online: QFunction,
    target: QFunction,
    obs: dict[str, torch.Tensor],
    next_obs: dict[str, torch.Tensor],
    actions: torch.Tensor,
    returns: torch.Tensor,
    discounts: torch.Tensor,
    double: bool,
) -> torch.Tensor:
    """Huber loss of Q(s, a) against the n-step double-DQN target."""
    y = returns + discounts * double_q_bootstrap(online, target, next_obs, double)
    q = online(obs).gather(1, actions[:, None])[:, 0]
    return F.smooth_l1_loss(q, y)


# Crops of a (P + 2)^3 patch [k, j, i]: the centre, then the neighbour reached by each action
# (+R, -R move along i; +A, -A along j; +S, -S along k). Checked against the landmark task's
# action order at import, so reordering its actions cannot silently give wrong targets.
_CENTRE = (slice(1, -1), slice(1, -1), slice(1, -1))
_NEIGHBOURS = (
    (slice(1, -1), slice(1, -1), slice(2, None)),
    (slice(1, -1), slice(1, -1), slice(None, -2)),
    (slice(1, -1), slice(2, None), slice(1, -1)),
    (slice(1, -1), slice(None, -2), slice(1, -1)),
    (slice(2, None), slice(1, -1), slice(1, -1)),
    (slice(None, -2), slice(1, -1), slice(1, -1)),
)


_CROP_MOVES = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
if action_vectors().tolist() != [list(map(float, m)) for m in _CROP_MOVES]:
    raise ImportError("the landmark crop table does not match LandmarkTask's action order")


def check_all_actions_supported(config: Config) -> None:
    if config.task.kind != "landmark":
        return
    for index, level in enumerate(config.env.levels):
        if abs(level.step_mm - level.spacing_mm) > 1e-6:
            raise InputError(
                f"agent.backup=all_actions needs step_mm == spacing_mm (level {index}: "
                f"{level.step_mm} vs {level.spacing_mm})"
            )


def landmark_all_actions_loss(
    online: QFunction,
    target: QFunction,
    task: LandmarkTask,
    scans: list[ScanPyramid],
    targets_ras: torch.Tensor,
    state: Poses,
    params: AugmentParams,
    inside_fn: InsideFn,
) -> torch.Tensor:
    """Huber loss of Q(s, .) against one-step double-DQN targets for all six actions.

    ``targets_ras`` is (scans, landmarks, 3) in each scan's own world; ``inside_fn(scan,
    params, positions)`` says which positions lie inside the image.
    """
    config = task.config
    env = config.env
    device = state.frames.device
    b, frames = state.frames.shape[:2]
    big = render_observation(task, scans, env, state, params, patch_size=env.patch_size + 2)
    big = big["patch"]  # (B, F, P+2, P+2, P+2)
    current = big[(slice(None), slice(None), *_CENTRE)]
    obs = {
        "patch": current,
        "target": state.target,
        "level": state.level,
        "actions": action_history_one_hot(state.actions, NUM_ACTIONS),
    }
    # Rewards and terminal flags of the six moves for every landmark near the agent, from
    # the known dynamics: (B, L, 6).
    levels = env.levels
    step = torch.tensor([lv.step_mm for lv in levels], device=device)[state.level]
    radius = torch.tensor([lv.start_radius_mm for lv in levels], device=device)[state.level]
    goals_source = targets_ras[state.scan]  # (B, L, 3), NaN where a scan lacks a landmark
    known = torch.isfinite(goals_source).all(dim=-1)
    goals = inverse_transform_points(params, torch.nan_to_num(goals_source))
    position = state.frames[:, 0]
    d_old = torch.linalg.norm(position[:, None] - goals, dim=-1)  # (B, L)
    trained = known & (d_old <= radius[:, None] * config.agent.nearby_radius_factor)
    trained[torch.arange(b, device=device), state.target] = True
    moved = position[:, None] + action_vectors(device)[None] * step[:, None, None]  # (B, 6, 3)
    inside = inside_fn(
        state.scan.repeat_interleave(NUM_ACTIONS),
        params.index(torch.arange(b, device=device).repeat_interleave(NUM_ACTIONS)),
        moved.reshape(-1, 3),
    ).reshape(b, 1, NUM_ACTIONS)
    d_new = torch.linalg.norm(moved[:, None] - goals[:, :, None], dim=-1)  # (B, L, 6)
    d_new = torch.where(inside, d_new, d_old[..., None])
    clip = env.reward_clip_mm
    reward = torch.where(
        inside,
        torch.clamp(d_old[..., None] - d_new, -clip, clip),
        torch.full_like(d_new, -env.out_of_image_penalty),
    )
    q = online.forward_all(obs)
    if config.agent.gamma == 0:
        # Each action's target is its own reward (greedy supervision): no successor is
        # evaluated, about a quarter of the work per update (BENCHMARKS.md).
        return F.smooth_l1_loss(q[trained], reward[trained])
    terminal = d_new < env.success_radius_mm
    # Next observations: the neighbour crop (or the same patch when the move was refused),
    # earlier frames shifted by one, and the action prepended to the history.
    neighbours = torch.stack(
        [big[(slice(None), 0, *crop)] for crop in _NEIGHBOURS], dim=1
    )  # (B, 6, P, P, P)
    neighbours = torch.where(inside[:, 0, :, None, None, None], neighbours, current[:, :1])
    older = current[:, : frames - 1].unsqueeze(1).expand(-1, NUM_ACTIONS, -1, -1, -1, -1)
    next_patch = torch.cat([neighbours.unsqueeze(2), older], dim=2)
    p = env.patch_size
    taken = torch.arange(NUM_ACTIONS, device=device).repeat(b)
    next_history = push_history(state.actions.repeat_interleave(NUM_ACTIONS, dim=0), taken)
    next_obs = {
        "patch": next_patch.reshape(b * NUM_ACTIONS, frames, p, p, p),
        "target": state.target.repeat_interleave(NUM_ACTIONS),
        "level": state.level.repeat_interleave(NUM_ACTIONS),
        "actions": action_history_one_hot(next_history, NUM_ACTIONS),
    }
    with torch.no_grad():
        next_q = target.forward_all(next_obs)  # (6B, L, 6)
        chooser = online.forward_all(next_obs) if config.agent.double else next_q
        best = next_q.gather(2, chooser.argmax(dim=2, keepdim=True))[..., 0]  # (6B, L)
    bootstrap = best.reshape(b, NUM_ACTIONS, -1).transpose(1, 2)  # (B, L, 6)
    y = reward + config.agent.gamma * (~terminal).float() * bootstrap
    return F.smooth_l1_loss(q[trained], y[trained])


def all_actions_loss(
    online: QFunction,
    target: QFunction,
    task: Task,
    scans: list[ScanPyramid],
    state: Poses,
    params: AugmentParams,
    inside_fn: InsideFn,
) -> torch.Tensor:
    """Huber loss of Q(s, .) of the episode's own target against one-step double-DQN targets
    for all A actions, from the task's known dynamics (any task; renders A + 1 observations
    per sample, or one when ``agent.gamma`` is 0)."""
    config = task.config
    env = config.env
    assert state.goal is not None
    b, frames = state.frames.shape[:2]
    a = task.num_actions
    obs = render_observation(task, scans, env, state, params)
    rep = torch.arange(b, device=state.frames.device).repeat_interleave(a)
    pose = state.frames[:, 0]
    taken = torch.arange(a, device=pose.device).repeat(b)
    moved, inside = advance(
        task, state.scan[rep], params.index(rep), pose[rep], taken, state.level[rep], inside_fn
    )
    goal = state.goal[rep]
    d_old = task.distance(pose[rep], goal)
    reward = task.reward(d_old, task.distance(moved, goal))
    reward = torch.where(inside, reward, torch.full_like(reward, -env.out_of_image_penalty))
    if config.agent.gamma == 0:
        # Each action's target is its own reward: no successor needs rendering (A times less
        # work per sample, the same targets).
        return F.smooth_l1_loss(online(obs), reward.reshape(b, a))
    terminal = task.success(moved, goal)
    following = Poses(
        state.scan[rep],
        state.target[rep],
        state.level[rep],
        torch.cat([moved[:, None], state.frames[rep, : frames - 1]], dim=1),
        push_history(state.actions[rep], taken),
        np.repeat(state.episode_seed, a),
        np.repeat(state.step + 1, a),
        goal,
    )
    next_obs = render_observation(task, scans, env, following, params.index(rep))
    bootstrap = double_q_bootstrap(online, target, next_obs, config.agent.double)
    y = (reward + config.agent.gamma * (~terminal).float() * bootstrap).reshape(b, a)
    return F.smooth_l1_loss(online(obs), y)
