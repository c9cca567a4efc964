import copy
import itertools
import json
from dataclasses import replace

import pytest
import torch

import efflab
from efflab.data.digits import load_digits
from efflab.models.cnn import CNN
from efflab.runtime import torch_threads
from efflab.shapley import experiment
from efflab.shapley.experiment import (
    FAMILIES,
    NETWORK_METHODS,
    ShapleyBudget,
    findings,
    paper_rows,
    prune_network,
    removal_curves,
    run_experiment,
    train_model,
)
from efflab.shapley.values import channel_layers, oracle_sets

TINY = replace(
    ShapleyBudget.quick(),
    widths=(4, 6),
    hidden=8,
    train_steps=40,
    seeds=1,
    partial_orders=(1, 2),
    permutations=(1, 3),
    regression_samples=(8, 16),
    repeats=2,
    matched=2,
    finetune_removals=(2, 4),
    finetune_steps=2,
    network_permutations=2,
    network_finetune_steps=2,
)


@pytest.fixture(scope="module")
def result():
    run = efflab.setup("quick", "cpu", 3, verbose=False)
    return run_experiment(run, TINY, progress=False)


def brute_force_shapley(values: torch.Tensor) -> torch.Tensor:
    """Shapley values as the mean marginal over every one of the n! orders: independent of the library's
    size-by-size formula."""
    players = int(len(values)).bit_length() - 1
    total = torch.zeros(players, dtype=torch.float64)
    orders = list(itertools.permutations(range(players)))
    for order in orders:
        index = 0
        for player in order:
            total[player] += values[index | (1 << player)] - values[index]
            index |= 1 << player
    return total / len(orders)


def test_the_exact_values_are_the_mean_marginal_over_all_orders(result):
    for (seed, layer), table in result.tables.items():
        assert torch.allclose(result.exact(seed, layer), brute_force_shapley(table.values("accuracy")), atol=1e-12)


def test_the_exact_tables_and_estimates_are_complete(result):
    assert result.seeds == [3] and set(result.tables) == {(3, "features.0.conv"), (3, "features.1.conv")}
    for layer, players in (("features.0.conv", 4), ("features.1.conv", 6)):
        assert len(result.tables[3, layer].accuracy) == 2**players
        summary = result.matched_summary(layer)
        assert list(summary.index) == list(FAMILIES)
        assert summary.loc["exact Shapley", "kendall"] == pytest.approx(1.0)
        assert summary.loc["exact Shapley", "evaluations"] == 2**players
        assert summary.loc["leave-one-out", "evaluations"] == players + 1
        assert summary.loc["partial Shapley (adding)", "evaluations"] == 1 + players + players * (players - 1) // 2
        assert summary.loc["kernel regression", "setting"] == TINY.matched * players
        assert summary.loc["L1 norm", "evaluations"] == 0
        for column in ("removal", "adding"):
            assert summary[column].between(0, 1).all()
        sizes = range(1, min(TINY.oracle_sizes, players - 1) + 1)
        assert summary.baseline.iloc[0] == pytest.approx(sum(sizes) / len(sizes) / players)


def test_the_oracle_accuracies_are_recomputed_from_the_oracle_sets(result):
    """Accuracy of removal and of adding, counted here set by set from the tables."""
    rows = result.estimates[(result.estimates.layer == "features.1.conv") & result.estimates.matched]
    table = result.tables[3, "features.1.conv"]
    sizes = list(range(1, 6))
    removal, adding = oracle_sets(table, sizes), oracle_sets(table, sizes, direction="adding")
    for row in rows[rows.draw == 0].itertuples():
        order = torch.argsort(torch.tensor(row.scores), stable=True).tolist()
        found_removal = [len(set(order[:o]) & set(removal[o - 1].nonzero()[:, 0].tolist())) / o for o in sizes]
        found_adding = [len(set(order[::-1][:o]) & set(adding[o - 1].nonzero()[:, 0].tolist())) / o for o in sizes]
        assert row.removal == pytest.approx(sum(found_removal) / 5) and row.adding == pytest.approx(
            sum(found_adding) / 5
        )


def test_every_estimate_is_charged_at_most_the_whole_game(result):
    rows = result.estimates
    assert (rows.evaluations <= 2**rows.players).all()
    sampled = rows[rows.family == "permutations"]
    assert (sampled.evaluations <= sampled.setting * (sampled.players - 1) + 2).all()


def test_agreement_by_size_in_both_directions_has_the_random_baseline(result):
    rows = result.agreement[result.agreement.layer == "features.1.conv"]
    assert set(rows.direction) == {"removing", "adding"}
    assert sorted(rows["size"].unique()) == [1, 2, 3, 4, 5]
    assert (rows.baseline == rows["size"] / 6).all()


def test_removal_covers_every_ranking_and_fine_tunes_only_the_chosen_layer(result):
    pruned = result.removal[result.removal.stage == "pruned"]
    assert set(pruned.ranking) == {*FAMILIES, "oracle set"}
    removed, curves = removal_curves(result, "features.0.conv")
    assert removed == [1, 2, 3] and all(values.shape == (1, 3) for values in curves.values())
    tuned = result.removal[result.removal.stage == "fine-tuned"]
    assert set(tuned.layer) == {TINY.finetune_layer}
    assert len(tuned) == (len(FAMILIES) + 1) * len(TINY.finetune_removals)


def test_whole_network_pruning_shrinks_the_network(result):
    network = result.network
    dense = network[network.method == "dense"].iloc[0]
    pruned = network[network.stage == "pruned"]
    assert set(pruned.method) == set(NETWORK_METHODS)
    assert (pruned.parameters < dense.parameters).all() and (pruned.flops < dense.flops).all()
    free = pruned[pruned.method.isin(["L1 norm", "random"])]
    assert (free.evaluations == 0).all() and (pruned[pruned.method == "permutations"].evaluations > 0).all()


