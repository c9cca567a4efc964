import dataclasses

import plotly.graph_objects as go
import pytest

import efflab
from efflab.dense_to_moe import plots
from efflab.dense_to_moe.experiment import DenseToMoEBudget, findings, run_experiment


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("EFFLAB_EXECUTOR", "inline")
    patch.setenv("EFFLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    budget = dataclasses.replace(
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
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    try:
        yield run_experiment(run, budget, minilm=False, progress=False)
    finally:
        patch.undo()


def test_figures_build_from_a_result(tiny_result):
    assert isinstance(plots.cost_accuracy_figure(tiny_result), go.Figure)
    assert isinstance(plots.zero_fraction_figure(tiny_result), go.Figure)
    assert isinstance(plots.k_histogram(tiny_result, "dynamic_k", 0.5), go.Figure)
    assert isinstance(plots.patch_heatmap(tiny_result, "top_k", 2, [0, 1]), go.Figure)
    assert set(tiny_result.timing.device) == {"cpu"}  # the run's device
    assert "on cpu" in plots.timing_figure(tiny_result).layout.title.text
    assert "ViT on digits" in findings(tiny_result.summary())


def test_playground_answers_every_control(tiny_result):
    playground = plots.playground(tiny_result)
    first = playground.status.value
    playground.controls["tau"].value = 0.0
    assert playground.status.value != first and "tau=0" in playground.status.value
    playground.controls["rule"].value = "top_k"
    assert "static top-k with k=" in playground.status.value
    assert playground.renders == 3 and len(playground.last) == 3  # no MiniLM in this result: three figures


def test_words_are_coloured_by_expert_count():
    shown = plots.words_html([("sorted", 10.0), ("<list>", 2.0)], 16)
    assert "sorted" in shown.data and "&lt;list&gt;" in shown.data and 'title="10.0 experts"' in shown.data


def test_timing_rejects_an_unknown_device(tiny_result):
    from efflab.dense_to_moe.experiment import measure_timing

    with pytest.raises(ValueError, match="device='gpu'"):
        measure_timing(tiny_result, "gpu")
