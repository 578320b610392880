"""Q-learning targets for sampled pose transitions.

Two backups, chosen by ``agent.backup``:

* ``sampled``: the classic n-step (double) DQN target for the action that was taken,
  ``y = R_n + gamma^n Q_target(s_n, argmax_a Q_online(s_n, a))``.
* ``all_actions``: the environment's dynamics are known exactly (a move of one step along
  an axis, the reward from the distance to the target), so every sampled state is backed up
  for all six actions at once with the one-step double-DQN target
  ``y_a = r(s, a) + gamma (1 - terminal) Q_target(s'_a, argmax Q_online(s'_a, .))``,
  and for every landmark near the agent, not only the one its episode searches for (the
  network has one head per landmark and the targets of all landmarks are known).
  One patch of ``P + 2`` voxels is rendered per state; the current patch and the six
  neighbouring patches are crops of it (this needs ``step_mm == spacing_mm`` at every level).
  Six targets per sample instead of one, for about 1.5x the rendering cost.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from medrl.agents.networks import QNetwork
from medrl.config import Config
from medrl.data.augment import AugmentParams, inverse_transform_points
from medrl.envs.landmark import (
    NUM_ACTIONS,
    Poses,
    action_history_one_hot,
    action_vectors,
    render_observation,
)
from medrl.envs.pyramid import ScanPyramid
from medrl.errors import InputError


def double_q_bootstrap(
    online: QNetwork, target: QNetwork, next_obs: dict[str, torch.Tensor], double: bool
) -> torch.Tensor:
    """max-Q of next states: evaluated by the target net, chosen by the online net if double."""
    with torch.no_grad():
        next_q_target = target(next_obs)
        chooser = online(next_obs) if double else next_q_target
        return next_q_target.gather(1, chooser.argmax(dim=1, keepdim=True))[:, 0]


def sampled_loss(
    online: QNetwork,
    target: QNetwork,
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
# (+R, -R move along i; +A, -A along j; +S, -S along k).
_CENTRE = (slice(1, -1), slice(1, -1), slice(1, -1))
_NEIGHBOURS = (
    (slice(1, -1), slice(1, -1), slice(2, None)),
    (slice(1, -1), slice(1, -1), slice(None, -2)),
    (slice(1, -1), slice(2, None), slice(1, -1)),
    (slice(1, -1), slice(None, -2), slice(1, -1)),
    (slice(2, None), slice(1, -1), slice(1, -1)),
    (slice(None, -2), slice(1, -1), slice(1, -1)),
)


def check_all_actions_supported(config: Config) -> None:
    for index, level in enumerate(config.env.levels):
        if abs(level.step_mm - level.spacing_mm) > 1e-6:
            raise InputError(
                f"agent.backup=all_actions needs step_mm == spacing_mm (level {index}: "
                f"{level.step_mm} vs {level.spacing_mm})"
            )


def all_actions_loss(
    online: QNetwork,
    target: QNetwork,
    config: Config,
    scans: list[ScanPyramid],
    targets_ras: torch.Tensor,
    state: Poses,
    params: AugmentParams,
    inside_fn,
) -> torch.Tensor:
    """Huber loss of Q(s, .) against one-step double-DQN targets for all six actions.

    ``targets_ras`` is (scans, landmarks, 3) in each scan's own world; ``inside_fn(scan,
    params, positions)`` says which positions lie inside the image.
    """
    env = config.env
    device = state.frames_ras.device
    b, frames = state.frames_ras.shape[:2]
    big_env = replace(env, patch_size=env.patch_size + 2)
    big = render_observation(scans, big_env, state, params)["patch"]  # (B, F, P+2, P+2, P+2)
    current = big[(slice(None), slice(None), *_CENTRE)]
    obs = {
        "patch": current,
        "landmark": state.landmark,
        "level": state.level,
        "actions": action_history_one_hot(state.actions),
    }
    # Rewards and terminal flags of the six moves for every landmark near the agent, from
    # the known dynamics: (B, L, 6).
    levels = env.levels
    step = torch.tensor([lv.step_mm for lv in levels], device=device)[state.level]
    radius = torch.tensor([lv.start_radius_mm for lv in levels], device=device)[state.level]
    goals_source = targets_ras[state.scan]  # (B, L, 3), NaN where a scan lacks a landmark
    known = torch.isfinite(goals_source).all(dim=-1)
    goals = inverse_transform_points(params, torch.nan_to_num(goals_source))
    position = state.frames_ras[:, 0]
    d_old = torch.linalg.norm(position[:, None] - goals, dim=-1)  # (B, L)
    trained = known & (d_old <= radius[:, None] * config.agent.nearby_radius_factor)
    trained[torch.arange(b, device=device), state.landmark] = True
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
    next_history = torch.cat(
        [taken[:, None], state.actions.repeat_interleave(NUM_ACTIONS, dim=0)[:, :-1]], dim=1
    )
    next_obs = {
        "patch": next_patch.reshape(b * NUM_ACTIONS, frames, p, p, p),
        "landmark": state.landmark.repeat_interleave(NUM_ACTIONS),
        "level": state.level.repeat_interleave(NUM_ACTIONS),
        "actions": action_history_one_hot(next_history),
    }
    with torch.no_grad():
        next_q = target.forward_all(next_obs)  # (6B, L, 6)
        chooser = online.forward_all(next_obs) if config.agent.double else next_q
        best = next_q.gather(2, chooser.argmax(dim=2, keepdim=True))[..., 0]  # (6B, L)
    bootstrap = best.reshape(b, NUM_ACTIONS, -1).transpose(1, 2)  # (B, L, 6)
    y = reward + config.agent.gamma * (~terminal).float() * bootstrap
    q = online.forward_all(obs)
    return F.smooth_l1_loss(q[trained], y[trained])
