"""Notebook 09's work for the full-mode plan: the optimiser steps the experiment takes, counted beforehand."""

import dataclasses

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import efflab
from efflab.dense_to_moe import experiment
from efflab.dense_to_moe.experiment import DenseToMoEBudget, run_experiment
from efflab.dense_to_moe.workload import workload
from efflab.models import bert

# The plots' toy ViT study, with a MiniLM study (fine-tune included) on a small random BERT in place of the
# pretrained one, as the distillation tests do: clustering the real model's neurons would take most of a minute.
TOY = dataclasses.replace(
    DenseToMoEBudget.quick(),
    seeds=2,
    d_model=8,
    n_heads=2,
    n_layers=1,
    d_ff=16,
    train_steps=3,
    batch_size=32,
    finetune_steps=2,
    n_experts=4,
    large_experts=2,
    router_steps=2,
    router_width=4,
    cluster_iterations=1,
    taus=(0.0, 0.5, 0.9, 1.0),
    timing_taus=(0.5,),
    timing_repeats=1,
    minilm_train_sentences=4,
    minilm_heldout_sentences=4,
    minilm_max_length=16,
    minilm_experts=8,
    minilm_router_width=4,
    minilm_router_steps=3,
    minilm_taus=(0.0, 1.0),
    minilm_ks=(2, 8),
    minilm_finetune_steps=2,
)


def small_bert(device="cpu"):
    torch.manual_seed(0)
    return bert.MiniLM(bert.BertConfig(n_layer=2, n_head=2, d_model=16, d_ff=48)).to(device).eval()


@pytest.fixture(scope="module")
def quick():
    return workload(DenseToMoEBudget.quick())


def test_the_toy_study_takes_exactly_the_counted_optimiser_steps(monkeypatch):
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    monkeypatch.setattr(experiment, "cached", lambda _name, _key, build: build())  # every seed trains its ViT
    monkeypatch.setattr(bert, "load_minilm", small_bert)
    taken = []
    handle = register_optimizer_step_post_hook(lambda *_: taken.append(1))
    try:
        run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), TOY, progress=False)
    finally:
        handle.remove()
    assert len(taken) == sum(work.runs * work.steps for work in workload(TOY) if work.trains)


def test_everything_runs_on_the_device_but_the_clusterings_and_the_vit_routers(quick):
    full = workload(DenseToMoEBudget.full())
    for work in full + quick:
        assert work.runs >= 1 and work.steps >= 1 and callable(work.step)
    places = {work.what: work.on for work in full}
    on_cpu = {what for what, on in places.items() if on == "cpu"}
    assert on_cpu == {
        what
        for what in places
        if what.endswith("clustering of one layer") or what.endswith("router training, twice")
    }
    assert {"ViT, E=32: clustering of one layer", "MiniLM: clustering of one layer"} <= on_cpu
    assert places["ViT: dense training"] == places["ViT: sparsity fine-tuning"] == "gpu"
    assert places["MiniLM: distillation fine-tuning"] == places["timing: gathered forward"] == "gpu"
    items = {work.what: work for work in full}
    assert (items["ViT, E=32: router training, twice"].runs, items["ViT, E=4: router training, twice"].runs) == (
        25,
        5,
    )


def test_without_a_minilm_fine_tune_there_is_one_conversion(quick):
    items = {work.what: work for work in quick}
    assert "MiniLM: distillation fine-tuning" not in items
    assert items["MiniLM: router training"].steps == DenseToMoEBudget.quick().minilm_router_steps


def test_a_wrong_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        workload(object())
