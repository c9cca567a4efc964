"""Figures and the playground of notebook 01 (one-shot vs iterative pruning).

Every function here takes the tables of :class:`efflab.pruning.experiment.PruningResult` (plain pandas frames)
and draws them; nothing here prunes or trains. The playground's button calls ``result.rerun``, so the heavy work
stays in the experiment module and this module stays a viewer.

Tables used (one row each):

* ``runs``: a pruned model; columns seed, granularity, criterion, curve, ratio, test_accuracy, epochs;
* ``layers``: a layer of a pruned model; the ``runs`` keys plus layer and sparsity;
* ``budget_study``: a run of the budget study; curve, budget (NaN for patience runs), epochs, test_accuracy, seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.ui import plots
from efflab.ui.widgets import Playground, dropdown, slider
from efflab.ui.widgets import playground as widget_playground

# One colour per curve everywhere in the notebook, so a regime looks the same in every figure.
CURVE_ORDER = ("one-shot", "constant", "geometric", "hybrid")
GRANULARITY_UNITS = {"unstructured": "weights", "structured": "channels"}


def curve_color(curve: str) -> str:
    if curve in CURVE_ORDER:
        return plots.PALETTE[CURVE_ORDER.index(curve)]
    return plots.PALETTE[(4 + sum(map(ord, curve))) % len(plots.PALETTE)]  # patience k: stable per k


def ordered_curves(curves) -> list[str]:
    """Fixed-budget regimes in teaching order, then the patience curves by patience."""
    curves = list(dict.fromkeys(curves))
    fixed = [c for c in CURVE_ORDER if c in curves]
    rest = sorted((c for c in curves if c not in CURVE_ORDER), key=lambda c: (len(c), c))
    return fixed + rest


def select(table: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows of ``table`` whose columns equal the given values."""
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        mask &= (table[column] == value).to_numpy()
    return table[mask]


def seed_matrix(runs: pd.DataFrame, value: str = "test_accuracy") -> tuple[list[float], np.ndarray]:
    """Ratios and an array (seeds, ratios) of ``value``: the shape :func:`efflab.ui.plots.band_plot` takes."""
    table = runs.pivot_table(index="seed", columns="ratio", values=value)
    return [float(r) for r in table.columns], table.to_numpy()


def accuracy_vs_ratio(
    runs: pd.DataFrame,
    granularity: str,
    criterion: str,
    *,
    curves: Sequence[str] | None = None,
    dense_accuracy: float | None = None,
    crossover: Mapping | None = None,
    highlight: tuple[str, float] | None = None,
) -> go.Figure:
    """Test accuracy against pruning ratio, one band (min to max over seeds) and mean line per curve.

    ``crossover`` (from :func:`efflab.pruning.experiment.crossover_summary`) shades the range of ratios where
    the iterative curve overtook one-shot across seeds, or notes that it never did on this grid. ``highlight``
    (curve, ratio) puts a marker on one point, for the playground.
    """
    chosen = select(runs, granularity=granularity, criterion=criterion)
    if chosen.empty:
        raise ValueError(f"runs has no rows for granularity={granularity!r}, criterion={criterion!r}")
    curves = ordered_curves(chosen.curve) if curves is None else list(curves)
    ratios = sorted(chosen.ratio.unique())
    series = {}
    for curve in curves:
        got_ratios, values = seed_matrix(select(chosen, curve=curve))
        if got_ratios != ratios:
            continue  # a curve that was not run at every ratio is left out rather than drawn misaligned
        series[curve] = values
    figure = plots.band_plot(
        ratios,
        series,
        title=f"{granularity} pruning, {criterion}: accuracy after fine-tuning",
        x_title=f"pruning ratio (fraction of {GRANULARITY_UNITS[granularity]} removed)",
        y_title="test accuracy",
    )
    for trace in figure.data:  # recolour by curve so every figure agrees
        name = (trace.name or "").rsplit(" (n=", 1)[0]
        if name in series:
            trace.line.color = curve_color(name)
    bands = [t for t in figure.data if t.fill == "toself"]
    for band, curve in zip(bands, series, strict=True):
        band.fillcolor = curve_color(curve)
    if dense_accuracy is not None:
        figure.add_hline(y=dense_accuracy, line_dash="dot", line_color="gray", annotation_text="dense")
    if crossover is not None:
        _mark_crossover(figure, crossover)
    if highlight is not None:
        curve, ratio = highlight
        point = select(chosen, curve=curve, ratio=ratio)
        if not point.empty:
            figure.add_scatter(
                x=[ratio],
                y=[point.test_accuracy.mean()],
                mode="markers",
                marker=dict(size=16, symbol="star", color=curve_color(curve), line=dict(width=1, color="black")),
                name=f"chosen: {curve} at {ratio:g}",
            )
    figure.update_yaxes(range=[0, 1.02])
    return figure


