"""The experiment of notebook 07: coordinate checks and learning-rate sweeps under SP, simpleP and muP for MoE.

Three parts, their independent trainings through :func:`efflab.parallel.run_all` in two calls (the coordinate
checks, then every sweep's distinct runs together):

1. **Coordinate check** (:mod:`~efflab.maximal_update.coordinate_check`): every parameterization, every width of
   ``coord_widths``, ``coord_seeds`` seeds, ``coord_steps`` steps at a large LR; the slope of log l1 against
   log width at ``slope_step`` for every activation.
2. **Width sweep** (:mod:`~efflab.maximal_update.transfer`): loss against LR for each width of ``sweep_widths``,
   under SP and muP, ``sweep_seeds`` seeds; the argmin per width and how far it moved, in grid steps.
3. **Experts and granularity**: the same sweep under muP at ``fixed_width``, once across expansion rates E (the
   number of experts E·G at G = 1) and once across granularities G at the family's E.

Budgets live here: :meth:`MupBudget.quick` shows the mechanism on two CPU cores in well under a minute (tiny
sweeps: short runs, few LRs, two seeds, so the argmins are noisy and the notebook says so);
:meth:`MupBudget.full` is the larger grid for one GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from efflab.data.text import load_corpus
from efflab.experiment import Budget, paper_table, seeds_for, spread
from efflab.maximal_update.coordinate_check import (
    CoordinateCheckTask,
    coordinate_slopes,
    records_table,
    run_coordinate_check,
)
from efflab.maximal_update.model import ModelFamily
from efflab.maximal_update.parameterization import (
    LABELS,
    PARAMETERIZATIONS,
    Multipliers,
    check_parameterization,
    checked_multipliers,
)
from efflab.maximal_update.transfer import SweepTask, optima, optimum_shift, sweep_table, train_for_sweep
from efflab.parallel import gpu_share_for, run_all
from efflab.runtime import Run, Timer
from efflab.validation import check_choice, check_int, check_positive, check_range

NAME = "07_mup_for_moe"
FLAT = 0.2  # |slope| below this counts as flat (the threshold of the research notes' tests)
GROWS = 0.3  # slope above this counts as growing
SWEPT = ("sp", "mup")  # the parameterizations of the width sweep
GROUPS = ("hidden", "router", "output")  # the activation groups a coordinate check measures
LOG2_LR_LIMIT = 64  # |log2 LR| beyond this is no learning rate (and 2**1024 overflows a float)


def _check_widths(name: str, widths, family: ModelFamily, *, at_least: int = 1) -> None:
    if not isinstance(widths, tuple) or len(widths) < at_least:
        raise ValueError(f"{name}={widths!r} is not allowed; expected a tuple of at least {at_least} widths")
    for width in widths:
        family.check_width(width, name=name)
    if list(widths) != sorted(set(widths)):
        raise ValueError(f"{name}={widths!r} is not allowed; expected increasing widths without repeats")


def _check_values(name: str, values, *, at_least: int = 1) -> None:
    if not isinstance(values, tuple) or len(values) < at_least:
        raise ValueError(f"{name}={values!r} is not allowed; expected a tuple of at least {at_least} integers")
    for value in values:
        check_int(name, value, low=1)
    if list(values) != sorted(set(values)):
        raise ValueError(f"{name}={values!r} is not allowed; expected increasing values without repeats")


@dataclass(frozen=True)
class MupBudget(Budget):
    """Model family, coordinate check, and the three LR sweeps."""

    base_width: int
    n_layer: int
    head_dim: int
    ffn_ratio: int
    expansion: int
    granularity: int
    block_size: int
    max_bytes: int
    coord_widths: tuple[int, ...]
    coord_seeds: int
    coord_steps: int
    coord_lr: float
    coord_batch_size: int
    slope_step: int
    sweep_widths: tuple[int, ...]
    sweep_log2_lrs: tuple[float, ...]
    sweep_seeds: int
    sweep_steps: int
    sweep_batch_size: int
    warmup_steps: int
    eval_batches: int
    fixed_width: int
    expert_counts: tuple[int, ...]
    granularities: tuple[int, ...]
    moe_sweep_seeds: int

    def __post_init__(self):
        family = self.family()  # validates the family fields
        check_int("max_bytes", self.max_bytes, low=10_000)
        _check_widths("coord_widths", self.coord_widths, family, at_least=2)
        check_int("coord_seeds", self.coord_seeds, low=1)
        check_int("coord_steps", self.coord_steps, low=1)
        check_positive("coord_lr", self.coord_lr)
        check_int("coord_batch_size", self.coord_batch_size, low=1)
        check_int("slope_step", self.slope_step, low=1, high=self.coord_steps)
        _check_widths("sweep_widths", self.sweep_widths, family, at_least=2)
        if not isinstance(self.sweep_log2_lrs, tuple) or len(self.sweep_log2_lrs) < 3:
            raise ValueError(f"sweep_log2_lrs={self.sweep_log2_lrs!r} is not allowed; expected at least 3 values")
        for value in self.sweep_log2_lrs:
            check_range("sweep_log2_lrs", value, low=-LOG2_LR_LIMIT, high=LOG2_LR_LIMIT)
        if list(self.sweep_log2_lrs) != sorted(set(self.sweep_log2_lrs)):
            raise ValueError(f"sweep_log2_lrs={self.sweep_log2_lrs!r} is not allowed; expected increasing values")
        check_int("sweep_seeds", self.sweep_seeds, low=1)
        check_int("sweep_steps", self.sweep_steps, low=1)
        check_int("sweep_batch_size", self.sweep_batch_size, low=1)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.sweep_steps)
        check_int("eval_batches", self.eval_batches, low=1)
        family.check_width(self.fixed_width, name="fixed_width")
        _check_values("expert_counts", self.expert_counts, at_least=2)
        _check_values("granularities", self.granularities, at_least=2)
        for granularity in self.granularities:
            try:
                family.with_changes(granularity=granularity).check_width(self.fixed_width, name="fixed_width")
            except ValueError as error:
                raise ValueError(f"granularities={self.granularities!r} is not allowed: {error}") from None
        check_int("moe_sweep_seeds", self.moe_sweep_seeds, low=1)

    @classmethod
    def quick(cls) -> MupBudget:
        """Two CPU cores: one block, widths 32-256 in the coordinate check, 32-128 in the sweeps, 80-step runs."""
        return cls(
            base_width=32,
            n_layer=1,
            head_dim=16,
            ffn_ratio=2,
            expansion=4,
            granularity=1,
            block_size=32,
            max_bytes=400_000,
            coord_widths=(32, 64, 128, 256),
            coord_seeds=3,
            coord_steps=5,
            coord_lr=1e-2,
            coord_batch_size=4,
            slope_step=4,
            sweep_widths=(32, 64, 128),
            sweep_log2_lrs=(-9, -7.5, -6, -4.5, -3),
            sweep_seeds=2,
            sweep_steps=80,
            sweep_batch_size=8,
            warmup_steps=4,
            eval_batches=4,
            fixed_width=64,
            expert_counts=(2, 4, 8),
            granularities=(1, 2, 4),
            moe_sweep_seeds=1,
        )

    @classmethod
    def full(cls) -> MupBudget:
        """One GPU: widths 64-1024 in the coordinate check and 64-512 in the sweeps, 300-step runs, more seeds."""
        return cls(
            base_width=64,
            n_layer=2,
            head_dim=16,
            ffn_ratio=2,
            expansion=4,
            granularity=1,
            block_size=64,
            max_bytes=4_000_000,
            coord_widths=(64, 128, 256, 512, 1024),
            coord_seeds=3,
            coord_steps=6,
            coord_lr=1e-2,
            coord_batch_size=8,
            slope_step=4,
            sweep_widths=(64, 128, 256, 512),
            sweep_log2_lrs=(-10, -9, -8, -7, -6, -5, -4, -3),
            sweep_seeds=2,
            sweep_steps=300,
            sweep_batch_size=32,
            warmup_steps=20,
            eval_batches=8,
            fixed_width=128,
            expert_counts=(2, 4, 8, 16),
            granularities=(1, 2, 4, 8),
            moe_sweep_seeds=2,
        )

    def family(self, **changes) -> ModelFamily:
        fields = dict(
            base_width=self.base_width,
            n_layer=self.n_layer,
            head_dim=self.head_dim,
            ffn_ratio=self.ffn_ratio,
            expansion=self.expansion,
            granularity=self.granularity,
            block_size=self.block_size,
        )
        return ModelFamily(**{**fields, **changes})

    @property
    def lrs(self) -> tuple[float, ...]:
        return tuple(2.0**value for value in self.sweep_log2_lrs)


# ------------------------------------------------------------------------------------------------------- tasks


def coordinate_tasks(
    budget: MupBudget,
    seeds: tuple[int, ...],
    device: str,
    *,
    parameterizations=PARAMETERIZATIONS,
    multipliers: Multipliers | None = None,
    widths: tuple[int, ...] | None = None,
) -> list[CoordinateCheckTask]:
    if not isinstance(budget, MupBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a MupBudget")
    family = budget.family()
    widths = budget.coord_widths if widths is None else widths
    _check_widths("widths", widths, family, at_least=2)
    multipliers = checked_multipliers(multipliers)
    return [
        CoordinateCheckTask(
            family,
            width,
            parameterization,
            seed,
            multipliers=multipliers,
            steps=budget.coord_steps,
            lr=budget.coord_lr,
            batch_size=budget.coord_batch_size,
            block_size=budget.block_size,
            max_bytes=budget.max_bytes,
            device=device,
        )
        for width in reversed(widths)  # widest first: the pool ends on short tasks
        for parameterization in parameterizations
        for seed in seeds
    ]


def _sweep_task(budget: MupBudget, family, width, parameterization, lr, seed, device, label) -> SweepTask:
    return SweepTask(
        family,
        width,
        parameterization,
        lr,
        seed,
        steps=budget.sweep_steps,
        batch_size=budget.sweep_batch_size,
        block_size=budget.block_size,
        warmup_steps=budget.warmup_steps,
        eval_batches=budget.eval_batches,
        max_bytes=budget.max_bytes,
        device=device,
        label=label,
    )


def sweep_tasks(budget: MupBudget, seeds: tuple[int, ...], moe_seeds: tuple[int, ...], device: str) -> dict:
    """The three sweeps' tasks: ``{"width": [...], "expansion": [...], "granularity": [...]}``."""
    family = budget.family()
    width = [
        _sweep_task(budget, family, w, p, lr, s, device, f"width {w}")
        for w in reversed(budget.sweep_widths)
        for p in SWEPT
        for lr in budget.lrs
        for s in seeds
    ]
    expansion = [
        _sweep_task(
            budget, budget.family(expansion=e, granularity=1), budget.fixed_width, "mup", lr, s, device, f"E={e}"
        )
        for e in reversed(budget.expert_counts)
        for lr in budget.lrs
        for s in moe_seeds
    ]
    granularity = [
        _sweep_task(budget, budget.family(granularity=g), budget.fixed_width, "mup", lr, s, device, f"G={g}")
        for g in reversed(budget.granularities)
        for lr in budget.lrs
        for s in moe_seeds
    ]
    return {"width": width, "expansion": expansion, "granularity": granularity}


