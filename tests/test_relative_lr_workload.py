"""Notebook 08's work for the full-mode plan: the optimiser steps the experiment takes, counted beforehand."""

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab.relative_lr.experiment import ARCHITECTURES, LABELS, RelativeLRBudget, run_experiment
from efflab.relative_lr.workload import workload

# A toy study with a transfer to a 32-wide model (16x the proxy's non-embedding parameters); one search pass
# of five trials, so the search ends at its evaluation cap.
TOY = RelativeLRBudget(
    d_model=8,
    n_layer=1,
    n_head=2,
    block_size=16,
    batch_size=4,
    n_experts=2,
    steps=12,
    warmup_steps=2,
    eval_every=4,
    eval_batches=1,
    track_every=3,
    seeds=2,
    ablation_seeds=1,
    lr_grid=(4e-3, 1e-2),
    search_steps=6,
    search_evaluations=5,
    corpus_bytes=20_000,
    transfer_d_model=32,
    transfer_n_layer=1,
    transfer_n_head=2,
    transfer_steps=16,
    transfer_lr_grid=(4e-3, 1e-2),
)


def test_the_toy_study_takes_the_counted_steps_less_the_found_runs_that_repeat_uniform(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    monkeypatch.setenv("EFFLAB_CACHE", str(tmp_path))
    taken = []
    handle = register_optimizer_step_post_hook(lambda *_: taken.append(1))
    try:
        result = run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), TOY)
    finally:
        handle.remove()
    items = {work.what: work for work in workload(TOY)}
    for arch in ARCHITECTURES:
        assert result.searches[arch].evaluations == items[f"{LABELS[arch]}: search trials"].runs
    # Where the search kept its start, the found preset is the uniform one, and its runs were trained once.
    kept = [
        arch for arch in ARCHITECTURES if result.schedules[(arch, "found")] == result.schedules[(arch, "uniform")]
    ]
    repeated = len(kept) * TOY.seeds * (TOY.steps + TOY.transfer_steps)
    counted = sum(work.runs * work.steps for work in items.values() if work.trains)
    assert len(taken) == counted - repeated
    assert len(taken) >= 0.85 * counted


def test_the_full_budget_searches_every_pass_and_transfers():
    budget = RelativeLRBudget.full()
    full, quick = workload(budget), workload(RelativeLRBudget.quick())
    items = {work.what: work for work in full}
    # 3 passes of 4 factors over 8 knobs (dense) and 10 (MoE), the start included: below the cap of 150
    assert (items["dense: search trials"].runs, items["MoE: search trials"].runs) == (97, 121)
    assert items["MoE: search trials"].side_by_side == 8
    transfer = items["MoE: transfer sweep and presets"]
    assert (transfer.runs, transfer.steps) == (len(budget.transfer_lr_grid) + 3 * budget.seeds - 1, 1200)
    for work in full + quick:
        assert work.runs >= 1 and work.steps >= 1 and callable(work.step) and work.on == "gpu"
    assert not any("transfer" in work.what for work in quick)


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload(object())
