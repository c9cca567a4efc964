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

SAC's networks are so small that every update is hundreds of tiny operations: the GPU would wait on Python and a
second CPU thread only adds hand-offs. Agents therefore train on one CPU thread each, and several seeds can train
side by side in separate processes (``AgentBudget.workers``), which is what full mode does on a many-core machine.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from efflab.data.canvas import Canvases
from efflab.glimpse.env import GlimpseVecEnv
from efflab.glimpse.features import KeypointExtractor
from efflab.glimpse.sensor import Sensor
from efflab.glimpse.task_model import GlimpseClassifier, freeze
from efflab.results import check_name, provenance
from efflab.runtime import Run
from efflab.train import progress_enabled
from efflab.validation import check_int, check_positive


@dataclass(frozen=True)
class AgentBudget:
    """SAC's size and training length, per seed; :meth:`for_run` picks quick or full.

    ``steps`` counts transitions (one glimpse of one episode); each batched step of ``n_envs`` episodes is
    followed by ``gradient_steps`` updates on ``batch_size`` transitions from the replay buffer. ``workers``
    seeds train at the same time, each in its own process (1: one after the other, with live progress bars).
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
    seeds: int = 3
    workers: int = 1

    def __post_init__(self):
        check_int("steps", self.steps, low=1)
        check_int("n_envs", self.n_envs, low=1)
        check_int("gradient_steps", self.gradient_steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_positive("learning_rate", self.learning_rate)
        check_int("keypoints", self.keypoints, low=1)
        check_int("channels", self.channels, low=1)
        check_int("learning_starts", self.learning_starts, low=0, high=self.steps)
        check_int("buffer_size", self.buffer_size, low=self.batch_size)
        check_positive("initial_temperature", self.initial_temperature)
        check_int("seeds", self.seeds, low=1)
        check_int("workers", self.workers, low=1)

    @property
    def updates(self) -> int:
        """Gradient updates per agent (after the random warm-up)."""
        return (self.steps - self.learning_starts) // self.n_envs * self.gradient_steps

    @classmethod
    def quick(cls) -> AgentBudget:
        """About 45 s per seed on one core of a laptop CPU: 4,750 updates."""
        return cls(steps=20_000)

    @classmethod
    def full(cls) -> AgentBudget:
        """Five seeds side by side, each with 30,000 updates and wider networks."""
        return cls(
            steps=64_000, n_envs=32, gradient_steps=16, batch_size=256, hidden=(256, 256), channels=16,
            seeds=5, workers=5,
        )  # fmt: skip

    @classmethod
    def for_run(cls, run: Run) -> AgentBudget:
        return cls.quick() if run.quick else cls.full()


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
    """A tqdm bar over transitions, and the mean return of finished episodes every ``every`` transitions."""

    def __init__(self, total: int, log: TrainingLog, every: int, show: bool, description: str):
        super().__init__()
        self.bar = tqdm(total=total, desc=description, disable=not show)
        self.log, self.every, self.returns, self.running = log, every, [], None

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
            self.bar.set_postfix(mean_return=f"{self.log.mean_return[-1]:.3f}")
            self.returns = []
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


@contextmanager
def one_cpu_thread():
    """Run torch's CPU operations on one thread, then restore the previous setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_agent(
    scenes: Canvases,
    sensor: Sensor,
    task_model: GlimpseClassifier,
    budget: AgentBudget,
    *,
    glimpses: int = 3,
    observation_grid: int = 8,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[SAC, TrainingLog]:
    """Train a fresh SAC agent for ``budget.steps`` transitions on ``scenes``; return it and its log."""
    env = GlimpseVecEnv(
        scenes,
        sensor,
        task_model.cpu(),
        n_envs=budget.n_envs,
        budget=glimpses,
        observation_grid=observation_grid,
        seed=seed,
    )
    extractor = {"grid": observation_grid, "keypoints": budget.keypoints, "channels": budget.channels}
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
    log = TrainingLog(total_steps=budget.steps)
    every = max(budget.steps // 20, budget.n_envs * glimpses)
    callback = _Progress(budget.steps, log, every, progress_enabled(progress), f"SAC seed {seed}")
    with one_cpu_thread():
        start = time.perf_counter()
        agent.learn(budget.steps, callback=callback)
        log.seconds = time.perf_counter() - start
    return agent, log


def _train_in_worker(job: dict) -> tuple[bytes, TrainingLog]:
    """One seed in a worker process: rebuild the frozen task model, train, return the agent as zip bytes."""
    task_model = GlimpseClassifier(job.pop("task_config"))
    task_model.load_state_dict(job.pop("task_state"))
    agent, log = train_agent(task_model=freeze(task_model), progress=False, **job)
    buffer = io.BytesIO()
    agent.save(buffer)
    return buffer.getvalue(), log


def train_agents(
    scenes: Canvases,
    sensor: Sensor,
    task_model: GlimpseClassifier,
    budget: AgentBudget,
    seeds: list[int],
    *,
    glimpses: int = 3,
    observation_grid: int = 8,
    progress: bool | None = None,
) -> list[tuple[SAC, TrainingLog]]:
    """One agent per seed: in this process one after another (``budget.workers == 1``), or in worker processes.

    Workers are started with "spawn" (a fresh interpreter, safe next to torch's threads); each gets the scenes
    and the task model's weights and sends back its agent as stable-baselines3 zip bytes.
    """
    common = {"scenes": scenes, "sensor": sensor, "budget": budget, "glimpses": glimpses}
    common["observation_grid"] = observation_grid
    if budget.workers == 1 or len(seeds) == 1:
        return [train_agent(task_model=task_model, seed=seed, progress=progress, **common) for seed in seeds]
    state = {name: tensor.cpu() for name, tensor in task_model.state_dict().items()}
    jobs = [{**common, "seed": seed, "task_config": task_model.config, "task_state": state} for seed in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(budget.workers, len(seeds)), mp_context=context) as pool:
        done = list(tqdm(pool.map(_train_in_worker, jobs), total=len(jobs), desc="SAC seeds in parallel",
                         disable=not progress_enabled(progress)))  # fmt: skip
    return [(SAC.load(io.BytesIO(blob), device="cpu"), log) for blob, log in done]


POLICY_SUFFIX = "_policy"


def save_agent(agent: SAC, directory, name: str, *, metadata: dict, run: Run | None = None) -> Path:
    """Write ``<directory>/<name>_policy.zip`` (stable-baselines3's format) and a JSON of where it came from.

    ``metadata`` names the game it was trained for (scenes, sensor, glimpses, observation grid), so that
    :func:`load_agent` can refuse a policy that would read observations of another shape or meaning.
    """
    check_name(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}{POLICY_SUFFIX}.zip"
    agent.save(path)
    info = {"metadata": metadata, "provenance": provenance(run)}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


def load_agent(directory, name: str, *, expected: dict) -> tuple[SAC, dict] | None:
    """The saved agent and its JSON, or None when ``directory`` holds none.

    A saved agent whose metadata disagrees with ``expected`` on any key raises a ValueError: its policy was
    trained for another game.
    """
    check_name(name)
    path = Path(directory) / f"{name}{POLICY_SUFFIX}.zip"
    if not path.exists():
        return None
    info = json.loads(path.with_suffix(".json").read_text())
    saved = info["metadata"]
    differing = {key: (saved.get(key), value) for key, value in expected.items() if saved.get(key) != value}
    if differing:
        raise ValueError(f"the agent saved at {path} was trained for another game: {differing} (saved, expected)")
    return SAC.load(path, device="cpu"), info


def metadata_for(scene_config, sensor: Sensor, glimpses: int, observation_grid: int) -> dict:
    """What an agent's policy depends on, as plain JSON."""
    return {
        "scenes": asdict(scene_config),
        "sensor": asdict(sensor),
        "glimpses": glimpses,
        "observation_grid": observation_grid,
    }
