"""The experiment of notebook 04: the early-exit training regimes side by side, over seeds and phase-1 shares.

For each seed we split the data and build one CNN with a pooled head after every block but the last (the same
initial weights for every regime of that seed). With a fixed budget of ``total_steps`` steps:

* the **main comparison** trains disjoint, joint, mixed (as the authors run it) and the course's mixed_low_lr,
  phase 1 taking ``main_share`` of the budget in the regimes that have one;
* the **phase-1 share sweep** trains mixed and disjoint with phase 1 at each share of ``shares`` (0, 25, 50, 75,
  100 % by default, as in the authors' ResNet-50 scripts). Mixed at 0 % is joint, and at 100 % no head trains;
  the main comparison's runs are points of the sweep, so nothing is trained twice.

The independent trainings run through :func:`efflab.parallel.run_all` in two rounds: first every phase-1 backbone
(and every run that needs none), then every later phase, each starting from the phase-1 state it continues. Each
task seeds itself from its own fields, so the results are the same on every backend. Each trained network is
scored inside its task: every exit's test logits, the cost-accuracy curve, each exit's accuracy and, for the main
comparison, the numerical rank of every block's activations. What needs the networks themselves afterwards (the
wall-clock of real early exits, where a forward pass spends its time) is measured here, one thread, after the
training is over, so that the clocks do not race the trainings.

**Data.** The cluttered canvases (:mod:`efflab.data.canvas`) are the hard case: a digit at a random place on a
16 x 16 canvas with fragments of other digits around it, so a block that has only seen a few pixels cannot tell
the digit from the clutter, and the regimes differ. Each training digit is placed on ``layouts`` different random
canvases (new positions, new clutter), which is augmentation, not new digits: validation and test canvases are made
from digits the network never trains on. ``dataset="digits"`` runs the plain 8 x 8 digits instead, the easy case.

**Speed.** The networks run in channels-last memory layout: on a CPU, PyTorch's 2 x 2 max-pool is several times
faster on it than on the default layout, and the numbers mean the same. Disjoint's phase 3 runs the frozen
backbone without gradients and stops each head early.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor

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
    train_regime,
)
from efflab.experiment import Budget, committed_device, paper_table, seeds_for, spread
from efflab.flops import module_forward_flops
from efflab.models.cnn import CNN, CNNConfig
from efflab.parallel import gpu_share_for, run_all
from efflab.runtime import Run, Timer, seed_everything, torch_threads
from efflab.validation import check_choice, check_fraction, check_int, check_positive, check_seed

NAME = "04_early_exits"
DATASETS = ("canvas", "digits")
SWEEP_REGIMES = ("disjoint", "mixed")  # the regimes with a phase 1; joint is mixed at a share of 0
TIMED_REGIMES = ("disjoint", "joint", "mixed")


@dataclass(frozen=True)
class EarlyExitBudget(Budget):
    """What one run of the experiment covers and how much compute it gets.

    ``total_steps`` is every regime's budget; ``main_share`` is phase 1's share of it in the main comparison and
    must be one of the sweep's ``shares``. ``rank_samples`` training images measure the numerical rank; the
    quick and full budgets take more of them than the largest block has dimensions, so the sample count never
    caps a rank.
    """

    dataset: str = "canvas"
    widths: tuple[int, ...] = (16, 32, 64, 64)
    hidden: int = 64
    seeds: int = 3
    batch_size: int = 64
    total_steps: int = 800
    main_share: float = 0.5
    shares: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    backbone_lr: float = 3e-3
    mixed_lr: float = 1e-3  # mixed_low_lr's phase-2 backbone rate (the course's variant)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    check_every: int = 25  # steps between disjoint's validation checks
    patience: int = 4  # checks without a gain before a head stops
    canvas_size: int = 16
    n_fragments: int = 2
    layouts: int = 8  # random canvases per training digit
    rank_samples: int = 2048  # training images the numerical rank is measured on
    rank_rtol: float = 1e-3
    timing_thresholds: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99)  # 0: everyone leaves at the first exit
    timing_repeats: int = 5

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        if not isinstance(self.widths, tuple) or len(self.widths) < 2:
            raise ValueError(f"widths={self.widths!r} is not allowed; expected a tuple of at least two widths")
        for width in self.widths:
            check_int("widths", width, low=1)
        check_int("hidden", self.hidden, low=1)
        check_int("seeds", self.seeds, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("total_steps", self.total_steps, low=2)
        if not isinstance(self.shares, tuple) or not self.shares:
            raise ValueError(f"shares={self.shares!r} is not allowed; expected a non-empty tuple of fractions")
        for share in self.shares:
            check_fraction("shares", share, inclusive=True)
        if list(self.shares) != sorted(set(self.shares)):
            raise ValueError(f"shares={self.shares!r} is not allowed; expected strictly increasing fractions")
        check_fraction("main_share", self.main_share, inclusive=True)
        if self.main_share not in self.shares or not 0 < self.main_share < 1:
            raise ValueError(
                f"main_share={self.main_share!r} is not allowed; expected one of shares={self.shares!r} "
                "strictly between 0 and 1"
            )
        for name in ("backbone_lr", "mixed_lr"):
            check_positive(name, getattr(self, name))
        check_int("warmup_steps", self.warmup_steps, low=0)
        check_fraction("min_lr_ratio", self.min_lr_ratio, inclusive=True)
        check_int("check_every", self.check_every, low=1)
        check_int("patience", self.patience, low=1)
        check_int("canvas_size", self.canvas_size, low=8)
        check_int("n_fragments", self.n_fragments, low=0)
        check_int("layouts", self.layouts, low=1)
        check_int("rank_samples", self.rank_samples, low=2)
        check_positive("rank_rtol", self.rank_rtol)
        if not isinstance(self.timing_thresholds, tuple):
            raise ValueError(f"timing_thresholds={self.timing_thresholds!r} is not allowed; expected a tuple")
        for threshold in self.timing_thresholds:
            check_positive("timing_thresholds", threshold, allow_zero=True)
        check_int("timing_repeats", self.timing_repeats, low=1)

    @classmethod
    def quick(cls) -> EarlyExitBudget:
        """Two CPU cores: canvases, three seeds, 480 steps of 32 images per regime and sweep point.

        The sweep keeps its ends and the main comparison's share (0, 50 and 100 %): the 25 and 75 % points were
        40 % of the quick run's training steps, and full mode has them. The step budget and batch are what fit
        the quick-mode time budget with three seeds (640 steps of 64 took half as long again, and led to the
        same findings); the networks are under-trained next to full mode's, which the regimes share alike.
        """
        return cls(shares=(0.0, 0.5, 1.0), total_steps=480, batch_size=32, timing_repeats=3)

    @classmethod
    def full(cls) -> EarlyExitBudget:
        """One GPU: wider and deeper blocks, larger canvases, more layouts and steps, five seeds."""
        return cls(
            widths=(32, 64, 128, 128, 128),
            hidden=128,
            seeds=5,
            batch_size=128,
            total_steps=3000,
            backbone_lr=2e-3,
            mixed_lr=5e-4,
            check_every=50,
            patience=6,
            canvas_size=24,
            n_fragments=5,
            layouts=16,
            rank_samples=5000,
            timing_repeats=20,
        )

    @property
    def image_size(self) -> int:
        return 8 if self.dataset == "digits" else self.canvas_size

    def model_config(self) -> CNNConfig:
        return CNNConfig(widths=self.widths, hidden=self.hidden, image_size=self.image_size)

    def schedule(self, share: float | None = None) -> RegimeSchedule:
        """The regimes' schedule with phase 1 at ``share`` of the budget (``main_share`` by default)."""
        share = self.main_share if share is None else share
        base = RegimeSchedule(
            backbone_steps=self.total_steps,
            exit_steps=0,
            backbone_lr=self.backbone_lr,
            mixed_lr=self.mixed_lr,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
            check_every=self.check_every,
            patience=self.patience,
        )
        return base.with_share(share)

    def block_dimensions(self) -> list[int]:
        """The flattened size of every block's output, the most its numerical rank can be."""
        config, size, dimensions = self.model_config(), self.image_size, []
        for width, pools in zip(config.widths, config.pools(), strict=True):
            size = size // 2 if pools else size
            dimensions.append(width * size * size)
        return dimensions


