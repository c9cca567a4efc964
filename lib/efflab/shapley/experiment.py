"""The experiment of notebook 02: exact Shapley values of real channels, every estimator beside them, and pruning.

For each seed we split the digits, train the course CNN, and for every layer in ``exact_layers`` evaluate all
``2^n`` coalitions of its channels on the validation split (:func:`efflab.shapley.values.tabulate`). That table is
ground truth: exact Shapley values, the oracle sets of every size in both directions, the **Oracle rank** built
from them (our construction, inferred from the paper's text and the authors' code), and a free replay of any
estimator, charged exactly the coalitions it would have evaluated on the live network. Then:

1. **the benchmark**: every estimator at every budget (and several sampling seeds), scored by Kendall's τ against
   the Oracle rank and against the exact values, and by the authors' accuracy of removal and of adding
   (oracle set sizes 1..5);
2. **pruning one layer**: test accuracy after removing the ``k`` lowest-ranked channels, right away (for every
   ``k``, in one batch of coalitions on the test split) and after a short fine-tune (a few ``k``);
3. **pruning the whole network**: every layer in turn loses the same share of channels by a cheap estimator,
   then the network is fine-tuned once; norms and random removal at the same widths are the controls.

Each seed is one task of :func:`efflab.parallel.run_all`. The contract (see :mod:`efflab.experiment`):
:class:`ShapleyBudget`, :func:`run_experiment` returning a :class:`StudyResult` whose
:meth:`~StudyResult.summary` holds every headline number; :func:`paper_rows` and :func:`findings` read only that.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from efflab.data.digits import Digits, infinite_batches, load_digits
from efflab.experiment import Budget, committed_device, paper_table, seeds_for, spread
from efflab.finetune import FinetuneBudget, finetune, scheduled_count
from efflab.flops import count_parameters, module_forward_flops
from efflab.models.cnn import CNN, CNNConfig
from efflab.parallel import run_all, task_progress
from efflab.runtime import Run, Timer, seed_everything
from efflab.shapley.values import (
    PAYOFFS,
    ChannelGame,
    CoalitionTable,
    Estimate,
    channel_layers,
    check_enumerable,
    exact_shapley,
    leave_one_out,
    norm_scores,
    oracle_accuracy,
    oracle_agreement,
    oracle_rank,
    oracle_sets,
    partial_shapley,
    permutation_shapley,
    pruned_coalitions,
    random_agreement,
    random_scores,
    rank_correlation,
    regression_shapley,
    remove_channels,
    tabulate,
)
from efflab.train import TrainConfig, classification_metrics, fit, run_evaluation
from efflab.validation import check_choice, check_fraction, check_int, check_positive, check_seed

# Estimator families; the ones with a budget take it as their "setting" (K, M or m).
FAMILIES = (
    "exact Shapley",
    "leave-one-out",
    "partial Shapley",
    "partial Shapley (adding)",
    "permutations",
    "truncated permutations",
    "kernel regression",
    "plain regression",
    "L1 norm",
    "L2 norm",
    "random",
)
SAMPLED = ("permutations", "truncated permutations", "kernel regression", "plain regression", "random")
NETWORK_METHODS = ("permutations", "leave-one-out", "L1 norm", "random")
BUDGETED = (  # the families with a budget, their "setting"
    "partial Shapley",
    "partial Shapley (adding)",
    "permutations",
    "truncated permutations",
    "kernel regression",
    "plain regression",
)


def estimate(
    family: str,
    game,
    *,
    setting: int | None = None,
    seed: int = 0,
    model: CNN | None = None,
    layer: str | None = None,
    truncation: float = 0.05,
) -> Estimate:
    """Run one estimator family on ``game`` (norms need the ``model`` and ``layer`` instead of the game).

    ``setting`` is the budget (K, M or m) of the families that have one, and must be None for the others.
    """
    check_choice("family", family, FAMILIES)
    check_seed(seed)
    check_positive("truncation", truncation, allow_zero=True)
    if family in BUDGETED:
        check_int("setting", setting, low=1, high=game.players if family in PARTIAL else None)
    elif setting is not None:
        raise ValueError(f"setting={setting!r} is not allowed for family={family!r}; it has no budget (pass None)")
    if family == "exact Shapley":
        return exact_shapley(game)
    if family == "leave-one-out":
        return leave_one_out(game)
    if family == "partial Shapley":
        return partial_shapley(game, setting)
    if family == "partial Shapley (adding)":
        return partial_shapley(game, setting, direction="adding")
    if family in ("permutations", "truncated permutations"):
        cut = truncation if family == "truncated permutations" else None
        return permutation_shapley(game, setting, seed=seed, truncation=cut)
    if family in ("kernel regression", "plain regression"):
        return regression_shapley(game, setting, seed=seed, weighted=family == "kernel regression")
    if family in ("L1 norm", "L2 norm"):
        if model is None or layer is None:
            raise ValueError(f"family={family!r} scores weights; pass model= and layer=")
        return norm_scores(model, layer, p=1 if family == "L1 norm" else 2)
    return random_scores(game.players, seed=seed)


NAME = "02_shapley_pruning"
PARTIAL = ("partial Shapley", "partial Shapley (adding)")


@dataclass(frozen=True)
class ShapleyBudget(Budget):
    """What one run covers and how much compute each part gets.

    ``matched`` sets the budget at which estimators are compared head to head: about ``matched · n`` coalition
    evaluations (``M = matched`` orders, ``m = matched · n`` regression samples, partial order ``K = 2``).
    """

    widths: tuple[int, ...]
    hidden: int
    train_steps: int
    batch_size: int
    lr: float
    seeds: int
    exact_layers: tuple[str, ...]
    partial_orders: tuple[int, ...]
    permutations: tuple[int, ...]
    regression_samples: tuple[int, ...]
    repeats: int  # sampling seeds per randomised estimator and budget
    truncation: float
    matched: int
    finetune_layer: str
    finetune_removals: tuple[int, ...]
    finetune_steps: int
    finetune_lr: float
    network_ratio: float
    network_permutations: int
    network_finetune_steps: int
    oracle_sizes: int = 5  # the authors score rankings against oracle sets of sizes 1..5
    chunk: int = 2**19

    def __post_init__(self):
        config = self.model_config()  # validates the widths
        layers = channel_layers(CNN(config))
        check_int("train_steps", self.train_steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_positive("lr", self.lr)
        check_int("seeds", self.seeds, low=1)
        if not self.exact_layers:
            raise ValueError("exact_layers=() is not allowed; expected at least one layer to enumerate")
        for layer in self.exact_layers:
            check_choice("exact_layers", layer, layers[:-1])
            check_enumerable(self.width(layer))
            if self.width(layer) < 2:
                raise ValueError(f"exact_layers={layer!r} has one channel; expected layers of at least 2 channels")
        for name in ("partial_orders", "permutations", "regression_samples"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)):
                raise ValueError(f"{name}={values!r} is not allowed; expected increasing, distinct budgets")
            for value in values:
                check_int(name, value, low=1)
        check_int("repeats", self.repeats, low=1)
        check_fraction("truncation", self.truncation)
        check_int("matched", self.matched, low=1)
        check_choice("finetune_layer", self.finetune_layer, self.exact_layers)
        for removed in self.finetune_removals:
            check_int("finetune_removals", removed, low=1, high=self.width(self.finetune_layer) - 1)
        check_int("finetune_steps", self.finetune_steps, low=0)
        check_positive("finetune_lr", self.finetune_lr)
        check_fraction("network_ratio", self.network_ratio)
        check_int("network_permutations", self.network_permutations, low=1)
        check_int("network_finetune_steps", self.network_finetune_steps, low=0)
        check_int("oracle_sizes", self.oracle_sizes, low=1)
        check_int("chunk", self.chunk, low=1)

    @classmethod
    def quick(cls) -> ShapleyBudget:
        """About a minute on two CPU cores: a 12-16 channel CNN, both conv layers exact (4,096 and 65,536
        coalitions on the 269 validation digits), 3 seeds."""
        return cls(
            widths=(12, 16),
            hidden=64,
            train_steps=300,
            batch_size=128,
            lr=3e-3,
            seeds=3,
            exact_layers=("features.0.conv", "features.1.conv"),
            partial_orders=(1, 2, 3, 4),
            permutations=(1, 2, 5, 10, 20, 50, 100),
            regression_samples=(8, 16, 32, 64, 128, 256, 512, 1024),
            repeats=5,
            truncation=0.05,
            matched=10,
            finetune_layer="features.1.conv",
            finetune_removals=(4, 8, 12),
            finetune_steps=45,
            finetune_lr=1e-3,
            network_ratio=0.5,
            network_permutations=10,
            network_finetune_steps=90,
            chunk=2**19,
        )

    @classmethod
    def full(cls) -> ShapleyBudget:
        """For one GPU: both layers at 16 channels (65,536 coalitions each), 5 seeds, more budgets and repeats."""
        return cls(
            widths=(16, 16),
            hidden=64,
            train_steps=600,
            batch_size=128,
            lr=3e-3,
            seeds=5,
            exact_layers=("features.0.conv", "features.1.conv"),
            partial_orders=(1, 2, 3, 4, 5, 6),
            permutations=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            regression_samples=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
            repeats=10,
            truncation=0.05,
            matched=10,
            finetune_layer="features.1.conv",
            finetune_removals=(4, 8, 12, 14),
            finetune_steps=90,
            finetune_lr=1e-3,
            network_ratio=0.5,
            network_permutations=20,
            network_finetune_steps=270,
            chunk=2**23,
        )

    def model_config(self) -> CNNConfig:
        return CNNConfig(widths=self.widths, hidden=self.hidden, image_size=8)

    def width(self, layer: str) -> int:
        """The number of channels (players) of a layer of the unpruned model."""
        check_choice("layer", layer, channel_layers(CNN(self.model_config())))
        return self.hidden if layer == "classifier.hidden" else self.widths[int(layer.split(".")[1])]

    def settings(self, family: str, players: int) -> list[int | None]:
        """The budgets a family is run at on a layer of ``players`` channels (``[None]`` when it has none)."""
        matched = self.matched_setting(family, players)  # checks both
        if family in PARTIAL:
            return sorted({order for order in self.partial_orders if order <= players} | {matched})
        if family in ("permutations", "truncated permutations"):
            return sorted({*self.permutations, matched})
        if family in ("kernel regression", "plain regression"):
            return sorted({*self.regression_samples, matched})
        return [None]

    def matched_setting(self, family: str, players: int) -> int | None:
        """The head-to-head budget: about ``matched · n`` evaluations (see the class docstring)."""
        check_choice("family", family, FAMILIES)
        check_int("players", players, low=2)
        if family in PARTIAL:
            return min(2, players)
        if family in ("permutations", "truncated permutations"):
            return self.matched
        if family in ("kernel regression", "plain regression"):
            return self.matched * players
        return None


def train_model(study: ShapleyBudget, data: Digits, seed: int, device: torch.device | str = "cpu") -> CNN:
    """Train the dense CNN with the course's training loop."""
    seed_everything(seed)
    model = CNN(study.model_config()).to(device)
    config = TrainConfig(steps=study.train_steps, lr=study.lr, warmup_steps=min(20, study.train_steps))
    batches = infinite_batches(data.train, min(study.batch_size, len(data.train)), seed=seed)
    fit(model, batches, config, progress=False)
    return model.eval()


