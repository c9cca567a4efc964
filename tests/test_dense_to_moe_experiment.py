import dataclasses

import pytest
import torch

from efflab.dense_to_moe import experiment
from efflab.dense_to_moe.experiment import (
    ConversionTask,
    DenseTask,
    DenseToMoEBudget,
    MiniLMTask,
    findings,
    minilm_saving,
    paper_rows,
    run_experiment,
    run_task,
)
from efflab.parallel import gpu_share_for
from efflab.runtime import Run

# A ViT small enough to train, fine-tune and convert in well under a second.
TINY = dataclasses.replace(
    DenseToMoEBudget.quick(),
    seeds=1,
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
)


def test_quick_and_full_budgets_are_valid_and_differ():
    quick, full = DenseToMoEBudget.quick(), DenseToMoEBudget.full()
    assert quick != full and full.seeds >= quick.seeds
    assert quick.top_ks(16) == (1, 2, 4, 8, 16)
    names = [name for name, _, _ in quick.variants()]
    assert len(names) == len(set(names))


def test_each_fine_tuning_is_shared_by_the_variants_at_its_weight():
    budget = DenseToMoEBudget.quick()
    groups = budget.conversions()
    weights = [weight for weight, _ in groups]
    assert len(weights) == len(set(weights)) == 1 + len(budget.penalty_weights)
    regrouped = [(name, weight, experts) for weight, members in groups for name, experts in members]
    assert sorted(regrouped, key=str) == sorted(budget.variants(), key=str)
    main = dict(groups)[budget.main_weight]
    assert [experts for _, experts in main] == [budget.n_experts, budget.large_experts]


@pytest.mark.parametrize(
    "changes",
    [
        {"n_experts": 5},
        {"large_experts": 3},
        {"taus": (0.5, 0.2, 1.0)},
        {"taus": (0.0, 0.5)},
        {"taus": (0.0, 1.5)},
        {"main_weight": 0.5},
        {"penalty_weights": (0.01, 0.1), "main_weight": 0.1},
        {"minilm_experts": 100},
        {"seeds": 0},
        {"timing_taus": (0.33,)},
    ],
)
def test_bad_budgets_are_rejected(changes):
    with pytest.raises(ValueError):
        dataclasses.replace(DenseToMoEBudget.quick(), **changes)


def _summary(dynamic, moefication):
    savings = {key: [0.2, 0.2] for key in ("d2dmoe_top_k", "no_finetune_dynamic_k", "large_experts_dynamic_k")}
    savings.update(d2dmoe_dynamic_k=dynamic, moefication_top_k=moefication, relu_only_dynamic_k=[0.1, 0.1])
    return {
        "vit_saving_at_one_point_drop": savings,
        "zero_fraction": {"lambda=0.01": {"before": 0.5, "after": 0.9}},
        "main_variant": "lambda=0.01",
        "vit_ffn_share": 0.7,
        "timing": [{"device": "cpu", "implementation": "gathered", "time_ratio": 1.5, "flop_ratio": 0.6}],
        "minilm": {
            "no fine-tuning (GELU)": {"saving_at_cosine_095": {"dynamic_k": 0.3, "top_k": 0.1}, "curves": {}}
        },
    }


def test_findings_have_a_phrasing_for_each_outcome():
    assert "agrees with the paper" in findings(_summary([0.5, 0.4], [0.1, 0.2]))
    assert "disagrees with the paper" in findings(_summary([0.1, 0.1], [0.3, 0.2]))
    assert "mixed across seeds" in findings(_summary([0.5, 0.1], [0.3, 0.2]))
    assert "dynamic-k saves more" in findings(_summary([0.5, 0.1], [0.3, 0.2]))
    assert "**Wall-clock (cpu).**" in findings(_summary([0.5, 0.1], [0.3, 0.2]))


def test_paper_rows_show_this_run_and_missing_cells():
    table = paper_rows(_summary([0.5, 0.4], [0.1, 0.2]), None)
    first = table.iloc[0]
    assert first["this run"] == "45%" and first["paper"].startswith("up to 60%")
    assert (table["full-mode run (GPU)"] == "n/a").all()


def test_minilm_saving_reads_the_cosine_threshold():
    points = [{"relative_flops": 0.3, "cosine": 0.9}, {"relative_flops": 0.6, "cosine": 0.96}]
    assert minilm_saving(points, 0.95) == pytest.approx(0.4)
    assert minilm_saving(points, 0.99) == 0.0


class _Stop(Exception):
    pass


def test_every_task_runs_on_the_runs_device_and_may_see_the_gpu(monkeypatch):
    calls = []

    def fake_run_all(function, tasks, *, gpu_share=None, **_):
        calls.append((tasks, gpu_share))
        if len(calls) == 2:  # the conversion tasks: seen, nothing more to check
            raise _Stop
        return [{"seed": task.seed, "state": {}, "accuracy": 1.0} for task in tasks]

    monkeypatch.setattr(experiment, "run_all", fake_run_all)
    run = Run("full", torch.device("cuda"), 0, 1)  # a CUDA run, described only: no task is executed
    with pytest.raises(_Stop):
        run_experiment(run, TINY, progress=False)
    (first, first_share), (conversions, conversion_share) = calls
    assert [type(task) for task in first] == [MiniLMTask, DenseTask]
    assert len(conversions) == len(TINY.conversions()) and all(isinstance(t, ConversionTask) for t in conversions)
    assert {task.device for task in first + conversions} == {"cuda"}
    assert first_share == conversion_share == gpu_share_for("cuda") is not None


@pytest.mark.parametrize("device", ["gpu", "meta", "cuda:x", torch.device("cpu"), None])
def test_a_task_refuses_a_device_it_cannot_run_on(device):
    with pytest.raises(ValueError, match="device="):
        DenseTask(0, TINY, device=device)
    with pytest.raises(ValueError, match="device="):
        ConversionTask(0, None, (), TINY, {}, device=device)
    with pytest.raises(ValueError, match="device="):
        MiniLMTask(0, TINY, device=device)


def test_tasks_on_the_cpu_hand_back_cpu_tensors(monkeypatch):
    monkeypatch.setattr(experiment, "cached", lambda _name, _key, build: build())
    dense = run_task(DenseTask(0, TINY, device="cpu"))
    assert {value.device.type for value in dense["state"].values()} == {"cpu"}
    variants = dict(TINY.conversions())[TINY.main_weight]  # fine-tuned, then converted at two expert counts
    entries = run_task(ConversionTask(0, TINY.main_weight, variants, TINY, dense["state"], device="cpu"))
    assert [entry["variant"] for entry in entries] == [name for name, _ in variants]
    for entry in entries:
        assert {p.device.type for p in entry["model"].state_dict().values()} == {"cpu"}
        assert all(p["k"].device.type == "cpu" for p in entry["curves"]["dynamic_k"])
        assert isinstance(entry["sparse_accuracy"], float)
