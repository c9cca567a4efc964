import copy
import math

import pytest
import torch

from efflab.data.digits import infinite_batches, load_digits
from efflab.models.cnn import CNN, CNNConfig
from efflab.runtime import torch_threads
from efflab.shapley import values as sh
from efflab.train import TrainConfig, classification_metrics, fit


@pytest.fixture(scope="module")
def digits():
    return load_digits(0)


@pytest.fixture(scope="module")
def model(digits):
    """A small CNN trained for a moment, so that channels matter and payoffs differ."""
    torch.manual_seed(0)
    network = CNN(CNNConfig(widths=(5, 6), hidden=8))
    with torch_threads(1):  # a model this small trains fastest on one thread, above all on shared cores
        fit(network, infinite_batches(digits.train, 64, seed=0), TrainConfig(steps=120, lr=1e-2), progress=False)
    return network.eval()


LOSS_TOLERANCE = 1e-6  # the network computes in float32: the same coalition in another batch may differ by ~1e-8


def game_on(model, digits, layer="features.0.conv", payoff="accuracy", samples=96):
    return sh.ChannelGame(model, layer, digits.val.x[:samples], digits.val.y[:samples], payoff=payoff)


class AdditiveGame:
    """v(S) = sum of the kept players' worths: every estimator should return the worths themselves."""

    def __init__(self, worths):
        self.worths = torch.as_tensor(worths, dtype=torch.float64)
        self.players = len(self.worths)

    def __call__(self, coalitions):
        return coalitions.double() @ self.worths


# --- the game ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["features.0.conv", "features.1.conv", "classifier.hidden"])
def test_batched_game_equals_the_network_with_those_channels_zeroed(model, digits, layer):
    game = game_on(model, digits, layer)
    coalitions = torch.rand(6, game.players, generator=torch.Generator().manual_seed(1)) > 0.4
    outcomes = game.outcomes(coalitions)
    for row, kept in enumerate(coalitions):
        zeroed = copy.deepcopy(model)
        module = zeroed.get_submodule(layer)
        with torch.no_grad():
            module.weight[~kept] = 0
            module.bias[~kept] = 0
        expected = classification_metrics(zeroed, digits.val.x[:96], digits.val.y[:96])
        assert outcomes["accuracy"][row] == pytest.approx(expected["val_accuracy"], abs=1e-12)
        assert outcomes["loss"][row] == pytest.approx(expected["val_loss"], abs=1e-4)


def test_loss_payoff_is_the_negative_loss(model, digits):
    game = game_on(model, digits, payoff="loss")
    coalitions = sh.all_coalitions(game.players)[-3:]
    assert torch.allclose(game(coalitions), -game.outcomes(coalitions)["loss"])


def test_coalitions_are_bit_patterns():
    coalitions = sh.all_coalitions(4)
    assert coalitions.shape == (16, 4) and not coalitions[0].any() and coalitions[-1].all()
    assert torch.equal(sh.coalition_index(coalitions), torch.arange(16))
    assert len(sh.coalitions_missing_at_most(6, 2)) == 1 + 6 + 15


def test_shapley_weights_make_a_distribution_over_coalitions():
    for players in (1, 2, 5, 9):
        weights = sh.shapley_weights(players)
        assert sum(math.comb(players - 1, s) * weights[s] for s in range(players)) == pytest.approx(1.0)


# --- the Shapley axioms on a real layer -------------------------------------------------------------------------


@pytest.mark.parametrize("payoff", ["accuracy", "loss"])
def test_exact_values_are_efficient(model, digits, payoff):
    game = game_on(model, digits, "features.1.conv", payoff)
    exact = sh.exact_shapley(game)
    ends = game(sh.empty_and_full(game.players))
    assert float(exact.scores.sum()) == pytest.approx(float(ends[1] - ends[0]), abs=LOSS_TOLERANCE)
    assert exact.scores.abs().max() > 1e-3  # the layer matters, so the check has something to check
    assert exact.evaluations == 2**game.players


