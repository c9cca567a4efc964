"""The experiment of notebook 01: every schedule, with and without patience, across ratios and seeds.

For each seed we split the digits, train one dense CNN (the baseline), and prune copies of it along every schedule
of :mod:`efflab.pruning.pruners` at each ratio of the grid, under one matched fine-tuning budget. Then three
studies that the paper's claims need:

* **patience** is a fine-tuning rule, not a schedule: selected schedules are run again with patience, and each
  patience run gets an *equal-compute twin*, the same schedule with a fixed budget of exactly the epochs the
  patience run used, split evenly over its steps. Patience is then judged at the epochs it really spent;
* **the budget study**: at one high ratio, one-shot and geometric with several total budgets (accuracy against
  epochs spent, as the authors' ``budget_comparison.py`` plots it);
* **the damage alone**: accuracy right after masking, with no fine-tuning, per criterion.

Every independent run (a seed's dense training, every pruning run) is a task of :func:`efflab.parallel.run_all`:
a frozen dataclass carrying its seed, its configuration, the dense state dict it starts from and the device it
trains on, so the result is the same on every backend. Seeds change both the data split and the initialisation,
so the spread between them is the honest noise of the whole pipeline.

Where things run: every training, pruning run and scoring runs on the run's device, with the model, the batches
and the three splits all there. In full mode on a GPU machine that is CUDA, where an optimiser step of the
full-mode CNN takes well under a millisecond against about 17 ms on a CPU core. What a task returns is on the
CPU; the latency of the structured models is measured there, one thread, on purpose (:func:`structured_costs`).

The contract (see :mod:`efflab.experiment`): :class:`PruningBudget` (``quick()``, ``full()``),
:func:`run_experiment` returns a :class:`PruningResult` whose :meth:`~PruningResult.summary` holds every headline
number; :func:`paper_rows` and :func:`findings` read only that summary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from efflab.data.digits import SPLIT_NAMES, Digits, Split, infinite_batches, load_digits
from efflab.experiment import Budget, committed_device, paper_table, seeds_for, spread
from efflab.finetune import FinetuneBudget
from efflab.flops import count_parameters, module_forward_flops
from efflab.models.cnn import CNN, CNNConfig
from efflab.parallel import gpu_share_for, run_all
from efflab.pruning.pruners import (
    CRITERIA,
    GRANULARITIES,
    REGIMES,
    UNSTRUCTURED_CRITERIA,
    accuracy_without_finetuning,
    check_patience,
    check_ratio,
    compare_latency,
    curve_name,
    make_schedule,
    prune_and_finetune,
)
from efflab.runtime import Run, Timer, seed_everything, torch_threads
from efflab.train import TrainConfig, classification_metrics, fit, run_evaluation
from efflab.validation import check_choice, check_int, check_positive, check_seed

NAME = "01_pruning_one_shot_vs_iterative"
ALL_CRITERIA = tuple(CRITERIA.items())
MAIN_CRITERIA = (("unstructured", "global-magnitude"), ("structured", "l2"))
ITERATIVE = ("constant", "geometric", "hybrid")
KEYS = ["seed", "granularity", "criterion", "curve"]


@dataclass(frozen=True)
class PruningBudget(Budget):
    """What one run of the experiment covers, and how much compute each part gets.

    ``main_criteria`` (one per granularity) run every schedule of ``regimes``; the other criteria of ``criteria``
    run only ``side_regimes``. ``patience_regimes`` are also run with each of ``patiences`` (main unstructured
    criterion, at ``patience_ratios``), each beside its equal-compute twin.
    """

    widths: tuple[int, ...]
    hidden: int
    dense_epochs: int
    dense_lr: float
    seeds: int
    unstructured_ratios: tuple[float, ...]
    structured_ratios: tuple[float, ...]
    regimes: tuple[str, ...]
    steps: int
    hybrid_start: float
    patiences: tuple[int, ...]
    patience_regimes: tuple[str, ...]
    patience_ratios: tuple[float, ...]
    finetune: FinetuneBudget
    criteria: tuple[tuple[str, tuple[str, ...]], ...]
    main_criteria: tuple[tuple[str, str], ...]
    side_regimes: tuple[str, ...]
    budget_ratio: float
    budget_epochs: tuple[float, ...]
    budget_regimes: tuple[str, ...]
    latency_batch: int = 512
    latency_repeats: int = 15

    def __post_init__(self):
        CNNConfig(widths=self.widths, hidden=self.hidden)  # validates the architecture
        check_int("hidden", self.hidden, low=1)
        check_int("dense_epochs", self.dense_epochs, low=1)
        check_positive("dense_lr", self.dense_lr)
        check_int("seeds", self.seeds, low=1)
        check_int("steps", self.steps, low=2)
        check_ratio("hybrid_start", self.hybrid_start)
        for name in ("unstructured_ratios", "structured_ratios", "patience_ratios"):
            ratios = getattr(self, name)
            if not ratios or list(ratios) != sorted(set(ratios)):
                raise ValueError(f"{name}={ratios!r} is not allowed; expected increasing, distinct ratios")
            for ratio in ratios:
                check_ratio(name, ratio)
        for ratio in self.patience_ratios:
            check_choice("patience_ratios", ratio, self.unstructured_ratios)
        for name in ("regimes", "side_regimes", "patience_regimes", "budget_regimes"):
            for regime in getattr(self, name):
                check_choice(name, regime, REGIMES)
        if "one-shot" not in self.regimes or "geometric" not in self.regimes:
            raise ValueError(f"regimes={self.regimes!r} is not allowed; one-shot and geometric are compared")
        for patience in self.patiences:
            check_patience(patience, "patiences")
        check_ratio("budget_ratio", self.budget_ratio)
        check_choice("budget_ratio", self.budget_ratio, self.unstructured_ratios)
        for name in ("budget_epochs", "budget_regimes"):
            if not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; the budget study needs some")
        for epochs in self.budget_epochs:
            check_positive("budget_epochs", epochs)
        if not isinstance(self.finetune, FinetuneBudget):
            raise ValueError(f"finetune={self.finetune!r} is not allowed; expected a FinetuneBudget")
        for granularity, criteria in self.criteria:
            check_choice("granularity", granularity, GRANULARITIES)
            for criterion in criteria:
                check_choice("criterion", criterion, CRITERIA[granularity])
        for granularity, criterion in self.main_criteria:
            check_choice("main_criteria", criterion, dict(self.criteria).get(granularity, ()))
        granularities = [granularity for granularity, _ in self.main_criteria]
        if "unstructured" not in granularities or len(granularities) != len(set(granularities)):
            raise ValueError(
                f"main_criteria={self.main_criteria!r} is not allowed; expected one criterion per granularity, "
                "an unstructured one among them (patience and the budget study use it)"
            )
        check_int("latency_batch", self.latency_batch, low=1)
        check_int("latency_repeats", self.latency_repeats, low=1)

    @classmethod
    def quick(cls) -> PruningBudget:
        """A 16-32 channel CNN on the 8x8 digits, 3 seeds, 4 epochs of fine-tuning per run (batches of 64);
        patience 2 on one-shot, constant and geometric at the budget study's ratio, where the fixed-budget lines
        it is judged against were run. About 140 trainings, two at a time: the patience runs and their twins
        spend several times a fixed run's epochs, so they get one ratio here and four in full mode. The
        unstructured grid keeps one low ratio (0.5, where the paper has one-shot ahead) and the high ones where
        the schedules part; full mode fills in between."""
        return cls(
            widths=(16, 32),
            hidden=64,
            dense_epochs=15,
            dense_lr=3e-3,
            seeds=3,
            unstructured_ratios=(0.5, 0.9, 0.95, 0.98),
            structured_ratios=(0.3, 0.5, 0.7, 0.9),
            regimes=REGIMES,
            steps=5,
            hybrid_start=0.7,
            patiences=(2,),
            patience_regimes=("one-shot", "constant", "geometric"),
            patience_ratios=(0.95,),
            finetune=FinetuneBudget(epochs=4, batch_size=64, lr=1e-3, max_epochs_per_step=8),
            criteria=ALL_CRITERIA,
            main_criteria=MAIN_CRITERIA,
            side_regimes=("one-shot",),
            budget_ratio=0.95,
            budget_epochs=(2, 4, 8),
            budget_regimes=("one-shot", "geometric"),
            latency_batch=512,
            latency_repeats=21,
        )

    @classmethod
    def full(cls) -> PruningBudget:
        """For a GPU machine, where every run trains on the GPU, several side by side: a deeper, wider CNN (about
        226k parameters), 4 seeds, a grid reaching 0.99, five times quick mode's fine-tuning epochs (20 against
        4, in batches of 256), patience {3, 10} on every schedule at four ratios."""
        return cls(
            widths=(32, 64, 128),
            hidden=256,
            dense_epochs=40,
            dense_lr=2e-3,
            seeds=4,
            unstructured_ratios=(0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.98, 0.99),
            structured_ratios=(0.3, 0.5, 0.7, 0.8, 0.9),
            regimes=REGIMES,
            steps=5,
            hybrid_start=0.7,
            patiences=(3, 10),
            patience_regimes=REGIMES,
            patience_ratios=(0.8, 0.9, 0.95, 0.99),
            finetune=FinetuneBudget(epochs=20, batch_size=256, lr=1e-3, max_epochs_per_step=40),
            criteria=ALL_CRITERIA,
            main_criteria=MAIN_CRITERIA,
            side_regimes=("one-shot", "geometric"),
            budget_ratio=0.95,
            budget_epochs=(5, 10, 20, 40, 80),
            budget_regimes=("one-shot", "geometric"),
            latency_batch=1024,
            latency_repeats=31,
        )

    def model_config(self) -> CNNConfig:
        return CNNConfig(widths=self.widths, hidden=self.hidden, image_size=8)

    def ratios(self, granularity: str) -> tuple[float, ...]:
        check_choice("granularity", granularity, GRANULARITIES)
        return self.unstructured_ratios if granularity == "unstructured" else self.structured_ratios

    def configurations(self) -> list[dict]:
        """Every fixed-budget (granularity, criterion, regime, ratio) the sweep prunes, for each seed."""
        main = dict(self.main_criteria)
        configs = []
        for granularity, criteria in self.criteria:
            for criterion in criteria:
                regimes = self.regimes if criterion == main.get(granularity) else self.side_regimes
                for regime in regimes:
                    for ratio in self.ratios(granularity):
                        configs.append(
                            dict(granularity=granularity, criterion=criterion, regime=regime, ratio=ratio)
                        )
        return configs

    def patience_configurations(self) -> list[dict]:
        """Every (regime, patience, ratio) run with patience, on the main unstructured criterion."""
        criterion = dict(self.main_criteria)["unstructured"]
        return [
            dict(granularity="unstructured", criterion=criterion, regime=regime, ratio=ratio, patience=patience)
            for regime in self.patience_regimes
            for patience in self.patiences
            for ratio in self.patience_ratios
        ]


# --------------------------------------------------------------------------------------------------------------
# Tasks for run_all: picklable, each seeds itself
# --------------------------------------------------------------------------------------------------------------


def _state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _model_from(config: CNNConfig, state: dict, device: str = "cpu") -> CNN:
    model = CNN(config)
    model.load_state_dict(state)
    return model.to(device)


def load_digits_on(seed: int, device: str) -> Digits:
    """The digits split by ``seed`` (:func:`efflab.data.digits.load_digits`), every image and label on ``device``:
    batches are then cut where the model is, and every scoring reads tensors already in place. On the CPU these
    are the very tensors ``load_digits`` returns."""
    data = load_digits(seed)
    splits = {name: getattr(data, name) for name in SPLIT_NAMES}
    return replace(data, **{name: Split(x=s.x.to(device), y=s.y.to(device)) for name, s in splits.items()})


def check_device(device) -> None:
    """A task's device is the name of a torch device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``."""
    if isinstance(device, str):
        try:
            torch.device(device)
            return
        except RuntimeError:
            pass
    raise ValueError(f"device={device!r} is not allowed; expected a torch device such as 'cpu' or 'cuda'")


