import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from efflab.pruning import plots as pruning_plots

LAYERS = ("features.0.conv", "classifier.hidden", "classifier.out")


def fake_tables():
    """Fixed-budget runs and layer tables shaped like PruningResult's, with made-up accuracies."""
    runs, layers = [], []
    configs = [("unstructured", "global-magnitude", c, (0.5, 0.8, 0.95)) for c in ("one-shot", "geometric")]
    configs += [("unstructured", "random", "one-shot", (0.5, 0.8, 0.95))]
    configs += [("structured", "l2", c, (0.3, 0.7)) for c in ("one-shot", "geometric")]
    for (granularity, criterion, curve, ratios), seed in itertools.product(configs, (0, 1, 2)):
        for ratio in ratios:
            key = dict(seed=seed, granularity=granularity, criterion=criterion, curve=curve, regime=curve)
            key.update(ratio=ratio, patience=np.nan)
            accuracy = 1 - ratio * (0.5 if curve == "one-shot" else 0.6) + 0.01 * seed
            runs.append({**key, "test_accuracy": accuracy, "epochs": 10.0})
            layers += [{**key, "layer": name, "sparsity": ratio * (i + 1) / 3} for i, name in enumerate(LAYERS)]
    return pd.DataFrame(runs), pd.DataFrame(layers)


def fake_result(rerun=None):
    """A stand-in for PruningResult: the tables, a patience run of geometric at 0.8, and a recorded rerun."""
    runs, layers = fake_tables()
    patience, extra_layers = [], []
    for seed in (0, 1, 2):
        key = dict(seed=seed, granularity="unstructured", criterion="global-magnitude", regime="geometric")
        key.update(curve="geometric + patience 2", patience=2, ratio=0.8)
        patience.append({**key, "test_accuracy": 0.7 + 0.01 * seed, "twin_test_accuracy": 0.6, "epochs": 14.0})
        extra_layers += [{**key, "layer": name, "sparsity": 0.2 * (i + 1)} for i, name in enumerate(LAYERS)]
    calls = []

    def default_rerun(**values):
        calls.append(values)
        for epoch in range(1, 6):
            values["on_epoch"](float(epoch))
        return SimpleNamespace(test_accuracy=0.5, epochs=5.0)

    return SimpleNamespace(
        runs=runs,
        patience=pd.DataFrame(patience),
        layers=pd.concat([layers, pd.DataFrame(extra_layers)], ignore_index=True),
        dense=pd.DataFrame({"seed": [0, 1, 2], "test_accuracy": [0.98, 0.97, 0.99]}),
        budget=SimpleNamespace(main_criteria=(("unstructured", "global-magnitude"), ("structured", "l2"))),
        seeds=(0, 1, 2),
        rerun=rerun or default_rerun,
        expected_epochs=lambda patience: 5.0 if patience is None else 20.0,
        calls=calls,
    )


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
    assert names[:2] == ["one-shot (n=3)", "geometric (n=3)"]
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
            {
                "seed": s,
                "curve": "geometric + patience 2",
                "budget": np.nan,
                "epochs": 17.0 + s,
                "test_accuracy": 0.6,
            }
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


def test_playground_controls_each_change_what_is_shown():
    result = fake_result()
    play = pruning_plots.playground(result)
    controls = play.controls
    assert set(controls) == {"ratio", "granularity", "criterion", "regime", "patience"}
    renders = play.renders
    controls["ratio"].value = 0.95
    assert play.renders == renders + 1 and isinstance(play.last, go.Figure)
    star = [t for t in play.last.data if (t.name or "").startswith("chosen")][0]
    assert star.x == (0.95,)
    bars = [t for t in play.last.data if t.type == "bar"][0]
    assert list(bars.y) == pytest.approx([0.95 / 3, 0.95 * 2 / 3, 0.95])  # that model's per-layer sparsity
    # geometric at 0.95, seeds 0..2: 1 - 0.95 * 0.6 + 0.01 * seed
    assert f"test accuracy {1 - 0.57 + 0.01:.3f}" in play.status.value

    controls["regime"].value = "one-shot"
    assert "one-shot, global-magnitude, ratio 0.95" in play.status.value

    controls["ratio"].value = 0.8
    controls["regime"].value = "geometric"
    controls["patience"].value = 2  # the patience run and its twin are shown, per seed
    assert play.status.value.startswith("geometric + patience 2")
    assert "twin 0.600" in play.status.value
    twins = [t for t in play.last.data if (t.name or "").startswith("equal-epochs twin")][0]
    assert list(twins.y) == [0.6, 0.6, 0.6]

    controls["ratio"].value = 0.5  # no patience run there: the fixed budget is shown, and the status says so
    assert "showing the fixed budget" in play.status.value and "run only" in play.status.value

    controls["patience"].value = "off"
    controls["criterion"].value = "random"  # random ran one-shot only: falls back, and says so
    assert "geometric was not run with random: showing one-shot" in play.status.value

    controls["granularity"].value = "structured"  # random is not structured; the ratio snaps to the grid
    assert "random is not a structured criterion: showing l2" in play.status.value
    assert "structured runs exist at 0.3, 0.7: showing 0.7" in play.status.value


def test_playground_button_reruns_the_shown_configuration_with_progress():
    result = fake_result()
    play = pruning_plots.playground(result)
    play.controls["ratio"].value = 0.8
    play.controls["regime"].value = "geometric"
    play.run_action()
    (call,) = result.calls
    assert {k: call[k] for k in ("seed", "granularity", "criterion", "regime", "ratio", "patience")} == dict(
        seed=0,
        granularity="unstructured",
        criterion="global-magnitude",
        regime="geometric",
        ratio=0.8,
        patience=None,
    )
    assert play.progress.value == 1.0 and play.actions_run == 1
    stored = 1 - 0.8 * 0.6  # seed 0's stored run
    assert "0.500" in play.status.value and f"{stored:.3f}" in play.status.value


def test_playground_reports_a_failed_rerun():
    def broken(**values):
        raise ValueError("seed=9 is not allowed")

    play = pruning_plots.playground(fake_result(rerun=broken))
    play.run_action()
    assert "not run" in play.status.value and "seed=9" in play.status.value
