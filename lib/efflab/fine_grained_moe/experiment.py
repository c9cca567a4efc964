"""The experiment of notebook 05: byte-level language models, dense and MoE at several granularities and sizes.

The fine-grained scaling law (:mod:`efflab.fine_grained_moe.law`) was fitted on more than a hundred GPU runs
of 3M to 85M-parameter models. Here we run its experiment in miniature: TinyLMs of a few widths, each once with the
dense FFN and once with an MoE at each granularity G (the same expansion rate E, so the same total parameters,
and the same active parameters at every G), all on the same batches.

Choices, and why:

* **Expert-choice routing** with the output LayerNorm, as in the paper. Sequences compete at each
  position, so no token's routing depends on later tokens of its own sequence.
* **Decayed losses.** The paper fits the final losses of separate runs whose learning rate was decayed. We
  share one stable phase per model and branch a short cooldown off each of a few checkpoints
  (:mod:`efflab.lm_grid`, warmup-stable-decay): each branch's final loss is one (N, D, loss) point.
* **N** is the paper's: all non-embedding parameters of the blocks, experts included, router and norms not
  (:func:`efflab.lm_grid.law_parameters`); the head is left out, as the paper leaves out the unembedding.
* **Side by side.** Every run is independent and trains in its own worker (:func:`efflab.parallel.run_all`).

What is noisy at this scale (MoE vs dense, one G vs another) is repeated over seeds and shown with its spread;
the fitted exponents come with bootstrap intervals over runs (:func:`efflab.law_fitting.bootstrap_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from efflab.data.text import ByteCorpus, load_corpus, unigram_loss
from efflab.experiment import committed_device, paper_table, spread
from efflab.fine_grained_moe.law import (
    CHINCHILLA_FORM,
    FG_DENSE,
    FG_MOE,
    FG_TABLE_2,
    FINE_GRAINED_FORM,
    dense_flops_to_match,
    fg_compute_optimal,
    fg_training_flops,
)
from efflab.law_fitting import FitUncertainty, bootstrap_fit, compare_with_paper
from efflab.lm_grid import DENSE, GridBudget, GridResults, RunSpec, seed_spread, train_specs
from efflab.models.moe import MoEConfig, MoEFeedForward
from efflab.runtime import Run, Timer, torch_threads
from efflab.validation import check_choice, check_int, check_seed

NAME = "05_fine_grained_moe_scaling"
PAPER_SAVING = {1e20: "about 20x", 1e25: "> 40x"}  # arXiv 2402.07871, section 6.3
EXPONENTS = ("alpha", "beta", "gamma")
PATH_CHECK_LAYER = MoEConfig(
    d_model=64, d_ff=256, expansion=8, granularity=4
)  # the layer whose paths are compared


@dataclass(frozen=True, kw_only=True)
class GranularityBudget(GridBudget):
    """The grid: every width dense and as an MoE at every granularity (expansion rate ``expansion``); at
    ``spread_width`` the configurations in ``spread_granularities`` (0 = dense) over ``n_seeds`` seeds, and one
    token-choice MoE at the largest granularity, to compare how the two routings balance their load."""

    granularities: tuple[int, ...]
    expansion: int
    spread_granularities: tuple[int, ...]
    routing: str = "expert_choice"
    bootstrap: int = 12

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.granularities, tuple) or not self.granularities:
            raise ValueError(f"granularities={self.granularities!r} is not allowed; expected a non-empty tuple")
        for granularity in self.granularities:
            check_int("granularities", granularity, low=1)
        check_int("expansion", self.expansion, low=2)
        if not isinstance(self.spread_granularities, tuple):
            raise ValueError(
                f"spread_granularities={self.spread_granularities!r} is not allowed; expected a tuple"
            )
        for granularity in self.spread_granularities:
            check_int("spread_granularities", granularity, low=DENSE)
            if granularity != DENSE and granularity not in self.granularities:
                raise ValueError(
                    f"spread_granularities contains {granularity!r}; expected 0 (dense) or one of "
                    f"{self.granularities}"
                )
        check_choice("routing", self.routing, ("token_choice", "expert_choice"))
        check_int("bootstrap", self.bootstrap, low=2)

    @classmethod
    def quick(cls) -> GranularityBudget:
        """17 runs of 64 stable steps and three cooldowns (about 95 optimiser steps each), two at a time on two
        CPU cores."""
        return cls(
            widths=(32, 48, 64),
            granularities=(1, 2, 4),
            expansion=8,
            n_layer=2,
            n_head=2,
            block_size=64,
            batch_size=32,
            steps=64,
            eval_every=16,
            eval_batches=2,
            lr=4e-3,
            warmup_steps=8,
            spread_width=48,
            spread_granularities=(DENSE, 4),
            n_seeds=3,
            checkpoints=(24, 44, 64),
        )

    @classmethod
    def full(cls) -> GranularityBudget:
        """A larger grid for one GPU: wider and deeper models, G up to 8, longer runs, four runs at a time on
        the device."""
        return cls(
            widths=(64, 128, 192),
            granularities=(1, 2, 4, 8),
            expansion=8,
            n_layer=4,
            n_head=4,
            block_size=128,
            batch_size=64,
            steps=320,
            eval_every=40,
            eval_batches=8,
            lr=2e-3,
            warmup_steps=30,
            spread_width=128,
            spread_granularities=(DENSE, 1, 8),
            n_seeds=3,
            checkpoints=(80, 160, 240, 320),
            workers=4,
            bootstrap=40,
        )

    def configurations(self) -> tuple[int, ...]:
        return (DENSE, *self.granularities)

    def spread_configurations(self) -> tuple[int, ...]:
        return self.spread_granularities

    def spec(self, width: int, configuration: int, seed: int) -> RunSpec:
        return RunSpec(width, configuration, seed, self.routing)

    def extra_specs(self, seed: int) -> list[RunSpec]:
        other = "token_choice" if self.routing == "expert_choice" else "expert_choice"
        return [RunSpec(self.spread_width, max(self.granularities), seed, other)]


def execution_path_check(
    config: MoEConfig, batch: tuple[int, int] = (8, 32), *, seed: int = 0, threads: int | None = 1
) -> pd.DataFrame:
    """Run one layer's weights through every execution path on the same batch: the largest difference from the
    loop (the reference) in the output and in every gradient, and the time of one forward and backward pass
    (after a warm-up pass).

    The time is a single measurement on whatever else the machine is doing: read it as an order of magnitude;
    ``benchmarks/moe_throughput.py`` measures properly.
    """
    if not isinstance(config, MoEConfig):
        raise ValueError(f"config={config!r} is not allowed; expected a MoEConfig")
    if not isinstance(batch, tuple) or len(batch) != 2:
        raise ValueError(f"batch={batch!r} is not allowed; expected a pair (batch, time)")
    for size in batch:
        check_int("batch", size, low=1)
    check_seed(seed)
    if threads is not None:
        check_int("threads", threads, low=1)
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


# ----------------------------------------------------------------------------------------------- the fits


@dataclass(frozen=True)
class ExperimentFits:
    """The law's form fitted to this run's decayed losses: MoE (fine-grained form) and dense (Chinchilla form),
    each with its bootstrap over runs."""

    moe: FitUncertainty
    dense: FitUncertainty
    n_moe_points: int
    n_dense_points: int


def fit_laws(results: GridResults, *, resamples: int = 12, n_starts: int = 6, seed: int = 0) -> ExperimentFits:
    """Fit the fine-grained form to the MoE runs and Chinchilla's to the dense runs (one point per cooldown
    branch), each with a bootstrap over runs."""
    points = results.law_points()
    moe = points[points.routing == results.budget.routing]
    dense = points[points.routing == "dense"]

    def run_of(rows):
        return [f"{w}/{g}/{s}" for w, g, s in zip(rows.width, rows.granularity, rows.seed, strict=True)]

    moe_fit = bootstrap_fit(
        FINE_GRAINED_FORM,
        {"N": moe.params, "D": moe.tokens, "G": moe.granularity},
        moe.val_loss,
        run_of(moe),
        resamples=resamples,
        n_starts=n_starts,
        seed=seed,
    )
    dense_fit = bootstrap_fit(
        CHINCHILLA_FORM,
        {"N": dense.params, "D": dense.tokens},
        dense.val_loss,
        run_of(dense),
        resamples=resamples,
        n_starts=n_starts,
        seed=seed,
    )
    return ExperimentFits(moe_fit, dense_fit, len(moe), len(dense))


def with_training_flops(points: pd.DataFrame, budget: GranularityBudget) -> pd.DataFrame:
    """The law points with their training FLOPs by eq. 10 (router counted; 0 for dense, which has none); their
    wall-clock seconds come from :func:`with_wall_clock`."""
    points = points.copy()
    granularity = points.granularity.clip(lower=1).to_numpy(float)
    expansion = points.expansion.to_numpy(float)
    router = np.where(points.granularity.to_numpy() == DENSE, 0.0, 14.0)
    flops = [
        float(fg_training_flops(w, t, int(e), g, n_blocks=budget.n_layer, router_flops_factor=r))
        for w, t, e, g, r in zip(points.width, points.tokens, expansion, granularity, router, strict=True)
    ]
    points["training_flops"] = flops
    return points


def with_wall_clock(points: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The law points with the wall-clock seconds their branch took: its optimiser steps times the run's
    measured seconds per step (stable phase and cooldowns together)."""
    per_step = runs.assign(per_step=runs.seconds / runs.optimizer_steps)[["label", "width", "seed", "per_step"]]
    merged = points.merge(per_step, on=["label", "width", "seed"], how="left")
    merged["seconds"] = merged.per_step * merged.step
    return merged.drop(columns="per_step")


