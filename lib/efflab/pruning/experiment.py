"""The experiment of notebook 01: every pruning regime, across ratios and seeds, from the same trained models.

For each seed we split the data, train one dense CNN (the baseline), and then prune copies of it along every
regime of :mod:`efflab.pruning.pruners` at each ratio of the grid, under one fine-tuning budget. Seeds change both
the data split and the initialisation, so the spread between them is the honest noise of the whole pipeline.

Budgets live here, beside the experiment, not in the notebook: :meth:`PruningSweep.quick` needs about a minute of
CPU time, shared between two processes on two cores; :meth:`PruningSweep.full` is the larger model, the denser
grid, more seeds and patience values {3, 10, 30}, for one GPU.

Everything the notebook's widgets show is in the returned :class:`SweepResult`; the only thing computed later is
a single configuration that a reader asks to re-run live.
"""

from __future__ import annotations

import copy
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from efflab.data.canvas import load_canvases
from efflab.data.digits import Digits, Split, infinite_batches, load_digits
from efflab.finetune import FinetuneBudget
from efflab.flops import count_parameters, module_forward_flops
from efflab.models.cnn import CNN, CNNConfig
from efflab.pruning.pruners import (
    CRITERIA,
    GRANULARITIES,
    REGIMES,
    PruningRun,
    check_patience,
    check_ratio,
    compare_latency,
    make_schedule,
    prune_and_finetune,
)
from efflab.runtime import Run, Timer, seed_everything, torch_threads
from efflab.train import TrainConfig, classification_metrics, fit, progress_enabled, run_evaluation
from efflab.validation import check_choice, check_int, check_positive, check_seed

DATASETS = ("digits", "canvas")
ALL_CRITERIA = tuple(CRITERIA.items())
MAIN_CRITERIA = (("unstructured", "global-magnitude"), ("structured", "l2"))
KEYS = ["seed", "granularity", "criterion", "curve"]


def curve_name(regime: str, patience: int | None = None) -> str:
    """The label of one line in the plots: the regime, with its patience for patience-based runs."""
    return f"patience {patience}" if regime == "patience" else regime


