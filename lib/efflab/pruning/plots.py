"""Figures and the playground of notebook 01 (one-shot vs iterative pruning).

Every function here takes the tables that :func:`efflab.pruning.experiment.run_sweep` returns (plain pandas
frames) and draws them; nothing here prunes or trains. The playground's re-run button calls a function the
notebook hands in, so the heavy work stays in the technique module and this module stays a viewer.

Tables used (one row each):

* ``runs``: a pruned model; columns seed, granularity, criterion, curve, ratio, test_accuracy, epochs;
* ``layers``: a layer of a pruned model; the ``runs`` keys plus layer and sparsity;
* ``budget``: a run of the budget study; curve, budget, epochs, test_accuracy, seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display
from plotly.subplots import make_subplots

from efflab.ui import plots
from efflab.ui.widgets import Explorer, dropdown, slider

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
            name=f"{curve}, geometric steps (one point per seed)",
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


class PruningPlayground:
    """Controls over precomputed results, plus a button that re-runs the chosen configuration live.

    ``controls``: ratio, granularity, criterion, regime, patience. Any change redraws, at once, the
    accuracy-vs-ratio curves with the chosen point highlighted and that model's per-layer sparsity. The button
    calls ``rerun(granularity=..., criterion=..., regime=..., ratio=..., patience=..., on_epoch=...)``, which must
    return an object with ``test_accuracy`` and ``epochs``; its progress fills the bar.
    """

    def __init__(
        self,
        runs: pd.DataFrame,
        layers: pd.DataFrame,
        *,
        dense_accuracy: float | None = None,
        rerun: Callable | None = None,
        expected_epochs: Callable[[str], float] | None = None,
        seed: int | None = None,
    ):
        if runs.empty:
            raise ValueError("runs is empty; expected the sweep's rows")
        self.runs, self.layers, self.dense_accuracy = runs, layers, dense_accuracy
        self.seed = int(runs.seed.min()) if seed is None else seed
        self._rerun, self._expected_epochs = rerun, expected_epochs
        granularities = list(dict.fromkeys(runs.granularity))
        patiences = sorted(int(p) for p in runs.patience.dropna().unique())
        regimes = [r for r in ("one-shot", "constant", "geometric", "hybrid", "patience") if r in set(runs.regime)]
        criterion = dropdown("criterion", self._criteria(granularities[0]))
        granularity = dropdown("granularity", granularities)
        granularity.observe(self._on_granularity, names="value")  # before the explorer's observer: options first
        self._criterion = criterion
        self.explorer = Explorer(
            self.render,
            {
                "ratio": slider("ratio", sorted(runs.ratio.unique()), value=self._default_ratio()),
                "granularity": granularity,
                "criterion": criterion,
                "regime": dropdown("regime", regimes, value="geometric" if "geometric" in regimes else None),
                "patience": dropdown("patience", patiences or [None]),
            },
        )
        self.progress = widgets.FloatProgress(value=0, min=0, max=1, description="live re-run")
        self.button = widgets.Button(description="Re-run this configuration", icon="play", disabled=rerun is None)
        self.status = widgets.HTML()
        self.button.on_click(self._on_click)
        self.last_rerun = None
        self.widget = widgets.VBox([self.explorer.widget, widgets.HBox([self.button, self.progress]), self.status])

    @property
    def controls(self) -> dict:
        return self.explorer.controls

    @property
    def last(self) -> go.Figure:
        return self.explorer.last

    def _criteria(self, granularity: str) -> list[str]:
        """This granularity's criteria, the one run with the most regimes (the main criterion) first."""
        rows = select(self.runs, granularity=granularity)
        counts = rows.groupby("criterion", sort=False).curve.nunique()
        return list(counts.sort_values(ascending=False, kind="stable").index)

    def _default_ratio(self) -> float:
        ratios = sorted(self.runs.ratio.unique())
        return ratios[len(ratios) // 2]

    def _on_granularity(self, change) -> None:
        self._criterion.options = self._criteria(change["new"])

    def resolve(self, ratio, granularity, criterion, regime, patience) -> dict:
        """The precomputed configuration shown for these control values, and any note on what was substituted.

        Ratios snap to the nearest ratio this granularity was run at; a regime not run with this criterion (the
        side criteria run fewer regimes) falls back to one-shot.
        """
        notes = []
        rows = select(self.runs, granularity=granularity)
        if criterion not in set(rows.criterion):
            notes.append(f"criterion {criterion} is not a {granularity} criterion")
            criterion = self._criteria(granularity)[0]
        rows = select(rows, criterion=criterion)
        available = sorted(rows.ratio.unique())
        snapped = min(available, key=lambda r: abs(r - ratio))
        if snapped != ratio:
            notes.append(
                f"{granularity} runs exist at {', '.join(f'{r:g}' for r in available)}: showing {snapped:g}"
            )
        curve = f"patience {patience}" if regime == "patience" else regime
        if curve not in set(rows.curve):
            notes.append(f"{curve} was not run with {criterion} in this mode: showing one-shot")
            curve = "one-shot"
        return dict(granularity=granularity, criterion=criterion, curve=curve, ratio=snapped, notes=notes)

    def render(self, ratio, granularity, criterion, regime, patience) -> go.Figure:
        chosen = self.resolve(ratio, granularity, criterion, regime, patience)
        key = {k: chosen[k] for k in ("granularity", "criterion", "curve", "ratio")}
        point = select(self.runs, **key)
        layer_rows = select(self.layers, **key)
        accuracy = point.test_accuracy
        figure = make_subplots(
            rows=1,
            cols=2,
            column_widths=[0.62, 0.38],
            subplot_titles=("accuracy vs ratio (band: min-max over seeds)", "per-layer pruned fraction"),
        )
        curves = accuracy_vs_ratio(
            self.runs,
            chosen["granularity"],
            chosen["criterion"],
            dense_accuracy=self.dense_accuracy,
            highlight=(chosen["curve"], chosen["ratio"]),
        )
        for trace in curves.data:
            figure.add_trace(trace, row=1, col=1)
        means = layer_rows.groupby("layer", sort=False).sparsity.mean()
        figure.add_bar(
            x=list(means.index),
            y=list(means),
            marker_color=curve_color(chosen["curve"]),
            showlegend=False,
            row=1,
            col=2,
        )
        if self.dense_accuracy is not None:
            figure.add_hline(y=self.dense_accuracy, line_dash="dot", line_color="gray", row=1, col=1)
        headline = (
            f"{chosen['curve']}, {chosen['criterion']}, ratio {chosen['ratio']:g}: test accuracy "
            f"{accuracy.mean():.3f} (min {accuracy.min():.3f}, max {accuracy.max():.3f}, n={len(accuracy)}); "
            f"{point.epochs.mean():.0f} fine-tuning epochs"
        )
        figure.update_layout(
            title=dict(
                text=headline + ("<br><sup>" + "; ".join(chosen["notes"]) + "</sup>" if chosen["notes"] else "")
            ),
            template=plots.TEMPLATE,
            height=430,
            margin=dict(l=60, r=20, t=90, b=50),
            legend=dict(orientation="h", yanchor="top", y=-0.15, x=0),
        )
        figure.update_yaxes(range=[0, 1.02], row=1, col=1)
        figure.update_yaxes(range=[0, 1], row=1, col=2)
        figure.update_xaxes(title_text="pruning ratio", row=1, col=1)
        self.chosen = chosen
        return figure

    def _on_click(self, _button=None) -> None:
        if self._rerun is None:
            return
        values = self.explorer.values
        chosen = self.resolve(**values)
        regime = "patience" if chosen["curve"].startswith("patience") else chosen["curve"]
        self.progress.value = 0
        self.progress.max = float(self._expected_epochs(regime)) if self._expected_epochs else 1.0
        self.progress.bar_style = ""
        self.button.disabled = True
        self.status.value = "running…"

        def on_epoch(epochs: float) -> None:
            self.progress.value = min(epochs, self.progress.max)

        try:
            result = self._rerun(
                seed=self.seed,
                granularity=chosen["granularity"],
                criterion=chosen["criterion"],
                regime=regime,
                ratio=chosen["ratio"],
                patience=values["patience"] if regime == "patience" else None,
                on_epoch=on_epoch,
            )
        finally:
            self.button.disabled = False
        self.progress.value = self.progress.max
        self.progress.bar_style = "success"
        stored = select(
            self.runs, seed=self.seed, **{k: chosen[k] for k in ("granularity", "criterion", "curve", "ratio")}
        )
        before = f"{stored.test_accuracy.iloc[0]:.3f}" if len(stored) else "n/a"
        self.last_rerun = result
        self.status.value = (
            f"live re-run (seed {self.seed}): test accuracy <b>{result.test_accuracy:.3f}</b> after "
            f"{result.epochs:.1f} fine-tuning epochs; the precomputed run of this seed had {before}"
        )

    def click(self) -> None:
        """Press the re-run button from Python (what a test does)."""
        self.button.click()

    def _ipython_display_(self) -> None:
        display(self.widget)


def pruning_playground(runs: pd.DataFrame, layers: pd.DataFrame, **options) -> PruningPlayground:
    """Shorthand for :class:`PruningPlayground`."""
    return PruningPlayground(runs, layers, **options)