# ---------------------------------------------------------------------------------------------- the result


@dataclass
class GranularityResult:
    """Everything notebook 05's figures and tables need."""

    budget: GranularityBudget
    seed: int
    grid: GridResults
    fits: ExperimentFits
    path_check: pd.DataFrame
    table_2: pd.DataFrame
    savings: dict[float, float]
    unigram_loss: float
    seconds: float = 0.0
    points: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self) -> dict:
        """The headline numbers, plain values: the single source of the table, the findings and the record."""
        runs = self.grid.runs
        first = runs[(runs.seed == self.seed) & (runs.routing != "token_choice")]
        best_by_width = {
            str(width): _label_of(group.loc[group.val_loss.idxmin()]) for width, group in first.groupby("width")
        }
        spreads = seed_spread(self.grid)
        finals = {label: [float(v) for v in values[:, -1]] for label, values in spreads.items()}
        fits = {}
        for kind, uncertainty in (("moe", self.fits.moe), ("dense", self.fits.dense)):
            fits[kind] = {
                "coefficients": uncertainty.fit.coefficients,
                "intervals": {n: list(uncertainty.interval(n)) for n in uncertainty.fit.coefficients},
                "at_bounds": list(uncertainty.flagged),
                "rmse_log": uncertainty.fit.rmse_log,
                "points": uncertainty.fit.n_points,
                "runs": uncertainty.n_groups,
            }
        seconds_per_step = (runs.seconds / runs.optimizer_steps).groupby(runs.label).mean()
        return {
            "seed": self.seed,
            "widths": [int(w) for w in self.budget.widths],
            "granularities": [int(g) for g in self.budget.granularities],
            "table_2_granularities": [int(g) for g in self.table_2["G (ours)"]],
            "table_2_paper_granularities": [row.granularity for row in FG_TABLE_2],
            "table_2_largest_loss_gap": float(
                (self.table_2["loss (ours)"] - self.table_2["loss (paper)"]).abs().max()
            ),
            "saving_at_1e20": self.savings[1e20],
            "saving_at_1e25": self.savings[1e25],
            "best_by_width": best_by_width,
            "final_loss_by_width": {
                f"d={row.width}, {_label_of(row)}": float(row.val_loss) for row in first.itertuples()
            },
            "spread_width": int(self.budget.spread_width),
            "final_loss_over_seeds": finals,
            "fits": fits,
            "seconds_per_step": {label: float(v) for label, v in seconds_per_step.items()},
            "unigram_val_loss": self.unigram_loss,
            "runs": int(len(runs)),
            "train_seconds": float(self.grid.seconds),
            "seconds": float(self.seconds),
        }


