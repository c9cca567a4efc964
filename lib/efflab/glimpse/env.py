"""The glimpse game as a reinforcement-learning environment (gymnasium, and a batched stable-baselines3 form).

One episode, after AdaGlimpse (arXiv 2404.03482, and the authors' ``architectures/rl_glimpse.py``):

1. A cluttered canvas is drawn; nothing has been seen yet, and the task model's belief is its prior.
2. For ``glimpses`` steps the agent picks an action ``a`` in ``[-1, 1]^3``; ``(a + 1) / 2 = (y, x, z)`` places a
   glimpse (:class:`efflab.glimpse.sensor.Sensor`). The environment reads it, adds it to the memory and asks the
   frozen task model for its new belief.
3. The reward is the improvement of the task model's score, ``r_t = score_t - score_{t-1}`` (the paper's
   default "diff" reward). The score is the log-probability of the true class: the paper scores classification
   by ``-KL(teacher || model)``, which is exactly this when the teacher is the label. (Without a teacher the
   paper's code uses the plain probability; the log gives larger rewards for lifting an unlikely truth.) The
   rewards of an episode add up to ``score_T - score_0``: maximising the return maximises how sure the model
   ends up of the truth.
4. The episode ends after ``glimpses`` glimpses.

**The game** (:class:`Game`) is one frozen object: the scenes' layout, the sensor's reading size, the number of
glimpses per episode, the observation grid, and optionally a *fixed scale*. With ``fixed_side`` set, the agent's
scale number ``z`` is overwritten by the one that gives that side, so it chooses only where to look: the
ablation behind the authors' ``--fixed-scale`` option, which separates what learning where to look buys from
what choosing the scale adds.

The paper exposes ``[0, 1]^3`` actions; we expose ``[-1, 1]^3`` and map inside, because SAC squashes actions with
tanh and stable-baselines3 asks for a symmetric, normalised box.

**What the agent observes.** The paper's agent reads the encoder's tokens, their boxes, attention importances and
raw patches. Ours reads a picture of what has been seen: the two-channel memory canvas (intensities painted where
glimpses fell, and the resolution each pixel was seen at) average-pooled to ``observation_grid`` squared cells,
and a one-hot of how many glimpses were taken. It does not read the task model's belief, so a trained policy keeps
working when the task model is retrained. Like the paper's agent, it chooses the first glimpse from an empty
memory: looking at the whole scene first is something it has to learn.

Every episode of a batch advances in lock-step (all take the same number of glimpses), so :class:`Episodes`
runs ``B`` of them with one sensor call and one task-model call per step. :class:`GlimpseEnv` is the
one-episode gymnasium form, :class:`GlimpseVecEnv` the batched form that stable-baselines3 trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from efflab.data.canvas import Canvases
from efflab.data.digits import check_labels
from efflab.glimpse.scenes import SceneConfig
from efflab.glimpse.sensor import Sensor
from efflab.glimpse.task_model import GlimpseClassifier, check_positions
from efflab.validation import check_int, check_seed


def check_glimpses(glimpses) -> None:
    check_int("glimpses", glimpses, low=1, high=64)


@dataclass(frozen=True)
class Game:
    """Everything an episode's rules depend on, in one frozen, JSON-describable object.

    ``scenes`` lays out the canvases, ``glimpse_size`` is the side ``G`` of every reading, ``glimpses`` the
    number of glimpses per episode, ``observation_grid`` the side of the pooled memory the agent observes, and
    ``fixed_side`` (None: the agent chooses the scale) the side every glimpse of a fixed-scale agent has.
    """

    scenes: SceneConfig = field(default_factory=SceneConfig)
    glimpse_size: int = 8
    glimpses: int = 3
    observation_grid: int = 8
    fixed_side: int | None = None

    def __post_init__(self):
        if not isinstance(self.scenes, SceneConfig):
            raise ValueError(f"scenes={self.scenes!r} is not allowed; expected a SceneConfig")
        check_glimpses(self.glimpses)
        check_int("glimpse_size", self.glimpse_size, low=1, high=self.scenes.canvas_size)
        check_int("observation_grid", self.observation_grid, low=1, high=self.scenes.canvas_size)
        if self.fixed_side is not None:
            check_int("fixed_side", self.fixed_side, low=self.glimpse_size, high=self.scenes.canvas_size)

    @property
    def sensor(self) -> Sensor:
        return Sensor(canvas_size=self.scenes.canvas_size, glimpse_size=self.glimpse_size)

    @property
    def pixel_fraction(self) -> float:
        """Share of the scene's pixels an episode reads: every glimpse costs G² whatever its scale."""
        return self.glimpses * self.sensor.pixels_per_glimpse / self.scenes.canvas_size**2

    def with_fixed_side(self, side: int | None) -> Game:
        """The same game with the scale fixed to ``side`` (None: free again)."""
        return replace(self, fixed_side=side)

    def where(self, actions) -> Tensor:
        """Glimpse coordinates (B, 3) for actions (B, 3) in [-1, 1]; with a fixed side, ``z`` is overwritten."""
        where = where_from_actions(actions)
        if self.fixed_side is not None:
            box = torch.tensor([[0, 0, self.fixed_side]])
            where[:, 2] = self.sensor.where_for(box)[0, 2]
        return where

    def metadata(self) -> dict:
        """What a trained policy depends on, as plain JSON (saved beside a policy, checked when loading it)."""
        return {
            "scenes": asdict(self.scenes),
            "sensor": asdict(self.sensor),
            "glimpses": self.glimpses,
            "observation_grid": self.observation_grid,
            "fixed_side": self.fixed_side,
        }

    def check_scenes(self, scenes: Canvases) -> None:
        if not isinstance(scenes, Canvases):
            raise ValueError(f"scenes of type {type(scenes).__name__} are not allowed; expected Canvases")
        size = self.scenes.canvas_size
        if len(scenes) == 0 or scenes.x.shape[1:] != (1, size, size):
            raise ValueError(
                f"scenes with canvases of shape {tuple(scenes.x.shape)} are not allowed; expected (N >= 1, 1, "
                f"{size}, {size}) to match the game"
            )