@dataclass(frozen=True)
class PruningSweep:
    """What one run of the experiment covers, and how much compute each part gets.

    ``main_criteria`` (one per granularity) run every regime; the other criteria of ``criteria`` run only
    ``side_regimes``, which is enough to compare criteria without multiplying the cost.
    """

    dataset: str
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
    finetune: FinetuneBudget
    criteria: tuple[tuple[str, tuple[str, ...]], ...]
    main_criteria: tuple[tuple[str, str], ...]
    side_regimes: tuple[str, ...]
    budget_ratio: float = 0.95
    budget_epochs: tuple[float, ...] = (5, 10, 20, 40)
    budget_regimes: tuple[str, ...] = ("one-shot", "geometric")
    canvas_size: int = 24
    latency_batch: int = 512
    latency_repeats: int = 15
    threads: int | None = None  # None keeps torch's setting
    workers: int = 1  # CPU processes sharing the pruning runs (on a GPU everything runs in this process)

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        check_int("hidden", self.hidden, low=1)
        check_int("dense_epochs", self.dense_epochs, low=1)
        check_positive("dense_lr", self.dense_lr)
        check_int("seeds", self.seeds, low=1)
        check_int("steps", self.steps, low=2)
        check_ratio("hybrid_start", self.hybrid_start)
        for name in ("unstructured_ratios", "structured_ratios"):
            ratios = getattr(self, name)
            if not ratios or list(ratios) != sorted(set(ratios)):
                raise ValueError(f"{name}={ratios!r} is not allowed; expected increasing, distinct ratios")
            for ratio in ratios:
                check_ratio(name, ratio)
        for regime in self.regimes + self.side_regimes:
            check_choice("regimes", regime, REGIMES)
        for patience in self.patiences:
            check_patience(patience)
        check_ratio("budget_ratio", self.budget_ratio)
        for epochs in self.budget_epochs:
            check_positive("budget_epochs", epochs)
        for regime in self.budget_regimes:
            check_choice("budget_regimes", regime, REGIMES)
        for granularity, criteria in self.criteria:
            check_choice("granularity", granularity, GRANULARITIES)
            for criterion in criteria:
                check_choice("criterion", criterion, CRITERIA[granularity])
        if self.threads is not None:
            check_int("threads", self.threads, low=1)
        check_int("workers", self.workers, low=1)

    @classmethod
    def quick(cls) -> PruningSweep:
        """About a minute of CPU time, shared by two worker processes: a 16-32 channel CNN on the 8x8 digits,
        3 seeds, patience 2, 90 optimiser steps of fine-tuning per run (5 epochs of batches of 64).

        Per-operation overhead dominates at this size: on a CPU a step on 64 images costs about 60 % of a step
        on 128, so smaller batches buy more optimiser steps per second.
        """
        return cls(
            dataset="digits", widths=(16, 32), hidden=64, dense_epochs=20, dense_lr=3e-3, seeds=3,
            unstructured_ratios=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
            structured_ratios=(0.3, 0.5, 0.7, 0.9),
            regimes=REGIMES, steps=5, hybrid_start=0.7, patiences=(2,),
            finetune=FinetuneBudget(epochs=5, batch_size=64, lr=1e-3, max_epochs_per_step=4),
            criteria=ALL_CRITERIA, main_criteria=MAIN_CRITERIA, side_regimes=("one-shot",),
            budget_ratio=0.95, budget_epochs=(2.5, 5, 10), budget_regimes=("one-shot", "geometric"),
            latency_batch=512, latency_repeats=31, threads=1, workers=2,
        )  # fmt: skip

    @classmethod
    def full(cls) -> PruningSweep:
        """For one GPU: a deeper, wider CNN (about 226k parameters), 4 seeds, a denser grid reaching 0.99,
        twice the fine-tuning budget, and patience {3, 10, 30}.

        Still the digits: the cluttered canvases have too few images (the same 1,797 digits) for a CNN of this
        kind to generalise from, so its pruned variants would be compared at chance level.
        """
        return cls(
            dataset="digits", widths=(32, 64, 128), hidden=256, dense_epochs=40, dense_lr=2e-3, seeds=4,
            unstructured_ratios=(0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.98, 0.99),
            structured_ratios=(0.3, 0.5, 0.7, 0.8, 0.9),
            regimes=REGIMES, steps=5, hybrid_start=0.7, patiences=(3, 10, 30),
            finetune=FinetuneBudget(epochs=20, batch_size=256, lr=1e-3, max_epochs_per_step=40),
            criteria=ALL_CRITERIA, main_criteria=MAIN_CRITERIA, side_regimes=("one-shot", "geometric"),
            budget_ratio=0.95, budget_epochs=(5, 10, 20, 40, 80), budget_regimes=("one-shot", "geometric"),
            latency_batch=1024, latency_repeats=31, threads=None, workers=1,
        )  # fmt: skip

    def describe(self) -> str:
        """A few lines on what this sweep runs, for the notebook."""
        config = self.model_config()
        n_runs = len(self.configurations()) * self.seeds
        lines = [
            f"data: {self.dataset} ({config.image_size}x{config.image_size}); CNN widths {self.widths}, "
            f"hidden {self.hidden}; dense training {self.dense_epochs} epochs; {self.seeds} seeds",
            f"ratios: unstructured {self.unstructured_ratios}; structured (channels) {self.structured_ratios}",
            f"regimes {self.regimes} with {self.steps} steps (hybrid: one-shot to {self.hybrid_start} first); "
            f"patience {self.patiences}, at most {self.finetune.max_epochs_per_step} epochs per step",
            f"fine-tuning budget {self.finetune.epochs:g} epochs per run, AdamW lr {self.finetune.lr:g}, "
            f"batch {self.finetune.batch_size}; {n_runs} pruning runs, then a budget study at {self.budget_ratio}",
        ]
        return "\n".join(lines)

    @classmethod
    def for_run(cls, run: Run) -> PruningSweep:
        return cls.quick() if run.quick else cls.full()

    def model_config(self) -> CNNConfig:
        image_size = 8 if self.dataset == "digits" else self.canvas_size
        return CNNConfig(widths=self.widths, hidden=self.hidden, image_size=image_size)

    def ratios(self, granularity: str) -> tuple[float, ...]:
        check_choice("granularity", granularity, GRANULARITIES)
        return self.unstructured_ratios if granularity == "unstructured" else self.structured_ratios

    def configurations(self) -> list[dict]:
        """Every (granularity, criterion, regime, patience, ratio) the sweep prunes, for each seed."""
        main = dict(self.main_criteria)
        configs = []
        for granularity, criteria in self.criteria:
            for criterion in criteria:
                regimes = self.regimes if criterion == main.get(granularity) else self.side_regimes
                for regime in regimes:
                    for patience in self.patiences if regime == "patience" else (None,):
                        for ratio in self.ratios(granularity):
                            configs.append(
                                dict(
                                    granularity=granularity,
                                    criterion=criterion,
                                    regime=regime,
                                    patience=patience,
                                    ratio=ratio,
                                )
                            )
        return configs


def load_data(sweep: PruningSweep, seed: int) -> Digits:
    """The sweep's dataset, split by ``seed``: the digits, or cluttered canvases normalised by train statistics."""
    check_seed(seed)
    if sweep.dataset == "digits":
        return load_digits(seed)
    parts = {
        name: load_canvases(name, canvas_size=sweep.canvas_size, seed=seed) for name in ("train", "val", "test")
    }
    mean, std = float(parts["train"].x.mean()), float(parts["train"].x.std())
    splits = {name: Split(x=(c.x - mean) / std, y=c.y) for name, c in parts.items()}
    return Digits(train=splits["train"], val=splits["val"], test=splits["test"], mean=mean, std=std)


