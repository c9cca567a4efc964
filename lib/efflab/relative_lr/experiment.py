"""Notebook 08's experiment: uniform vs the paper's relative schedule vs one found by local search.

For each architecture (a dense TinyLM and the same model with a 4-expert MoE in every block):

1. **Baseline.** A uniform warmup-and-cosine schedule whose η is tuned by a short sweep (``lr_grid``); f is the
   paper's for that architecture (0.0444 MoE, 0.0667 dense).
2. **Search.** The multiplicative local search (:mod:`~efflab.relative_lr.search`) over the group multipliers,
   started from uniform, on a *proxy*: the same model trained ``search_steps`` steps, scored by its final
   validation loss. The dense and MoE searches advance in lock step, so each batch of trials (four per knob and
   architecture) runs side by side. The tuning seed is held out: it is none of the comparison seeds.
3. **Comparison** at equal steps over ``seeds`` seeds: uniform, the paper's preset, the found preset, all at the
   tuned η. Speed-up as in :mod:`~efflab.relative_lr.measures`; per-group update sizes are tracked.
4. **Ablation** (architectures in ``ablation``, the first ``ablation_seeds`` seeds): the paper's preset with
   one group at a time back at 1, 1, each compared with the full preset on the same seeds.
5. **Transfer** (full mode): the same three schedules on a model with at least 10x the proxy's non-embedding
   parameters (the budget refuses a smaller one), its own uniform η swept again, the relative multipliers
   reused unchanged. Update sizes are not measured there.

Every training run is a :class:`TrainTask` through :func:`efflab.parallel.run_all`; identical tasks are trained
once: at either size, the sweep's run at the chosen η is the first seed's uniform run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from efflab.data.text import load_corpus
from efflab.experiment import Budget, paper_table, seeds_for, spread
from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import moe_ffn
from efflab.parallel import gpu_share_for, run_all
from efflab.relative_lr.groups import GROUPS, OTHER, group_sizes, partition
from efflab.relative_lr.measures import UpdateTracker, speedup_percent
from efflab.relative_lr.schedule import RelativeSchedule, check_multiplier, paper_preset, relative_schedule
from efflab.relative_lr.search import LocalSearch, schedule_at, schedule_knobs, schedule_point, within_domain
from efflab.runtime import Run, Timer, seed_everything, torch_threads
from efflab.train import cross_entropy, fit, language_model_loss
from efflab.validation import check_choice, check_int, check_positive, check_seed

NAME = "08_relative_learning_rates"
ARCHITECTURES = ("dense", "moe")
PRESETS = ("uniform", "paper", "found")
EVAL_SEED = 12345  # the validation windows every run is scored on
TUNING_SEED_OFFSET = 1000  # the search's seed: run.seed + this, never a comparison seed
PAPER_SPEEDUP = 23.0  # percent, "up to", abstract of arXiv 2507.03526
PAPER_TRANSFER = 27.0  # times larger, abstract
TRANSFER_MIN_RATIO = 10  # the transfer model has at least this many times the proxy's non-embedding parameters
SHAPES = ("proxy", "transfer")


@dataclass(frozen=True)
class RelativeLRBudget(Budget):
    """Model shapes, run lengths, the η sweep, the search's caps, the ablation and the transfer."""

    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    block_size: int = 64
    batch_size: int = 16
    n_experts: int = 4
    steps: int = 120
    warmup_steps: int = 8
    eval_every: int = 10
    eval_batches: int = 4
    track_every: int = 6
    seeds: int = 3
    lr_grid: tuple[float, ...] = (2e-3, 4e-3, 8e-3, 1.6e-2)
    weight_decay: float = 0.1
    search_steps: int = 40
    search_passes: int = 1
    search_evaluations: int = 33
    search_global: bool = False
    ablation: tuple[str, ...] = ("moe",)
    ablation_seeds: int = 3
    transfer_d_model: int = 0
    transfer_n_layer: int = 0
    transfer_n_head: int = 0
    transfer_steps: int = 0
    transfer_lr_grid: tuple[float, ...] = ()
    corpus_bytes: int = 1_000_000

    def __post_init__(self):
        for name in ("d_model", "n_layer", "n_head", "block_size", "batch_size", "n_experts", "steps"):
            check_int(name, getattr(self, name), low=1)
        if self.d_model % self.n_head:
            raise ValueError(
                f"n_head={self.n_head!r} is not allowed; expected a divisor of d_model={self.d_model}"
            )
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps - 1)
        check_int("eval_every", self.eval_every, low=1, high=self.steps)
        check_int("eval_batches", self.eval_batches, low=1)
        check_int("track_every", self.track_every, low=0)
        check_int("seeds", self.seeds, low=1)
        _check_grid("lr_grid", self.lr_grid)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_int("search_steps", self.search_steps, low=2)
        check_int("search_passes", self.search_passes, low=1)
        check_int("search_evaluations", self.search_evaluations, low=1)
        if not isinstance(self.search_global, bool):
            raise ValueError(f"search_global={self.search_global!r} is not allowed; expected True or False")
        for architecture in self.ablation:
            check_choice("ablation", architecture, ARCHITECTURES)
        check_int("ablation_seeds", self.ablation_seeds, low=1, high=self.seeds)
        check_int("corpus_bytes", self.corpus_bytes, low=10 * self.block_size)
        for name in ("transfer_d_model", "transfer_n_layer", "transfer_n_head", "transfer_steps"):
            check_int(name, getattr(self, name), low=0)
        if self.transfer_lr_grid != ():  # checked even while the transfer is off: a bad grid is a mistake anyway
            _check_grid("transfer_lr_grid", self.transfer_lr_grid)
        if self.transfer_steps:
            for name in ("transfer_d_model", "transfer_n_layer", "transfer_n_head"):
                check_int(name, getattr(self, name), low=1)
            if self.transfer_d_model % self.transfer_n_head:
                raise ValueError(
                    f"transfer_n_head={self.transfer_n_head!r} is not allowed; expected a divisor of "
                    f"transfer_d_model={self.transfer_d_model}"
                )
            check_int("transfer_steps", self.transfer_steps, low=self.warmup_steps + 1)
            _check_grid("transfer_lr_grid", self.transfer_lr_grid)
            self._check_transfer_size()

    def _check_transfer_size(self) -> None:
        """The paper's claim is about reuse on *larger* models: the transfer model must have at least
        ``TRANSFER_MIN_RATIO`` times the proxy's non-embedding parameters, dense and MoE alike."""
        for arch in ARCHITECTURES:
            small, big = (non_embedding_parameters(shape_model(self, arch, shape)) for shape in SHAPES)
            if big < TRANSFER_MIN_RATIO * small:
                raise ValueError(
                    f"transfer_d_model={self.transfer_d_model}, transfer_n_layer={self.transfer_n_layer}, "
                    f"transfer_n_head={self.transfer_n_head} is not allowed with d_model={self.d_model}, "
                    f"n_layer={self.n_layer}: the {arch} transfer model has {big:,} non-embedding parameters, "
                    f"{big / small:.1f}x the proxy's {small:,}; expected at least {TRANSFER_MIN_RATIO}x"
                )

    @classmethod
    def quick(cls) -> RelativeLRBudget:
        """Two CPU cores, and no transfer study (it needs a model ten times larger). A step's cost grows with
        the context, so the quick models read 32 bytes at a time, not 64 (44 % less per step); two validation
        batches per evaluation and an update measure every 12 steps (each had cost about 15 % of a run); each
        search tries six of the schedule's knobs (25 trials), where a whole pass has eight (dense) or ten (MoE);
        runs are 80 steps and search trials 32; the ablation runs on two of the three seeds. Full mode keeps the
        longer context and runs, more evaluation, every pass and every seed."""
        return cls(
            block_size=32,
            steps=80,
            eval_batches=2,
            track_every=12,
            search_steps=32,
            search_evaluations=25,
            ablation_seeds=2,
        )

    @classmethod
    def full(cls) -> RelativeLRBudget:
        """One GPU: the proxy 128 wide with the longer context, 600-step runs, every search pass and seed, and
        the transfer to models 384 wide and 4 layers deep, 18 times the proxy's non-embedding parameters (dense
        7.1 M, MoE 21.2 M; 512 wide would be 32 times, at 1.8 times the FLOPs per step)."""
        return cls(
            d_model=128,
            n_layer=2,
            n_head=4,
            batch_size=32,
            block_size=128,
            steps=600,
            warmup_steps=20,
            eval_every=20,
            eval_batches=8,
            track_every=10,
            seeds=3,
            lr_grid=(1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2),
            search_steps=200,
            search_passes=3,
            search_evaluations=150,
            search_global=False,
            ablation=("dense", "moe"),
            transfer_d_model=384,
            transfer_n_layer=4,
            transfer_n_head=8,
            transfer_steps=1200,
            transfer_lr_grid=(5e-4, 1e-3, 2e-3, 4e-3),
            corpus_bytes=8_000_000,
        )

    def dimensions(self, shape: str = "proxy") -> tuple[int, int, int]:
        """(d_model, n_layer, n_head) of the comparison's model (``"proxy"``) or of the transfer model."""
        check_choice("shape", shape, SHAPES)
        if shape == "transfer":
            return self.transfer_d_model, self.transfer_n_layer, self.transfer_n_head
        return self.d_model, self.n_layer, self.n_head

    @property
    def search_warmup(self) -> int:
        """The proxy's warmup: the same share of its (shorter) run."""
        return min(self.search_steps - 1, round(self.warmup_steps * self.search_steps / self.steps))

    @property
    def transfer_warmup(self) -> int:
        return min(self.transfer_steps - 1, round(self.warmup_steps * self.transfer_steps / self.steps))