def _test_accuracy(model: CNN, data: Digits) -> float:
    scored = run_evaluation(model, lambda m: classification_metrics(m, data.test.x, data.test.y, prefix="test"))
    return scored["test_accuracy"]


@dataclass
class StudyResult:
    """Everything the notebook shows. Tables are tidy: one row per (seed, layer, ...)."""

    study: ShapleyBudget
    payoff: str
    seeds: list[int]
    dense: pd.DataFrame  # seed, val_accuracy, test_accuracy, parameters
    tables: dict[tuple[int, str], CoalitionTable]  # the exact game of each (seed, layer)
    estimates: pd.DataFrame  # seed, layer, family, setting, draw, evaluations, oracle, kendall, removal, adding
    agreement: pd.DataFrame  # seed, layer, family, direction, size, agreement, baseline (matched budgets)
    removal: pd.DataFrame  # seed, layer, ranking, removed, stage, test_accuracy
    network: pd.DataFrame  # seed, method, stage, test_accuracy, parameters, flops, evaluations
    seconds: dict[str, float] = field(default_factory=dict)

    def exact(self, seed: int, layer: str) -> Tensor:
        """The exact Shapley values of a layer's channels."""
        return torch.tensor(self.pick(layer, "exact Shapley", seed=seed).scores, dtype=torch.float64)

    def pick(
        self, layer: str, family: str, *, budget: float | None = None, seed: int | None = None, draw: int = 0
    ):
        """The estimate of ``family`` on ``layer`` with the largest budget costing at most ``budget`` evaluations.

        Without ``budget`` the matched setting is used. Returns a row of :attr:`estimates` (a pandas Series) whose
        ``scores`` and ``evaluations`` are the estimator's output; a family with no setting under budget falls
        back to its cheapest one.
        """
        seed = self.seeds[0] if seed is None else seed
        rows = self.estimates[
            (self.estimates.layer == layer) & (self.estimates.family == family) & (self.estimates.seed == seed)
        ]
        rows = rows[rows["draw"] == min(draw, rows["draw"].max())]
        if rows.empty:
            raise ValueError(f"no estimates for layer={layer!r}, family={family!r}, seed={seed!r}")
        if budget is None:
            matched = rows[rows.matched]
            return (matched if not matched.empty else rows).iloc[0]
        affordable = rows[rows.evaluations <= budget]
        chosen = affordable if not affordable.empty else rows
        return chosen.sort_values("evaluations").iloc[-1 if not affordable.empty else 0]

    def cost_benefit(self, layer: str) -> pd.DataFrame:
        """Per family and setting: mean evaluations, and mean, min and max Kendall τ over seeds and draws, against
        the Oracle rank (``oracle``) and against the exact values (``kendall``)."""
        rows = self.estimates[self.estimates.layer == layer]
        grouped = rows.groupby(["family", "setting"], dropna=False)
        table = grouped.agg(
            evaluations=("evaluations", "mean"),
            kendall=("kendall", "mean"),
            kendall_min=("kendall", "min"),
            kendall_max=("kendall", "max"),
            oracle=("oracle", "mean"),
            oracle_min=("oracle", "min"),
            oracle_max=("oracle", "max"),
        )
        return table.reset_index().sort_values(["family", "evaluations"], kind="stable", ignore_index=True)

    def matched_summary(self, layer: str) -> pd.DataFrame:
        """Each family at its matched budget, means over seeds and draws: evaluations, Kendall τ with the Oracle
        rank and with the exact values, accuracy of removal and of adding (with the random baseline)."""
        rows = self.estimates[(self.estimates.layer == layer) & self.estimates.matched]
        table = rows.groupby("family", sort=False).agg(
            setting=("setting", "first"),
            evaluations=("evaluations", "mean"),
            oracle=("oracle", "mean"),
            kendall=("kendall", "mean"),
            removal=("removal", "mean"),
            adding=("adding", "mean"),
            baseline=("baseline", "mean"),
        )
        return table.reindex([f for f in FAMILIES if f in table.index])

    def summary(self) -> dict:
        """The headline numbers, as plain values (what the notebook records, quotes and compares)."""
        return summarize(self)