def test_a_dummy_channel_gets_zero(model, digits):
    dead = copy.deepcopy(model)
    with torch.no_grad():
        dead.features[0].conv.weight[2] = 0
        dead.features[0].conv.bias[2] = 0
    for payoff, tolerance in (("accuracy", 1e-12), ("loss", LOSS_TOLERANCE)):
        game = game_on(dead, digits, payoff=payoff)
        assert sh.exact_shapley(game).scores[2] == pytest.approx(0.0, abs=tolerance)
        assert sh.leave_one_out(game).scores[2] == pytest.approx(0.0, abs=tolerance)


def test_symmetric_channels_get_equal_values(model, digits):
    twin = copy.deepcopy(model)
    with torch.no_grad():  # channel 3 becomes an exact copy of channel 1, downstream included
        twin.features[0].conv.weight[3] = twin.features[0].conv.weight[1]
        twin.features[0].conv.bias[3] = twin.features[0].conv.bias[1]
        twin.features[1].conv.weight[:, 3] = twin.features[1].conv.weight[:, 1]
    scores = sh.exact_shapley(game_on(twin, digits, payoff="loss")).scores
    assert scores[1] == pytest.approx(float(scores[3]), abs=LOSS_TOLERANCE)
    assert (scores[1] - scores[[0, 2, 4]]).abs().min() > 1e-4  # the test could fail: other channels differ


def test_shapley_value_is_the_mean_marginal_over_sizes(model, digits):
    game = game_on(model, digits, "features.1.conv", "loss")
    values = game(sh.all_coalitions(game.players))
    marginals = sh.marginals_by_size(values)
    assert torch.allclose(marginals.mean(1), sh.exact_shapley(game).scores, atol=LOSS_TOLERANCE)
    assert torch.allclose(marginals[:, -1], sh.leave_one_out(game).scores, atol=LOSS_TOLERANCE)


# --- the estimators ---------------------------------------------------------------------------------------------


def test_partial_shapley_of_order_one_is_leave_one_out_over_n(model, digits):
    game = game_on(model, digits, "features.1.conv", "loss")
    partial, loo = sh.partial_shapley(game, 1), sh.leave_one_out(game)
    assert torch.allclose(partial.scores * game.players, loo.scores, atol=1e-12)
    assert torch.equal(partial.ranking, loo.ranking)
    assert partial.evaluations == loo.evaluations == game.players + 1


def test_partial_shapley_of_full_order_is_exact_and_costs_what_it_should(model, digits):
    game = game_on(model, digits, "features.1.conv", "loss")
    players = game.players
    assert torch.allclose(sh.partial_shapley(game, players).scores, sh.exact_shapley(game).scores, atol=1e-12)
    for order in (2, 3):
        expected = sum(math.comb(players, j) for j in range(order + 1))
        assert sh.partial_shapley(game, order).evaluations == expected


def test_permutation_error_falls_as_orders_grow(model, digits):
    game = sh.TabulatedGame(game_on(model, digits, "features.1.conv", "loss")(sh.all_coalitions(6)))
    exact = sh.exact_shapley(game).scores
    few = sh.permutation_shapley(game, 5, seed=0)
    many = sh.permutation_shapley(game, 400, seed=0)
    assert (many.scores - exact).abs().mean() < (few.scores - exact).abs().mean()
    assert few.evaluations <= 5 * (game.players - 1) + 2
    assert sh.permutation_shapley(game, 1, seed=3).evaluations == game.players + 1


def test_truncation_never_costs_more_and_keeps_an_additive_game_exact():
    game = AdditiveGame([0.5, 0.1, 0.3, 0.05, 0.05])
    plain = sh.permutation_shapley(game, 30, seed=1)
    cut = sh.permutation_shapley(game, 30, seed=1, truncation=0.2)
    assert cut.evaluations <= plain.evaluations
    assert torch.allclose(plain.scores, game.worths)  # in an additive game every marginal is the worth


def test_same_seed_same_estimate():
    game = AdditiveGame(torch.linspace(0, 1, 7) ** 2)
    for make in (
        lambda s: sh.permutation_shapley(game, 4, seed=s),
        lambda s: sh.regression_shapley(game, 9, seed=s),
    ):
        assert torch.equal(make(5).scores, make(5).scores)


