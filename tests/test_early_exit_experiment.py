import json
import math
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import efflab
from efflab.early_exit import plots as early_exit_plots
from efflab.early_exit.exits import REGIMES, choose_exits
from efflab.early_exit.experiment import (
    SWEEP_REGIMES,
    EarlyExitBudget,
    example_indices,
    findings,
    load_study_data,
    make_network,
    paper_rows,
    plan_tasks,
    run_experiment,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_budget(**changes) -> EarlyExitBudget:
    settings = dict(
        widths=(4, 8, 8),
        hidden=16,
        seeds=2,
        batch_size=32,
        total_steps=24,
        warmup_steps=2,
        check_every=4,
        patience=2,
        rank_samples=300,
        timing_thresholds=(0.5,),
        timing_repeats=1,
        layouts=2,
    )
    return replace(EarlyExitBudget.quick(), **{**settings, **changes})


@pytest.fixture(scope="module")
def result():
    run = efflab.setup("quick", "cpu", 5, verbose=False)
    return run_experiment(run, tiny_budget(shares=(0.0, 0.5, 1.0)), progress=False)


def test_budgets_follow_the_run_mode_and_validate():
    quick = efflab.setup("quick", "cpu", 0, verbose=False)
    full = efflab.setup("full", "cpu", 0, verbose=False)
    assert EarlyExitBudget.for_run(quick) == EarlyExitBudget.quick()
    assert EarlyExitBudget.for_run(full).seeds >= EarlyExitBudget.quick().seeds >= 3
    assert EarlyExitBudget.quick().describe().startswith("EarlyExitBudget(")
    for bad, match in [
        (dict(dataset="cifar"), "dataset='cifar'"),
        (dict(seeds=0), "seeds"),
        (dict(main_share=0.3), "main_share=0.3"),
        (dict(main_share=1.0), "main_share=1.0"),
        (dict(shares=(0.5, 0.25)), "shares"),
        (dict(shares=(0.0, math.nan)), "shares"),
        (dict(backbone_lr=math.inf), "backbone_lr"),
        (dict(widths=(8,)), "widths"),
    ]:
        with pytest.raises(ValueError, match=match):
            replace(EarlyExitBudget.quick(), **bad)


@pytest.mark.parametrize("budget", [EarlyExitBudget.quick(), EarlyExitBudget.full()])
def test_the_rank_samples_outnumber_every_blocks_dimension(budget):
    network = make_network(budget, 0)
    hidden, dimensions = torch.zeros(1, 1, budget.image_size, budget.image_size), []
    for stage in network.stages:  # an independent count: the real output shapes
        hidden = stage(hidden)
        dimensions.append(hidden[0].numel())
    assert dimensions == budget.block_dimensions()
    assert budget.rank_samples > max(dimensions)
    train_size = budget.layouts * len(efflab.data.digits.load_digits(0).train)
    assert budget.rank_samples <= train_size


def test_canvas_data_keeps_test_digits_out_of_training():
    budget = tiny_budget(layouts=3)
    data = load_study_data(budget, 0)
    digits = efflab.data.digits.load_digits(0)
    assert len(data.train) == 3 * len(digits.train) and len(data.test) == len(digits.test)
    assert data.train.x.shape[1:] == (1, budget.canvas_size, budget.canvas_size)
    assert abs(float(data.train.x.mean())) < 1e-4 and abs(float(data.train.x.std()) - 1) < 1e-3
    assert torch.equal(data.train.y[: len(digits.train)], digits.train.y)  # the same training digits


def test_the_plan_trains_each_backbone_once_and_covers_every_point():
    budget = tiny_budget(seeds=1)
    first, second = plan_tasks(budget, (0,))
    backbones = sorted(t.share for t in first if t.regime is None)
    assert backbones == [s for s in budget.shares if s > 0]  # one phase-1 run per share, shared by regimes
    points = {(t.regime, t.share) for t in first if t.regime} | {(r, s) for _, r, s, _ in second}
    expected = {(r, s) for r in SWEEP_REGIMES for s in budget.shares if 0 < s < 1}
    expected |= {("joint", 0.0), ("disjoint", 0.0), ("mixed", 1.0), ("mixed_low_lr", budget.main_share)}
    assert points == expected


def test_the_sweeps_budget_accounting(result):
    budget, steps = result.budget, result.steps
    total = budget.total_steps
    for row in steps.itertuples():
        assert row.phase1_steps == round(row.share * total)  # what the phase-1 run really trained
        if row.regime == "disjoint":  # early stopping may end phase 3 before its budget
            assert row.later_steps <= total - row.phase1_steps
        else:
            assert row.phase1_steps + row.later_steps == total
    assert set(steps.share) == set(budget.shares)
    assert len(steps) == len(result.seeds) * (2 * len(budget.shares) + 2)  # both sweep regimes, joint, low-lr
    for seed in result.seeds:  # the shared points are the same runs
        assert torch.equal(result.logits[(seed, "mixed", 0.0)], result.logits[(seed, "joint", 0.0)])
        assert torch.equal(result.logits[(seed, "mixed", 1.0)], result.logits[(seed, "disjoint", 1.0)])
    stopping = result.stopping
    assert ((stopping.best_step <= stopping.stopped_at) & (stopping.stopped_at <= stopping.allowed)).all()


def test_the_result_covers_every_seed_and_regime_consistently(result):
    budget = result.budget
    exits = len(budget.widths)
    assert result.seeds == (5, 6)
    for (seed, _, _), logits in result.logits.items():
        assert logits.shape == (exits, len(result.labels[seed]), 10)
        assert result.images[seed].shape[0] == len(result.labels[seed])
    assert len(result.costs) == exits and result.relative_costs[-1] > 1.0  # the last exit pays for every head
    assert len(result.ranks) == len(result.seeds) * len(REGIMES) * exits
    assert (result.ranks["rank"] <= result.ranks.dimension).all()
    assert len(result.timing) == 3 * len(budget.timing_thresholds)
    assert len(result.breakdown) == 2 * exits and result.breakdown.flops.sum() == result.costs[-1]


def test_tables_agree_with_an_independent_reading_of_the_logits(result):
    table = result.budget_table()
    assert len(table) == len(result.seeds) * len(REGIMES)
    for row in table.itertuples():
        share = 0.0 if row.regime == "joint" else result.budget.main_share
        logits = result.logits[(row.seed, row.regime, share)]
        assert row.last_exit == pytest.approx(
            float((logits[-1].argmax(-1) == result.labels[row.seed]).double().mean())
        )
    bands = result.exit_accuracy_bands()
    for regime, values in bands.items():
        assert values[:, -1] == pytest.approx(table[table.regime == regime].last_exit.to_numpy())
    sweep = result.sweep_bands()
    assert all(v.shape == (len(result.seeds), len(result.budget.shares)) for v in sweep.values())
    assert np.allclose(sweep["mixed"][:, 0], table[table.regime == "joint"].auc)  # the sweep's 0 % is joint


def test_summary_is_plain_json_and_drives_the_tables(result):
    summary = result.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary["main"]) == set(REGIMES) and summary["dataset"] == "canvas"
    assert summary["rank_samples"] == 300 and summary["block_dimensions"] == result.budget.block_dimensions()
    table = paper_rows(summary, None)
    assert "mixed - disjoint, accuracy at 25% cost" in table.index and (table.iloc[:, 2] == "n/a").all()
    assert not paper_rows(summary, summary).iloc[:, 2].eq("n/a").all()  # a committed run fills its column
    text = findings(summary)
    assert "Mixed vs disjoint" in text and "Phase-1 share" in text


