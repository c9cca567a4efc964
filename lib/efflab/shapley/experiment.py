"""The experiment of notebook 02: exact Shapley values of real channels, every estimator beside them, and pruning.

For each seed we split the digits, train the course CNN, and for every layer in ``exact_layers`` evaluate all
``2^n`` coalitions of its channels on the validation split (:func:`efflab.shapley.values.tabulate`). That table is
ground truth: exact Shapley values, the oracle sets of every size, and a free replay of any estimator, which is
charged exactly the coalitions it would have evaluated on the live network. Then:

1. **cost-benefit**: every estimator at every budget (and several sampling seeds) against the exact values;
2. **oracle agreement**: each ranking's bottom ``o`` channels against the best removal set of size ``o``;
3. **pruning one layer**: test accuracy after removing the ``k`` lowest-ranked channels, right away (for every
   ``k``, in one batch of coalitions on the test split) and after a short fine-tune (a few ``k``);
4. **pruning the whole network**: every layer in turn loses the same share of channels by a cheap estimator,
   then the network is fine-tuned once; norms and random removal at the same widths are the controls.

Budgets live here (:meth:`ShapleyStudy.quick` / :meth:`ShapleyStudy.full`); the notebook only picks one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from efflab.data.digits import Digits, Split, infinite_batches, load_digits
from efflab.finetune import FinetuneBudget, finetune, scheduled_count
from efflab.flops import count_parameters, module_forward_flops
from efflab.models.cnn import CNN, CNNConfig
from efflab.runtime import Run, Timer, seed_everything, torch_threads
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
    oracle_agreement,
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
from efflab.train import TrainConfig, classification_metrics, fit, progress_enabled, run_evaluation
from efflab.validation import check_choice, check_fraction, check_int, check_positive, check_seed

# Estimator families; the ones with a budget take it as their "setting" (K, M or m).
FAMILIES = (
    "exact Shapley",
    "leave-one-out",
    "partial Shapley",
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
    """Run one estimator family on ``game`` (norms need the ``model`` and ``layer`` instead of the game)."""
    check_choice("family", family, FAMILIES)
    if family == "exact Shapley":
        return exact_shapley(game)
    if family == "leave-one-out":
        return leave_one_out(game)
    if family == "partial Shapley":
        return partial_shapley(game, setting)
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


def summary_sizes(players: int) -> list[int]:
    """The removal sizes that the one-number oracle agreement averages over: 1 to half the layer.

    Larger sizes are shown by size but left out of the average: as ``o`` nears ``n`` any ranking overlaps the
    oracle set almost entirely, and the baseline ``o/n`` with it.
    """
    return list(range(1, players // 2 + 1))


@dataclass(frozen=True)
class ShapleyStudy:
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
    chunk: int = 2**19
    threads: int | None = None  # None keeps torch's setting

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
        check_int("chunk", self.chunk, low=1)
        if self.threads is not None:
            check_int("threads", self.threads, low=1)

    @classmethod
    def quick(cls) -> ShapleyStudy:
        """About a minute on two CPU cores: a 12-16 channel CNN, both conv layers exact (4,096 and 65,536
        coalitions on the 269 validation digits), 3 seeds."""
        return cls(
            widths=(12, 16), hidden=64, train_steps=300, batch_size=128, lr=3e-3, seeds=3,
            exact_layers=("features.0.conv", "features.1.conv"), partial_orders=(1, 2, 3, 4),
            permutations=(1, 2, 5, 10, 20, 50, 100), regression_samples=(8, 16, 32, 64, 128, 256, 512, 1024),
            repeats=5, truncation=0.05, matched=10,
            finetune_layer="features.1.conv", finetune_removals=(4, 8, 12), finetune_steps=45, finetune_lr=1e-3,
            network_ratio=0.5, network_permutations=10, network_finetune_steps=90, chunk=2**19, threads=1,
        )  # fmt: skip

    @classmethod
    def full(cls) -> ShapleyStudy:
        """For one GPU: both layers at 16 channels (65,536 coalitions each), 5 seeds, more budgets and repeats."""
        return cls(
            widths=(16, 16), hidden=64, train_steps=600, batch_size=128, lr=3e-3, seeds=5,
            exact_layers=("features.0.conv", "features.1.conv"), partial_orders=(1, 2, 3, 4, 5, 6),
            permutations=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            regression_samples=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
            repeats=10, truncation=0.05, matched=10,
            finetune_layer="features.1.conv", finetune_removals=(4, 8, 12, 14), finetune_steps=90,
            finetune_lr=1e-3, network_ratio=0.5, network_permutations=20, network_finetune_steps=270,
            chunk=2**23, threads=None,
        )  # fmt: skip

    @classmethod
    def for_run(cls, run: Run) -> ShapleyStudy:
        return cls.quick() if run.quick else cls.full()

    def model_config(self) -> CNNConfig:
        return CNNConfig(widths=self.widths, hidden=self.hidden, image_size=8)

    def describe(self) -> str:
        """What this budget runs, in a few lines."""
        games = ", ".join(
            f"{layer} ({self.width(layer)} ch, {2 ** self.width(layer):,} coalitions)"
            for layer in self.exact_layers
        )
        return "\n".join(
            [
                f"CNN widths {self.widths}, hidden {self.hidden}, {self.train_steps} steps; {self.seeds} seeds",
                f"exact games: {games}",
                f"estimators: partial K {self.partial_orders}, M {self.permutations} orders, "
                f"m {self.regression_samples} samples, {self.repeats} draws each; matched budget ~{self.matched}n",
                f"one layer pruned for real: {self.finetune_layer}, k {self.finetune_removals}, "
                f"{self.finetune_steps} fine-tuning steps",
                f"whole network: {self.network_ratio:.0%} of every layer by permutations (M = "
                f"{self.network_permutations}), leave-one-out, L1 norm or random; "
                f"{self.network_finetune_steps} fine-tuning steps",
            ]
        )

    def width(self, layer: str) -> int:
        """The number of channels (players) of a layer of the unpruned model."""
        return self.hidden if layer == "classifier.hidden" else self.widths[int(layer.split(".")[1])]

    def settings(self, family: str, players: int) -> list[int | None]:
        """The budgets a family is run at on a layer of ``players`` channels (``[None]`` when it has none)."""
        check_choice("family", family, FAMILIES)
        matched = self.matched_setting(family, players)
        if family == "partial Shapley":
            return sorted({order for order in self.partial_orders if order <= players} | {matched})
        if family in ("permutations", "truncated permutations"):
            return sorted({*self.permutations, matched})
        if family in ("kernel regression", "plain regression"):
            return sorted({*self.regression_samples, matched})
        return [None]

    def matched_setting(self, family: str, players: int) -> int | None:
        """The head-to-head budget: about ``matched · n`` evaluations (see the class docstring)."""
        if family == "partial Shapley":
            return min(2, players)
        if family in ("permutations", "truncated permutations"):
            return self.matched
        if family in ("kernel regression", "plain regression"):
            return self.matched * players
        return None


def train_model(study: ShapleyStudy, data: Digits, seed: int, device: torch.device | str = "cpu") -> CNN:
    """Train the dense CNN with the course's training loop (on ``study.threads`` CPU threads)."""
    seed_everything(seed)
    model = CNN(study.model_config()).to(device)
    config = TrainConfig(steps=study.train_steps, lr=study.lr, warmup_steps=min(20, study.train_steps))
    batches = infinite_batches(data.train, min(study.batch_size, len(data.train)), seed=seed)
    with torch_threads(study.threads):
        fit(model, batches, config, progress=False)
    return model.eval()


