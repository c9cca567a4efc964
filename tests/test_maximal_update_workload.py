"""Notebook 07's workload against its experiment: the optimiser steps and evaluation batches counted (bounds:
a run that blows up stops early), the full and quick budgets' work built, and a wrong budget refused."""

import dataclasses

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab.maximal_update import transfer
from efflab.maximal_update.experiment import MupBudget, run_experiment
from efflab.maximal_update.workload import workload

TINY = dataclasses.replace(
    MupBudget.quick(),
    block_size=8,
    max_bytes=50_000,
    coord_widths=(32, 64),
    coord_seeds=2,
    coord_steps=2,
    coord_batch_size=2,
    slope_step=2,
    sweep_widths=(32, 64),
    sweep_log2_lrs=(-8, -6, -4),
    sweep_seeds=2,
    sweep_steps=3,
    sweep_batch_size=2,
    warmup_steps=1,
    eval_batches=2,
    fixed_width=32,
    expert_counts=(2, 4),
    granularities=(1, 2),
)


def test_the_workload_bounds_every_step_and_batch_of_the_experiment(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    monkeypatch.setenv("EFFLAB_CACHE", str(tmp_path))
    counts = {"steps": 0, "batches": 0}
    language_model_loss = transfer.language_model_loss

    def evaluation(model, corpus, *, batches, **options):
        counts["batches"] += batches
        return language_model_loss(model, corpus, batches=batches, **options)

    monkeypatch.setattr(transfer, "language_model_loss", evaluation)
    handle = register_optimizer_step_post_hook(lambda *_: counts.__setitem__("steps", counts["steps"] + 1))
    try:
        run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), TINY)
    finally:
        handle.remove()
    work = workload(TINY)
    steps = sum(w.runs * w.steps for w in work if w.trains)
    batches = sum(w.runs * w.steps for w in work if not w.trains)
    # A run that blows up stops there (and a sweep run is then not evaluated); at these rates nearly none does.
    assert 0.9 * steps <= counts["steps"] <= steps
    assert 0.9 * batches <= counts["batches"] <= batches
    for item in work:  # every step runs (tiny sizes)
        item.step()


@pytest.mark.parametrize("budget", [MupBudget.full(), MupBudget.quick()], ids=["full", "quick"])
def test_the_budgets_work_is_built(budget):
    work = workload(budget)
    assert all(w.runs >= 1 and w.steps >= 1 and callable(w.step) and w.on == "gpu" for w in work)
    checks = [w for w in work if w.what.startswith("coordinate check")]
    assert sum(w.runs for w in checks) == len(budget.coord_widths) * 3 * budget.coord_seeds
    sweeps = [w for w in work if w.what.endswith("training")]
    width_sweep = len(budget.sweep_widths) * 2 * len(budget.lrs) * budget.sweep_seeds
    moe_sweeps = (len(budget.expert_counts) + len(budget.granularities)) * len(budget.lrs) * budget.moe_sweep_seeds
    # At the family's own E and G the two MoE sweeps train the same runs, which the width sweep trains too (the
    # fixed width is one of its widths, under muP, with the same first seeds): each is trained once.
    shared = 2 * len(budget.lrs) * budget.moe_sweep_seeds
    assert sum(w.runs for w in sweeps) == width_sweep + moe_sweeps - shared


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload(object())