def train_dense(sweep: PruningSweep, data: Digits, seed: int, device: torch.device | str = "cpu"):
    """Train the dense baseline with the course's training loop; return the model and its history."""
    seed_everything(seed)
    model = CNN(sweep.model_config()).to(device)
    batch_size = min(sweep.finetune.batch_size, len(data.train))
    steps = sweep.dense_epochs * max(1, len(data.train) // batch_size)
    config = TrainConfig(steps=steps, lr=sweep.dense_lr, warmup_steps=min(20, steps), weight_decay=1e-4)
    history = fit(
        model,
        infinite_batches(data.train, batch_size, seed=seed),
        config,
        evaluate=lambda m: classification_metrics(m, data.val.x.to(device), data.val.y.to(device)),
        progress=False,
    )
    return model, history


def _to_device(data: Digits, device: torch.device | str) -> Digits:
    move = {
        name: Split(x=getattr(data, name).x.to(device), y=getattr(data, name).y.to(device))
        for name in ("train", "val", "test")
    }
    return Digits(**move, mean=data.mean, std=data.std)


@dataclass
class SweepResult:
    """Everything the notebook shows.

    * ``runs``: one row per pruned model (seed, granularity, criterion, curve, regime, patience, ratio, test and
      validation accuracy, fine-tuning epochs spent, parameters, nonzero parameters, FLOPs, pruning steps);
    * ``steps``: one row per pruning step of every run (the staircase; accuracy against epochs spent);
    * ``layers``: the final per-layer sparsity of every run;
    * ``budget``: the budget study, one row per (seed, curve, budget) at ``sweep.budget_ratio``, unstructured;
    * ``dense``: the baseline of every seed;
    * the dense models and data (for live re-runs), and one structurally pruned model per ratio (for latency).
    """

    sweep: PruningSweep
    seeds: tuple[int, ...]
    runs: pd.DataFrame
    steps: pd.DataFrame
    layers: pd.DataFrame
    budget: pd.DataFrame
    dense: pd.DataFrame
    dense_models: dict = field(repr=False)
    data: dict = field(repr=False)
    structured_models: dict = field(repr=False)
    seconds: float = 0.0

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
    ) -> PruningRun:
        """Prune the cached dense model of ``seed`` along one configuration, live (for the notebook's button).

        ``patience`` is used by the patience regime only (default: the sweep's first patience value).
        """
        if seed not in self.dense_models:
            raise ValueError(f"seed={seed!r} is not allowed; expected one of {tuple(self.dense_models)}")
        check_choice("granularity", granularity, GRANULARITIES)
        check_choice("criterion", criterion, CRITERIA[granularity])
        check_choice("regime", regime, REGIMES)
        sweep = self.sweep
        patience = (sweep.patiences[0] if patience is None else patience) if regime == "patience" else None
        schedule = make_schedule(regime, ratio, steps=sweep.steps, hybrid_start=sweep.hybrid_start)
        with torch_threads(sweep.threads):
            return prune_and_finetune(
                self.dense_models[seed],
                self.data[seed],
                schedule,
                granularity=granularity,
                criterion=criterion,
                budget=sweep.finetune,
                patience=patience,
                seed=seed,
                on_epoch=on_epoch,
            )

    def expected_epochs(self, regime: str) -> float:
        """The most epochs a run of ``regime`` may spend: the budget, or the patience cap (for a progress bar)."""
        check_choice("regime", regime, REGIMES)
        if regime == "patience":
            return float(self.sweep.steps * self.sweep.finetune.max_epochs_per_step)
        return float(self.sweep.finetune.epochs)


def _prune(dense, data, sweep: PruningSweep, config: dict, seed: int, budget: FinetuneBudget) -> PruningRun:
    schedule = make_schedule(config["regime"], config["ratio"], steps=sweep.steps, hybrid_start=sweep.hybrid_start)
    return prune_and_finetune(
        dense,
        data,
        schedule,
        granularity=config["granularity"],
        criterion=config["criterion"],
        budget=budget,
        patience=config["patience"],
        seed=seed,
    )


def _run_row(key: dict, result: PruningRun) -> dict:
    return {
        **key,
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "epochs": result.epochs,
        "parameters": result.parameters,
        "nonzero_parameters": result.nonzero_parameters,
        "flops": result.flops,
        "pruning_steps": result.schedule.steps,
    }


def budget_configurations(sweep: PruningSweep) -> list[tuple[dict, float]]:
    """The budget study's extra runs: (config, epochs) for every budget other than the main sweep's."""
    granularity, criterion = "unstructured", dict(sweep.main_criteria)["unstructured"]
    config = dict(granularity=granularity, criterion=criterion, patience=None, ratio=sweep.budget_ratio)
    return [
        ({**config, "regime": regime}, epochs)
        for regime in sweep.budget_regimes
        for epochs in sweep.budget_epochs
        if epochs != sweep.finetune.epochs or sweep.budget_ratio not in sweep.unstructured_ratios
    ]


