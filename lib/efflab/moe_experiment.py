"""The experiment of notebook 05: byte-level language models, dense and MoE at several granularities and sizes.

The fine-grained scaling law (:mod:`efflab.scaling_laws`) was fitted on more than a hundred GPU runs of 3M to
85M-parameter models. Here we run its experiment in miniature: TinyLMs of a few widths, each once with the
dense FFN and once with an MoE at each granularity G (the same expansion rate E, so the same total parameters,
and the same active parameters at every G), all on the same batches. Validation loss is measured every few
steps, so each run gives several (N, D, loss) points, and the law's form is fitted to them.

Choices, and why:

* **Expert-choice routing** with the output LayerNorm, as in the paper. Sequences compete at each
  position, so no token's routing depends on later tokens of its own sequence.
* **Constant learning rate** after a short warmup, so that an intermediate loss is a fair stand-in for a run
  that stopped there (a cosine schedule would make the early points look worse than short runs really are).
  The paper fits final losses of separate runs with their own schedules; we cannot afford separate runs.
* **N** is the paper's: all non-embedding parameters of the blocks, experts included, router and norms not
  (:func:`law_parameters`); the head is left out, as the paper leaves out the unembedding.
* **One CPU thread** in quick mode: these models are so small that a second thread buys little, and on a shared
  machine waiting for it can make every small matrix product ten times slower.

What is noisy at this scale (MoE vs dense, one G vs another) is repeated over seeds and shown with its spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from efflab.data.text import ByteCorpus
from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import MoEConfig, MoEFeedForward, experts_per_token, moe_ffn, moe_layers
from efflab.runtime import Run, Timer, torch_threads
from efflab.scaling_laws import CHINCHILLA_FORM, FINE_GRAINED_FORM, LawFit, fit_law
from efflab.train import TrainConfig, fit, language_model_loss, progress_enabled
from efflab.validation import check_choice, check_int

DENSE = 0  # the granularity column's value for a dense model


def constant_learning_rate(steps: int, lr: float, warmup_steps: int, eval_every: int) -> TrainConfig:
    """A short warmup, then a constant learning rate, so that an evaluation along the way is a fair stand-in for
    a run that stopped there (see the module docstring)."""
    return TrainConfig(
        steps=steps, lr=lr, warmup_steps=warmup_steps, min_lr_ratio=1.0, eval_every=eval_every, weight_decay=0.1
    )


@dataclass(frozen=True)
class GranularityBudget:
    """The grid and the length of every run; :meth:`for_run` picks quick or full from the mode.

    Every width is trained dense and as an MoE at every granularity (seed ``run.seed``). At ``spread_width``,
    the configurations in ``spread_granularities`` (0 = dense) are repeated with ``n_seeds`` seeds, and one
    token-choice MoE at the largest granularity is added to compare how the two routings balance their load.
    """

    widths: tuple[int, ...]
    granularities: tuple[int, ...]
    expansion: int
    n_layer: int
    n_head: int
    block_size: int
    batch_size: int
    steps: int
    eval_every: int
    eval_batches: int
    lr: float
    warmup_steps: int
    spread_width: int
    spread_granularities: tuple[int, ...]
    n_seeds: int
    fit_from_step: int
    threads: int | None = None
    routing: str = "expert_choice"

    def __post_init__(self):
        for width in self.widths:
            check_int("widths", width, low=self.n_head)
        for granularity in self.granularities:
            check_int("granularities", granularity, low=1)
        if self.spread_width not in self.widths:
            raise ValueError(f"spread_width={self.spread_width!r} is not allowed; expected one of {self.widths}")
        for granularity in self.spread_granularities:
            if granularity != DENSE and granularity not in self.granularities:
                raise ValueError(
                    f"spread_granularities contains {granularity!r}; expected 0 (dense) or one of "
                    f"{self.granularities}"
                )
        check_int("steps", self.steps, low=1)
        check_int("eval_every", self.eval_every, low=1, high=self.steps)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps)
        check_int("n_seeds", self.n_seeds, low=1)
        check_int("fit_from_step", self.fit_from_step, low=0, high=self.steps)
        check_choice("routing", self.routing, ("token_choice", "expert_choice"))

    @classmethod
    def quick(cls) -> GranularityBudget:
        """About 70 s of training on one uncontended CPU core (a shared one may take twice as long)."""
        return cls(
            widths=(32, 48, 64), granularities=(1, 2, 4), expansion=8, n_layer=2, n_head=2,
            block_size=64, batch_size=32, steps=100, eval_every=20, eval_batches=4, lr=4e-3, warmup_steps=10,
            spread_width=48, spread_granularities=(DENSE, 1, 4), n_seeds=3, fit_from_step=40, threads=1,
        )  # fmt: skip

    @classmethod
    def full(cls) -> GranularityBudget:
        """A larger grid for one GPU: wider and deeper models, G up to 8, longer runs (sized by estimate: a
        few milliseconds per step for models this small, about a minute in all)."""
        return cls(
            widths=(64, 128, 192), granularities=(1, 2, 4, 8), expansion=8, n_layer=4, n_head=4,
            block_size=128, batch_size=64, steps=300, eval_every=30, eval_batches=8, lr=2e-3, warmup_steps=30,
            spread_width=128, spread_granularities=(DENSE, 1, 8), n_seeds=3, fit_from_step=90,
        )  # fmt: skip

    @classmethod
    def for_run(cls, run: Run) -> GranularityBudget:
        return cls.quick() if run.quick else cls.full()

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def model_config(self, width: int) -> GPTConfig:
        return GPTConfig(block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, d_model=width)

    def train_config(self) -> TrainConfig:
        return constant_learning_rate(self.steps, self.lr, self.warmup_steps, self.eval_every)

    def specs(self, seed: int = 0) -> list[RunSpec]:
        """Every run of the experiment, in the order they are trained."""
        specs = [
            RunSpec(width, granularity, seed, self.routing)
            for width in self.widths
            for granularity in (DENSE, *self.granularities)
        ]
        specs += [
            RunSpec(self.spread_width, granularity, seed + offset, self.routing)
            for offset in range(1, self.n_seeds)
            for granularity in self.spread_granularities
        ]
        other = "token_choice" if self.routing == "expert_choice" else "expert_choice"
        specs.append(RunSpec(self.spread_width, max(self.granularities), seed, other))
        return specs


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


def execution_path_check(
    config: MoEConfig, batch: tuple[int, int] = (8, 32), *, seed: int = 0, threads: int | None = 1
) -> pd.DataFrame:
    """Run one layer's weights through every execution path on the same batch: the largest difference from the
    loop (the reference) in the output and in every gradient, and the time of one forward and backward pass
    (after a warm-up pass).

    The time is a single measurement on whatever else the machine is doing: read it as an order of magnitude;
    ``benchmarks/moe_throughput.py`` measures properly.
    """
    torch.manual_seed(seed)
    layer = MoEFeedForward(config)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, config.d_model, generator=generator)
    upstream = torch.randn(*batch, config.d_model, generator=generator)
    measured = {}
    with torch_threads(threads):
        for path in ("loop", "padded", "grouped"):
            measured[path] = _one_path(config, layer, path, x, upstream)
    reference_out, reference_gradients, _ = measured["loop"]
    rows = []
    for path, (out, gradients, seconds) in measured.items():
        rows.append(
            {
                "path": path,
                "max |output - loop|": float((out - reference_out).abs().max()),
                "max |gradient - loop|": max(
                    float((g - r).abs().max()) for g, r in zip(gradients, reference_gradients, strict=True)
                ),
                "milliseconds (one step)": 1000 * seconds,
            }
        )
    return pd.DataFrame(rows).set_index("path")


def _one_path(config, layer, path, x, upstream):
    copy = MoEFeedForward(replace(config, implementation=path, top_k=config.top_k))
    copy.load_state_dict(layer.state_dict())
    for _pass in ("warm-up", "timed"):  # the first pass pays for one-off work (allocations, kernel checks)
        copy.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        with Timer() as timer:
            out = copy(inputs)
            ((out * upstream).sum() + copy.aux_loss).backward()
    gradients = [inputs.grad] + [p.grad for p in copy.parameters()]
    return out.detach(), gradients, timer.seconds


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


def run_granularity_experiment(
    run: Run, corpus: ByteCorpus, budget: GranularityBudget, *, progress: bool | None = None
) -> GridResults:
    """Train every run of ``budget.specs(run.seed)`` with a progress bar over runs, and collect the results."""
    return train_specs(
        run, corpus, budget, budget.specs(run.seed), progress=progress, description="granularity grid"
    )


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


@dataclass(frozen=True)
class ExperimentFits:
    """The law's form fitted to this run's losses: MoE (fine-grained form) and dense (Chinchilla form)."""

    moe: LawFit
    dense: LawFit
    n_moe_points: int
    n_dense_points: int


def fit_laws(results: GridResults, *, n_starts: int = 12, seed: int = 0) -> ExperimentFits:
    """Fit the fine-grained form to the MoE runs and Chinchilla's to the dense runs (evaluations from
    ``fit_from_step`` on; the first steps are too far from the law's regime)."""
    curves = results.curves[results.curves.step >= results.budget.fit_from_step]
    moe = curves[curves.routing == results.budget.routing]
    dense = curves[curves.routing == "dense"]
    moe_fit = fit_law(
        FINE_GRAINED_FORM,
        {"N": moe.params, "D": moe.tokens, "G": moe.granularity},
        moe.val_loss,
        n_starts=n_starts,
        seed=seed,
    )
    dense_fit = fit_law(
        CHINCHILLA_FORM, {"N": dense.params, "D": dense.tokens}, dense.val_loss, n_starts=n_starts, seed=seed
    )
    return ExperimentFits(moe_fit, dense_fit, len(moe), len(dense))