def _estimate_rows(study, payoff, seed, layer, model, table: CoalitionTable) -> tuple[list[dict], dict]:
    """Every family at every setting and draw, replayed on the exact table and scored against the Oracle rank,
    the exact values and the authors' oracle accuracies; also the matched estimates."""
    game = table.game(payoff)
    players = table.players
    sizes = list(range(1, min(study.oracle_sizes, players - 1) + 1))
    exact = exact_shapley(game)
    reference = oracle_rank(table, payoff=payoff)
    removing = oracle_sets(table, sizes, payoff=payoff, direction="removing")  # searched once per table
    adding = oracle_sets(table, sizes, payoff=payoff, direction="adding")
    baseline = float(random_agreement(players, sizes).mean())
    rows, matched = [], {}
    # One row per estimate; a budget "setting" is K, M or m, and None for the families without one.
    for family in FAMILIES:
        for setting in study.settings(family, players):
            for draw in range(study.repeats if family in SAMPLED else 1):
                result = estimate(
                    family,
                    game,
                    setting=setting,
                    seed=seed * 1000 + draw,
                    model=model,
                    layer=layer,
                    truncation=study.truncation,
                )
                is_matched = setting == study.matched_setting(family, players)
                accuracy = oracle_accuracy(
                    result.ranking, table, sizes=sizes, payoff=payoff, sets=(removing, adding)
                )
                rows.append(
                    {
                        "seed": seed,
                        "layer": layer,
                        "players": players,
                        "family": family,
                        "setting": setting,
                        "draw": draw,
                        "matched": is_matched,
                        "evaluations": result.evaluations,
                        "oracle": rank_correlation(result.scores, reference.scores),
                        "kendall": rank_correlation(result.scores, exact.scores),
                        "removal": accuracy["removal"],
                        "adding": accuracy["adding"],
                        "baseline": baseline,
                        "scores": result.scores.tolist(),
                        "method": result.method,
                    }
                )
                if is_matched and draw == 0:
                    matched[family] = result
    oracle = oracle_sets(table, list(range(1, players)), payoff=payoff)
    return rows, {"oracle": oracle, "reference": reference, "matched": matched, "exact": exact}


