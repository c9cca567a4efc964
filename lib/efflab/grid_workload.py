"""The work of a grid of :mod:`efflab.lm_grid`, for the full-mode plan (:mod:`efflab.workload`): what notebooks
05 and 06 train, and the law points their fits work through."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from efflab.data.text import ByteCorpus
from efflab.lm_grid import (
    DECAYED,
    DENSE,
    GridBudget,
    GridResults,
    RunSpec,
    build_model,
    expansion_of,
    law_parameters,
    optimiser_step,
)
from efflab.train import TrainConfig, language_model_loss, make_optimizer
from efflab.workload import Work, on_gpu_path


def grid_work(budget: GridBudget) -> list[Work]:
    """Two items for every distinct model of ``budget.specs()`` (its runs differ only by seed): the optimiser
    steps of the stable phase and every cooldown, and the forward passes of the evaluations (``eval_batches``
    batches at every ``eval_every`` step, at each checkpoint and after each cooldown) with, for an MoE, the router
    snapshot's one batch. ``budget.workers`` runs train at once. A step runs on the path a GPU takes
    (:func:`efflab.workload.on_gpu_path`), on batches of random bytes."""
    cooldowns = dict(budget.branches())
    stable = sum(1 for done in range(1, budget.steps + 1) if done % budget.eval_every == 0 or done in cooldowns)
    evaluation_batches = (stable + len(cooldowns)) * budget.eval_batches
    corpus = ByteCorpus(*torch.randint(0, 256, (2, 64 * budget.block_size), dtype=torch.uint8))
    runs: dict[RunSpec, int] = {}
    for spec in budget.specs():
        model_of = replace(spec, seed=0)
        runs[model_of] = runs.get(model_of, 0) + 1
    work = []
    for spec, count in runs.items():
        model = on_gpu_path(build_model(spec, budget))
        name = f"d={spec.width} {spec.label}"
        router_batches = int(spec.granularity != DENSE)
        work += [
            Work(
                f"{name}: training",
                count,
                budget.steps_per_run(),
                _training_step(model, spec, budget, corpus),
                side_by_side=budget.workers,
                pool="grid",
            ),
            Work(
                f"{name}: evaluations",
                count,
                evaluation_batches + router_batches,
                _evaluation_step(model, budget, corpus),
                side_by_side=budget.workers,
                pool="grid",
                trains=False,
            ),
        ]
    return work


def _training_step(model, spec, budget, corpus):
    peak = budget.learning_rate(spec)
    optimizer = make_optimizer(model, TrainConfig(steps=budget.steps, lr=peak, weight_decay=0.1))
    generator = torch.Generator().manual_seed(spec.seed)

    def step():
        batch = corpus.get_batch("train", budget.batch_size, budget.block_size, generator=generator)
        optimiser_step(model, optimizer, batch, peak, torch.device("cpu"))

    return step


def _evaluation_step(model, budget, corpus):
    def step():
        model.eval()
        with torch.no_grad():
            return language_model_loss(model, corpus, batches=1, batch_size=budget.batch_size)

    return step


def grid_like_results(budget: GridBudget, seed: int = 0) -> GridResults:
    """The law points a grid gives (one per run and cooldown, with the run's parameter counts and tokens) and
    losses drawn around a power law in N and D, with a little noise: the size of what the fits work through."""
    generator = np.random.default_rng(seed)
    rows = []
    for spec in budget.specs(seed):
        config = budget.model_config(spec.width)
        expansion = expansion_of(spec, budget)
        params, active = law_parameters(config, expansion), law_parameters(config, 1)
        for checkpoint, cooldown in budget.branches():
            tokens = (checkpoint + cooldown) * budget.tokens_per_step
            loss = 0.8 + 0.6 * (active / 1e5) ** -0.3 * (params / active) ** -0.05 + 0.8 * (tokens / 1e6) ** -0.3
            rows.append(
                {
                    "label": spec.label,
                    "routing": "dense" if spec.granularity == DENSE else spec.routing,
                    "width": spec.width,
                    "granularity": spec.granularity,
                    "expansion": expansion,
                    "seed": spec.seed,
                    "params": params,
                    "active_params": active,
                    "phase": DECAYED,
                    "step": checkpoint + cooldown,
                    "tokens": tokens,
                    "val_loss": loss * (1 + 0.01 * generator.standard_normal()),
                }
            )
    return GridResults(budget, pd.DataFrame(rows), pd.DataFrame())