def test_pick_respects_the_budget(result):
    cheap = result.pick("features.1.conv", "permutations", budget=1)
    assert cheap.setting == min(TINY.permutations)  # nothing affordable: the cheapest setting
    for budget in (10, 40):
        chosen = result.pick("features.1.conv", "plain regression", budget=budget)
        assert chosen.evaluations <= budget


def test_a_seed_gives_the_same_results_inline_and_in_a_worker_process():
    task = experiment.SeedTask(
        5,
        replace(TINY, exact_layers=("features.0.conv",), finetune_layer="features.0.conv", finetune_removals=(2,)),
        "accuracy",
    )
    (inline,) = experiment.run_all(experiment.study_seed, [task], backend="inline", progress=False)
    (pooled,) = experiment.run_all(experiment.study_seed, [task], backend="processes", progress=False)
    for name in ("estimates", "removal", "network", "dense"):
        assert inline[name] == pooled[name], name


def test_summary_is_plain_data_and_the_committed_run_gets_its_own_column(result):
    summary = result.summary()
    json.dumps(summary)
    rows = result.estimates[(result.estimates.layer == TINY.finetune_layer) & result.estimates.matched]
    loo = rows[rows.family == "leave-one-out"]
    assert summary["families"]["leave-one-out"]["oracle"] == [float(loo.oracle.mean())]
    other = copy.deepcopy(summary)
    other["families"]["exact Shapley"]["oracle"] = [-1.0]
    table = paper_rows(summary, other)
    full = [c for c in table.columns if c.startswith("full-mode")][0]
    quantity = "Kendall τ with the Oracle rank, matched budgets"
    assert table.loc[quantity, "this run"] != table.loc[quantity, full] and "-1" in table.loc[quantity, full]
    assert (paper_rows(summary, None)[full] == "n/a").all()
    assert "inferred" in table.loc[quantity, "note"]


def synthetic(exact_oracle, loo_oracle, removal, permutations_tuned):
    """A summary of two seeds with chosen numbers; the rest fixed."""
    families = {
        name: {
            "oracle": [0.2, 0.2],
            "kendall": [0.5, 0.5],
            "removal": [0.5, 0.5],
            "adding": [0.5, 0.5],
            "evaluations": [10.0, 10.0],
        }
        for name in FAMILIES
    }
    families["exact Shapley"].update(oracle=exact_oracle, removal=removal, adding=removal)
    families["leave-one-out"].update(oracle=loo_oracle)
    families["L1 norm"].update(oracle=loo_oracle)
    return {
        "players": 16,
        "oracle_sizes": 5,
        "families": families,
        "random_baseline": 0.19,
        "test_images": 364,
        "network_ratio": 0.5,
        "network_accuracy": {"fine-tuned": {"permutations": permutations_tuned, "L1 norm": [0.8, 0.8]}},
    }


def test_findings_have_a_phrasing_for_every_outcome():
    agree = findings(synthetic([0.6, 0.7], [0.1, 0.2], [0.7, 0.8], [0.9, 0.85])).splitlines()
    assert all("agrees with the paper" in line for line in agree[:2] + agree[-1:])
    disagree = findings(synthetic([0.1, 0.2], [0.6, 0.7], [0.1, 0.15], [0.7, 0.75])).splitlines()
    assert all("disagrees with the paper" in line for line in disagree[:3] + disagree[-1:])
    mixed = findings(synthetic([0.6, 0.1], [0.3, 0.3], [0.3, 0.1], [0.9, 0.7])).splitlines()
    assert "mixed across seeds" in mixed[0] and "mixed across seeds" in mixed[-1]
    tie = findings(synthetic([0.3, 0.3], [0.3, 0.3], [0.19, 0.19], [0.8, 0.8])).splitlines()
    assert "cannot tell the two apart" in tie[0] and "cannot tell the two apart" in tie[-1]


def test_prune_network_removes_the_scheduled_share_of_every_layer():
    data = load_digits(1)
    model = train_model(TINY, data, 1)
    with torch_threads(1):
        pruned, evaluations = prune_network(model, data, "leave-one-out", ratio=0.5)
    widths = [pruned.get_submodule(layer) for layer in channel_layers(pruned)]
    assert [w.out_channels for w in widths[:2]] == [2, 3] and widths[2].out_features == 4
    assert evaluations == (4 + 1) + (6 + 1) + (8 + 1)
    assert model.features[0].conv.out_channels == 4  # the original is left alone


def test_budgets_are_valid_and_bad_studies_raise():
    for study in (ShapleyBudget.quick(), ShapleyBudget.full()):
        assert all(study.width(layer) <= 20 for layer in study.exact_layers)
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    assert ShapleyBudget.for_run(run) == ShapleyBudget.quick()
    with pytest.raises(ValueError, match="too many to enumerate"):
        replace(TINY, widths=(4, 24))
    with pytest.raises(ValueError, match="finetune_removals"):
        replace(TINY, finetune_removals=(6,))
    with pytest.raises(ValueError, match="permutations"):
        replace(TINY, permutations=(3, 1))
    with pytest.raises(ValueError, match="oracle_sizes"):
        replace(TINY, oracle_sizes=0)
    with pytest.raises(ValueError, match="payoff"):
        run_experiment(run, TINY, payoff="f1")
    with pytest.raises(ValueError, match="budget"):
        run_experiment(run, object())
    with pytest.raises(ValueError, match="method='taylor'"):
        prune_network(CNN(TINY.model_config()), load_digits(0), "taylor", ratio=0.5)
