import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import efflab
from efflab.early_exit import plots as early_exit_plots
from efflab.early_exit.exits import REGIMES, RegimeSchedule, choose_exits
from efflab.early_exit.experiment import EarlyExitStudy, example_indices, load_study_data, run_study, with_changes
from efflab.ui.widgets import dropdown, explorer, slider


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_study(dataset: str = "digits") -> EarlyExitStudy:
    return with_changes(
        EarlyExitStudy.quick(dataset), widths=(4, 8, 8), hidden=16, seeds=2, batch_size=32,
        backbone_steps=12, exit_steps=8, warmup_steps=2, rank_samples=200,
        timing_thresholds=(0.5,), timing_repeats=1, layouts=2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def result():
    run = efflab.setup("quick", "cpu", 5, verbose=False)
    return run_study(run, tiny_study(), progress=False)


def test_budgets_follow_the_run_mode_and_validate():
    quick = efflab.setup("quick", "cpu", 0, verbose=False)
    full = efflab.setup("full", "cpu", 0, verbose=False)
    for dataset in ("canvas", "digits"):
        assert EarlyExitStudy.for_run(quick, dataset) == EarlyExitStudy.quick(dataset)
        assert EarlyExitStudy.for_run(full, dataset).seeds >= EarlyExitStudy.quick(dataset).seeds >= 3
    schedule = EarlyExitStudy.quick().schedule
    assert schedule.mixed_lr < schedule.backbone_lr  # mixed's phase 2 restarts gently
    with pytest.raises(ValueError, match="dataset='cifar'"):
        EarlyExitStudy.quick("cifar")
    with pytest.raises(ValueError, match="seeds"):
        with_changes(EarlyExitStudy.quick(), seeds=0)
    changed = with_changes(EarlyExitStudy.quick(), exit_steps=7, seeds=4)
    assert changed.schedule == RegimeSchedule(**{**EarlyExitStudy.quick().schedule.__dict__, "exit_steps": 7})
    assert changed.seeds == 4


def test_canvas_data_keeps_test_digits_out_of_training():
    study = with_changes(tiny_study("canvas"), layouts=3)
    data = load_study_data(study, 0)
    digits = efflab.data.digits.load_digits(0)
    assert len(data.train) == 3 * len(digits.train) and len(data.test) == len(digits.test)
    assert data.train.x.shape[1:] == (1, study.canvas_size, study.canvas_size)
    assert abs(float(data.train.x.mean())) < 1e-4 and abs(float(data.train.x.std()) - 1) < 1e-3
    assert torch.equal(data.train.y[: len(digits.train)], digits.train.y)  # the same training digits


def test_study_covers_every_seed_and_regime_consistently(result):
    study = result.study
    assert result.seeds == (5, 6) and result.regimes == REGIMES
    exits = len(study.widths)
    for (seed, _), logits in result.logits.items():
        assert logits.shape == (exits, len(result.labels[seed]), 10)
    assert len(result.costs) == exits and result.relative_costs[-1] > 1.0  # the last exit pays for every head
    assert set(result.curves.groupby(["seed", "regime"]).size().index) == set(result.logits)
    assert len(result.exit_accuracy) == len(result.logits) * exits
    assert len(result.ranks) == len(result.logits) * exits
    assert (result.ranks["rank"] <= result.ranks.dimension).all()
    assert len(result.timing) == len(REGIMES) * len(study.timing_thresholds)
    assert len(result.breakdown) == 2 * exits and result.breakdown.flops.sum() == result.costs[-1]


def test_the_playground_lookup_matches_the_precomputed_curve(result):
    for regime in result.regimes:
        curve = result.curve(regime)
        stored = result.curves[(result.curves.seed == result.seeds[0]) & (result.curves.regime == regime)]
        assert np.allclose(curve.accuracy, stored.accuracy) and np.allclose(
            curve.relative_cost, stored.relative_cost
        )
        outcome = result.outcome(regime, 1.0)
        finals = result.exit_accuracy.query("regime == @regime and seed == @result.seeds[0]").accuracy
        assert outcome.accuracy == pytest.approx(finals.iloc[-1])
        assert outcome.histogram.sum() == len(result.labels[result.seeds[0]])
    with pytest.raises(ValueError, match="seed=99"):
        result.outcome("joint", 0.5, seed=99)
    with pytest.raises(ValueError, match="regime='both'"):
        result.outcome("both", 0.5)


def test_budget_tables_and_bands_have_one_entry_per_seed(result):
    table = result.budget_table()
    assert len(table) == len(result.seeds) * len(result.regimes)
    assert {"25%", "50%", "75%", "100%", "auc"} <= set(table.columns)
    grid = result.budget_grid()
    bands = result.budget_bands(grid)
    assert all(values.shape == (len(result.seeds), len(grid)) for values in bands.values())
    assert all(
        values.shape == (len(result.seeds), len(result.study.widths)) for values in result.rank_bands().values()
    )
    comparison = result.compare("mixed", "disjoint", "auc")
    assert comparison["ahead"] + comparison["behind"] <= comparison["seeds"] == len(result.seeds)
    assert result.compare("joint", "joint", "auc")["mean_difference"] == 0.0
    summary = result.summary()
    assert set(summary["budget_accuracy"]) == set(REGIMES) and summary["dataset"] == "digits"
    assert list(result.budget_summary().index) == list(REGIMES)


def test_same_seed_twice_gives_the_same_logits():
    run = efflab.setup("quick", "cpu", 2, verbose=False)
    study = with_changes(tiny_study(), seeds=1, rank_samples=50)
    first, second = run_study(run, study, progress=False), run_study(run, study, progress=False)
    assert all(torch.equal(first.logits[key], second.logits[key]) for key in first.logits)


def test_stored_networks_exit_where_the_stored_logits_say(result):
    for regime, network in result.networks.items():
        logits = result.logits[(result.seeds[0], regime)]
        for threshold in (0.2, 0.5):
            _, exits = network.early_exit_forward(result.test_inputs, threshold)
            assert torch.equal(exits, choose_exits(logits, threshold))


def test_example_indices_pick_samples_from_the_right_exit():
    exits = torch.tensor([0, 2, 2, 1, 0, 2])
    assert example_indices(exits, 2, 4) == [[0, 4], [3], [1, 2], []]
    with pytest.raises(ValueError, match="per_exit"):
        example_indices(exits, 0, 4)


def test_figures_build_from_the_result(result):
    grid = result.budget_grid(21)
    figures = [
        early_exit_plots.cost_accuracy_bands(grid, result.budget_bands(grid), exit_costs=result.relative_costs),
        early_exit_plots.per_exit_accuracy(result.exit_accuracy_bands(), result.relative_costs),
        early_exit_plots.breakdown_figure(result.breakdown),
        early_exit_plots.rank_figure(result.rank_bands("rank_fraction"), [8, 8, 8]),
        early_exit_plots.speed_figure(result.timing),
        early_exit_plots.rule_comparison(
            {(r, rule): result.curve(r, rule=rule) for r in REGIMES for rule in ("confidence", "entropy")}
        ),
    ]
    assert all(isinstance(figure, go.Figure) and figure.data for figure in figures)


def test_the_playground_explorer_answers_from_precomputed_results(result):
    images, labels = result.images.numpy(), result.labels[result.seeds[0]].tolist()
    curves = {regime: result.curve(regime) for regime in REGIMES}

    def render(regime, threshold):
        outcome = result.outcome(regime, threshold)
        chosen = example_indices(outcome.exits, 3, len(result.costs))
        return early_exit_plots.playground_figure(
            curves, regime, outcome, result.relative_costs, images, chosen, labels
        )

    def histogram(figure):
        return next(trace for trace in figure.data if trace.type == "bar").y

    playground = explorer(
        render, regime=dropdown("regime", REGIMES), threshold=slider("threshold", (0.0, 0.5, 1.0))
    )
    playground.controls["threshold"].value = 1.0
    assert list(histogram(playground.last)) == [0] * (len(result.costs) - 1) + [len(labels)]  # nobody leaves early
    heatmaps = [trace for trace in playground.last.data if trace.type == "heatmap"]
    assert len(heatmaps) == min(3, len(labels))  # only the last exit has examples to show
    playground.controls["threshold"].value = 0.0
    assert histogram(playground.last)[0] == len(labels)  # everyone leaves at the first exit
    playground.controls["regime"].value = "mixed"
    assert playground.renders == 4 and playground.last.layout.annotations[0].text.startswith("mixed")