def _mark_crossover(figure: go.Figure, crossover: Mapping) -> None:
    low, high = crossover.get("low"), crossover.get("high")
    label = f"{crossover['late']} ≥ {crossover['early']}"
    if low is None or np.isnan(low):
        figure.add_annotation(
            text=f"no crossover: {crossover['late']} stays behind {crossover['early']} at the top ratio",
            xref="paper",
            yref="paper",
            x=0.01,
            y=0.02,
            showarrow=False,
            align="left",
        )
        return
    if high - low < 0.004:
        figure.add_vline(x=low, line_dash="dash", line_color="black", annotation_text=f"crossover: {label}")
    else:
        figure.add_vrect(
            x0=low, x1=high, fillcolor="gray", opacity=0.15, line_width=0, annotation_text=f"crossover: {label}"
        )


def damage_curves(table: pd.DataFrame, *, dense_accuracy: float | None = None) -> go.Figure:
    """Accuracy right after masking, with no fine-tuning, one line per criterion (nested masks, one model)."""
    figure = go.Figure()
    for index, (criterion, rows) in enumerate(table.groupby("criterion", sort=False)):
        figure.add_scatter(
            x=rows.ratio,
            y=rows.test_accuracy,
            name=criterion,
            mode="lines+markers",
            line=dict(color=plots.PALETTE[index]),
        )
    if dense_accuracy is not None:
        figure.add_hline(y=dense_accuracy, line_dash="dot", line_color="gray", annotation_text="dense")
    figure.update_yaxes(range=[0, 1.02])
    return plots.style_figure(figure, "The damage before any fine-tuning", "pruning ratio", "test accuracy")


def step_trajectories(steps: pd.DataFrame, granularity: str, criterion: str, ratio: float) -> go.Figure:
    """Accuracy after each pruning step against the fine-tuning epochs spent so far (mean over seeds).

    One-shot is a single point; an iterative run walks down in steps, and its last step is where it loses most.
    The hover text gives each step's cumulative ratio.
    """
    chosen = select(steps, granularity=granularity, criterion=criterion, ratio=ratio)
    if chosen.empty:
        raise ValueError(f"steps has no rows for {granularity!r}, {criterion!r} at ratio {ratio!r}")
    figure = go.Figure()
    for curve in ordered_curves(chosen.curve):
        mean = select(chosen, curve=curve).groupby("step")[["epochs", "test_accuracy", "scheduled_ratio"]].mean()
        figure.add_scatter(
            x=[0.0, *mean.epochs],
            y=[None, *mean.test_accuracy],
            name=curve,
            mode="lines+markers",
            line=dict(color=curve_color(curve)),
            text=[
                "dense",
                *(f"step {s}: ratio {r:.3f}" for s, r in zip(mean.index, mean.scheduled_ratio, strict=True)),
            ],
        )
    figure.update_yaxes(range=[0, 1.02])
    return plots.style_figure(
        figure,
        f"Accuracy after each step, to a ratio of {ratio:g}",
        "fine-tuning epochs spent so far",
        "test accuracy",
    )


