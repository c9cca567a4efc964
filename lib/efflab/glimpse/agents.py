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
second CPU thread only adds hand-offs. Agents therefore train on one CPU thread each, and the seeds train side by
side in separate processes (``AgentBudget.workers``), one per core where there are enough.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import queue
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from tqdm.auto import tqdm

from efflab.cache import atomic_write
from efflab.data.canvas import Canvases
from efflab.glimpse.env import GlimpseVecEnv
from efflab.glimpse.features import KeypointExtractor
from efflab.glimpse.sensor import Sensor
from efflab.glimpse.task_model import GlimpseClassifier, freeze
from efflab.results import check_name, provenance, write_json
from efflab.runtime import Run, Timer, torch_threads
from efflab.train import progress_enabled
from efflab.validation import check_int, check_positive


@dataclass(frozen=True)
class AgentBudget:
    """SAC's size and training length, per seed; :meth:`for_run` picks quick or full.

    ``steps`` counts transitions (one glimpse of one episode); each batched step of ``n_envs`` episodes is
    followed by ``gradient_steps`` updates on ``batch_size`` transitions from the replay buffer. ``workers``
    seeds train at the same time, each in its own process on one thread (1: one after the other, here).
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
        """4,744 updates per seed, about a minute on one core; the three seeds train side by side (about
        100 s in all on two cores, against 170 s one after another)."""
        return cls(steps=20_000, workers=3)

    @classmethod
    def full(cls) -> AgentBudget:
        """Five seeds side by side, each with twice the quick budget (9,744 updates, about two minutes on one
        core). Networks twice as wide would cost twice as much per update (25 against 12 ms on one core), so
        full mode spends its time on more updates instead."""
        return cls(steps=40_000, seeds=5, workers=5)

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
    """Counts transitions on ``bar`` and logs the mean return of finished episodes every ``every`` transitions.

    ``bar`` is a tqdm bar, or in a worker process a :class:`_RelayBar` that passes the counts to the parent.
    """

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
            self.bar.set_postfix(mean_return=f"{self.log.mean_return[-1]:.3f}")
            self.returns = []
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class _RelayBar:
    """The parts of a tqdm bar that :class:`_Progress` uses, sent over a queue to the bar in the parent."""

    def __init__(self, relay, seed: int):
        self.relay, self.seed = relay, seed

    def update(self, n: int) -> None:
        self.relay.put((self.seed, "update", n))

    def set_postfix(self, **values) -> None:
        self.relay.put((self.seed, "set_postfix", values))

    def close(self) -> None:
        pass  # the parent closes its bar when the worker's result arrives


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
    bar=None,
) -> tuple[SAC, TrainingLog]:
    """Train a fresh SAC agent for ``budget.steps`` transitions on ``scenes``; return it and its log.

    Progress goes to a new tqdm bar (shown unless ``progress`` or the environment turns it off), or to ``bar``.
    """
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
    agent.set_logger(Logger(folder=None, output_formats=[]))  # the default makes an empty folder in /tmp per run
    log = TrainingLog(total_steps=budget.steps)
    every = max(budget.steps // 20, budget.n_envs * glimpses)
    if bar is None:
        bar = tqdm(total=budget.steps, desc=f"SAC seed {seed}", disable=not progress_enabled(progress))
    callback = _Progress(bar, log, every)
    with torch_threads(1), Timer() as timer:
        agent.learn(budget.steps, callback=callback)
    log.seconds = timer.seconds
    return agent, log


_relay = None  # in a worker process: the queue that carries progress to the parent


def _open_relay(relay) -> None:
    global _relay
    _relay = relay


def _train_in_worker(job: dict) -> tuple[bytes, TrainingLog]:
    """One seed in a worker process: rebuild the frozen task model, train, return the agent as zip bytes."""
    task_model = GlimpseClassifier(job.pop("task_config"))
    task_model.load_state_dict(job.pop("task_state"))
    agent, log = train_agent(task_model=freeze(task_model), bar=_RelayBar(_relay, job["seed"]), **job)
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

    Each agent trains on one thread, so on a machine with several cores seeds are trained side by side. Workers
    are started with "spawn" (a fresh interpreter, safe next to torch's threads); each gets the scenes and the
    task model's weights, reports its progress over a queue to a bar per seed here, and sends back its agent as
    stable-baselines3 zip bytes. The same seed gives the same agent either way.
    """
    common = {"scenes": scenes, "sensor": sensor, "budget": budget, "glimpses": glimpses}
    common["observation_grid"] = observation_grid
    if budget.workers == 1 or len(seeds) == 1:
        return [train_agent(task_model=task_model, seed=seed, progress=progress, **common) for seed in seeds]
    state = {name: tensor.cpu() for name, tensor in task_model.state_dict().items()}
    jobs = [{**common, "seed": seed, "task_config": task_model.config, "task_state": state} for seed in seeds]
    context = multiprocessing.get_context("spawn")
    relay = context.Queue()
    show = progress_enabled(progress)
    bars = {seed: tqdm(total=budget.steps, desc=f"SAC seed {seed}", disable=not show) for seed in seeds}
    workers = min(budget.workers, len(seeds))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_open_relay, initargs=(relay,)) as pool:
        futures = [pool.submit(_train_in_worker, job) for job in jobs]
        while not all(future.done() for future in futures):
            _drain(relay, bars, timeout=0.25)
        results = [future.result() for future in futures]  # raises here if a worker failed
    _drain(relay, bars, timeout=0)
    for bar in bars.values():
        bar.close()
    return [(SAC.load(io.BytesIO(blob), device="cpu"), log) for blob, log in results]