@dataclass(frozen=True)
class _Job:
    """One pruning run of the sweep: a configuration for one seed, at the main budget or a study budget."""

    index: int
    seed: int
    config: dict
    epochs: float | None = None  # None: the sweep's fine-tuning budget (a main run); else a budget-study run
    keep_model: bool = False


def _execute(job: _Job, sweep: PruningSweep, dense, data) -> dict:
    """Run one job; return its table rows (and the pruned model when the job keeps it)."""
    budget = sweep.finetune if job.epochs is None else replace(sweep.finetune, epochs=job.epochs)
    result = _prune(dense, data, sweep, job.config, job.seed, budget)
    key = {"seed": job.seed, **job.config, "curve": curve_name(job.config["regime"], job.config["patience"])}
    row = _run_row(key, result)
    if job.epochs is not None:
        return {"index": job.index, "budget": {**row, "budget": job.epochs}}
    return {
        "index": job.index,
        "run": row,
        "steps": [{**key, **r} for r in result.steps.to_dict("records")],
        "layers": [{**key, **r} for r in result.layers.to_dict("records")],
        "model": result.model if job.keep_model else None,
    }


# The state of a worker process: the sweep, and every seed's dense model and data, built once per worker.
_WORKER: dict = {}


def _start_worker(sweep: PruningSweep, dense_states: dict) -> None:
    torch.set_num_threads(1)
    _WORKER["sweep"] = sweep
    _WORKER["dense"], _WORKER["data"] = {}, {}
    for seed, state in dense_states.items():
        model = CNN(sweep.model_config())
        model.load_state_dict(state)
        _WORKER["dense"][seed], _WORKER["data"][seed] = model, load_data(sweep, seed)


def _run_in_worker(job: _Job) -> dict:
    return _execute(job, _WORKER["sweep"], _WORKER["dense"][job.seed], _WORKER["data"][job.seed])


def _run_jobs(jobs, sweep, dense_models, datasets, device, bar) -> list[dict]:
    """Run the jobs here, or on ``sweep.workers`` CPU processes, and return their outputs in job order.

    Every job is a pure function of the sweep, its seed's dense model and data, and its configuration, with
    its own seeded random streams, so the outputs do not depend on which process ran it or when: the tables
    come out identical either way (a test checks this).
    """
    workers = sweep.workers if torch.device(device).type == "cpu" else 1
    outputs = []
    if workers <= 1:
        for job in jobs:
            outputs.append(_execute(job, sweep, dense_models[job.seed], datasets[job.seed]))
            bar.update()
    else:
        dense_states = {seed: {k: v.cpu() for k, v in m.state_dict().items()} for seed, m in dense_models.items()}
        # Workers are forked from a server process that has imported this module once and run nothing else:
        # forking *this* process is unsafe once torch has started its thread pools, and spawning a fresh
        # interpreter per worker would pay for importing torch every time.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with ProcessPoolExecutor(
            workers, context, initializer=_start_worker, initargs=(sweep, dense_states)
        ) as pool:
            # Longest first (patience runs, big budgets), so that no worker is left with a long tail alone.
            longest_first = sorted(
                jobs, key=lambda j: -(j.epochs or sweep.finetune.epochs) * (1 + 2 * bool(j.config["patience"]))
            )
            futures = [pool.submit(_run_in_worker, job) for job in longest_first]
            for future in as_completed(futures):
                outputs.append(future.result())
                bar.update()
    return sorted(outputs, key=lambda output: output["index"])


