"""The work of a budget of notebook 00, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

import torch

from efflab.first_steps.experiment import ByteLMBudget
from efflab.models.gpt import TinyLM
from efflab.train import cross_entropy
from efflab.workload import Work, forward_step, training_step


def workload(budget: ByteLMBudget) -> list[Work]:
    """One byte LM's training, its evaluations, and the temperature table's samples, one byte at a time."""
    if not isinstance(budget, ByteLMBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a ByteLMBudget")
    model = TinyLM(budget.model_config())

    def windows(batch_size, length=budget.block_size):
        x = torch.randint(0, 256, (batch_size, length))
        return lambda: (x, torch.roll(x, -1, 1))

    evaluations = budget.steps // budget.eval_every + (budget.steps % budget.eval_every != 0)
    samples = len(budget.temperatures) * budget.sample_length
    return [
        Work("training", 1, budget.steps, training_step(model, windows(budget.batch_size), cross_entropy)),
        Work(
            "validation",
            1,
            evaluations * budget.eval_batches,
            forward_step(model, lambda: windows(budget.batch_size)()[:1]),
            trains=False,
        ),
        Work("samples", 1, samples, forward_step(model, lambda: windows(1)()[:1]), trains=False),
    ]