def criteria_comparison(runs: pd.DataFrame, granularity: str, curve: str = "one-shot") -> go.Figure:
    """One band per criterion for one regime: how much the choice of *which* weights to remove matters."""
    chosen = select(runs, granularity=granularity, curve=curve)
    if chosen.empty:
        raise ValueError(f"runs has no rows for granularity={granularity!r}, curve={curve!r}")
    ratios = sorted(chosen.ratio.unique())
    series = {}
    for criterion in dict.fromkeys(chosen.criterion):
        got, values = seed_matrix(select(chosen, criterion=criterion))
        if got == ratios:
            series[criterion] = values
    figure = plots.band_plot(
        ratios,
        series,
        title=f"{granularity} pruning, {curve}: criteria compared",
        x_title="pruning ratio",
        y_title="test accuracy",
    )
    figure.update_yaxes(range=[0, 1.02])
    return figure


def budget_view(budget: pd.DataFrame, *, ratio: float, dense_accuracy: float | None = None) -> go.Figure:
    """Accuracy against fine-tuning epochs actually spent, at one pruning ratio (the compute-matched view).

    Fixed-budget regimes are lines over their budgets (mean, with a min-max band over seeds); patience-based
    runs choose their own length, so each seed is a point at the epochs it really used.
    """
    if budget.empty:
        raise ValueError("budget is empty; expected the budget study's rows")
    figure = go.Figure()
    fixed = budget[budget.budget.notna()]
    for curve in ordered_curves(fixed.curve):
        rows = select(fixed, curve=curve)
        table = rows.pivot_table(index="seed", columns="budget", values="test_accuracy")
        spent = rows.groupby("budget").epochs.mean().reindex(table.columns)
        x, values, color = list(spent), table.to_numpy(), curve_color(curve)
        figure.add_scatter(
            x=x + x[::-1],
            y=list(values.max(axis=0)) + list(values.min(axis=0))[::-1],
            fill="toself",
            fillcolor=color,
            opacity=0.2,
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
        )
        figure.add_scatter(
            x=x,
            y=values.mean(axis=0),
            name=f"{curve} (n={len(values)})",
            mode="lines+markers",
            line=dict(color=color),
        )
    for curve in ordered_curves(budget[budget.budget.isna()].curve):
        rows = select(budget, curve=curve)
        figure.add_scatter(
            x=rows.epochs,
            y=rows.test_accuracy,
            mode="markers",
            marker=dict(size=10, symbol="diamond", color=curve_color(curve)),
            name=f"{curve} (one point per seed, at the epochs it used)",
        )
    if dense_accuracy is not None:
        figure.add_hline(y=dense_accuracy, line_dash="dot", line_color="gray", annotation_text="dense")
    figure.update_xaxes(type="log")
    return plots.style_figure(
        figure,
        f"Accuracy against fine-tuning compute at ratio {ratio:g}",
        "fine-tuning epochs spent",
        "test accuracy",
    )


def schedule_staircase(schedules: Mapping[str, Sequence[float]], *, ratio: float) -> go.Figure:
    """Cumulative pruning ratio after each step, one staircase per regime (step 0 is the dense model)."""
    figure = go.Figure()
    for curve, cumulative in schedules.items():
        steps = list(range(len(cumulative) + 1))
        figure.add_scatter(
            x=steps,
            y=[0.0, *cumulative],
            name=curve,
            line=dict(shape="hv", color=curve_color(curve)),
            mode="lines+markers",
        )
    figure.add_hline(y=ratio, line_dash="dot", line_color="gray", annotation_text=f"target {ratio:g}")
    figure.update_yaxes(range=[0, 1])
    return plots.style_figure(
        figure, f"Schedules to a pruning ratio of {ratio:g}", "pruning step", "cumulative ratio"
    )


def layer_sparsity_bars(layers: Mapping[str, pd.DataFrame] | pd.DataFrame, *, title: str) -> go.Figure:
    """Pruned fraction per layer (mean over seeds), grouped by curve when given a mapping curve -> rows."""
    if isinstance(layers, pd.DataFrame):
        layers = {"": layers}
    figure = go.Figure()
    for index, (label, rows) in enumerate(layers.items()):
        means = rows.groupby("layer", sort=False).sparsity.mean()
        color = curve_color(label) if label in CURVE_ORDER else plots.PALETTE[index % len(plots.PALETTE)]
        figure.add_bar(x=list(means.index), y=list(means), name=label or None, marker_color=color)
    figure.update_yaxes(range=[0, 1])
    figure.update_layout(barmode="group")
    return plots.style_figure(figure, title, "layer", "pruned fraction")