def run_sweep(
    sweep: PruningSweep, *, seed: int = 0, device: torch.device | str = "cpu", progress: bool | None = None
) -> SweepResult:
    """Train ``sweep.seeds`` dense baselines (seeds ``seed``, ``seed + 1``, ...) and prune each every way.

    Hybrid runs at a ratio no higher than the hybrid start are one-shot runs by definition, and the budget
    study's runs at the main budget are main-sweep runs; both are copied rather than computed twice. On the CPU
    the pruning runs are shared among ``sweep.workers`` processes.
    """
    check_seed(seed)
    seeds = tuple(seed + k for k in range(sweep.seeds))
    configs = [
        c for c in sweep.configurations() if not (c["regime"] == "hybrid" and c["ratio"] <= sweep.hybrid_start)
    ]
    reference = dict(
        granularity="structured", criterion=dict(sweep.main_criteria).get("structured"), regime="one-shot"
    )
    jobs = []
    for current in seeds:
        for config in configs:
            keep = current == seeds[0] and all(config[k] == v for k, v in reference.items())
            jobs.append(_Job(len(jobs), current, config, keep_model=keep))
        for config, epochs in budget_configurations(sweep):
            jobs.append(_Job(len(jobs), current, config, epochs=epochs))

    dense_rows, dense_models, datasets = [], {}, {}
    bar = tqdm(total=len(jobs), desc="pruning runs", disable=not progress_enabled(progress))
    with Timer() as timer, torch_threads(sweep.threads):
        for current in seeds:
            data = _to_device(load_data(sweep, current), device)
            with Timer() as dense_timer:
                dense, _ = train_dense(sweep, data, current, device)
            test = run_evaluation(dense, lambda m, d=data: classification_metrics(m, d.test.x, d.test.y))
            dense_rows.append(
                {
                    "seed": current,
                    "test_accuracy": test["val_accuracy"],
                    "parameters": count_parameters(dense),
                    "flops": module_forward_flops(dense, data.train.x[:1]),
                    "train_seconds": dense_timer.seconds,
                }
            )
            dense_models[current], datasets[current] = dense, data
        outputs = _run_jobs(jobs, sweep, dense_models, datasets, device, bar)
    bar.close()

    main = [output for output in outputs if "run" in output]
    runs = _add_hybrid_copies(pd.DataFrame([output["run"] for output in main]), sweep)
    structured_models = {
        job.config["ratio"]: output["model"].to(device)
        for job, output in zip(jobs, outputs, strict=True)
        if job.keep_model
    }
    return SweepResult(
        sweep=sweep,
        seeds=seeds,
        runs=runs,
        steps=_add_hybrid_copies(pd.DataFrame([row for output in main for row in output["steps"]]), sweep),
        layers=_add_hybrid_copies(pd.DataFrame([row for output in main for row in output["layers"]]), sweep),
        budget=_budget_table(pd.DataFrame([o["budget"] for o in outputs if "budget" in o]), runs, sweep),
        dense=pd.DataFrame(dense_rows),
        dense_models=dense_models,
        data=datasets,
        structured_models=structured_models,
        seconds=timer.seconds,
    )


def _budget_table(extra: pd.DataFrame, runs: pd.DataFrame, sweep: PruningSweep) -> pd.DataFrame:
    """The budget study: its own runs, plus the main sweep's runs at the same ratio (fixed budget and patience)."""
    main = dict(sweep.main_criteria)["unstructured"]
    same = runs[
        (runs.granularity == "unstructured") & (runs.criterion == main) & (runs.ratio == sweep.budget_ratio)
    ]
    same = same[same.regime.isin(sweep.budget_regimes) | (same.regime == "patience")]
    same = same.assign(budget=np.where(same.regime == "patience", np.nan, sweep.finetune.epochs))
    table = pd.concat([extra, same], ignore_index=True) if not extra.empty else same
    return table.sort_values(["curve", "budget", "seed"], ignore_index=True)


def _add_hybrid_copies(table: pd.DataFrame, sweep: PruningSweep) -> pd.DataFrame:
    """Rows for hybrid runs at ratios <= the hybrid start: the one-shot rows, relabelled."""
    if table.empty:
        return table
    hybrid_cells = table[table.regime == "hybrid"][["granularity", "criterion"]].drop_duplicates()
    copies = table[(table.regime == "one-shot") & (table.ratio <= sweep.hybrid_start)]
    copies = copies.merge(hybrid_cells, on=["granularity", "criterion"])
    copies = copies.assign(regime="hybrid", curve="hybrid")
    return pd.concat([table, copies], ignore_index=True).sort_values(
        KEYS + ["ratio"], kind="stable", ignore_index=True
    )


# --------------------------------------------------------------------------------------------------------------
# Reading the results
# --------------------------------------------------------------------------------------------------------------


def accuracy_by_seed(
    runs: pd.DataFrame, granularity: str, criterion: str, curve: str
) -> tuple[list[float], np.ndarray]:
    """Ratios and test accuracy of one curve as an array (seeds, ratios), the shape the band plots take."""
    chosen = runs[(runs.granularity == granularity) & (runs.criterion == criterion) & (runs.curve == curve)]
    if chosen.empty:
        raise ValueError(f"no runs for granularity={granularity!r}, criterion={criterion!r}, curve={curve!r}")
    table = chosen.pivot_table(index="seed", columns="ratio", values="test_accuracy")
    return [float(r) for r in table.columns], table.to_numpy()


def crossover_ratio(ratios, early: np.ndarray, late: np.ndarray) -> float:
    """The ratio from which ``late`` (iterative) is at least as accurate as ``early`` (one-shot), to the end.

    Find the last grid ratio where ``late`` is behind; the crossover lies between it and the next ratio, where
    the linear interpolation of the gap is zero. Returns the first ratio when ``late`` is never behind and NaN
    when it is still behind at the highest ratio (no crossover on this grid).
    """
    ratios = np.asarray(ratios, dtype=float)
    gap = np.asarray(late, dtype=float) - np.asarray(early, dtype=float)
    if gap.shape != ratios.shape:
        raise ValueError(f"early and late have shape {gap.shape}; expected {ratios.shape}, one value per ratio")
    behind = np.flatnonzero(gap < 0)
    if behind.size == 0:
        return float(ratios[0])
    last = int(behind[-1])
    if last == len(ratios) - 1:
        return float("nan")
    fraction = -gap[last] / (gap[last + 1] - gap[last])
    return float(ratios[last] + fraction * (ratios[last + 1] - ratios[last]))


