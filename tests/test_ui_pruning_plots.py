import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from efflab.pruning import plots as pruning_plots

LAYERS = ("features.0.conv", "classifier.hidden", "classifier.out")


def fake_tables():
    """Runs and layer tables shaped like run_sweep's, with made-up accuracies."""
    runs, layers = [], []
    configs = [("unstructured", "global-magnitude", c, (0.5, 0.8, 0.95)) for c in ("one-shot", "geometric")]
    configs += [("unstructured", "global-magnitude", "patience 2", (0.5, 0.8, 0.95))]
    configs += [("unstructured", "random", "one-shot", (0.5, 0.8, 0.95))]
    configs += [("structured", "l2", c, (0.3, 0.7)) for c in ("one-shot", "geometric")]
    for (granularity, criterion, curve, ratios), seed in itertools.product(configs, (0, 1, 2)):
        for ratio in ratios:
            regime = "patience" if curve.startswith("patience") else curve
            key = dict(
                seed=seed, granularity=granularity, criterion=criterion, curve=curve, regime=regime, ratio=ratio
            )
            key["patience"] = 2.0 if regime == "patience" else np.nan
            accuracy = 1 - ratio * (0.5 if curve == "one-shot" else 0.6) + 0.01 * seed
            runs.append({**key, "test_accuracy": accuracy, "epochs": 20.0 if regime == "patience" else 10.0})
            layers += [{**key, "layer": name, "sparsity": ratio * (i + 1) / 3} for i, name in enumerate(LAYERS)]
    return pd.DataFrame(runs), pd.DataFrame(layers)


def test_accuracy_vs_ratio_draws_a_band_per_curve_and_marks_the_chosen_point():
    runs, _ = fake_tables()
    crossover = {"early": "one-shot", "late": "geometric", "low": 0.8, "high": 0.9}
    figure = pruning_plots.accuracy_vs_ratio(
        runs,
        "unstructured",
        "global-magnitude",
        dense_accuracy=0.99,
        crossover=crossover,
        highlight=("geometric", 0.8),
    )
    names = [t.name for t in figure.data if t.name]
    assert names[:3] == ["one-shot (n=3)", "geometric (n=3)", "patience 2 (n=3)"]
    star = figure.data[-1]
    assert star.x == (0.8,) and star.y[0] == pytest.approx(1 - 0.8 * 0.6 + 0.01)
    assert any(shape.type == "rect" for shape in figure.layout.shapes)  # the crossover region


def test_no_crossover_is_said_rather_than_drawn():
    runs, _ = fake_tables()
    crossover = {"early": "one-shot", "late": "geometric", "low": float("nan"), "high": float("nan")}
    figure = pruning_plots.accuracy_vs_ratio(runs, "unstructured", "global-magnitude", crossover=crossover)
    assert "no crossover" in figure.layout.annotations[0].text
    with pytest.raises(ValueError, match="granularity"):
        pruning_plots.accuracy_vs_ratio(runs, "structured", "random")


def test_budget_view_lines_for_fixed_budgets_points_for_patience():
    budget = pd.DataFrame(
        [
            {"seed": s, "curve": c, "budget": b, "epochs": b, "test_accuracy": 0.5 + 0.01 * b}
            for s in (0, 1)
            for c in ("one-shot", "geometric")
            for b in (5.0, 10.0)
        ]
        + [
            {"seed": s, "curve": "patience 2", "budget": np.nan, "epochs": 17.0 + s, "test_accuracy": 0.6}
            for s in (0, 1)
        ]
    )
    figure = pruning_plots.budget_view(budget, ratio=0.95)
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    points = [t for t in figure.data if t.mode == "markers"]
    assert [t.name for t in lines] == ["one-shot (n=2)", "geometric (n=2)"]
    assert list(points[0].x) == [17.0, 18.0]