@functools.lru_cache(maxsize=4)
def load_study_data(budget: EarlyExitBudget, seed: int) -> Digits:
    """The budget's data split by ``seed``, standardised with training statistics (never modify it in place).

    For canvases, the training split holds ``layouts`` canvases per training digit; validation and test hold
    one canvas per digit of their own split (:func:`efflab.data.canvas.load_canvases`). A worker process that
    runs several tasks of one seed builds the canvases once (the cache is per process).
    """
    check_budget(budget)
    check_seed(seed)
    if budget.dataset == "digits":
        return load_digits(seed)
    images, labels = load_digit_images()
    train = split_indices(labels, seed=seed)["train"]
    layout_seed = int(np.random.SeedSequence([seed, 404]).generate_state(1)[0])
    canvases = {
        "train": make_canvases(
            np.tile(images[train], (budget.layouts, 1, 1)),
            np.tile(labels[train], budget.layouts),
            canvas_size=budget.canvas_size,
            n_fragments=budget.n_fragments,
            seed=layout_seed,
        ),
    }
    for name in ("val", "test"):
        canvases[name] = load_canvases(
            name, canvas_size=budget.canvas_size, n_fragments=budget.n_fragments, seed=seed
        )
    mean, std = float(canvases["train"].x.mean()), float(canvases["train"].x.std())
    splits = {name: Split(x=(c.x - mean) / std, y=c.y) for name, c in canvases.items()}
    return Digits(train=splits["train"], val=splits["val"], test=splits["test"], mean=mean, std=std)