def test_kernel_weighted_regression_over_all_coalitions_recovers_the_exact_values(model, digits):
    game = game_on(model, digits, "features.1.conv", "loss")
    coalitions = sh.all_coalitions(game.players)[1:-1]
    ends, values = game(sh.empty_and_full(game.players)), game(coalitions)
    empty, full = float(ends[0]), float(ends[1])
    weights = sh.shapley_kernel_weights(coalitions)
    scores = sh.solve_shapley_regression(coalitions, values, empty=empty, full=full, weights=weights)
    assert torch.allclose(scores, sh.exact_shapley(game).scores, atol=LOSS_TOLERANCE)
    unweighted = sh.solve_shapley_regression(coalitions, values, empty=empty, full=full)
    assert not torch.allclose(unweighted, scores, atol=1e-4)  # the weights matter


def test_both_regressions_recover_an_additive_game():
    game = AdditiveGame([0.4, -0.1, 0.25, 0.0, 0.3, 0.15])
    for weighted in (True, False):
        estimate = sh.regression_shapley(game, 60, seed=2, weighted=weighted)
        assert torch.allclose(estimate.scores, game.worths, atol=1e-9)
        assert estimate.evaluations <= 60 + 2 * weighted


def test_counting_game_charges_distinct_coalitions_once():
    counted = sh.CountingGame(AdditiveGame([1.0, 2.0, 3.0]))
    full = torch.ones(4, 3, dtype=torch.bool)
    assert torch.equal(counted(full), torch.full((4,), 6.0, dtype=torch.float64))
    counted(sh.all_coalitions(3))
    assert counted.evaluations == 8


def test_free_criteria_cost_nothing(model):
    l1, l2 = sh.norm_scores(model, "features.0.conv", 1), sh.norm_scores(model, "features.0.conv", 2)
    weight = model.features[0].conv.weight.detach().flatten(1)
    assert torch.allclose(l1.scores, weight.abs().sum(1).double())
    assert l1.evaluations == l2.evaluations == sh.random_scores(5, seed=1).evaluations == 0


# --- the oracle benchmark ---------------------------------------------------------------------------------------


def test_the_oracle_set_is_at_least_as_good_as_any_estimators_bottom_set(model, digits):
    game = game_on(model, digits, "features.1.conv")
    table = sh.tabulate(game)
    tabulated = table.game()
    sizes = list(range(1, game.players))
    oracle = sh.oracle_sets(table, sizes)
    assert torch.equal(oracle.sum(1), torch.tensor(sizes))
    best = tabulated(~oracle)
    for estimate in (
        sh.exact_shapley(tabulated),
        sh.leave_one_out(tabulated),
        sh.permutation_shapley(tabulated, 3, seed=0),
        sh.norm_scores(model, "features.1.conv"),
        sh.random_scores(game.players, seed=4),
    ):
        assert (best >= tabulated(sh.pruned_coalitions(estimate.ranking, sizes))).all()


def test_oracle_agreement_counts_the_overlap_and_random_expects_o_over_n():
    removed = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    perfect = torch.tensor([2, 1, 0, 3])
    assert torch.equal(sh.oracle_agreement(perfect, removed), torch.ones(3, dtype=torch.float64))
    backwards = torch.tensor([3, 0, 1, 2])
    assert torch.allclose(
        sh.oracle_agreement(backwards, removed), torch.tensor([0.0, 0.0, 2 / 3], dtype=torch.float64)
    )
    assert torch.allclose(sh.random_agreement(4, [1, 2, 3]), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))


def test_rank_correlation_of_a_constant_is_zero():
    assert sh.rank_correlation(torch.ones(4), torch.arange(4)) == 0.0
    assert sh.rank_correlation(torch.arange(4), torch.arange(4) * 2) == pytest.approx(1.0)


# --- pruning for real -------------------------------------------------------------------------------------------


def test_removing_channels_gives_the_accuracy_the_game_predicted(model, digits):
    game = sh.ChannelGame(model, "features.0.conv", digits.test.x, digits.test.y)
    kept = torch.tensor([[True, False, True, True, False]])
    pruned = sh.remove_channels(copy.deepcopy(model), "features.0.conv", [1, 4], digits.train.x[:2])
    assert pruned.features[0].conv.out_channels == 3 and pruned.features[1].conv.in_channels == 3
    accuracy = classification_metrics(pruned.eval(), digits.test.x, digits.test.y, prefix="test")["test_accuracy"]
    assert accuracy == pytest.approx(float(game.outcomes(kept)["accuracy"][0]), abs=1e-12)


