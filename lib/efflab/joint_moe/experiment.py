"""The experiment of notebook 06: byte-level language models, dense and with a few expert counts, at the same
active parameters, and the joint law's form fitted to their decayed losses.

The joint law (:mod:`efflab.joint_moe.law`) was fitted on more than 280 GPU runs, 79M to 2.7B active
parameters, E from 1 to 32, up to 80B tokens. Here is the same experiment in miniature: TinyLMs of a few widths,
each trained dense and as an MoE with E experts for E in a small grid. Every expert is as wide as the dense FFN
(granularity 1) and each token goes to one of them, so at each width every model uses the same parameters per
token and the MoE holds E times the FFN parameters. All runs at a seed see the same batches.

Choices, and why:

* **Token-choice top-1 routing** (Switch), with the load-balancing loss (0.01) and router z-loss (0.001) of the
  paper. The paper trains with capacity factor 1 and evaluates without dropping tokens; we never drop tokens,
  which on a CPU is simpler and exactly dropless.
* **The paper's schedule**: warmup-stable-decay with the decay over the last 20 % of each run, the cooldowns
  branched off checkpoints of one stable phase (:mod:`efflab.lm_grid`); a point is the loss after a cooldown.
* **The paper's learning-rate rule in E** (eq. 8: the peak rate falls as E^-0.25): every MoE trains at the
  dense model's rate times E^-0.25. The rule's size term (N^-0.81) is left out: fitted on 79M to 2.7B
  parameters, it would give these ten-thousand-parameter models a rate above 1; the dense rate was tuned here.
* **The course's MoE layer** (:mod:`efflab.models.moe`): GELU experts of width 4 d_model, like the dense FFN
  they replace. The paper's experts are SwiGLU of width 3 d_model; what matters for the comparison is that an
  expert and the dense FFN cost the same per token.
* **N is the active non-embedding count** (attention and one FFN per block). The paper counts embeddings, which
  is harmless with a 50k vocabulary and billion-parameter models; with 256 byte values and a few thousand
  parameters per block, the embedding and head would be a third of these tiny models and blur the size axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from efflab.data.text import ByteCorpus, load_corpus, unigram_loss
from efflab.experiment import committed_device, paper_table, spread
from efflab.joint_moe.law import (
    JOINT,
    JOINT_TABLE_1,
    LEARNING_RATE_RULE,
    JointLaw,
    compute_saving,
    joint_form,
    reproduce_table_1,
    reproduce_table_2,
)
from efflab.law_fitting import FitUncertainty, bootstrap_fit, compare_with_paper
from efflab.lm_grid import DENSE, GridBudget, GridResults, RunSpec, seed_spread, train_specs
from efflab.runtime import Run, Timer
from efflab.validation import check_int

NAME = "06_joint_moe_scaling_memory"
ROUTING = "token_choice"
REPORTED = ("alpha", "beta", "delta", "zeta")


@dataclass(frozen=True, kw_only=True)
class ExpertCountBudget(GridBudget):
    """The grid: every width dense (E = 1) and with each of ``expert_counts`` experts; at ``spread_width`` the
    configurations in ``spread_experts`` (1 = dense) over ``n_seeds`` seeds. ``lr_rule``: each MoE's peak rate is
    the dense one times E^-0.25 (the paper's eq. 8)."""

    expert_counts: tuple[int, ...]
    spread_experts: tuple[int, ...]
    lr_rule: bool = True
    bootstrap: int = 12

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.expert_counts, tuple) or not self.expert_counts:
            raise ValueError(
                f"expert_counts={self.expert_counts!r} is not allowed; expected a tuple of at least one count >= 2"
            )
        for experts in self.expert_counts:
            check_int("expert_counts", experts, low=2)
        if not isinstance(self.spread_experts, tuple):
            raise ValueError(f"spread_experts={self.spread_experts!r} is not allowed; expected a tuple")
        for experts in self.spread_experts:
            check_int("spread_experts", experts, low=1)
            if experts != 1 and experts not in self.expert_counts:
                raise ValueError(
                    f"spread_experts contains {experts!r}; expected 1 (dense) or one of {self.expert_counts}"
                )
        if not isinstance(self.lr_rule, bool):
            raise ValueError(f"lr_rule={self.lr_rule!r} is not allowed; expected True or False")
        check_int("bootstrap", self.bootstrap, low=2)

    @classmethod
    def quick(cls) -> ExpertCountBudget:
        """16 runs of 72 stable steps and three cooldowns (about 110 optimiser steps each), two at a time on two
        CPU cores. Widths span a factor of four (sixteen in active parameters), so that model size shows through
        the noise of such short runs."""
        return cls(
            widths=(16, 32, 64),
            expert_counts=(2, 4, 8),
            n_layer=2,
            n_head=2,
            block_size=64,
            batch_size=32,
            steps=72,
            eval_every=24,
            eval_batches=2,
            lr=3e-3,
            warmup_steps=8,
            spread_width=32,
            spread_experts=(1, 8),
            n_seeds=3,
            checkpoints=(24, 48, 72),
        )

    @classmethod
    def full(cls) -> ExpertCountBudget:
        """A larger grid for one GPU: wider and deeper models, up to 16 experts, longer runs, four at a time."""
        return cls(
            widths=(64, 128, 192),
            expert_counts=(2, 4, 8, 16),
            n_layer=4,
            n_head=4,
            block_size=128,
            batch_size=64,
            steps=320,
            eval_every=40,
            eval_batches=8,
            lr=1e-3,
            warmup_steps=30,
            spread_width=128,
            spread_experts=(1, 8),
            n_seeds=3,
            checkpoints=(80, 160, 240, 320),
            workers=4,
            bootstrap=40,
        )

    def configurations(self) -> tuple[int, ...]:
        return (1, *self.expert_counts)

    def spread_configurations(self) -> tuple[int, ...]:
        return self.spread_experts

    def spec(self, width: int, configuration: int, seed: int) -> RunSpec:
        if configuration == 1:
            return RunSpec(width, DENSE, seed)
        return RunSpec(width, 1, seed, ROUTING, expansion=configuration)

    def learning_rate(self, spec: RunSpec) -> float:
        experts = 1 if spec.granularity == DENSE else spec.expansion
        return self.lr * experts ** -LEARNING_RATE_RULE["experts_slope"] if self.lr_rule else self.lr