def _check_grid(name: str, grid) -> None:
    if not isinstance(grid, tuple) or not grid:
        raise ValueError(f"{name}={grid!r} is not allowed; expected a non-empty tuple of learning rates")
    for value in grid:
        check_positive(name, value)


def final_fraction(architecture: str) -> float:
    """The paper's f for the architecture (the uniform baseline's too)."""
    return paper_preset(architecture).final_fraction


# ---------------------------------------------------------------------------------------------- one training run


@dataclass(frozen=True)
class TrainTask:
    """Everything one training run needs, picklable: model shape, schedule, data and seed."""

    architecture: str
    d_model: int
    n_layer: int
    n_head: int
    block_size: int
    n_experts: int
    batch_size: int
    schedule: RelativeSchedule
    seed: int
    eval_every: int = 0
    eval_batches: int = 4
    track_every: int = 0
    weight_decay: float = 0.1
    corpus_bytes: int = 1_000_000
    device: str = "cpu"

    def __post_init__(self):
        check_choice("architecture", self.architecture, ARCHITECTURES)
        for name in ("d_model", "n_layer", "n_head", "block_size", "n_experts", "batch_size", "eval_batches"):
            check_int(name, getattr(self, name), low=1)
        if not isinstance(self.schedule, RelativeSchedule):
            raise ValueError(f"schedule={self.schedule!r} is not allowed; expected a RelativeSchedule")
        check_seed(self.seed)
        check_int("eval_every", self.eval_every, low=0)
        check_int("track_every", self.track_every, low=0)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_int("corpus_bytes", self.corpus_bytes, low=10 * self.block_size)
        self.model_config()  # d_model, n_head and block_size fit together

    def model_config(self) -> GPTConfig:
        return GPTConfig(
            block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model
        )

    def build_model(self) -> TinyLM:
        return build_model(
            self.architecture, self.d_model, self.n_layer, self.n_head, self.n_experts, self.block_size
        )