def structured_cost_bars(costs: pd.DataFrame) -> go.Figure:
    """Parameters, FLOPs and measured latency of each structurally pruned model, as a fraction of the dense one."""
    pruned = costs.drop(index="dense")
    figure = go.Figure()
    labels = [f"{r:g}" for r in pruned.channel_ratio]
    for index, (column, name) in enumerate(
        (("parameter_ratio", "parameters"), ("flop_ratio", "FLOPs"), ("latency_ratio", "latency (measured)"))
    ):
        figure.add_bar(x=labels, y=pruned[column], name=name, marker_color=plots.PALETTE[index])
    figure.add_hline(y=1.0, line_dash="dot", line_color="gray", annotation_text="dense")
    figure.update_layout(barmode="group")
    return plots.style_figure(
        figure, "What structured pruning buys on this CPU", "channel ratio removed per layer", "fraction of dense"
    )


def _status_point(rows: pd.DataFrame) -> str:
    accuracy = rows.test_accuracy
    return (
        f"test accuracy {accuracy.mean():.3f} (min {accuracy.min():.3f}, max {accuracy.max():.3f}, "
        f"n={len(accuracy)}) after {rows.epochs.mean():.1f} fine-tuning epochs"
    )


def resolve(result, ratio, granularity, criterion, regime, patience) -> dict:
    """The precomputed run shown for these control values, and a note for everything that was substituted.

    A ratio snaps to the nearest one this granularity was run at; a criterion of the other granularity falls back
    to this granularity's main one; a schedule a side criterion did not run falls back to one-shot; a patience
    run exists only on the main unstructured criterion at the patience ratios, elsewhere the fixed-budget run
    is shown.
    """
    runs, notes = result.runs, []
    main = dict(result.budget.main_criteria)
    rows = select(runs, granularity=granularity)
    if criterion not in set(rows.criterion):
        notes.append(f"{criterion} is not a {granularity} criterion: showing {main[granularity]}")
        criterion = main[granularity]
    rows = select(rows, criterion=criterion)
    available = sorted(rows.ratio.unique())
    snapped = min(available, key=lambda r: abs(r - ratio))
    if snapped != ratio:
        notes.append(f"{granularity} runs exist at {', '.join(f'{r:g}' for r in available)}: showing {snapped:g}")
    if regime not in set(rows.regime):
        notes.append(f"{regime} was not run with {criterion}: showing one-shot")
        regime = "one-shot"
    if patience != "off":
        found = select(result.patience, criterion=criterion, regime=regime, ratio=snapped, patience=patience)
        if result.patience.empty or found.empty or granularity != "unstructured":
            where = sorted(result.patience.ratio.unique()) if not result.patience.empty else []
            notes.append(
                f"{regime} with patience {patience} was run only unstructured, {main['unstructured']}, at "
                f"{', '.join(f'{r:g}' for r in where) or 'no ratio'}: showing the fixed budget"
            )
            patience = "off"
    return dict(
        granularity=granularity, criterion=criterion, regime=regime, ratio=snapped, patience=patience, notes=notes
    )


