"""Q-network: shared 3D convolutions and trunk, one small dueling head per target.

One network serves every target of a task (the multi-agent design of shared convolutions
with per-agent heads: landmarks, or structures for the box agent): the trunk sees the patch,
the scale level, the recent actions and the task's pose features (none for landmarks), and
the output holds Q-values of every action for every target at once, so one rendered patch
can be trained on the targets of all landmarks near it. The heads are dueling
(``Q = V + A - mean(A)``) unless configured otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from medrl.config import AgentConfig


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
        q = self.forward_all(obs)
        return q[torch.arange(q.shape[0], device=q.device), obs["target"]]