def build_model(architecture: str, d_model: int, n_layer: int, n_head: int, n_experts: int, block_size: int = 64):
    """A TinyLM, dense or with an MoE (``n_experts`` experts, top-1, token choice) in every block."""
    check_choice("architecture", architecture, ARCHITECTURES)
    ffn = moe_ffn(expansion=n_experts, granularity=1) if architecture == "moe" else None
    config = GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, d_model=d_model)
    return TinyLM(config, ffn)


def shape_model(budget: RelativeLRBudget, architecture: str, shape: str = "proxy") -> TinyLM:
    """A budget's model of one shape on the meta device: the right parameter shapes, no memory, no training."""
    with torch.device("meta"):
        return build_model(architecture, *budget.dimensions(shape), budget.n_experts, budget.block_size)


def non_embedding_parameters(model: TinyLM) -> int:
    """Parameters outside the embedding tables and the head (all experts counted)."""
    sizes = group_sizes(model)
    return sum(size for group, size in sizes.items() if group not in ("embedding", "head"))


def train_task(task: TrainTask, on_eval=None) -> dict:
    """Train one run; returns plain lists: evaluation steps and losses, per-step training loss, update sizes.

    ``on_eval(step, total, val_loss)``, if given, is called at every evaluation (the playground's progress).
    """
    evaluations = []
    seed_everything(task.seed)
    model = task.build_model().to(task.device)
    corpus = load_corpus(task.corpus_bytes)
    generator = torch.Generator().manual_seed(task.seed)
    schedule = task.schedule
    config = schedule.train_config(eval_every=task.eval_every, weight_decay=task.weight_decay)
    parameters = dict(model.named_parameters())
    named = {g: [parameters[n] for n in names] for g, names in partition(model).items()}
    tracker = UpdateTracker(named, task.track_every) if task.track_every else None

    def evaluate(m):
        metrics = language_model_loss(
            m, corpus, batches=task.eval_batches, batch_size=task.batch_size, seed=EVAL_SEED
        )
        evaluations.append(metrics["val_loss"])
        if on_eval is not None:
            step = min(schedule.steps, len(evaluations) * (task.eval_every or schedule.steps))
            on_eval(step, schedule.steps, metrics["val_loss"])
        return metrics

    with Timer() as timer:
        history = fit(
            model,
            lambda: corpus.get_batch("train", task.batch_size, task.block_size, generator=generator),
            config,
            param_groups=schedule.param_groups(model),
            loss_fn=tracker if tracker is not None else cross_entropy,
            evaluate=evaluate,
            progress=False,
        )
    evaluated = history.dropna(subset=["val_loss"])
    return {
        "eval_steps": evaluated["step"].astype(int).tolist(),
        "val_loss": evaluated["val_loss"].astype(float).tolist(),
        "train_loss": history["loss"].astype(float).tolist(),
        "updates": tracker.as_dict() if tracker is not None else None,
        "seconds": timer.seconds,
    }


def final_loss(outcome: dict) -> float:
    return float(outcome["val_loss"][-1])


def speedup(outcome: dict, uniform: dict, steps: int) -> float:
    """Speed-up (percent, signed) of a run over the uniform run of the same seed."""
    if outcome["eval_steps"] != uniform["eval_steps"]:
        raise ValueError("the two runs were evaluated at different steps; expected the same evaluation grid")
    return speedup_percent(uniform["eval_steps"], outcome["val_loss"], uniform["val_loss"], steps)


# ---------------------------------------------------------------------------------------------- the experiment