def crossover_summary(
    runs: pd.DataFrame,
    granularity: str = "unstructured",
    criterion: str = "global-magnitude",
    *,
    early: str = "one-shot",
    late: str = "geometric",
) -> dict:
    """Where ``late`` overtakes ``early``: per seed, on the mean over seeds, and the spread across seeds."""
    ratios, early_acc = accuracy_by_seed(runs, granularity, criterion, early)
    _, late_acc = accuracy_by_seed(runs, granularity, criterion, late)
    per_seed = [crossover_ratio(ratios, a, b) for a, b in zip(early_acc, late_acc, strict=True)]
    found = [r for r in per_seed if not np.isnan(r)]
    gap = late_acc - early_acc
    return {
        "early": early,
        "late": late,
        "per_seed": per_seed,
        "on_mean": crossover_ratio(ratios, early_acc.mean(axis=0), late_acc.mean(axis=0)),
        "low": min(found) if found else float("nan"),
        "high": max(found) if found else float("nan"),
        "seeds_with_crossover": len(found),
        "seeds": len(per_seed),
        "gap_at_highest_ratio": gap[:, -1].tolist(),
        "gap_at_lowest_ratio": gap[:, 0].tolist(),
        "lowest_ratio": ratios[0],
        "ratios": ratios,
    }


def regime_table(runs: pd.DataFrame, granularity: str, criterion: str) -> pd.DataFrame:
    """Mean and standard deviation of test accuracy per curve and ratio, plus the winner at each ratio."""
    chosen = runs[(runs.granularity == granularity) & (runs.criterion == criterion)]
    stats = chosen.groupby(["ratio", "curve"]).test_accuracy.agg(["mean", "std"]).reset_index()
    means = stats.pivot(index="ratio", columns="curve", values="mean")
    table = stats.assign(
        cell=[f"{m:.3f} ± {s:.3f}" for m, s in zip(stats["mean"], stats["std"].fillna(0), strict=True)]
    )
    table = table.pivot(index="ratio", columns="curve", values="cell")
    table["best (mean)"] = means.idxmax(axis=1)
    return table


def epochs_table(runs: pd.DataFrame, granularity: str = "unstructured") -> pd.DataFrame:
    """Fine-tuning epochs actually spent per curve (mean over seeds and ratios, and the range)."""
    chosen = runs[runs.granularity == granularity]
    return chosen.groupby("curve").epochs.agg(["mean", "min", "max"]).round(1)


def structured_costs(result: SweepResult, *, batch_size: int | None = None, repeats: int | None = None):
    """Parameters, FLOPs and measured CPU latency of the structurally pruned models beside the dense one.

    Latency is the median over ``repeats`` interleaved forward passes of a batch of ``batch_size`` test images
    (see :func:`efflab.pruning.pruners.compare_latency`), on the CPU, with the sweep's thread setting.
    """
    sweep = result.sweep
    batch_size = batch_size or sweep.latency_batch
    repeats = repeats or sweep.latency_repeats
    check_int("batch_size", batch_size, low=1)
    seed = result.seeds[0]
    test = result.data[seed].test.x.cpu()
    inputs = test[torch.arange(batch_size) % len(test)]
    models = {"dense": result.dense_models[seed]}
    models.update({f"{ratio:g}": model for ratio, model in sorted(result.structured_models.items())})
    cpu_models = {name: copy.deepcopy(model).cpu().eval() for name, model in models.items()}
    with torch_threads(sweep.threads):
        latency = compare_latency(cpu_models, inputs, repeats=repeats)
    rows = []
    for name, model in cpu_models.items():
        rows.append(
            {
                "model": name,
                "channel_ratio": 0.0 if name == "dense" else float(name),
                "parameters": count_parameters(model),
                "flops": module_forward_flops(model, inputs[:1]),
                "latency_ms": 1000 * latency[name],
            }
        )
    table = pd.DataFrame(rows).set_index("model")
    dense = table.loc["dense"]
    table["parameter_ratio"] = table.parameters / dense.parameters
    table["flop_ratio"] = table.flops / dense.flops
    table["latency_ratio"] = table.latency_ms / dense.latency_ms
    return table


# --------------------------------------------------------------------------------------------------------------
# The paper beside this run
# --------------------------------------------------------------------------------------------------------------

# What the paper states in its abstract (arXiv 2508.13836v1). Its result tables, and so the exact ratio where
# the curves cross, were not available to us: no number of the paper's is quoted.
PAPER_CLAIMS = {
    "low": "one-shot is better at low pruning ratios",
    "high": "iterative is better at high pruning ratios",
    "crossover": "a crossover exists; its exact ratio is not quoted here (the paper's tables were not available)",
    "patience": "patience-based pruning is advocated",
    "hybrid": "hybrid can outperform the traditional regimes in certain scenarios",
    "structured": "the comparison covers structured and unstructured pruning",
}
MATCHED_CURVES = ("one-shot", "constant", "geometric", "hybrid")


