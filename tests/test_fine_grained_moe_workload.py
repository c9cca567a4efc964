"""Notebook 05's workload against its experiment: every optimiser step and evaluation batch counted, the full
and quick budgets' work built, and a wrong budget refused."""

import dataclasses

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab import lm_grid
from efflab.fine_grained_moe.experiment import GranularityBudget, run_experiment
from efflab.fine_grained_moe.workload import workload
from efflab.lm_grid import DENSE
from efflab.models.moe import moe_layers

TINY = dataclasses.replace(
    GranularityBudget.quick(),
    widths=(16, 24),
    granularities=(1, 2),
    n_layer=1,
    block_size=16,
    batch_size=8,
    steps=8,
    warmup_steps=1,
    eval_every=3,
    eval_batches=2,
    spread_width=16,
    spread_granularities=(DENSE, 2),
    n_seeds=2,
    checkpoints=(4, 8),
    bootstrap=3,
    workers=2,
)


def counted_run(monkeypatch, experiment):
    """Run ``experiment()`` in this process, counting its optimiser steps and its evaluation batches (the
    validation batches and the router snapshots' one batch each)."""
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    counts = {"steps": 0, "batches": 0}
    language_model_loss, router_snapshot = lm_grid.language_model_loss, lm_grid.router_snapshot

    def evaluation(model, corpus, *, batches, **options):
        counts["batches"] += batches
        return language_model_loss(model, corpus, batches=batches, **options)

    def snapshot(model, *args, **options):
        counts["batches"] += bool(moe_layers(model))
        return router_snapshot(model, *args, **options)

    monkeypatch.setattr(lm_grid, "language_model_loss", evaluation)
    monkeypatch.setattr(lm_grid, "router_snapshot", snapshot)
    handle = register_optimizer_step_post_hook(lambda *_: counts.__setitem__("steps", counts["steps"] + 1))
    try:
        experiment()
    finally:
        handle.remove()
    return counts


def test_the_workload_counts_every_step_and_batch_of_the_experiment(monkeypatch, corpus):
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    counts = counted_run(monkeypatch, lambda: run_experiment(run, TINY, corpus=corpus, progress=False))
    work = workload(TINY)
    assert counts["steps"] == sum(w.runs * w.steps for w in work if w.trains)
    assert counts["batches"] == sum(w.runs * w.steps for w in work if w.what.endswith("evaluations"))
    assert {w.side_by_side for w in work if w.on == "gpu"} == {TINY.workers}
    for item in work:  # every step runs (tiny sizes)
        item.step()


@pytest.mark.parametrize("budget", [GranularityBudget.full(), GranularityBudget.quick()], ids=["full", "quick"])
def test_the_budgets_work_is_built(budget):
    work = workload(budget)
    assert all(w.runs >= 1 and w.steps >= 1 and callable(w.step) for w in work)
    training = [w for w in work if w.trains]
    assert sum(w.runs for w in training) == len(budget.specs())
    assert {w.steps for w in training} == {budget.steps_per_run()}
    assert [w.what for w in work if w.on == "cpu"] == ["execution-path check", "law fits and bootstrap"]


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload(object())
