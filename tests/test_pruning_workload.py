"""The full-mode plan of notebook 01 counts what the experiment really does."""

from dataclasses import replace

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab import finetune, train
from efflab.finetune import FinetuneBudget
from efflab.pruning import experiment, pruners
from efflab.pruning.experiment import PruningBudget, run_experiment
from efflab.pruning.workload import workload
from efflab.runtime import torch_threads


def small_budget() -> PruningBudget:
    """Every kind of run at toy sizes: two ratios per granularity, patience 1 on one-shot and geometric."""
    return replace(
        PruningBudget.quick(),
        widths=(4, 8),
        hidden=16,
        dense_epochs=2,
        seeds=2,
        unstructured_ratios=(0.5, 0.9),
        structured_ratios=(0.5, 0.8),
        patiences=(1,),
        patience_regimes=("one-shot", "geometric"),
        patience_ratios=(0.9,),
        finetune=FinetuneBudget(epochs=1, max_epochs_per_step=2),
        budget_ratio=0.9,
        budget_epochs=(0.5, 1),
        latency_batch=8,
        latency_repeats=2,
    )


def planned(works, *, trains: bool, patience: bool) -> int:
    """Optimiser steps (``trains``) or scorings of a split (the latency timing scores nothing) the plan counts."""
    chosen = [w for w in works if w.trains == trains and ("patience" in w.what) == patience]
    return sum(w.runs * w.steps for w in chosen if not w.what.startswith("latency"))


def test_the_plan_counts_every_optimiser_step_and_scoring(monkeypatch):
    budget = small_budget()
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    counts = {"steps": 0, "passes": 0}
    metrics = train.classification_metrics

    def counting_metrics(*args, **kwargs):
        counts["passes"] += 1
        return metrics(*args, **kwargs)

    for module in (finetune, pruners, experiment):
        monkeypatch.setattr(module, "classification_metrics", counting_metrics)
    handle = register_optimizer_step_post_hook(lambda *_: counts.update(steps=counts["steps"] + 1))
    try:
        with torch_threads(1):
            run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), budget, progress=False)
    finally:
        handle.remove()
    works = workload(budget)
    # Patience 1 ends a phase after one epoch at the earliest, of the two it may take: half its bound at least.
    fixed, patience = planned(works, trains=True, patience=False), planned(works, trains=True, patience=True)
    assert fixed + patience // 2 <= counts["steps"] <= fixed + patience
    fixed, patience = planned(works, trains=False, patience=False), planned(works, trains=False, patience=True)
    fixed += budget.seeds  # each dense network's test pass, left out of the plan
    assert fixed + patience // 2 <= counts["passes"] <= fixed + patience


@pytest.mark.parametrize("budget", [PruningBudget.quick(), PruningBudget.full()], ids=["quick", "full"])
def test_every_budget_has_a_plan(budget):
    works = workload(budget)
    assert works and all(w.runs >= 1 and w.steps >= 1 and callable(w.step) for w in works)
    # Everything trains and scores on the run's device; only the latency is timed on the CPU.
    assert {w.what for w in works if w.on == "cpu"} == {"latency of the structured models"}


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload(object())