@dataclass
class Result:
    """Every run of the experiment and what the figures need."""

    budget: RelativeLRBudget
    seeds: tuple[int, ...]
    tuning_seed: int
    sweep: dict  # architecture -> {lr: final val loss}
    base_lr: dict  # architecture -> tuned η
    schedules: dict  # (architecture, preset) -> RelativeSchedule at the main length
    runs: dict  # (architecture, preset, seed) -> outcome
    searches: dict  # architecture -> LocalSearch (finished)
    ablation: dict  # (architecture, group, seed) -> outcome
    transfer: dict = field(default_factory=dict)  # (architecture, preset, seed) -> outcome
    transfer_base_lr: dict = field(default_factory=dict)
    transfer_sweep: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # architecture -> group sizes; plus non-embedding counts
    non_embedding: dict = field(default_factory=dict)  # "proxy"/"transfer" -> architecture -> count
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(self.base_lr)

    def groups(self, architecture: str) -> tuple[str, ...]:
        return tuple(g for g in GROUPS if self.sizes[architecture].get(g, 0) > 0)

    def multipliers(self, architecture: str, preset: str) -> dict[str, tuple[float, float]]:
        return self.schedules[(architecture, preset)].as_dict()

    def speedups(self, architecture: str, preset: str, runs: dict | None = None, steps: int | None = None):
        runs = self.runs if runs is None else runs
        steps = self.budget.steps if steps is None else steps
        check_int("steps", steps, low=1)
        return [
            speedup(runs[(architecture, preset, seed)], runs[(architecture, "uniform", seed)], steps)
            for seed in self.seeds
            if (architecture, preset, seed) in runs
        ]

    def ablation_seeds(self, architecture: str) -> tuple[int, ...]:
        """The seeds the ablation ran on (its groups all share them)."""
        groups = self.ablated_groups(architecture)
        return tuple(s for s in self.seeds if groups and (architecture, groups[0], s) in self.ablation)

    def ablation_speedups(self, architecture: str, group: str) -> list[float]:
        return [
            speedup(
                self.ablation[(architecture, group, seed)],
                self.runs[(architecture, "uniform", seed)],
                self.budget.steps,
            )
            for seed in self.ablation_seeds(architecture)
        ]

    def ablated_groups(self, architecture: str) -> tuple[str, ...]:
        return tuple(g for g in GROUPS if (architecture, g, self.seeds[0]) in self.ablation)

    def mean_update_sizes(self, architecture: str, preset: str) -> dict[str, float]:
        """u_g averaged over the measured steps and seeds."""
        values: dict[str, list[float]] = {}
        for seed in self.seeds:
            updates = self.runs[(architecture, preset, seed)]["updates"]
            if updates is None:
                continue
            for group, sizes in updates["sizes"].items():
                values.setdefault(group, []).extend(sizes)
        return {g: float(np.mean(v)) for g, v in values.items() if v and g != OTHER}

    def loss_bands(self, architecture: str, runs: dict | None = None, seeds=None) -> tuple[list[int], dict]:
        runs = self.runs if runs is None else runs
        seeds = self.seeds if seeds is None else seeds
        steps = runs[(architecture, "uniform", seeds[0])]["eval_steps"]
        bands = {
            preset: np.array([runs[(architecture, preset, s)]["val_loss"] for s in seeds])
            for preset in PRESETS
            if (architecture, preset, seeds[0]) in runs
        }
        return steps, bands

    def summary(self) -> dict:
        architectures = {}
        for arch in self.architectures:
            search = self.searches[arch]
            architectures[arch] = {
                "base_lr": self.base_lr[arch],
                "final_fraction": final_fraction(arch),
                "lr_sweep": {f"{lr:g}": loss for lr, loss in self.sweep[arch].items()},
                "final_loss": {p: [final_loss(self.runs[(arch, p, s)]) for s in self.seeds] for p in PRESETS},
                "speedup": {p: self.speedups(arch, p) for p in ("paper", "found")},
                "paper": {g: list(v) for g, v in self.multipliers(arch, "paper").items()},
                "found": {g: list(v) for g, v in self.multipliers(arch, "found").items()},
                "search": search.summary(),
                "ablation": {g: self.ablation_speedups(arch, g) for g in self.ablated_groups(arch)},
                "ablation_reference": [  # the full preset on the ablation's seeds
                    speedup(self.runs[(arch, "paper", s)], self.runs[(arch, "uniform", s)], self.budget.steps)
                    for s in self.ablation_seeds(arch)
                ],
                "update_size": {p: self.mean_update_sizes(arch, p) for p in PRESETS},
                "group_sizes": {g: int(v) for g, v in self.sizes[arch].items()},
                "non_embedding_parameters": self.non_embedding["proxy"][arch],
            }
        transfer = None
        if self.transfer:
            transfer = {"steps": self.budget.transfer_steps, "architectures": {}}
            for arch in self.architectures:
                transfer["architectures"][arch] = {
                    "base_lr": self.transfer_base_lr[arch],
                    "lr_sweep": {f"{lr:g}": loss for lr, loss in self.transfer_sweep[arch].items()},
                    "size_ratio": self.non_embedding["transfer"][arch] / self.non_embedding["proxy"][arch],
                    "non_embedding_parameters": self.non_embedding["transfer"][arch],
                    "final_loss": {
                        p: [final_loss(self.transfer[(arch, p, s)]) for s in self.seeds] for p in PRESETS
                    },
                    "speedup": {
                        p: self.speedups(arch, p, self.transfer, self.budget.transfer_steps)
                        for p in ("paper", "found")
                    },
                }
        return {
            "architectures": architectures,
            "transfer": transfer,
            "seeds": list(self.seeds),
            "tuning_seed": self.tuning_seed,
            "steps": self.budget.steps,
            "search_steps": self.budget.search_steps,
            "seconds": self.seconds,
        }


