"""Notebook 03's full-mode plan counts the experiment's work: every optimiser step it takes, for every budget."""

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

from efflab.projected_compression.experiment import QUALITIES, CompressionBudget, run_experiment
from efflab.projected_compression.sentence_encoder import EncoderBudget
from efflab.projected_compression.workload import encoder_workload, workload
from efflab.runtime import setup

TINY = CompressionBudget(
    d_model=16,
    d_ff=32,
    n_layer=1,
    n_head=2,
    block_size=8,
    batch_size=2,
    corpus_bytes=20_000,
    pretrain_steps=(3, 6),
    keep_fractions=(0.5, 0.2),
    token_budgets=(2, 4),
    seeds=2,
    retrain_lrs=(1e-3,),
    projection_lrs=(1e-3, 3e-3),
    calibration_batches=1,
    eval_batches=1,
    eval_batch_size=2,
    evals_per_run=1,
    encoder=EncoderBudget(
        layers=(5,), train_sentences=8, heldout_sentences=6, max_length=12, steps=2, batch_size=4, seeds=2
    ),
)


def optimiser_steps(works) -> int:
    return sum(work.runs * work.steps for work in works if work.trains)


def test_the_plan_counts_every_optimiser_step_of_a_tiny_study(tmp_path, monkeypatch):
    from efflab.data.sentences import available

    available("train")  # the sentence pool is read from the shared cache; the study's entries go elsewhere
    monkeypatch.setenv("EFFLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    taken = []
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: taken.append(1))
    try:
        run_experiment(setup("quick", "cpu", 0, verbose=False), TINY)
    finally:
        handle.remove()
    assert len(taken) == optimiser_steps(workload(TINY))


def test_the_full_and_quick_budgets_plan_every_run():
    full, quick = workload(CompressionBudget.full()), workload(CompressionBudget.quick())
    # by hand: the two bases, the learning-rate grid, the main grid (two methods on two bases and from scratch
    # once; every keep fraction, seed and token budget), the other importances, and MiniLM's distillations
    assert optimiser_steps(full) == 3400 + 6 * 250 + 5 * 3 * 3 * (250 + 500 + 1000) + 2 * 3 * 2 * 250 + 2 * 3 * 400
    assert optimiser_steps(quick) == 700 + 6 * 40 + 5 * 3 * 2 * (40 + 120) + 2 * 3 * 2 * 40 + 2 * 1 * 30
    for works in (full, quick):
        assert all(work.runs >= 1 and work.steps >= 1 and callable(work.step) for work in works)
        assert {work.on for work in works} == {"gpu"}  # the notebook's own work runs on the run's device too
        importance = [work for work in works if work.what.startswith("activation importance")]
        assert [work.runs for work in importance] == [len(QUALITIES)]  # once per base, for every keep fraction
    assert not any(
        "MiniLM" in work.what for work in workload(CompressionBudget(encoder=EncoderBudget(enabled=False)))
    )


def test_a_wrong_budget_raises():
    with pytest.raises(ValueError, match="budget"):
        workload(EncoderBudget.quick())
    with pytest.raises(ValueError, match="budget"):
        encoder_workload(CompressionBudget.quick())
