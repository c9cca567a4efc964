"""The full-mode plan of notebook 02 counts what the experiment really does."""

from dataclasses import replace

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab import finetune, train
from efflab.runtime import torch_threads
from efflab.shapley import experiment
from efflab.shapley.experiment import ShapleyBudget, run_experiment
from efflab.shapley.workload import workload

# Toy sizes, with a chunk small enough that every game takes several batches of coalitions.
SMALL = replace(
    ShapleyBudget.quick(),
    widths=(4, 6),
    hidden=8,
    train_steps=40,
    seeds=1,
    partial_orders=(1, 2),
    permutations=(1, 3),
    regression_samples=(8, 16),
    repeats=2,
    matched=2,
    finetune_removals=(2, 4),
    finetune_steps=2,
    network_permutations=2,
    network_finetune_steps=2,
    chunk=2**17,
)


class Counter:
    """Optimiser steps, scorings of a split, and coalition batches (``ChannelGame.outcomes`` makes one
    ``torch.addmm`` per batch)."""

    def __init__(self, patch):
        self.steps = self.passes = self.batches = 0
        addmm, metrics = torch.addmm, train.classification_metrics

        def counting_addmm(*args, **kwargs):
            self.batches += 1
            return addmm(*args, **kwargs)

        def counting_metrics(*args, **kwargs):
            self.passes += 1
            return metrics(*args, **kwargs)

        patch.setattr(torch, "addmm", counting_addmm)
        for module in (finetune, experiment):
            patch.setattr(module, "classification_metrics", counting_metrics)
        self.handle = register_optimizer_step_post_hook(self.step)

    def step(self, optimizer, args, kwargs):
        self.steps += 1


def test_the_plan_counts_every_optimiser_step_scoring_and_coalition_batch(monkeypatch):
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    works = {w.what: w for w in workload(SMALL)}
    with torch_threads(1), monkeypatch.context() as patch:
        counter = Counter(patch)
        try:
            run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), SMALL, progress=False)
            steps, passes, batches = counter.steps, counter.passes, counter.batches
            counter.batches = 0
            works["whole-network rankings"].step()  # one step: every ranking of a seed (seed 0, as the run's)
        finally:
            counter.handle.remove()
    assert steps == sum(w.runs * w.steps for w in works.values() if w.trains)
    assert passes == works["validation and test passes"].steps
    planned = [w.steps for what, w in works.items() if what.endswith("coalition batches")]
    assert min(planned) > 1
    assert batches == sum(planned) + counter.batches


@pytest.mark.parametrize("budget", [ShapleyBudget.quick(), ShapleyBudget.full()], ids=["quick", "full"])
def test_every_budget_has_a_plan(budget):
    works = workload(budget)
    assert works and all(w.runs == budget.seeds and w.steps >= 1 and callable(w.step) for w in works)
    assert {w.on for w in works} == {"cpu"}  # the experiment keeps every model on the CPU


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload(object())