def _agreement_rows(seed, layer, table, payoff, matched: dict[str, Estimate]) -> list[dict]:
    """Per matched family, direction and oracle set size o = 1..n-1: the share of the oracle set it finds."""
    players = table.players
    sizes = list(range(1, players))
    baseline = random_agreement(players, sizes).tolist()
    rows = []
    for direction in ("removing", "adding"):
        sets = oracle_sets(table, sizes, payoff=payoff, direction=direction)
        for family, result in matched.items():
            order = result.ranking if direction == "removing" else result.ranking.flip(0)
            agreement = oracle_agreement(order, sets).tolist()
            key = {"seed": seed, "layer": layer, "family": family, "direction": direction}
            triples = zip(sizes, agreement, baseline, strict=True)
            rows += [{**key, "size": o, "agreement": a, "baseline": b} for o, a, b in triples]
    return rows


def _removal_rows(study, payoff, seed, layer, model, data, matched: dict[str, Estimate], oracle: Tensor, bar):
    """Test accuracy after removing the k lowest-ranked channels: every k of every ranking in one batch of
    coalitions, then a short fine-tune of the pruned network for a few k (on ``study.finetune_layer`` only).

    The oracle sets, chosen on the validation split, are scored on the test split beside the rankings.
    """
    removals = list(range(1, oracle.shape[1]))  # oracle: the best removal set of every size 1..n-1
    removed = {family: ~pruned_coalitions(result.ranking, removals) for family, result in matched.items()}
    removed["oracle set"] = oracle
    test_game = ChannelGame(model, layer, data.test.x, data.test.y, payoff=payoff, chunk=study.chunk)
    accuracy = test_game.outcomes(~torch.cat(list(removed.values())))["accuracy"].view(len(removed), -1)
    rows = []
    for ranking, row in zip(removed, accuracy.tolist(), strict=True):
        key = {"seed": seed, "layer": layer, "ranking": ranking, "stage": "pruned"}
        rows += [{**key, "removed": k, "test_accuracy": a} for k, a in zip(removals, row, strict=True)]
    if layer != study.finetune_layer:
        return rows
    budget = FinetuneBudget(batch_size=study.batch_size, lr=study.finetune_lr)
    for ranking, sets in removed.items():
        for k in study.finetune_removals:
            channels = sets[k - 1].nonzero()[:, 0].tolist()
            pruned = remove_channels(copy.deepcopy(model), layer, channels, data.train.x[:2])
            finetune(pruned, data.train, data.val, budget, steps=study.finetune_steps, seed=seed)
            key = {"seed": seed, "layer": layer, "ranking": ranking, "stage": "fine-tuned", "removed": k}
            rows.append({**key, "test_accuracy": _test_accuracy(pruned, data)})
            bar.update()
    return rows


