"""Who chooses the glimpses, and how a chooser is scored: the baselines, a trained agent's policy, and playing.

**Baselines** (every one uses the same frozen task model and the same number of glimpses):

* ``random``: uniform random position and scale (the floor a learned policy must clear);
* ``grid``: the four quadrants in reading order, then again (a fixed grid, like earlier glimpse methods);
* ``centre first``: a centre crop half the scene's side, then the quadrants;
* ``coarse view``: the whole scene, shrunk, at every step: "one coarse look" (repeats add no new pixels);
* ``ideal``: the whole scene, then the sharpest box around the digit, placed with the *true* position: a ceiling
  no agent can reach without cheating, and the check that the task model can read a well-placed glimpse.

A policy maps a batch of :class:`~efflab.glimpse.env.Episodes` to actions in ``[-1, 1]^3``, the environment's own
language, so a trained agent and a hand-written rule are played and scored by the same :func:`play`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from efflab.data.canvas import Canvases
from efflab.glimpse.env import Episodes, Game, actions_from_where
from efflab.glimpse.sensor import Sensor
from efflab.glimpse.task_model import GlimpseClassifier, ideal_boxes
from efflab.validation import check_int, check_seed

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

Policy = Callable[[Episodes], np.ndarray]


def quadrants(sensor: Sensor) -> Tensor:
    """The four half-size boxes (4, 3) in reading order."""
    half = sensor.canvas_size // 2
    side = max(half, sensor.min_side)
    far = sensor.canvas_size - side
    return torch.tensor([[0, 0, side], [0, far, side], [far, 0, side], [far, far, side]])


def scripted(choose_boxes: Callable[[Episodes], Tensor]) -> Policy:
    """A policy from a rule that names boxes in pixels for a batch of episodes."""

    def policy(episodes: Episodes) -> np.ndarray:
        return actions_from_where(episodes.sensor.where_for(choose_boxes(episodes)))

    return policy


def random_policy(seed: int = 0) -> Policy:
    """Uniform actions from a generator seeded with ``seed``: the same seed, the same glimpses."""
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def policy(episodes: Episodes) -> np.ndarray:
        return (2 * torch.rand(len(episodes), 3, generator=generator) - 1).numpy()

    return policy


def grid_policy() -> Policy:
    return scripted(lambda ep: quadrants(ep.sensor)[ep.step % 4].expand(len(ep), 3))


def centre_first_policy() -> Policy:
    def boxes(episodes: Episodes) -> Tensor:
        sensor = episodes.sensor
        if episodes.step == 0:
            side = max(sensor.canvas_size // 2, sensor.min_side)
            corner = (sensor.canvas_size - side) // 2
            return torch.tensor([corner, corner, side]).expand(len(episodes), 3)
        return quadrants(sensor)[(episodes.step - 1) % 4].expand(len(episodes), 3)

    return scripted(boxes)


def coarse_view_policy() -> Policy:
    return scripted(lambda ep: ep.sensor.whole_scene(len(ep)))


def ideal_policy() -> Policy:
    """Whole scene first, then the sharpest box around the digit's true position (needs ``episodes.positions``)."""

    def boxes(episodes: Episodes) -> Tensor:
        if episodes.positions is None:
            raise ValueError("the ideal policy needs the digits' positions; build Episodes with positions=")
        if episodes.step == 0:
            return episodes.sensor.whole_scene(len(episodes))
        return ideal_boxes(episodes.positions, episodes.sensor)

    return scripted(boxes)


def agent_policy(agent: BaseAlgorithm) -> Policy:
    """The agent's deterministic action (the mean of its Gaussian, squashed), as the authors' code evaluates."""

    def policy(episodes: Episodes) -> np.ndarray:
        actions, _ = agent.predict(episodes.observation(), deterministic=True)
        return actions

    return policy


BASELINES: dict[str, Callable[..., Policy]] = {
    "random": random_policy,
    "grid": grid_policy,
    "centre first": centre_first_policy,
    "coarse view": coarse_view_policy,
    "ideal": ideal_policy,
}


@dataclass(frozen=True, eq=False)
class EpisodeLog:
    """What happened in ``N`` episodes: boxes (N, T, 3), beliefs (N, T + 1, 10) and labels (N,)."""

    boxes: Tensor
    beliefs: Tensor
    labels: Tensor

    def accuracy(self) -> np.ndarray:
        """Accuracy after 0, 1, ..., T glimpses, shape (T + 1,)."""
        return (self.beliefs.argmax(-1) == self.labels[:, None]).float().mean(0).numpy()

    def mean_side(self) -> np.ndarray:
        """Mean glimpse side per step, shape (T,): large = coarse look, small = zoom."""
        return self.boxes[..., 2].float().mean(0).numpy()


def play(
    policy: Policy, scenes: Canvases, task_model: GlimpseClassifier, game: Game, *, chunk: int = 4096
) -> EpisodeLog:
    """Run ``policy`` for ``game.glimpses`` glimpses on every scene (in chunks of episodes played side by side),
    under the game's rules (a fixed-scale game overrides the policy's scale)."""
    if not isinstance(game, Game):
        raise ValueError(f"game={game!r} is not allowed; expected a Game")
    game.check_scenes(scenes)
    if not callable(policy):
        raise ValueError(f"policy={policy!r} is not allowed; expected a function of the episodes")
    check_int("chunk", chunk, low=1)
    logs = []
    for start in range(0, len(scenes), chunk):
        part = slice(start, start + chunk)
        episodes = Episodes(scenes.x[part], scenes.y[part], task_model, game, positions=scenes.positions[part])
        beliefs = [episodes.belief]
        while not episodes.done:
            episodes.act(policy(episodes))
            beliefs.append(episodes.belief)
        logs.append((episodes.boxes, torch.stack(beliefs, dim=1)))
    return EpisodeLog(
        boxes=torch.cat([boxes for boxes, _ in logs]), beliefs=torch.cat([b for _, b in logs]), labels=scenes.y
    )
