"""Figures of notebook 02 (Shapley pruning): plotly factories over precomputed study results.

Every factory takes plain data (tensors, tables from :class:`efflab.shapley.experiment.StudyResult`) and returns a
``go.Figure``; none trains or evaluates a network, so the playground can redraw them on every slider move.
Each estimator family keeps one colour in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.ui.plots import TEMPLATE, style_figure
from efflab.ui.widgets import Playground, dropdown, slider
from efflab.ui.widgets import playground as widget_playground

COLORS = {
    "exact Shapley": "#000000",
    "leave-one-out": "#d62728",
    "partial Shapley": "#ff7f0e",
    "permutations": "#1f77b4",
    "truncated permutations": "#17becf",
    "kernel regression": "#2ca02c",
    "plain regression": "#bcbd22",
    "L1 norm": "#9467bd",
    "L2 norm": "#e377c2",
    "random": "#7f7f7f",
    "oracle set": "#8c564b",
}
ZERO_COST = ("L1 norm", "L2 norm", "random")


def color(name: str) -> str:
    return COLORS.get(name, "#333333")


def _order(values) -> np.ndarray:
    return np.argsort(np.asarray(values, dtype=float), kind="stable")


def _band(figure: go.Figure, x, low, high, name: str) -> None:
    """A shaded min-max band behind a line (the spread over seeds and sampling draws)."""
    x = list(x)
    figure.add_scatter(
        x=x + x[::-1],
        y=list(high) + list(low)[::-1],
        fill="toself",
        fillcolor=color(name),
        opacity=0.12,
        line=dict(width=0),
        hoverinfo="skip",
        showlegend=False,
    )


def channel_values(exact, others: Mapping[str, Sequence[float]], *, title: str) -> go.Figure:
    """Exact Shapley value per channel (bars, sorted) with other scores as markers, rescaled to the same sum.

    Scores of different estimators live on different scales (LOO is in accuracy points lost, a norm in weight
    units), so each is multiplied by ``Σ φ / Σ score`` before plotting: only the shape of the profile matters.
    """
    exact = np.asarray(exact, dtype=float)
    order = _order(exact)
    labels = [f"ch {i}" for i in order]
    figure = go.Figure(go.Bar(x=labels, y=exact[order], name="exact Shapley", marker_color="#c7c7c7"))
    for name, scores in others.items():
        scores = np.asarray(scores, dtype=float)
        scale = exact.sum() / scores.sum() if scores.sum() != 0 else 1.0
        figure.add_scatter(
            x=labels,
            y=scores[order] * scale,
            name=f"{name} (rescaled)",
            mode="markers+lines",
            marker=dict(color=color(name), size=8),
            line=dict(color=color(name), width=1, dash="dot"),
        )
    return style_figure(figure, title, "channel (sorted by exact Shapley value)", "share of v(N) - v(∅)")


def marginal_heatmap(marginals, *, title: str) -> go.Figure:
    """Mean marginal contribution of each channel (rows, sorted by Shapley value) at each coalition size.

    The Shapley value is the mean of a row; leave-one-out sees only the last column.
    """
    marginals = np.asarray(marginals, dtype=float)
    order = _order(marginals.mean(axis=1))
    players = marginals.shape[1]
    figure = go.Figure(
        go.Heatmap(
            z=marginals[order],
            x=list(range(players)),
            y=[f"ch {i}" for i in order],
            colorscale="Viridis",
            colorbar=dict(title="mean gain"),
            hovertemplate="size %{x}, %{y}: %{z:.3f}<extra></extra>",
        )
    )
    figure.add_annotation(
        x=players - 1,
        y=1.02,
        yref="paper",
        text="leave-one-out",
        showarrow=False,
        font=dict(color=color("leave-one-out")),
    )
    figure = style_figure(figure, title, "size of the coalition the channel joins", "channel")
    return figure.update_layout(height=420)


REFERENCES = {"oracle": "the Oracle rank", "kendall": "exact Shapley"}


def cost_benefit(table: pd.DataFrame, *, title: str, against: str = "oracle") -> go.Figure:
    """Rank correlation against coalition evaluations, one line per estimator family.

    ``table`` is :meth:`StudyResult.cost_benefit`: mean evaluations and mean / min / max Kendall τ per setting,
    against the Oracle rank (``against="oracle"``) or the exact values (``"kendall"``). Families that cost nothing
    are drawn as horizontal lines.
    """
    if against not in REFERENCES:
        raise ValueError(f"against={against!r} is not allowed; expected one of {tuple(REFERENCES)}")
    table = table.assign(
        kendall=table[against], kendall_min=table[f"{against}_min"], kendall_max=table[f"{against}_max"]
    )
    figure = go.Figure()
    for family, rows in table.groupby("family", sort=False):
        if family in ZERO_COST:
            figure.add_hline(
                y=rows.kendall.mean(),
                line_dash="dash",
                line_color=color(family),
                annotation_text=f"{family} (free)",
                annotation_position="bottom right",
            )
            continue
        rows = rows.sort_values("evaluations")
        x = rows.evaluations.tolist()
        _band(figure, x, rows.kendall_min, rows.kendall_max, family)
        figure.add_scatter(
            x=x,
            y=rows.kendall,
            name=family,
            mode="lines+markers",
            line=dict(color=color(family)),
            text=[f"setting {s}" for s in rows.setting],
            hovertemplate="%{x:.0f} evaluations, τ=%{y:.2f}, %{text}",
        )
    figure.update_xaxes(type="log")
    figure = style_figure(
        figure, title, "coalition evaluations (log scale)", f"Kendall τ with {REFERENCES[against]}"
    )
    return figure.update_layout(height=460)


def agreement_by_size(
    agreement: pd.DataFrame, *, title: str, families: Sequence[str] | None = None, direction: str = "removing"
) -> go.Figure:
    """Share of the oracle set of each size that a ranking finds (mean over seeds, min-max band), with the random
    baseline o/n: its ``o`` lowest channels against the best removal set (``direction="removing"``), or its ``o``
    highest against the best set to keep (``"adding"``)."""
    if "direction" in agreement:
        agreement = agreement[agreement.direction == direction]
    figure = go.Figure()
    families = list(dict.fromkeys(agreement.family)) if families is None else families
    for family in families:
        rows = agreement[agreement.family == family].groupby("size").agreement.agg(["mean", "min", "max"])
        sizes = rows.index.tolist()
        _band(figure, sizes, rows["min"], rows["max"], family)
        figure.add_scatter(
            x=sizes, y=rows["mean"], name=family, mode="lines+markers", line=dict(color=color(family))
        )
    baseline = agreement.groupby("size").baseline.first()
    figure.add_scatter(
        x=baseline.index,
        y=baseline,
        name="random ranking (o/n)",
        mode="lines",
        line=dict(color="black", dash="dash"),
    )
    figure.update_yaxes(range=[0, 1.02])
    figure = style_figure(figure, title, "removal size o", "share of the oracle set among the o lowest")
    return figure.update_layout(height=440)


def removal_curves(removed: Sequence[int], curves: Mapping[str, np.ndarray], *, title: str) -> go.Figure:
    """Test accuracy against channels removed, per ranking: mean over seeds with a min-max band."""
    figure = go.Figure()
    for name, values in curves.items():
        values = np.atleast_2d(np.asarray(values, dtype=float))
        low, high, mean = values.min(axis=0), values.max(axis=0), values.mean(axis=0)
        x = list(removed)
        _band(figure, x, low, high, name)
        dash = "dash" if name in ("oracle set", "random") else "solid"
        figure.add_scatter(
            x=x, y=mean, name=f"{name}", mode="lines+markers", line=dict(color=color(name), dash=dash)
        )
    figure = style_figure(figure, title, "channels removed (lowest-ranked first)", "test accuracy")
    return figure.update_layout(height=440)


def network_bars(network: pd.DataFrame, *, title: str) -> go.Figure:
    """Test accuracy of the whole-network pruning run per method, right after pruning and after fine-tuning
    (bars: mean over seeds; whiskers: min and max), with the dense network as a reference line."""
    dense = network[network.stage == "dense"].test_accuracy.mean()
    rows = network[network.stage != "dense"]
    figure = go.Figure()
    for stage, pattern in (("pruned", "/"), ("fine-tuned", "")):
        stats = rows[rows.stage == stage].groupby("method", sort=False).test_accuracy.agg(["mean", "min", "max"])
        figure.add_bar(
            x=stats.index,
            y=stats["mean"],
            name=stage,
            marker_pattern_shape=pattern,
            marker_color=[color(m) for m in stats.index],
            error_y=dict(
                type="data",
                symmetric=False,
                array=stats["max"] - stats["mean"],
                arrayminus=stats["mean"] - stats["min"],
            ),
        )
    figure.add_hline(y=dense, line_dash="dot", annotation_text="dense network", annotation_position="top left")
    figure.update_layout(barmode="group")
    figure.update_yaxes(range=[0, 1])
    return style_figure(figure, title, "how each layer's channels were ranked", "test accuracy")


def rank_comparison(exact, estimate, *, estimate_name: str, title: str, values=None) -> go.Figure:
    """Two panels: where each channel falls in the exact and in the estimated pruning order, and (given the
    table of all coalition ``values``) the distribution of coalition values by coalition size.

    Left: one line per channel from its place in the exact order to its place in the estimate's; flat lines
    are agreement, crossings are disagreement. Channels the exact order would prune in the first half are red.
    Right: for each coalition size, the share of coalitions at each payoff, the mean, and the best coalition of
    each size (the oracle's choice, its top edge).
    """
    exact, estimate = np.asarray(exact, dtype=float), np.asarray(estimate, dtype=float)
    players = len(exact)
    exact_place, estimate_place = np.empty(players, int), np.empty(players, int)
    exact_place[_order(exact)] = np.arange(players)
    estimate_place[_order(estimate)] = np.arange(players)
    columns = 2 if values is not None else 1
    figure = make_subplots(
        rows=1,
        cols=columns,
        column_widths=[0.45, 0.55][:columns] if columns == 2 else None,
        subplot_titles=("pruning order (bottom = removed first)", "coalition values by size")[:columns],
    )
    for channel in range(players):
        early = exact_place[channel] < players // 2
        figure.add_scatter(
            x=["exact Shapley", estimate_name],
            y=[exact_place[channel], estimate_place[channel]],
            mode="lines+markers+text",
            text=[f"ch {channel}", ""],
            textposition="middle left",
            line=dict(color="#d62728" if early else "#1f77b4", width=1.5),
            showlegend=False,
            hovertemplate=f"channel {channel}: place %{{y}}<extra></extra>",
            row=1,
            col=1,
        )
    figure.update_yaxes(title_text="place in the pruning order", row=1, col=1)
    if values is not None:
        _add_value_heatmap(figure, np.asarray(values, dtype=float), col=2)
    figure.update_layout(title=title, template=TEMPLATE, height=480, margin=dict(l=60, r=20, t=80, b=50))
    return figure


def _add_value_heatmap(figure: go.Figure, values: np.ndarray, *, col: int, bins: int = 40) -> None:
    players = int(np.log2(len(values)))
    sizes = ((np.arange(len(values))[:, None] >> np.arange(players)) & 1).sum(axis=1)  # channels kept per row
    edges = np.linspace(values.min(), values.max() + 1e-12, bins + 1)
    counts, _, _ = np.histogram2d(sizes, values, bins=[np.arange(players + 2) - 0.5, edges])
    share = counts / counts.sum(axis=1, keepdims=True)
    centres = (edges[:-1] + edges[1:]) / 2
    figure.add_heatmap(
        x=np.arange(players + 1),
        y=centres,
        z=np.where(share.T > 0, share.T, np.nan),
        colorscale="Blues",
        colorbar=dict(title="share", x=1.02),
        hovertemplate="size %{x}, value %{y:.2f}: %{z:.1%}<extra></extra>",
        row=1,
        col=col,
    )
    by_size = pd.Series(values).groupby(sizes)
    figure.add_scatter(
        x=by_size.mean().index,
        y=by_size.mean(),
        name="mean",
        mode="lines",
        line=dict(color="black", dash="dot"),
        row=1,
        col=col,
    )
    figure.add_scatter(
        x=by_size.max().index,
        y=by_size.max(),
        name="best of each size (oracle)",
        mode="lines",
        line=dict(color=color("oracle set")),
        row=1,
        col=col,
    )
    figure.update_xaxes(title_text="channels kept", row=1, col=col)
    figure.update_yaxes(title_text="payoff", row=1, col=col)


BUDGETS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 65536)


def playground_view(result, layer: str, estimator: str, budget: int) -> tuple[go.Figure, str]:
    """The playground's answer for one setting of its controls: the figure and a status sentence.

    For a budget, the estimator shows its largest precomputed setting that costs at most that many coalition
    evaluations. The status line says when the budget is past the largest precomputed setting (then more budget
    changes nothing), below the cheapest one, or irrelevant (a free criterion).
    """
    seed = result.seeds[0]
    rows = result.estimates[
        (result.estimates.layer == layer)
        & (result.estimates.family == estimator)
        & (result.estimates.seed == seed)
    ]
    rows = rows[rows["draw"] == 0]  # the sampling draw the playground shows (as ``pick`` does)
    row = result.pick(layer, estimator, budget=budget, seed=seed)
    costs = sorted(set(rows.evaluations))
    if costs == [0]:
        note = f"{estimator} needs no coalition evaluation: the budget does not change it"
    elif budget > max(costs):
        largest = rows.sort_values("evaluations").iloc[-1]
        note = (
            f"budget {budget:,} is past the largest precomputed setting of {estimator} ({largest.method}, "
            f"{int(largest.evaluations):,} evaluations): showing that one"
        )
    elif budget < min(costs):
        note = (
            f"budget {budget:,} is below the cheapest precomputed setting ({min(costs):,} evaluations): showing it"
        )
    else:
        note = f"the largest precomputed setting within budget {budget:,}"
    values = result.tables[seed, layer].values(result.payoff)
    title = f"{row.method} on {layer}, seed {seed}"
    figure = rank_comparison(
        result.exact(seed, layer), row.scores, estimate_name=row.method, title=title, values=values
    )
    status = (
        f"{row.method}: {int(row.evaluations):,} evaluations (exact: {2**row.players:,}); Kendall τ with the "
        f"Oracle rank {row.oracle:.2f}, with exact Shapley {row.kendall:.2f}; accuracy of removal "
        f"{row.removal:.2f}, of adding {row.adding:.2f} (random: {row.baseline:.2f}). {note}."
    )
    return figure, status


def playground(result) -> Playground:
    """Layer, estimator and evaluation-budget controls over a finished study (first seed), with a status line."""
    layers = list(dict.fromkeys(result.estimates.layer))
    families = [family for family in dict.fromkeys(result.estimates.family) if family != "exact Shapley"]

    def render(layer, estimator, budget):
        return playground_view(result, layer, estimator, budget)

    return widget_playground(
        render,
        layer=dropdown("layer", layers, value=layers[-1]),
        estimator=dropdown("estimator", families, value="permutations"),
        budget=slider("budget", BUDGETS, value=128, description="evaluation budget"),
    )
