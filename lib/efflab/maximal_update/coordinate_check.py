"""The coordinate check: does any activation grow (or shrink) with width in the first steps of training?

A parameterization is correct in the muP sense when every activation *coordinate* stays the same size as the
model widens, at init and after every update. The check (microsoft/mup's README; Yang et al. 2022, Tensor
Programs V, section D.1) trains models of several widths for a few steps at a deliberately large LR and records,
at every forward pass t = 1..T (t = 1 is the initial model, before any update),

    l1(x) = mean |x_i|   over every coordinate of an activation tensor x,

for the embedding output, each block's attention output, each MoE layer's router logits (before the softmax) and
output, and the final logits. Plotted against width on log-log axes, one panel per step, μP theory predicts:

* SP: the hidden activations and logits grow after the first update (slope up to 1: ``ΔW x ~ η d``);
* simpleP: the router logits grow, since the router is left at SP; the attention outputs and the experts'
  matrices are scaled as under muP, but the MoE output weighs the experts by the router's softmax, so it can
  follow the router's growth;
* muP: everything flat. The logits and router logits may *shrink* at t = 1 (a 1/m_d multiplier on a
  random-init readout gives ``√d / d``), which passes once the updates dominate.

A given run at a few widths and steps may show some of this and not the rest; the tests and the notebook's
findings say what was measured.

The number we test is the slope of ``log l1`` against ``log width``, fitted over the widths at one step, with
``l1`` averaged over seeds first (:func:`coordinate_slopes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from efflab.data.text import load_corpus
from efflab.maximal_update.model import ModelFamily
from efflab.maximal_update.parameterization import (
    Multipliers,
    check_family,
    check_parameterization,
    checked_multipliers,
    parameterize,
)
from efflab.models.moe import moe_layers
from efflab.runtime import seed_everything
from efflab.train import TrainConfig, fit
from efflab.validation import check_int, check_positive, check_seed


def activation_names(family: ModelFamily) -> list[str]:
    """What the check records, in the order of the forward pass."""
    names = ["embedding"]
    for layer in range(1, family.n_layer + 1):
        names.append(f"attention {layer}")
        if family.ffn == "moe":
            names += [f"router logits {layer}", f"MoE out {layer}"]
        else:
            names.append(f"FFN out {layer}")
    return [*names, "output logits"]


def activation_group(name: str) -> str:
    """``hidden`` (embedding, attention, FFN/MoE outputs), ``router`` or ``output``."""
    if name.startswith("router"):
        return "router"
    return "output" if name == "output logits" else "hidden"


class ActivationRecorder:
    """Forward hooks that append ``mean |x|`` of every activation of :func:`activation_names` at each forward.

    Use as a context manager around the training steps; ``records[name]`` is one value per forward pass.
    """

    def __init__(self, model, family: ModelFamily):
        self.model, self.family = model, family
        self.records: dict[str, list[float]] = {name: [] for name in activation_names(family)}
        self.handles: list = []

    def _record(self, name: str, tensor: torch.Tensor) -> None:
        self.records[name].append(float(tensor.detach().abs().float().mean()))

    def __enter__(self) -> ActivationRecorder:
        model = self.model
        self.handles.append(model.embedding.register_forward_hook(lambda m, i, o: self._record("embedding", o)))
        moe = set(map(id, moe_layers(model)))
        for index, block in enumerate(model.blocks, start=1):
            self.handles.append(
                block.attention.register_forward_hook(lambda m, i, o, k=index: self._record(f"attention {k}", o))
            )
            if id(block.ffn) in moe:

                def after_moe(module, inputs, output, k=index):
                    self._record(f"router logits {k}", module.last_routing.logits)
                    self._record(f"MoE out {k}", output)

                self.handles.append(block.ffn.register_forward_hook(after_moe))
            else:
                self.handles.append(
                    block.ffn.register_forward_hook(lambda m, i, o, k=index: self._record(f"FFN out {k}", o))
                )
        self.handles.append(model.head.register_forward_hook(lambda m, i, o: self._record("output logits", o)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


@dataclass(frozen=True)
class CoordinateCheckTask:
    """One model of the check: a width, a parameterization and a seed (picklable, for ``run_all``)."""

    family: ModelFamily
    width: int
    parameterization: str
    seed: int
    multipliers: Multipliers = field(default_factory=Multipliers)
    steps: int = 5
    lr: float = 1e-2
    batch_size: int = 8
    block_size: int = 32
    max_bytes: int = 400_000
    device: str = "cpu"

    def __post_init__(self):
        check_family(self.family)
        self.family.check_width(self.width)
        check_parameterization(self.parameterization)
        check_seed(self.seed)
        checked_multipliers(self.multipliers)
        check_int("steps", self.steps, low=1)
        check_positive("lr", self.lr)
        check_int("batch_size", self.batch_size, low=1)
        check_int("block_size", self.block_size, low=1, high=self.family.block_size)
        check_int("max_bytes", self.max_bytes, low=1)


def run_coordinate_check(task: CoordinateCheckTask) -> dict[str, list[float]]:
    """Train one model for ``task.steps`` steps (constant LR, Adam, no clipping) and return l1 per activation per
    forward pass, plus the training losses. A run whose loss overflows is padded with ``inf`` (it blew up)."""
    seed_everything(task.seed)
    corpus = load_corpus(task.max_bytes)
    built = parameterize(task.family, task.width, task.parameterization, task.multipliers, seed=task.seed)
    generator = torch.Generator().manual_seed(task.seed)  # the same batches at every width

    def next_batch():
        return corpus.get_batch("train", task.batch_size, task.block_size, generator=generator)

    # Constant LR and no gradient clipping: clipping by the global norm would couple the tensors' updates and
    # hide part of what the parameterization does.
    config = TrainConfig(steps=task.steps, lr=task.lr, warmup_steps=0, min_lr_ratio=1.0, grad_clip=None)
    losses: list[float] = []
    with ActivationRecorder(built.model, task.family) as recorder:
        try:
            history = fit(
                built.model,
                next_batch,
                config,
                param_groups=built.parameter_groups(),
                device=task.device,
                progress=False,
            )
            losses = history["loss"].tolist()
        except FloatingPointError:
            pass
    records = {name: _padded(values, task.steps) for name, values in recorder.records.items()}
    records["loss"] = _padded(losses, task.steps)
    return records


def _padded(values: list[float], steps: int) -> list[float]:
    values = [v if math.isfinite(v) else math.inf for v in values[:steps]]
    return values + [math.inf] * (steps - len(values))


def records_table(tasks: list[CoordinateCheckTask], results: list[dict[str, list[float]]]) -> pd.DataFrame:
    """Long table: parameterization, width, seed, step (1 = init), activation, l1."""
    rows = []
    for task, records in zip(tasks, results, strict=True):
        for name, values in records.items():
            if name == "loss":
                continue
            for step, value in enumerate(values, start=1):
                rows.append(
                    dict(
                        parameterization=task.parameterization,
                        width=task.width,
                        seed=task.seed,
                        step=step,
                        activation=name,
                        group=activation_group(name),
                        l1=value,
                    )
                )
    return pd.DataFrame(rows)


def log_log_slope(widths, values) -> float:
    """Least-squares slope of log(value) against log(width); inf when any value is not finite or not > 0."""
    widths, values = np.asarray(widths, dtype=float), np.asarray(values, dtype=float)
    if widths.ndim != 1 or len(widths) < 2:
        raise ValueError(f"widths={widths.tolist()} is not allowed; a slope needs at least two widths")
    if not (np.all(np.isfinite(widths)) and np.all(widths > 0)) or len(np.unique(widths)) < 2:
        raise ValueError(
            f"widths={widths.tolist()} is not allowed; expected finite widths > 0, two or more distinct"
        )
    if values.shape != widths.shape:
        raise ValueError(f"values has shape {values.shape}; expected {widths.shape}, one value per width")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        return math.inf
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def coordinate_slopes(table: pd.DataFrame, step: int) -> pd.DataFrame:
    """Slope of log(mean over seeds of l1) against log(width) at ``step``: one row per parameterization and
    activation, with its group (hidden, router, output)."""
    at_step = table[table["step"] == step]
    if at_step.empty:
        raise ValueError(f"step={step!r} is not allowed; the table holds steps {sorted(table['step'].unique())}")
    means = at_step.groupby(["parameterization", "activation", "width"], sort=False)["l1"].mean().reset_index()
    rows = []
    for (parameterization, activation), part in means.groupby(["parameterization", "activation"], sort=False):
        part = part.sort_values("width")
        rows.append(
            dict(
                parameterization=parameterization,
                activation=activation,
                group=activation_group(activation),
                slope=log_log_slope(part["width"], part["l1"]),
            )
        )
    return pd.DataFrame(rows)