def where_from_actions(actions) -> Tensor:
    """Map actions (B, 3) in [-1, 1] to glimpse coordinates (y, x, z) in [0, 1]; anything else is an error."""
    actions = torch.as_tensor(np.asarray(actions, dtype=np.float64))
    if actions.ndim != 2 or actions.shape[1] != 3:
        raise ValueError(f"actions with shape {tuple(actions.shape)} are not allowed; expected (B, 3)")
    if not torch.isfinite(actions).all() or (actions.abs() > 1).any():
        raise ValueError(
            f"actions are not allowed: got values in [{actions.min().item():.3g}, {actions.max().item():.3g}]; "
            "expected every component in [-1, 1] (the action space)"
        )
    return (actions + 1) / 2


def actions_from_where(where: Tensor) -> np.ndarray:
    """The inverse of :func:`where_from_actions`, as float32 actions."""
    return (2 * torch.as_tensor(where, dtype=torch.float64) - 1).clamp(-1, 1).numpy().astype(np.float32)


class Episodes:
    """``B`` glimpse episodes of ``game`` over ``canvases`` (B, 1, H, W) with ``labels`` (B,), advancing together.

    ``positions`` (the digits' corners) are kept for scripted policies that cheat on purpose (the ideal baseline);
    the agent never sees them.

    State: ``readings`` (B, glimpses, G, G) and ``boxes`` (B, glimpses, 3) of the glimpses taken so far (the
    first ``step`` entries are filled), the memory canvas (B, 2, H, W), the task model's belief (B, 10) and score
    (B,).
    """

    def __init__(
        self,
        canvases: Tensor,
        labels: Tensor,
        task_model: GlimpseClassifier,
        game: Game,
        *,
        positions: Tensor | None = None,
    ):
        if not isinstance(game, Game):
            raise ValueError(f"game={game!r} is not allowed; expected a Game")
        game.sensor.check_canvases(canvases)
        check_labels("labels", labels, count=len(canvases))
        if positions is not None:
            check_positions(positions, game.sensor)
        check_task_model(task_model)
        self.canvases, self.labels, self.positions = canvases, torch.as_tensor(labels, dtype=torch.long), positions
        self.game, self.sensor, self.task_model, self.glimpses = game, game.sensor, task_model, game.glimpses
        n, size = len(canvases), game.glimpse_size
        self.readings = torch.zeros(n, self.glimpses, size, size)
        self.boxes = torch.zeros(n, self.glimpses, 3, dtype=torch.long)
        self.memory = self.sensor.empty_memory(n)
        self.step = 0
        self.belief = self._belief()
        self.score = self._score(self.belief)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def done(self) -> bool:
        return self.step == self.glimpses

    def _belief(self) -> Tensor:
        device = next(self.task_model.parameters()).device
        with torch.no_grad():
            logits = self.task_model(
                self.readings[:, : self.step].to(device), self.boxes[:, : self.step].to(device)
            )
        return logits[:, -1].softmax(-1).cpu()

    def _score(self, belief: Tensor) -> Tensor:
        """Log-probability of the true class, floored at log(1e-4) so one hopeless belief cannot dominate."""
        return belief.gather(1, self.labels[:, None])[:, 0].clamp(min=1e-4).log()

    def take(self, where: Tensor) -> Tensor:
        """Take one glimpse per episode at coordinates ``where`` (B, 3) in [0, 1]; return the rewards (B,)."""
        if self.done:
            raise RuntimeError(f"the episodes are over: all {self.glimpses} glimpses were taken; start new ones")
        boxes = self.sensor.boxes(where)
        self._check_count("where", boxes)
        readings = self.sensor.read(self.canvases, boxes)
        self.readings[:, self.step] = readings
        self.boxes[:, self.step] = boxes
        self.memory = self.sensor.paint(self.memory, readings, boxes)
        self.step += 1
        self.belief = self._belief()
        score = self._score(self.belief)
        reward, self.score = score - self.score, score
        return reward

    def act(self, actions) -> Tensor:
        """One glimpse per episode for actions (B, 3) in [-1, 1] under the game's rules; return the rewards."""
        where = self.game.where(actions)
        self._check_count("actions", where)
        return self.take(where)

    def _check_count(self, name: str, rows: Tensor) -> None:
        if len(rows) != len(self):
            raise ValueError(
                f"{name} with {len(rows)} rows are not allowed; expected one per episode ({len(self)})"
            )

    def observation(self) -> np.ndarray:
        """What the agent sees: the memory pooled to the game's observation grid (2 channels) and a one-hot step
        count."""
        pooled = F.adaptive_avg_pool2d(self.memory, self.game.observation_grid).flatten(1)
        step = F.one_hot(torch.full((len(self),), self.step), self.glimpses + 1).float()
        return torch.cat([pooled, step], dim=1).clamp(0, 1).numpy().astype(np.float32)


