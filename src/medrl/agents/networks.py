"""Q-network: shared 3D convolutions over the patch, a head conditioned on landmark and level.

One network serves every landmark: the convolutional features are shared, and the head sees
an embedding of which landmark is searched, at which scale level, and the recent actions.
The head is dueling (``Q = V + A - mean(A)``) unless configured otherwise.
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
        num_landmarks: int,
        num_levels: int,
        action_history: int,
        num_actions: int = 6,
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
        self.landmark_embedding = nn.Embedding(num_landmarks, config.landmark_embedding)
        self.level_embedding = nn.Embedding(num_levels, 8)
        width = channels_in * size**3 + config.landmark_embedding + 8 + action_history * num_actions
        self.trunk = nn.Sequential(
            nn.Linear(width, config.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(inplace=True),
        )
        self.advantage = nn.Linear(config.hidden, num_actions)
        self.value = nn.Linear(config.hidden, 1) if self.dueling else None

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        features = self.features(obs["patch"])
        joined = torch.cat(
            [
                features,
                self.landmark_embedding(obs["landmark"]),
                self.level_embedding(obs["level"]),
                obs["actions"],
            ],
            dim=1,
        )
        hidden = self.trunk(joined)
        advantage = self.advantage(hidden)
        if self.value is None:
            return advantage
        return self.value(hidden) + advantage - advantage.mean(dim=1, keepdim=True)
