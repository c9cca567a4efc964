"""The experiment of notebook 04: the three early-exit training regimes, side by side, over several seeds.

For each seed we split the data, build one CNN with a pooled head after every block but the last, and train it
along the three regimes of :mod:`efflab.early_exit.exits` with the same step budget (disjoint and mixed share their
phase-1 backbone; joint starts from the same initial weights). Each trained network is then scored once on the
test set, every exit on every sample, and everything the notebook shows is derived from those logits: the
cost-accuracy curves, the paper's budget table, the exit histograms of the playground. The measurements that need
the networks themselves are taken here: the numerical rank of each block's activations, the wall-clock of real
early-exit inference, and where a forward pass spends its time (all timed with the study's thread setting).

**Data.** The cluttered canvases (:mod:`efflab.data.canvas`) are the hard case: a digit at a random place on a
16 x 16 canvas with fragments of other digits around it, so a block that has only seen a few pixels cannot tell
the digit from the clutter, and the regimes differ. Each training digit is placed on ``layouts`` different random
canvases (new positions, new clutter), which is augmentation, not new digits: validation and test canvases are made
from digits the network never trains on. The 8 x 8 digits are the easy case, where every regime does well.

Budgets live here: :meth:`EarlyExitStudy.quick` trains both datasets, three seeds each, in about a minute on two
CPU cores; :meth:`EarlyExitStudy.full` is a wider network on larger canvases, five seeds, for one GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from efflab.data.canvas import load_canvases, make_canvases
from efflab.data.digits import Digits, Split, infinite_batches, load_digit_images, load_digits, split_indices
from efflab.early_exit.exits import (
    BUDGET_FRACTIONS,
    REGIMES,
    EarlyExitNetwork,
    RegimeSchedule,
    accuracy_at_budgets,
    accuracy_within_budget,
    activation_ranks,
    area_under_curve,
    attach_to_cnn,
    check_regime,
    cost_accuracy_curve,
    evaluate_threshold,
    exit_costs,
    exit_logits_on,
    measure_speedup,
    time_breakdown,
    train_regimes,
)
from efflab.flops import module_forward_flops
from efflab.models.cnn import CNN, CNNConfig
from efflab.runtime import Run, Timer, seed_everything
from efflab.train import progress_enabled
from efflab.validation import check_choice, check_int, check_positive, check_seed

DATASETS = ("canvas", "digits")


@dataclass(frozen=True)
class EarlyExitStudy:
    """What one run of the experiment covers and how much compute it gets."""

    dataset: str
    widths: tuple[int, ...]
    hidden: int
    seeds: int
    batch_size: int
    schedule: RegimeSchedule
    canvas_size: int = 16
    n_fragments: int = 3
    layouts: int = 8  # random canvases per training digit
    rank_samples: int = 2048  # training images the numerical rank is measured on
    rank_rtol: float = 1e-3
    timing_thresholds: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99)  # 0: everyone leaves at the first exit
    timing_repeats: int = 11
    threads: int | None = None  # None keeps torch's setting

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        if not self.widths:
            raise ValueError("widths=() is not allowed; expected at least two conv blocks")
        check_int("len(widths)", len(self.widths), low=2)
        check_int("hidden", self.hidden, low=1)
        check_int("seeds", self.seeds, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("canvas_size", self.canvas_size, low=8)
        check_int("n_fragments", self.n_fragments, low=0)
        check_int("layouts", self.layouts, low=1)
        check_int("rank_samples", self.rank_samples, low=2)
        check_positive("rank_rtol", self.rank_rtol)
        for threshold in self.timing_thresholds:
            check_positive("timing_thresholds", threshold, allow_zero=True)
        check_int("timing_repeats", self.timing_repeats, low=1)
        if self.threads is not None:
            check_int("threads", self.threads, low=1)

    @classmethod
    def quick(cls, dataset: str = "canvas") -> EarlyExitStudy:
        """Two CPU cores: canvases about 55 s, digits 10 s, three seeds each (longer when the cores are busy)."""
        check_choice("dataset", dataset, DATASETS)
        if dataset == "digits":
            schedule = RegimeSchedule(backbone_steps=200, exit_steps=200, backbone_lr=3e-3, mixed_lr=1e-3)
            return cls("digits", widths=(16, 32, 64, 64), hidden=64, seeds=3, batch_size=64, schedule=schedule,
                       rank_samples=1000, threads=1)  # fmt: skip
        schedule = RegimeSchedule(backbone_steps=800, exit_steps=400, backbone_lr=3e-3, mixed_lr=1e-3)
        return cls("canvas", widths=(16, 32, 64, 64), hidden=64, seeds=3, batch_size=64, schedule=schedule,
                   n_fragments=2, threads=1)  # fmt: skip

    @classmethod
    def full(cls, dataset: str = "canvas") -> EarlyExitStudy:
        """One GPU: wider blocks, larger canvases, more layouts and steps, five seeds (estimated 1.5 min)."""
        check_choice("dataset", dataset, DATASETS)
        if dataset == "digits":
            schedule = RegimeSchedule(backbone_steps=400, exit_steps=400, backbone_lr=2e-3, mixed_lr=5e-4)
            return cls("digits", widths=(32, 64, 128, 128), hidden=128, seeds=5, batch_size=128,
                       schedule=schedule, rank_samples=1000, timing_repeats=20)  # fmt: skip
        schedule = RegimeSchedule(backbone_steps=1200, exit_steps=600, backbone_lr=2e-3, mixed_lr=5e-4)
        return cls("canvas", widths=(32, 64, 128, 128, 128), hidden=128, seeds=5, batch_size=128,
                   schedule=schedule, canvas_size=24, n_fragments=5, layouts=16, rank_samples=3000,
                   timing_repeats=20)  # fmt: skip

    @classmethod
    def for_run(cls, run: Run, dataset: str = "canvas") -> EarlyExitStudy:
        return cls.quick(dataset) if run.quick else cls.full(dataset)

    @property
    def image_size(self) -> int:
        return 8 if self.dataset == "digits" else self.canvas_size

    def model_config(self) -> CNNConfig:
        return CNNConfig(widths=self.widths, hidden=self.hidden, image_size=self.image_size)


def with_changes(study: EarlyExitStudy, **changes) -> EarlyExitStudy:
    """A copy of ``study`` with some fields changed; schedule fields may be given directly (``exit_steps=...``)."""
    schedule_fields = set(RegimeSchedule.__dataclass_fields__)
    schedule_changes = {k: changes.pop(k) for k in list(changes) if k in schedule_fields}
    schedule = replace(study.schedule, **schedule_changes)
    return replace(study, schedule=schedule, **changes)


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, then restore the setting: convolutions this small lose more to
    synchronising two threads than they gain, the more so on cores that other work shares."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_study_data(study: EarlyExitStudy, seed: int) -> Digits:
    """The study's data split by ``seed``, standardised with training statistics.

    For canvases, the training split holds ``layouts`` canvases per training digit; validation and test hold
    one canvas per digit of their own split (:func:`efflab.data.canvas.load_canvases`).
    """
    check_seed(seed)
    if study.dataset == "digits":
        return load_digits(seed)
    images, labels = load_digit_images()
    train = split_indices(labels, seed=seed)["train"]
    layout_seed = int(np.random.SeedSequence([seed, 404]).generate_state(1)[0])
    canvases = {
        "train": make_canvases(
            np.tile(images[train], (study.layouts, 1, 1)), np.tile(labels[train], study.layouts),
            canvas_size=study.canvas_size, n_fragments=study.n_fragments, seed=layout_seed,
        ),
        **{
            name: load_canvases(name, canvas_size=study.canvas_size, n_fragments=study.n_fragments, seed=seed)
            for name in ("val", "test")
        },
    }  # fmt: skip
    mean, std = float(canvases["train"].x.mean()), float(canvases["train"].x.std())
    splits = {name: Split(x=(c.x - mean) / std, y=c.y) for name, c in canvases.items()}
    return Digits(train=splits["train"], val=splits["val"], test=splits["test"], mean=mean, std=std)


@dataclass
class StudyResult:
    """Everything the notebook shows, computed once; the playground only reads from here.

    ``logits[(seed, regime)]`` are every exit's test logits (H, N, C); ``labels[seed]`` the matching labels;
    ``images`` the first seed's test images in [0, 1] for the gallery, ``test_inputs`` the same images as the
    networks see them, and ``networks`` the first seed's trained networks, for running real early exits. The
    tables have one row per seed and regime (and threshold, exit or stage).
    """

    study: EarlyExitStudy
    seeds: tuple[int, ...]
    costs: list[int]  # FLOPs of reaching each exit, one sample
    backbone_flops: int  # FLOPs of the plain backbone, one sample
    logits: dict[tuple[int, str], Tensor]
    labels: dict[int, Tensor]
    images: Tensor
    test_inputs: Tensor
    networks: dict[str, EarlyExitNetwork] = field(repr=False)
    curves: pd.DataFrame  # seed, regime, threshold, expected_flops, relative_cost, accuracy
    exit_accuracy: pd.DataFrame  # seed, regime, exit, accuracy
    ranks: pd.DataFrame  # seed, regime, stage, rank, dimension, rank_fraction
    timing: pd.DataFrame  # regime, threshold, flop_ratio, time_ratio, backbone_ms, early_exit_ms
    breakdown: pd.DataFrame  # part, flops, ms, flop_share, time_share (first seed's mixed network)
    histories: dict[tuple[int, str], pd.DataFrame] = field(repr=False)
    seconds: float = 0.0

    @property
    def regimes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(regime for _, regime in self.logits))

    @property
    def relative_costs(self) -> np.ndarray:
        """Each exit's cost as a fraction of the backbone's."""
        return np.asarray(self.costs, dtype=float) / self.backbone_flops

    def outcome(self, regime: str, threshold: float, *, seed: int | None = None, rule: str = "confidence"):
        """Where every test sample of one seed exits at ``threshold``: a cheap lookup for the playground."""
        check_regime(regime)
        seed = self.seeds[0] if seed is None else seed
        check_choice("seed", seed, self.seeds)
        return evaluate_threshold(
            self.logits[(seed, regime)], self.labels[seed], self.costs, threshold,
            rule=rule, backbone_flops=self.backbone_flops,
        )  # fmt: skip

    def curve(self, regime: str, *, seed: int | None = None, rule: str = "confidence") -> pd.DataFrame:
        """The cost-accuracy curve of one seed, recomputed from the logits (for the entropy rule, say)."""
        check_regime(regime)
        seed = self.seeds[0] if seed is None else seed
        check_choice("seed", seed, self.seeds)
        return cost_accuracy_curve(
            self.logits[(seed, regime)],
            self.labels[seed],
            self.costs,
            rule=rule,
            backbone_flops=self.backbone_flops,
        )

    def budget_grid(self, points: int = 101) -> np.ndarray:
        """Relative-cost budgets from 0 to just past the last exit's cost."""
        return np.linspace(0.0, float(self.relative_costs[-1]) * 1.001, points)

    def budget_bands(self, grid: np.ndarray) -> dict[str, np.ndarray]:
        """Accuracy within each budget of ``grid``, (seeds, len(grid)) per regime, by the step rule."""
        return {
            regime: np.stack([accuracy_within_budget(self._curve_of(seed, regime), grid) for seed in self.seeds])
            for regime in self.regimes
        }

    def budget_table(self, fractions=BUDGET_FRACTIONS) -> pd.DataFrame:
        """The paper's table per seed and regime: accuracy at 25/50/75/100 % of the backbone's cost, and AUC."""
        rows = []
        for seed in self.seeds:
            for regime in self.regimes:
                curve = self._curve_of(seed, regime)
                rows.append(dict(seed=seed, regime=regime, **accuracy_at_budgets(curve, fractions),
                                 auc=area_under_curve(curve)))  # fmt: skip
        return pd.DataFrame(rows)

    def budget_summary(self, fractions=BUDGET_FRACTIONS) -> pd.DataFrame:
        """Mean and standard deviation over seeds of :meth:`budget_table`, one row per regime."""
        table = self.budget_table(fractions).drop(columns="seed")
        grouped = table.groupby("regime", sort=False)
        return grouped.mean().round(3).astype(str) + " ± " + grouped.std(ddof=0).round(3).astype(str)

    def compare(self, first: str, second: str, column: str = "25%") -> dict:
        """How ``first`` fares against ``second`` on one column of :meth:`budget_table`, seed by seed.

        Returns the mean difference (first - second), and on how many seeds ``first`` was ahead or behind: with
        a handful of seeds, a consistent sign says more than the size of the mean.
        """
        check_regime(first)
        check_regime(second)
        table = self.budget_table().pivot(index="seed", columns="regime", values=column)
        difference = (table[first] - table[second]).to_numpy()
        return dict(
            mean_difference=float(np.nanmean(difference)) if np.isfinite(difference).any() else float("nan"),
            ahead=int((difference > 0).sum()),
            behind=int((difference < 0).sum()),
            seeds=len(difference),
        )

    def rank_bands(self, column: str = "rank") -> dict[str, np.ndarray]:
        """``column`` of :attr:`ranks` as (seeds, stages) per regime, for a band plot."""
        table = self.ranks.pivot_table(index=["regime", "seed"], columns="stage", values=column)
        return {regime: table.loc[regime].to_numpy() for regime in self.regimes}

    def exit_accuracy_bands(self) -> dict[str, np.ndarray]:
        """Each exit's own accuracy as (seeds, exits) per regime."""
        table = self.exit_accuracy.pivot_table(index=["regime", "seed"], columns="exit", values="accuracy")
        return {regime: table.loc[regime].to_numpy() for regime in self.regimes}

    def summary(self) -> dict:
        """Headline numbers for ``results.record``: mean over seeds per regime, plus the timing."""
        table = self.budget_table().drop(columns="seed").groupby("regime", sort=False).mean()
        finals = self.exit_accuracy_bands()
        return {
            "dataset": self.study.dataset,
            "seeds": list(self.seeds),
            "budget_accuracy": {regime: table.loc[regime].round(4).to_dict() for regime in self.regimes},
            "last_exit_accuracy": {regime: float(finals[regime][:, -1].mean()) for regime in self.regimes},
            "relative_exit_costs": self.relative_costs.round(4).tolist(),
            "timing": self.timing.round(4).to_dict(orient="records"),
            "seconds": round(self.seconds, 1),
        }

    def _curve_of(self, seed: int, regime: str) -> pd.DataFrame:
        return self.curves[(self.curves.seed == seed) & (self.curves.regime == regime)]