def check_task_model(task_model) -> None:
    if not isinstance(task_model, GlimpseClassifier):
        raise ValueError(
            f"task_model of type {type(task_model).__name__} is not allowed; expected a GlimpseClassifier"
        )


def observation_space(grid: int, glimpses: int) -> spaces.Box:
    return spaces.Box(0.0, 1.0, shape=(2 * grid * grid + glimpses + 1,), dtype=np.float32)


def action_space() -> spaces.Box:
    """A fresh ``[-1, 1]^3`` box for each environment (a shared one would share its sampling generator)."""
    return spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)


class GlimpseEnv(gym.Env):
    """One glimpse episode of ``game`` at a time over a pool of ``scenes`` (a gymnasium environment).

    ``reset(seed=..., options={"index": i})`` starts on scene ``i``; without an index the scene is drawn with the
    environment's seeded generator. ``info`` carries the glimpse box, the belief and the score.
    """

    metadata = {"render_modes": []}

    def __init__(self, scenes: Canvases, task_model: GlimpseClassifier, game: Game):
        if not isinstance(game, Game):
            raise ValueError(f"game={game!r} is not allowed; expected a Game")
        game.check_scenes(scenes)
        check_task_model(task_model)
        self.scenes, self.task_model, self.game = scenes, task_model, game
        self.observation_space = observation_space(game.observation_grid, game.glimpses)
        self.action_space = action_space()
        self.episodes: Episodes | None = None

    def _info(self) -> dict:
        episodes = self.episodes
        box = episodes.boxes[0, episodes.step - 1].tolist() if episodes.step else None
        return {"box": box, "belief": episodes.belief[0].numpy(), "score": float(episodes.score[0])}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            check_seed(seed)
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options={options!r} is not allowed; expected a dict such as {{'index': 0}} or None")
        super().reset(seed=seed)
        index = (options or {}).get("index")
        if index is None:
            index = int(self.np_random.integers(len(self.scenes)))
        check_int("index", index, low=0, high=len(self.scenes) - 1)
        chosen = slice(index, index + 1)
        self.episodes = Episodes(self.scenes.x[chosen], self.scenes.y[chosen], self.task_model, self.game)
        return self.episodes.observation()[0], self._info()

    def step(self, action):
        if self.episodes is None:
            raise RuntimeError("call reset() before step()")
        reward = float(self.episodes.act(np.asarray(action, dtype=np.float64).reshape(1, -1))[0])
        return self.episodes.observation()[0], reward, self.episodes.done, False, self._info()