@dataclass(frozen=True)
class JointFit:
    """The joint form fitted to this run's decayed losses, its bootstrap over runs, and the data it saw."""

    uncertainty: FitUncertainty
    n_points: int
    expert_counts: tuple[int, ...]

    @property
    def fit(self):
        return self.uncertainty.fit

    @property
    def law(self) -> JointLaw:
        return self.fit.law


def law_points(results: GridResults) -> dict[str, np.ndarray]:
    """The decayed evaluations (one per cooldown branch) as arrays: N (active non-embedding parameters), D
    (tokens seen), E (experts, 1 = dense), the validation loss, and the run each came from."""
    curves = results.law_points()
    return {
        "N": curves.active_params.to_numpy(float),
        "D": curves.tokens.to_numpy(float),
        "E": curves.expansion.to_numpy(float),
        "loss": curves.val_loss.to_numpy(float),
        "run": np.array(
            [f"{w}/{e}/{s}" for w, e, s in zip(curves.width, curves.expansion, curves.seed, strict=True)]
        ),
    }


def fit_joint_law(
    results: GridResults,
    *,
    resamples: int = 12,
    n_starts: int = 6,
    seed: int = 0,
    e_start: float = JOINT.e_start,
    e_max: float = JOINT.e_max,
) -> JointFit:
    """Fit the joint form (eq. 6) to the decayed points, with a bootstrap over runs.

    E_start and E_max stay at the paper's values: three or four expert counts cannot pin down where the benefit
    of more experts saturates.
    """
    points = law_points(results)
    uncertainty = bootstrap_fit(
        joint_form(e_start, e_max),
        points,
        points["loss"],
        points["run"],
        resamples=resamples,
        n_starts=n_starts,
        seed=seed,
    )
    return JointFit(uncertainty, len(points["loss"]), tuple(int(e) for e in np.unique(points["E"])))