def _run_unique(function, tasks: list, description: str, device: str) -> list:
    """``run_all`` over the distinct tasks only (the sweeps share some points), results for every task."""
    unique = list(dict.fromkeys(tasks))
    outcomes = run_all(function, unique, description=description, gpu_share=gpu_share_for(device))
    results = dict(zip(unique, outcomes, strict=True))
    return [results[task] for task in tasks]


# ------------------------------------------------------------------------------------------------------ result


@dataclass
class Result:
    """Everything the notebook shows; the playground reads from here (and adds live coordinate checks)."""

    budget: MupBudget
    seeds: tuple[int, ...]
    coordinates: pd.DataFrame  # parameterization, width, seed, step, activation, group, l1
    width_sweep: pd.DataFrame  # parameterization, curve (width), lr, log2_lr, seed, val_loss, diverged
    expert_sweep: pd.DataFrame  # the same with curve = E
    granularity_sweep: pd.DataFrame  # the same with curve = G
    live: dict = field(default_factory=dict)  # (parameterization, alpha_in, alpha_out, alpha_router) -> table
    seconds: float = 0.0
    device: str = "cpu"

    def slopes(self, step: int | None = None, table: pd.DataFrame | None = None) -> pd.DataFrame:
        step = self.budget.slope_step if step is None else step
        return coordinate_slopes(self.coordinates if table is None else table, step)

    def sweep(self, which: str) -> pd.DataFrame:
        tables = {"width": self.width_sweep, "expansion": self.expert_sweep, "granularity": self.granularity_sweep}
        if which not in tables:
            raise ValueError(f"which={which!r} is not allowed; expected one of {tuple(tables)}")
        return tables[which]

    def has_fresh_check(self, parameterization: str, multipliers: Multipliers | None = None) -> bool:
        """Whether the playground's button has run a coordinate check of ``parameterization`` at
        ``multipliers`` (None: all α = 1)."""
        check_parameterization(parameterization)
        return live_key(parameterization, checked_multipliers(multipliers)) in self.live

    def coordinate_table(self, parameterization: str, multipliers: Multipliers | None = None):
        """The coordinate-check table of one parameterization at some multipliers: the latest fresh check if
        the button ran one, else the precomputed check at all α = 1, else None."""
        check_parameterization(parameterization)
        multipliers = checked_multipliers(multipliers)
        fresh = self.live.get(live_key(parameterization, multipliers))
        if fresh is not None or multipliers != Multipliers():
            return fresh
        return self.coordinates[self.coordinates["parameterization"] == parameterization]

    def summary(self) -> dict:
        budget = self.budget
        sweeps = {which: _sweep_summary(self.sweep(which)) for which in ("width", "expansion", "granularity")}
        return {
            "base_width": budget.base_width,
            "coord_widths": list(budget.coord_widths),
            "slope_step": budget.slope_step,
            "coord_seeds": len(self.seeds[: budget.coord_seeds]),
            "coordinate_check": _coordinate_summary(self.slopes()),
            "lr_grid": [float(v) for v in budget.lrs],
            "sweep_widths": list(budget.sweep_widths),
            "fixed_width": budget.fixed_width,
            "sweeps": sweeps,
            "seeds": list(self.seeds),
            "seconds": round(self.seconds, 1),
        }


