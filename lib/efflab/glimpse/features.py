"""What the agent's networks read from an observation: keypoints of the memory, and the step.

The agent has to answer "where is the digit?" from a coarse picture and turn the answer into glimpse
coordinates. A plain MLP over pixels learns that slowly: its critic must discover, unit by unit, that the value
of an action depends on how close the action is to a bright blob. AdaGlimpse's agent is handed the coordinates of
every token it sees (arXiv 2404.03482; the "coords" input of the authors' actor and critic). The keypoint layer
of Levine, Finn, Darrell and Abbeel (2016, "End-to-end training of deep visuomotor policies", arXiv 1504.00702)
hands ours the coordinates of what matters in the picture:

1. a small CNN maps the memory (2 x g x g) to ``K`` score maps;
2. a softmax over the cells of each map gives a distribution, and its expected row and column are a *keypoint*
   in [-1, 1]^2 (a differentiable arg-max);
3. each map's largest score says how strongly its feature is present.

The features are the ``K`` keypoints, their ``K`` strengths and the one-hot step count. Actor and critic then see
the blob's position as two numbers, comparable with the action's (y, x) by a few ReLU units.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from efflab.validation import check_int


class KeypointExtractor(BaseFeaturesExtractor):
    """Features (B, 3K + steps) of observations (B, 2 g^2 + steps) laid out by :class:`GlimpseEnv`."""

    def __init__(self, observation_space: spaces.Box, *, grid: int, keypoints: int = 8, channels: int = 16):
        check_int("grid", grid, low=1)
        check_int("keypoints", keypoints, low=1)
        check_int("channels", channels, low=1)
        steps = observation_space.shape[0] - 2 * grid * grid
        if steps < 1:
            raise ValueError(
                f"grid={grid!r} is not allowed for observations of size {observation_space.shape[0]}; "
                "expected the observation grid the environment was built with"
            )
        super().__init__(observation_space, features_dim=3 * keypoints + steps)
        self.grid = grid
        self.scores = nn.Sequential(
            nn.Conv2d(2, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, keypoints, 3, padding=1)
        )
        centres = torch.linspace(-1, 1, grid)
        self.register_buffer("rows", centres[:, None].expand(grid, grid).reshape(-1))
        self.register_buffer("cols", centres[None, :].expand(grid, grid).reshape(-1))

    def forward(self, observations: Tensor) -> Tensor:
        cells = 2 * self.grid * self.grid
        memory = observations[:, :cells].reshape(-1, 2, self.grid, self.grid)
        scores = self.scores(memory).flatten(2)  # (B, K, g*g)
        weights = scores.softmax(-1)
        return torch.cat([weights @ self.rows, weights @ self.cols, scores.amax(-1), observations[:, cells:]], 1)
