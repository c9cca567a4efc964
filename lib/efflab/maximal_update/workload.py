"""The work of a budget of notebook 07, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

import torch

from efflab.data.text import ByteCorpus
from efflab.experiment import seeds_for
from efflab.maximal_update.coordinate_check import ActivationRecorder
from efflab.maximal_update.experiment import MupBudget, coordinate_tasks, sweep_tasks
from efflab.maximal_update.parameterization import parameterize
from efflab.train import TrainConfig, cross_entropy, language_model_loss, make_optimizer
from efflab.workload import Work, on_gpu_path

EVAL_BATCH_SIZE = 16  # the sweep's validation windows per batch (train_for_sweep)


def workload(budget: MupBudget) -> list[Work]:
    """The coordinate checks (every parameterization and seed at each width, the activations recorded at every
    step), the sweeps' trainings (each distinct model once: the sweeps share some points) and their final
    evaluations. A run whose loss overflows stops there, so the steps are an upper bound. Steps run on the path
    a GPU takes (:func:`efflab.workload.on_gpu_path`), on batches of random bytes."""
    if not isinstance(budget, MupBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a MupBudget")
    seeds = seeds_for(0, max(budget.coord_seeds, budget.sweep_seeds, budget.moe_sweep_seeds))
    corpus = ByteCorpus(*torch.randint(0, 256, (2, 64 * budget.block_size), dtype=torch.uint8))
    work = []
    for tasks in _by_model(coordinate_tasks(budget, seeds[: budget.coord_seeds], "cpu")):
        task = tasks[0]
        config = TrainConfig(steps=task.steps, lr=task.lr, warmup_steps=0, min_lr_ratio=1.0, grad_clip=None)
        step = _training_step(task, config, corpus, recorded=True)
        work.append(Work(f"coordinate check, width {task.width}", len(tasks), task.steps, step, pool="check"))
    sweeps = sweep_tasks(budget, seeds[: budget.sweep_seeds], seeds[: budget.moe_sweep_seeds], "cpu")
    unique = list(dict.fromkeys([*sweeps["width"], *sweeps["expansion"], *sweeps["granularity"]]))
    for tasks in _by_model(unique):
        task = tasks[0]
        name = f"sweep, width {task.width}, E={task.family.expansion}, G={task.family.granularity}"
        config = TrainConfig(steps=task.steps, lr=task.lr, warmup_steps=task.warmup_steps, grad_clip=None)
        training = _training_step(task, config, corpus, recorded=False)
        evaluation = _evaluation_step(task, corpus)
        work += [
            Work(f"{name}: training", len(tasks), task.steps, training, pool="sweeps"),
            Work(f"{name}: evaluation", len(tasks), task.eval_batches, evaluation, trains=False, pool="sweeps"),
        ]
    return work


def _by_model(tasks: list) -> list[list]:
    """The tasks grouped by the model they train (family and width; a parameterization changes no shape)."""
    groups: dict[tuple, list] = {}
    for task in tasks:
        groups.setdefault((task.family, task.width), []).append(task)
    return list(groups.values())


def _built(task):
    built = parameterize(task.family, task.width, task.parameterization, task.multipliers, seed=task.seed)
    on_gpu_path(built.model)
    return built


def _training_step(task, config: TrainConfig, corpus: ByteCorpus, *, recorded: bool):
    """One step of :func:`efflab.train.fit` on the task's model and batch size, at the peak rate; ``recorded``:
    with the coordinate check's hooks reading every activation."""
    built = _built(task)
    model, family = built.model, task.family
    optimizer = make_optimizer(model, config, built.parameter_groups())
    generator = torch.Generator().manual_seed(task.seed)

    def one_step() -> float:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group["lr_scale"]
        model.train()
        x, y = corpus.get_batch("train", task.batch_size, task.block_size, generator=generator)
        loss = cross_entropy(model, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        return loss.item()

    def step() -> float:
        if not recorded:
            return one_step()
        with ActivationRecorder(model, family):
            return one_step()

    return step


def _evaluation_step(task, corpus: ByteCorpus):
    model = _built(task).model

    def step():
        model.eval()
        with torch.no_grad():
            return language_model_loss(
                model, corpus, batches=1, batch_size=EVAL_BATCH_SIZE, block_size=task.block_size
            )

    return step
