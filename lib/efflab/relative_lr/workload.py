"""The work of a budget of notebook 08, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from efflab.data.text import ByteCorpus
from efflab.relative_lr.experiment import (
    ARCHITECTURES,
    EVAL_SEED,
    LABELS,
    PRESETS,
    RelativeLRBudget,
    TrainTask,
    _task,
    final_fraction,
    shape_model,
)
from efflab.relative_lr.groups import partition, present_groups
from efflab.relative_lr.measures import UpdateTracker
from efflab.relative_lr.schedule import paper_preset, relative_schedule
from efflab.relative_lr.search import FACTORS, schedule_knobs
from efflab.train import cross_entropy, language_model_loss, make_optimizer, run_evaluation
from efflab.workload import Work, on_gpu_path


def workload(budget: RelativeLRBudget) -> list[Work]:
    """Three pools of runs, both architectures' together, each run as its training, its validation passes (one
    batch a step) and, where the experiment tracks them, its update-size measurements:

    * at the comparison's length: the η sweep, the three presets on every seed (the sweep's run at the chosen η
      is the first seed's uniform run, trained once) and the ablation (not tracked);
    * the search's proxy trials, evaluated once, at their end; the two searches hand their batches of up to
      four trials to the executor together, so eight run side by side;
    * in full mode, the transfer's sweep and presets on the larger model (not tracked).

    Two counts are upper bounds. The search ends at ``search_evaluations`` trials or once every knob of every
    pass has tried its four factors, whichever comes first; a pass that changes nothing, or a factor that lands
    on a point already tried, ends it sooner. And the found preset's runs are counted, though they are the
    uniform runs again (trained once) when the search kept its starting point.
    """
    if not isinstance(budget, RelativeLRBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a RelativeLRBudget")
    presets = len(PRESETS) * budget.seeds - 1
    proxy, search, transfer = [], [], []
    for arch in ARCHITECTURES:
        label = LABELS[arch]
        resets = sum(pair != (1.0, 1.0) for pair in paper_preset(arch).multipliers.values())
        ablation = resets * budget.ablation_seeds if arch in budget.ablation else 0
        main = _task_of(budget, arch, budget.steps, budget.warmup_steps)
        proxy += _runs(f"{label}: η sweep, presets and ablation", main, len(budget.lr_grid) + presets, ablation)
        knobs = schedule_knobs(present_groups(shape_model(budget, arch)), include_global=budget.search_global)
        trials = min(budget.search_evaluations, 1 + budget.search_passes * len(FACTORS) * len(knobs))
        trial = _task_of(budget, arch, budget.search_steps, budget.search_warmup, track=False, curve=False)
        search += _runs(f"{label}: search trials", trial, trials, side_by_side=len(FACTORS) * len(ARCHITECTURES))
        if budget.transfer_steps:
            larger = _task_of(budget, arch, budget.transfer_steps, budget.transfer_warmup, shape="transfer")
            transfer += _runs(
                f"{label}: transfer sweep and presets", larger, len(budget.transfer_lr_grid) + presets
            )
    pools = {"η sweep, presets and ablation": proxy, "search": search, "transfer": transfer}
    return [replace(work, pool=pool) for pool, works in pools.items() for work in works]


def _task_of(budget: RelativeLRBudget, arch: str, steps: int, warmup: int, **options) -> TrainTask:
    """The experiment's task for one run of ``steps`` steps (its η, multipliers and seed change no cost)."""
    schedule = relative_schedule(
        min(budget.lr_grid), steps, warmup_steps=warmup, final_fraction=final_fraction(arch)
    )
    return _task(budget, arch, schedule, 0, "cpu", **options)


def _runs(
    what: str, task: TrainTask, runs: int, untracked: int = 0, side_by_side: int | None = None
) -> list[Work]:
    """``runs + untracked`` runs of ``task``: their steps; their validation batches (``eval_batches`` at every
    evaluation: every ``eval_every`` steps and after the last, or after the last only); and, when the task
    tracks, the update-size measurements of the first ``runs`` (one every ``track_every`` updates but the last).
    An MoE runs its experts on the path a GPU takes."""
    model = on_gpu_path(task.build_model())
    data = torch.randint(0, 256, (10 * task.block_size,), dtype=torch.uint8)
    corpus = ByteCorpus(train=data, val=data)
    steps, every = task.schedule.steps, task.eval_every
    evaluations = steps // every + (steps % every != 0) if every else 1

    def validation():
        return run_evaluation(
            model, lambda m: language_model_loss(m, corpus, batches=1, batch_size=task.batch_size, seed=EVAL_SEED)
        )

    works = [
        Work(what, runs + untracked, steps, _fit_step(model, task, corpus), side_by_side=side_by_side),
        Work(
            f"{what}: validation",
            runs + untracked,
            evaluations * task.eval_batches,
            validation,
            side_by_side=side_by_side,
            trains=False,
        ),
    ]
    measurements = len(range(0, steps - 1, task.track_every)) if task.track_every else 0
    if measurements:
        works.append(Work(f"{what}: update sizes", runs, measurements, _measure_step(model), trains=False))
    return works


def _fit_step(model: nn.Module, task: TrainTask, corpus: ByteCorpus) -> Callable[[], float]:
    """One step of :func:`efflab.train.fit` as ``train_task`` takes it: each group's rate from its schedule, a
    batch of windows, the loss and its finiteness check, backward, clipping, the fused AdamW step, the loss
    read back."""
    config = task.schedule.train_config(eval_every=task.eval_every, weight_decay=task.weight_decay)
    optimizer = make_optimizer(model, config, task.schedule.param_groups(model))
    generator = torch.Generator().manual_seed(task.seed)

    def step() -> float:
        for group in optimizer.param_groups:
            group["lr"] = group["lr_schedule"](config.warmup_steps)
        model.train()
        loss = cross_entropy(
            model, *corpus.get_batch("train", task.batch_size, task.block_size, generator=generator)
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        return loss.item()

    return step


def _measure_step(model: nn.Module) -> Callable[[], object]:
    """One update-size measurement: the copy of every group's weights before an update and, at the next step,
    the norms of the change and of the weights (an :class:`UpdateTracker` measuring at every call, its loss
    left out: the training step already pays for it)."""
    parameters = dict(model.named_parameters())
    groups = {group: [parameters[name] for name in names] for group, names in partition(model).items()}
    tracker = UpdateTracker(groups, 1, loss_fn=lambda *_: None)
    tracker(model, None, None)  # the first call only copies; each later one measures and copies again
    return lambda: tracker(model, None, None)