def prune_network(
    model: CNN,
    data: Digits,
    method: str,
    *,
    ratio: float,
    payoff: str = "accuracy",
    permutations: int = 10,
    seed: int = 0,
    chunk: int = 2**19,
) -> tuple[CNN, int]:
    """Remove ``floor(ratio · n)`` channels from every layer of a copy of ``model``, first layer first.

    Each layer's channels are ranked on the network as already pruned below it (the paper's code also handles
    one layer at a time), by ``method``: permutation sampling, leave-one-out, the L1 norm or at random. Returns
    the pruned copy and the coalition evaluations the ranking cost.
    """
    check_choice("method", method, NETWORK_METHODS)
    check_fraction("ratio", ratio)
    check_choice("payoff", payoff, PAYOFFS)
    check_int("permutations", permutations, low=1)
    check_seed(seed)
    check_int("chunk", chunk, low=1)
    model = copy.deepcopy(model).eval()
    example = data.train.x[:2]
    evaluations = 0
    for layer in channel_layers(model):
        game = ChannelGame(model, layer, data.val.x, data.val.y, payoff=payoff, chunk=chunk)
        setting = permutations if method == "permutations" else None
        result = estimate(method, game, setting=setting, seed=seed, model=model, layer=layer)
        evaluations += result.evaluations
        remove_channels(model, layer, result.ranking[: scheduled_count(ratio, game.players)].tolist(), example)
    return model, evaluations


def _network_rows(study, payoff, seed, model, data, bar) -> list[dict]:
    budget = FinetuneBudget(batch_size=study.batch_size, lr=study.finetune_lr)
    example = data.test.x[:1]
    rows = [
        {
            "seed": seed,
            "method": "dense",
            "stage": "dense",
            "test_accuracy": _test_accuracy(model, data),
            "parameters": count_parameters(model),
            "flops": module_forward_flops(model, example),
            "evaluations": 0,
        }
    ]
    for method in NETWORK_METHODS:
        pruned, evaluations = prune_network(
            model,
            data,
            method,
            ratio=study.network_ratio,
            payoff=payoff,
            permutations=study.network_permutations,
            seed=seed,
            chunk=study.chunk,
        )
        costs = {"parameters": count_parameters(pruned), "flops": module_forward_flops(pruned, example)}
        row = {"seed": seed, "method": method, "evaluations": evaluations, **costs}
        rows.append({**row, "stage": "pruned", "test_accuracy": _test_accuracy(pruned, data)})
        finetune(pruned, data.train, data.val, budget, steps=study.network_finetune_steps, seed=seed)
        rows.append({**row, "stage": "fine-tuned", "test_accuracy": _test_accuracy(pruned, data)})
        bar.update()
    return rows


@dataclass(frozen=True)
class SeedTask:
    """Everything one seed runs: train, tabulate the exact games, replay every estimator, prune."""

    seed: int
    budget: ShapleyBudget
    payoff: str

    def __post_init__(self):
        check_seed(self.seed)
        if not isinstance(self.budget, ShapleyBudget):
            raise ValueError(f"budget={self.budget!r} is not allowed; expected a ShapleyBudget")
        check_choice("payoff", self.payoff, PAYOFFS)