def _on(data: Digits, device: torch.device | str) -> Digits:
    splits = {name: getattr(data, name) for name in ("train", "val", "test")}
    moved = {name: Split(split.x.to(device), split.y.to(device)) for name, split in splits.items()}
    return Digits(**moved, mean=data.mean, std=data.std)


def _test_accuracy(model: CNN, data: Digits) -> float:
    return run_evaluation(model, lambda m: classification_metrics(m, data.test.x, data.test.y))["val_accuracy"]


@dataclass
class StudyResult:
    """Everything the notebook shows. Tables are tidy: one row per (seed, layer, ...)."""

    study: ShapleyStudy
    payoff: str
    seeds: list[int]
    dense: pd.DataFrame  # seed, val_accuracy, test_accuracy, parameters
    tables: dict[tuple[int, str], CoalitionTable]  # the exact game of each (seed, layer)
    estimates: pd.DataFrame  # seed, layer, players, family, setting, draw, evaluations, kendall, agreement, ...
    agreement: pd.DataFrame  # seed, layer, family, size, agreement, baseline (matched budgets)
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
        """Per family and setting: mean evaluations and the mean, min and max Kendall τ over seeds and repeats."""
        rows = self.estimates[self.estimates.layer == layer]
        grouped = rows.groupby(["family", "setting"], dropna=False)
        table = grouped.agg(
            evaluations=("evaluations", "mean"),
            kendall=("kendall", "mean"),
            kendall_min=("kendall", "min"),
            kendall_max=("kendall", "max"),
            agreement=("agreement", "mean"),
        )
        return table.reset_index().sort_values(["family", "evaluations"], kind="stable", ignore_index=True)

    def matched_summary(self, layer: str) -> pd.DataFrame:
        """Each family at its matched budget: evaluations, Kendall τ with the exact values and oracle agreement
        (mean ± standard deviation over seeds and repeats), with the random-ranking baseline of the agreement."""
        rows = self.estimates[(self.estimates.layer == layer) & self.estimates.matched]
        table = rows.groupby("family", sort=False).agg(
            setting=("setting", "first"),
            evaluations=("evaluations", "mean"),
            kendall=("kendall", "mean"),
            kendall_std=("kendall", "std"),
            agreement=("agreement", "mean"),
            agreement_std=("agreement", "std"),
            baseline=("baseline", "mean"),
        )
        return table.reindex([f for f in FAMILIES if f in table.index]).fillna(
            {"kendall_std": 0, "agreement_std": 0}
        )