@dataclass
class ExpertCountResult:
    """Everything notebook 06's figures and tables need."""

    budget: ExpertCountBudget
    seed: int
    grid: GridResults
    joint_fit: JointFit
    table_1: pd.DataFrame
    table_2: pd.DataFrame
    unigram_loss: float
    seconds: float = 0.0

    def summary(self) -> dict:
        """The headline numbers, plain values: the single source of the table, the findings and the record."""
        runs = self.grid.runs
        first = runs[runs.seed == self.seed]
        best_by_width = {
            str(width): int(group.loc[group.val_loss.idxmin()].expansion)
            for width, group in first.groupby("width")
        }
        size_effect = first.groupby("width").val_loss.mean()
        expert_effect = first.groupby("width").val_loss.agg(lambda v: v.max() - v.min())
        table_1_numbers = self.table_1[["active difference", "tokens difference"]].abs().to_numpy()
        fit = self.joint_fit.uncertainty
        printed = {row.experts: row.tokens / row.active_params for row in JOINT_TABLE_1 if row.flops == 1e20}
        ratio = {e: float(np.divide(*JOINT.for_experts(e).compute_optimal(1e20)[::-1])) for e in (1, 32)}
        return {
            "seed": self.seed,
            "widths": [int(w) for w in self.budget.widths],
            "expert_counts": [int(e) for e in self.budget.expert_counts],
            "table_1_agree": int(self.table_1[["active agrees", "tokens agrees"]].to_numpy().sum()),
            "table_1_numbers": int(table_1_numbers.size),
            "table_1_within_2_percent": int((table_1_numbers <= 0.02).sum()),
            "table_1_largest_difference": float(table_1_numbers.max()),
            "table_2_matches": int(self.table_2.match.sum()),
            "table_2_cells": int(len(self.table_2)),
            "table_2_paper": [str(e) for e in self.table_2["experts (paper)"]],
            "table_2_ours": [int(e) for e in self.table_2["experts (ours)"]],
            "table_2_within_one_doubling": bool(self.table_2["within one doubling"].all()),
            "table_2_largest_loss_gap": float(self.table_2["loss gap"].max()),
            "tokens_per_parameter_1e20": {"paper": [printed[1], printed[32]], "ours": [ratio[1], ratio[32]]},
            "saving_at_1e21": {str(e): float(compute_saving(1e21, e)) for e in (2, 8, 32)},
            "best_experts_by_width": best_by_width,
            "mean_loss_by_width": {str(w): float(v) for w, v in size_effect.items()},
            "expert_range_by_width": {str(w): float(v) for w, v in expert_effect.items()},
            "final_loss_by_width_and_experts": {
                f"d={row.width}, E={row.expansion}": float(row.val_loss) for row in first.itertuples()
            },
            "learning_rates": {
                f"E={int(e)}": float(lr) for e, lr in first.groupby("expansion").lr.first().items()
            },
            "spread_width": int(self.budget.spread_width),
            "final_loss_over_seeds": {
                label: [float(v) for v in values[:, -1]] for label, values in seed_spread(self.grid).items()
            },
            "fit": {
                "coefficients": fit.fit.coefficients,
                "intervals": {n: list(fit.interval(n)) for n in fit.fit.coefficients},
                "at_bounds": list(fit.flagged),
                "rmse_log": fit.fit.rmse_log,
                "points": fit.fit.n_points,
                "runs": fit.n_groups,
            },
            "unigram_val_loss": self.unigram_loss,
            "runs": int(len(runs)),
            "train_seconds": float(self.grid.seconds),
            "seconds": float(self.seconds),
        }