def _summary_where(mixed_minus_disjoint):
    """A summary in which mixed leads disjoint at 25 % cost by the given amounts, seed by seed."""
    seeds = len(mixed_minus_disjoint)
    row = {c: [0.5] * seeds for c in ("25%", "50%", "75%", "100%", "auc", "last_exit")}
    main = {regime: {c: list(v) for c, v in row.items()} for regime in REGIMES}
    main["mixed"]["25%"] = [0.5 + d for d in mixed_minus_disjoint]
    return {
        "dataset": "canvas",
        "seeds": list(range(seeds)),
        "total_steps": 100,
        "main_share": 0.5,
        "shares": [0.0, 0.5, 1.0],
        "main": main,
        "sweep_auc": {r: {"0": [0.4] * seeds, "0.5": [0.5] * seeds, "1": [0.3] * seeds} for r in SWEEP_REGIMES},
        "disjoint_heads": {"stopped_early": 1, "heads": 3, "mean_best_step_fraction": 0.5},
        "rank_samples": 100,
        "block_dimensions": [64, 32],
        "timing": [],
    }


@pytest.mark.parametrize(
    "differences, phrase",
    [
        ((0.1, 0.2, 0.05), "on every seed, as the paper says"),
        ((-0.1, -0.2, -0.05), "this run disagrees"),
        ((0.1, -0.2, 0.05), "does not settle it"),
    ],
)
def test_findings_phrase_each_outcome(differences, phrase):
    text = findings(_summary_where(differences))
    first = text.split("\n")[2]  # the mixed-vs-disjoint sentence
    assert phrase in first
    ahead = sum(d > 0 for d in differences)
    assert f"mixed ahead on {ahead}/3 seeds" in first
    assert "at 50 %, strictly between" in text and "beat joint on every seed" in text  # the made-up sweep