# --- bad inputs -------------------------------------------------------------------------------------------------


class WideGame:
    players = sh.EXACT_LIMIT + 1

    def __call__(self, coalitions):  # never reached: the size check comes first
        raise AssertionError("evaluated a game that is too large to enumerate")


def test_bad_inputs_raise_clear_errors(model, digits):
    game = AdditiveGame([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="too many to enumerate"):
        sh.exact_shapley(WideGame())
    with pytest.raises(ValueError, match="permutations=0"):
        sh.permutation_shapley(game, 0)
    with pytest.raises(ValueError, match="samples=0"):
        sh.regression_shapley(game, 0)
    with pytest.raises(ValueError, match="order=4"):
        sh.partial_shapley(game, 4)
    with pytest.raises(ValueError, match="truncation"):
        sh.permutation_shapley(game, 2, truncation=-0.1)
    with pytest.raises(ValueError, match="payoff='f1'"):
        game_on(model, digits, payoff="f1")
    with pytest.raises(ValueError, match="layer='features.7.conv'"):
        game_on(model, digits, layer="features.7.conv")
    with pytest.raises(ValueError, match="bool"):
        game_on(model, digits)(torch.ones(2, 5))
    with pytest.raises(ValueError, match="one per channel"):
        game_on(model, digits)(torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="p=3"):
        sh.norm_scores(model, "features.0.conv", p=3)
    with pytest.raises(ValueError, match="not all"):
        sh.remove_channels(copy.deepcopy(model), "features.0.conv", range(5), digits.train.x[:2])
    with pytest.raises(ValueError, match="empty or the full"):
        sh.shapley_kernel_weights(sh.all_coalitions(3))


# --- a game worked out by hand ----------------------------------------------------------------------------------

# Three channels a, b, c (bits 1, 2, 4). a and b are twins: either alone gives 0.9, both together still 0.9; c is
# weak alone (0.3) but adds a little to either twin (0.95); the empty layer is at chance (0.1).
HAND = torch.tensor([0.10, 0.90, 0.90, 0.90, 0.30, 0.95, 0.95, 0.95], dtype=torch.float64)
THIRD, SIXTH = 1 / 3, 1 / 6


def test_every_exact_estimator_on_a_game_worked_out_by_hand():
    """The Shapley weights for n = 3 are 1/3 for |S| = 0 and |S| = 2 and 1/6 for |S| = 1.

    phi_a = 1/3 (v(a) - v()) + 1/6 (v(ab) - v(b)) + 1/6 (v(ac) - v(c)) + 1/3 (v(abc) - v(bc))
          = 1/3 (0.8) + 1/6 (0) + 1/6 (0.65) + 1/3 (0) = 0.375, and phi_b = phi_a by symmetry;
    phi_c = 1/3 (0.2) + 1/6 (0.05) + 1/6 (0.05) + 1/3 (0.05) = 0.1. They sum to v(abc) - v() = 0.85.
    Leave-one-out: a: 0.95 - 0.95 = 0, b: 0, c: 0.95 - 0.90 = 0.05.
    Partial, removing, K = 1: the |S| = 2 terms only: a 0, b 0, c 0.05/3.
    Partial, removing, K = 2: plus the |S| = 1 terms: a 0.65/6, c 0.05/3 + 0.1/6.
    Partial, adding, K = 1: the |S| = 0 terms only: a 0.8/3, b 0.8/3, c 0.2/3.
    Partial, adding, K = 2: plus the |S| = 1 terms: a 0.8/3 + 0.65/6 = 0.375, c 0.2/3 + 0.1/6.
    Either direction with K = 3 is the whole sum.
    """
    game = sh.TabulatedGame(HAND)
    exact = [0.375, 0.375, 0.1]
    assert torch.allclose(sh.exact_shapley(game).scores, torch.tensor(exact, dtype=torch.float64))
    assert torch.allclose(sh.shapley_from_table(HAND), torch.tensor(exact, dtype=torch.float64))
    assert torch.allclose(sh.leave_one_out(game).scores, torch.tensor([0.0, 0.0, 0.05], dtype=torch.float64))
    expected = {
        ("removing", 1): [0.0, 0.0, 0.05 * THIRD],
        ("removing", 2): [0.65 * SIXTH, 0.65 * SIXTH, 0.05 * THIRD + 0.1 * SIXTH],
        ("adding", 1): [0.8 * THIRD, 0.8 * THIRD, 0.2 * THIRD],
        ("adding", 2): [0.8 * THIRD + 0.65 * SIXTH, 0.8 * THIRD + 0.65 * SIXTH, 0.2 * THIRD + 0.1 * SIXTH],
        ("removing", 3): exact,
        ("adding", 3): exact,
    }
    for (direction, order), values in expected.items():
        found = sh.partial_shapley(game, order, direction=direction)
        assert torch.allclose(found.scores, torch.tensor(values, dtype=torch.float64)), (direction, order)
    # costs: K = 1 needs the full layer and the 3 layers missing one channel (or the empty one and 3 singletons)
    assert (
        sh.partial_shapley(game, 1).evaluations == sh.partial_shapley(game, 1, direction="adding").evaluations == 4
    )
    assert sh.partial_shapley(game, 2, direction="adding").evaluations == 7
    # the Shapley-kernel least squares over all six proper coalitions is exact as well
    proper = sh.all_coalitions(3)[1:-1]
    solved = sh.solve_shapley_regression(
        proper, HAND[1:-1], empty=0.1, full=0.95, weights=sh.shapley_kernel_weights(proper)
    )
    assert torch.allclose(solved, torch.tensor(exact, dtype=torch.float64))


def test_oracle_sets_and_the_oracle_rank_of_the_hand_game():
    """Removing one channel: removing a or b leaves 0.95, removing c leaves 0.9; a and b tie (accuracy and loss),
    so the lower coalition index wins: keep {a, c} (index 5), i.e. remove b. Removing two: keeping a or b alone
    gives 0.9, c alone 0.3; the tie goes to keeping a, so b and c are removed.
    Keeping one: a (0.9, tied with b, lower index). Keeping two: {a, c} (0.95, tied with {b, c}, lower index).
    Oracle rank: b is first removed at size 1, c at size 2, a never: least important first b, c, a, so the
    scores (places) are a 2, b 0, c 1."""
    table = sh.CoalitionTable(HAND, 1 - HAND)  # a loss that orders coalitions like the accuracy
    removing = sh.oracle_sets(table, [1, 2])
    assert removing.tolist() == [[False, True, False], [False, True, True]]
    adding = sh.oracle_sets(table, [1, 2], direction="adding")
    assert adding.tolist() == [[True, False, False], [True, False, True]]
    rank = sh.oracle_rank(table)
    assert rank.scores.tolist() == [2.0, 0.0, 1.0] and rank.ranking.tolist() == [1, 2, 0]
    assert rank.evaluations == 8
    # the authors' scores: the exact Shapley ranking (c, then a and b tied, a first) against those sets.
    # removal: o = 1: bottom {c} vs {b}: 0; o = 2: bottom {c, a} vs {b, c}: 1/2 -> mean 0.25
    # adding: o = 1: top {b} vs {a}: 0; o = 2: top {b, a} vs {a, c}: 1/2 -> mean 0.25
    exact = sh.exact_shapley(table.game())
    assert exact.ranking.tolist() == [2, 0, 1]
    assert sh.oracle_accuracy(exact.ranking, table, sizes=[1, 2]) == {"removal": 0.25, "adding": 0.25}
    # the Oracle rank itself finds every removal set but not the adding ones (top {a}, {a, c}: 1 and 1)
    assert sh.oracle_accuracy(rank.ranking, table, sizes=[1, 2]) == {"removal": 1.0, "adding": 1.0}
    with pytest.raises(ValueError, match="direction"):
        sh.oracle_sets(table, [1], direction="sideways")
    with pytest.raises(ValueError, match="direction"):
        sh.partial_shapley(sh.TabulatedGame(HAND), 1, direction="sideways")