def _task(
    budget: RelativeLRBudget,
    architecture: str,
    schedule: RelativeSchedule,
    seed: int,
    device: str,
    *,
    track: bool = True,
    shape: str = "proxy",
    curve: bool = True,
) -> TrainTask:
    """One run of the study; ``curve=False`` (search trials) evaluates only after the last step.

    Update sizes are measured on the comparison's model only: ``track`` is ignored on the transfer model.
    Measuring leaves the training as it is but is part of the task, so the rule must hold for every run of a
    shape alike; then the sweep's run at the chosen η and the first seed's uniform run are one task.
    """
    d_model, n_layer, n_head = budget.dimensions(shape)
    return TrainTask(
        architecture=architecture,
        d_model=d_model,
        n_layer=n_layer,
        n_head=n_head,
        block_size=budget.block_size,
        n_experts=budget.n_experts,
        batch_size=budget.batch_size,
        schedule=schedule,
        seed=seed,
        eval_every=budget.eval_every if curve and schedule.steps > budget.eval_every else 0,
        eval_batches=budget.eval_batches,
        track_every=budget.track_every if track and shape == "proxy" else 0,
        weight_decay=budget.weight_decay,
        corpus_bytes=budget.corpus_bytes,
        device=device,
    )


class _Runner:
    """run_all with memory: a task that was trained before is not trained again."""

    def __init__(self):
        self.done: dict[TrainTask, dict] = {}

    def __call__(self, tasks: list[TrainTask], description: str) -> list[dict]:
        new = list(dict.fromkeys(t for t in tasks if t not in self.done))
        share = gpu_share_for(new[0].device) if new else None
        for task, outcome in zip(
            new, run_all(train_task, new, description=description, gpu_share=share), strict=True
        ):
            self.done[task] = outcome
        return [self.done[t] for t in tasks]


def _sweep(runner, budget: RelativeLRBudget, device: str, shape: str, seed: int) -> tuple[dict, dict]:
    """The uniform schedule's η sweep at one shape on ``seed``: final losses and the best η per architecture.

    Its run at the chosen η is the same task as that seed's uniform comparison run, so it is trained once.
    """
    if shape == "proxy":
        grid, steps, warmup = budget.lr_grid, budget.steps, budget.warmup_steps
    else:
        grid, steps, warmup = budget.transfer_lr_grid, budget.transfer_steps, budget.transfer_warmup
    tasks = {
        (arch, lr): _task(
            budget,
            arch,
            relative_schedule(lr, steps, warmup_steps=warmup, final_fraction=final_fraction(arch)),
            seed,
            device,
            shape=shape,
        )
        for arch in ARCHITECTURES
        for lr in grid
    }
    outcomes = runner(list(tasks.values()), f"η sweep ({shape})")
    losses = {arch: {} for arch in ARCHITECTURES}
    for (arch, lr), outcome in zip(tasks, outcomes, strict=True):
        losses[arch][lr] = final_loss(outcome)
    best = {arch: min(losses[arch], key=losses[arch].get) for arch in ARCHITECTURES}
    return losses, best


def _model_sizes(budget: RelativeLRBudget) -> tuple[dict, dict]:
    """Group sizes of the comparison's models, and non-embedding counts per shape and architecture."""
    sizes, non_embedding = {}, {shape: {} for shape in SHAPES}
    for arch in ARCHITECTURES:
        model = shape_model(budget, arch)
        sizes[arch] = group_sizes(model)
        non_embedding["proxy"][arch] = non_embedding_parameters(model)
        if budget.transfer_steps:
            non_embedding["transfer"][arch] = non_embedding_parameters(shape_model(budget, arch, "transfer"))
    return sizes, non_embedding


def run_search(runner, budget: RelativeLRBudget, base_lr: dict, groups: dict, seed: int, device: str) -> dict:
    """Both architectures' local searches in lock step; every batch of trials in one ``run_all``."""
    searches, proxies = {}, {}
    for arch in ARCHITECTURES:
        proxies[arch] = relative_schedule(
            base_lr[arch],
            budget.search_steps,
            warmup_steps=budget.search_warmup,
            final_fraction=final_fraction(arch),
        )
        knobs = schedule_knobs(groups[arch], include_global=budget.search_global)
        searches[arch] = LocalSearch(
            schedule_point(proxies[arch], knobs),
            max_passes=budget.search_passes,
            max_evaluations=budget.search_evaluations,
            seed=seed,
            allowed=within_domain,
        )
    round_index = 0
    while True:
        asked = {arch: search.ask() for arch, search in searches.items()}
        if not any(asked.values()):
            return searches
        round_index += 1
        tasks = [
            _task(budget, arch, schedule_at(proxies[arch], point), seed, device, track=False, curve=False)
            for arch, points in asked.items()
            for point in points
        ]
        outcomes = iter(runner(tasks, f"search round {round_index}"))
        for arch, points in asked.items():
            if points:
                searches[arch].tell([final_loss(next(outcomes)) for _ in points])