def _estimate_rows(study, payoff, seed, layer, model, table: CoalitionTable) -> tuple[list[dict], dict]:
    """Every family at every setting and repeat, replayed on the exact table; also the matched estimates."""
    game = table.game(payoff)
    players = table.players
    sizes = list(range(1, players))
    oracle = oracle_sets(table, sizes, payoff=payoff)
    summarised = len(summary_sizes(players))
    exact = exact_shapley(game)
    baseline = float(random_agreement(players, sizes)[:summarised].mean())
    rows, matched = [], {}
    # One row per estimate; a budget "setting" is K, M or m, and None for the families without one.
    for family in FAMILIES:
        for setting in study.settings(family, players):
            for draw in range(study.repeats if family in SAMPLED else 1):
                result = estimate(
                    family, game, setting=setting, seed=seed * 1000 + draw, model=model, layer=layer,
                    truncation=study.truncation,
                )  # fmt: skip
                is_matched = setting == study.matched_setting(family, players)
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
                        "kendall": rank_correlation(result.scores, exact.scores),
                        "agreement": float(oracle_agreement(result.ranking, oracle)[:summarised].mean()),
                        "baseline": baseline,
                        "scores": result.scores.tolist(),
                        "method": result.method,
                    }
                )
                if is_matched and draw == 0:
                    matched[family] = result
    return rows, {"oracle": oracle, "sizes": sizes, "matched": matched}