@dataclass(frozen=True)
class DenseTask:
    """Train the dense baseline of one seed (the data split comes from the same seed) on ``device``."""

    seed: int
    model: CNNConfig
    epochs: int
    lr: float
    batch_size: int
    device: str = "cpu"

    def __post_init__(self):
        check_seed(self.seed)
        _check_model(self.model)
        check_int("epochs", self.epochs, low=1)
        check_positive("lr", self.lr)
        check_int("batch_size", self.batch_size, low=1)
        check_device(self.device)


def _check_model(model) -> None:
    if not isinstance(model, CNNConfig):
        raise ValueError(f"model={model!r} is not allowed; expected a CNNConfig")


def train_dense(task: DenseTask) -> dict:
    """The dense model's state dict (on the CPU) and its test accuracy, parameters and FLOPs.

    The weights are drawn on the CPU, so a seed starts from the same network on every device."""
    seed_everything(task.seed)
    data = load_digits_on(task.seed, task.device)
    model = CNN(task.model).to(task.device)
    batch_size = min(task.batch_size, len(data.train))
    steps = task.epochs * max(1, len(data.train) // batch_size)
    config = TrainConfig(steps=steps, lr=task.lr, warmup_steps=min(20, steps), weight_decay=1e-4)
    with Timer() as timer:
        fit(model, infinite_batches(data.train, batch_size, seed=task.seed), config, progress=False)
    test = run_evaluation(model, lambda m: classification_metrics(m, data.test.x, data.test.y, prefix="test"))
    row = {
        "seed": task.seed,
        "test_accuracy": test["test_accuracy"],
        "parameters": count_parameters(model),
        "flops": module_forward_flops(model, data.train.x[:1]),
        "train_seconds": timer.seconds,
    }
    return {"state": _state(model), "row": row}


@dataclass(frozen=True)
class PruneTask:
    """One pruning run: a configuration for one seed, starting from that seed's dense state dict.

    ``kind`` is ``"main"`` (the matched budget), ``"budget"`` (the budget study, with its own ``epochs``) or
    ``"patience"`` (a patience run, followed in the same task by its equal-compute twin). The run trains on
    ``device``; what it returns is on the CPU.
    """

    seed: int
    granularity: str
    criterion: str
    regime: str
    ratio: float
    kind: str
    epochs: float
    patience: int | None
    steps: int
    hybrid_start: float
    finetune: FinetuneBudget
    model: CNNConfig
    dense_state: dict = field(repr=False, compare=False)
    keep_model: bool = False
    device: str = "cpu"

    def __post_init__(self):
        check_seed(self.seed)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("criterion", self.criterion, CRITERIA[self.granularity])
        check_choice("regime", self.regime, REGIMES)
        check_ratio("ratio", self.ratio)
        check_choice("kind", self.kind, ("main", "budget", "patience"))
        check_positive("epochs", self.epochs)
        if (self.patience is None) == (self.kind == "patience"):
            raise ValueError(
                f"patience={self.patience!r} is not allowed for kind={self.kind!r}; patience runs "
                "(and only they) set it"
            )
        if self.patience is not None:
            check_patience(self.patience)
        check_int("steps", self.steps, low=2)
        check_ratio("hybrid_start", self.hybrid_start)
        if not isinstance(self.finetune, FinetuneBudget):
            raise ValueError(f"finetune={self.finetune!r} is not allowed; expected a FinetuneBudget")
        _check_model(self.model)
        check_device(self.device)

    @property
    def cost(self) -> float:
        """A rough relative cost, to start the longest tasks first."""
        return (3 * self.steps * self.finetune.max_epochs_per_step) if self.kind == "patience" else self.epochs


def _key(task: PruneTask, patience: int | None) -> dict:
    return {
        "seed": task.seed,
        "granularity": task.granularity,
        "criterion": task.criterion,
        "curve": curve_name(task.regime, patience),
        "regime": task.regime,
        "patience": patience,
        "ratio": task.ratio,
    }


def _row(key: dict, run) -> dict:
    return {
        **key,
        "test_accuracy": run.test_accuracy,
        "val_accuracy": run.val_accuracy,
        "epochs": run.epochs,
        "parameters": run.parameters,
        "nonzero_parameters": run.nonzero_parameters,
        "flops": run.flops,
        "pruning_steps": run.schedule.steps,
    }


def _prune(task: PruneTask, data: Digits, *, epochs: float, patience: int | None, on_epoch=None):
    """One pruning run on ``task.device`` (where ``data`` must be too); the pruned model comes back on the CPU."""
    schedule = make_schedule(task.regime, task.ratio, steps=task.steps, hybrid_start=task.hybrid_start)
    run = prune_and_finetune(
        _model_from(task.model, task.dense_state, task.device),
        data,
        schedule,
        granularity=task.granularity,
        criterion=task.criterion,
        budget=replace(task.finetune, epochs=epochs),
        patience=patience,
        seed=task.seed,
        on_epoch=on_epoch,
    )
    run.model = run.model.cpu()
    return run


def prune_one(task: PruneTask) -> dict:
    """Run one task; return its table rows (and the pruned model when the task keeps it)."""
    seed_everything(task.seed)
    data = load_digits_on(task.seed, task.device)
    run = _prune(task, data, epochs=task.epochs, patience=task.patience)
    key = _key(task, task.patience)
    out = {
        "kind": task.kind,
        "row": _row(key, run),
        "steps": [{**key, **r} for r in run.steps.to_dict("records")],
        "layers": [{**key, **r} for r in run.layers.to_dict("records")],
        "model": run.model if task.keep_model else None,
    }
    if task.kind == "budget":
        out["row"]["budget"] = task.epochs
    if task.kind == "patience":
        # The twin: the same schedule with a fixed budget of exactly the optimiser steps the patience run used.
        twin = _prune(task, data, epochs=run.epochs, patience=None)
        out["row"].update(
            twin_test_accuracy=twin.test_accuracy,
            twin_epochs=twin.epochs,
            capped_phases=int((run.steps.phase_epochs >= task.finetune.max_epochs_per_step - 1e-9).sum()),
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PruningResult:
    """Everything the notebook shows.

    * ``runs``: one row per fixed-budget pruned model (seed, granularity, criterion, curve, regime, ratio, test
      and validation accuracy, epochs spent, parameters, nonzero parameters, FLOPs, pruning steps);
    * ``patience``: one row per patience run, with its equal-compute twin's accuracy and the phases that hit
      the per-step cap;
    * ``steps``: one row per pruning step of every run (fixed and patience); ``layers``: final per-layer sparsity;
    * ``budget``: the budget study at ``budget.budget_ratio`` (its own runs and the main runs there);
    * ``damage``: accuracy without fine-tuning per criterion and ratio (first seed);
    * ``dense``: the baseline of every seed; ``costs``: parameters, FLOPs and latency of the structured models;
    * ``device``: where the runs trained (a live re-run trains there too).
    """

    budget: PruningBudget
    seeds: tuple[int, ...]
    runs: pd.DataFrame
    patience: pd.DataFrame
    steps: pd.DataFrame
    layers: pd.DataFrame
    budget_study: pd.DataFrame
    damage: pd.DataFrame
    dense: pd.DataFrame
    costs: pd.DataFrame
    dense_states: dict = field(repr=False)
    structured_models: dict = field(repr=False)
    seconds: float = 0.0
    device: str = "cpu"

    def dense_model(self, seed: int) -> CNN:
        if seed not in self.dense_states:
            raise ValueError(f"seed={seed!r} is not allowed; expected one of {tuple(self.dense_states)}")
        return _model_from(self.budget.model_config(), self.dense_states[seed])

    def rerun(
        self,
        *,
        seed: int,
        granularity: str,
        criterion: str,
        regime: str,
        ratio: float,
        patience: int | None = None,
        on_epoch: Callable[[float], None] | None = None,
    ):
        """Prune the dense model of ``seed`` along one configuration, live (for the playground's button).

        The same function, device, thread count and seeding as the sweep's tasks, so the same seed gives the same
        numbers. The returned run's model is on the CPU.
        """
        self.dense_model(seed)  # checks the seed
        check_choice("granularity", granularity, GRANULARITIES)
        check_choice("criterion", criterion, CRITERIA[granularity])
        check_choice("regime", regime, REGIMES)
        check_ratio("ratio", ratio)
        if patience is not None:
            check_patience(patience)
        task = self._task(seed, dict(granularity=granularity, criterion=criterion, regime=regime, ratio=ratio))
        with torch_threads(1):  # as every task runs: one thread, seeded from the task
            seed_everything(task.seed)
            data = load_digits_on(seed, task.device)
            return _prune(task, data, epochs=task.epochs, patience=patience, on_epoch=on_epoch)

    def expected_epochs(self, patience: int | None) -> float:
        """The most epochs a run may spend: the budget, or the patience cap (for a progress bar)."""
        if patience is None:
            return float(self.budget.finetune.epochs)
        return float(self.budget.steps * self.budget.finetune.max_epochs_per_step)

    def _task(self, seed: int, config: dict, **changes) -> PruneTask:
        return _make_task(self.budget, seed, self.dense_states[seed], config, device=self.device, **changes)

    def summary(self) -> dict:
        """The headline numbers, as plain values (what the notebook records, quotes and compares)."""
        return summarize(self)


def _make_task(budget: PruningBudget, seed: int, state: dict, config: dict, **changes) -> PruneTask:
    values = dict(
        seed=seed,
        kind="main",
        epochs=float(budget.finetune.epochs),
        patience=None,
        steps=budget.steps,
        hybrid_start=budget.hybrid_start,
        finetune=budget.finetune,
        model=budget.model_config(),
        dense_state=state,
    )
    values.update(config)
    values.update(changes)
    return PruneTask(**values)


def build_tasks(budget: PruningBudget, dense_states: dict, device: str = "cpu") -> list[PruneTask]:
    """Every pruning task of the experiment, each to train on ``device``. Hybrid at a ratio no higher than its
    start *is* one-shot, and the budget study's runs at the main budget are main runs: both are copied later, not
    run twice."""
    seeds = list(dense_states)
    reference = dict(granularity="structured", criterion=dict(budget.main_criteria).get("structured"))
    tasks = []
    for seed in seeds:
        state = dense_states[seed]
        for config in budget.configurations():
            if config["regime"] == "hybrid" and config["ratio"] <= budget.hybrid_start:
                continue
            keep = (
                seed == seeds[0]
                and config["regime"] == "one-shot"
                and all(config[k] == v for k, v in reference.items())
            )
            tasks.append(_make_task(budget, seed, state, config, keep_model=keep, device=device))
        criterion = dict(budget.main_criteria)["unstructured"]
        for regime in budget.budget_regimes:
            for epochs in budget.budget_epochs:
                if epochs == budget.finetune.epochs:
                    continue
                config = dict(
                    granularity="unstructured", criterion=criterion, regime=regime, ratio=budget.budget_ratio
                )
                tasks.append(
                    _make_task(budget, seed, state, config, kind="budget", epochs=float(epochs), device=device)
                )
        for config in budget.patience_configurations():
            tasks.append(_make_task(budget, seed, state, config, kind="patience", device=device))
    return tasks


def run_experiment(run: Run, budget: PruningBudget, *, progress: bool | None = None) -> PruningResult:
    """Train ``budget.seeds`` dense baselines and prune each every way; see the module docstring.

    Every run goes through :func:`efflab.parallel.run_all` and trains on ``run.device``, as do the accuracies
    right after masking; on Ray each task asks for a share of a GPU when that device is CUDA. Only the latency of
    the structured models is measured on the CPU.
    """
    if not isinstance(run, Run):
        raise ValueError(f"run={run!r} is not allowed; expected the Run returned by efflab.setup")
    if not isinstance(budget, PruningBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a PruningBudget")
    seeds = seeds_for(run.seed, budget.seeds)
    device = str(run.device)
    share = gpu_share_for(device)
    with Timer() as timer:
        config, batch_size = budget.model_config(), budget.finetune.batch_size
        dense_tasks = [
            DenseTask(s, config, budget.dense_epochs, budget.dense_lr, batch_size, device=device) for s in seeds
        ]
        dense = run_all(train_dense, dense_tasks, description="dense models", progress=progress, gpu_share=share)
        states = {s: d["state"] for s, d in zip(seeds, dense, strict=True)}
        tasks = build_tasks(budget, states, device)
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)  # longest first: no long tail at the end
        done = run_all(
            prune_one, [tasks[i] for i in order], description="pruning runs", progress=progress, gpu_share=share
        )
        outputs = [None] * len(tasks)
        for index, output in zip(order, done, strict=True):
            outputs[index] = output
        result = _assemble(budget, seeds, states, [d["row"] for d in dense], tasks, outputs, device)
    result.seconds = timer.seconds
    return result


def _assemble(budget, seeds, states, dense_rows, tasks, outputs, device) -> PruningResult:
    main = [o for o in outputs if o["kind"] == "main"]
    runs = _add_hybrid_copies(pd.DataFrame([o["row"] for o in main]), budget)
    patience = pd.DataFrame([o["row"] for o in outputs if o["kind"] == "patience"])
    stepped = [o for o in outputs if o["kind"] in ("main", "patience")]
    steps = _add_hybrid_copies(pd.DataFrame([r for o in stepped for r in o["steps"]]), budget)
    layers = _add_hybrid_copies(pd.DataFrame([r for o in stepped for r in o["layers"]]), budget)
    extra = pd.DataFrame([o["row"] for o in outputs if o["kind"] == "budget"])
    structured = {t.ratio: o["model"] for t, o in zip(tasks, outputs, strict=True) if t.keep_model}
    first = seeds[0]
    dense_model = _model_from(budget.model_config(), states[first], device)
    data = load_digits_on(first, device)
    damage = pd.concat(
        [
            accuracy_without_finetuning(dense_model, data, budget.unstructured_ratios, criterion=c, seed=first)
            for c in UNSTRUCTURED_CRITERIA
        ],
        ignore_index=True,
    )
    costs = structured_costs(dense_model, structured, data.test.x, budget.latency_batch, budget.latency_repeats)
    return PruningResult(
        budget=budget,
        seeds=tuple(seeds),
        runs=runs,
        patience=patience,
        steps=steps,
        layers=layers,
        budget_study=_budget_table(extra, runs, patience, budget),
        damage=damage,
        dense=pd.DataFrame(dense_rows),
        costs=costs,
        dense_states=states,
        structured_models=structured,
        device=device,
    )


def _budget_table(extra: pd.DataFrame, runs: pd.DataFrame, patience: pd.DataFrame, budget) -> pd.DataFrame:
    """The budget study: its own runs, the main runs at its ratio, and the patience runs there (budget NaN)."""
    criterion = dict(budget.main_criteria)["unstructured"]
    where = (
        (runs.granularity == "unstructured") & (runs.criterion == criterion) & (runs.ratio == budget.budget_ratio)
    )
    same = runs[where & runs.regime.isin(budget.budget_regimes)].assign(budget=float(budget.finetune.epochs))
    parts = [t for t in (extra, same) if not t.empty]
    if not patience.empty:
        at = patience[patience.ratio == budget.budget_ratio]
        parts.append(at[[c for c in at.columns if not c.startswith(("twin", "capped"))]].assign(budget=np.nan))
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["curve", "budget", "seed"], ignore_index=True, na_position="last")


def _add_hybrid_copies(table: pd.DataFrame, budget: PruningBudget) -> pd.DataFrame:
    """Rows for fixed-budget hybrid runs at ratios <= the hybrid start: the one-shot rows, relabelled."""
    if table.empty:
        return table
    fixed = table.patience.isna()
    cells = table[(table.regime == "hybrid") & fixed][["granularity", "criterion"]].drop_duplicates()
    copies = table[(table.regime == "one-shot") & fixed & (table.ratio <= budget.hybrid_start)]
    copies = copies.merge(cells, on=["granularity", "criterion"]).assign(regime="hybrid", curve="hybrid")
    return pd.concat([table, copies], ignore_index=True).sort_values(
        KEYS + ["ratio"], kind="stable", ignore_index=True
    )


def structured_costs(dense: CNN, models: dict, test_x, batch_size: int, repeats: int) -> pd.DataFrame:
    """Parameters, FLOPs and measured CPU latency of the structurally pruned models beside the dense one.

    Latency is the median over ``repeats`` interleaved forward passes of a batch of ``batch_size`` test images
    (see :func:`efflab.pruning.pruners.compare_latency`), on the CPU, one thread.
    """
    inputs = test_x.cpu()[torch.arange(batch_size) % len(test_x)]
    named = {"dense": dense, **{f"{ratio:g}": m for ratio, m in sorted(models.items())}}
    cpu_models = {name: copy.deepcopy(model).cpu().eval() for name, model in named.items()}
    with torch_threads(1):
        latency = compare_latency(cpu_models, inputs, repeats=repeats)
    rows = [
        {
            "model": name,
            "channel_ratio": 0.0 if name == "dense" else float(name),
            "parameters": count_parameters(model),
            "flops": module_forward_flops(model, inputs[:1]),
            "latency_ms": 1000 * latency[name],
        }
        for name, model in cpu_models.items()
    ]
    table = pd.DataFrame(rows).set_index("model")
    dense_row = table.loc["dense"]
    table["parameter_ratio"] = table.parameters / dense_row.parameters
    table["flop_ratio"] = table.flops / dense_row.flops
    table["latency_ratio"] = table.latency_ms / dense_row.latency_ms
    return table


# --------------------------------------------------------------------------------------------------------------
# Reading the results
# --------------------------------------------------------------------------------------------------------------


def accuracy_by_seed(runs: pd.DataFrame, granularity: str, criterion: str, curve: str):
    """Ratios and test accuracy of one curve as an array (seeds, ratios), the shape the band plots take."""
    chosen = runs[(runs.granularity == granularity) & (runs.criterion == criterion) & (runs.curve == curve)]
    if chosen.empty:
        raise ValueError(f"no runs for granularity={granularity!r}, criterion={criterion!r}, curve={curve!r}")
    table = chosen.pivot_table(index="seed", columns="ratio", values="test_accuracy")
    return [float(r) for r in table.columns], table.to_numpy()


def crossover_ratio(ratios, early, late) -> float:
    """The ratio from which ``late`` (iterative) is at least as accurate as ``early`` (one-shot), to the end.

    Find the last grid ratio where ``late`` is behind; the crossover lies between it and the next ratio, where
    the linear interpolation of the gap is zero. Returns the first ratio when ``late`` is never behind and NaN
    when it is still behind at the highest ratio (no crossover on this grid).
    """
    ratios = np.asarray(ratios, dtype=float)
    if ratios.ndim != 1 or len(ratios) == 0 or not np.all(np.diff(ratios) > 0):
        raise ValueError(f"ratios={ratios.tolist()!r} is not allowed; expected increasing ratios, at least one")
    early, late = np.asarray(early, dtype=float), np.asarray(late, dtype=float)
    if early.shape != ratios.shape or late.shape != ratios.shape:
        raise ValueError(
            f"early and late have shapes {early.shape} and {late.shape}; expected {ratios.shape}, one per ratio"
        )
    if not (np.all(np.isfinite(early)) and np.all(np.isfinite(late))):
        raise ValueError("early and late must be finite accuracies; a NaN would hide the crossing")
    gap = late - early
    behind = np.flatnonzero(gap < 0)
    if behind.size == 0:
        return float(ratios[0])
    last = int(behind[-1])
    if last == len(ratios) - 1:
        return float("nan")
    fraction = -gap[last] / (gap[last + 1] - gap[last])
    return float(ratios[last] + fraction * (ratios[last + 1] - ratios[last]))


def regime_table(summary: dict, granularity: str) -> pd.DataFrame:
    """Mean ± standard deviation of test accuracy per curve and ratio, from the summary (for display)."""
    part = summary[granularity]
    table = pd.DataFrame(
        {curve: {float(r): spread(v) for r, v in by_ratio.items()} for curve, by_ratio in part["accuracy"].items()}
    )
    table.index.name = "ratio"
    return table


def _per_seed(values: dict, ratio) -> list[float]:
    return [float(v) for v in values[f"{ratio:g}"]]


def summarize(result: PruningResult) -> dict:
    """The headline numbers of a result, as plain JSON-able values."""
    budget, runs = result.budget, result.runs
    summary = {
        "seeds": list(result.seeds),
        "dense_accuracy": [float(v) for v in result.dense.test_accuracy],
        "test_images": len(load_digits(result.seeds[0]).test),
        "fixed_budget_epochs": float(budget.finetune.epochs),
        "hybrid_start": budget.hybrid_start,
        "steps": budget.steps,
        "seconds": result.seconds,
    }
    for granularity, criterion in budget.main_criteria:
        chosen = runs[(runs.granularity == granularity) & (runs.criterion == criterion)]
        accuracy = {}
        for curve, rows in chosen.groupby("curve", sort=False):
            table = rows.pivot_table(index="seed", columns="ratio", values="test_accuracy")
            accuracy[curve] = {f"{r:g}": [float(v) for v in table[r]] for r in table.columns}
        summary[granularity] = {
            "criterion": criterion,
            "ratios": [float(r) for r in budget.ratios(granularity)],
            "accuracy": accuracy,
        }
    summary["criteria"] = {
        f"{g}/{c}": {
            f"{r:g}": [float(v) for v in rows[rows.ratio == r].sort_values("seed").test_accuracy]
            for r in sorted(rows.ratio.unique())
        }
        for (g, c), rows in runs[runs.curve == "one-shot"].groupby(["granularity", "criterion"])
    }
    if not result.patience.empty:
        summary["patience"] = {
            curve: {
                f"{r:g}": {
                    "accuracy": [float(v) for v in g.sort_values("seed").test_accuracy],
                    "twin_accuracy": [float(v) for v in g.sort_values("seed").twin_test_accuracy],
                    "epochs": [float(v) for v in g.sort_values("seed").epochs],
                    "capped_phases": int(g.capped_phases.sum()),
                    "phases": int(g.pruning_steps.sum()),
                }
                for r, g in rows.groupby("ratio")
            }
            for curve, rows in result.patience.groupby("curve", sort=False)
        }
    fixed = result.budget_study[result.budget_study.budget.notna()]
    summary["budget_study"] = {
        "ratio": budget.budget_ratio,
        "accuracy": {
            curve: {
                f"{b:g}": [float(v) for v in g.sort_values("seed").test_accuracy]
                for b, g in rows.groupby("budget")
            }
            for curve, rows in fixed.groupby("curve")
        },
    }
    pruned = result.costs.drop(index="dense")
    summary["structured_costs"] = {
        f"{r:g}": {"parameter_ratio": float(p), "flop_ratio": float(f), "latency_ratio": float(t)}
        for r, p, f, t in zip(
            pruned.channel_ratio, pruned.parameter_ratio, pruned.flop_ratio, pruned.latency_ratio, strict=True
        )
    }
    return summary


# --------------------------------------------------------------------------------------------------------------
# Verdicts: computed from the summary only
# --------------------------------------------------------------------------------------------------------------

AGREES, DISAGREES, MIXED, TIE = "agrees", "disagrees", "mixed", "tie"


def verdict(gaps, tolerance: float) -> str:
    """How per-seed gaps (positive: the paper's side ahead) read: every seed for, every seed against, some of
    each, or all within ``tolerance`` (a tie). Seeds within the tolerance count for neither side."""
    check_positive("tolerance", tolerance, allow_zero=True)
    gaps = np.asarray(list(gaps), dtype=float)
    if not np.all(np.isfinite(gaps)):
        raise ValueError(f"gaps={gaps.tolist()!r} is not allowed; expected finite numbers")
    ahead, behind = int((gaps > tolerance).sum()), int((gaps < -tolerance).sum())
    if ahead and behind:
        return MIXED
    if ahead:
        return AGREES
    if behind:
        return DISAGREES
    return TIE


def tolerance(summary: dict) -> float:
    """Half a test image: a smaller difference in accuracy is no difference on this split."""
    return 0.5 / summary["test_images"]


def one_shot_gaps(summary: dict, granularity: str, end: str) -> dict:
    """At the lowest (``end="low"``) or highest ratio: one-shot minus the best iterative schedule, per seed.

    The best iterative schedule is chosen by its mean over seeds; hybrid counts only above its start, where it
    differs from one-shot.
    """
    part = summary[granularity]
    ratio = part["ratios"][0] if end == "low" else part["ratios"][-1]
    candidates = [
        c for c in ITERATIVE if c in part["accuracy"] and not (c == "hybrid" and ratio <= summary["hybrid_start"])
    ]
    means = {c: float(np.mean(_per_seed(part["accuracy"][c], ratio))) for c in candidates}
    best = max(means, key=means.get)
    one_shot = np.asarray(_per_seed(part["accuracy"]["one-shot"], ratio))
    gaps = one_shot - np.asarray(_per_seed(part["accuracy"][best], ratio))
    return {"ratio": ratio, "best_iterative": best, "gaps": [float(g) for g in gaps]}


def crossovers(summary: dict, granularity: str, late: str = "geometric") -> list[float]:
    """Per seed, the ratio where ``late`` catches up with one-shot for good (NaN: not on this grid)."""
    part = summary[granularity]
    ratios = part["ratios"]
    early = np.array([_per_seed(part["accuracy"]["one-shot"], r) for r in ratios]).T
    later = np.array([_per_seed(part["accuracy"][late], r) for r in ratios]).T
    return [crossover_ratio(ratios, a, b) for a, b in zip(early, later, strict=True)]


def patience_gaps(summary: dict) -> dict[str, list[float]]:
    """Per patience curve: patience minus its equal-compute twin, averaged over the patience ratios, per seed."""
    out = {}
    for curve, by_ratio in summary.get("patience", {}).items():
        diffs = [np.asarray(v["accuracy"]) - np.asarray(v["twin_accuracy"]) for v in by_ratio.values()]
        out[curve] = [float(g) for g in np.mean(diffs, axis=0)]
    return out


def hybrid_gaps(summary: dict) -> list[float]:
    """Hybrid minus the better of one-shot and geometric (by mean), averaged over ratios above its start."""
    part = summary["unstructured"]["accuracy"]
    above = [r for r in summary["unstructured"]["ratios"] if r > summary["hybrid_start"]]
    if "hybrid" not in part or not above:
        return []
    diffs = []
    for r in above:
        rival = max(("one-shot", "geometric"), key=lambda c: np.mean(_per_seed(part[c], r)))
        diffs.append(np.asarray(_per_seed(part["hybrid"], r)) - np.asarray(_per_seed(part[rival], r)))
    return [float(g) for g in np.mean(diffs, axis=0)]


# --------------------------------------------------------------------------------------------------------------
# The paper beside this run
# --------------------------------------------------------------------------------------------------------------

# What the paper states in its abstract (arXiv 2508.13836v1). Its result tables, and so the exact ratio where the
# curves cross, were not available to us: no number of the paper's is quoted.
PAPER_CLAIMS = {
    "low": "one-shot is better at low pruning ratios (abstract)",
    "high": "iterative is better at high pruning ratios (abstract)",
    "crossover": "the two cross; the ratio is in the paper's tables, which we could not read",
    "patience": "patience-based pruning is advocated (abstract)",
    "hybrid": "hybrid can outperform the traditional regimes in certain scenarios (abstract)",
}


def _fmt_gaps(gaps) -> str:
    return spread(gaps, 2)


def paper_rows(summary: dict, committed: dict | None) -> pd.DataFrame:
    """The paper's claims beside this run and the committed full-mode run (``committed`` or None)."""

    def ends(values, granularity, end):
        if not values or granularity not in values:
            return None
        found = one_shot_gaps(values, granularity, end)
        return f"one-shot − {found['best_iterative']} at {found['ratio']:g}: {_fmt_gaps(found['gaps'])}"

    def crossing(values, granularity):
        if not values or granularity not in values:
            return None
        per_seed = crossovers(values, granularity)
        return ", ".join("none" if np.isnan(r) else f"{r:.2f}" for r in per_seed) + " (per seed)"

    def patience(values, curve):
        gaps = patience_gaps(values or {})
        if curve not in gaps:
            return None
        epochs = [e for v in values["patience"][curve].values() for e in v["epochs"]]
        return f"{_fmt_gaps(gaps[curve])} (patience − equal-epochs twin; {np.mean(epochs):.1f} epochs used)"

    def hybrid(values):
        gaps = hybrid_gaps(values) if values else []
        return f"hybrid − best of one-shot/geometric: {_fmt_gaps(gaps)}" if gaps else None

    rows = []
    for granularity in ("unstructured", "structured"):
        for end in ("low", "high"):
            rows.append(
                {
                    "quantity": f"one-shot minus best iterative, {'lowest' if end == 'low' else 'highest'} ratio "
                    f"({granularity})",
                    "paper": PAPER_CLAIMS[end],
                    "this_run": ends(summary, granularity, end),
                    "full_run": ends(committed, granularity, end),
                    "note": "matched budgets; positive: one-shot ahead; mean ± std over seeds",
                }
            )
        rows.append(
            {
                "quantity": f"geometric catches up with one-shot at ({granularity})",
                "paper": PAPER_CLAIMS["crossover"],
                "this_run": crossing(summary, granularity),
                "full_run": crossing(committed, granularity),
                "note": "interpolated between grid ratios",
            }
        )
    for curve in summary.get("patience", {}):
        rows.append(
            {
                "quantity": f"{curve}: accuracy gained by patience at equal epochs",
                "paper": PAPER_CLAIMS["patience"],
                "this_run": patience(summary, curve),
                "full_run": patience(committed, curve),
                "note": "twin: the same schedule, a fixed budget of the epochs the patience run used",
            }
        )
    rows.append(
        {
            "quantity": "hybrid above its start ratio",
            "paper": PAPER_CLAIMS["hybrid"],
            "this_run": hybrid(summary),
            "full_run": hybrid(committed),
            "note": "below its start hybrid is one-shot by definition",
        }
    )
    return paper_table(rows, full_run_on=committed_device(NAME))


_PHRASES = {
    AGREES: "agrees with the paper",
    DISAGREES: "disagrees with the paper",
    MIXED: "is mixed across seeds",
    TIE: "cannot tell the two apart (every seed within half a test image)",
}


def findings(summary: dict) -> str:
    """Markdown sentences on what this run found, each with its verdict against the paper's claim."""
    tol = tolerance(summary)
    n = len(summary["seeds"])
    lines = []
    for granularity in ("unstructured", "structured"):
        if granularity not in summary:
            continue
        for end, claim_sign, claim in ((("low", 1, "one-shot ahead")), (("high", -1, "iterative ahead"))):
            found = one_shot_gaps(summary, granularity, end)
            outcome = verdict([claim_sign * g for g in found["gaps"]], tol)
            lines.append(
                f"- **{granularity}, ratio {found['ratio']:g}** (the paper: {claim}): one-shot minus "
                f"{found['best_iterative']} is {_fmt_gaps(found['gaps'])}; this run "
                f"{_PHRASES[outcome]}."
            )
        per_seed = crossovers(summary, granularity)
        found = [r for r in per_seed if not np.isnan(r)]
        if not found:
            lines.append(
                f"- **{granularity} crossover:** geometric never catches up with one-shot for good on this grid "
                f"in any of the {n} seeds."
            )
        else:
            lines.append(
                f"- **{granularity} crossover:** geometric is at least as good as one-shot from "
                f"{spread(found, 2)} on, in {len(found)} of {n} seeds (none found in the others)."
            )
    for curve, gaps in patience_gaps(summary).items():
        outcome = verdict(gaps, tol)
        epochs = [e for v in summary["patience"][curve].values() for e in v["epochs"]]
        capped = sum(v["capped_phases"] for v in summary["patience"][curve].values())
        phases = sum(v["phases"] for v in summary["patience"][curve].values())
        lines.append(
            f"- **{curve}** (the paper advocates patience): it used {np.mean(epochs):.1f} epochs on average "
            f"(the matched budget is {summary['fixed_budget_epochs']:g}); against the same schedule given exactly "
            f"those epochs it gains {_fmt_gaps(gaps)}, so this run {_PHRASES[outcome]}"
            + (f"; {capped} of {phases} phases hit the per-step cap." if capped else ".")
        )
    gaps = hybrid_gaps(summary) if "unstructured" in summary else []
    if gaps:
        outcome = verdict(gaps, tol)
        lines.append(
            f"- **hybrid** (the paper: it can outperform the others in some scenarios): above its start it is "
            f"{_fmt_gaps(gaps)} ahead of the better of one-shot and geometric; this run {_PHRASES[outcome]}."
        )
    return "\n".join(lines)
