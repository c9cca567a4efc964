"""The learner: Soft Actor-Critic agents that choose glimpses, how they are trained, saved and loaded.

**Soft Actor-Critic** (Haarnoja et al. 2018, arXiv 1801.01290) is the learner AdaGlimpse uses (arXiv 2404.03482;
the authors' code trains it with torchrl). It keeps two critics ``Q(s, a)``, trained towards
``r + gamma (min Q_target(s', a') - alpha log pi(a'|s'))``, an actor that maximises
``min Q(s, a) - alpha log pi(a|s)`` with a tanh-squashed Gaussian over actions, and a temperature ``alpha`` tuned
so that the policy's entropy stays near a target (-3 for three action numbers). We use stable-baselines3's
implementation on the batched :class:`~efflab.glimpse.env.GlimpseVecEnv`, with small MLPs on top of a keypoint
layer (:mod:`efflab.glimpse.features`) that tells actor and critic where things are.

Two departures from the library's defaults, both about our tiny scale: the temperature starts at 0.1 instead of
1 (with a few thousand updates, the default spends most of them exploring at random), and the actor and the
critics each own their keypoint layer (sharing it, trained by the critic alone, learned far less here).

SAC's networks are so small that every update is hundreds of tiny operations: a GPU would wait on Python and a
second CPU thread only adds hand-offs. So every agent is one :class:`AgentTask` (its game, budget, seed, the
training scenes and the frozen task model's weights), and the agents of an experiment (seeds, free and fixed
scale) train side by side through :func:`efflab.parallel.run_all`, one task per core, each with a live bar.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from efflab.cache import atomic_write
from efflab.data.canvas import Canvases
from efflab.experiment import Budget
from efflab.glimpse.env import Game, GlimpseVecEnv, check_task_model
from efflab.glimpse.features import KeypointExtractor
from efflab.glimpse.task_model import GlimpseClassifier, TaskModelConfig, freeze
from efflab.parallel import task_progress
from efflab.results import check_name, read_beside, write_beside
from efflab.runtime import Run, Timer, seed_everything, torch_threads
from efflab.validation import check_fraction, check_int, check_positive, check_seed


@dataclass(frozen=True)
class AgentBudget(Budget):
    """SAC's size and training length, per agent.

    ``steps`` counts transitions (one glimpse of one episode); each batched step of ``n_envs`` episodes is
    followed by ``gradient_steps`` updates on ``batch_size`` transitions from the replay buffer, once
    ``learning_starts`` random transitions have been collected.
    """

    steps: int
    n_envs: int = 32
    gradient_steps: int = 8
    batch_size: int = 128
    learning_rate: float = 1e-3
    hidden: tuple[int, ...] = (128, 128)
    keypoints: int = 8
    channels: int = 8
    learning_starts: int = 1000
    buffer_size: int = 100_000
    gamma: float = 0.99
    initial_temperature: float = 0.1

    def __post_init__(self):
        check_int("steps", self.steps, low=1)
        check_int("n_envs", self.n_envs, low=1)
        check_int("gradient_steps", self.gradient_steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_positive("learning_rate", self.learning_rate)
        if not isinstance(self.hidden, tuple) or not self.hidden:
            raise ValueError(f"hidden={self.hidden!r} is not allowed; expected a non-empty tuple of layer widths")
        for width in self.hidden:
            check_int("hidden", width, low=1)
        check_int("keypoints", self.keypoints, low=1)
        check_int("channels", self.channels, low=1)
        check_int("learning_starts", self.learning_starts, low=0, high=self.steps)
        check_int("buffer_size", self.buffer_size, low=self.batch_size)
        check_fraction("gamma", self.gamma, inclusive=True)
        check_positive("initial_temperature", self.initial_temperature)

    @property
    def updates(self) -> int:
        """Gradient updates per agent (after the random warm-up)."""
        return (self.steps - self.learning_starts) // self.n_envs * self.gradient_steps

    @classmethod
    def quick(cls) -> AgentBudget:
        """2,000 updates of networks half as wide as full mode's, on half-size batches: about 45 s per agent on
        one core. With 4,744 updates of (128, 128) networks a seed reached about 0.69 held-out accuracy on the
        quick task model, with these about 0.5."""
        return cls(steps=9_000, batch_size=64, hidden=(64, 64))

    @classmethod
    def full(cls) -> AgentBudget:
        """9,744 updates of (128, 128) networks on batches of 128: about two minutes per agent on one core."""
        return cls(steps=40_000)


@dataclass
class TrainingLog:
    """Mean return of the episodes finished between progress updates, and the wall time of the run."""

    steps: list[int] = field(default_factory=list)
    mean_return: list[float] = field(default_factory=list)
    seconds: float = 0.0
    total_steps: int = 0

    @property
    def steps_per_second(self) -> float:
        return self.total_steps / self.seconds if self.seconds else float("nan")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"step": self.steps, "mean_return": self.mean_return})


class _Progress(BaseCallback):
    """Counts transitions on ``bar`` and logs the mean return of finished episodes every ``every`` transitions."""

    def __init__(self, bar, log: TrainingLog, every: int):
        super().__init__()
        self.bar, self.log, self.every, self.returns, self.running = bar, log, every, [], None

    def _on_step(self) -> bool:
        rewards, dones = self.locals["rewards"], self.locals["dones"]
        self.running = rewards if self.running is None else self.running + rewards
        if dones.all():  # all episodes of the batch end together
            self.returns.extend(self.running.tolist())
            self.running = None
        self.bar.update(len(rewards))
        if self.num_timesteps // self.every > len(self.log.steps) and self.returns:
            self.log.steps.append(self.num_timesteps)
            self.log.mean_return.append(float(np.mean(self.returns)))
            self.bar.set_postfix(mean_return=self.log.mean_return[-1])
            self.returns = []
        return True


def train_agent(
    scenes: Canvases, task_model: GlimpseClassifier, game: Game, budget: AgentBudget, *, seed: int = 0
) -> tuple[SAC, TrainingLog]:
    """Train a fresh SAC agent for ``budget.steps`` transitions of ``game`` on ``scenes``; return it and its log.

    Progress goes to a :func:`efflab.parallel.task_progress` bar, which :func:`~efflab.parallel.run_all` shows
    live (and which is silent when called outside it).
    """
    check_seed(seed)
    check_task_model(task_model)
    if not isinstance(budget, AgentBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected an AgentBudget")
    env = GlimpseVecEnv(scenes, task_model.cpu(), game, n_envs=budget.n_envs, seed=seed)
    extractor = {"grid": game.observation_grid, "keypoints": budget.keypoints, "channels": budget.channels}
    agent = SAC(
        "MlpPolicy",
        env,
        learning_rate=budget.learning_rate,
        buffer_size=budget.buffer_size,
        learning_starts=budget.learning_starts,
        batch_size=budget.batch_size,
        gamma=budget.gamma,
        ent_coef=f"auto_{budget.initial_temperature}",
        train_freq=1,
        gradient_steps=budget.gradient_steps,
        policy_kwargs={
            "net_arch": list(budget.hidden),
            "features_extractor_class": KeypointExtractor,
            "features_extractor_kwargs": extractor,
            "share_features_extractor": False,
        },
        seed=seed,
        device="cpu",
    )
    agent.set_logger(Logger(folder=None, output_formats=[]))  # the default makes an empty folder in /tmp per run
    log = TrainingLog(total_steps=budget.steps)
    every = max(budget.steps // 20, budget.n_envs * game.glimpses)
    scale = "free scale" if game.fixed_side is None else f"fixed side {game.fixed_side}"
    with task_progress(budget.steps, f"SAC {scale}, seed {seed}") as bar, Timer() as timer:
        agent.learn(budget.steps, callback=_Progress(bar, log, every))
    log.seconds = timer.seconds
    return agent, log


@dataclass(frozen=True)
class AgentTask:
    """One agent to train, everything it needs inside: picklable, so :func:`efflab.parallel.run_all` can send it
    to any worker. The task model travels as its config and weights."""

    game: Game
    budget: AgentBudget
    seed: int
    scenes: Canvases
    task_config: TaskModelConfig
    task_state: dict

    def __post_init__(self):
        kinds = {"game": Game, "budget": AgentBudget, "task_config": TaskModelConfig, "task_state": dict}
        for name, kind in kinds.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise ValueError(
                    f"{name} of type {type(value).__name__} is not allowed; expected a {kind.__name__}"
                )
        check_seed(self.seed)
        self.game.check_scenes(self.scenes)


@dataclass(frozen=True)
class TrainedAgent:
    """What one :class:`AgentTask` returns: the agent as stable-baselines3 zip bytes, and its training log."""

    game: Game
    seed: int
    policy: bytes
    log: TrainingLog

    def agent(self) -> SAC:
        return SAC.load(io.BytesIO(self.policy), device="cpu")


def agent_task(
    scenes: Canvases, task_model: GlimpseClassifier, game: Game, budget: AgentBudget, seed: int
) -> AgentTask:
    check_task_model(task_model)
    state = {name: tensor.detach().cpu() for name, tensor in task_model.state_dict().items()}
    return AgentTask(game, budget, seed, scenes, task_model.config, state)


def train_agent_task(task: AgentTask) -> TrainedAgent:
    """Train the agent of ``task`` (seeded by it alone: the same task gives the same agent on every backend)."""
    seed_everything(task.seed)
    task_model = GlimpseClassifier(task.task_config)
    task_model.load_state_dict(task.task_state)
    with torch_threads(1):
        agent, log = train_agent(task.scenes, freeze(task_model), task.game, task.budget, seed=task.seed)
    buffer = io.BytesIO()
    agent.save(buffer)
    return TrainedAgent(task.game, task.seed, buffer.getvalue(), log)


POLICY_SUFFIX = "_policy"


def save_agent(agent: SAC, directory, name: str, *, metadata: dict, run: Run | None = None) -> Path:
    """Write ``<directory>/<name>_policy.zip`` (stable-baselines3's format) and a JSON of where it came from,
    each atomically, so that an interrupted save never leaves a half-written policy.

    ``metadata`` names the game it was trained for (scenes, sensor, glimpses, observation grid), so that
    :func:`load_agent` can refuse a policy that would read observations of another shape or meaning.
    """
    check_name(name)
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata={metadata!r} is not allowed; expected a dict describing the game")
    path = Path(directory) / f"{name}{POLICY_SUFFIX}.zip"
    buffer = io.BytesIO()
    agent.save(buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    write_beside(path, metadata, run)
    return path


def load_agent(directory, name: str, *, expected: dict) -> tuple[SAC, dict] | None:
    """The saved agent and its JSON, or None when ``directory`` holds none.

    A saved agent whose metadata disagrees with ``expected`` on any key raises a ValueError: its policy was
    trained for another game. So does one whose files cannot be read.
    """
    check_name(name)
    if not isinstance(expected, dict):
        raise ValueError(f"expected={expected!r} is not allowed; expected a dict describing the game")
    path = Path(directory) / f"{name}{POLICY_SUFFIX}.zip"
    if not path.exists():
        return None
    info = read_beside(path, expected)
    try:
        agent = SAC.load(path, device="cpu")
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        message = f"the agent saved at {path} cannot be loaded ({error!r}); delete or regenerate it"
        raise ValueError(message) from error
    return agent, info
