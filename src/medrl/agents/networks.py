"""Q-network: shared 3D convolutions and trunk, one small dueling head per target.

One network serves every target of a task (the multi-agent design of shared convolutions
with per-agent heads: landmarks, or structures for the box agent): the trunk sees the patch,
the scale level, the recent actions and the task's pose features (none for landmarks), and
the output holds Q-values of every action for every target at once, so one rendered patch
can be trained on the targets of all landmarks near it. The heads are dueling
(``Q = V + A - mean(A)``) unless configured otherwise.

With ``agent.level_networks`` every scale level has a network of its own
(:class:`LevelQNetworks`): one shared network learns the fine levels late, after the coarse
level (see BENCHMARKS.md, "learning curve").
"""

from __future__ import annotations

import torch
from torch import nn

from medrl.config import AgentConfig


def own_target(q: torch.Tensor, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, actions) of (B, targets, actions) Q-values: the target each observation searches for."""
    return q[torch.arange(q.shape[0], device=q.device), obs["target"]]


class QNetwork(nn.Module):
    def __init__(
        self,
        config: AgentConfig,
        patch_size: int,
        frames: int,
        num_targets: int,
        num_levels: int,
        action_history: int,
        num_actions: int = 6,
        pose_features: int = 0,
    ) -> None:
        super().__init__()
        self.dueling = config.dueling
        self.num_actions = num_actions
        layers: list[nn.Module] = []
        channels_in, size = frames, patch_size
        for index, channels in enumerate(config.channels):
            if index == 0:
                # A strided first convolution: 3D convolutions at full patch resolution are
                # what dominates CPU time (measured in benchmarks/).
                layers += [
                    nn.Conv3d(channels_in, channels, 3, stride=config.first_stride, padding=1),
                    nn.ReLU(inplace=True),
                ]
                size = (size - 1) // config.first_stride + 1
            else:
                layers += [
                    nn.Conv3d(channels_in, channels, kernel_size=3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.MaxPool3d(2, ceil_mode=True),
                ]
                size = (size + 1) // 2
            channels_in = channels
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.num_targets = num_targets
        self.level_embedding = nn.Embedding(num_levels, 8)
        self.pose_features = pose_features
        width = channels_in * size**3 + 8 + action_history * num_actions + pose_features
        self.trunk = nn.Sequential(
            nn.Linear(width, config.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
        )
        self.advantage = nn.Linear(config.hidden, num_targets * num_actions)
        self.value = nn.Linear(config.hidden, num_targets) if self.dueling else None

    def forward_all(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q-values (B, landmarks, actions) of every landmark."""
        features = self.features(obs["patch"])
        parts = [features, self.level_embedding(obs["level"]), obs["actions"]]
        if self.pose_features:
            parts.append(obs["pose"])
        joined = torch.cat(parts, dim=1)
        hidden = self.trunk(joined)
        advantage = self.advantage(hidden).reshape(-1, self.num_targets, self.num_actions)
        if self.value is None:
            return advantage
        value = self.value(hidden)[:, :, None]
        return value + advantage - advantage.mean(dim=2, keepdim=True)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q-values (B, actions) of the target each observation searches for."""
        return own_target(self.forward_all(obs), obs)


class LevelQNetworks(nn.Module):
    """One :class:`QNetwork` per scale level, each sample sent to its level's network.

    The same inputs and outputs as a single network; the samples of a batch are grouped by
    level, so a batch costs what it costs one network.
    """

    def __init__(self, num_levels: int, **kwargs: object) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            QNetwork(num_levels=1, **kwargs)  # type: ignore[arg-type]
            for _ in range(num_levels)
        )
        self.num_targets = self.levels[0].num_targets
        self.num_actions = self.levels[0].num_actions

    def forward_all(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q-values (B, targets, actions), each row from its level's network."""
        level = obs["level"]
        if level.numel() == 0:
            return self.levels[0].forward_all(obs)
        if int(level.min()) < 0 or int(level.max()) >= len(self.levels):
            raise ValueError(f"levels outside 0..{len(self.levels) - 1}: {level.unique()}")
        out: torch.Tensor | None = None
        for index, network in enumerate(self.levels):
            rows = (level == index).nonzero()[:, 0]
            if rows.numel() == 0:
                continue
            part = {key: value[rows] for key, value in obs.items()}
            part["level"] = torch.zeros_like(part["level"])
            q = network.forward_all(part)
            if out is None:
                out = q.new_zeros((level.shape[0], *q.shape[1:]))
            out = out.index_copy(0, rows, q)
        assert out is not None
        return out

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q-values (B, actions) of the target each observation searches for."""
        return own_target(self.forward_all(obs), obs)


QFunction = QNetwork | LevelQNetworks