def test_same_seed_twice_gives_the_same_logits():
    run = efflab.setup("quick", "cpu", 2, verbose=False)
    budget = tiny_budget(seeds=1, total_steps=8, shares=(0.0, 0.5, 1.0), rank_samples=50)
    first, second = run_experiment(run, budget, progress=False), run_experiment(run, budget, progress=False)
    assert first.logits.keys() == second.logits.keys()
    assert all(torch.equal(first.logits[key], second.logits[key]) for key in first.logits)


def test_stored_networks_exit_where_the_stored_logits_say(result):
    for regime, network in result.networks.items():
        share = result.share_of(regime)
        logits = result.logits[(result.seeds[0], regime, share)]
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
    summary = result.summary()
    figures = [
        early_exit_plots.cost_accuracy_bands(grid, result.budget_bands(grid), exit_costs=result.relative_costs),
        early_exit_plots.per_exit_accuracy(result.exit_accuracy_bands(), result.relative_costs),
        early_exit_plots.breakdown_figure(result.breakdown),
        early_exit_plots.rank_figure(result.rank_bands(), summary["block_dimensions"], summary["rank_samples"]),
        early_exit_plots.sweep_figure(result.budget.shares, result.sweep_bands(), result.budget.total_steps),
        early_exit_plots.speed_figure(result.timing),
        early_exit_plots.rule_comparison(
            {(r, rule): result.curve(r, rule=rule) for r in REGIMES for rule in ("confidence", "entropy")}
        ),
    ]
    assert all(isinstance(figure, go.Figure) and figure.data for figure in figures)
    assert "more than any block's dimension" in figures[3].layout.title.text
    assert (
        "caps the rank" in early_exit_plots.rank_figure(result.rank_bands(), [10, 300, 8], 200).layout.title.text
    )


def test_every_playground_control_visibly_answers(result):
    playground = early_exit_plots.playground(result, examples_per_exit=3)

    def histogram():
        return list(next(trace for trace in playground.last.data if trace.type == "bar").y)

    labels = result.labels[result.seeds[0]]
    n_exits = len(result.costs)
    playground.controls["threshold"].value = 1.0  # nobody leaves early
    assert histogram() == [0] * (n_exits - 1) + [len(labels)]
    final = result.logits[(result.seeds[0], "mixed", result.budget.main_share)][-1]
    assert f"accuracy {float((final.argmax(-1) == labels).float().mean()):.3f}" in playground.status.value
    playground.controls["threshold"].value = 0.0  # everyone leaves at the first exit
    assert histogram()[0] == len(labels)
    before = playground.status.value
    playground.controls["share"].value = 0.0
    assert "phase 1 at 0 %" in playground.status.value and playground.status.value != before
    playground.controls["seed"].value = result.seeds[1]
    assert f"seed {result.seeds[1]}" in playground.status.value
    playground.controls["regime"].value = "joint"
    assert "does not apply" in playground.status.value  # joint has no phase 1, and says so
    playground.controls["regime"].value = "mixed_low_lr"
    assert "trained at 50 % only" in playground.status.value
    assert playground.renders == 7