def test_staircase_layer_bars_and_costs():
    figure = pruning_plots.schedule_staircase({"one-shot": (0.9,), "geometric": (0.6, 0.84, 0.9)}, ratio=0.9)
    assert list(figure.data[1].y) == [0.0, 0.6, 0.84, 0.9] and figure.data[1].line.shape == "hv"
    _, layers = fake_tables()
    bars = pruning_plots.layer_sparsity_bars(
        {"a": pruning_plots.select(layers, curve="one-shot", ratio=0.8)}, title="layers"
    )
    assert list(bars.data[0].x) == list(LAYERS)
    costs = pd.DataFrame(
        {
            "channel_ratio": [0.0, 0.5],
            "parameter_ratio": [1, 0.3],
            "flop_ratio": [1, 0.25],
            "latency_ratio": [1, 0.6],
        },
        index=["dense", "0.5"],
    )
    figure = pruning_plots.structured_cost_bars(costs)
    assert [list(t.y) for t in figure.data] == [[0.3], [0.25], [0.6]]


def test_playground_controls_update_its_state():
    runs, layers = fake_tables()
    playground = pruning_plots.pruning_playground(runs, layers, dense_accuracy=0.99)
    controls = playground.controls
    assert set(controls) == {"ratio", "granularity", "criterion", "regime", "patience"}
    assert controls["criterion"].value == "global-magnitude"  # the criterion with the most regimes comes first
    renders = playground.explorer.renders
    controls["ratio"].value = 0.95
    assert playground.chosen["ratio"] == 0.95 and playground.explorer.renders == renders + 1
    assert isinstance(playground.last, go.Figure)
    star = [t for t in playground.last.data if (t.name or "").startswith("chosen")][0]
    assert star.x == (0.95,)
    bars = [t for t in playground.last.data if t.type == "bar"][0]
    assert list(bars.y) == pytest.approx([0.95 / 3, 0.95 * 2 / 3, 0.95])  # that model's per-layer sparsity

    controls["regime"].value = "patience"
    assert playground.chosen["curve"] == "patience 2"
    controls["criterion"].value = "random"  # random ran one-shot only: falls back, and says so
    assert playground.chosen["curve"] == "one-shot" and playground.chosen["notes"]

    controls["granularity"].value = "structured"  # criteria follow the granularity; the ratio snaps
    assert list(controls["criterion"].options) == ["l2"]
    assert playground.chosen["criterion"] == "l2" and playground.chosen["ratio"] == 0.7
    assert "showing 0.7" in playground.last.layout.title.text


def test_rerun_button_runs_the_chosen_configuration_with_a_progress_bar():
    runs, layers = fake_tables()
    calls = []

    def rerun(*, seed, granularity, criterion, regime, ratio, patience, on_epoch):
        calls.append(dict(seed=seed, granularity=granularity, criterion=criterion, regime=regime, ratio=ratio))
        for epoch in range(1, 11):
            on_epoch(float(epoch))
        return SimpleNamespace(test_accuracy=0.5, epochs=10.0)

    playground = pruning_plots.pruning_playground(
        runs, layers, rerun=rerun, expected_epochs=lambda regime: 10.0, seed=1
    )
    playground.controls["regime"].value = "geometric"
    playground.controls["ratio"].value = 0.8
    assert playground.progress.value == 0
    playground.click()
    assert calls == [
        dict(seed=1, granularity="unstructured", criterion="global-magnitude", regime="geometric", ratio=0.8)
    ]
    assert playground.progress.value == playground.progress.max == 10.0
    assert playground.progress.bar_style == "success" and not playground.button.disabled
    assert "0.500" in playground.status.value and "0.530" in playground.status.value  # live beside stored
    assert playground.last_rerun.test_accuracy == 0.5


def test_playground_without_a_rerun_has_a_disabled_button():
    runs, layers = fake_tables()
    playground = pruning_plots.pruning_playground(runs, layers)
    assert playground.button.disabled
    playground.click()
    assert playground.last_rerun is None
    with pytest.raises(ValueError, match="runs"):
        pruning_plots.pruning_playground(runs.iloc[:0], layers)
