"""Figures for notebook 04 (early exits): cost-accuracy curves, exit histograms, galleries, ranks, timings.

Like :mod:`efflab.ui.plots`, every factory takes plain data (arrays, tables, an
:class:`~efflab.early_exit.exits.ExitOutcome`) and returns a ``go.Figure``; nothing here trains or runs a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.early_exit.exits import REGIMES, ExitOutcome
from efflab.ui.plots import PALETTE, TEMPLATE, band_plot
from efflab.ui.widgets import Playground, dropdown, slider
from efflab.ui.widgets import playground as make_playground
from efflab.validation import check_int

PLAYGROUND_THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


def _color(index: int) -> str:
    """Regimes keep the colours :func:`efflab.ui.plots.band_plot` gives them in the order they are listed."""
    return PALETTE[index % len(PALETTE)]


def cost_accuracy_bands(
    grid: Sequence[float],
    bands: Mapping[str, np.ndarray],
    *,
    exit_costs: Sequence[float] = (),
    title: str = "Accuracy within a compute budget",
) -> go.Figure:
    """Accuracy within each relative-cost budget (mean line, min-max band over seeds) per regime.

    Dotted vertical lines mark the cost of each exit, where the curves can step up.
    """
    x = 100 * np.asarray(grid, dtype=float)
    figure = band_plot(
        x, bands, title=title, x_title="compute budget (% of the backbone's FLOPs)", y_title="test accuracy"
    )
    for number, cost in enumerate(exit_costs, start=1):
        figure.add_vline(x=100 * cost, line_dash="dot", line_color="gray", annotation_text=f"exit {number}")
    figure.update_xaxes(ticksuffix="%")
    return figure


def _add_curves(figure, curves, regime, outcome, row, col) -> None:
    for index, (name, curve) in enumerate(curves.items()):
        ordered = curve.sort_values("relative_cost")
        chosen = name == regime
        figure.add_scatter(
            x=100 * ordered.relative_cost,
            y=ordered.accuracy,
            mode="lines",
            name=name,
            row=row,
            col=col,
            line=dict(color=_color(index), width=3 if chosen else 1),
            opacity=1 if chosen else 0.4,
        )
    figure.add_scatter(
        x=[100 * outcome.relative_cost],
        y=[outcome.accuracy],
        mode="markers",
        name="this threshold",
        marker=dict(size=14, color="black", symbol="x"),
        row=row,
        col=col,
    )
    figure.update_xaxes(title_text="expected cost (% of the backbone's FLOPs)", ticksuffix="%", row=row, col=col)
    figure.update_yaxes(title_text="test accuracy", row=row, col=col)


def _add_histogram(figure, outcome, relative_costs, color, row, col) -> None:
    labels = [f"exit {h + 1} ({100 * c:.0f}%)" for h, c in enumerate(relative_costs)]
    figure.add_bar(
        x=labels,
        y=outcome.histogram,
        text=outcome.histogram,
        showlegend=False,
        marker_color=color,
        row=row,
        col=col,
    )


def _gallery_titles(indices_per_exit, labels, predictions, columns: int) -> list[str]:
    titles = []
    for chosen in indices_per_exit:
        marks = [f"{labels[i]}→{predictions[i]}" + ("" if labels[i] == predictions[i] else " ✗") for i in chosen]
        marks = marks or [f"exit {len(titles) // columns + 1}: no test sample leaves here"]
        titles.extend(marks + [""] * (columns - len(marks)))
    return titles


def _add_gallery(figure, images, indices_per_exit, first_row: int) -> None:
    for row, chosen in enumerate(indices_per_exit, start=first_row):
        for column, index in enumerate(chosen, start=1):
            figure.add_heatmap(
                z=images[index][::-1], colorscale="gray_r", zmin=0, zmax=255, showscale=False, row=row, col=column
            )
            x_axis = figure.get_subplot(row, column).xaxis.plotly_name.replace("axis", "")
            figure.update_xaxes(visible=False, constrain="domain", row=row, col=column)
            figure.update_yaxes(  # square pixels
                showticklabels=False,
                showgrid=False,
                zeroline=False,
                scaleanchor=x_axis,
                constrain="domain",
                row=row,
                col=column,
            )
    for row in range(first_row, first_row + len(indices_per_exit)):
        figure.update_xaxes(visible=False, row=row)
        figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, row=row)
        figure.update_yaxes(title_text=f"exit {row - first_row + 1}", row=row, col=1)


def playground_figure(
    curves: Mapping[str, pd.DataFrame],
    regime: str,
    outcome: ExitOutcome,
    relative_costs: Sequence[float],
    images: np.ndarray,
    indices_per_exit: Sequence[Sequence[int]],
    labels: Sequence[int],
) -> go.Figure:
    """The playground in one figure: the operating point on the cost-accuracy curves (one seed), the exit
    histogram, and below them a few test images per exit, titled "label → prediction" (✗ for a mistake).

    One figure rather than several, so that each move of a control sends the notebook a single update.
    ``images`` is (N, H, W) or (N, 1, H, W) in [0, 1].
    """
    # 8-bit grey levels: what a screen shows anyway, and an eighth of the bytes each redraw sends to the browser
    images = np.rint(255 * np.clip(np.asarray(images, dtype=float), 0, 1)).astype(np.uint8)
    images = images.reshape(len(images), *images.shape[-2:])
    exits = len(indices_per_exit)
    columns = max(4, max((len(chosen) for chosen in indices_per_exit), default=0))
    left = columns * 2 // 3
    specs = [
        [{"colspan": left}] + [None] * (left - 1) + [{"colspan": columns - left}] + [None] * (columns - left - 1)
    ]
    specs += [[{} for _ in range(columns)] for _ in range(exits)]
    predictions = outcome.predictions.tolist()
    titles = [f"{regime}: threshold {outcome.threshold:g}", "how many test samples leave at each exit"]
    titles += _gallery_titles(indices_per_exit, labels, predictions, columns)
    figure = make_subplots(
        rows=1 + exits,
        cols=columns,
        specs=specs,
        subplot_titles=titles,
        row_heights=[3.0] + [1.0] * exits,
        vertical_spacing=0.04,
        horizontal_spacing=0.02,
    )
    color = _color(list(curves).index(regime) if regime in curves else 0)
    _add_curves(figure, curves, regime, outcome, row=1, col=1)
    _add_histogram(figure, outcome, relative_costs, color, row=1, col=left + 1)
    _add_gallery(figure, images, indices_per_exit, first_row=2)
    figure.update_annotations(font_size=11)
    figure.update_layout(
        template=TEMPLATE,
        height=330 + 105 * exits,
        margin=dict(l=60, r=20, t=80, b=30),
        title=f"accuracy {outcome.accuracy:.3f} at {100 * outcome.relative_cost:.0f}% of the backbone's cost",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0.0),
    )
    return figure


def per_exit_accuracy(bands: Mapping[str, np.ndarray], relative_costs: Sequence[float]) -> go.Figure:
    """Each exit's own accuracy (every sample forced through it), mean and min-max over seeds, per regime."""
    labels = [f"exit {h + 1} ({100 * c:.0f}%)" for h, c in enumerate(relative_costs)]
    figure = band_plot(
        list(range(1, len(labels) + 1)),
        bands,
        title="Accuracy of each exit on its own",
        x_title="exit (its cost in % of the backbone's)",
        y_title="test accuracy",
    )
    figure.update_xaxes(tickvals=list(range(1, len(labels) + 1)), ticktext=labels)
    return figure


