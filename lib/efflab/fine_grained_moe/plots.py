"""Figures of the MoE notebooks: granularity drawn, the fine-grained law's landscape, and router diagnostics.

Like :mod:`efflab.ui.plots`, every factory takes plain numbers (or the law objects of
:mod:`efflab.fine_grained_moe.law`, closed-form, microseconds) and returns a ``go.Figure``; nothing
here trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.fine_grained_moe.law import (
    DEFAULT_GRANULARITIES,
    FG_LAWS,
    FG_MOE,
    FineGrainedLaw,
    dense_compute_optimal,
    fg_optimal_for_granularity,
    fg_shape,
    fg_training_flops,
    router_flops_share,
)
from efflab.ui.plots import PALETTE, TEMPLATE, style_figure
from efflab.ui.scaling_plots import curves_with_law
from efflab.ui.widgets import Playground, dropdown, slider
from efflab.ui.widgets import playground as widgets_playground
from efflab.validation import check_int

GREY = "#d9d9d9"


def granularity_diagram(expansion: int = 4, granularities: Sequence[int] = (1, 2, 4)) -> go.Figure:
    """One row per granularity: the dense FFN's width cut into E * G experts of width d_ff / G.

    Each row spans E dense-FFN widths (the total expert parameters, the same in every row); the experts one
    token uses (G of them, an example choice) are coloured, and always add up to one dense FFN's width.
    """
    check_int("expansion", expansion, low=1, high=16)
    for granularity in granularities:
        check_int("granularities", granularity, low=0)
    figure = go.Figure()
    rows = [0, *granularities]  # row 0: the dense FFN
    for row, granularity in enumerate(rows):
        y = len(rows) - 1 - row
        if granularity == 0:
            figure.add_shape(type="rect", x0=0, x1=1, y0=y + 0.15, y1=y + 0.85, fillcolor=PALETTE[0], line_width=1)
            labels = "dense FFN (width d_ff)"
        else:
            n_experts = expansion * granularity
            chosen = set(_spread_choice(n_experts, granularity).tolist())
            for e in range(n_experts):
                figure.add_shape(
                    type="rect",
                    x0=e / granularity,
                    x1=(e + 1) / granularity,
                    y0=y + 0.15,
                    y1=y + 0.85,
                    fillcolor=PALETTE[1] if e in chosen else GREY,
                    line=dict(width=1, color="white"),
                )
            labels = f"G={granularity}: {n_experts} experts of d_ff/{granularity}, top-{granularity}"
        figure.add_annotation(x=expansion + 0.1, y=y + 0.5, text=labels, showarrow=False, xanchor="left")
    figure.update_xaxes(range=[-0.1, expansion + 3.2], showgrid=False, zeroline=False, showticklabels=False)
    figure.update_yaxes(range=[-0.2, len(rows)], showgrid=False, zeroline=False, showticklabels=False)
    figure.update_layout(
        title=f"Granularity at expansion rate E={expansion}: same total and active parameters, finer experts",
        template=TEMPLATE,
        height=90 + 60 * len(rows),
        margin=dict(l=20, r=20, t=50, b=20),
    )
    return figure


def _spread_choice(n_experts: int, k: int) -> np.ndarray:
    """A fixed, scattered choice of k of n experts, to draw what one token might use."""
    return (np.arange(k) * 7 + 3) % n_experts if k < n_experts else np.arange(n_experts)


def compute_optimal_frontier(
    flops_values: Sequence[float],
    *,
    law: FineGrainedLaw = FG_MOE,
    expansion: int = 64,
    granularities: Sequence[float] = (1, 8, 64),
    best_granularities: Sequence[float] = DEFAULT_GRANULARITIES,
) -> go.Figure:
    """Left: the best loss for each budget (dense, MoE at a few fixed G, MoE at its best G). Right: the best G."""
    flops_values = np.asarray(flops_values, dtype=float)
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss at the compute optimum", "optimal granularity"))
    dense = [dense_compute_optimal(f).loss for f in flops_values]
    figure.add_scatter(x=flops_values, y=dense, name="dense", line=dict(color="black", dash="dot"), row=1, col=1)
    for index, granularity in enumerate(granularities):
        losses = [
            fg_optimal_for_granularity(f, granularity, law=law, expansion=expansion).loss for f in flops_values
        ]
        figure.add_scatter(
            x=flops_values, y=losses, name=f"MoE G={granularity:g}", line=dict(color=PALETTE[index]), row=1, col=1
        )
    best = [
        min(
            (fg_optimal_for_granularity(f, g, law=law, expansion=expansion) for g in best_granularities),
            key=lambda c: c.loss,
        )
        for f in flops_values
    ]
    figure.add_scatter(
        x=flops_values,
        y=[b.loss for b in best],
        name="MoE, best G",
        mode="lines",
        line=dict(color=PALETTE[3], width=3, dash="dash"),
        row=1,
        col=1,
    )
    figure.add_scatter(
        x=flops_values,
        y=[b.granularity for b in best],
        mode="lines+markers",
        line_shape="hv",
        name="optimal G (powers of two)",
        line=dict(color=PALETTE[3]),
        row=1,
        col=2,
    )
    figure.update_xaxes(type="log", title_text="training FLOPs")
    figure.update_yaxes(title_text="loss", row=1, col=1)
    figure.update_yaxes(type="log", title_text="G", tickvals=list(best_granularities), row=1, col=2)
    figure.update_layout(template=TEMPLATE, height=400, margin=dict(l=60, r=20, t=50, b=50))
    return figure


def granularity_explorer_figure(
    flops: float,
    granularity: float,
    *,
    law: FineGrainedLaw = FG_MOE,
    expansion: int = 64,
    granularities: Sequence[float] = DEFAULT_GRANULARITIES,
) -> go.Figure:
    """The explorer's view: left, best loss vs G at the budget; right, the iso-FLOP curve at your G and at the
    optimal G. Costs a few milliseconds of closed-form arithmetic and Brent searches."""
    configs = [fg_optimal_for_granularity(flops, g, law=law, expansion=expansion) for g in granularities]
    losses = np.array([c.loss for c in configs])
    best = configs[int(np.argmin(losses))]
    mine = fg_optimal_for_granularity(flops, granularity, law=law, expansion=expansion)
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"best loss at F = {flops:.1e} FLOPs", "iso-FLOP: loss vs model size at this budget"),
    )
    figure.add_scatter(
        x=list(granularities),
        y=losses,
        mode="lines+markers",
        name="best loss at each G",
        line=dict(color=PALETTE[0]),
        row=1,
        col=1,
    )
    figure.add_scatter(
        x=[best.granularity],
        y=[best.loss],
        mode="markers",
        name=f"optimal G = {best.granularity:g}",
        marker=dict(size=15, symbol="star", color=PALETTE[3]),
        row=1,
        col=1,
    )
    figure.add_scatter(
        x=[granularity],
        y=[mine.loss],
        mode="markers",
        name=f"your G = {granularity:g}",
        marker=dict(size=13, symbol="circle-open", line_width=3, color=PALETTE[1]),
        row=1,
        col=1,
    )
    for config, color, name in ((mine, PALETTE[1], f"G = {granularity:g}"), (best, PALETTE[3], "optimal G")):
        widths = config.d_model * np.geomspace(0.2, 5.0, 50)
        shape = fg_shape(widths, expansion)
        tokens = flops / fg_training_flops(widths, 1.0, expansion, config.granularity)
        figure.add_scatter(
            x=shape["active_params"],
            y=law.loss(shape["total_params"], tokens, config.granularity),
            name=name,
            line=dict(color=color),
            showlegend=False,
            row=1,
            col=2,
        )
        figure.add_scatter(
            x=[config.active_params],
            y=[config.loss],
            mode="markers",
            showlegend=False,
            marker=dict(size=10, color=color),
            row=1,
            col=2,
        )
    figure.update_xaxes(type="log", tickvals=list(granularities), title_text="granularity G", row=1, col=1)
    figure.update_xaxes(type="log", title_text="active parameters", row=1, col=2)
    figure.update_yaxes(title_text="loss", row=1, col=1)
    figure.add_annotation(
        text=(
            f"your G: {mine.active_params:.2e} active params, {mine.tokens:.2e} tokens, loss {mine.loss:.3f}; "
            f"optimal G={best.granularity:g}: {best.active_params:.2e} params, {best.tokens:.2e} tokens, "
            f"loss {best.loss:.3f}"
        ),
        xref="paper",
        yref="paper",
        x=0,
        y=-0.22,
        showarrow=False,
        xanchor="left",
    )
    figure.update_layout(template=TEMPLATE, height=430, margin=dict(l=60, r=20, t=60, b=90))
    return figure


def experts_per_token_bars(histograms: Mapping[str, np.ndarray]) -> go.Figure:
    """How many experts processed each token: one bar group per label (fractions of tokens, averaged over
    layers). Token choice gives every token exactly top-k; expert choice gives some many and some none."""
    figure = go.Figure()
    for index, (label, histogram) in enumerate(histograms.items()):
        histogram = np.atleast_2d(np.asarray(histogram, dtype=float)).mean(axis=0)
        figure.add_bar(x=list(range(len(histogram))), y=histogram, name=label, marker_color=PALETTE[index % 8])
    figure.update_layout(barmode="group")
    return style_figure(
        figure, "Experts per token", "number of experts that processed the token", "fraction of tokens"
    )


def router_cost_share(
    d_models: Sequence[float] = (256, 1024, 4096),
    *,
    expansion: int = 64,
    granularities: Sequence[float] = DEFAULT_GRANULARITIES,
) -> go.Figure:
    """Share of training FLOPs spent on routing (eq. 10's router term) against G, one line per d_model."""
    figure = go.Figure()
    for index, d_model in enumerate(d_models):
        share = router_flops_share(d_model, expansion, np.asarray(granularities, dtype=float))
        figure.add_scatter(
            x=list(granularities),
            y=share,
            mode="lines+markers",
            name=f"d_model={d_model:g}",
            line=dict(color=PALETTE[index % len(PALETTE)]),
        )
    figure.update_xaxes(type="log", tickvals=list(granularities))
    figure.update_yaxes(tickformat=".0%")
    return style_figure(
        figure, f"Router's share of the compute (E={expansion})", "granularity G", "share of FLOPs"
    )


def measured_granularity_curves(runs: pd.DataFrame, *, seed: int) -> go.Figure:
    """Final validation loss against G for each width (one seed), the dense model of that width dashed.

    ``runs`` is ``GridResults.runs``: columns width, granularity (0 = dense), routing, seed, val_loss.
    """
    missing = {"width", "granularity", "routing", "seed", "val_loss"} - set(runs)
    if missing:
        raise ValueError(f"runs lacks columns {sorted(missing)}")
    rows = runs[(runs.seed == seed) & (runs.routing != "token_choice")]
    figure = go.Figure()
    for index, (width, group) in enumerate(rows.groupby("width")):
        color = PALETTE[index % len(PALETTE)]
        moe = group[group.granularity > 0].sort_values("granularity")
        figure.add_scatter(
            x=moe.granularity,
            y=moe.val_loss,
            mode="lines+markers",
            name=f"MoE, d_model={width}",
            line=dict(color=color),
        )
        dense = group[group.granularity == 0].val_loss
        if len(dense) and len(moe):
            span = [moe.granularity.min(), moe.granularity.max()]
            figure.add_scatter(
                x=span,
                y=[float(dense.iloc[0])] * 2,
                mode="lines",
                name=f"dense, d_model={width}",
                line=dict(color=color, dash="dash"),
            )
    figure.update_xaxes(type="log", tickvals=sorted(rows.granularity[rows.granularity > 0].unique().tolist()))
    return style_figure(
        figure, "Final validation loss against granularity", "granularity G", "validation loss (nats/byte)"
    )


def measured_with_law(curves: pd.DataFrame, law: FineGrainedLaw, *, title: str) -> go.Figure:
    """One configuration's evaluations (columns seed, tokens, val_loss, params, granularity, optionally phase)
    with ``law`` drawn at its parameters and granularity."""
    if curves.empty:
        raise ValueError("curves is empty; expected the evaluations of one configuration")
    tokens = np.geomspace(curves.tokens.min(), curves.tokens.max(), 50)
    granularity = max(float(curves.granularity.iloc[0]), 1.0)
    predicted = law.loss(float(curves.params.iloc[0]), tokens, granularity)
    return curves_with_law(curves, tokens, predicted, law_name="fitted law", title=title)


def measured_against_cost(points: pd.DataFrame, *, seed: int) -> go.Figure:
    """The decayed points of one seed against training FLOPs with the router counted (eq. 10, left) and against
    the wall-clock seconds each branch took (right), one colour per configuration, one line per width.

    ``points`` has columns label, width, seed, training_flops, seconds, val_loss (token-choice runs left out).
    """
    missing = {"label", "width", "seed", "training_flops", "seconds", "val_loss"} - set(points)
    if missing:
        raise ValueError(f"points lacks columns {sorted(missing)}")
    rows = points[(points.seed == seed) & ~points.label.str.contains("token choice")]
    figure = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        subplot_titles=("against training FLOPs (eq. 10, router counted)", "against measured wall-clock"),
    )
    labels = list(dict.fromkeys(rows.label))
    for index, label in enumerate(labels):
        color = PALETTE[index % len(PALETTE)]
        for number, (width, group) in enumerate(rows[rows.label == label].groupby("width")):
            group = group.sort_values("training_flops")
            for column, x in ((1, group.training_flops), (2, group.seconds)):
                figure.add_scatter(
                    x=x,
                    y=group.val_loss,
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=column == 1 and number == 0,
                    line=dict(color=color),
                    hovertext=f"d_model={width}",
                    row=1,
                    col=column,
                )
    figure.update_xaxes(type="log", title_text="training FLOPs", row=1, col=1)
    figure.update_xaxes(type="log", title_text="seconds", row=1, col=2)
    figure.update_yaxes(title_text="validation loss (nats/byte)", row=1, col=1)
    figure.update_layout(template=TEMPLATE, height=400, margin=dict(l=60, r=20, t=50, b=50))
    return figure


