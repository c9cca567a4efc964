import time
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import efflab
from efflab.shapley import plots as sp
from efflab.shapley.experiment import ShapleyBudget, removal_curves, run_experiment
from efflab.shapley.values import marginals_by_size

TINY = replace(
    ShapleyBudget.quick(),
    widths=(4, 6),
    hidden=8,
    train_steps=30,
    seeds=2,
    partial_orders=(1, 2),
    permutations=(1, 3),
    regression_samples=(8, 16),
    repeats=2,
    matched=2,
    finetune_removals=(3,),
    finetune_steps=2,
    network_permutations=2,
    network_finetune_steps=2,
)


@pytest.fixture(scope="module")
def result():
    return run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), TINY, progress=False)


def test_channel_values_rescale_every_profile_to_the_exact_total():
    exact = np.array([0.1, 0.4, 0.2])
    figure = sp.channel_values(exact, {"leave-one-out": [1.0, 2.0, 1.0]}, title="t")
    bars, loo = figure.data
    assert list(bars.x) == ["ch 0", "ch 2", "ch 1"]  # sorted by the exact value
    assert sum(loo.y) == pytest.approx(exact.sum())


def test_marginal_heatmap_rows_are_channels_and_columns_sizes(result):
    values = result.tables[0, "features.1.conv"].values()
    figure = sp.marginal_heatmap(marginals_by_size(values).numpy(), title="t")
    assert np.asarray(figure.data[0].z).shape == (6, 6)


def test_cost_benefit_draws_sampled_families_as_lines_and_free_ones_as_levels(result):
    table = result.cost_benefit("features.1.conv")
    exact_line = sp.cost_benefit(table, title="t", against="kendall")
    exact_trace = [t for t in exact_line.data if t.name == "exact Shapley"][0]
    assert list(exact_trace.y) == pytest.approx([1.0])  # exact against itself
    with pytest.raises(ValueError, match="against"):
        sp.cost_benefit(table, title="t", against="magic")
    figure = sp.cost_benefit(table, title="t")
    oracle_trace = [t for t in figure.data if t.name == "exact Shapley"][0]
    assert list(oracle_trace.y) == pytest.approx(table[table.family == "exact Shapley"].oracle.tolist())
    names = {trace.name for trace in figure.data if trace.showlegend is not False}
    assert {"permutations", "kernel regression", "exact Shapley"} <= names
    assert not names & set(sp.ZERO_COST)
    assert len(figure.layout.shapes) == len(sp.ZERO_COST)
    assert figure.layout.xaxis.type == "log"


def test_agreement_and_removal_figures_show_the_baselines(result):
    for direction in ("removing", "adding"):
        rows = result.agreement[result.agreement.layer == "features.1.conv"]
        figure = sp.agreement_by_size(rows, title="t", direction=direction)
        baseline = figure.data[-1]
        assert list(baseline.y) == pytest.approx([o / 6 for o in range(1, 6)])
    removed, curves = removal_curves(result, "features.1.conv")
    figure = sp.removal_curves(removed, curves, title="t")
    assert {trace.name for trace in figure.data if trace.showlegend is not False} == set(curves)


def test_network_bars_group_pruned_and_fine_tuned(result):
    figure = sp.network_bars(result.network, title="t")
    assert [trace.name for trace in figure.data] == ["pruned", "fine-tuned"]
    assert len(figure.data[0].x) == 4


def test_rank_comparison_draws_one_line_per_channel_and_the_value_heatmap():
    values = torch.linspace(0, 1, 16)
    figure = sp.rank_comparison(
        [0.3, 0.1, 0.2, 0.4], [0.1, 0.3, 0.2, 0.4], estimate_name="e", title="t", values=values
    )
    lines = [trace for trace in figure.data if trace.type == "scatter" and trace.mode == "lines+markers+text"]
    assert len(lines) == 4 and list(lines[1].y) == [0, 2]  # channel 1: first in exact order, third in estimate
    assert any(isinstance(trace, go.Heatmap) for trace in figure.data)


def test_playground_answers_every_control_and_says_what_it_shows(result):
    view = sp.playground(result)
    assert set(view.controls) == {"layer", "estimator", "budget"}
    first = view.last
    view.controls["estimator"].value = "leave-one-out"
    assert view.last is not first and view.status.value.startswith("leave-one-out")
    view.controls["estimator"].value = "permutations"
    view.controls["budget"].value = 8  # M = 1 costs at most 1 * 5 + 2 = 7 on the 6-channel layer
    assert view.status.value.startswith("permutations (M=1)") and "within budget 8" in view.status.value
    view.controls["budget"].value = 65536  # past the largest precomputed setting, M = 3
    assert view.status.value.startswith("permutations (M=3)")
    assert "past the largest precomputed setting" in view.status.value
    shown = view.status.value.split(" evaluations")[0].rsplit(" ", 1)[-1]  # the cost of what is shown ...
    assert f"(permutations (M=3), {shown} evaluations)" in view.status.value  # ... is the one the note names
    view.controls["budget"].value = 0
    assert "below the cheapest precomputed setting" in view.status.value
    view.controls["estimator"].value = "L1 norm"
    assert "budget does not change it" in view.status.value
    started = time.perf_counter()
    view.controls["layer"].value = "features.0.conv"
    assert time.perf_counter() - started < 2.0  # a lookup, no network runs
    assert "features.0.conv" in view.last.layout.title.text
