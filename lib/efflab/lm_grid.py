"""The grid of byte-level language models that the MoE and learning-rate notebooks train.

A grid point is a :class:`RunSpec`: a width, a granularity (0 = dense) or an expert count, a routing and a
seed. :func:`train_specs` trains every spec of a grid (side by side, through :func:`efflab.parallel.run_all`)
and returns :class:`GridResults`: the loss curves, the (N, D, loss) points a scaling law is fitted to, and
router snapshots of the MoE runs.

**Schedules.** A scaling law predicts the final loss of a run whose learning rate was decayed at its end. One
run per token count would be honest and expensive; a constant learning rate read along the way is cheap and
biased (a run that has not cooled down sits above the one that has). The joint-MoE paper (arXiv 2502.05172)
does what we do here: a *warmup-stable-decay* schedule (WSD, Hägele et al. 2024, arXiv 2405.18392):

    factor(t) = (t + 1) / T_warm                      t < T_warm           (linear warmup)
              = 1                                     T_warm <= t < S       (stable)
              = 1 - (t - S + 1) / (C + 1)             S <= t < S + C        (cooldown, linear towards zero)

with the cooldown a fixed share of the whole run, ``C = S * f / (1 - f)`` (f = 0.2: the last 20 %). The stable
phase is shared: every (N, D) point branches a short cooldown off a checkpoint of one stable run, with the
model, the optimiser state and the batch generator copied, so a branch is exactly the decayed run of its
length (a test checks it bitwise). Each point's loss is the one after its cooldown. :func:`wsd_factors` is one
decayed run's sequence, :func:`branch_plan` the checkpoints and cooldown lengths.

A budget (a paper's frozen dataclass derived from :class:`GridBudget`) says how models are shaped, how long the
stable phase runs and where the cooldowns branch. A budget without cooldown checkpoints (any object with the
fields of :class:`TrainingBudget`) trains with its own ``train_config()`` through :func:`efflab.train.fit`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from efflab.data.text import ByteCorpus
from efflab.experiment import Budget
from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import experts_per_token, moe_ffn, moe_layers
from efflab.parallel import gpu_share_for, run_all
from efflab.runtime import Run, Timer, seed_everything
from efflab.train import TrainConfig, cross_entropy, fit, language_model_loss, make_optimizer
from efflab.validation import check_choice, check_fraction, check_int, check_positive, check_seed

DENSE = 0  # the granularity column's value for a dense model
STABLE, DECAYED = "stable", "decayed"  # the phase column of GridResults.curves


def constant_learning_rate(steps: int, lr: float, warmup_steps: int, eval_every: int) -> TrainConfig:
    """A short warmup, then a constant learning rate (the schedule of a budget without cooldowns)."""
    return TrainConfig(
        steps=steps, lr=lr, warmup_steps=warmup_steps, min_lr_ratio=1.0, eval_every=eval_every, weight_decay=0.1
    )


# ------------------------------------------------------------------------------------ the WSD schedule


def cooldown_length(checkpoint: int, fraction: float) -> int:
    """Cooldown steps after a stable phase of ``checkpoint`` steps, so that they are ``fraction`` of the run."""
    check_int("checkpoint", checkpoint, low=1)
    check_fraction("fraction", fraction)
    return max(1, round(checkpoint * fraction / (1.0 - fraction)))


def cooldown_factors(cooldown_steps: int) -> np.ndarray:
    """The cooldown's multipliers of the peak rate: linear from the peak (at the checkpoint) towards zero (one
    step after the last), ``1 - (i + 1) / (C + 1)`` for i = 0 .. C - 1."""
    check_int("cooldown_steps", cooldown_steps, low=1)
    return 1.0 - np.arange(1, cooldown_steps + 1) / (cooldown_steps + 1)


def stable_factors(steps: int, warmup_steps: int) -> np.ndarray:
    """Linear warmup over ``warmup_steps``, then 1: the shared stable phase."""
    check_int("steps", steps, low=1)
    check_int("warmup_steps", warmup_steps, low=0, high=steps)
    factors = np.ones(steps)
    factors[:warmup_steps] = np.arange(1, warmup_steps + 1) / warmup_steps
    return factors


def wsd_factors(stable_steps: int, warmup_steps: int, cooldown_steps: int) -> np.ndarray:
    """The whole learning-rate sequence (multipliers of the peak) of one warmup-stable-decay run."""
    return np.concatenate([stable_factors(stable_steps, warmup_steps), cooldown_factors(cooldown_steps)])


def branch_plan(checkpoints: Sequence[int], fraction: float) -> list[tuple[int, int]]:
    """(checkpoint, cooldown steps) of every branch, in training order."""
    return [(int(step), cooldown_length(int(step), fraction)) for step in checkpoints]


# ------------------------------------------------------------------------------------------- the budget


@dataclass(frozen=True, kw_only=True)
class GridBudget(Budget):
    """What every grid of byte LMs shares: the shapes, the stable phase and where its cooldowns branch.

    Every width is trained once per configuration of :meth:`configurations` (seed ``run.seed``); at
    ``spread_width`` those of :meth:`spread_configurations` are repeated with ``n_seeds`` seeds. The stable
    phase runs ``steps`` steps (evaluated every ``eval_every``); from each of ``checkpoints`` a cooldown of
    ``cooldown_fraction`` of the branch's length gives one decayed (N, D, loss) point. ``workers`` caps how many
    runs train at once (None: one per free core; on a GPU several runs share the device).
    """

    widths: tuple[int, ...]
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
    n_seeds: int
    checkpoints: tuple[int, ...]
    cooldown_fraction: float = 0.2
    workers: int | None = None
    threads: int | None = None  # kept for budgets of the constant-rate path; run_all gives each run one thread

    def __post_init__(self):
        if not isinstance(self.widths, tuple) or not self.widths:
            raise ValueError(f"widths={self.widths!r} is not allowed; expected a non-empty tuple of widths")
        check_int("n_head", self.n_head, low=1)
        for width in self.widths:
            check_int("widths", width, low=self.n_head)
            if width % self.n_head:
                raise ValueError(f"widths contains {width!r}; expected multiples of n_head={self.n_head}")
        check_int("n_layer", self.n_layer, low=1)
        check_int("block_size", self.block_size, low=2)
        check_int("batch_size", self.batch_size, low=1)
        check_int("steps", self.steps, low=1)
        check_int("eval_every", self.eval_every, low=1, high=self.steps)
        check_int("eval_batches", self.eval_batches, low=1)
        check_positive("lr", self.lr)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps)
        if self.spread_width not in self.widths:
            raise ValueError(f"spread_width={self.spread_width!r} is not allowed; expected one of {self.widths}")
        check_int("n_seeds", self.n_seeds, low=1)
        if (
            not isinstance(self.checkpoints, tuple)
            or not self.checkpoints
            or list(self.checkpoints) != sorted(set(self.checkpoints))
        ):
            raise ValueError(
                f"checkpoints={self.checkpoints!r} is not allowed; expected increasing stable-phase steps"
            )
        for step in self.checkpoints:
            check_int("checkpoints", step, low=max(1, self.warmup_steps), high=self.steps)
        if self.checkpoints[-1] != self.steps:
            raise ValueError(
                f"checkpoints={self.checkpoints!r} is not allowed; the last must be steps={self.steps} "
                "(later stable steps would feed no point)"
            )
        check_fraction("cooldown_fraction", self.cooldown_fraction)
        if self.workers is not None:
            check_int("workers", self.workers, low=1)
        if self.threads is not None:
            check_int("threads", self.threads, low=1)

    # what a paper's budget defines
    def configurations(self) -> tuple:
        """The configurations trained at every width, in order (a paper's budget defines them)."""
        raise NotImplementedError(f"{type(self).__name__} defines no configurations")

    def spread_configurations(self) -> tuple:
        """The configurations repeated over seeds at ``spread_width``."""
        raise NotImplementedError(f"{type(self).__name__} defines no spread configurations")

    def spec(self, width: int, configuration, seed: int) -> RunSpec:
        """The run of one configuration."""
        raise NotImplementedError(f"{type(self).__name__} defines no spec")

    def extra_specs(self, seed: int) -> list[RunSpec]:
        """Runs beyond the grid (none by default)."""
        return []

    def learning_rate(self, spec: RunSpec) -> float:
        """The peak learning rate of one run (the budget's, unless a paper's rule says otherwise)."""
        return self.lr

    # shared
    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def model_config(self, width: int) -> GPTConfig:
        return GPTConfig(block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, d_model=width)

    def branches(self) -> list[tuple[int, int]]:
        return branch_plan(self.checkpoints, self.cooldown_fraction)

    def steps_per_run(self) -> int:
        """Optimiser steps of one run: the stable phase and every cooldown."""
        return self.steps + sum(cooldown for _, cooldown in self.branches())

    def specs(self, seed: int = 0) -> list[RunSpec]:
        """Every run, in training order: each width with each configuration, the extra seeds, the extras."""
        specs = [self.spec(width, c, seed) for width in self.widths for c in self.configurations()]
        specs += [
            self.spec(self.spread_width, c, seed + offset)
            for offset in range(1, self.n_seeds)
            for c in self.spread_configurations()
        ]
        return specs + self.extra_specs(seed)


@dataclass(frozen=True)
class RunSpec:
    """One training run: a width, a granularity (0 = dense), a seed and, for an MoE, its routing and expansion
    rate (None: the budget's; a grid over the number of experts, as in notebook 06, sets it per run)."""

    width: int
    granularity: int
    seed: int
    routing: str = "expert_choice"
    expansion: int | None = None

    def __post_init__(self):
        check_int("width", self.width, low=1)
        check_int("granularity", self.granularity, low=DENSE)
        check_seed(self.seed)
        check_choice("routing", self.routing, ("token_choice", "expert_choice"))
        if self.expansion is not None:
            check_int("expansion", self.expansion, low=1)

    @property
    def label(self) -> str:
        if self.granularity == DENSE:
            return "dense"
        if self.expansion is not None:
            return f"MoE E={self.expansion}"
        suffix = " (token choice)" if self.routing == "token_choice" else ""
        return f"MoE G={self.granularity}{suffix}"


class TrainingBudget(Protocol):
    """What :func:`train_specs` needs of a budget without cooldowns (its own ``train_config()``)."""

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
    check_int("expansion", expansion, low=1)
    d = config.d_model
    return config.n_layer * (4 * d * d + expansion * 2 * d * config.d_ff)


def expansion_of(spec: RunSpec, budget) -> int:
    """The run's expansion rate: 1 for a dense model, else the spec's own or the budget's."""
    if spec.granularity == DENSE:
        return 1
    return spec.expansion if spec.expansion is not None else budget.expansion


def build_model(spec: RunSpec, budget) -> TinyLM:
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
    """Everything a grid of runs produced: loss curves, one row per run, and the routers of the MoE runs.

    ``curves`` has one row per evaluation: label, width, granularity, expansion, seed, params, active_params,
    phase (``stable``: along the shared stable phase; ``decayed``: after a branch's cooldown, a law point),
    step (optimiser steps of that run), tokens, val_loss. ``runs`` has one row per run: the longest decayed run's
    val_loss, seconds, tokens per second (wall clock of the whole run, cooldowns included), the counts.
    """

    budget: object
    curves: pd.DataFrame
    runs: pd.DataFrame
    routers: dict[tuple[str, int, int], RouterSnapshot] = field(default_factory=dict)  # (label, width, seed)
    seconds: float = 0.0

    def law_points(self) -> pd.DataFrame:
        """The decayed evaluations, one per (run, branch): what a law is fitted to."""
        if "phase" not in self.curves:
            return self.curves
        return self.curves[self.curves.phase == DECAYED]


@dataclass(frozen=True)
class GridTask:
    """One run for a worker: the spec, the budget, the corpus and where to train (picklable)."""

    spec: RunSpec
    budget: object
    corpus: ByteCorpus
    device: str


def _evaluate(model, corpus, budget) -> float:
    model.eval()
    with torch.no_grad():
        loss = language_model_loss(model, corpus, batches=budget.eval_batches, batch_size=budget.batch_size)
    return loss["val_loss"]


def optimiser_step(model, optimizer, batch, lr, device) -> None:
    """One step of a grid run at rate ``lr`` (times each group's ``lr_scale``), its gradient clipped to norm 1."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    model.train()
    x, y = (t.to(device) for t in batch)
    loss = cross_entropy(model, x, y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()}; lower the lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def train_branched(spec: RunSpec, budget: GridBudget, corpus: ByteCorpus, device) -> tuple[TinyLM, list[dict]]:
    """The stable phase of one run and a cooldown branched off each checkpoint.

    Returns the last branch's model (the longest decayed run) and the evaluations: ``(phase, step, loss)``.
    A branch copies the model, the optimiser state and the batch generator, so it sees exactly the batches and
    rates a decayed run of its length would.
    """
    device = torch.device(device)
    model = build_model(spec, budget).to(device)
    peak = budget.learning_rate(spec)
    config = TrainConfig(steps=budget.steps, lr=peak, weight_decay=0.1)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(spec.seed)

    def next_batch(source):
        return corpus.get_batch("train", budget.batch_size, budget.block_size, generator=source)

    factors = stable_factors(budget.steps, budget.warmup_steps)
    cooldowns = dict(budget.branches())
    evaluations, last_model = [], model
    for step in range(budget.steps):
        optimiser_step(model, optimizer, next_batch(generator), peak * factors[step], device)
        done = step + 1
        if done % budget.eval_every == 0 or done in cooldowns:
            evaluations.append({"phase": STABLE, "step": done, "val_loss": _evaluate(model, corpus, budget)})
        if done in cooldowns:
            last_model = _cooldown(model, optimizer, generator, cooldowns[done], peak, next_batch, device)
            evaluations.append(
                {
                    "phase": DECAYED,
                    "step": done + cooldowns[done],
                    "val_loss": _evaluate(last_model, corpus, budget),
                }
            )
    return last_model, evaluations


def _cooldown(model, optimizer, generator, steps, peak, next_batch, device):
    branch = copy.deepcopy(model)
    branch_optimizer = make_optimizer(branch, TrainConfig(steps=1, lr=peak, weight_decay=0.1))
    branch_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    branch_generator = torch.Generator()
    branch_generator.set_state(generator.get_state())
    for factor in cooldown_factors(steps):
        optimiser_step(branch, branch_optimizer, next_batch(branch_generator), peak * factor, device)
    return branch


def train_one(spec: RunSpec, budget, corpus: ByteCorpus, device) -> tuple[TinyLM, pd.DataFrame]:
    """Train one run on the batches of its seed; validation on the same fixed windows for every run.

    Returns the model and its evaluations (phase, step, val_loss), branched cooldowns when the budget has them,
    else ``budget.train_config()`` through :func:`efflab.train.fit`.
    """
    if getattr(budget, "checkpoints", None):
        model, evaluations = train_branched(spec, budget, corpus, device)
        return model, pd.DataFrame(evaluations)
    model = build_model(spec, budget).to(device)
    generator = torch.Generator().manual_seed(spec.seed)

    def next_batch():
        return corpus.get_batch("train", budget.batch_size, budget.block_size, generator=generator)

    def evaluate(trained):
        return language_model_loss(trained, corpus, batches=budget.eval_batches, batch_size=budget.batch_size)

    history = fit(model, next_batch, budget.train_config(), evaluate=evaluate, device=device, progress=False)
    evaluated = history.dropna(subset=["val_loss"])
    return model, pd.DataFrame({"phase": STABLE, "step": evaluated.step, "val_loss": evaluated.val_loss})


def train_task(task: GridTask) -> dict:
    """One grid run, as :func:`efflab.parallel.run_all` calls it: seeded from its spec, returns plain data."""
    spec, budget = task.spec, task.budget
    seed_everything(spec.seed)
    with Timer() as timer:
        model, evaluations = train_one(spec, budget, task.corpus, torch.device(task.device))
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
        "lr": float(budget.learning_rate(spec)) if hasattr(budget, "learning_rate") else budget.train_config().lr,
    }
    curve_rows = [
        {**info, **row, "tokens": int(row["step"]) * budget.tokens_per_step}
        for row in evaluations.to_dict("records")
    ]
    final = evaluations[evaluations.phase == DECAYED] if (evaluations.phase == DECAYED).any() else evaluations
    steps = budget.steps_per_run() if hasattr(budget, "steps_per_run") else budget.steps
    run_row = {
        **info,
        "val_loss": float(final.val_loss.iloc[-1]),
        "seconds": timer.seconds,
        "optimizer_steps": steps,
        "tokens_per_second": steps * budget.tokens_per_step / timer.seconds,
    }
    return {"curves": curve_rows, "run": run_row, "router": router_snapshot(model, task.corpus, budget.batch_size)}


def train_specs(
    run: Run,
    corpus: ByteCorpus,
    budget,
    specs: Sequence[RunSpec],
    *,
    progress: bool | None = None,
    description: str = "runs",
    backend: str | None = None,
) -> GridResults:
    """Train ``specs`` side by side (:func:`efflab.parallel.run_all`; ``budget.workers`` caps the pool, and on
    a GPU every worker trains on the same device), with a progress bar over runs.

    Every run's evaluations become rows of ``curves`` and its final decayed evaluation a row of ``runs``, with
    the law's parameter counts: ``params`` (attention and every expert) and ``active_params`` (attention and
    one FFN). Each run seeds itself from its spec, so every backend gives the same numbers.
    """
    if not specs or not all(isinstance(spec, RunSpec) for spec in specs):
        raise ValueError(f"specs={specs!r} is not allowed; expected a non-empty sequence of RunSpec")
    workers = getattr(budget, "workers", None)
    if workers is not None:
        check_int("workers", workers, low=1)
    tasks = [GridTask(spec, budget, corpus, str(run.device)) for spec in specs]
    with Timer() as total:
        outcomes = run_all(
            train_task,
            tasks,
            backend=backend,
            workers=workers,
            progress=progress,
            description=description,
            gpu_share=gpu_share_for(run.device),
        )
    routers = {
        (spec.label, spec.width, spec.seed): outcome["router"]
        for spec, outcome in zip(specs, outcomes, strict=True)
        if outcome["router"] is not None
    }
    curves = pd.DataFrame([row for outcome in outcomes for row in outcome["curves"]])
    runs = pd.DataFrame([outcome["run"] for outcome in outcomes])
    return GridResults(budget, curves, runs, routers, total.seconds)


def seed_spread(results: GridResults, phase: str | None = None) -> dict[str, np.ndarray]:
    """Validation-loss curves at the budget's ``spread_width``: one (seeds, evaluations) array for every
    configuration trained there with more than one seed, in the order they were trained.

    ``phase``: ``"decayed"`` (the law points, the default when there are any) or ``"stable"``."""
    if phase is not None:
        check_choice("phase", phase, (STABLE, DECAYED))
    curves = results.curves
    if "phase" in curves:
        if phase is None:
            phase = DECAYED if (curves.phase == DECAYED).any() else STABLE
        curves = curves[curves.phase == phase]
    spread = {}
    for label, rows in curves[curves.width == results.budget.spread_width].groupby("label", sort=False):
        table = rows.pivot_table(index="seed", columns="tokens", values="val_loss")
        if len(table) > 1:
            spread[label] = table.to_numpy()
    return spread