def _schedules(budget: RelativeLRBudget, base_lr: dict, searches: dict) -> dict:
    """(architecture, preset) -> the comparison's schedule: uniform at the tuned η, the paper's multipliers on it,
    and the search's incumbent moved from the proxy's length to the comparison's."""
    schedules = {}
    for arch in ARCHITECTURES:
        uniform = relative_schedule(
            base_lr[arch], budget.steps, warmup_steps=budget.warmup_steps, final_fraction=final_fraction(arch)
        )
        schedules[(arch, "uniform")] = uniform
        schedules[(arch, "paper")] = uniform.with_multipliers(paper_preset(arch).multipliers)
        found = schedule_at(
            relative_schedule(
                base_lr[arch],
                budget.search_steps,
                warmup_steps=budget.search_warmup,
                final_fraction=final_fraction(arch),
            ),
            searches[arch].incumbent,
        )
        schedules[(arch, "found")] = replace(
            uniform,
            multipliers=found.multipliers,
            final_fraction=found.final_fraction,
            base_lr=found.base_lr,
        )
    return schedules


def run_comparison(runner, budget: RelativeLRBudget, schedules: dict, seeds, device: str) -> tuple[dict, dict]:
    """The three schedules on every seed and the ablation, in one ``run_all``: (runs, ablation)."""
    keys, tasks = [], []
    for arch in ARCHITECTURES:
        for preset in PRESETS:
            for seed in seeds:
                keys.append(("run", arch, preset, seed))
                tasks.append(_task(budget, arch, schedules[(arch, preset)], seed, device))
        if arch in budget.ablation:
            paper = schedules[(arch, "paper")]
            for group, (start, end) in paper.as_dict().items():
                if (start, end) == (1.0, 1.0):
                    continue  # already uniform: resetting it changes nothing
                for seed in seeds[: budget.ablation_seeds]:
                    keys.append(("ablation", arch, group, seed))
                    tasks.append(_task(budget, arch, paper.reset(group), seed, device, track=False))
    outcomes = runner(tasks, "comparison and ablation")
    runs, ablation = {}, {}
    for key, outcome in zip(keys, outcomes, strict=True):
        (runs if key[0] == "run" else ablation)[key[1:]] = outcome
    return runs, ablation


def run_transfer(runner, budget: RelativeLRBudget, schedules: dict, base_lr: dict, seeds, device: str):
    """The transfer study: η swept again on the larger model, then the three schedules there with the
    multipliers reused unchanged (a searched η keeps its ratio to the tuned one). Returns (runs, η, sweep)."""
    sweep, transfer_lr = _sweep(runner, budget, device, "transfer", seeds[0])
    keys, tasks = [], []
    for arch in ARCHITECTURES:
        uniform = relative_schedule(
            transfer_lr[arch],
            budget.transfer_steps,
            warmup_steps=budget.transfer_warmup,
            final_fraction=final_fraction(arch),
        )
        for preset in PRESETS:
            tuned = schedules[(arch, preset)]
            schedule = replace(
                uniform,
                multipliers=tuned.multipliers,
                final_fraction=tuned.final_fraction,
                base_lr=uniform.base_lr * (tuned.base_lr / base_lr[arch]),
            )
            for seed in seeds:
                keys.append((arch, preset, seed))
                tasks.append(_task(budget, arch, schedule, seed, device, shape="transfer"))
    return dict(zip(keys, runner(tasks, "transfer"), strict=True)), transfer_lr, sweep


