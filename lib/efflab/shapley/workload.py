"""The work of a budget of notebook 02, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from efflab.data.digits import Digits, load_digits
from efflab.finetune import FinetuneBudget
from efflab.models.cnn import CNN
from efflab.shapley.experiment import (
    FAMILIES,
    NETWORK_METHODS,
    ShapleyBudget,
    _agreement_rows,
    _estimate_rows,
    prune_network,
)
from efflab.shapley.values import ChannelGame, CoalitionTable, remove_channels
from efflab.train import TrainConfig, classification_metrics, run_evaluation
from efflab.workload import Work, training_step

PAYOFF = "accuracy"  # run_experiment's default; the loss payoff costs the same


def workload(budget: ShapleyBudget) -> list[Work]:
    """What each seed does, one run per seed, side by side on CPU cores (in full mode too: the experiment never
    moves a model to the run's device).

    The dense CNN's training. For every exact layer: the batches of coalitions that tabulate its game on the
    validation split, every estimator replayed on that table (one step: the estimators read the table and
    evaluate no network), and the batches of its removal curves on the test split. The fine-tunings after
    removing channels of ``finetune_layer``. The whole-network rankings (one step: every method on every layer,
    its coalition batches and channel removals included; permutation sampling draws its orders from the run's
    seed, so the number of distinct coalitions, at most ``M (n - 1) + 2`` a layer, may differ by a few). The
    whole network's fine-tunings. The passes over the validation and test splits that scoring and fine-tuning
    make, each priced as a test pass of the dense network (an upper bound). Left out: the forward pass with which
    each game of an exact layer caches the layer's activations."""
    if not isinstance(budget, ShapleyBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a ShapleyBudget")
    data = load_digits(0)  # every seed's split has the same sizes
    config = budget.model_config()
    model = CNN(config).eval()
    batch = min(budget.batch_size, len(data.train))
    training = TrainConfig(steps=budget.train_steps, lr=budget.lr, warmup_steps=min(20, budget.train_steps))
    tuning = TrainConfig(steps=1, lr=budget.finetune_lr, grad_clip=None)  # as efflab.finetune.finetune builds it
    per_epoch = FinetuneBudget(batch_size=budget.batch_size, lr=budget.finetune_lr).steps_per_epoch(data.train)
    rankings = len(FAMILIES) + 1  # every family at its matched budget, and the oracle sets

    def work(what, steps, step, trains=False):
        return [Work(what, budget.seeds, steps, step, on="cpu", trains=trains)] if steps else []

    works = work("dense CNN", budget.train_steps, _training_step(CNN(config), data, batch, training), trains=True)
    for layer in budget.exact_layers:
        players = budget.width(layer)
        game = ChannelGame(model, layer, data.val.x, data.val.y, payoff=PAYOFF, chunk=budget.chunk)
        test_game = ChannelGame(model, layer, data.test.x, data.test.y, payoff=PAYOFF, chunk=budget.chunk)
        curves = rankings * (players - 1)  # remove the k lowest of each ranking, k = 1..n-1
        works += work(f"exact game of {layer}: coalition batches", *_batches(game, 2**players))
        works += work(f"estimators replayed on the table of {layer}", 1, _replay(budget, model, layer))
        works += work(f"removal curves of {layer}: coalition batches", *_batches(test_game, curves))
    for removed in budget.finetune_removals:
        pruned = remove_channels(CNN(config), budget.finetune_layer, range(removed), data.train.x[:2])
        works += work(
            f"fine-tuning with {removed} channels of {budget.finetune_layer} removed",
            rankings * budget.finetune_steps,
            _training_step(pruned, data, batch, tuning),
            trains=True,
        )
    options = dict(ratio=budget.network_ratio, permutations=budget.network_permutations, chunk=budget.chunk)
    works += work(
        "whole-network rankings",
        1,
        lambda: [prune_network(model, data, method, **options) for method in NETWORK_METHODS],
    )
    pruned, _ = prune_network(model, data, "L1 norm", ratio=budget.network_ratio)
    works += work(
        "whole-network fine-tuning",
        len(NETWORK_METHODS) * budget.network_finetune_steps,
        _training_step(pruned, data, batch, tuning),
        trains=True,
    )

    def finetune_passes(steps):  # validation before the first step and after every (possibly partial) epoch, test
        return 2 + math.ceil(steps / per_epoch)

    passes = (
        3  # the dense network: validation and test, then test again beside the pruned networks
        + rankings * len(budget.finetune_removals) * finetune_passes(budget.finetune_steps)
        + len(NETWORK_METHODS) * (1 + finetune_passes(budget.network_finetune_steps))  # 1: right after pruning
    )
    return works + work("validation and test passes", passes, _test_pass(model, data))


def _batches(game: ChannelGame, coalitions: int):
    """How many batches :meth:`ChannelGame.outcomes` cuts ``coalitions`` into, and one full batch of them."""
    rows = max(1, game.chunk // game._contributions.shape[1])  # the batch size outcomes() works with
    kept = torch.rand(min(rows, coalitions), game.players, generator=torch.Generator().manual_seed(0)) < 0.5
    return math.ceil(coalitions / rows), lambda: game.outcomes(kept)


def _replay(budget: ShapleyBudget, model: CNN, layer: str):
    """Every estimator of the benchmark scored on a table of ``layer``'s game (random payoffs of the right form),
    and the agreement by oracle set size of the matched ones."""
    players = budget.width(layer)
    generator = torch.Generator().manual_seed(0)
    accuracy = torch.randint(0, 270, (2**players,), generator=generator).double() / 269
    table = CoalitionTable(accuracy, torch.rand(2**players, generator=generator, dtype=torch.float64))

    def step():
        _, found = _estimate_rows(budget, PAYOFF, 0, layer, model, table)
        return _agreement_rows(0, layer, table, PAYOFF, found["matched"])

    return step


def _training_step(model: nn.Module, data: Digits, batch_size: int, config: TrainConfig):
    """One optimiser step on the first ``batch_size`` training digits, as fit and fine-tuning take it."""
    x, y = data.train.x[:batch_size], data.train.y[:batch_size]
    return training_step(model, lambda: (x, y), config=config)


def _test_pass(model: nn.Module, data: Digits):
    return lambda: run_evaluation(
        model, lambda m: classification_metrics(m, data.test.x, data.test.y, prefix="test")
    )
