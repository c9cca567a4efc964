"""Notebook 04's full-mode plan counts the experiment's work: every optimiser step it takes, for every budget."""

from dataclasses import replace

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab.early_exit.experiment import EarlyExitBudget, run_experiment
from efflab.early_exit.workload import PHASES, workload

TINY = replace(
    EarlyExitBudget.quick(),
    widths=(4, 8, 8),
    hidden=16,
    seeds=2,
    batch_size=32,
    total_steps=24,
    warmup_steps=2,
    check_every=4,
    patience=2,
    rank_samples=300,
    timing_thresholds=(0.5,),
    timing_repeats=1,
    layouts=2,
    shares=(0.0, 0.5, 1.0),
)


def optimiser_steps(works) -> int:
    return sum(work.runs * work.steps for work in works if work.trains)


def test_the_plan_bounds_the_optimiser_steps_of_a_tiny_study(monkeypatch):
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    taken = []
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: taken.append(1))
    try:
        run_experiment(efflab.setup("quick", "cpu", 5, verbose=False), TINY, progress=False)
    finally:
        handle.remove()
    works = workload(TINY)
    # only disjoint's heads stop early, each after patience + 1 checks at the soonest
    soonest = (TINY.patience + 1) * TINY.check_every
    stopping = [work for work in works if work.trains and PHASES["heads"] in work.what]
    assert stopping
    spared = sum(work.runs * (work.steps - min(work.steps, soonest)) for work in stopping)
    assert optimiser_steps(works) - spared <= len(taken) <= optimiser_steps(works)


def test_the_full_and_quick_budgets_plan_every_run():
    full, quick = workload(EarlyExitBudget.full()), workload(EarlyExitBudget.quick())
    # by hand, per seed: joint and disjoint at 0 %, the phase-1 backbones at 25-100 %, then what continues them
    # (disjoint and mixed at 25 and 75 %, plus mixed_low_lr at 50 %)
    assert optimiser_steps(full) == 5 * (2 * 3000 + 7500 + 2 * 2250 + 3 * 1500 + 2 * 750)
    assert optimiser_steps(quick) == 3 * (2 * 480 + 240 + 480 + 3 * 240)
    for works in (full, quick):
        assert all(work.runs >= 1 and work.steps >= 1 and callable(work.step) for work in works)
        assert [work.on for work in works].count("cpu") == 2  # the cost-accuracy curves, in each round


def test_a_wrong_budget_raises():
    with pytest.raises(ValueError, match="budget"):
        workload(TINY.model_config())
