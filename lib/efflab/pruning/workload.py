"""The work of a budget of notebook 01, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from efflab.data.digits import Digits, load_digits
from efflab.experiment import seeds_for
from efflab.models.cnn import CNN
from efflab.pruning.experiment import PruneTask, PruningBudget, build_tasks
from efflab.pruning.pruners import (
    UNSTRUCTURED_CRITERIA,
    StructuredPruner,
    UnstructuredPruner,
    compare_latency,
    make_schedule,
    split_steps,
)
from efflab.train import TrainConfig, classification_metrics, run_evaluation
from efflab.workload import Work, training_step

KINDS = {"main": "matched-budget runs", "budget": "budget-study runs", "patience": "patience runs and their twins"}


def workload(budget: PruningBudget) -> list[Work]:
    """The dense CNNs; every pruning run's fine-tuning and its passes over the validation and test splits; the
    damage study; the latency timing of the structured models. All but the timing runs on the run's device (the
    GPU in full mode, several runs sharing it); the timing is on a CPU core, one thread, on purpose.

    The pruning runs are one pool, in the order the experiment hands them to the executor (the costliest
    first), grouped by kind, granularity, pruning steps and budget. Three counts are upper bounds: a patience
    phase stops on its own, so it (and its twin after it) is counted at ``max_epochs_per_step`` epochs; runs
    that remove channels are priced at the dense width; every validation pass is priced as a pass over the
    larger test split. Left out: the pruning steps themselves (milliseconds each) and each dense network's
    one test pass."""
    if not isinstance(budget, PruningBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a PruningBudget")
    data = load_digits(0)  # every seed's split has the same sizes
    tasks = build_tasks(budget, {seed: {} for seed in seeds_for(0, budget.seeds)})
    config = budget.model_config()
    masked = CNN(config)  # a masked network costs the same at any ratio
    UnstructuredPruner(masked, dict(budget.main_criteria)["unstructured"]).prune_to(budget.budget_ratio)
    pruned = {"unstructured": masked, "structured": CNN(config)}

    batch = min(budget.finetune.batch_size, len(data.train))  # the dense training's and every fine-tuning's
    dense_steps = budget.dense_epochs * max(1, len(data.train) // batch)
    dense = TrainConfig(steps=dense_steps, lr=budget.dense_lr, weight_decay=1e-4)
    works = [Work("dense CNNs", budget.seeds, dense_steps, _training_step(CNN(config), data, batch, dense))]
    finetune = TrainConfig(
        steps=1, lr=budget.finetune.lr, weight_decay=budget.finetune.weight_decay, grad_clip=None
    )
    for (kind, granularity, phases, epochs), (runs, steps, passes) in _pruning_runs(budget, tasks, data).items():
        at = f" at {epochs:g} epochs" if kind == "budget" else ""
        what = f"{granularity} {KINDS[kind]}{at}, {phases} pruning step{'s' * (phases > 1)}"
        bound = " (at most)" if kind == "patience" else ""
        model, pool = pruned[granularity], "pruning runs"
        if steps:
            step = _training_step(model, data, batch, finetune)
            works.append(Work(f"{what}: fine-tuning{bound}", runs, steps, step, pool=pool))
        step = _test_pass(model, data)
        works.append(Work(f"{what}: scoring{bound}", runs, passes, step, trains=False, pool=pool))

    damage = len(UNSTRUCTURED_CRITERIA) * len(budget.unstructured_ratios)
    works.append(Work("accuracy right after masking", 1, damage, _test_pass(masked, data), trains=False))
    inputs = data.test.x[torch.arange(budget.latency_batch) % len(data.test)]
    timed = [CNN(config)]
    for task in tasks:
        if task.keep_model:
            timed.append(CNN(config))
            StructuredPruner(timed[-1], task.criterion, example_inputs=inputs[:2]).prune_to(task.ratio)
    rounds = inspect.signature(compare_latency).parameters["warmup"].default + budget.latency_repeats
    works.append(
        Work("latency of the structured models", 1, rounds, _forwards(timed, inputs), on="cpu", trains=False)
    )
    return works


def _pruning_runs(
    budget: PruningBudget, tasks: list[PruneTask], data: Digits
) -> dict[tuple, tuple[int, int, int]]:
    """(kind, granularity, pruning steps, epochs) -> (runs, optimiser steps a run, validation and test passes a
    run), in the order the experiment hands the runs to the executor."""
    per_epoch = budget.finetune.steps_per_epoch(data.train)
    cap = budget.finetune.max_epochs_per_step
    groups: dict[tuple, tuple[int, int, int]] = {}
    for task in sorted(tasks, key=lambda task: -task.cost):
        phases = make_schedule(task.regime, task.ratio, steps=task.steps, hybrid_start=task.hybrid_start).steps
        if task.kind == "patience":  # every phase at its cap, and the twin spends as much again
            steps, passes = 2 * phases * cap * per_epoch, 2 * phases * (cap + 2)
        else:  # validation before each phase and after each epoch (the last may be partial), test after it
            lengths = split_steps(round(task.epochs * per_epoch), phases)
            steps, passes = sum(lengths), sum(2 + math.ceil(length / per_epoch) for length in lengths)
        key = (task.kind, task.granularity, phases, task.epochs)
        groups[key] = (groups.get(key, (0,))[0] + 1, steps, passes)
    return groups


def _training_step(model: nn.Module, data: Digits, batch_size: int, config: TrainConfig):
    """One optimiser step on the first ``batch_size`` training digits, as fit and fine-tuning take it."""
    x, y = data.train.x[:batch_size], data.train.y[:batch_size]
    return training_step(model, lambda: (x, y), config=config)


def _test_pass(model: nn.Module, data: Digits):
    """One scoring of ``model`` on the test split, as the experiment scores its networks."""

    def step():
        return run_evaluation(model, lambda m: classification_metrics(m, data.test.x, data.test.y, prefix="test"))

    return step


def _forwards(models: list[nn.Module], inputs: torch.Tensor):
    """One round of the latency timing: every model once, in inference mode."""

    def step():
        with torch.inference_mode():
            for model in models:
                model.eval()(inputs)

    return step
