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
from efflab.ui.widgets import Explorer, dropdown, explorer, slider

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
        x=x + x[::-1], y=list(high) + list(low)[::-1], fill="toself", fillcolor=color(name), opacity=0.12,
        line=dict(width=0), hoverinfo="skip", showlegend=False,
    )  # fmt: skip


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
            x=labels, y=scores[order] * scale, name=f"{name} (rescaled)", mode="markers+lines",
            marker=dict(color=color(name), size=8), line=dict(color=color(name), width=1, dash="dot"),
        )  # fmt: skip
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


def cost_benefit(table: pd.DataFrame, *, title: str) -> go.Figure:
    """Rank correlation with the exact values against coalition evaluations, one line per estimator family.

    ``table`` is :meth:`StudyResult.cost_benefit`: mean evaluations and mean / min / max Kendall τ per setting.
    Families that cost nothing are drawn as horizontal lines; exact Shapley is the point at τ = 1.
    """
    figure = go.Figure()
    for family, rows in table.groupby("family", sort=False):
        if family in ZERO_COST:
            figure.add_hline(
                y=rows.kendall.mean(), line_dash="dash", line_color=color(family),
                annotation_text=f"{family} (free)", annotation_position="bottom right",
            )  # fmt: skip
            continue
        rows = rows.sort_values("evaluations")
        x = rows.evaluations.tolist()
        _band(figure, x, rows.kendall_min, rows.kendall_max, family)
        figure.add_scatter(
            x=x, y=rows.kendall, name=family, mode="lines+markers", line=dict(color=color(family)),
            text=[f"setting {s}" for s in rows.setting], hovertemplate="%{x:.0f} evaluations, τ=%{y:.2f}, %{text}",
        )  # fmt: skip
    figure.update_xaxes(type="log")
    figure = style_figure(figure, title, "coalition evaluations (log scale)", "Kendall τ with exact Shapley")
    return figure.update_layout(height=460)


def agreement_by_size(agreement: pd.DataFrame, *, title: str, families: Sequence[str] | None = None) -> go.Figure:
    """Oracle agreement against removal size (mean over seeds, min-max band), with the random baseline o/n."""
    figure = go.Figure()
    families = families or list(dict.fromkeys(agreement.family))
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
            x=stats.index, y=stats["mean"], name=stage, marker_pattern_shape=pattern,
            marker_color=[color(m) for m in stats.index],
            error_y=dict(type="data", symmetric=False, array=stats["max"] - stats["mean"],
                         arrayminus=stats["mean"] - stats["min"]),
        )  # fmt: skip
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
        rows=1, cols=columns, column_widths=[0.45, 0.55][:columns] if columns == 2 else None,
        subplot_titles=("pruning order (bottom = removed first)", "coalition values by size")[:columns],
    )  # fmt: skip
    for channel in range(players):
        early = exact_place[channel] < players // 2
        figure.add_scatter(
            x=["exact Shapley", estimate_name], y=[exact_place[channel], estimate_place[channel]],
            mode="lines+markers+text", text=[f"ch {channel}", ""], textposition="middle left",
            line=dict(color="#d62728" if early else "#1f77b4", width=1.5), showlegend=False,
            hovertemplate=f"channel {channel}: place %{{y}}<extra></extra>", row=1, col=1,
        )  # fmt: skip
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
        x=np.arange(players + 1), y=centres, z=np.where(share.T > 0, share.T, np.nan), colorscale="Blues",
        colorbar=dict(title="share", x=1.02), hovertemplate="size %{x}, value %{y:.2f}: %{z:.1%}<extra></extra>",
        row=1, col=col,
    )  # fmt: skip
    by_size = pd.Series(values).groupby(sizes)
    figure.add_scatter(
        x=by_size.mean().index, y=by_size.mean(), name="mean", mode="lines", line=dict(color="black", dash="dot"),
        row=1, col=col,
    )  # fmt: skip
    figure.add_scatter(
        x=by_size.max().index, y=by_size.max(), name="best of each size (oracle)", mode="lines",
        line=dict(color=color("oracle set")), row=1, col=col,
    )  # fmt: skip
    figure.update_xaxes(title_text="channels kept", row=1, col=col)
    figure.update_yaxes(title_text="payoff", row=1, col=col)


BUDGETS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 65536)


def playground(result) -> Explorer:
    """Layer, estimator and evaluation-budget controls over a finished study (first seed).

    For a budget, each estimator shows its largest precomputed setting that costs at most that many coalition
    evaluations (its cheapest one if none does): the answer to "what do I get for this many forward passes?".
    """
    seed = result.seeds[0]
    layers = list(dict.fromkeys(result.estimates.layer))
    families = [family for family in dict.fromkeys(result.estimates.family) if family != "exact Shapley"]

    def render(layer, estimator, budget):
        row = result.pick(layer, estimator, budget=budget, seed=seed)
        title = (
            f"{row.method} on {layer}: {row.evaluations} evaluations (exact: {2**row.players}), "
            f"Kendall τ = {row.kendall:.2f}, oracle agreement {row.agreement:.2f} (random: {row.baseline:.2f})"
        )
        values = result.tables[seed, layer].values(result.payoff)
        return rank_comparison(
            result.exact(seed, layer), row.scores, estimate_name=row.method, title=title, values=values
        )

    return explorer(
        render,
        layer=dropdown("layer", layers, value=layers[-1]),
        estimator=dropdown("estimator", families, value="permutations"),
        budget=slider("budget", BUDGETS, value=128, description="evaluation budget"),
    )
