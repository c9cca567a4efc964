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
    FG_MOE,
    FineGrainedLaw,
    OptimalConfig,
    dense_compute_optimal,
    fg_optimal_for_granularity,
    fg_shape,
    fg_training_flops,
    router_flops_share,
)
from efflab.ui.plots import PALETTE, TEMPLATE, style_figure
from efflab.validation import check_int

GREY = "#d9d9d9"


def granularity_diagram(expansion: int = 4, granularities: Sequence[int] = (1, 2, 4)) -> go.Figure:
    """One row per granularity: the dense FFN's width cut into E * G experts of width d_ff / G.

    Each row spans E dense-FFN widths (the total expert parameters, the same in every row); the experts one
    token uses (G of them, an example choice) are coloured, and always add up to one dense FFN's width.
    """
    check_int("expansion", expansion, low=1, high=16)
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


def optimal_loss_by_granularity(
    flops: float,
    *,
    law: FineGrainedLaw = FG_MOE,
    expansion: int = 64,
    granularities: Sequence[float] = DEFAULT_GRANULARITIES,
    selected: float | None = None,
) -> tuple[go.Figure, list[OptimalConfig]]:
    """The best loss reachable with budget ``flops`` at each granularity (its own best N and D), optimum marked.

    Without the router's cost finer would always be better; with it, the curve turns up again.
    """
    configs = [fg_optimal_for_granularity(flops, g, law=law, expansion=expansion) for g in granularities]
    losses = [c.loss for c in configs]
    best = int(np.argmin(losses))
    figure = go.Figure()
    figure.add_scatter(x=list(granularities), y=losses, mode="lines+markers", name="best loss at this G")
    figure.add_scatter(
        x=[granularities[best]],
        y=[losses[best]],
        mode="markers",
        marker=dict(size=14, symbol="star"),
        name=f"optimal G = {granularities[best]:g}",
    )
    if selected is not None and selected in granularities:
        index = list(granularities).index(selected)
        figure.add_scatter(
            x=[selected],
            y=[losses[index]],
            mode="markers",
            marker=dict(size=12, symbol="circle-open", line_width=3),
            name=f"your G = {selected:g}",
        )
    figure.update_xaxes(type="log", tickvals=list(granularities))
    style_figure(figure, f"Compute-optimal loss vs granularity at F = {flops:.1e} FLOPs", "granularity G", "loss")
    return figure, configs


def isoflop_curves(
    flops_values: Sequence[float],
    granularity: float,
    *,
    law: FineGrainedLaw = FG_MOE,
    expansion: int = 64,
    points: int = 60,
) -> go.Figure:
    """Loss against model size at fixed compute, one curve per budget, at one granularity; minima marked.

    Every point spends the whole budget: a bigger model sees fewer tokens (the FLOP equation fixes D).
    """
    figure = go.Figure()
    for index, flops in enumerate(flops_values):
        optimum = fg_optimal_for_granularity(flops, granularity, law=law, expansion=expansion)
        widths = optimum.d_model * np.geomspace(0.25, 4.0, points)
        shape = fg_shape(widths, expansion)
        tokens = flops / fg_training_flops(widths, 1.0, expansion, granularity)
        losses = law.loss(shape["total_params"], tokens, granularity)
        color = PALETTE[index % len(PALETTE)]
        figure.add_scatter(x=shape["active_params"], y=losses, name=f"F = {flops:.0e}", line=dict(color=color))
        figure.add_scatter(
            x=[optimum.active_params],
            y=[optimum.loss],
            mode="markers",
            marker=dict(color=color, size=10),
            showlegend=False,
            hovertext=f"optimum: D = {optimum.tokens:.2e} tokens",
        )
    figure.update_xaxes(type="log")
    return style_figure(figure, f"Iso-FLOP curves at G = {granularity:g}", "active parameters", "loss")


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


def expert_load_heatmaps(loads: Mapping[str, np.ndarray]) -> go.Figure:
    """Per layer and expert, the share of assignments each expert processed, relative to an even share.

    ``loads`` maps a label to a (layers, n_experts) array of fractions; 1 means exactly the even share.
    """
    if not loads:
        raise ValueError("loads={} is not allowed; expected at least one (layers, n_experts) array")
    figure = make_subplots(rows=len(loads), cols=1, subplot_titles=[str(k) for k in loads], vertical_spacing=0.18)
    top = max(float(np.max(np.asarray(v) * np.asarray(v).shape[1])) for v in loads.values())
    for row, load in enumerate(loads.values(), start=1):
        load = np.atleast_2d(np.asarray(load, dtype=float))
        figure.add_heatmap(
            z=load * load.shape[1],
            zmin=0,
            zmax=max(2.0, top),
            colorscale="RdBu_r",
            zmid=1.0,
            y=[f"layer {i}" for i in range(len(load))],
            colorbar=dict(title="load / even"),
            showscale=row == 1,
            row=row,
            col=1,
        )
        figure.update_xaxes(title_text="expert", row=row, col=1)
    figure.update_layout(
        template=TEMPLATE,
        height=160 + 150 * len(loads),
        margin=dict(l=70, r=20, t=50, b=40),
        title="Expert load (1 = the even share)",
    )
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


def law_parity(observed: Sequence[float], predicted: Sequence[float], labels: Sequence[str]) -> go.Figure:
    """Measured loss against the fitted law's prediction, one colour per label; a perfect fit is the diagonal."""
    observed, predicted, labels = np.asarray(observed), np.asarray(predicted), np.asarray(labels)
    if not observed.shape == predicted.shape == labels.shape:
        raise ValueError(
            f"observed, predicted and labels have shapes {observed.shape}, {predicted.shape}, {labels.shape}; "
            "expected one value of each per point"
        )
    figure = go.Figure()
    for index, label in enumerate(dict.fromkeys(labels.tolist())):
        mask = labels == label
        figure.add_scatter(
            x=predicted[mask],
            y=observed[mask],
            mode="markers",
            name=str(label),
            marker=dict(color=PALETTE[index % len(PALETTE)]),
        )
    low, high = float(min(observed.min(), predicted.min())), float(max(observed.max(), predicted.max()))
    figure.add_scatter(
        x=[low, high], y=[low, high], mode="lines", line=dict(color="gray", dash="dot"), showlegend=False
    )
    return style_figure(figure, "The fitted law against the measured losses", "law's prediction", "measured loss")


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
    """Measured validation loss against tokens (one marker series per seed) and the fitted law's curve.

    ``curves`` holds the evaluations of one configuration: columns seed, tokens, val_loss, params, granularity.
    """
    if curves.empty:
        raise ValueError("curves is empty; expected the evaluations of one configuration")
    figure = go.Figure()
    for index, (seed, group) in enumerate(curves.groupby("seed")):
        figure.add_scatter(
            x=group.tokens,
            y=group.val_loss,
            mode="markers",
            name=f"measured, seed {seed}",
            marker=dict(color=PALETTE[index % len(PALETTE)]),
        )
    tokens = np.geomspace(curves.tokens.min(), curves.tokens.max(), 50)
    granularity = max(float(curves.granularity.iloc[0]), 1.0)
    predicted = law.loss(float(curves.params.iloc[0]), tokens, granularity)
    figure.add_scatter(x=tokens, y=predicted, name="fitted law", line=dict(color="black"))
    figure.update_xaxes(type="log")
    return style_figure(figure, title, "training tokens", "validation loss (nats/byte)")
