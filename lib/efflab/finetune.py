"""Fine-tuning a pruned network: a fixed budget of optimiser steps, or patience; the best checkpoint is kept.

Both pruning notebooks (one-shot vs iterative, Shapley-value pruning) repair a pruned classifier the same way, as
the authors of the first do: a fresh optimiser for every phase (the old moments describe weights that are gone),
the validation split scored after every epoch, and the best checkpoint (by validation accuracy, ties broken by
validation loss) restored at the end. A phase runs either a fixed number of steps (``steps``), so that regimes
compared at equal compute spend the same, or until ``patience`` epochs have passed without improvement.
:func:`scheduled_count` is the rounding rule both use to turn a ratio into a whole number of units to remove.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from efflab.data.digits import Split, infinite_batches
from efflab.train import (
    TrainConfig,
    classification_metrics,
    cross_entropy,
    make_optimizer,
    model_device,
    run_evaluation,
)
from efflab.validation import check_fraction, check_int, check_positive, check_seed

_COUNT_SLACK = 1e-9


def scheduled_count(ratio: float, total: int) -> int:
    """How many of ``total`` units a cumulative ``ratio`` removes: ``floor(ratio * total)``.

    Rounding down keeps the count monotone in the ratio (nested schedules stay nested) and, for ``ratio < 1``,
    always leaves at least one unit, which matters for a 16-channel layer at 98 %.
    """
    check_fraction("ratio", ratio, inclusive=True)
    check_int("total", total, low=0)
    return min(total, math.floor(ratio * total + _COUNT_SLACK))


@dataclass(frozen=True)
class FinetuneBudget:
    """How pruned models are fine-tuned.

    ``epochs`` is the *total* fine-tuning budget of a run, in passes over the training split, split evenly over
    its pruning steps (so every fixed regime spends the same). A run with ``patience`` ignores ``epochs``: each
    of its phases runs until the validation accuracy has not improved for ``patience`` epochs, at most
    ``max_epochs_per_step``, and the run reports what it spent.
    """

    epochs: float = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs_per_step: int = 30
    min_delta: float = 1e-4  # a validation-accuracy gain no larger than this does not reset the patience count

    def __post_init__(self):
        check_positive("epochs", self.epochs)
        check_int("batch_size", self.batch_size, low=1)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_int("max_epochs_per_step", self.max_epochs_per_step, low=1)
        check_positive("min_delta", self.min_delta, allow_zero=True)

    def steps_per_epoch(self, train: Split) -> int:
        return max(1, len(train) // self.batch_size)


def _better(metrics: dict[str, float], best: dict[str, float]) -> bool:
    """Higher validation accuracy wins; on a tie (a few hundred images give coarse accuracies), lower loss."""
    if metrics["val_accuracy"] != best["val_accuracy"]:
        return metrics["val_accuracy"] > best["val_accuracy"]
    return metrics["val_loss"] < best["val_loss"]


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@dataclass
class Phase:
    """What one fine-tuning phase did: optimiser steps, epochs and the best validation checkpoint's metrics."""

    steps: int
    epochs: float
    val_loss: float
    val_accuracy: float
    best_epoch: float


def finetune(
    model: nn.Module,
    train: Split,
    val: Split,
    budget: FinetuneBudget,
    *,
    steps: int | None = None,
    patience: int | None = None,
    seed: int = 0,
    on_epoch: Callable[[float], None] | None = None,
) -> Phase:
    """Fine-tune ``model`` in place, for ``steps`` optimiser steps or with ``patience``; keep the best checkpoint.

    The validation split is scored after every epoch (and at the end). The best checkpoint, by validation
    accuracy with ties broken by validation loss, and counting the model as it came in, is restored at the end;
    the authors' code does the same. With ``patience``, training stops once ``patience`` consecutive epochs have
    not raised the best validation accuracy by more than ``budget.min_delta`` (or after
    ``max_epochs_per_step``); ``patience=0`` therefore means one epoch per step.
    ``on_epoch(epochs)`` is called after each evaluation, for progress bars.
    """
    if (steps is None) == (patience is None):
        raise ValueError("pass exactly one of steps (a fixed budget) or patience (early stopping)")
    if steps is not None:
        check_int("steps", steps, low=0)
    else:
        check_patience(patience)
    if not isinstance(budget, FinetuneBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a FinetuneBudget")
    for name, split in (("train", train), ("val", val)):
        if not isinstance(split, Split) or len(split) == 0:
            raise ValueError(f"{name} must be a non-empty Split of images and labels; got {type(split).__name__}")
    check_seed(seed)
    model_device(model)  # a model without parameters has nothing to fine-tune
    per_epoch = budget.steps_per_epoch(train)
    limit = steps if steps is not None else budget.max_epochs_per_step * per_epoch
    # A fresh optimiser for every phase, as the authors do: old moments describe weights that are gone.
    optimizer = make_optimizer(model, TrainConfig(steps=1, lr=budget.lr, weight_decay=budget.weight_decay))
    batches = infinite_batches(train, min(budget.batch_size, len(train)), seed=seed)

    def score() -> dict[str, float]:
        return run_evaluation(model, lambda m: classification_metrics(m, val.x, val.y))

    best = score()
    best_state, best_step, since_best, done = _snapshot(model), 0, 0, 0
    model.train()
    while done < limit:
        x, y = next(batches)
        loss = cross_entropy(model, x.to(model_device(model)), y.to(model_device(model)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        if done % per_epoch and done != limit:
            continue
        metrics = score()
        improved = metrics["val_accuracy"] > best["val_accuracy"] + budget.min_delta
        if _better(metrics, best):
            best, best_state, best_step = metrics, _snapshot(model), done
        since_best = 0 if improved else since_best + 1
        if on_epoch is not None:
            on_epoch(done / per_epoch)
        if patience is not None and since_best >= patience:
            break
    model.load_state_dict(best_state)
    return Phase(done, done / per_epoch, best["val_loss"], best["val_accuracy"], best_step / per_epoch)


def check_patience(patience, name: str = "patience") -> None:
    """Patience counts epochs without improvement; 0 stops at the first epoch that does not improve."""
    check_int(name, patience, low=0)