def _label_of(row) -> str:
    return "dense" if row.granularity == DENSE else f"G={int(row.granularity)}"


def reproduce_table_2() -> pd.DataFrame:
    """The paper's Table 2 recomputed from its Table 1 coefficients: G, N, D and loss, ours beside the paper's."""
    rows = []
    for row in FG_TABLE_2:
        ours = fg_compute_optimal(row.flops)
        rows.append(
            {
                "model": row.label,
                "FLOPs": row.flops,
                "G (paper)": row.granularity,
                "G (ours)": int(ours.granularity),
                "active params (paper)": row.active_params,
                "active params (ours)": ours.active_params,
                "tokens (paper)": row.tokens,
                "tokens (ours)": ours.tokens,
                "loss (paper)": row.loss,
                "loss (ours)": ours.loss,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def run_experiment(
    run: Run, budget: GranularityBudget, *, corpus: ByteCorpus | None = None, progress: bool | None = None
) -> GranularityResult:
    """The whole notebook-05 experiment: the published table recomputed, the execution paths checked, the
    grid trained side by side, the laws fitted with their bootstrap."""
    if not isinstance(budget, GranularityBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a GranularityBudget")
    with Timer() as timer:
        corpus = load_corpus() if corpus is None else corpus
        table_2 = reproduce_table_2()
        savings = {f: dense_flops_to_match(fg_compute_optimal(f).loss) / f for f in (1e20, 1e25)}
        path_check = execution_path_check(PATH_CHECK_LAYER)
        grid = train_specs(
            run, corpus, budget, budget.specs(run.seed), progress=progress, description="granularity grid"
        )
        fits = fit_laws(grid, resamples=budget.bootstrap, seed=run.seed)
        points = with_wall_clock(with_training_flops(grid.law_points(), budget), grid.runs)
    return GranularityResult(
        budget, run.seed, grid, fits, path_check, table_2, savings, unigram_loss(corpus), timer.seconds, points
    )


# ----------------------------------------------------------------------------------- table and findings


def _fit_cell(fits: dict, name: str) -> str:
    low, high = fits["intervals"][name]
    flag = " (at a bound)" if name in fits["at_bounds"] else ""
    return f"{fits['coefficients'][name]:.3g} [{low:.3g}, {high:.3g}]{flag}"


def paper_rows(summary: dict, committed: dict | None = None) -> pd.DataFrame:
    """The paper's numbers beside this run's (and the committed full-mode run's)."""
    full = committed or {}

    def full_value(key, render):
        return render(full) if full.get(key) is not None else None

    moe, dense = summary["fits"]["moe"], summary["fits"]["dense"]
    rows = [
        {
            "quantity": "compute-optimal G in the 7 rows of Table 2",
            "paper": ", ".join(map(str, summary["table_2_paper_granularities"])),
            "this_run": ", ".join(map(str, summary["table_2_granularities"])),
            "full_run": full_value(
                "table_2_granularities", lambda f: ", ".join(map(str, f["table_2_granularities"]))
            ),
            "note": "recomputed from the published coefficients (Table 1)",
        },
        {
            "quantity": "dense compute to match the optimal MoE at 1e20 FLOPs",
            "paper": PAPER_SAVING[1e20],
            "this_run": f"{summary['saving_at_1e20']:.0f}x",
            "full_run": full_value("saving_at_1e20", lambda f: f"{f['saving_at_1e20']:.0f}x"),
            "note": "from the published laws (MoE and dense rows of Table 1)",
        },
        {
            "quantity": "the same at 1e25 FLOPs",
            "paper": PAPER_SAVING[1e25],
            "this_run": f"{summary['saving_at_1e25']:.0f}x",
            "full_run": full_value("saving_at_1e25", lambda f: f"{f['saving_at_1e25']:.0f}x"),
            "note": "our reading: both laws on the same shape rule; the paper's own dense fits may differ",
        },
    ]
    for name, paper in zip(EXPONENTS, (FG_MOE.alpha, FG_MOE.beta, FG_MOE.gamma), strict=True):
        rows.append(
            {
                "quantity": f"MoE exponent {name} [90% bootstrap]",
                "paper": paper,
                "this_run": _fit_cell(moe, name),
                "full_run": full_value("fits", lambda f, n=name: _fit_cell(f["fits"]["moe"], n)),
                "note": f"ours: bytes, decayed runs of {summary['widths']} widths, E=8",
            }
        )
    for name, paper in (("alpha", FG_DENSE.alpha), ("beta", FG_DENSE.beta)):
        rows.append(
            {
                "quantity": f"dense exponent {name} [90% bootstrap]",
                "paper": paper,
                "this_run": _fit_cell(dense, name),
                "full_run": full_value("fits", lambda f, n=name: _fit_cell(f["fits"]["dense"], n)),
                "note": "Chinchilla form on our dense runs",
            }
        )
    finals = summary["final_loss_over_seeds"]
    best = _best_moe(finals)
    rows += [
        {
            "quantity": "best configuration at equal active parameters",
            "paper": "finest G tested (up to 16)",
            "this_run": f"{best} (mean over seeds)" if best else "n/a",
            "full_run": full_value("final_loss_over_seeds", lambda f: _best_moe(f["final_loss_over_seeds"])),
            "note": "paper: read off its law (eq. 9: at fixed N and D, finer G lowers the loss up to G=16 tested)",
        },
        {
            "quantity": "final loss, dense vs best MoE over seeds",
            "paper": "MoE lower",
            "this_run": f"{spread(finals['dense'])} vs {spread(finals[best])}"
            if best and "dense" in finals
            else "n/a",
            "full_run": None,
            "note": f"d_model={summary['spread_width']}; nats per byte here, per token in the paper",
        },
    ]
    return paper_table(rows, full_run_on=committed_device(NAME))


def _best_moe(finals: dict) -> str | None:
    moe = {label: np.mean(values) for label, values in finals.items() if label != "dense"}
    return min(moe, key=moe.get) if moe else None


def findings(summary: dict) -> str:
    """What this run found, in sentences computed from the summary."""
    lines = []
    ours, published = summary["table_2_granularities"], summary["table_2_paper_granularities"]
    matched = sum(a == b for a, b in zip(ours, published, strict=True))
    lines.append(
        f"- **The published law.** Recomputed from the coefficients, the optimal granularity matches the paper's "
        f"Table 2 in {matched} of {len(summary['table_2_granularities'])} rows (loss within "
        f"{summary['table_2_largest_loss_gap']:.3f}). A dense model needs {summary['saving_at_1e20']:.0f}x the "
        f"compute to match the optimal MoE at 1e20 FLOPs (paper: {PAPER_SAVING[1e20]}) and "
        f"{summary['saving_at_1e25']:.0f}x at 1e25 (paper: {PAPER_SAVING[1e25]}"
        + ("; ours falls short of it)." if summary["saving_at_1e25"] <= 40 else ", and ours agrees).")
    )
    best = summary["best_by_width"]
    finest = f"G={max(summary['granularities'])}"
    winners = sorted(set(best.values()))
    if winners == [finest]:
        order = f"{finest}, the finest tested, gave the lowest loss at every width, as the paper's law predicts"
    elif len(winners) == 1:
        order = f"{winners[0]} gave the lowest loss at every width (the paper's law would pick {finest})"
    else:
        order = "the lowest loss went to " + ", ".join(f"{label} at d={w}" for w, label in best.items())
        order += f": no single winner (the paper's law would pick {finest})"
    lines.append(f"- **This run (seed {summary['seed']}).** After the cooldowns, {order}.")
    finals = summary["final_loss_over_seeds"]
    if "dense" in finals and _best_moe(finals):
        moe_label = _best_moe(finals)
        dense, moe = np.asarray(finals["dense"]), np.asarray(finals[moe_label])
        if moe.max() < dense.min():
            verdict = "every seed of the MoE below every seed of dense: the paper's direction"
        elif moe.min() > dense.max():
            verdict = "every seed of dense below every MoE seed: against the paper's direction"
        else:
            verdict = "the seeds overlap: at this scale the difference is within run-to-run noise"
        lines.append(
            f"- **Over seeds** at d={summary['spread_width']}: dense {spread(dense)} against {moe_label} "
            f"{spread(moe)} nats per byte; {verdict}."
        )
    lines.append(
        _fit_sentence(
            "MoE", summary["fits"]["moe"], {"alpha": FG_MOE.alpha, "beta": FG_MOE.beta, "gamma": FG_MOE.gamma}
        )
    )
    lines.append(
        _fit_sentence("dense", summary["fits"]["dense"], {"alpha": FG_DENSE.alpha, "beta": FG_DENSE.beta})
    )
    return "\n".join(lines)


def _fit_sentence(kind: str, fits: dict, paper: dict) -> str:
    parts = []
    for name, value in paper.items():
        low, high = fits["intervals"][name]
        verdict = compare_with_paper(low, high, value)
        if name in fits["at_bounds"]:
            verdict = "undetermined (the fit sits at a bound)"
        parts.append(f"{name} = {_fit_cell(fits, name)} against the paper's {value}: {verdict}")
    flagged = fits["at_bounds"]
    warning = (
        f" **The fit is degenerate:** {', '.join(flagged)} sat at the edge of the allowed range, so the box, "
        f"not the data, set {'it' if len(flagged) == 1 else 'them'}; read the rest with that in mind."
        if flagged
        else ""
    )
    return (
        f"- **The {kind} fit** ({fits['points']} points from {fits['runs']} runs, RMSE of log-loss "
        f"{fits['rmse_log']:.3f}): " + "; ".join(parts) + "." + warning
    )