def live_key(parameterization: str, multipliers: Multipliers) -> tuple:
    """Where a fresh coordinate check is kept in ``Result.live``."""
    return (parameterization, multipliers.alpha_in, multipliers.alpha_out, multipliers.alpha_router)


def _coordinate_summary(slopes: pd.DataFrame) -> dict:
    """Per parameterization: every activation's log-log slope against width, and the extremes per group."""
    entry = {}
    for parameterization in PARAMETERIZATIONS:
        part = slopes[slopes["parameterization"] == parameterization]
        hidden, router, output = (part[part["group"] == g]["slope"].to_numpy() for g in GROUPS)
        entry[parameterization] = {
            "slopes": {row.activation: _number(row.slope) for row in part.itertuples()},
            "max_abs_hidden_slope": _number(np.max(np.abs(hidden))),
            "router_slope": _number(np.mean(router)) if len(router) else None,
            "max_abs_router_slope": _number(np.max(np.abs(router))) if len(router) else None,
            "output_slope": _number(output[0]),
        }
    return entry


def _sweep_summary(table: pd.DataFrame) -> dict:
    """Per parameterization: each curve's optimal LR (its index, loss and every seed's), and how far it moves."""
    entry = {}
    for parameterization, part in optima(table).groupby("parameterization", sort=False):
        part = part.sort_values("curve")
        curves = [str(c) for c in part["curve"]]
        seed_indices = np.array(part["seed_indices"].tolist())  # (curves, seeds)
        entry[parameterization] = {
            "curves": [int(v) for v in part["curve"]],
            "best_lr": dict(zip(curves, map(_number, part["best_lr"]), strict=True)),
            "best_index": dict(zip(curves, map(int, part["best_index"]), strict=True)),
            "best_loss": dict(zip(curves, map(_number, part["best_loss"]), strict=True)),
            "seed_indices": dict(zip(curves, (list(map(int, row)) for row in seed_indices), strict=True)),
            "best_loss_seeds": {
                str(c): _seed_losses(table, parameterization, c, lr)
                for c, lr in zip(part["curve"], part["best_lr"], strict=True)
            },
            "shift": optimum_shift(part["best_index"].tolist()),
            "seed_ranges": [optimum_shift(list(column))["range"] for column in seed_indices.T],
            "diverged_runs": int(table[table["parameterization"] == parameterization]["diverged"].sum()),
        }
    return entry


