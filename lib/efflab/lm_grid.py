"""The grid of byte-level language models that the MoE and learning-rate notebooks train.

A grid point is a :class:`RunSpec`: a width, a granularity (0 = dense) or an expert count, a routing and a
seed. :func:`train_specs` trains every spec of a grid on the same batches and returns :class:`GridResults`:
the loss curves, the (N, D, loss) points a scaling law is fitted to, and router snapshots of the MoE runs.
A budget (a paper's frozen dataclass) says how long each run trains and how models are shaped; anything that
has the fields of :class:`TrainingBudget` will do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from efflab.data.text import ByteCorpus
from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import experts_per_token, moe_ffn, moe_layers
from efflab.runtime import Run, Timer, torch_threads
from efflab.train import TrainConfig, fit, language_model_loss, progress_enabled

DENSE = 0  # the granularity column's value for a dense model


def constant_learning_rate(steps: int, lr: float, warmup_steps: int, eval_every: int) -> TrainConfig:
    """A short warmup, then a constant learning rate, so that an evaluation along the way is a fair stand-in for
    a run that stopped there (see the module docstring)."""
    return TrainConfig(
        steps=steps, lr=lr, warmup_steps=warmup_steps, min_lr_ratio=1.0, eval_every=eval_every, weight_decay=0.1
    )


@dataclass(frozen=True)
class RunSpec:
    """One training run: a width, a granularity (0 = dense), a seed and, for an MoE, its routing and expansion
    rate (None: the budget's; a grid over the number of experts, as in notebook 06, sets it per run)."""

    width: int
    granularity: int
    seed: int
    routing: str = "expert_choice"
    expansion: int | None = None

    @property
    def label(self) -> str:
        if self.granularity == DENSE:
            return "dense"
        if self.expansion is not None:
            return f"MoE E={self.expansion}"
        suffix = " (token choice)" if self.routing == "token_choice" else ""
        return f"MoE G={self.granularity}{suffix}"


class TrainingBudget(Protocol):
    """What :func:`train_specs` needs of a budget (:class:`GranularityBudget` and notebook 06's have it)."""

    steps: int
    batch_size: int
    block_size: int
    eval_batches: int
    threads: int | None

    @property
    def tokens_per_step(self) -> int: ...

    def model_config(self, width: int) -> GPTConfig: ...

    def train_config(self) -> TrainConfig: ...


def law_parameters(config: GPTConfig, expansion: int = 1) -> int:
    """The law's N: attention (4 d^2) and every expert (E FFNs of 2 d d_ff) in every block.

    Embeddings, the head, norms and the router are left out, as in the paper's ``(8E + 4) d^2 n_blocks``.
    """
    d = config.d_model
    return config.n_layer * (4 * d * d + expansion * 2 * d * config.d_ff)


def expansion_of(spec: RunSpec, budget: TrainingBudget) -> int:
    """The run's expansion rate: 1 for a dense model, else the spec's own or the budget's."""
    if spec.granularity == DENSE:
        return 1
    return spec.expansion if spec.expansion is not None else budget.expansion


def build_model(spec: RunSpec, budget: TrainingBudget) -> TinyLM:
    torch.manual_seed(spec.seed)
    config = budget.model_config(spec.width)
    if spec.granularity == DENSE:
        return TinyLM(config)
    experts = moe_ffn(expansion=expansion_of(spec, budget), granularity=spec.granularity, routing=spec.routing)
    return TinyLM(config, experts)


@dataclass
class RouterSnapshot:
    """How the routers of a trained MoE split one validation batch: per layer, per expert and per token."""

    load: np.ndarray  # (layers, n_experts): fraction of assignments each expert processed
    experts_per_token: np.ndarray  # (layers, max + 1): fraction of tokens processed by 0, 1, 2 ... experts
    entropy: np.ndarray  # (layers,): mean router entropy in nats
    max_entropy: float  # ln n_experts
    dropped_fraction: np.ndarray  # (layers,)


def router_snapshot(model: TinyLM, corpus: ByteCorpus, batch_size: int, seed: int = 0) -> RouterSnapshot | None:
    """Run one fixed validation batch and read every MoE layer's routing (None for a dense model)."""
    layers = moe_layers(model)
    if not layers:
        return None
    device = next(model.parameters()).device
    x, _ = corpus.get_batch(
        "val", batch_size, model.config.block_size, generator=torch.Generator().manual_seed(seed)
    )
    model.eval()
    with torch.no_grad():
        model(x.to(device))
    counts = [experts_per_token(layer.last_routing).cpu() for layer in layers]
    longest = max(int(c.max()) for c in counts) + 1
    stats = [layer.last_stats for layer in layers]
    return RouterSnapshot(
        load=np.stack([s.load.numpy() for s in stats]),
        experts_per_token=np.stack([np.bincount(c.numpy(), minlength=longest) / len(c) for c in counts]),
        entropy=np.array([s.entropy for s in stats]),
        max_entropy=stats[0].max_entropy,
        dropped_fraction=np.array([s.dropped_fraction for s in stats]),
    )


@dataclass
class GridResults:
    """Everything a grid of runs produced: loss curves, one row per run, and the routers of the MoE runs."""

    budget: TrainingBudget
    curves: (
        pd.DataFrame
    )  # one row per (run, evaluation): label, width, granularity, seed, step, tokens, val_loss ...
    runs: pd.DataFrame  # one row per run: final val_loss, seconds, tokens per second, parameters
    routers: dict[tuple[str, int, int], RouterSnapshot] = field(default_factory=dict)  # (label, width, seed)
    seconds: float = 0.0


def train_one(
    spec: RunSpec, budget: TrainingBudget, corpus: ByteCorpus, device: torch.device
) -> tuple[TinyLM, pd.DataFrame]:
    """Train one run on the batches of its seed; validation on the same fixed windows for every run."""
    model = build_model(spec, budget).to(device)
    generator = torch.Generator().manual_seed(spec.seed)

    def next_batch():
        return corpus.get_batch("train", budget.batch_size, budget.block_size, generator=generator)

    def evaluate(trained):
        return language_model_loss(trained, corpus, batches=budget.eval_batches, batch_size=budget.batch_size)

    history = fit(model, next_batch, budget.train_config(), evaluate=evaluate, device=device, progress=False)
    return model, history


def train_specs(
    run: Run,
    corpus: ByteCorpus,
    budget: TrainingBudget,
    specs: Sequence[RunSpec],
    *,
    progress: bool | None = None,
    description: str = "runs",
) -> GridResults:
    """Train ``specs`` one after the other (on ``budget.threads`` threads), with a progress bar over runs.

    Every run's evaluations become rows of ``curves`` and its final evaluation a row of ``runs``, with the law's
    parameter counts: ``params`` (attention and every expert) and ``active_params`` (attention and one FFN).
    """
    curve_rows, run_rows, routers = [], [], {}
    with Timer() as total, torch_threads(budget.threads):
        bar = tqdm(specs, desc=description, disable=not progress_enabled(progress))
        for spec in bar:
            bar.set_postfix_str(f"d={spec.width} {spec.label} seed={spec.seed}")
            model, history = train_one(spec, budget, corpus, run.device)
            expansion = expansion_of(spec, budget)
            info = {
                "label": spec.label,
                "routing": "dense" if spec.granularity == DENSE else spec.routing,
                "width": spec.width,
                "granularity": spec.granularity,
                "expansion": expansion,
                "seed": spec.seed,
                "params": law_parameters(model.config, expansion),
                "active_params": law_parameters(model.config, 1),
            }
            evaluated = history.dropna(subset=["val_loss"])
            for step, loss in zip(evaluated.step, evaluated.val_loss, strict=True):
                curve_rows.append(
                    {**info, "step": int(step), "tokens": int(step) * budget.tokens_per_step, "val_loss": loss}
                )
            seconds = float(history.seconds.iloc[-1])
            run_rows.append(
                {
                    **info,
                    "val_loss": float(evaluated.val_loss.iloc[-1]),
                    "seconds": seconds,
                    "tokens_per_second": budget.steps * budget.tokens_per_step / seconds,
                }
            )
            snapshot = router_snapshot(model, corpus, budget.batch_size)
            if snapshot is not None:
                routers[(spec.label, spec.width, spec.seed)] = snapshot
    return GridResults(budget, pd.DataFrame(curve_rows), pd.DataFrame(run_rows), routers, total.seconds)


def seed_spread(results: GridResults) -> dict[str, np.ndarray]:
    """Validation-loss curves at the budget's ``spread_width``: one (seeds, evaluations) array for every
    configuration trained there with more than one seed, in the order they were trained."""
    curves = results.curves
    spread = {}
    for label, rows in curves[curves.width == results.budget.spread_width].groupby("label", sort=False):
        table = rows.pivot_table(index="seed", columns="tokens", values="val_loss")
        if len(table) > 1:
            spread[label] = table.to_numpy()
    return spread