def _agreement_rows(seed, layer, players, oracle, sizes, matched: dict[str, Estimate]) -> list[dict]:
    baseline = random_agreement(players, sizes).tolist()
    rows = []
    for family, result in matched.items():
        agreement = oracle_agreement(result.ranking, oracle).tolist()
        key = {"seed": seed, "layer": layer, "family": family}
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
    model = copy.deepcopy(model).eval()
    example = data.train.x[:2]
    evaluations = 0
    for layer in channel_layers(model):
        game = ChannelGame(model, layer, data.val.x, data.val.y, payoff=payoff, chunk=chunk)
        result = estimate(method, game, setting=permutations, seed=seed, model=model, layer=layer)
        evaluations += result.evaluations
        remove_channels(model, layer, result.ranking[: scheduled_count(ratio, game.players)].tolist(), example)
    return model, evaluations


def _network_rows(study, payoff, seed, model, data, bar) -> list[dict]:
    budget = FinetuneBudget(batch_size=study.batch_size, lr=study.finetune_lr)
    example = data.test.x[:1]
    rows = [
        {"seed": seed, "method": "dense", "stage": "dense", "test_accuracy": _test_accuracy(model, data),
         "parameters": count_parameters(model), "flops": module_forward_flops(model, example), "evaluations": 0}
    ]  # fmt: skip
    for method in NETWORK_METHODS:
        pruned, evaluations = prune_network(
            model, data, method, ratio=study.network_ratio, payoff=payoff, permutations=study.network_permutations,
            seed=seed, chunk=study.chunk,
        )  # fmt: skip
        costs = {"parameters": count_parameters(pruned), "flops": module_forward_flops(pruned, example)}
        row = {"seed": seed, "method": method, "evaluations": evaluations, **costs}
        rows.append({**row, "stage": "pruned", "test_accuracy": _test_accuracy(pruned, data)})
        finetune(pruned, data.train, data.val, budget, steps=study.network_finetune_steps, seed=seed)
        rows.append({**row, "stage": "fine-tuned", "test_accuracy": _test_accuracy(pruned, data)})
        bar.update()
    return rows


def run_study(
    study: ShapleyStudy,
    run: Run,
    *,
    payoff: str = "accuracy",
    progress: bool | None = None,
) -> StudyResult:
    """Run the whole study for ``study.seeds`` seeds starting at ``run.seed``; see the module docstring."""
    check_choice("payoff", payoff, PAYOFFS)
    check_seed(run.seed)
    seeds = [run.seed + offset for offset in range(study.seeds)]
    finetunes = len(study.finetune_removals) * (len(FAMILIES) + 1)  # every family's ranking, and the oracle sets
    total = len(seeds) * (1 + len(study.exact_layers) + finetunes + len(NETWORK_METHODS))
    bar = tqdm(total=total, desc="Shapley study", disable=not progress_enabled(progress))
    dense, estimates, agreement, removal, network = [], [], [], [], []
    tables: dict[tuple[int, str], CoalitionTable] = {}
    seconds = dict.fromkeys(["train", *[f"exact game {layer}" for layer in study.exact_layers], "estimators"], 0.0)
    seconds.update({"pruning one layer": 0.0, "whole network": 0.0})
    with torch_threads(study.threads), Timer() as whole:
        for seed in seeds:
            data = _on(load_digits(seed), run.device)
            with Timer() as timer:
                model = train_model(study, data, seed, run.device)
            seconds["train"] += timer.seconds
            metrics = run_evaluation(model, lambda m, d=data: classification_metrics(m, d.val.x, d.val.y))
            accuracy = {"val_accuracy": metrics["val_accuracy"], "test_accuracy": _test_accuracy(model, data)}
            dense.append({"seed": seed, **accuracy, "parameters": count_parameters(model)})
            bar.update()
            for layer in study.exact_layers:
                with Timer() as timer:
                    game = ChannelGame(model, layer, data.val.x, data.val.y, payoff=payoff, chunk=study.chunk)
                    tables[seed, layer] = table = tabulate(game)
                seconds[f"exact game {layer}"] += timer.seconds
                with Timer() as timer:
                    rows, found = _estimate_rows(study, payoff, seed, layer, model, table)
                seconds["estimators"] += timer.seconds
                estimates += rows
                agreement += _agreement_rows(
                    seed, layer, table.players, found["oracle"], found["sizes"], found["matched"]
                )
                with Timer() as timer:
                    removal += _removal_rows(
                        study, payoff, seed, layer, model, data, found["matched"], found["oracle"], bar
                    )
                seconds["pruning one layer"] += timer.seconds
                bar.update()
            with Timer() as timer:
                network += _network_rows(study, payoff, seed, model, data, bar)
            seconds["whole network"] += timer.seconds
    bar.close()
    seconds["total"] = whole.seconds
    return StudyResult(
        study=study,
        payoff=payoff,
        seeds=seeds,
        dense=pd.DataFrame(dense),
        tables=tables,
        estimates=pd.DataFrame(estimates),
        agreement=pd.DataFrame(agreement),
        removal=pd.DataFrame(removal),
        network=pd.DataFrame(network),
        seconds=seconds,
    )