def run_experiment(
    run: Run, budget: ExpertCountBudget, *, corpus: ByteCorpus | None = None, progress: bool | None = None
) -> ExpertCountResult:
    """The whole notebook-06 experiment: the published tables recomputed, the grid trained side by side, the
    joint law fitted with its bootstrap."""
    if not isinstance(budget, ExpertCountBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected an ExpertCountBudget")
    with Timer() as timer:
        corpus = load_corpus() if corpus is None else corpus
        table_1, table_2 = reproduce_table_1(), reproduce_table_2()
        grid = train_specs(
            run, corpus, budget, budget.specs(run.seed), progress=progress, description="expert grid"
        )
        joint_fit = fit_joint_law(grid, resamples=budget.bootstrap, seed=run.seed)
    return ExpertCountResult(
        budget, run.seed, grid, joint_fit, table_1, table_2, unigram_loss(corpus), timer.seconds
    )


# ----------------------------------------------------------------------------------- table and findings


def _fit_cell(fit: dict, name: str) -> str:
    low, high = fit["intervals"][name]
    flag = " (at a bound)" if name in fit["at_bounds"] else ""
    return f"{fit['coefficients'][name]:.3g} [{low:.3g}, {high:.3g}]{flag}"


def _table_2_paper(cells: list[str]) -> str:
    rows = [cells[i : i + 3] for i in range(0, len(cells), 3)]
    return " / ".join(" ".join(c.replace(">=", "≥") for c in row) for row in rows)


def paper_rows(summary: dict, committed: dict | None = None) -> pd.DataFrame:
    """The paper's numbers beside this run's (and the committed full-mode run's)."""
    full = committed or {}
    fit = summary["fit"]
    ratios = summary["tokens_per_parameter_1e20"]
    rows = [
        {
            "quantity": f"Table 1: compute-optimal N and D ({summary['table_1_numbers']} numbers)",
            "paper": "as printed",
            "this_run": f"{summary['table_1_agree']}/{summary['table_1_numbers']} agree, "
            f"{summary['table_1_within_2_percent']} within 2%",
            "full_run": None,
            "note": "closed form from the published coefficients (Table 3)",
        },
        {
            "quantity": f"Table 2: best E under memory ({summary['table_2_cells']} cells)",
            "paper": _table_2_paper(summary["table_2_paper"]),
            "this_run": _table_2_paper([str(e) for e in summary["table_2_ours"]]),
            "full_run": None,
            "note": f"{summary['table_2_matches']}/{summary['table_2_cells']} match; where not, the paper's E is "
            f"within {summary['table_2_largest_loss_gap']:.3f} nats of ours",
        },
        {
            "quantity": "tokens per active parameter at 1e20 FLOPs, E=1 / E=32",
            "paper": f"{ratios['paper'][0]:.1f} / {ratios['paper'][1]:.1f}",
            "this_run": f"{ratios['ours'][0]:.1f} / {ratios['ours'][1]:.1f}",
            "full_run": None,
            "note": "paper: Table 1's printed values; ours: the closed form",
        },
    ]
    for name in REPORTED:
        rows.append(
            {
                "quantity": f"{name} [90% bootstrap over runs]",
                "paper": getattr(JOINT, name),
                "this_run": _fit_cell(fit, name),
                "full_run": _fit_cell(full["fit"], name) if full.get("fit") else None,
                "note": "ours: bytes, decayed runs, E up to " + str(max(summary["expert_counts"])),
            }
        )
    finals = summary["final_loss_over_seeds"]
    moe = next((label for label in finals if label != "dense"), None)
    rows.append(
        {
            "quantity": f"final loss over seeds, dense vs {moe}",
            "paper": "MoE lower (the law, at equal N and D)",
            "this_run": f"{spread(finals['dense'])} vs {spread(finals[moe])}"
            if moe and "dense" in finals
            else "n/a",
            "full_run": None,
            "note": f"d_model={summary['spread_width']}, nats per byte",
        }
    )
    return paper_table(rows, full_run_on=committed_device(NAME))


def findings(summary: dict) -> str:
    """What this run found, in sentences computed from the summary."""
    lines = [
        f"- **Table 1** (compute-optimal configurations): {summary['table_1_agree']} of "
        f"{summary['table_1_numbers']} published numbers agree with the closed form, "
        f"{summary['table_1_within_2_percent']} within 2 % (largest difference "
        f"{summary['table_1_largest_difference']:.1%}).",
        f"- **Table 2** (best E under memory): {summary['table_2_matches']} of {summary['table_2_cells']} cells "
        "match"
        + (
            ", the rest within one doubling of E"
            if summary["table_2_within_one_doubling"]
            else "; some cells are more than one doubling away"
        )
        + f"; where they differ the law rates the paper's choice within {summary['table_2_largest_loss_gap']:.3f} "
        "nats of ours, a nearly flat region.",
    ]
    means = summary["mean_loss_by_width"]
    widths = sorted(means, key=int)
    size_drop = means[widths[0]] - means[widths[-1]]
    expert_range = max(summary["expert_range_by_width"].values())
    best = summary["best_experts_by_width"]
    winners = ", ".join(f"E={e} at d={w}" for w, e in best.items())
    dominant = (
        "model size mattered more than experts" if size_drop > expert_range else "experts mattered as much as size"
    )
    lines.append(
        f"- **This run (seed {summary['seed']}).** From d={widths[0]} to d={widths[-1]} the mean final loss "
        "fell by "
        f"{size_drop:.2f} nats per byte, while at a fixed width the expert counts spread over at most "
        f"{expert_range:.2f}: {dominant}. Lowest loss: {winners}."
    )
    finals = summary["final_loss_over_seeds"]
    moe = next((label for label in finals if label != "dense"), None)
    if moe and "dense" in finals:
        dense_values, moe_values = np.asarray(finals["dense"]), np.asarray(finals[moe])
        if moe_values.max() < dense_values.min():
            verdict = "every MoE seed below every dense seed: the paper's direction"
        elif moe_values.min() > dense_values.max():
            verdict = "every dense seed below every MoE seed: against the paper's direction at this scale"
        else:
            verdict = "the seeds overlap: the difference is within run-to-run noise"
        lines.append(
            f"- **Over seeds** at d={summary['spread_width']}: dense {spread(dense_values)} against {moe} "
            f"{spread(moe_values)}; {verdict}."
        )
    fit = summary["fit"]
    parts = []
    for name in REPORTED:
        low, high = fit["intervals"][name]
        paper = getattr(JOINT, name)
        verdict = compare_with_paper(low, high, paper)
        if name in fit["at_bounds"]:
            verdict = "undetermined (the fit sits at a bound)"
        parts.append(f"{name} = {_fit_cell(fit, name)} (paper {paper}): {verdict}")
    zeta = fit["coefficients"]["zeta"]
    zeta_low, zeta_high = fit["intervals"]["zeta"]
    if np.sign(zeta) == np.sign(JOINT.zeta):
        zeta_sentence = "The fitted zeta has the paper's sign: more experts steepen the data exponent here too"
    else:
        zeta_sentence = (
            "The fitted zeta has the wrong sign at this scale: here more experts flatten the data exponent"
        )
    if zeta_low <= 0 <= zeta_high:
        zeta_sentence += ", though its bootstrap interval spans zero, so the sign is not settled by these runs"
    warning = (
        f" **The fit is degenerate:** {', '.join(fit['at_bounds'])} sat at the edge of the allowed range."
        if fit["at_bounds"]
        else ""
    )
    lines.append(
        f"- **The joint fit** ({fit['points']} points from {fit['runs']} runs, RMSE of log-loss "
        f"{fit['rmse_log']:.3f}): " + "; ".join(parts) + f". {zeta_sentence}." + warning
    )
    return "\n".join(lines)