def _drain(relay, bars: dict, *, timeout: float) -> None:
    """Apply every progress message waiting in ``relay`` to its seed's bar (waiting up to ``timeout`` for one)."""
    try:
        message = relay.get(timeout=timeout) if timeout else relay.get_nowait()
        while True:
            seed, method, value = message
            if method == "update":
                bars[seed].update(value)
            else:
                bars[seed].set_postfix(**value)
            message = relay.get_nowait()
    except queue.Empty:
        pass


POLICY_SUFFIX = "_policy"


def save_agent(agent: SAC, directory, name: str, *, metadata: dict, run: Run | None = None) -> Path:
    """Write ``<directory>/<name>_policy.zip`` (stable-baselines3's format) and a JSON of where it came from,
    each atomically, so that an interrupted save never leaves a half-written policy.

    ``metadata`` names the game it was trained for (scenes, sensor, glimpses, observation grid), so that
    :func:`load_agent` can refuse a policy that would read observations of another shape or meaning.
    """
    check_name(name)
    path = Path(directory) / f"{name}{POLICY_SUFFIX}.zip"
    buffer = io.BytesIO()
    agent.save(buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    write_json({"metadata": metadata, "provenance": provenance(run)}, path.with_suffix(".json"))
    return path


def load_agent(directory, name: str, *, expected: dict) -> tuple[SAC, dict] | None:
    """The saved agent and its JSON, or None when ``directory`` holds none.

    A saved agent whose metadata disagrees with ``expected`` on any key raises a ValueError: its policy was
    trained for another game. So does one whose files cannot be read.
    """
    check_name(name)
    path = Path(directory) / f"{name}{POLICY_SUFFIX}.zip"
    if not path.exists():
        return None
    try:
        info = json.loads(path.with_suffix(".json").read_text())
        saved = info["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        message = f"the agent saved at {path} has no readable metadata JSON beside it ({error!r})"
        raise ValueError(message) from error
    differing = {key: (saved.get(key), value) for key, value in expected.items() if saved.get(key) != value}
    if differing:
        raise ValueError(f"the agent saved at {path} was trained for another game: {differing} (saved, expected)")
    try:
        agent = SAC.load(path, device="cpu")
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        message = f"the agent saved at {path} cannot be loaded ({error!r}); delete or regenerate it"
        raise ValueError(message) from error
    return agent, info


def metadata_for(scene_config, sensor: Sensor, glimpses: int, observation_grid: int) -> dict:
    """What an agent's policy depends on, as plain JSON."""
    return {
        "scenes": asdict(scene_config),
        "sensor": asdict(sensor),
        "glimpses": glimpses,
        "observation_grid": observation_grid,
    }
