"""Notebook 10's experiment in a few calls: the game's settings, the frozen task model, agents and baselines.

:class:`GlimpseExperiment` holds every size and budget: ``quick()`` for two CPU cores, ``full()`` for the GPU
machine (the task model trains on the GPU, five agents side by side on its CPU cores). The notebook never writes
a step count. Quick and full mode play the *same game* (canvas, sensor, number of glimpses,
observation), so a policy trained in full mode runs unchanged in a quick-mode notebook.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from stable_baselines3 import SAC

from efflab.data.canvas import Canvases
from efflab.glimpse.agents import AgentBudget, TrainingLog, metadata_for, train_agents
from efflab.glimpse.policies import BASELINES, EpisodeLog, agent_policy, play
from efflab.glimpse.scenes import SceneConfig, load_scenes
from efflab.glimpse.sensor import Sensor
from efflab.glimpse.task_model import GlimpseClassifier, TaskModelBudget, cached_task_model
from efflab.runtime import Run
from efflab.validation import check_fraction, check_int

IDEAL_ACCURACY_GATE = 0.8  # below this the task model cannot read a well-placed glimpse: rewards would be noise


@dataclass(frozen=True)
class GlimpseExperiment:
    """The game (scenes, sensor, glimpses per episode, observation grid) and the budgets to learn it."""

    scenes: SceneConfig = field(default_factory=SceneConfig)
    glimpse_size: int = 8
    glimpses: int = 3
    observation_grid: int = 8
    task_model: TaskModelBudget = field(default_factory=TaskModelBudget.quick)
    agent: AgentBudget = field(default_factory=AgentBudget.quick)
    test_layouts: int = 2

    def __post_init__(self):
        check_int("glimpses", self.glimpses, low=1, high=64)
        check_int("observation_grid", self.observation_grid, low=1, high=self.scenes.canvas_size)
        check_int("test_layouts", self.test_layouts, low=1)

    @classmethod
    def quick(cls) -> GlimpseExperiment:
        return cls()

    @classmethod
    def full(cls) -> GlimpseExperiment:
        return cls(task_model=TaskModelBudget.full(), agent=AgentBudget.full(), test_layouts=5)

    @classmethod
    def for_run(cls, run: Run) -> GlimpseExperiment:
        return cls.quick() if run.quick else cls.full()

    @property
    def sensor(self) -> Sensor:
        return Sensor(canvas_size=self.scenes.canvas_size, glimpse_size=self.glimpse_size)

    @property
    def pixel_fraction(self) -> float:
        """Share of the scene's pixels an episode reads: every glimpse costs G² whatever its scale."""
        return self.glimpses * self.sensor.pixels_per_glimpse / self.scenes.canvas_size**2

    def metadata(self) -> dict:
        """What a trained policy depends on; saved beside it and checked when it is loaded."""
        return metadata_for(self.scenes, self.sensor, self.glimpses, self.observation_grid)

    def train_scenes(self, seed: int = 0) -> Canvases:
        return load_scenes("train", self.scenes, seed=seed)

    def test_scenes(self, seed: int = 0) -> Canvases:
        return load_scenes("test", SceneConfig(**{**asdict(self.scenes), "layouts": self.test_layouts}), seed=seed)

    def task_model_for(
        self, scenes: Canvases, run: Run, *, progress: bool | None = None
    ) -> tuple[GlimpseClassifier, pd.DataFrame]:
        """The frozen task model, trained on ``scenes`` (cached: a second run of the notebook loads it)."""
        model, history = cached_task_model(
            scenes,
            self.sensor,
            self.task_model,
            scene_key=asdict(self.scenes),
            seed=run.seed,
            device=run.device,
            progress=progress,
        )
        return model.cpu(), history

    def play(self, policy, scenes: Canvases, task_model: GlimpseClassifier) -> EpisodeLog:
        return play(policy, scenes, self.sensor, task_model, self.glimpses)

    def baselines(self, scenes: Canvases, task_model: GlimpseClassifier, seeds: list[int]) -> dict:
        """Episode logs of every baseline on ``scenes``: one per seed for ``random``, one for each fixed rule."""
        logs = {}
        for name, make in BASELINES.items():
            if name == "random":
                logs[name] = [self.play(make(seed), scenes, task_model) for seed in seeds]
            else:
                logs[name] = [self.play(make(), scenes, task_model)]
        return logs

    def train_agents(
        self,
        scenes: Canvases,
        task_model: GlimpseClassifier,
        run: Run,
        *,
        progress: bool | None = None,
    ) -> list[tuple[SAC, TrainingLog]]:
        """One SAC agent per seed ``run.seed, run.seed + 1, ...`` (``agent.seeds`` of them)."""
        return train_agents(
            scenes,
            self.sensor,
            task_model,
            self.agent,
            self.agent_seeds(run),
            glimpses=self.glimpses,
            observation_grid=self.observation_grid,
            progress=progress,
        )

    def agent_seeds(self, run: Run) -> list[int]:
        return [run.seed + offset for offset in range(self.agent.seeds)]

    def agent_logs(self, agents: list[SAC], scenes: Canvases, task_model: GlimpseClassifier) -> list[EpisodeLog]:
        return [self.play(agent_policy(agent, self.observation_grid), scenes, task_model) for agent in agents]