def study_seed(task: SeedTask) -> dict:
    """One seed's rows and exact tables (a picklable dict), for :func:`efflab.parallel.run_all`."""
    study, payoff, seed = task.budget, task.payoff, task.seed
    seed_everything(seed)
    data = load_digits(seed)
    seconds = {}
    finetunes = len(study.finetune_removals) * (len(FAMILIES) + 1)
    with task_progress(1 + len(study.exact_layers) + finetunes + len(NETWORK_METHODS), f"seed {seed}") as bar:
        with Timer() as timer:
            model = train_model(study, data, seed)
        seconds["train"] = timer.seconds
        bar.update()
        metrics = run_evaluation(model, lambda m: classification_metrics(m, data.val.x, data.val.y))
        dense = {
            "seed": seed,
            "val_accuracy": metrics["val_accuracy"],
            "test_accuracy": _test_accuracy(model, data),
        }
        dense["parameters"] = count_parameters(model)
        tables, estimates, agreement, removal = {}, [], [], []
        for layer in study.exact_layers:
            with Timer() as timer:
                game = ChannelGame(model, layer, data.val.x, data.val.y, payoff=payoff, chunk=study.chunk)
                tables[layer] = table = tabulate(game)
            seconds[f"exact game {layer}"] = timer.seconds
            with Timer() as timer:
                rows, found = _estimate_rows(study, payoff, seed, layer, model, table)
            seconds[f"estimators {layer}"] = timer.seconds
            estimates += rows
            agreement += _agreement_rows(seed, layer, table, payoff, found["matched"])
            with Timer() as timer:
                removal += _removal_rows(
                    study, payoff, seed, layer, model, data, found["matched"], found["oracle"], bar
                )
            seconds[f"pruning {layer}"] = timer.seconds
            bar.update()
        with Timer() as timer:
            network = _network_rows(study, payoff, seed, model, data, bar)
        seconds["whole network"] = timer.seconds
    return dict(
        dense=dense,
        tables=tables,
        estimates=estimates,
        agreement=agreement,
        removal=removal,
        network=network,
        seconds=seconds,
    )