def _seed_losses(table: pd.DataFrame, parameterization: str, curve: int, lr: float) -> list[float]:
    """Each seed's loss at one LR of one curve (finite ones only)."""
    if not math.isfinite(lr):
        return []
    rows = table[(table["parameterization"] == parameterization) & (table["curve"] == curve) & (table["lr"] == lr)]
    return [float(v) for v in rows.sort_values("seed")["val_loss"] if math.isfinite(v)]


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def run_experiment(run: Run, budget: MupBudget) -> Result:
    """The coordinate checks and the three sweeps, all trainings in one ``run_all`` per kind."""
    if not isinstance(run, Run):
        raise ValueError(f"run={run!r} is not allowed; expected the Run returned by efflab.setup")
    if not isinstance(budget, MupBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a MupBudget")
    device = str(run.device)
    seeds = seeds_for(run.seed, max(budget.coord_seeds, budget.sweep_seeds, budget.moe_sweep_seeds))
    with Timer() as timer:
        load_corpus(budget.max_bytes)  # build the cache once, before the workers read it
        coord = coordinate_tasks(budget, seeds[: budget.coord_seeds], device)
        sweeps = sweep_tasks(budget, seeds[: budget.sweep_seeds], seeds[: budget.moe_sweep_seeds], device)
        everything = [*sweeps["width"], *sweeps["expansion"], *sweeps["granularity"]]
        coord_results = run_all(
            run_coordinate_check, coord, description="coordinate check", gpu_share=gpu_share_for(device)
        )
        sweep_results = _run_unique(train_for_sweep, everything, "LR sweeps", device)
        parts, start = {}, 0
        for which in ("width", "expansion", "granularity"):
            count = len(sweeps[which])
            parts[which] = sweep_table(sweeps[which], sweep_results[start : start + count], curve=which)
            start += count
    return Result(
        budget=budget,
        seeds=seeds,
        coordinates=records_table(coord, coord_results),
        width_sweep=parts["width"],
        expert_sweep=parts["expansion"],
        granularity_sweep=parts["granularity"],
        seconds=timer.seconds,
        device=device,
    )


def live_coordinate_check(
    result: Result, parameterization: str, multipliers: Multipliers, report=None, *, seeds: int = 2
) -> pd.DataFrame:
    """One more coordinate check (the playground's button): one parameterization at chosen multipliers, every
    width of the budget, ``seeds`` seeds. Stored in ``result.live`` and returned."""
    check_parameterization(parameterization)
    if not isinstance(multipliers, Multipliers):
        raise ValueError(f"multipliers={multipliers!r} is not allowed; expected a Multipliers")
    check_int("seeds", seeds, low=2)  # a slope per seed mean needs a spread to be honest about
    budget = result.budget
    tasks = coordinate_tasks(
        budget,
        tuple(result.seeds[0] + i for i in range(seeds)),
        result.device,
        parameterizations=(parameterization,),
        multipliers=multipliers,
    )
    if report is not None:
        report(0.05, f"coordinate check of {LABELS[parameterization]} at {multipliers.label()}: {len(tasks)} runs")
    share = gpu_share_for(result.device)
    table = records_table(
        tasks, run_all(run_coordinate_check, tasks, description="coordinate check", gpu_share=share)
    )
    result.live[live_key(parameterization, multipliers)] = table
    return table


# --------------------------------------------------------------------------------------------- paper and findings


def _slope_text(value) -> str:
    return "blew up (inf)" if value is None else f"{value:+.2f}"


def _indices_text(entry: dict) -> str:
    return ", ".join(
        f"{c}: 2^{math.log2(v):g}" if v else f"{c}: all diverged" for c, v in entry["best_lr"].items()
    )


def paper_rows(summary: dict, committed: dict | None = None) -> pd.DataFrame:
    """The paper's claims beside this run (and the committed full-mode run). The paper's tables were not
    available, so the 'paper' column states claims, not numbers."""

    def pick(values, path):
        if values is None:
            return None
        try:
            return path(values)
        except (KeyError, TypeError):
            return None

    def coord(param, key):
        return lambda s: _slope_text(s["coordinate_check"][param][key])

    def moved(param, which):
        def text(s):
            entry = s["sweeps"][which][param]
            shift = entry["shift"]
            return f"argmin {_indices_text(entry)}; range {shift['range']} grid steps"

        return text

    step = summary["slope_step"]
    rows = [
        dict(
            quantity=f"μP: largest |slope| of a hidden activation (step {step})",
            paper="flat: feature learning in the experts at every width (abstract)",
            this_run=coord("mup", "max_abs_hidden_slope")(summary),
            full_run=pick(committed, coord("mup", "max_abs_hidden_slope")),
            note="slope of log mean|x| vs log width, mean of seeds; flat means |slope| < 0.2",
        ),
        dict(
            quantity=f"μP: router-logit slope (step {step})",
            paper="flat: feature learning in the router (abstract)",
            this_run=coord("mup", "router_slope")(summary),
            full_run=pick(committed, coord("mup", "router_slope")),
            note="our router rule (α_r/m_d on the logits) is inferred, not read from the paper",
        ),
        dict(
            quantity=f"simpleP: router-logit slope (step {step})",
            paper="grows (router left at SP; expected from μP theory)",
            this_run=coord("simple", "router_slope")(summary),
            full_run=pick(committed, coord("simple", "router_slope")),
            note="simpleP as read from the Figure 1 caption (third-party summary)",
        ),
        dict(
            quantity=f"SP: output-logit slope (step {step})",
            paper="grows (Tensor Programs V)",
            this_run=coord("sp", "output_slope")(summary),
            full_run=pick(committed, coord("sp", "output_slope")),
            note="SP: one init std and one LR for every tensor",
        ),
        dict(
            quantity="SP: best LR per width",
            paper="moves with width (Figure 1, via a third-party caption)",
            this_run=moved("sp", "width")(summary),
            full_run=pick(committed, moved("sp", "width")),
            note="seed-mean validation loss; the grid is log2-spaced",
        ),
        dict(
            quantity="μP: best LR per width",
            paper="stays: the LR transfers across width (abstract)",
            this_run=moved("mup", "width")(summary),
            full_run=pick(committed, moved("mup", "width")),
            note="no published optimum values were available to us",
        ),
        dict(
            quantity="μP: best LR per expansion rate E",
            paper="stays (third-party summary; unverified)",
            this_run=moved("mup", "expansion")(summary),
            full_run=pick(committed, moved("mup", "expansion")),
            note="fixed width; E·G experts at G = 1",
        ),
        dict(
            quantity="μP: best LR per granularity G",
            paper="shifts with G (third-party summary; unverified)",
            this_run=moved("mup", "granularity")(summary),
            full_run=pick(committed, moved("mup", "granularity")),
            note="fixed width; G·E experts, top-k = G, each G times narrower",
        ),
    ]
    return paper_table(rows, full_run_on="GPU")


PAPER_CLAIMS = {"width": "stays", "expansion": "stays", "granularity": "moves"}  # μP's best LR, by the paper


def grid_move(steps: int | None) -> str | None:
    """How far a best LR moved across a sweep's curves (its range in grid steps), in one word: ``"stayed"``
    (0), ``"one step"`` (1: noise alone moves an argmin that far on a grid this coarse, so it cannot be told
    apart from noise) or ``"moved"`` (2 or more); None when some curve diverged at every LR."""
    if steps is None:
        return None
    check_int("steps", steps, low=0)
    return {0: "stayed", 1: "one step"}.get(steps, "moved")


def transfer_verdict(steps: int | None, claim: str) -> str:
    """The end of a sentence about a best LR: how far it moved (:func:`grid_move`), and whether that agrees
    with the paper's claim that it ``"stays"`` or ``"moves"``. The one rule for every sweep."""
    check_choice("claim", claim, ("stays", "moves"))
    move = grid_move(steps)
    if move is None:
        return "could not be found on every curve (one diverged at every LR): nothing to compare."
    if move == "one step":
        return (
            "moved by one grid step, which noise alone can do on this grid: this neither confirms nor rules out "
            f"the paper's claim that it {claim}."
        )
    agrees = (move == "stayed") == (claim == "stays")
    what = "stayed on the same grid point" if move == "stayed" else f"moved by {steps} grid steps"
    return f"{what}: {'agrees with' if agrees else 'disagrees with'} the paper's claim that it {claim}."


def _steps_text(steps: int | None) -> str:
    """A move of the best LR in grid steps, as words."""
    if steps is None:
        return "none (a curve diverged at every LR)"
    return "1 grid step" if steps == 1 else f"{steps} grid steps"


def _seed_text(ranges: list) -> str:
    """How far μP's best LR moved for each seed alone, counted with :func:`grid_move`."""
    moves = [grid_move(r) for r in ranges if r is not None]
    counts = {move: moves.count(move) for move in ("stayed", "one step", "moved")}
    return (
        f" Seed by seed (each seed's own best LR), μP's stayed for {counts['stayed']} of {len(moves)}, moved one "
        f"grid step for {counts['one step']} and two or more for {counts['moved']}."
    )


def _width_findings(summary: dict) -> str:
    """The width sweep: SP's and μP's best LR across widths, each against the paper's claim, then the seeds and
    μP's loss at each width's best LR."""
    width = summary["sweeps"]["width"]
    mup_shift, sp_shift = width["mup"]["shift"]["range"], width["sp"]["shift"]["range"]
    widths = summary["sweep_widths"]
    text = (
        f"**Width sweep** (widths {widths[0]}-{widths[-1]}). Best LR under SP: {_indices_text(width['sp'])} "
        f"(range {_steps_text(sp_shift)}); under μP: {_indices_text(width['mup'])} "
        f"(range {_steps_text(mup_shift)}). "
        f"μP's best LR {transfer_verdict(mup_shift, PAPER_CLAIMS['width'])} "
        f"SP's {transfer_verdict(sp_shift, 'moves')}"  # SP's moves with width (Figure 1)
    )
    if grid_move(mup_shift) in ("stayed", "one step") and grid_move(sp_shift) in ("stayed", "one step"):
        text += " Neither moved by two or more steps: the sweep is too short or too narrow to separate them."
    if any(r is not None for r in width["mup"]["seed_ranges"]):
        text += _seed_text(width["mup"]["seed_ranges"])
    losses = [width["mup"]["best_loss"][str(w)] for w in widths]
    if all(v is not None for v in losses):
        order = "wider is better at its best LR" if all(np.diff(losses) < 0) else "wider is not always better"
        quoted = [
            f"{w}: {spread(width['mup']['best_loss_seeds'][str(w)])}"
            for w in widths
            if width["mup"]["best_loss_seeds"][str(w)]
        ]
        text += f" μP's loss at each width's best LR (seeds): {'; '.join(quoted)} ({order})."
    return text


def findings(summary: dict) -> str:
    """What this run found, in sentences computed from the summary, each beside the paper's claim."""
    coordinate = summary["coordinate_check"]
    step = summary["slope_step"]
    widths = summary["coord_widths"]
    lines = []

    def flat(value):
        return value is not None and abs(value) < FLAT

    def grows(value):
        return value is None or value > GROWS  # None: the activation overflowed, the strongest growth

    mup, simple, sp = coordinate["mup"], coordinate["simple"], coordinate["sp"]
    mup_ok = flat(mup["max_abs_hidden_slope"]) and flat(mup["max_abs_router_slope"])
    lines.append(
        f"**Coordinate check** (widths {widths[0]}-{widths[-1]}, step {step}, slopes of log mean|x| against log "
        f"width). μP: largest hidden |slope| {_slope_text(mup['max_abs_hidden_slope'])}, router logits "
        f"{_slope_text(mup['router_slope'])}: "
        + ("everything flat, as μP promises." if mup_ok else "**not** flat everywhere, unlike what μP promises.")
    )
    simple_text = (
        f"simpleP: hidden activations {_slope_text(simple['max_abs_hidden_slope'])} (largest |slope|), router "
        f"logits {_slope_text(simple['router_slope'])}"
    )
    if flat(simple["max_abs_hidden_slope"]) and grows(simple["router_slope"]):
        simple_text += (
            ": the experts are fine, the SP router's logits grow with width (what the router rule fixes)."
        )
    elif grows(simple["router_slope"]):
        simple_text += ": the router logits grow, and some hidden activation grows too (it follows the router)."
    else:
        simple_text += (
            ": the router logits did not grow clearly here, so this run does not show what the rule adds."
        )
    lines.append(simple_text)
    sp_text = (
        f"SP: output logits {_slope_text(sp['output_slope'])}, "
        f"largest hidden {_slope_text(sp['max_abs_hidden_slope'])}"
    )
    sp_text += (
        ": they grow with width, as the theory predicts."
        if grows(sp["output_slope"])
        else ": no clear growth here."
    )
    lines.append(sp_text)

    lines.append(_width_findings(summary))
    for which, symbol in (("expansion", "E"), ("granularity", "G")):
        entry = summary["sweeps"][which]["mup"]
        text = (
            f"**Across {symbol}** (μP, width {summary['fixed_width']}): best LR {_indices_text(entry)}, "
            f"range {_steps_text(entry['shift']['range'])}. The best LR "
            + transfer_verdict(entry["shift"]["range"], PAPER_CLAIMS[which])
        )
        if len(entry["seed_ranges"]) == 1:
            text += " (One seed: read it as a hint.)"
        lines.append(text)
    return "\n\n".join(lines)


__all__ = [
    "NAME",
    "MupBudget",
    "Result",
    "run_experiment",
    "live_coordinate_check",
    "paper_rows",
    "grid_move",
    "transfer_verdict",
    "findings",
]