class GlimpseVecEnv(VecEnv):
    """``n_envs`` glimpse episodes of ``game`` stepped as one batch, for stable-baselines3.

    All episodes end together (a fixed number of glimpses); they are then restarted on fresh scenes, and, as
    stable-baselines3 expects, each finished episode's last observation is passed in
    ``info["terminal_observation"]``.
    """

    def __init__(
        self, scenes: Canvases, task_model: GlimpseClassifier, game: Game, *, n_envs: int = 16, seed: int = 0
    ):
        check_int("n_envs", n_envs, low=1)
        check_seed(seed)
        if not isinstance(game, Game):
            raise ValueError(f"game={game!r} is not allowed; expected a Game")
        game.check_scenes(scenes)
        check_task_model(task_model)
        self.scenes, self.task_model, self.game = scenes, task_model, game
        self.render_mode = None
        self.generator = torch.Generator().manual_seed(seed)
        self.episodes: Episodes | None = None
        self._actions: np.ndarray | None = None
        super().__init__(n_envs, observation_space(game.observation_grid, game.glimpses), action_space())

    def _start(self) -> np.ndarray:
        chosen = torch.randint(0, len(self.scenes), (self.num_envs,), generator=self.generator)
        self.episodes = Episodes(self.scenes.x[chosen], self.scenes.y[chosen], self.task_model, self.game)
        return self.episodes.observation()

    def seed(self, seed: int | None = None) -> list[int | None]:
        """Seed the next :meth:`reset` (stable-baselines3's interface); the seed is checked now."""
        if seed is not None:
            check_seed(seed)
        return super().seed(seed)

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.generator.manual_seed(self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        return self._start()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if self.episodes is None:
            raise RuntimeError("call reset() before step()")
        rewards = self.episodes.act(self._actions).numpy().astype(np.float32)
        observations = self.episodes.observation()
        dones = np.full(self.num_envs, self.episodes.done)
        infos = [{} for _ in range(self.num_envs)]
        if self.episodes.done:
            for info, last in zip(infos, observations, strict=True):
                info["terminal_observation"] = last
                info["TimeLimit.truncated"] = False
            observations = self._start()
        return observations, rewards, dones, infos

    def close(self) -> None:
        self.episodes = None

    def _indices(self, indices) -> Sequence[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices=None) -> list:
        return [getattr(self, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list:
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]
