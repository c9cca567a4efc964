"""Notebook 00's work for the full-mode plan, checked against what the experiment really runs."""

import dataclasses

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab.first_steps.experiment import ByteLMBudget, run_experiment
from efflab.first_steps.workload import workload
from efflab.models.gpt import TinyLM


def test_the_plan_counts_the_steps_and_forward_passes_the_experiment_takes(corpus):
    budget = dataclasses.replace(
        ByteLMBudget.quick(), d_model=32, n_layer=1, n_head=2, block_size=16, batch_size=8, steps=25,
        warmup_steps=2, eval_every=10, eval_batches=2, temperatures=(0.5, 2.0), sample_length=6,
    )  # fmt: skip
    counts = {"steps": 0, "forwards": 0}

    def stepped(*_):
        counts["steps"] += 1

    def forwarded(module, *_):
        counts["forwards"] += isinstance(module, TinyLM)

    handles = [
        register_optimizer_step_post_hook(stepped),
        torch.nn.modules.module.register_module_forward_hook(forwarded),
    ]
    try:
        run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), budget, corpus=corpus)
    finally:
        for handle in handles:
            handle.remove()
    items = workload(budget)
    assert counts["steps"] == sum(w.runs * w.steps for w in items if w.trains) == 25
    evaluations = 3 * budget.eval_batches  # at steps 10, 20 and the last
    samples = len(budget.temperatures) * budget.sample_length
    planned = {w.what: w.runs * w.steps for w in items if not w.trains}
    assert planned == {"validation": evaluations, "samples": samples}
    assert counts["forwards"] == 25 + evaluations + samples + 1  # and once for the prompt's own distribution


def test_the_full_budget_lists_its_work():
    items = workload(ByteLMBudget.full())
    assert [w.what for w in items] == ["training", "validation", "samples"]
    assert items[0].steps == ByteLMBudget.full().steps and all(callable(w.step) for w in items)


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload("full")