def ideal_accuracy(logs: dict[str, list[EpisodeLog]]) -> float:
    """Final accuracy of the ideal baseline (whole scene, then the sharpest box on the true digit)."""
    return float(logs["ideal"][0].accuracy()[-1])


def check_task_model(accuracy: float) -> None:
    """Stop before reinforcement learning when the task model cannot read an ideal glimpse.

    A reward is the change of the task model's score; if even a perfectly placed glimpse leaves the model unsure,
    every reward is noise and SAC learns nothing (the risk the paper's pre-training phase removes).
    """
    if accuracy < IDEAL_ACCURACY_GATE:
        raise RuntimeError(
            f"the task model reads ideal glimpses with accuracy {accuracy:.3f} < {IDEAL_ACCURACY_GATE}; "
            "train it longer (TaskModelBudget.steps) before training an agent"
        )


def accuracy_curves(logs: dict[str, list[EpisodeLog]]) -> dict[str, np.ndarray]:
    """Accuracy after 0..T glimpses, (seeds, T + 1) per name."""
    return {name: np.stack([log.accuracy() for log in runs]) for name, runs in logs.items()}


def summary_table(logs: dict[str, list[EpisodeLog]], *, step: int | None = None) -> pd.DataFrame:
    """Accuracy after ``step`` glimpses (default: all of them) per policy: mean, min and max over seeds."""
    rows = []
    for name, curve in accuracy_curves(logs).items():
        at = curve[:, -1 if step is None else step]
        rows.append({"policy": name, "accuracy": at.mean(), "min": at.min(), "max": at.max(), "seeds": len(at)})
    return pd.DataFrame(rows).set_index("policy")


def sides_by_step(logs: list[EpisodeLog]) -> np.ndarray:
    """Glimpse sides (N x seeds, T) pooled over the seeds' episodes."""
    return torch.cat([log.boxes[..., 2] for log in logs]).numpy()


def scale_pattern(logs: list[EpisodeLog], canvas_size: int, *, whole: float = 0.9) -> str:
    """In words, whether agents look coarse first and then zoom, from their logs (one per seed).

    "whole scene first": every seed's first glimpse is, on average, at least ``whole`` of the canvas side and
    wider than its last; "wider first": every first glimpse is wider than the last, but not that wide; otherwise
    "no consistent pattern".
    """
    check_fraction("whole", whole)
    first = np.array([log.mean_side()[0] for log in logs])
    last = np.array([log.mean_side()[-1] for log in logs])
    if (first > last).all() and (first >= whole * canvas_size).all():
        return "whole scene first"
    if (first > last).all():
        return "wider first"
    return "no consistent pattern"