def run_experiment(run: Run, budget: ShapleyBudget, *, payoff: str = "accuracy", progress: bool | None = None):
    """Run the whole study for ``budget.seeds`` seeds from ``run.seed``, one :func:`run_all` task per seed."""
    if not isinstance(run, Run):
        raise ValueError(f"run={run!r} is not allowed; expected the Run returned by efflab.setup")
    if not isinstance(budget, ShapleyBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a ShapleyBudget")
    check_choice("payoff", payoff, PAYOFFS)
    seeds = list(seeds_for(run.seed, budget.seeds))
    with Timer() as whole:
        outputs = run_all(
            study_seed, [SeedTask(s, budget, payoff) for s in seeds], description="seeds", progress=progress
        )
    seconds: dict[str, float] = {}
    for output in outputs:
        for name, value in output["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + value
    seconds["total"] = whole.seconds
    return StudyResult(
        study=budget,
        payoff=payoff,
        seeds=seeds,
        dense=pd.DataFrame([o["dense"] for o in outputs]),
        tables={(s, layer): t for s, o in zip(seeds, outputs, strict=True) for layer, t in o["tables"].items()},
        estimates=pd.DataFrame([r for o in outputs for r in o["estimates"]]),
        agreement=pd.DataFrame([r for o in outputs for r in o["agreement"]]),
        removal=pd.DataFrame([r for o in outputs for r in o["removal"]]),
        network=pd.DataFrame([r for o in outputs for r in o["network"]]),
        seconds=seconds,
    )


def removal_curves(
    result: StudyResult, layer: str, stage: str = "pruned"
) -> tuple[list[int], dict[str, np.ndarray]]:
    """Removed-channel counts and, per ranking, test accuracy as an array (seeds, counts) for band plots."""
    rows = result.removal[(result.removal.layer == layer) & (result.removal.stage == stage)]
    if rows.empty:
        raise ValueError(f"no removal results for layer={layer!r}, stage={stage!r}")
    curves = {}
    for ranking, group in rows.groupby("ranking", sort=False):
        table = group.pivot_table(index="seed", columns="removed", values="test_accuracy")
        curves[ranking] = table.to_numpy()
    return [int(k) for k in table.columns], curves


def _per_seed(rows: pd.DataFrame, column: str) -> list[float]:
    """Mean of ``column`` per seed (over sampling draws), in seed order."""
    return [float(v) for v in rows.groupby("seed")[column].mean().sort_index()]


def summarize(result: StudyResult) -> dict:
    """The headline numbers of a study, as plain JSON-able values; lists are per seed.

    Everything is about ``study.finetune_layer`` (the widest layer enumerated) unless named otherwise.
    """
    study, layer = result.study, result.study.finetune_layer
    rows = result.estimates[result.estimates.layer == layer]
    matched = rows[rows.matched]
    players = int(rows.players.iloc[0])
    by_family = {
        family: {
            column: _per_seed(group, column)
            for column in ("oracle", "kendall", "removal", "adding", "evaluations")
        }
        for family, group in matched.groupby("family", sort=False)
    }
    largest = {}
    for family in ("permutations", "kernel regression", "plain regression"):
        group = rows[rows.family == family]
        top = group[group.setting == group.setting.max()]
        largest[family] = {"setting": int(top.setting.iloc[0]), "kendall": _per_seed(top, "kendall")}
    partial = rows[(rows.family == "partial Shapley") & (rows.setting == 1)].sort_values("seed")
    loo = rows[rows.family == "leave-one-out"].sort_values("seed")
    deviation = max(
        float(np.abs(np.asarray(p) * players - np.asarray(q)).max())
        for p, q in zip(partial.scores, loo.scores, strict=True)
    )
    network = result.network
    per_method = {
        stage: {
            method: [float(v) for v in group.sort_values("seed").test_accuracy]
            for method, group in network[network.stage == stage].groupby("method", sort=False)
        }
        for stage in ("pruned", "fine-tuned")
    }
    dense = network[network.stage == "dense"]
    tuned = network[network.stage == "fine-tuned"]
    return {
        "layer": layer,
        "players": players,
        "payoff": result.payoff,
        "seeds": list(result.seeds),
        "oracle_sizes": min(study.oracle_sizes, players - 1),
        "dense_test_accuracy": [float(v) for v in result.dense.sort_values("seed").test_accuracy],
        "test_images": len(load_digits(result.seeds[0]).test),
        "exact_evaluations": int(2**players),
        "exact_seconds_per_table": result.seconds.get(f"exact game {layer}", 0.0) / len(result.seeds),
        "families": by_family,
        "random_baseline": float(matched.baseline.iloc[0]),
        "kendall_at_largest_budget": largest,
        "matched_permutations": study.matched,
        "partial_order_one_vs_loo_deviation": deviation,
        "network_ratio": study.network_ratio,
        "network_accuracy": per_method,
        "network_flop_ratio": float(tuned.flops.mean() / dense.flops.mean()),
        "network_parameter_ratio": float(tuned.parameters.mean() / dense.parameters.mean()),
        "study_seconds": result.seconds["total"],
    }


# --------------------------------------------------------------------------------------------------------------
# The paper beside this run, and what this run found
# --------------------------------------------------------------------------------------------------------------

AGREES, DISAGREES, MIXED, TIE = "agrees", "disagrees", "mixed", "tie"
_PHRASES = {
    AGREES: "agrees with the paper",
    DISAGREES: "disagrees with the paper",
    MIXED: "is mixed across seeds",
    TIE: "cannot tell the two apart",
}


def verdict(gaps, tolerance: float) -> str:
    """How per-seed gaps (positive: the paper's side ahead) read: all for, all against, some of each, or a tie.
    Seeds within ``tolerance`` count for neither side."""
    gaps = np.asarray(list(gaps), dtype=float)
    ahead, behind = int((gaps > tolerance).sum()), int((gaps < -tolerance).sum())
    if ahead and behind:
        return MIXED
    if ahead:
        return AGREES
    if behind:
        return DISAGREES
    return TIE


def _gap(summary: dict, metric: str, better: str, worse: str) -> list[float]:
    families = summary["families"]
    return [a - b for a, b in zip(families[better][metric], families[worse][metric], strict=True)]


def _tau_tolerance(summary: dict) -> float:
    """Half a swapped pair: Kendall's τ moves in steps of 2 / C(n, 2)."""
    n = summary["players"]
    return 1.0 / (n * (n - 1) / 2)


def paper_rows(summary: dict, committed: dict | None) -> pd.DataFrame:
    """The paper's statements beside this run and the committed full-mode run (``committed`` or None).

    The paper's result tables were not available to us, so its column holds formulas and claims, never a number
    we could not check.
    """
    n, layer = summary["players"], summary["layer"]

    def both(text) -> dict:
        return {"this_run": text(summary), "full_run": text(committed) if committed else None}

    def scores(metric):
        def text(s):
            f = s["families"]
            names = ("exact Shapley", "leave-one-out", "partial Shapley (adding)", "permutations", "L1 norm")
            return "; ".join(f"{name} {spread(f[name][metric], 2)}" for name in names)

        return text

    def accuracy(metric):
        def text(s):
            return scores(metric)(s) + f" | random {s['random_baseline']:.2f}"

        return text

    def convergence(s):
        k = s["kendall_at_largest_budget"]
        return "; ".join(f"{family} ({v['setting']}) {spread(v['kendall'], 2)}" for family, v in k.items())

    def network(s):
        t = s["network_accuracy"]["fine-tuned"]
        return "; ".join(f"{m} {spread(v, 3)}" for m, v in t.items()) + f" (FLOPs x{s['network_flop_ratio']:.2f})"

    o = summary["oracle_sizes"]
    return paper_table(
        [
            {
                "quantity": f"exact Shapley cost for {layer} (n = {n}), coalition evaluations",
                "paper": f"2^n = {2**n:,} (eq. 1 sums over every coalition)",
                **both(lambda s: f"{s['exact_evaluations']:,} ({s['exact_seconds_per_table']:.1f} s per table)"),
                "note": "one batched pass over cached activations",
            },
            {
                "quantity": "partial Shapley with K = 1 against leave-one-out",
                "paper": "the same ranking: K = 1 keeps only the leave-one-out term, times 1/n",
                **both(lambda s: f"max |n·partial - LOO| = {s['partial_order_one_vs_loo_deviation']:.1e}"),
                "note": "an identity; checked on every seed",
            },
            {
                "quantity": "Kendall τ with the Oracle rank, matched budgets",
                "paper": "ranks are judged against the Oracle rank built from oracle sets (no number available)",
                **both(scores("oracle")),
                "note": "Oracle rank: our construction, inferred from the paper's text and the authors' code",
            },
            {
                "quantity": f"accuracy of removal, oracle sets of size 1..{o}",
                "paper": "the authors' code scores ranks this way (no number available)",
                **both(accuracy("removal")),
                "note": "share of the best removal set of size o among a rank's o lowest channels, mean over o",
            },
            {
                "quantity": f"accuracy of adding, oracle sets of size 1..{o}",
                "paper": "the authors' code scores ranks this way (no number available)",
                **both(accuracy("adding")),
                "note": "share of the best set of o channels to keep among a rank's o highest, mean over o",
            },
            {
                "quantity": "approximations against exact values at the largest budget, Kendall τ",
                "paper": "cost-benefit comparison of the approximations (qualitative)",
                **both(convergence),
                "note": "the setting (M orders or m samples) in brackets",
            },
            {
                "quantity": f"test accuracy, {summary['network_ratio']:.0%} of every layer removed, fine-tuned",
                "paper": "state-of-the-art FLOPs and parameter cuts on LeNet-5, VGG-16, ResNet-56/50 (no number)",
                **both(network),
                "note": "after fine-tuning the ranking matters less; see Feng et al. 2024 (arXiv 2412.00143)",
            },
        ],
        full_run_on=committed_device(NAME),
    )


def findings(summary: dict) -> str:
    """Markdown sentences on what this run found, each with its verdict against the paper's claim."""
    tau = _tau_tolerance(summary)
    lines = []
    for rival in ("leave-one-out", "L1 norm"):
        gaps = _gap(summary, "oracle", "exact Shapley", rival)
        outcome = verdict(gaps, tau)
        lines.append(
            f"- **Shapley against {rival}, judged by the Oracle rank** (the paper ranks channels by Shapley value "
            f"over leave-one-out and magnitude): Kendall τ with the Oracle rank is "
            f"{spread(summary['families']['exact Shapley']['oracle'], 2)} for the exact Shapley value and "
            f"{spread(summary['families'][rival]['oracle'], 2)} for {rival}; this run {_PHRASES[outcome]}."
        )
    o = summary["oracle_sizes"]
    for metric, label in (("removal", "removal"), ("adding", "adding")):
        exact = summary["families"]["exact Shapley"][metric]
        gaps = [v - summary["random_baseline"] for v in exact]
        outcome = verdict(gaps, 1e-9)
        versus = verdict(_gap(summary, metric, "exact Shapley", "leave-one-out"), 1e-9)
        lines.append(
            f"- **accuracy of {label}** (oracle sets of size 1..{o}): exact Shapley "
            f"{spread(exact, 2)} against {summary['random_baseline']:.2f} for a random rank, so against chance "
            f"this run {_PHRASES[outcome]}; against leave-one-out "
            f"({spread(summary['families']['leave-one-out'][metric], 2)}) it {_PHRASES[versus]}."
        )
    removing, adding = summary["families"]["partial Shapley"], summary["families"]["partial Shapley (adding)"]
    closer = verdict([a - r for a, r in zip(adding["oracle"], removing["oracle"], strict=True)], tau)
    side = {
        AGREES: "adding is closer",
        DISAGREES: "removing is closer",
        MIXED: "it depends on the seed",
        TIE: "neither is closer",
    }[closer]
    lines.append(
        f"- **partial Shapley, K = 2, both directions**: τ with the Oracle rank {spread(removing['oracle'], 2)} "
        f"removing and {spread(adding['oracle'], 2)} adding: {side} (the paper gives no preference we could read)."
    )
    tuned = summary["network_accuracy"]["fine-tuned"]
    gaps = [p - m for p, m in zip(tuned["permutations"], tuned["L1 norm"], strict=True)]
    outcome = verdict(gaps, 0.5 / summary["test_images"])  # half a test image
    lines.append(
        f"- **the whole network, {summary['network_ratio']:.0%} of every layer removed and fine-tuned** (the "
        f"paper: Shapley pruning reaches state-of-the-art cuts): permutation-sampled Shapley "
        f"{spread(tuned['permutations'], 3)} against the L1 norm {spread(tuned['L1 norm'], 3)}; this run "
        f"{_PHRASES[outcome]}."
    )
    return "\n".join(lines)
