"""One training loop for every notebook: classifiers on digits and canvases, language models on bytes.

The loop is deliberately plain (AdamW or SGD, linear warmup then cosine decay, gradient clipping) so that the
papers' ideas stay visible where they belong: a pruning schedule wraps ``fit`` between pruning steps, a
per-component learning-rate experiment passes parameter groups with their own ``lr_scale``, an MoE adds its
load-balancing loss through ``model.aux_loss``. What comes back is a pandas table with one row per step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from efflab.validation import check_choice, check_fraction, check_int, check_positive, check_range, check_seed

Batch = tuple[Tensor, Tensor]
LossFunction = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Budget and optimiser settings of one run.

    ``eval_every=0`` evaluates only once, after the last step. ``min_lr_ratio`` is where the cosine ends, as a
    fraction of the peak learning rate.
    """

    steps: int
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    eval_every: int = 0
    grad_clip: float | None = 1.0
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.9

    def __post_init__(self):
        check_int("steps", self.steps, low=1)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps)
        check_fraction("min_lr_ratio", self.min_lr_ratio, inclusive=True)
        check_int("eval_every", self.eval_every, low=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise ValueError(f"betas={self.betas!r} is not allowed; expected a pair (beta1, beta2)")
        for index, beta in enumerate(self.betas):
            check_range(f"betas[{index}]", beta, low=0, high=1, high_open=True)
        check_range("momentum", self.momentum, low=0, high=1, high_open=True)


def check_config(config) -> None:
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config={config!r} is not allowed; expected a TrainConfig")


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then cosine decay."""
    check_int("step", step, low=0)
    check_config(config)
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy over every prediction (one per image, or one per token), plus ``model.aux_loss``.

    Works for logits of shape (B, C) with labels (B,) and for (B, T, V) with targets (B, T). A model that adds a
    regulariser during its forward pass (an MoE's load-balancing loss) leaves it in ``model.aux_loss``.
    """
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    aux = getattr(model, "aux_loss", None)
    return loss + aux if isinstance(aux, Tensor) else loss


def make_optimizer(model: nn.Module, config: TrainConfig, param_groups: list[dict] | None = None):
    """Build the optimiser. Each group may carry ``lr_scale`` (its learning rate is ``lr * lr_scale``) and a
    ``name``; without groups every parameter gets the base rate. A group with ``lr_schedule``, a function of the
    0-based step returning that group's learning rate, follows its own schedule instead (``fit`` calls it
    every step; relative schedules give each component its own peak and end).

    AdamW runs fused, one kernel over every parameter per step: for the course's small models on a CPU the
    default per-tensor loop was about a tenth of a training step, the fused step under half of that."""
    check_config(config)
    groups = param_groups if param_groups is not None else [{"params": list(model.parameters())}]
    prepared = []
    for group in groups:
        if not (isinstance(group, dict) and "params" in group):
            raise ValueError(f"param_groups holds a {type(group).__name__}; expected dicts with 'params'")
        schedule = group.get("lr_schedule")
        if schedule is not None and not callable(schedule):
            raise ValueError(f"lr_schedule={schedule!r} is not allowed; expected a function of the step")
        scale = group.get("lr_scale", 1.0)
        check_positive("lr_scale", scale, allow_zero=True)
        prepared.append({**group, "lr_scale": scale, "lr": config.lr * scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(prepared, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(
        prepared, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=True
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter; a model without parameters has nothing to train or score."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError("model has no parameters; expected a model with at least one parameter")
    return parameter.device


def _batch_source(batches: Iterable[Batch] | Callable[[], Batch], steps: int) -> Callable[[], Batch]:
    """A function returning the next (inputs, targets); running out before ``steps`` batches is the caller's
    mistake, reported as such rather than as a bare StopIteration."""
    if callable(batches):
        source = batches
    elif isinstance(batches, Iterable):
        if isinstance(batches, Sized) and len(batches) < steps:
            raise ValueError(f"batches holds {len(batches)} batches; expected at least config.steps={steps}")
        iterator: Iterator[Batch] = iter(batches)

        def source() -> Batch:
            try:
                return next(iterator)
            except StopIteration:
                raise ValueError(f"batches ran out before config.steps={steps} batches") from None

    else:
        raise ValueError(f"batches={batches!r} is not allowed; expected an iterable of batches or a function")

    def next_batch() -> Batch:
        batch = source()
        if not (isinstance(batch, tuple | list) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
            raise ValueError(f"batches gave {type(batch).__name__}; expected (inputs, targets), two tensors")
        return batch

    return next_batch


def progress_enabled(progress: bool | None) -> bool:
    """Progress bars are on in a notebook and off under CI (``CI`` set) unless asked for explicitly."""
    return (not os.environ.get("CI")) if progress is None else progress


def fit(
    model: nn.Module,
    batches: Iterable[Batch] | Callable[[], Batch],
    config: TrainConfig,
    *,
    param_groups: list[dict] | None = None,
    loss_fn: LossFunction = cross_entropy,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    description: str = "train",
) -> pd.DataFrame:
    """Train ``model`` for ``config.steps`` steps and return its history.

    ``batches`` is an iterable of (inputs, targets) or a function returning the next batch. ``evaluate`` (called
    in eval mode under ``torch.no_grad``) returns named metrics; they appear in the history at the steps where
    they were measured. Columns: step, lr, loss, seconds (since the start), then the metrics.
    """
    check_config(config)
    own_device = model_device(model)  # also checks that there is something to train
    device = torch.device(device) if device is not None else own_device
    next_batch = _batch_source(batches, config.steps)
    model.to(device)
    optimizer = make_optimizer(model, config, param_groups)
    rows: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc=description, disable=not progress_enabled(progress))
    for step in bar:
        factor = lr_factor(step, config)
        for group in optimizer.param_groups:
            schedule = group.get("lr_schedule")
            group["lr"] = config.lr * group["lr_scale"] * factor if schedule is None else schedule(step)
        model.train()
        x, y = (t.to(device) for t in next_batch())
        loss = loss_fn(model, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        row = {"step": step + 1, "lr": config.lr * factor, "loss": loss.item()}
        last = step + 1 == config.steps
        if evaluate is not None and (last or (config.eval_every and (step + 1) % config.eval_every == 0)):
            row.update(run_evaluation(model, evaluate))
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k not in ("step", "lr")})
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return pd.DataFrame(rows)


def run_evaluation(model: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]]):
    """Call ``evaluate`` in eval mode without gradients, restoring the model's previous mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = evaluate(model)
    model.train(was_training)
    return {name: float(value) for name, value in metrics.items()}


def classification_metrics(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024, prefix: str = "val"):
    """Loss and accuracy of a classifier on a whole split, in chunks of ``batch_size``, keyed by the split:
    ``{prefix}_loss`` and ``{prefix}_accuracy`` (``prefix="test"`` when the split is the test set)."""
    check_int("batch_size", batch_size, low=1)
    check_choice("prefix", prefix, ("train", "val", "test"))
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or len(x) != len(y) or len(x) == 0:
        raise ValueError("x and y must be tensors of equally many examples, and at least one")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or int(y.min()) < 0:
        raise ValueError(f"y must be a 1-d tensor of class indices >= 0; got {y.dtype} of shape {tuple(y.shape)}")
    device = model_device(model)
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size].to(device))
        target = y[start : start + batch_size].to(device)
        if int(target.max()) >= logits.shape[-1]:
            raise ValueError(f"y holds label {int(target.max())}; the model scores {logits.shape[-1]} classes")
        total_loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    return {f"{prefix}_loss": total_loss / len(x), f"{prefix}_accuracy": correct / len(x)}


def language_model_loss(
    model: nn.Module,
    corpus,
    *,
    split: str = "val",
    batches: int = 8,
    batch_size: int = 32,
    block_size: int | None = None,
    seed: int = 0,
):
    """Mean next-byte loss (nats) over ``batches`` fixed random windows of ``split``.

    The windows come from their own seeded generator, so every evaluation of a run (and every run with the
    same seed) scores the same text.
    """
    check_int("batches", batches, low=1)
    check_seed(seed)
    block_size = model.config.block_size if block_size is None else block_size  # the corpus checks both sizes
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    total = 0.0
    for _ in range(batches):
        x, y = corpus.get_batch(split, batch_size, block_size, generator=generator)
        logits = model(x.to(device))
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1)).item()
    return {f"{split}_loss": total / batches}
