"""Notebook 10's work for the full-mode plan: the agents' steps are what SAC really does per batch."""

import pytest

from efflab.glimpse.agents import AgentBudget
from efflab.glimpse.experiment import GlimpseBudget, train_scenes
from efflab.glimpse.task_model import GlimpseClassifier, TaskModelConfig, freeze
from efflab.glimpse.workload import AgentStep, workload


def test_full_mode_trains_the_task_model_and_ten_agents_on_cpu_cores():
    budget = GlimpseBudget.full()
    items = {work.what: work for work in workload(budget)}
    assert items["task model"].steps == budget.task_model.steps and items["task model"].on == "gpu"
    for scale in ("free", "fixed"):
        agents = items[f"SAC agents, {scale} scale"]
        assert (agents.runs, agents.steps, agents.on) == (5, budget.agent.steps // budget.agent.n_envs, "cpu")


def test_quick_mode_reads_the_committed_task_model():
    assert not any("task model" in work.what for work in workload(GlimpseBudget.quick()))


def test_an_agent_step_collects_one_batch_and_updates_after_it():
    game = GlimpseBudget.quick().game
    budget = AgentBudget(steps=64, n_envs=4, gradient_steps=3, batch_size=8, hidden=(8,), learning_starts=8)
    task_model = freeze(GlimpseClassifier(TaskModelConfig(glimpse_size=game.sensor.glimpse_size)))
    step = AgentStep(train_scenes(game, seed=0), task_model, game, budget)
    before = step.agent.num_timesteps, step.agent._n_updates
    step()
    assert step.agent.num_timesteps - before[0] == budget.n_envs
    assert step.agent._n_updates - before[1] == budget.gradient_steps


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload(AgentBudget.quick())