def run_experiment(run: Run, budget: RelativeLRBudget) -> Result:
    """The whole study (see the module docstring)."""
    if not isinstance(run, Run):
        raise ValueError(f"run={run!r} is not allowed; expected the Run returned by efflab.setup")
    if not isinstance(budget, RelativeLRBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a RelativeLRBudget")
    device = str(run.device)
    seeds = seeds_for(run.seed, budget.seeds)
    tuning_seed = run.seed + TUNING_SEED_OFFSET
    runner = _Runner()
    load_corpus(budget.corpus_bytes)  # build the cache once, before the workers read it
    with Timer() as timer:
        sweep, base_lr = _sweep(runner, budget, device, "proxy", seeds[0])
        sizes, non_embedding = _model_sizes(budget)
        groups = {arch: tuple(g for g in GROUPS if sizes[arch].get(g, 0) > 0) for arch in ARCHITECTURES}
        searches = run_search(runner, budget, base_lr, groups, tuning_seed, device)
        schedules = _schedules(budget, base_lr, searches)
        runs, ablation = run_comparison(runner, budget, schedules, seeds, device)
        transfer, transfer_base_lr, transfer_sweep = {}, {}, {}
        if budget.transfer_steps:
            transfer, transfer_base_lr, transfer_sweep = run_transfer(
                runner, budget, schedules, base_lr, seeds, device
            )
    return Result(
        budget=budget,
        seeds=seeds,
        tuning_seed=tuning_seed,
        sweep=sweep,
        base_lr=base_lr,
        schedules=schedules,
        runs=runs,
        searches=searches,
        ablation=ablation,
        transfer=transfer,
        transfer_base_lr=transfer_base_lr,
        transfer_sweep=transfer_sweep,
        sizes=sizes,
        non_embedding=non_embedding,
        seconds=timer.seconds,
        device=device,
    )


# ---------------------------------------------------------------------------------------------- one more run


def live_run(result: Result, architecture: str, multipliers: dict, base_lr: float, report=None) -> dict:
    """Train one more run at the comparison's shape and first seed with these multipliers (the playground's
    button); ``report(fraction, message)`` hears of every evaluation."""
    check_choice("architecture", architecture, result.architectures)
    check_multiplier("base_lr", base_lr)
    uniform = result.schedules[(architecture, "uniform")]
    schedule = replace(uniform, base_lr=float(base_lr)).with_multipliers(multipliers)
    task = _task(result.budget, architecture, schedule, result.seeds[0], result.device)

    def on_eval(step, total, loss):
        if report is not None:
            report(step / total, f"step {step}/{total}: validation loss {loss:.3f}")

    with torch_threads(1):  # as a run_all task runs, so the same settings reproduce a stored run
        outcome = train_task(task, on_eval=on_eval)
    outcome["schedule"] = schedule
    outcome["speedup"] = speedup(outcome, result.runs[(architecture, "uniform", result.seeds[0])], schedule.steps)
    return outcome


# ---------------------------------------------------------------------------------------------- paper vs run

LABELS = {"dense": "dense", "moe": "MoE"}
PRESET_NAMES = {"paper": "paper's preset", "found": "found preset"}


def multiplier_table(summary: dict) -> pd.DataFrame:
    """Found multipliers beside the paper's: one row per (architecture, group)."""
    rows = []
    for arch, values in summary["architectures"].items():
        for group in GROUPS:
            if values["group_sizes"].get(group, 0) == 0:
                continue
            paper = values["paper"].get(group, [1.0, 1.0])
            found = values["found"].get(group, [1.0, 1.0])
            rows.append(
                {
                    "architecture": LABELS[arch],
                    "group": group,
                    "paper s_g": paper[0],
                    "found s_g": round(found[0], 4),
                    "paper e_g": paper[1],
                    "found e_g": round(found[1], 4),
                    "parameters": values["group_sizes"][group],
                }
            )
    return pd.DataFrame(rows).set_index(["architecture", "group"])


def _speedup_text(values) -> str | None:
    return None if not values else f"{spread(values)} %"


def _transfer_text(summary: dict, architecture: str, preset: str) -> str | None:
    """A preset's speed-up on the larger model and that model's size ratio; None without a transfer study."""
    transfer = summary.get("transfer")
    if not transfer:
        return None
    values = transfer["architectures"][architecture]
    return f"{_speedup_text(values['speedup'][preset])} at {values['size_ratio']:.0f}x"


def _found_text(values: dict, group: str) -> str:
    start, end = values["found"].get(group, [1.0, 1.0])
    return f"{start:.3g}, {end:.3g}"


def paper_rows(summary: dict, committed: dict | None = None) -> pd.DataFrame:
    """The paper's numbers beside this run's (and the committed full-mode run's)."""

    def full(path):
        if committed is None:
            return None
        try:
            return path(committed)
        except (KeyError, TypeError):
            return None

    rows = []
    for arch in ARCHITECTURES:
        if arch not in summary["architectures"]:
            continue
        label = LABELS[arch]
        rows.append(
            {
                "quantity": f"speed-up over uniform, {label}, paper's preset",
                "paper": "up to 23 % (abstract), largest for MoE"
                if arch == "moe"
                else "smaller than for MoE (abstract: 'especially' MoE)",
                "this_run": _speedup_text(summary["architectures"][arch]["speedup"]["paper"]),
                "full_run": full(lambda c, a=arch: _speedup_text(c["architectures"][a]["speedup"]["paper"])),
                "note": "speed-up = share of the uniform run's steps saved (inferred definition); "
                "presets tuned on C4 at 25M-680M parameters",
            }
        )
        rows.append(
            {
                "quantity": f"speed-up over uniform, {label}, found preset",
                "paper": "their own search result is the paper's preset",
                "this_run": _speedup_text(summary["architectures"][arch]["speedup"]["found"]),
                "full_run": full(lambda c, a=arch: _speedup_text(c["architectures"][a]["speedup"]["found"])),
                "note": f"searched on a {summary['search_steps']}-step proxy, held-out tuning seed",
            }
        )
    for arch in ARCHITECTURES:
        if arch not in summary["architectures"]:
            continue
        values = summary["architectures"][arch]
        for group in GROUPS:
            if values["group_sizes"].get(group, 0) == 0:
                continue
            start, end = values["paper"].get(group, [1.0, 1.0])
            rows.append(
                {
                    "quantity": f"s_g, e_g of {group} ({LABELS[arch]})",
                    "paper": f"{start:g}, {end:g}",
                    "this_run": _found_text(values, group),
                    "full_run": full(lambda c, a=arch, g=group: _found_text(c["architectures"][a], g)),
                    "note": "authors' configs (code, not the paper's text)",
                }
            )
    for arch in ARCHITECTURES:
        for preset in ("paper", "found"):
            rows.append(
                {
                    "quantity": f"speed-up on a larger model, {LABELS[arch]}, {PRESET_NAMES[preset]}",
                    "paper": "multipliers carry over to models up to 27x larger (abstract)",
                    "this_run": _transfer_text(summary, arch, preset),
                    "full_run": full(lambda c, a=arch, p=preset: _transfer_text(c, a, p)),
                    "note": "full mode only; size in non-embedding parameters, η swept again there",
                }
            )
    return paper_table(rows, full_run_on=committed_device_name(committed))


def committed_device_name(committed: dict | None) -> str:
    from efflab.experiment import committed_device

    return committed_device(NAME) if committed is not None else "GPU"


def _verdict(values) -> tuple[str, str]:
    """("faster on every seed" | ..., "agrees" | "disagrees" | "mixed")."""
    faster = sum(v > 0 for v in values)
    if faster == len(values):
        return "faster on every seed", "agrees"
    if faster == 0:
        return "not faster on any seed", "disagrees"
    return f"faster on {faster} of {len(values)} seeds", "mixed"


def findings(summary: dict) -> str:
    """What this run found, in sentences computed from the summary."""
    lines = []
    archs = summary["architectures"]
    for arch, values in archs.items():
        label = LABELS[arch]
        for preset, name in (("paper", "the paper's preset"), ("found", "the searched preset")):
            speedups = values["speedup"][preset]
            verdict, agreement = _verdict(speedups)
            reading = {
                "agrees": "in the direction the paper reports",
                "disagrees": "against the paper's claim, at this toy scale",
                "mixed": "so the seeds disagree, and this run cannot tell it apart from uniform",
            }[agreement]
            lines.append(
                f"- **{label}, {name}:** speed-up {spread(speedups)} % over the tuned uniform schedule "
                f"(η = {values['base_lr']:g}), {verdict}: {reading}."
            )
    for arch, values in archs.items():
        rates = sorted(float(rate) for rate in values["lr_sweep"])
        if len(rates) > 1 and values["base_lr"] in (rates[0], rates[-1]):
            lines.append(
                f"- **Caution ({LABELS[arch]}):** the tuned η = {values['base_lr']:g} is at the edge of the sweep "
                f"({rates[0]:g} to {rates[-1]:g}), so the uniform baseline may not be at its best rate, and part "
                "of any gain may be a better overall rate rather than a better split between components."
            )
    if "moe" in archs and "dense" in archs:
        moe = float(np.mean(archs["moe"]["speedup"]["paper"]))
        dense = float(np.mean(archs["dense"]["speedup"]["paper"]))
        relation = "larger" if moe > dense else "not larger"
        echo = "as the paper says" if moe > dense else "unlike the paper, which finds the gain mostly in MoE"
        lines.append(
            f"- With the paper's presets, the MoE's mean gain ({moe:+.1f} %) is {relation} than the dense model's "
            f"({dense:+.1f} %), {echo}."
        )
    for arch, values in archs.items():
        search = values["search"]
        moved = [
            (group, found)
            for group, found in values["found"].items()
            if any(abs(math.log(v)) > 1e-9 for v in found)
        ]
        same_side, compared = 0, 0
        for group, (start, _end) in values["found"].items():
            paper_start = values["paper"].get(group, [1.0, 1.0])[0]
            if abs(math.log(start)) > 1e-9 and abs(math.log(paper_start)) > 1e-9:
                compared += 1
                same_side += (start > 1) == (paper_start > 1)
        moved_text = ", ".join(f"{g} ({s:.3g}, {e:.3g})" for g, (s, e) in moved) or "nothing (uniform kept)"
        side_text = (
            f"; of the start multipliers both moved away from 1, {same_side} of {compared} went the paper's way"
            if compared
            else ""
        )
        lines.append(
            f"- **Search ({LABELS[arch]}):** {search['evaluations']} proxy runs in {search['passes']} pass(es), "
            f"stopped by {search['stopped']}; proxy loss {search['start_loss']:.4f} -> {search['best_loss']:.4f}. "
            f"Moved: {moved_text}{side_text}."
        )
        if values["ablation"]:
            full_gain = float(np.mean(values["ablation_reference"]))
            drops = {g: full_gain - float(np.mean(v)) for g, v in values["ablation"].items()}
            worst = max(drops, key=drops.get)
            best = min(drops, key=drops.get)
            lines.append(
                f"- **Ablation ({LABELS[arch]}):** resetting {worst} to uniform costs the most "
                f"({drops[worst]:+.1f} points of speed-up); resetting {best} changes it by {-drops[best]:+.1f} "
                f"points" + (" (it helps: that group's multipliers hurt here)." if drops[best] < 0 else ".")
            )
        sizes = values["update_size"]["uniform"]
        if sizes:
            largest, smallest = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
            lines.append(
                f"- **Update sizes ({LABELS[arch]}, uniform):** the {largest}'s mean relative update "
                f"||ΔW||/||W|| is {sizes[largest] / sizes[smallest]:.1f}x the {smallest}'s: one learning rate "
                "moves the components at different paces, the observation the paper starts from."
            )
    lines.extend(_transfer_findings(summary.get("transfer")))
    return "\n".join(lines)


def _transfer_findings(transfer: dict | None) -> list[str]:
    """One sentence per architecture and preset on the larger model, or a note that there was no transfer."""
    if not transfer:
        return ["- The transfer to a larger model runs in full mode only; this run has none."]
    lines = []
    for arch, values in transfer["architectures"].items():
        for preset in ("paper", "found"):
            speedups = values["speedup"][preset]
            verdict, agreement = _verdict(speedups)
            lines.append(
                f"- **Transfer ({LABELS[arch]}, {PRESET_NAMES[preset]}):** reused unchanged on a model "
                f"{values['size_ratio']:.0f}x larger in non-embedding parameters (η = {values['base_lr']:g}, "
                f"swept again), it gives {spread(speedups)} % over uniform ({verdict}; "
                f"{'in line with' if agreement == 'agrees' else 'short of'} the paper's transfer claim)."
            )
    return lines