def rank_figure(bands: Mapping[str, np.ndarray], dimensions: Sequence[int], samples: int) -> go.Figure:
    """Numerical rank of each block's activations as a fraction of the most it could be, per regime, over
    seeds (``dimensions`` label the blocks). The title says, computed, whether the ``samples`` images the ranks
    were measured on outnumber every block's dimension, or which blocks they cap."""
    if len(dimensions) == 0:
        raise ValueError("dimensions=() is not allowed; expected one dimension per block")
    check_int("samples", samples, low=1)
    labels = [f"block {s + 1} (D={d})" for s, d in enumerate(dimensions)]
    capped = [f"block {s + 1}" for s, d in enumerate(dimensions) if d >= samples]
    if capped:
        note = f"N = {samples} samples, at most the dimension of {', '.join(capped)}: there N - 1 caps the rank"
    else:
        note = f"N = {samples} samples, more than any block's dimension (largest D = {max(dimensions)})"
    figure = band_plot(
        list(range(1, len(labels) + 1)),
        bands,
        title=f"Numerical rank of each block's activations<br><sup>{note}</sup>",
        x_title="block (dimension of its flattened output)",
        y_title="rank / min(N - 1, D)",
    )
    figure.update_xaxes(tickvals=list(range(1, len(labels) + 1)), ticktext=labels)
    return figure


def sweep_figure(shares: Sequence[float], bands: Mapping[str, np.ndarray], total_steps: int) -> go.Figure:
    """Area under the cost-accuracy curve against phase 1's share of a fixed budget, per regime, over seeds."""
    figure = band_plot(
        100 * np.asarray(shares, dtype=float),
        bands,
        title=f"Phase 1's share of a budget of {total_steps} steps (0 %: mixed is joint; 100 %: no head trains)",
        x_title="phase 1 (% of the budget)",
        y_title="area under the cost-accuracy curve",
    )
    figure.update_xaxes(ticksuffix="%", tickvals=list(100 * np.asarray(shares, dtype=float)))
    return figure


