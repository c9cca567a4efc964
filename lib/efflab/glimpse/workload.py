"""The work of a budget of notebook 10, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

import torch

from efflab.glimpse.agents import AgentBudget, train_agent
from efflab.glimpse.experiment import GlimpseBudget, train_scenes
from efflab.glimpse.task_model import GlimpseClassifier, TaskModelConfig, episode_loss, freeze, random_episodes
from efflab.workload import Work, training_step


def workload(budget: GlimpseBudget) -> list[Work]:
    """The task model's training (its glimpse batches are read on a CPU core, its steps run on the device) unless
    the committed one is read, then every SAC agent, side by side, each on one CPU core: a step is one batch of
    ``n_envs`` transitions and the ``gradient_steps`` updates after it. Playing the held-out episodes is left
    out: it takes a few seconds."""
    if not isinstance(budget, GlimpseBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a GlimpseBudget")
    game, agent = budget.game, budget.agent
    scenes = train_scenes(game, seed=0)
    generator = torch.Generator().manual_seed(0)
    episodes = random_episodes(scenes, game.sensor, budget.task_model, generator)
    config = TaskModelConfig(glimpse_size=game.sensor.glimpse_size)
    model = GlimpseClassifier(config)
    works = []
    if not budget.committed_task_model:
        works += [
            Work(
                "task model's glimpse batches",
                1,
                budget.task_model.steps,
                lambda: random_episodes(scenes, game.sensor, budget.task_model, generator),
                on="cpu",
                trains=False,
            ),
            Work("task model", 1, budget.task_model.steps, training_step(model, lambda: episodes, episode_loss)),
        ]
    frozen = freeze(GlimpseClassifier(config))
    transitions = agent.steps // agent.n_envs
    for what, runs, played in (
        ("SAC agents, free scale", budget.seeds, game),
        ("SAC agents, fixed scale", budget.fixed_scale_seeds, budget.fixed_game),
    ):
        if runs:
            works.append(
                Work(what, runs, transitions, AgentStep(scenes, frozen, played, agent), on="cpu", pool="agents")
            )
    return works


class AgentStep:
    """A SAC agent past its random warm-up: each call collects ``n_envs`` transitions and makes the
    ``gradient_steps`` updates after them. The warm-up's batches cost less (no updates), so pricing every batch
    like this one overcounts slightly."""

    def __init__(self, scenes, task_model, game, budget: AgentBudget):
        self.budget = budget
        warm_up = AgentBudget(**{**vars(budget), "steps": budget.learning_starts + budget.n_envs})
        self.agent, _ = train_agent(scenes, task_model, game, warm_up)

    def __call__(self) -> None:
        self.agent.learn(self.budget.n_envs, reset_num_timesteps=False)