def _mean_accuracy(runs: pd.DataFrame, granularity: str, criterion: str) -> pd.DataFrame:
    chosen = runs[(runs.granularity == granularity) & (runs.criterion == criterion)]
    return chosen.pivot_table(index="ratio", columns="curve", values="test_accuracy", aggfunc="mean")


def winners(runs: pd.DataFrame, granularity: str, criterion: str, hybrid_start: float) -> dict:
    """At the lowest and the highest ratio: the best compute-matched regime, and one-shot's gap to the best
    iterative one (positive: one-shot ahead). Hybrid counts as iterative only above its start, where it differs
    from one-shot."""
    means = _mean_accuracy(runs, granularity, criterion)
    out = {}
    for end, ratio in (("low", means.index.min()), ("high", means.index.max())):
        row = means.loc[ratio]
        iterative = [c for c in ("constant", "geometric", "hybrid") if c in row.index]
        if ratio <= hybrid_start:
            iterative = [c for c in iterative if c != "hybrid"]
        matched = row[[c for c in MATCHED_CURVES if c in row.index]]
        best_iterative = row[iterative].idxmax() if iterative else None
        out[end] = {
            "ratio": float(ratio),
            "best_matched": str(matched.idxmax()),
            "best_iterative": best_iterative,
            "one_shot_minus_best_iterative": float(row["one-shot"] - row[best_iterative]) if iterative else None,
            "means": {str(k): float(v) for k, v in row.items()},
        }
    return out


def summarize(result: SweepResult, costs: pd.DataFrame | None = None) -> dict:
    """The headline numbers of a sweep, as plain values (what the notebook records and compares)."""
    sweep, runs = result.sweep, result.runs
    summary = {
        "dataset": sweep.dataset,
        "seeds": list(result.seeds),
        "dense_accuracy_mean": float(result.dense.test_accuracy.mean()),
        "sweep_seconds": result.seconds,
        "fixed_budget_epochs": float(sweep.finetune.epochs),
        "hybrid_start": sweep.hybrid_start,
        "test_images": len(result.data[result.seeds[0]].test),
    }
    for granularity, criterion in sweep.main_criteria:
        means = _mean_accuracy(runs, granularity, criterion)
        crossovers = {
            curve: crossover_summary(runs, granularity, criterion, late=curve)
            for curve in means.columns
            if curve != "one-shot"
        }
        summary[granularity] = {
            "criterion": criterion,
            "mean_accuracy": {curve: {f"{r:g}": float(v) for r, v in means[curve].items()} for curve in means},
            "winners": winners(runs, granularity, criterion, sweep.hybrid_start),
            "crossover": {c: {k: v for k, v in x.items() if k != "ratios"} for c, x in crossovers.items()},
            "epochs": {
                c: float(v)
                for c, v in runs[runs.granularity == granularity].groupby("curve").epochs.mean().items()
            },
        }
    if not result.budget.empty:
        fixed = result.budget[result.budget.budget.notna()]
        summary["budget"] = {
            "ratio": sweep.budget_ratio,
            "accuracy": {
                curve: {f"{b:g}": float(v) for b, v in rows.groupby("budget").test_accuracy.mean().items()}
                for curve, rows in fixed.groupby("curve")
            },
        }
    if costs is not None:
        pruned = costs.drop(index="dense")
        summary["structured_costs"] = {
            f"{r:g}": {"parameter_ratio": p, "flop_ratio": f, "latency_ratio": t}
            for r, p, f, t in zip(
                pruned.channel_ratio, pruned.parameter_ratio, pruned.flop_ratio, pruned.latency_ratio, strict=True
            )
        }
    return summary


def _crossover_text(crossover: dict) -> str:
    per_seed = crossover["per_seed"]
    found = [r for r in per_seed if not np.isnan(r)]
    if not found:
        gaps = crossover["gap_at_highest_ratio"]
        return (
            f"none on this grid: {crossover['late']} is still behind one-shot at the highest ratio in all "
            f"{len(per_seed)} seeds (gap {min(gaps):+.3f} to {max(gaps):+.3f})"
        )
    lowest = crossover["lowest_ratio"]

    def one(r: float) -> str:
        return "none" if np.isnan(r) else (f"<={r:g} (never behind)" if r == lowest else f"{r:.2f}")

    seeds = ", ".join(one(r) for r in per_seed)
    return (
        f"{crossover['late']} is at least as good as one-shot from {one(float(np.median(found)))} on (median over "
        f"the {len(found)} of {len(per_seed)} seeds where it ends ahead; per seed: {seeds})"
    )