def playground(result) -> Playground:
    """The notebook's playground: the published law (granularity, compute budget, which coefficients) beside
    this run's models (width, configuration). Every control redraws from closed-form arithmetic or from the
    precomputed runs; nothing trains."""
    budget = result.budget
    configurations = {"dense": 0, **{f"MoE G={g}": g for g in budget.granularities}}
    curves = result.grid.curves
    fits = result.fits
    flops_grid = [float(f) for f in np.logspace(17, 25, 17)]

    def render(granularity, flops, coefficients, width, configuration):
        law = FG_LAWS[coefficients]
        figure = granularity_explorer_figure(flops, granularity, law=law)
        chosen = configurations[configuration]
        rows = curves[
            (curves.width == width) & (curves.granularity == chosen) & (curves.routing != "token_choice")
        ]
        fitted = fits.dense.fit.law if chosen == 0 else fits.moe.fit.law
        measured = measured_with_law(rows, fitted, title=f"this run: d_model={width}, {configuration}")
        best = min(
            (fg_optimal_for_granularity(flops, g, law=law) for g in DEFAULT_GRANULARITIES), key=lambda c: c.loss
        )
        mine = fg_optimal_for_granularity(flops, granularity, law=law)
        decayed = rows[rows.phase == "decayed"] if "phase" in rows else rows
        status = (
            f"{coefficients} at {flops:.0e} FLOPs: optimal G = {best.granularity:g}, your G = {granularity:g} "
            f"reaches {mine.loss:.3f} ({mine.loss - best.loss:+.3f}). This run, d_model={width}, {configuration}: "
            f"{len(decayed)} decayed points, last {decayed.val_loss.iloc[-1]:.3f} nats/byte."
        )
        return [figure, measured], status

    return widgets_playground(
        render,
        granularity=slider("granularity", DEFAULT_GRANULARITIES, value=8),
        flops=slider("compute (FLOPs)", flops_grid, value=1e20),
        coefficients=dropdown("coefficients", [name for name in FG_LAWS if "MoE" in name]),
        width=dropdown("width", list(budget.widths)),
        configuration=dropdown("configuration", list(configurations), value=f"MoE G={max(budget.granularities)}"),
    )