def with_budget(study: ShapleyStudy, **changes) -> ShapleyStudy:
    """A copy of ``study`` with some fields changed (e.g. fewer seeds for a test)."""
    return replace(study, **changes)


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


def summarize(result: StudyResult) -> dict:
    """The headline numbers of a study, for the paper-vs-run table and :func:`efflab.results.record`.

    Everything is about ``study.finetune_layer`` (the widest layer enumerated) unless named otherwise; means are
    over seeds and sampling draws.
    """
    study, layer = result.study, result.study.finetune_layer
    matched = result.matched_summary(layer)
    rows = result.estimates[result.estimates.layer == layer]
    players = int(rows.players.iloc[0])
    budgets = result.cost_benefit(layer).sort_values("setting", kind="stable")
    families = ("permutations", "kernel regression", "plain regression")
    largest = {family: float(budgets[budgets.family == family].kendall.iloc[-1]) for family in families}
    partial = rows[(rows.family == "partial Shapley") & (rows.setting == 1)]
    loo = rows[rows.family == "leave-one-out"]
    deviation = max(
        float(np.abs(np.asarray(p) * players - np.asarray(q)).max())
        for p, q in zip(partial.scores, loo.scores, strict=True)
    )
    same_ranking = all(
        np.array_equal(np.argsort(p, kind="stable"), np.argsort(q, kind="stable"))
        for p, q in zip(partial.scores, loo.scores, strict=True)
    )
    network = result.network.groupby(["method", "stage"]).agg(
        test_accuracy=("test_accuracy", "mean"), parameters=("parameters", "mean"), flops=("flops", "mean")
    )
    dense = network.loc[("dense", "dense")]
    return {
        "layer": layer,
        "players": players,
        "payoff": result.payoff,
        "seeds": len(result.seeds),
        "dense_test_accuracy": float(result.dense.test_accuracy.mean()),
        "exact_evaluations": int(matched.loc["exact Shapley", "evaluations"]),
        "exact_seconds_per_table": result.seconds[f"exact game {layer}"] / len(result.seeds),
        "kendall": matched.kendall.round(4).to_dict(),
        "evaluations": matched.evaluations.round(1).to_dict(),
        "agreement": matched.agreement.round(4).to_dict(),
        "agreement_baseline": float(matched.baseline.iloc[0]),
        "kendall_at_largest_budget": largest,
        "largest_budget": {"permutations": max(study.permutations), "regression": max(study.regression_samples)},
        "matched_permutations": study.matched,
        "partial_order_one_vs_loo_deviation": deviation,
        "partial_order_one_ranks_like_loo": same_ranking,
        "network_ratio": study.network_ratio,
        "network_pruned_accuracy": network.xs("pruned", level="stage").test_accuracy.round(4).to_dict(),
        "network_finetuned_accuracy": network.xs("fine-tuned", level="stage").test_accuracy.round(4).to_dict(),
        "network_flop_ratio": float(network.xs("fine-tuned", level="stage").flops.mean() / dense.flops),
        "network_parameter_ratio": float(
            network.xs("fine-tuned", level="stage").parameters.mean() / dense.parameters
        ),
        "study_seconds": result.seconds["total"],
    }