def speed_figure(timing: pd.DataFrame) -> go.Figure:
    """Measured wall-clock ratio against the FLOP estimate, per regime and threshold; the diagonal is "as
    promised"."""
    figure = go.Figure()
    symbols = ("circle", "square", "diamond", "triangle-up", "cross", "x")
    thresholds = list(dict.fromkeys(timing.threshold))
    for index, (regime, rows) in enumerate(timing.groupby("regime", sort=False)):
        shapes = [symbols[thresholds.index(t) % len(symbols)] for t in rows.threshold]
        figure.add_scatter(
            x=rows.flop_ratio,
            y=rows.time_ratio,
            mode="markers",
            name=regime,
            marker=dict(size=12, color=_color(index), symbol=shapes),
            hovertext=[f"{regime}, t={t:g}" for t in rows.threshold],
        )
    for position, threshold in enumerate(thresholds):  # legend entries for the marker shapes
        figure.add_scatter(
            x=[None],
            y=[None],
            mode="markers",
            name=f"t = {threshold:g}",
            marker=dict(size=10, color="gray", symbol=symbols[position % len(symbols)]),
        )
    top = float(max(1.05, timing.flop_ratio.max(), timing.time_ratio.max()) * 1.05)
    figure.add_scatter(
        x=[0, top], y=[0, top], mode="lines", name="time = FLOPs", line=dict(color="gray", dash="dot")
    )
    figure.add_hline(y=1.0, line_color="gray", line_width=1)
    figure.update_layout(
        title="Real early exits: measured time vs the FLOP estimate, relative to the backbone",
        xaxis_title="expected FLOPs / backbone FLOPs",
        yaxis_title="measured time / backbone time",
        template=TEMPLATE,
        height=400,
        margin=dict(l=60, r=20, t=50, b=50),
        xaxis=dict(range=[0, top]),
        yaxis=dict(range=[0, top]),
    )
    return figure


def rule_comparison(curves: Mapping[tuple[str, str], pd.DataFrame]) -> go.Figure:
    """Cost-accuracy curves keyed by (regime, rule): one colour per regime, one dash style per rule."""
    regimes = list(dict.fromkeys(regime for regime, _ in curves))
    rules = list(dict.fromkeys(rule for _, rule in curves))
    figure = go.Figure()
    for (regime, rule), curve in curves.items():
        ordered = curve.sort_values("relative_cost")
        figure.add_scatter(
            x=100 * ordered.relative_cost,
            y=ordered.accuracy,
            mode="lines",
            name=f"{regime} · {rule}",
            line=dict(color=_color(regimes.index(regime)), dash=("solid", "dash", "dot")[rules.index(rule) % 3]),
        )
    figure.update_layout(
        title="Confidence vs entropy exits (first seed)",
        xaxis_title="expected cost (% of the backbone's FLOPs)",
        yaxis_title="test accuracy",
        template=TEMPLATE,
        height=400,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    figure.update_xaxes(ticksuffix="%")
    return figure


def breakdown_figure(table: pd.DataFrame) -> go.Figure:
    """Each part's share of the FLOPs beside its share of the measured time (a table from ``time_breakdown``)."""
    figure = go.Figure()
    figure.add_bar(x=table.part, y=100 * table.flop_share, name="share of FLOPs", marker_color=PALETTE[7])
    figure.add_bar(x=table.part, y=100 * table.time_share, name="share of time", marker_color=PALETTE[3])
    figure.update_layout(
        title="Where a forward pass spends its FLOPs, and where it spends its time",
        barmode="group",
        yaxis_title="% of the whole network",
        template=TEMPLATE,
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return figure


def playground(result, examples_per_exit: int = 6) -> Playground:
    """Regime, phase-1 share, seed and threshold: the operating point, the exit histogram and the samples that
    leave at each exit, read from the stored logits (nothing trains or runs here)."""
    from efflab.early_exit.experiment import example_indices  # the result's own helpers, no training

    check_int("examples_per_exit", examples_per_exit, low=1)
    shares = list(result.budget.shares)

    def render(regime, share, seed, threshold):
        notes = []
        trained = sorted({s for (k, r, s) in result.logits if r == regime and k == seed})
        shown = share if share in trained else result.share_of(regime)
        if regime == "joint":
            notes.append(
                f"joint has no phase 1 (it is mixed at 0 %), so the share {100 * share:.0f} % does not apply"
            )
        elif shown != share:
            notes.append(
                f"{regime} was trained at {100 * shown:.0f} % only; showing that, not {100 * share:.0f} %"
            )
        curves = {name: result.curve(name, seed=seed, share=shown if name == regime else None) for name in REGIMES}
        outcome = result.outcome(regime, threshold, seed=seed, share=shown)
        chosen = example_indices(outcome.exits, examples_per_exit, len(result.costs))
        labels = result.labels[seed].tolist()
        images = result.images[seed].numpy()
        figure = playground_figure(curves, regime, outcome, result.relative_costs, images, chosen, labels)
        early = int(outcome.histogram[:-1].sum())
        status = (
            f"{regime}, phase 1 at {100 * shown:.0f} %, seed {seed}, threshold {threshold:g}: accuracy "
            f"{outcome.accuracy:.3f} at {100 * outcome.relative_cost:.0f} % of the backbone's cost; "
            f"{early} of {len(labels)} test samples leave early"
        )
        return figure, status + ("" if not notes else " (" + "; ".join(notes) + ")")

    return make_playground(
        render,
        regime=dropdown("regime", REGIMES, value="mixed"),
        share=slider("phase-1 share", shares, value=result.budget.main_share),
        seed=dropdown("seed", result.seeds),
        threshold=slider("threshold", PLAYGROUND_THRESHOLDS, value=0.9),
    )