def paper_rows(summary: dict, full: dict | None = None) -> list[dict]:
    """Rows for :func:`efflab.ui.plots.paper_vs_run`: the paper's claims beside this run and the full one."""

    def describe(values: dict | None, granularity: str, end: str) -> str | None:
        if not values or granularity not in values:
            return None
        won = values[granularity]["winners"][end]
        gap = won["one_shot_minus_best_iterative"]
        if gap is None:
            return f"{won['best_matched']} best at {won['ratio']:g}"
        if abs(gap) < 1 / values["test_images"]:  # less than one test image apart: the split cannot tell
            lead = f"one-shot and {won['best_iterative']} tie at {won['ratio']:g} (within one test image)"
        else:
            lead = f"{'one-shot' if gap > 0 else won['best_iterative']} ahead at {won['ratio']:g}"
        return (
            f"{lead} (one-shot minus the best iterative regime, {won['best_iterative']}: {gap:+.3f}; "
            f"mean of {len(values['seeds'])} seeds)"
        )

    def crossing(values: dict | None, granularity: str) -> str | None:
        if not values or granularity not in values:
            return None
        return _crossover_text(values[granularity]["crossover"]["geometric"])

    def patience(values: dict | None) -> str | None:
        if not values or "unstructured" not in values:
            return None
        part = values["unstructured"]
        curves = [c for c in part["epochs"] if c.startswith("patience")]
        top = max(part["mean_accuracy"]["one-shot"], key=float)
        bits = [
            f"{c}: {part['mean_accuracy'][c][top]:.3f} at {top} using {part['epochs'][c]:.0f} epochs on average"
            for c in curves
        ]
        return (
            "; ".join(bits)
            + f" vs one-shot {part['mean_accuracy']['one-shot'][top]:.3f} with {part['epochs']['one-shot']:.0f}"
        )

    def hybrid(values: dict | None) -> str | None:
        if not values or "unstructured" not in values:
            return None
        means = values["unstructured"]["mean_accuracy"]
        above = [r for r in means["hybrid"] if float(r) > values["hybrid_start"]]
        wins = sum(means["hybrid"][r] >= max(means["one-shot"][r], means["geometric"][r]) for r in above)
        return (
            f"hybrid at least as good as both one-shot and geometric at {wins} of {len(above)} ratios > its start"
        )

    rows = [
        ("winner at the lowest ratio (unstructured)", PAPER_CLAIMS["low"], "unstructured", "low"),
        ("winner at the highest ratio (unstructured)", PAPER_CLAIMS["high"], "unstructured", "high"),
        ("winner at the lowest ratio (structured)", PAPER_CLAIMS["low"], "structured", "low"),
        ("winner at the highest ratio (structured)", PAPER_CLAIMS["high"], "structured", "high"),
    ]
    table = [
        {
            "quantity": quantity,
            "paper": claim,
            "this_run": describe(summary, granularity, end),
            "full_run": describe(full, granularity, end),
            "note": "compute-matched regimes only; paper: abstract",
        }
        for quantity, claim, granularity, end in rows
    ]
    table += [
        {
            "quantity": "geometric overtakes one-shot at (unstructured)",
            "paper": PAPER_CLAIMS["crossover"],
            "this_run": crossing(summary, "unstructured"),
            "full_run": crossing(full, "unstructured"),
            "note": "interpolated between grid ratios, per seed",
        },
        {
            "quantity": "geometric overtakes one-shot at (structured)",
            "paper": PAPER_CLAIMS["crossover"],
            "this_run": crossing(summary, "structured"),
            "full_run": crossing(full, "structured"),
            "note": "channel ratio per layer",
        },
        {
            "quantity": "patience-based pruning at the highest ratio",
            "paper": PAPER_CLAIMS["patience"],
            "this_run": patience(summary),
            "full_run": patience(full),
            "note": "not compute-matched: patience runs report the epochs they used",
        },
        {
            "quantity": "hybrid schedule",
            "paper": PAPER_CLAIMS["hybrid"],
            "this_run": hybrid(summary),
            "full_run": hybrid(full),
            "note": "below its start ratio hybrid is one-shot by definition",
        },
    ]
    return table


def closing_note(summary: dict, notebook_seconds: float, mode: str) -> str:
    """The notebook's last word: its time, the crossover seen, what structured pruning bought, the paper."""
    lines = [f"This {mode}-mode run took {notebook_seconds:.0f} s from setup to here ({summary['dataset']}, "
             f"{len(summary['seeds'])} seeds; the sweep itself {summary['sweep_seconds']:.0f} s)."]  # fmt: skip
    for granularity in ("unstructured", "structured"):
        if granularity in summary:
            lines.append(
                f"Crossover, {granularity}: "
                + _crossover_text(summary[granularity]["crossover"]["geometric"])
                + "."
            )
    costs = summary.get("structured_costs", {})
    if costs:
        parts = [f"{r}: FLOPs x{c['flop_ratio']:.2f}, latency x{c['latency_ratio']:.2f}" for r, c in costs.items()]
        lines.append(
            "Structured pruning, measured against the dense model (channel ratio: ratios): "
            + "; ".join(parts)
            + "."
        )
    lines.append(f"The paper: {PAPER_CLAIMS['low']}, {PAPER_CLAIMS['high']}.")
    return "\n".join(lines)