def paper_rows(summary: dict, full: dict | None = None) -> list[dict]:
    """Rows for :func:`efflab.ui.plots.paper_vs_run`: the paper's statement beside this run's number.

    The paper's result tables were not available to us, so its column holds formulas and claims, never a number
    we could not check. ``full`` is the committed full-mode summary, when there is one.
    """
    n, layer = summary["players"], summary["layer"]

    def both(text) -> dict:
        return {"this_run": text(summary), "full_run": text(full) if full else None}

    def agreement(s: dict) -> str:
        a = s["agreement"]
        return (
            f"exact {a['exact Shapley']:.2f}, LOO {a['leave-one-out']:.2f}, permutations {a['permutations']:.2f}, "
            f"L1 {a['L1 norm']:.2f} | random {s['agreement_baseline']:.2f}"
        )

    def convergence(s: dict) -> str:
        k = s["kendall_at_largest_budget"]
        return (
            f"permutations {k['permutations']:.2f}, kernel {k['kernel regression']:.2f}, "
            f"plain {k['plain regression']:.2f} | LOO {s['kendall']['leave-one-out']:.2f}"
        )

    def network(s: dict) -> str:
        t = s["network_finetuned_accuracy"]
        return (
            f"permutations {t['permutations']:.3f}, LOO {t['leave-one-out']:.3f}, L1 {t['L1 norm']:.3f}, "
            f"random {t['random']:.3f} (dense {s['dense_test_accuracy']:.3f}; "
            f"FLOPs x{s['network_flop_ratio']:.2f})"
        )

    return [
        {
            "quantity": f"exact Shapley cost for {layer} (n = {n}), coalition evaluations",
            "paper": f"2^n = {2**n:,} (eq. 1 sums over every coalition)",
            **both(lambda s: f"{s['exact_evaluations']:,} ({s['exact_seconds_per_table']:.1f} s per table)"),
            "note": "counted by CountingGame; one batched pass over cached activations",
        },
        {
            "quantity": "partial Shapley with K = 1 against leave-one-out",
            "paper": "the same ranking: K = 1 keeps only the leave-one-out term, times 1/n",
            **both(
                lambda s: (
                    f"same ranking: {s['partial_order_one_ranks_like_loo']}, "
                    f"max |n·partial - LOO| = {s['partial_order_one_vs_loo_deviation']:.1e}"
                )
            ),  # fmt: skip
            "note": "an identity; checked on every seed",
        },
        {
            "quantity": f"permutation sampling with M = {summary['matched_permutations']} orders, evaluations",
            "paper": f"M·n = {summary['matched_permutations'] * n}",
            **both(lambda s: f"{s['evaluations']['permutations']:.0f}"),
            "note": "fewer: the empty and full coalitions are shared by every order",
        },
        {
            "quantity": "ranking quality before fine-tuning: oracle agreement, o = 1..n/2",
            "paper": "Shapley ranks are judged against the Oracle rank built from oracle sets (claim, no number)",
            **both(agreement),
            "note": "small removal sets are decided near the full layer, where leave-one-out looks",
        },
        {
            "quantity": "approximations against exact ranks at the largest budget, Kendall τ",
            "paper": "cost-benefit comparison of the approximations (qualitative)",
            **both(convergence),
            "note": f"budgets up to M = {summary['largest_budget']['permutations']}, "
            f"m = {summary['largest_budget']['regression']}",
        },
        {
            "quantity": f"test accuracy after removing {summary['network_ratio']:.0%} of every layer, fine-tuned",
            "paper": "state-of-the-art FLOPs and parameter cuts on LeNet-5, VGG-16, ResNet-56/50 (no number)",
            **both(network),
            "note": "after fine-tuning the ranking matters less; see Feng et al. 2024 (arXiv 2412.00143)",
        },
    ]