def playground_view(result, ratio, granularity, criterion, regime, patience) -> tuple[go.Figure, str]:
    """The playground's answer: curves with the chosen run marked, its per-layer bars, and a status sentence."""
    chosen = resolve(result, ratio, granularity, criterion, regime, patience)
    key = {k: chosen[k] for k in ("granularity", "criterion", "regime", "ratio")}
    if chosen["patience"] == "off":
        point = select(result.runs, curve=chosen["regime"], **key)
        curve = chosen["regime"]
    else:
        point = select(result.patience, patience=chosen["patience"], **key)
        curve = point.curve.iloc[0]
    layer_rows = select(result.layers, curve=curve, **{k: key[k] for k in ("granularity", "criterion", "ratio")})
    dense = float(result.dense.test_accuracy.mean())
    figure = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.62, 0.38],
        subplot_titles=("accuracy vs ratio (band: min-max over seeds)", "per-layer pruned fraction"),
    )
    curves = accuracy_vs_ratio(
        result.runs,
        chosen["granularity"],
        chosen["criterion"],
        dense_accuracy=dense,
        highlight=(chosen["regime"], chosen["ratio"]) if chosen["patience"] == "off" else None,
    )
    for trace in curves.data:
        figure.add_trace(trace, row=1, col=1)
    if chosen["patience"] != "off":
        twin = point.twin_test_accuracy
        figure.add_scatter(
            x=[chosen["ratio"]] * len(point),
            y=point.test_accuracy,
            mode="markers",
            marker=dict(size=12, symbol="star", color=curve_color(curve), line=dict(width=1, color="black")),
            name=f"{curve} (per seed)",
            row=1,
            col=1,
        )
        figure.add_scatter(
            x=[chosen["ratio"]] * len(point),
            y=twin,
            mode="markers",
            marker=dict(size=10, symbol="x", color="black"),
            name="equal-epochs twin (per seed)",
            row=1,
            col=1,
        )
    means = layer_rows.groupby("layer", sort=False).sparsity.mean()
    figure.add_bar(
        x=list(means.index), y=list(means), marker_color=curve_color(curve), showlegend=False, row=1, col=2
    )
    figure.update_layout(
        template=plots.TEMPLATE,
        height=430,
        margin=dict(l=60, r=20, t=60, b=50),
        legend=dict(orientation="h", yanchor="top", y=-0.15, x=0),
    )
    figure.update_yaxes(range=[0, 1.02], row=1, col=1)
    figure.update_yaxes(range=[0, 1], row=1, col=2)
    figure.update_xaxes(title_text="pruning ratio", row=1, col=1)
    status = f"{curve}, {chosen['criterion']}, ratio {chosen['ratio']:g}: {_status_point(point)}"
    if chosen["patience"] != "off":
        status += f"; its equal-epochs twin {point.twin_test_accuracy.mean():.3f}"
    if chosen["notes"]:
        status += " (" + "; ".join(chosen["notes"]) + ")"
    return figure, status


def playground(result) -> Playground:
    """Ratio, granularity, criterion, schedule and patience over the precomputed runs; the button prunes the
    first seed's dense model along the shown configuration, live, and compares it with the stored run."""
    runs = result.runs
    ratios = sorted(set(runs.ratio))
    patiences = (
        ["off", *sorted(int(p) for p in result.patience.patience.unique())] if len(result.patience) else ["off"]
    )
    criteria = list(dict.fromkeys(runs.criterion))
    regimes = [r for r in ("one-shot", "constant", "geometric", "hybrid") if r in set(runs.regime)]
    seed = result.seeds[0]

    def render(ratio, granularity, criterion, regime, patience):
        return playground_view(result, ratio, granularity, criterion, regime, patience)

    def action(values, report):
        chosen = resolve(result, **values)
        patience = None if chosen["patience"] == "off" else int(chosen["patience"])
        total = result.expected_epochs(patience)
        run = result.rerun(
            seed=seed,
            granularity=chosen["granularity"],
            criterion=chosen["criterion"],
            regime=chosen["regime"],
            ratio=chosen["ratio"],
            patience=patience,
            on_epoch=lambda epochs: report(min(epochs / total, 1.0), f"fine-tuning: {epochs:.1f} epochs"),
        )
        table = result.runs if patience is None else result.patience
        stored = select(
            table, seed=seed, **{k: chosen[k] for k in ("granularity", "criterion", "regime", "ratio")}
        )
        if patience is not None:
            stored = select(stored, patience=patience)
        before = f"{stored.test_accuracy.iloc[0]:.3f}" if len(stored) else "n/a"
        return (
            f"live re-run (seed {seed}): test accuracy <b>{run.test_accuracy:.3f}</b> after {run.epochs:.1f} "
            f"epochs; the precomputed run of this seed had {before}"
        )

    return widget_playground(
        render,
        action=action,
        action_label="Re-run live",
        ratio=slider("ratio", ratios, value=ratios[len(ratios) // 2]),
        granularity=dropdown("granularity", list(dict.fromkeys(runs.granularity))),
        criterion=dropdown("criterion", criteria),
        regime=dropdown("regime", regimes, value="geometric"),
        patience=dropdown("patience", patiences),
    )
