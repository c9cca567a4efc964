"""The work of a budget of notebook 04, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from efflab.early_exit.exits import (
    activation_ranks,
    cost_accuracy_curve,
    exit_costs,
    exit_logits_on,
    head_accuracies,
    multi_exit_loss,
)
from efflab.early_exit.experiment import (
    TIMED_REGIMES,
    EarlyExitBudget,
    TrainingTask,
    check_budget,
    load_study_data,
    make_network,
    plan_tasks,
)
from efflab.flops import module_forward_flops
from efflab.train import TrainConfig, make_optimizer
from efflab.workload import Work, forward_step, training_step

PHASES = {
    "backbone": "phase 1, the backbone alone",
    "joint": "phase 2, backbone and heads together",
    "heads": "phase 3, the heads on the frozen backbone, at most",
}


def _heads_step(network, batch, config: TrainConfig):
    """One step of disjoint's phase 3 (:func:`~efflab.early_exit.exits.train_heads_early_stopping`) with every
    head still training: the frozen stages without gradients, then the heads' loss, clipped, one AdamW step."""
    network.freeze_backbone()
    heads = list(network.heads)
    optimizer = make_optimizer(network, config, [{"params": list(head.parameters())} for head in heads])
    heads_at = {stage: h for h, stage in enumerate(network.place_at)}

    def step() -> float:
        network.train()
        x, y = batch()
        with torch.no_grad():
            hidden, inputs = x, {}
            for index, stage in enumerate(network.stages[: max(network.place_at) + 1]):
                hidden = stage(hidden)
                if index in heads_at:
                    inputs[heads_at[index]] = hidden
        losses = [F.cross_entropy(heads[h](features), y) for h, features in inputs.items()]
        loss = torch.stack(losses).sum() / network.num_exits
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(network.head_parameters(), config.grad_clip)
        optimizer.step()
        return loss.item()

    return step


def _phases(task: TrainingTask, continues: bool):
    """The phases ``train_task`` trains for ``task``; ``continues``: it starts from a phase-1 backbone."""
    if task.regime is None:
        return replace(task.schedule, exit_steps=0).phases("mixed")
    return tuple(p for p in task.schedule.phases(task.regime) if not (continues and p.trains == "backbone"))


def workload(budget: EarlyExitBudget) -> list[Work]:
    """Both rounds of trainings, phase by phase (runs of equal phase and length together), with disjoint's
    validation checks and the scoring inside every task that trains a regime (every exit's test logits, the
    cost-accuracy curve on CPU, and for the main comparison the activation ranks); then the timing of real early
    exits and of the breakdown by part, one after another in the notebook's process.

    Disjoint's phase 3 stops each head early, so its steps and checks are upper bounds: every head stops after at
    least ``patience + 1`` checks. The timing steps use an untrained network: its heads, at most about 0.3 sure,
    let no sample out early at the budgets' thresholds from 0.5 up, so every sample pays for the whole network
    and every head, an upper bound (at 0 every sample leaves at the first exit, as in the study). The FLOP
    counts of each exit on one sample are left out.
    """
    check_budget(budget)
    data = load_study_data(budget, 0)  # the splits' sizes do not depend on the seed
    train_x, train_y = data.train.x[: budget.batch_size], data.train.y[: budget.batch_size]

    def batch():
        return train_x, train_y

    def network():
        return make_network(budget, 0)

    config = TrainConfig(1, budget.backbone_lr)
    plain, joint, frozen = network(), network(), network()
    groups = [{"params": list(joint.backbone.parameters())}, {"params": joint.head_parameters()}]
    steps = {
        "backbone": training_step(plain.backbone, batch, config=config),
        "joint": training_step(joint, batch, multi_exit_loss, config=config, param_groups=groups),
        "heads": _heads_step(frozen, batch, config),
    }
    example = data.test.x[:1]
    costs, backbone_flops = exit_costs(joint, example), module_forward_flops(joint.backbone, example)
    logits = torch.randn(joint.num_exits, len(data.test), budget.model_config().num_classes)
    first, recipe = plan_tasks(budget, range(budget.seeds))
    second = [TrainingTask(budget, seed, regime, share, main=main) for seed, regime, share, main in recipe]
    works = []
    for name, tasks, continues in (("phase 1 and joint", first, False), ("later phases", second, True)):
        phases = Counter((phase.trains, phase.steps) for task in tasks for phase in _phases(task, continues))
        for (trains, length), runs in phases.items():
            what = f"{name}: {PHASES[trains]} {length} steps"
            works.append(Work(what, runs, length, steps[trains], pool=name))
            if trains == "heads":
                checks = length // budget.check_every + (length % budget.check_every != 0)
                works.append(
                    Work(
                        f"{what}, its validation checks",
                        runs,
                        checks,
                        lambda: head_accuracies(frozen, data.val.x, data.val.y),
                        trains=False,
                        pool=name,
                    )
                )
        scored = [task for task in tasks if task.regime is not None]
        works += [
            Work(
                f"{name}: every exit's test logits",
                len(scored),
                1,
                lambda: exit_logits_on(joint, data.test.x),
                trains=False,
                pool=name,
            ),
            Work(
                f"{name}: the cost-accuracy curve (CPU)",
                len(scored),
                1,
                lambda: cost_accuracy_curve(logits, data.test.y, costs, backbone_flops=backbone_flops),
                on="cpu",
                trains=False,
                pool=name,
            ),
            Work(
                f"{name}: activation ranks of the main comparison",
                sum(task.main for task in scored),
                1,
                lambda: activation_ranks(joint, data.train.x[: budget.rank_samples], rtol=budget.rank_rtol),
                trains=False,
                pool=name,
            ),
        ]
    timed = network().eval()
    test_x = data.test.x.contiguous(memory_format=torch.channels_last)
    rounds = budget.timing_repeats + 1  # one warm-up round, then the timed ones

    def timing_round(threshold):
        @torch.no_grad()
        def step():
            timed.backbone(test_x)
            timed.early_exit_forward(test_x, threshold)

        return step

    works += [
        Work(
            f"timing real exits at threshold {threshold:g}, one regime at a time",
            len(TIMED_REGIMES),
            rounds,
            timing_round(threshold),
            side_by_side=1,
            trains=False,
        )
        for threshold in budget.timing_thresholds
    ]
    works.append(Work("time breakdown by part", 1, rounds, forward_step(timed, lambda: (test_x,)), trains=False))
    return works