def check_budget(budget) -> None:
    if not isinstance(budget, EarlyExitBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected an EarlyExitBudget")


def make_network(budget: EarlyExitBudget, seed: int, device: torch.device | str = "cpu") -> EarlyExitNetwork:
    """The seed's untrained network: the same initial weights for every regime and share of that seed."""
    check_budget(budget)
    check_seed(seed)
    seed_everything(seed)
    network = attach_to_cnn(CNN(budget.model_config()))
    return network.to(device=device, memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------------------
# The independent trainings, as picklable tasks


@dataclass(frozen=True)
class TrainingTask:
    """One training of the experiment.

    With ``regime=None`` it trains phase 1 alone for ``share`` of the budget and returns the backbone's state.
    Otherwise it trains ``regime`` at that share, from the phase-1 state ``start`` when one is given (the later
    phases only), and scores the result. ``main`` asks for the extra measurements of the main comparison.
    """

    budget: EarlyExitBudget
    seed: int
    regime: str | None
    share: float
    start: dict | None = field(default=None, repr=False)
    main: bool = False
    device: str = "cpu"

    def __post_init__(self):
        check_budget(self.budget)
        if self.regime is not None:
            check_regime(self.regime)
        check_seed(self.seed)
        check_fraction("share", self.share, inclusive=True)
        if self.regime is None and self.schedule.backbone_steps == 0:
            raise ValueError(
                f"share={self.share!r} is not allowed for a phase-1 task; expected a share giving phase 1 steps"
            )

    @property
    def schedule(self) -> RegimeSchedule:
        return self.budget.schedule(self.share)


@dataclass
class TrainedRun:
    """What a task sends back (everything picklable)."""

    seed: int
    regime: str | None
    share: float
    state: dict
    history: pd.DataFrame
    logits: Tensor | None = None  # (H, N, C) test logits of every exit
    labels: Tensor | None = None
    costs: list[int] | None = None
    backbone_flops: int | None = None
    curve: pd.DataFrame | None = None
    ranks: pd.DataFrame | None = None
    stopping: dict | None = None  # disjoint: per head best step, stop step, best validation accuracy


def _batches(data: Digits, budget: EarlyExitBudget, seed: int):
    def batches(phase: int):
        return infinite_batches(data.train, budget.batch_size, seed=seed * 10 + phase)

    return batches


def train_task(task: TrainingTask) -> TrainedRun:
    """Run one :class:`TrainingTask` (a top-level function, so that worker processes can run it)."""
    budget, schedule, device = task.budget, task.schedule, torch.device(task.device)
    data = load_study_data(budget, task.seed)
    network = make_network(budget, task.seed, device)
    seed_everything(task.seed)
    batches = _batches(data, budget, task.seed)
    if task.regime is None:
        history = train_regime(network, "mixed", replace(schedule, exit_steps=0), batches, progress=False)
        return TrainedRun(task.seed, None, task.share, _cpu_state(network), history)
    if task.start is not None:
        network.load_state_dict(task.start)
    validation = (data.val.x, data.val.y)
    history = train_regime(
        network,
        task.regime,
        schedule,
        batches,
        validation=validation,
        skip_backbone=task.start is not None,
        progress=False,
    )
    stopping = history.attrs.pop("stopping", None)
    if stopping is not None:
        stopping = dict(
            best_step=list(stopping.best_step),
            stopped_at=list(stopping.stopped_at),
            best_accuracy=list(stopping.best_accuracy),
        )
    return _score(network, task, data, history, stopping)


def _cpu_state(network: EarlyExitNetwork) -> dict:
    return {name: value.detach().cpu().contiguous() for name, value in network.state_dict().items()}


def _score(network, task: TrainingTask, data: Digits, history: pd.DataFrame, stopping) -> TrainedRun:
    """Test logits of every exit, the cost-accuracy curve and, for the main comparison, the ranks."""
    device = next(network.parameters()).device
    example = data.test.x[:1].to(device)
    costs = exit_costs(network, example)
    backbone_flops = module_forward_flops(network.backbone, example)
    logits = exit_logits_on(network, data.test.x).cpu()
    curve = cost_accuracy_curve(logits, data.test.y, costs, backbone_flops=backbone_flops)
    ranks = None
    if task.main:
        samples = data.train.x[: task.budget.rank_samples]
        ranks = activation_ranks(network, samples, rtol=task.budget.rank_rtol)
    return TrainedRun(
        seed=task.seed,
        regime=task.regime,
        share=task.share,
        state=_cpu_state(network),
        history=history,
        logits=logits,
        labels=data.test.y,
        costs=costs,
        backbone_flops=backbone_flops,
        curve=curve,
        ranks=ranks,
        stopping=stopping,
    )


def plan_tasks(budget: EarlyExitBudget, seeds, device: str = "cpu") -> tuple[list[TrainingTask], list[tuple]]:
    """The first round of tasks, and the recipe of the second.

    First round: every phase-1 backbone (one per seed and share strictly above 0), and the runs that need none
    (joint, and disjoint at a share of 0). Second round, as ``(seed, regime, share, main)``: every regime
    that continues a phase-1 backbone. Mixed at a share of 0 is the joint run and at 1 it is the phase-1
    backbone with untrained heads, the same network as disjoint at 1; those are scored once and shared.
    """
    first, second = [], []
    for seed in seeds:
        first.append(TrainingTask(budget, seed, "joint", 0.0, main=True, device=device))
        if 0.0 in budget.shares:
            first.append(TrainingTask(budget, seed, "disjoint", 0.0, device=device))
        for share in budget.shares:
            if share == 0:
                continue
            first.append(TrainingTask(budget, seed, None, share, device=device))
            main = share == budget.main_share
            if share == 1:
                second.append((seed, "mixed", share, False))
                continue
            second.extend((seed, regime, share, main) for regime in SWEEP_REGIMES)
            if main:
                second.append((seed, "mixed_low_lr", share, True))
    # longest first, so that the pool's last task is a short one
    first.sort(key=lambda t: -(t.budget.total_steps if t.regime == "joint" else t.share * t.budget.total_steps))
    return first, second


def train_all(budget: EarlyExitBudget, seeds, device: str = "cpu", *, progress: bool | None = None):
    """Every training of the experiment through :func:`run_all`.

    Returns ``{(seed, regime, share): TrainedRun}`` and ``{(seed, share): steps}``, the length of every phase-1
    run that the later phases continued.
    """
    first, recipe = plan_tasks(budget, seeds, device)
    share = gpu_share_for(device)
    done = run_all(
        train_task, first, description="early exits: phase 1 and joint", progress=progress, gpu_share=share
    )
    backbones = {(run.seed, run.share): run.state for run in done if run.regime is None}
    phase1_steps = {(run.seed, run.share): len(run.history) for run in done if run.regime is None}
    runs = {(run.seed, run.regime, run.share): run for run in done if run.regime is not None}
    second = [
        TrainingTask(budget, seed, regime, share, start=backbones[(seed, share)], main=main, device=device)
        for seed, regime, share, main in recipe
    ]
    second.sort(key=lambda t: (t.regime == "disjoint", t.share))  # joint phases (the longer ones) first
    for run in run_all(
        train_task, second, description="early exits: later phases", progress=progress, gpu_share=share
    ):
        runs[(run.seed, run.regime, run.share)] = run
    for seed in seeds:  # the shared points of the sweep
        runs[(seed, "mixed", 0.0)] = runs[(seed, "joint", 0.0)]
        if 1.0 in budget.shares:
            runs[(seed, "disjoint", 1.0)] = runs[(seed, "mixed", 1.0)]
    return runs, phase1_steps


# ---------------------------------------------------------------------------------------------------------------
# The result


@dataclass
class EarlyExitResult:
    """Everything the notebook shows, computed once; the playground only reads from here.

    ``logits[(seed, regime, share)]`` are every exit's test logits (H, N, C) for the main comparison and every
    sweep point; ``labels[seed]`` the matching labels; ``images[seed]`` the matching test images in [0, 1];
    ``test_inputs`` the first seed's test images as the networks see them, and ``networks`` the first seed's
    trained networks of the main comparison, for running real early exits.
    """

    budget: EarlyExitBudget
    seeds: tuple[int, ...]
    costs: list[int]  # FLOPs of reaching each exit, one sample
    backbone_flops: int  # FLOPs of the plain backbone, one sample
    logits: dict[tuple[int, str, float], Tensor]
    labels: dict[int, Tensor]
    images: dict[int, Tensor]  # each seed's test images in [0, 1], for the gallery
    test_inputs: Tensor
    networks: dict[str, EarlyExitNetwork] = field(repr=False)
    curves: pd.DataFrame  # seed, regime, share, threshold, expected_flops, relative_cost, accuracy
    ranks: pd.DataFrame  # seed, regime, stage, rank, dimension, rank_fraction
    steps: pd.DataFrame  # seed, regime, share, phase1_steps, later_steps (what each run really trained)
    stopping: pd.DataFrame  # seed, share, head, best_step, stopped_at, best_accuracy (disjoint's phase 3)
    timing: pd.DataFrame  # regime, threshold, flop_ratio, time_ratio, backbone_ms, early_exit_ms
    breakdown: pd.DataFrame  # part, flops, ms, flop_share, time_share (first seed's mixed network)
    histories: dict[tuple[int, str, float], pd.DataFrame] = field(repr=False)
    seconds: float = 0.0

    regimes = REGIMES

    def share_of(self, regime: str) -> float:
        """The phase-1 share of ``regime`` in the main comparison (joint has no phase 1)."""
        check_regime(regime)
        return 0.0 if regime == "joint" else self.budget.main_share

    @property
    def relative_costs(self) -> np.ndarray:
        """Each exit's cost as a fraction of the backbone's."""
        return np.asarray(self.costs, dtype=float) / self.backbone_flops

    def _key(self, regime: str, seed: int | None, share: float | None) -> tuple[int, str, float]:
        check_regime(regime)
        seed = self.seeds[0] if seed is None else seed
        check_choice("seed", seed, self.seeds)
        share = self.share_of(regime) if share is None else share
        if (seed, regime, share) not in self.logits:
            available = sorted({s for (_, r, s) in self.logits if r == regime})
            raise ValueError(f"share={share!r} is not allowed for {regime}; trained shares are {available}")
        return seed, regime, share

    def outcome(self, regime: str, threshold: float, *, seed=None, share=None, rule: str = "confidence"):
        """Where every test sample of one run exits at ``threshold``: a cheap lookup for the playground."""
        key = self._key(regime, seed, share)
        return evaluate_threshold(
            self.logits[key],
            self.labels[key[0]],
            self.costs,
            threshold,
            rule=rule,
            backbone_flops=self.backbone_flops,
        )

    def curve(self, regime: str, *, seed=None, share=None, rule: str = "confidence") -> pd.DataFrame:
        """The cost-accuracy curve of one run; the confidence curve is the stored one, others are recomputed."""
        key = self._key(regime, seed, share)
        if rule == "confidence":
            return self._curve_of(*key)
        return cost_accuracy_curve(
            self.logits[key], self.labels[key[0]], self.costs, rule=rule, backbone_flops=self.backbone_flops
        )

    def _curve_of(self, seed: int, regime: str, share: float) -> pd.DataFrame:
        chosen = (self.curves.seed == seed) & (self.curves.regime == regime) & (self.curves.share == share)
        return self.curves[chosen]

    def budget_grid(self, points: int = 101) -> np.ndarray:
        """Relative-cost budgets from 0 to just past the last exit's cost."""
        check_int("points", points, low=2)
        return np.linspace(0.0, float(self.relative_costs[-1]) * 1.001, points)

    def budget_bands(self, grid: np.ndarray) -> dict[str, np.ndarray]:
        """Accuracy within each budget of ``grid``, (seeds, len(grid)) per regime of the main comparison."""
        return {
            regime: np.stack([accuracy_within_budget(self.curve(regime, seed=seed), grid) for seed in self.seeds])
            for regime in self.regimes
        }

    def budget_table(self, fractions=BUDGET_FRACTIONS) -> pd.DataFrame:
        """The paper's table per seed and regime: accuracy at 25/50/75/100 % of the backbone's cost, AUC, and
        the last exit's own accuracy."""
        rows = []
        for seed in self.seeds:
            for regime in self.regimes:
                curve = self.curve(regime, seed=seed)
                key = self._key(regime, seed, None)
                last = float((self.logits[key][-1].argmax(-1) == self.labels[seed]).float().mean())
                rows.append(
                    dict(
                        seed=seed,
                        regime=regime,
                        **accuracy_at_budgets(curve, fractions),
                        auc=area_under_curve(curve),
                        last_exit=last,
                    )
                )
        return pd.DataFrame(rows)

    def budget_summary(self, fractions=BUDGET_FRACTIONS) -> pd.DataFrame:
        """Mean ± standard deviation over seeds of :meth:`budget_table`, one row per regime."""
        table = self.budget_table(fractions).drop(columns="seed")
        grouped = table.groupby("regime", sort=False)
        return grouped.mean().round(3).astype(str) + " ± " + grouped.std(ddof=0).round(3).astype(str)

    def sweep_table(self) -> pd.DataFrame:
        """Area under the cost-accuracy curve per seed, sweep regime and phase-1 share."""
        rows = [
            dict(seed=seed, regime=regime, share=share, auc=area_under_curve(self._curve_of(seed, regime, share)))
            for seed in self.seeds
            for regime in SWEEP_REGIMES
            for share in self.budget.shares
        ]
        return pd.DataFrame(rows)

    def sweep_bands(self) -> dict[str, np.ndarray]:
        """The sweep's AUC as (seeds, shares) per regime, for a band plot."""
        table = self.sweep_table().pivot_table(index=["regime", "seed"], columns="share", values="auc")
        return {regime: table.loc[regime].to_numpy() for regime in SWEEP_REGIMES}

    def exit_accuracy_bands(self) -> dict[str, np.ndarray]:
        """Each exit's own accuracy as (seeds, exits) per regime of the main comparison."""
        bands = {}
        for regime in self.regimes:
            rows = []
            for seed in self.seeds:
                logits = self.logits[self._key(regime, seed, None)]
                rows.append((logits.argmax(-1) == self.labels[seed]).float().mean(1).numpy())
            bands[regime] = np.stack(rows)
        return bands

    def rank_bands(self, column: str = "rank_fraction") -> dict[str, np.ndarray]:
        """``column`` of :attr:`ranks` as (seeds, stages) per regime, for a band plot."""
        check_choice("column", column, ("rank", "dimension", "rank_fraction"))
        table = self.ranks.pivot_table(index=["regime", "seed"], columns="stage", values=column)
        return {regime: table.loc[regime].to_numpy() for regime in self.regimes}

    def rank_sample_count(self) -> int:
        """How many training images the ranks were measured on (fewer when the split is smaller)."""
        return min(self.budget.rank_samples, int(self.ranks.attrs.get("train_size", self.budget.rank_samples)))

    def cost_table(self) -> pd.DataFrame:
        """Which block each exit reads, and what reaching it costs."""
        network = self.networks["mixed"]
        return pd.DataFrame(
            {
                "reads block": [stage + 1 for stage in network.exit_stages()],
                "FLOPs to reach it": self.costs,
                "% of the backbone": np.round(100 * self.relative_costs, 1),
            },
            index=[f"exit {h + 1}" for h in range(network.num_exits)],
        )

    def summary(self) -> dict:
        """The headline numbers, per seed (plain JSON values): the single source of the findings and tables."""
        table = self.budget_table()
        columns = [f"{round(100 * f)}%" for f in BUDGET_FRACTIONS] + ["auc", "last_exit"]
        main = {
            regime: {c: [_plain(v) for v in rows[c]] for c in columns}
            for regime, rows in table.groupby("regime", sort=False)
        }
        sweep = self.sweep_table()
        sweep_auc = {
            regime: {f"{share:g}": rows[rows.share == share].auc.round(4).tolist() for share in self.budget.shares}
            for regime, rows in sweep.groupby("regime", sort=False)
        }
        stopping = self.stopping
        dimensions = self.ranks.groupby("stage").dimension.first().tolist()
        return {
            "dataset": self.budget.dataset,
            "seeds": list(self.seeds),
            "total_steps": self.budget.total_steps,
            "main_share": self.budget.main_share,
            "shares": list(self.budget.shares),
            "main": main,
            "sweep_auc": sweep_auc,
            "relative_exit_costs": self.relative_costs.round(4).tolist(),
            "disjoint_heads": {
                "stopped_early": int((stopping.stopped_at < stopping.allowed).sum()),
                "heads": len(stopping),
                "mean_best_step_fraction": round(float((stopping.best_step / stopping.allowed).mean()), 3),
            },
            "rank_fraction": {
                regime: np.round(values.mean(0), 3).tolist() for regime, values in self.rank_bands().items()
            },
            "rank_samples": self.rank_sample_count(),
            "block_dimensions": dimensions,
            "timing": self.timing.round(4).to_dict(orient="records"),
            "seconds": round(self.seconds, 1),
        }


def _plain(value) -> float | None:
    value = float(value)
    return None if not np.isfinite(value) else round(value, 4)


# ---------------------------------------------------------------------------------------------------------------
# The whole experiment


def run_experiment(run: Run, budget: EarlyExitBudget, *, progress: bool | None = None) -> EarlyExitResult:
    """Train every regime and sweep point for ``budget.seeds`` seeds, score them, and time real early exits."""
    check_budget(budget)
    seeds = seeds_for(run.seed, budget.seeds)
    device = run.device
    with Timer() as clock:
        runs, phase1_steps = train_all(budget, seeds, device.type, progress=progress)
        first = seeds[0]
        any_run = runs[(first, "joint", 0.0)]
        costs, backbone_flops = any_run.costs, any_run.backbone_flops
        data = load_study_data(budget, first)
        main_keys = {regime: (regime, 0.0 if regime == "joint" else budget.main_share) for regime in REGIMES}
        networks = {}
        for regime, key in main_keys.items():
            network = make_network(budget, first, device)
            network.load_state_dict(runs[(first, *key)].state)
            networks[regime] = network.eval()
        test_inputs = data.test.x.to(device).contiguous(memory_format=torch.channels_last)
        with torch_threads(1):
            timing = []
            for regime in TIMED_REGIMES:
                for threshold in budget.timing_thresholds:
                    measured = measure_speedup(
                        networks[regime], test_inputs, threshold, costs=costs, repeats=budget.timing_repeats
                    )
                    timing.append(dict(regime=regime, **measured))
            breakdown = time_breakdown(networks["mixed"], test_inputs, repeats=budget.timing_repeats)
    curves, ranks, steps, stopping = [], [], [], []
    for (seed, regime, share), trained in runs.items():
        curves.append(trained.curve.assign(seed=seed, regime=regime, share=share))
        later = trained.history[trained.history.phase != 1] if len(trained.history) else trained.history
        steps.append(
            dict(
                seed=seed,
                regime=regime,
                share=share,
                phase1_steps=phase1_steps.get((seed, trained.share), 0) + int((trained.history.phase == 1).sum()),
                later_steps=len(later),
            )
        )
        if trained.ranks is not None and (regime, share) == main_keys[regime]:
            ranks.append(trained.ranks.assign(seed=seed, regime=regime))
        if regime == "disjoint" and trained.stopping is not None:
            allowed = budget.schedule(share).exit_steps
            values = zip(*(trained.stopping[k] for k in ("best_step", "stopped_at", "best_accuracy")), strict=True)
            for head, (best, stop, accuracy) in enumerate(values, start=1):
                stopping.append(
                    dict(
                        seed=seed,
                        share=share,
                        head=head,
                        best_step=best,
                        stopped_at=stop,
                        allowed=allowed,
                        best_accuracy=accuracy,
                    )
                )
    ranks_table = pd.concat(ranks, ignore_index=True)
    ranks_table.attrs["train_size"] = len(data.train)
    return EarlyExitResult(
        budget=budget,
        seeds=seeds,
        costs=costs,
        backbone_flops=backbone_flops,
        logits={key: trained.logits for key, trained in runs.items()},
        labels={seed: runs[(seed, "joint", 0.0)].labels for seed in seeds},
        images={seed: _test_images(budget, seed) for seed in seeds},
        test_inputs=test_inputs,
        networks=networks,
        curves=pd.concat(curves, ignore_index=True),
        ranks=ranks_table,
        steps=pd.DataFrame(steps),
        stopping=pd.DataFrame(stopping),
        timing=pd.DataFrame(timing),
        breakdown=breakdown,
        histories={key: trained.history for key, trained in runs.items()},
        seconds=clock.seconds,
    )


def _test_images(budget: EarlyExitBudget, seed: int) -> Tensor:
    data = load_study_data(budget, seed)
    return (data.test.x * data.std + data.mean).clamp(0, 1)


def example_indices(exits: Tensor, per_exit: int, num_exits: int) -> list[list[int]]:
    """Up to ``per_exit`` sample indices leaving at each exit (the first ones in test order)."""
    check_int("per_exit", per_exit, low=1)
    check_int("num_exits", num_exits, low=1)
    if not isinstance(exits, Tensor) or exits.ndim != 1:
        raise ValueError(f"exits={exits!r} is not allowed; expected a 1-D tensor of exit indices")
    return [torch.nonzero(exits == h).flatten()[:per_exit].tolist() for h in range(num_exits)]


# ---------------------------------------------------------------------------------------------------------------
# The paper beside this run


def _differences(summary: dict, first: str, second: str, column: str) -> np.ndarray:
    """first - second, seed by seed, on one column of the main comparison (NaN where a budget had no point)."""
    main = summary["main"]
    a = np.asarray([np.nan if v is None else v for v in main[first][column]], dtype=float)
    b = np.asarray([np.nan if v is None else v for v in main[second][column]], dtype=float)
    return a - b


def _outcome(differences: np.ndarray) -> str:
    """'agrees' when the first was ahead on every seed, 'disagrees' when behind on every seed, else 'mixed'."""
    finite = differences[np.isfinite(differences)]
    if finite.size == 0:
        return "undecided"
    if (finite > 0).all():
        return "agrees"
    if (finite < 0).all():
        return "disagrees"
    return "mixed"


def _versus(differences: np.ndarray, first: str) -> str:
    finite = differences[np.isfinite(differences)]
    if finite.size == 0:
        return "n/a (no operating point fits this budget)"
    return f"{spread(finite)} ({first} ahead on {int((finite > 0).sum())}/{finite.size} seeds)"


def _sweep_best(summary: dict, regime: str) -> tuple[float, float, np.ndarray]:
    """The share with the highest mean AUC; the best share strictly inside (0, 1) and, seed by seed, its AUC
    minus the AUC at a share of 0 (for mixed: minus joint)."""
    sweep = summary["sweep_auc"][regime]
    means = {float(share): float(np.mean(values)) for share, values in sweep.items()}
    best = max(means, key=means.get)
    inner = [share for share in means if 0 < share < 1]
    best_inner = max(inner, key=means.get) if inner else best
    gains = np.asarray(sweep[f"{best_inner:g}"], dtype=float) - np.asarray(sweep["0"], dtype=float)
    return best, best_inner, gains


def _timing_row(summary: dict, regime: str = "mixed", threshold: float = 0.9) -> dict | None:
    rows = [r for r in summary["timing"] if r["regime"] == regime and abs(r["threshold"] - threshold) < 1e-9]
    return rows[0] if rows else None


def _claims(summary: dict | None) -> dict[str, str]:
    if summary is None:
        return {}
    claims = {
        "mixed - disjoint, accuracy at 25% cost": _versus(
            _differences(summary, "mixed", "disjoint", "25%"), "mixed"
        ),
        "mixed - disjoint, area under the curve": _versus(
            _differences(summary, "mixed", "disjoint", "auc"), "mixed"
        ),
        "mixed - joint, area under the curve": _versus(_differences(summary, "mixed", "joint", "auc"), "mixed"),
        "joint - disjoint, last exit": _versus(_differences(summary, "joint", "disjoint", "last_exit"), "joint"),
        "mixed - mixed_low_lr, last exit": _versus(
            _differences(summary, "mixed", "mixed_low_lr", "last_exit"), "mixed"
        ),
    }
    best, inner, gains = _sweep_best(summary, "mixed")
    claims["phase-1 share with the best mixed AUC"] = (
        f"{100 * best:.0f}% (best inner share {100 * inner:.0f}% minus joint: {spread(gains)})"
    )
    timing = _timing_row(summary)
    if timing is not None:
        claims["real exits (mixed, t=0.9): FLOPs vs time"] = (
            f"FLOPs {100 * timing['flop_ratio']:.0f}% of the backbone, time {100 * timing['time_ratio']:.0f}%"
        )
    return claims


PAPER_CLAIMS = {
    "mixed - disjoint, accuracy at 25% cost": ("mixed higher (abstract)", ""),
    "mixed - disjoint, area under the curve": ("mixed higher (abstract)", ""),
    "mixed - joint, area under the curve": (
        "mixed higher (abstract)",
        "our CNN has no normalisation or residuals: extra heads help it train",
    ),
    "joint - disjoint, last exit": (
        "joint can be lower (public summary, unverified)",
        "disjoint's last exit is exactly its phase-1 backbone",
    ),
    "mixed - mixed_low_lr, last exit": ("n/a (mixed_low_lr is the course's variant)", "both train phase 2 alike"),
    "phase-1 share with the best mixed AUC": (
        "swept 0-100 % in the authors' ResNet-50 scripts (numbers not verified)",
        "0 % is joint; at 100 % no head trains",
    ),
    "real exits (mixed, t=0.9): FLOPs vs time": ("n/a (the paper reports FLOPs)", "tiny CNN on a CPU"),
}


def paper_rows(summary: dict, committed: dict | None = None) -> pd.DataFrame:
    """The paper's claim beside this run (and the committed full-mode run, when there is one)."""
    ours, full = _claims(summary), _claims(committed)
    rows = [
        dict(quantity=q, paper=PAPER_CLAIMS[q][0], this_run=value, full_run=full.get(q), note=PAPER_CLAIMS[q][1])
        for q, value in ours.items()
    ]
    return paper_table(rows, full_run_on=committed_device(NAME))


def findings(summary: dict) -> str:
    """What this run found, in Markdown sentences computed from ``summary``: one phrasing per outcome."""
    seeds = len(summary["seeds"])
    verdict = {
        "agrees": "on every seed, as the paper says",
        "disagrees": "on no seed: this run disagrees with the paper",
        "mixed": "on some seeds and not on others, so this run does not settle it",
        "undecided": "on no seed, because no operating point fitted that budget",
    }
    lines = []
    low = _differences(summary, "mixed", "disjoint", "25%")
    auc = _differences(summary, "mixed", "disjoint", "auc")
    lines.append(
        f"- **Mixed vs disjoint** (the paper: mixed is better at low budgets). At 25 % of the backbone's cost, "
        f"mixed minus disjoint is {_versus(low, 'mixed')}: mixed was ahead {verdict[_outcome(low)]}. Over the "
        f"whole curve (area under it) the difference is {_versus(auc, 'mixed')}."
    )
    joint = _differences(summary, "mixed", "joint", "auc")
    lines.append(
        f"- **Mixed vs joint** (the paper: mixed is better). Area under the curve, mixed minus joint: "
        f"{_versus(joint, 'mixed')}; mixed was ahead {verdict[_outcome(joint)]}."
    )
    last = _differences(summary, "joint", "disjoint", "last_exit")
    outcome = _outcome(-last)  # the claim is that joint's last exit is lower
    phrasing = {
        "agrees": "lower than disjoint's on every seed, as the paper's summary says joint can be",
        "disagrees": "higher than disjoint's on every seed, against the paper's summary",
        "mixed": "higher on some seeds and lower on others",
        "undecided": "not comparable",
    }
    lines.append(
        f"- **The last exit.** Joint's last exit minus disjoint's (which is the phase-1 backbone itself): "
        f"{_versus(last, 'joint')}, i.e. {phrasing[outcome]}."
    )
    low_lr = _differences(summary, "mixed", "mixed_low_lr", "last_exit")
    low_auc = _differences(summary, "mixed", "mixed_low_lr", "auc")
    helped = {
        "agrees": "the authors' version (phase-1 rate) was ahead on every seed, so the lower rate did not help",
        "disagrees": "the course's lower rate was ahead on every seed",
        "mixed": "neither was ahead on every seed",
        "undecided": "they could not be compared",
    }
    lines.append(
        f"- **Mixed's phase-2 learning rate** (a course question, not a paper claim). Mixed as the authors run it "
        f"minus mixed_low_lr: last exit {_versus(low_lr, 'mixed')}, area under the curve "
        f"{_versus(low_auc, 'mixed')}; on the last exit {helped[_outcome(low_lr)]}."
    )
    best, inner, gains = _sweep_best(summary, "mixed")
    gain_outcome = _outcome(gains)
    against_joint = {
        "agrees": "beat joint on every seed, the paper's reason for a phase 1",
        "disagrees": "trailed joint on every seed",
        "mixed": "beat joint on some seeds only",
        "undecided": "could not be compared with joint",
    }[gain_outcome]
    if 0 < best < 1:
        where = f"{100 * best:.0f} %, strictly between joint (0 %) and no phase 2 (100 %), as the paper proposes"
    elif best == 0:
        where = "0 %, i.e. joint, against the paper's proposal"
    else:
        where = "100 %, i.e. heads that never train, against the paper's proposal"
    lines.append(
        f"- **Phase-1 share** (the authors sweep it). The best mean area under the curve for mixed came at "
        f"{where}. The best share inside the range, {100 * inner:.0f} %, {against_joint} (its AUC minus "
        f"joint's: {spread(gains)})."
    )
    stop = summary["disjoint_heads"]
    lines.append(
        f"- **Disjoint's early stopping.** {stop['stopped_early']} of {stop['heads']} heads stopped before their "
        f"step budget ran out; on average a head's best check came {100 * stop['mean_best_step_fraction']:.0f} % "
        f"of the way through its budget."
    )
    timing = _timing_row(summary)
    if timing is not None:
        saving = 1 - timing["time_ratio"]
        lines.append(
            f"- **Real early exits** (mixed, t = 0.9): {100 * timing['flop_ratio']:.0f} % of the backbone's FLOPs "
            f"took {100 * timing['time_ratio']:.0f} % of its time, "
            + (f"saving {100 * saving:.0f} % of the time." if saving > 0 else "no saving at all on this machine.")
        )
    dims, samples = summary["block_dimensions"], summary["rank_samples"]
    capped = [i + 1 for i, d in enumerate(dims) if d >= samples]
    rank_note = (
        f"the ranks were measured on {samples} training images, more than any block's dimension (largest "
        f"{max(dims)}), so no rank is capped by the sample count"
        if not capped
        else f"the ranks were measured on {samples} images, fewer than the dimension of block(s) {capped}, whose "
        f"ranks the sample count caps"
    )
    lines.append(f"- **Numerical rank:** {rank_note}.")
    header = (
        f"**This run** ({summary['dataset']}, {seeds} seeds, {summary['total_steps']} steps per regime, "
        f"phase 1 at {100 * summary['main_share']:.0f} % in the main comparison):"
    )
    return "\n".join([header, "", *lines])