def _score(network, data: Digits, study: EarlyExitStudy, costs, backbone_flops, seed: int, regime: str):
    """Test logits, the curve, each exit's accuracy and the activation ranks of one trained network."""
    logits = exit_logits_on(network, data.test.x).cpu()
    curve = cost_accuracy_curve(logits, data.test.y, costs, backbone_flops=backbone_flops)
    accuracy = (logits.argmax(-1) == data.test.y).float().mean(1)
    exit_rows = [dict(seed=seed, regime=regime, exit=h, accuracy=float(a)) for h, a in enumerate(accuracy)]
    ranks = activation_ranks(network, data.train.x[: study.rank_samples], rtol=study.rank_rtol)
    return logits, curve.assign(seed=seed, regime=regime), exit_rows, ranks.assign(seed=seed, regime=regime)


def run_study(run: Run, study: EarlyExitStudy, *, progress: bool | None = None) -> StudyResult:
    """Train the three regimes for ``study.seeds`` seeds (``run.seed``, ``run.seed + 1``, ...) and score them."""
    seeds = tuple(run.seed + i for i in range(study.seeds))
    device = run.device
    logits, labels, histories = {}, {}, {}
    curves, exit_rows, ranks, timing = [], [], [], []
    bar = tqdm(total=len(seeds), desc=f"{study.dataset}: seeds", disable=not progress_enabled(progress))
    with Timer() as clock, _threads(study.threads):
        for seed in seeds:
            data = load_study_data(study, seed)
            seed_everything(seed)

            def make_network():
                return attach_to_cnn(CNN(study.model_config())).to(device)

            def batches(phase: int, seed=seed, data=data):
                return infinite_batches(data.train, study.batch_size, seed=seed * 10 + phase)

            trained = train_regimes(make_network, batches, study.schedule, progress=False)
            example = data.test.x[:1].to(device)
            any_network = trained[REGIMES[0]][0]
            costs = exit_costs(any_network, example)
            backbone_flops = module_forward_flops(any_network.backbone, example)
            labels[seed] = data.test.y
            for regime, (network, history) in trained.items():
                histories[(seed, regime)] = history
                scored = _score(network, data, study, costs, backbone_flops, seed, regime)
                logits[(seed, regime)], curve, rows, rank = scored
                curves.append(curve)
                exit_rows.extend(rows)
                ranks.append(rank)
                if seed == seeds[0]:
                    test_x = data.test.x.to(device)
                    for threshold in study.timing_thresholds:
                        measured = measure_speedup(
                            network, test_x, threshold, costs=costs, repeats=study.timing_repeats
                        )
                        timing.append(dict(regime=regime, **measured))
            if seed == seeds[0]:
                images, test_inputs = data.test.x * data.std + data.mean, data.test.x
                networks = {regime: network for regime, (network, _) in trained.items()}
                breakdown = time_breakdown(networks["mixed"], test_inputs.to(device), repeats=study.timing_repeats)
            bar.update()
    bar.close()
    return StudyResult(
        study=study,
        seeds=seeds,
        costs=costs,
        backbone_flops=backbone_flops,
        logits=logits,
        labels=labels,
        images=images.clamp(0, 1),
        test_inputs=test_inputs,
        networks=networks,
        curves=pd.concat(curves, ignore_index=True),
        exit_accuracy=pd.DataFrame(exit_rows),
        ranks=pd.concat(ranks, ignore_index=True),
        timing=pd.DataFrame(timing),
        breakdown=breakdown,
        histories=histories,
        seconds=clock.seconds,
    )


def example_indices(exits: Tensor, per_exit: int, num_exits: int) -> list[list[int]]:
    """Up to ``per_exit`` sample indices leaving at each exit (the first ones in test order)."""
    check_int("per_exit", per_exit, low=1)
    return [torch.nonzero(exits == h).flatten()[:per_exit].tolist() for h in range(num_exits)]
