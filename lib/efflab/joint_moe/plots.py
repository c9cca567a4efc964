"""Figures and the explorer of notebook 06: the joint MoE law under compute and memory budgets, and this run's
expert-count experiment.

Every law figure is closed-form arithmetic on the published coefficients (:mod:`efflab.joint_moe.law`): a
redraw of the whole explorer, heatmap included, takes a few tens of milliseconds. Nothing here trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.joint_moe.law import (
    EXPERT_COUNTS,
    GB,
    JOINT,
    JOINT_TABLE_2,
    JointLaw,
    compute_saving,
    joint_shape,
    optimal_config,
    optimal_experts,
    peak_learning_rate,
)
from efflab.ui.plots import PALETTE, TEMPLATE, style_figure
from efflab.ui.scaling_plots import curves_with_law
from efflab.ui.widgets import Playground, dropdown, slider
from efflab.ui.widgets import playground as widgets_playground
from efflab.validation import check_choice

EXPLORER_EXPERTS = (1, 2, 4, 8, 16, 32, 64)  # 64 lies beyond the paper's runs: an extrapolation
FLOPS_GRID = tuple(float(f) for f in np.logspace(19, 25, 25))
MEMORY_GB_GRID = (1, 2, 4, 8, 16, 24, 40, 80, 160, 320, 640, 1280, 2560)
INFERENCE_TOKENS_GRID = (0.0, 1e9, 1e10, 1e11, 1e12, 1e13)
KV_TOKENS_GRID = (0, 4_096, 16_384, 32_768)
_HEATMAP_FLOPS = np.logspace(19, 25, 31)
_HEATMAP_MEMORY_GB = np.logspace(0, 3.5, 36)
_HEATMAP_HOVER = "memory 10^%{x:.2f} GB<br>compute 10^%{y:.2f} FLOPs<br>best E %{customdata:g}<extra></extra>"
_EXPERT_COLORS = [
    [0.0, "#f7fbff"],
    [0.2, "#c6dbef"],
    [0.4, "#6baed6"],
    [0.6, "#2171b5"],
    [0.8, "#08519c"],
    [1.0, "#08306b"],
]


def _experts_options(memory_gb, kv_tokens, inference_tokens) -> dict:
    return {
        "memory_bytes": None if memory_gb is None else memory_gb * GB,
        "kv_tokens": kv_tokens,
        "inference_tokens": inference_tokens,
    }


def _add_loss_vs_experts(figure, row, col, flops, memory_gb, kv_tokens, inference_tokens, selected, law):
    experts = np.asarray(EXPLORER_EXPERTS, dtype=float)
    free = optimal_config(flops, experts, inference_tokens=inference_tokens, law=law)
    figure.add_scatter(
        x=experts,
        y=free.loss,
        name="compute budget only",
        mode="lines+markers",
        line=dict(color=PALETTE[7], dash="dash"),
        row=row,
        col=col,
    )
    limited = optimal_config(flops, experts, law=law, **_experts_options(memory_gb, kv_tokens, inference_tokens))
    best = int(np.argmin(limited.loss))
    figure.add_scatter(
        x=experts,
        y=limited.loss,
        name=f"and {memory_gb:g} GB of memory",
        mode="lines+markers",
        line=dict(color=PALETTE[0]),
        row=row,
        col=col,
    )
    figure.add_scatter(
        x=[experts[best]],
        y=[limited.loss[best]],
        mode="markers",
        name=f"best E = {experts[best]:g}",
        marker=dict(size=15, symbol="star", color=PALETTE[3]),
        row=row,
        col=col,
    )
    if selected is not None:
        index = EXPLORER_EXPERTS.index(selected)
        figure.add_scatter(
            x=[selected],
            y=[limited.loss[index]],
            mode="markers",
            name=f"your E = {selected}",
            marker=dict(size=13, symbol="circle-open", line_width=3, color=PALETTE[1]),
            row=row,
            col=col,
        )
    figure.update_xaxes(type="log", tickvals=list(EXPLORER_EXPERTS), title_text="experts E", row=row, col=col)
    figure.update_yaxes(title_text="predicted loss", row=row, col=col)
    return limited


def loss_vs_experts(
    flops: float,
    memory_gb: float,
    *,
    kv_tokens: int = 0,
    inference_tokens: float = 0.0,
    selected: int | None = None,
    law: JointLaw = JOINT,
) -> go.Figure:
    """The best loss each number of experts reaches at a compute budget: with compute alone (dashed) and when the
    model must also fit ``memory_gb`` (solid). Without memory, more experts always win; memory bends the curve."""
    if selected is not None:
        check_choice("selected", selected, EXPLORER_EXPERTS)
    figure = go.Figure()
    _add_loss_vs_experts(figure, None, None, flops, memory_gb, kv_tokens, inference_tokens, selected, law)
    return style_figure(figure, f"Best loss by number of experts at F = {flops:.1e} FLOPs", "experts E", "loss")


def _add_frontier(figure, row, col, flops_values, memory_gb, kv_tokens, inference_tokens, marked, law):
    flops_values = np.asarray(flops_values, dtype=float)
    dense = optimal_config(flops_values, 1, inference_tokens=inference_tokens, law=law).loss
    options = _experts_options(memory_gb, kv_tokens, inference_tokens)
    for index, experts in enumerate(EXPERT_COUNTS):
        limited = optimal_config(flops_values, experts, law=law, **options).loss
        figure.add_scatter(
            x=flops_values,
            y=limited - dense,
            name=f"E={experts}",
            mode="lines",
            line=dict(color=PALETTE[index % len(PALETTE)]),
            row=row,
            col=col,
        )
    figure.add_hline(y=0.0, line=dict(color="black", dash="dot", width=1), row=row, col=col)
    if marked is not None:
        figure.add_vline(x=marked, line=dict(color=PALETTE[3], width=1), row=row, col=col)
    figure.update_xaxes(type="log", title_text="training FLOPs", row=row, col=col)
    figure.update_yaxes(title_text="loss minus compute-optimal dense", row=row, col=col)


def compute_saving_curves(flops_values: Sequence[float], *, law: JointLaw = JOINT) -> go.Figure:
    """How many times more compute a compute-optimal dense model needs to match each E (the paper's Fig. 2b)."""
    flops_values = np.asarray(flops_values, dtype=float)
    figure = go.Figure()
    for index, experts in enumerate(EXPERT_COUNTS[1:], start=1):
        figure.add_scatter(
            x=flops_values,
            y=compute_saving(flops_values, experts, law=law),
            name=f"E={experts}",
            line=dict(color=PALETTE[index % len(PALETTE)]),
        )
    figure.update_xaxes(type="log")
    return style_figure(
        figure, "Compute a dense model needs to match an MoE", "MoE training FLOPs", "dense / MoE FLOPs"
    )


def _add_heatmap(figure, row, col, best, marked, law_note):
    log_memory, log_flops = np.log10(_HEATMAP_MEMORY_GB), np.log10(_HEATMAP_FLOPS)
    figure.add_heatmap(
        x=log_memory,
        y=log_flops,
        z=np.log2(best),
        zmin=0,
        zmax=5,
        colorscale=_EXPERT_COLORS,
        customdata=best,
        hovertemplate=_HEATMAP_HOVER,
        colorbar=dict(
            title="best E",
            tickvals=list(range(6)),
            ticktext=[str(2**k) for k in range(6)],
            len=0.45 if row else 1.0,
            y=0.2 if row else 0.5,
        ),
        row=row,
        col=col,
    )
    cells = pd.DataFrame([cell.__dict__ for cell in JOINT_TABLE_2])
    figure.add_scatter(
        x=np.log10(cells.memory_gb),
        y=np.log10(cells.flops),
        mode="markers+text",
        text=[f"{'≥' if at_least else ''}{e}" for e, at_least in zip(cells.experts, cells.at_least, strict=True)],
        marker=dict(size=26, color="white", opacity=0.9, line=dict(color=PALETTE[1], width=2)),
        textfont=dict(color="black", size=13),
        name="paper's Table 2",
        row=row,
        col=col,
    )
    if marked is not None:
        figure.add_scatter(
            x=[np.log10(marked[1])],
            y=[np.log10(marked[0])],
            mode="markers",
            name="your budgets",
            marker=dict(size=14, symbol="x", color=PALETTE[3]),
            row=row,
            col=col,
        )
    memory_ticks = [1, 10, 24, 80, 640, 3000]
    figure.update_xaxes(
        tickvals=np.log10(memory_ticks),
        ticktext=[str(m) for m in memory_ticks],
        title_text=f"memory (GB){law_note}",
        row=row,
        col=col,
    )
    figure.update_yaxes(
        tickvals=list(range(19, 26)),
        ticktext=[f"1e{k}" for k in range(19, 26)],
        title_text="training FLOPs",
        row=row,
        col=col,
    )


def optimal_experts_heatmap(
    *, kv_tokens: int = 16_384, inference_tokens: float = 0.0, law: JointLaw = JOINT, marked=None
) -> go.Figure:
    """The best number of experts (of 1 to 32) over compute x memory, the paper's Table 2 circled on top.

    ``marked`` is an optional (flops, memory_gb) point.
    """
    best, _ = optimal_experts(
        _HEATMAP_FLOPS, _HEATMAP_MEMORY_GB * GB, kv_tokens=kv_tokens, inference_tokens=inference_tokens, law=law
    )
    figure = go.Figure()
    _add_heatmap(figure, None, None, best, marked, f", with a {kv_tokens}-token KV cache")
    figure.update_layout(
        title="Best number of experts for a compute and a memory budget (circled: the paper's Table 2)",
        template=TEMPLATE,
        height=480,
        margin=dict(l=70, r=20, t=50, b=60),
        legend=dict(orientation="h", y=1.02, x=1.0, xanchor="right"),
    )
    return figure


def explorer_figure(
    flops: float,
    memory_gb: float,
    experts: int,
    inference_tokens: float = 0.0,
    kv_tokens: int = 0,
    *,
    law: JointLaw = JOINT,
) -> go.Figure:
    """The explorer's view: loss by number of experts at your budgets (top left), each E against dense across
    compute at your memory (top right), the best E over every compute x memory pair (bottom), and a summary of
    the model your E would be."""
    check_choice("experts", experts, EXPLORER_EXPERTS)
    figure = make_subplots(
        rows=2,
        cols=2,
        specs=[[{}, {}], [{"colspan": 2}, None]],
        vertical_spacing=0.16,
        subplot_titles=(
            f"best loss by E at F = {flops:.1e}",
            f"each E against dense, {memory_gb:g} GB",
            "best E for every compute and memory budget (circled: the paper's Table 2, with a 16k-token cache)",
        ),
    )
    limited = _add_loss_vs_experts(figure, 1, 1, flops, memory_gb, kv_tokens, inference_tokens, experts, law)
    _add_frontier(figure, 1, 2, FLOPS_GRID, memory_gb, kv_tokens, inference_tokens, flops, law)
    best, _ = optimal_experts(
        _HEATMAP_FLOPS, _HEATMAP_MEMORY_GB * GB, kv_tokens=kv_tokens, inference_tokens=inference_tokens, law=law
    )
    _add_heatmap(figure, 2, 1, best, (flops, memory_gb), f", KV cache {kv_tokens} tokens")
    figure.add_annotation(
        text=config_summary(limited, EXPLORER_EXPERTS.index(experts)),
        xref="paper",
        yref="paper",
        x=0,
        y=-0.12,
        showarrow=False,
        xanchor="left",
        align="left",
    )
    figure.update_layout(template=TEMPLATE, height=900, margin=dict(l=70, r=20, t=60, b=110), showlegend=True)
    return figure


def config_summary(configs, index: int) -> str:
    """One line describing the ``index``-th configuration of an :class:`~efflab.joint_moe.law.JointConfig`."""
    if not configs.fits[index]:
        return f"E = {configs.experts[index]:g}: no model with this many experts fits the memory budget"
    active, tokens = configs.active_params[index], configs.tokens[index]
    non_embedding = joint_shape(configs.d_model[index])["active_non_embedding"]
    rate = float(peak_learning_rate(non_embedding, configs.experts[index]))
    bound = "memory" if configs.memory_bound[index] else "compute"
    return (
        f"your E = {configs.experts[index]:g}: d_model {configs.d_model[index]:.0f}, "
        f"{active:.3g} active / {configs.total_params[index]:.3g} total parameters, {tokens:.3g} tokens "
        f"({tokens / active:.0f} per active parameter), {configs.memory_bytes[index] / GB:.1f} GB to serve, "
        f"loss {configs.loss[index]:.3f}; size set by {bound}; peak LR by eq. 8: {rate:.1e}"
    )


def playground(result) -> Playground:
    """The notebook's playground: the law under your compute, memory, inference and KV-cache budgets and your
    E (the explorer view), beside this run's models (width, number of experts) with the law fitted to them.
    Every control redraws from closed-form arithmetic or the precomputed runs; nothing trains."""
    budget = result.budget
    curves = result.grid.curves
    fitted = result.joint_fit.law

    def render(flops, memory_gb, experts, inference_tokens, kv_tokens, width, run_experts):
        figure = explorer_figure(flops, memory_gb, experts, inference_tokens, kv_tokens)
        rows = curves[(curves.width == width) & (curves.expansion == run_experts)]
        measured = measured_with_law(rows, fitted, title=f"this run: d_model={width}, E={run_experts}")
        limited = optimal_config(
            flops,
            np.asarray(EXPLORER_EXPERTS, dtype=float),
            **_experts_options(memory_gb, kv_tokens, inference_tokens),
        )
        best = EXPLORER_EXPERTS[int(np.argmin(limited.loss))]
        decayed = rows[rows.phase == "decayed"] if "phase" in rows else rows
        status = (
            f"At {flops:.1e} FLOPs and {memory_gb:g} GB the law's best E is {best}"
            + (" (beyond the paper's E <= 32: an extrapolation)" if best > 32 or experts > 32 else "")
            + f"; your E = {experts}. This run, d_model={width}, E={run_experts}: {len(decayed)} decayed points, "
            f"last {decayed.val_loss.iloc[-1]:.3f} nats/byte."
        )
        return [figure, measured], status

    return widgets_playground(
        render,
        flops=slider("compute (FLOPs)", FLOPS_GRID, value=min(FLOPS_GRID, key=lambda f: abs(np.log(f / 1e22)))),
        memory_gb=slider("memory (GB)", MEMORY_GB_GRID, value=24),
        experts=slider("your E", EXPLORER_EXPERTS, value=8),
        inference_tokens=slider("inference tokens", INFERENCE_TOKENS_GRID),
        kv_tokens=slider("KV-cache tokens", KV_TOKENS_GRID, value=16_384),
        width=dropdown("run width", list(budget.widths)),
        run_experts=dropdown("run E", [1, *budget.expert_counts], value=max(budget.expert_counts)),
    )


# ------------------------------------------------------------------------------------- this run's experiment


def measured_expert_curves(runs: pd.DataFrame, *, seed: int) -> go.Figure:
    """Final validation loss against the number of experts (1 = dense) for each width, one seed."""
    missing = {"width", "expansion", "seed", "val_loss"} - set(runs)
    if missing:
        raise ValueError(f"runs lacks columns {sorted(missing)}")
    rows = runs[runs.seed == seed].sort_values("expansion")
    figure = go.Figure()
    for index, (width, group) in enumerate(rows.groupby("width")):
        figure.add_scatter(
            x=group.expansion,
            y=group.val_loss,
            mode="lines+markers",
            name=f"d_model={width}",
            line=dict(color=PALETTE[index % len(PALETTE)]),
        )
    figure.update_xaxes(type="log", tickvals=sorted(rows.expansion.unique().tolist()))
    return style_figure(
        figure,
        "Final validation loss by number of experts (same active parameters per width)",
        "experts E (1 = dense)",
        "validation loss (nats/byte)",
    )


def exponents_by_experts(fitted: JointLaw, expert_counts: Sequence[int], *, paper: JointLaw = JOINT) -> go.Figure:
    """The per-E exponents mu(E) (model size) and nu(E) (data) of a fitted law beside the paper's.

    The paper's pattern: nu grows steeper with E (zeta < 0: more experts profit more from data) and mu flattens.
    """
    experts = np.asarray(expert_counts, dtype=float)
    figure = make_subplots(rows=1, cols=2, subplot_titles=("model-size exponent mu(E)", "data exponent nu(E)"))
    for column, name in ((1, "mu"), (2, "nu")):
        for law, label, color in ((paper, "paper", PALETTE[7]), (fitted, "this run", PALETTE[0])):
            figure.add_scatter(
                x=experts,
                y=getattr(law.for_experts(experts), name),
                mode="lines+markers",
                name=label,
                line=dict(color=color),
                showlegend=column == 1,
                row=1,
                col=column,
            )
        figure.update_xaxes(type="log", tickvals=list(expert_counts), title_text="experts E", row=1, col=column)
    figure.update_layout(template=TEMPLATE, height=380, margin=dict(l=60, r=20, t=50, b=50))
    return figure


def measured_with_law(curves: pd.DataFrame, law: JointLaw, *, title: str) -> go.Figure:
    """One (width, E)'s evaluations (columns seed, tokens, val_loss, active_params, expansion, optionally phase)
    with ``law`` drawn at its active parameters and number of experts."""
    if curves.empty:
        raise ValueError("curves is empty; expected the evaluations of one configuration")
    tokens = np.geomspace(curves.tokens.min(), curves.tokens.max(), 50)
    predicted = law.loss(float(curves.active_params.iloc[0]), tokens, int(curves.expansion.iloc[0]))
    return curves_with_law(curves, tokens, predicted, law_name="fitted joint law", title=title)
