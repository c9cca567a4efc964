import pytest
import torch

import efflab
from efflab.data.digits import load_digits
from efflab.models.cnn import CNN
from efflab.runtime import torch_threads
from efflab.shapley.experiment import (
    FAMILIES,
    NETWORK_METHODS,
    ShapleyStudy,
    prune_network,
    removal_curves,
    run_study,
    summary_sizes,
    train_model,
    with_budget,
)
from efflab.shapley.values import channel_layers

TINY = with_budget(
    ShapleyStudy.quick(),
    widths=(4, 6), hidden=8, train_steps=40, seeds=1, partial_orders=(1, 2), permutations=(1, 3),
    regression_samples=(8, 16), repeats=2, matched=2, finetune_removals=(2, 4), finetune_steps=2,
    network_permutations=2, network_finetune_steps=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def result():
    run = efflab.setup("quick", "cpu", 3, verbose=False)
    return run_study(TINY, run, progress=False)


def test_the_exact_tables_and_estimates_are_complete(result):
    assert result.seeds == [3] and set(result.tables) == {(3, "features.0.conv"), (3, "features.1.conv")}
    for layer, players in (("features.0.conv", 4), ("features.1.conv", 6)):
        assert len(result.tables[3, layer].accuracy) == 2**players
        summary = result.matched_summary(layer)
        assert list(summary.index) == list(FAMILIES)
        assert summary.loc["exact Shapley", "kendall"] == pytest.approx(1.0)
        assert summary.loc["exact Shapley", "evaluations"] == 2**players
        assert summary.loc["leave-one-out", "evaluations"] == players + 1
        assert summary.loc["kernel regression", "setting"] == TINY.matched * players
        assert summary.loc["L1 norm", "evaluations"] == 0
        assert ((summary.agreement >= 0) & (summary.agreement <= 1)).all()
        sizes = summary_sizes(players)
        assert summary.baseline.iloc[0] == pytest.approx(sum(sizes) / len(sizes) / players)


def test_every_estimate_is_charged_at_most_the_whole_game(result):
    rows = result.estimates
    assert (rows.evaluations <= 2**rows.players).all()
    sampled = rows[rows.family == "permutations"]
    assert (sampled.evaluations <= sampled.setting * (sampled.players - 1) + 2).all()


def test_agreement_by_size_has_the_random_baseline(result):
    rows = result.agreement[result.agreement.layer == "features.1.conv"]
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
    exact = result.pick("features.0.conv", "exact Shapley").scores
    assert torch.equal(result.exact(3, "features.0.conv"), torch.tensor(exact, dtype=torch.float64))


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
    for study in (ShapleyStudy.quick(), ShapleyStudy.full()):
        assert all(study.width(layer) <= 20 for layer in study.exact_layers)
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    assert ShapleyStudy.for_run(run) == ShapleyStudy.quick()
    with pytest.raises(ValueError, match="too many to enumerate"):
        with_budget(TINY, widths=(4, 24))
    with pytest.raises(ValueError, match="finetune_removals"):
        with_budget(TINY, finetune_removals=(6,))
    with pytest.raises(ValueError, match="permutations"):
        with_budget(TINY, permutations=(3, 1))
    with pytest.raises(ValueError, match="payoff"):
        run_study(TINY, run, payoff="f1")
    with pytest.raises(ValueError, match="method='taylor'"):
        prune_network(CNN(TINY.model_config()), load_digits(0), "taylor", ratio=0.5)
