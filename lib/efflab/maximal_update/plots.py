"""Figures and the playground of notebook 07 (muP for MoE). Nothing here trains, except the playground's button."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.maximal_update.experiment import Result, live_coordinate_check
from efflab.maximal_update.parameterization import LABELS, PARAMETERIZATIONS, Multipliers, rule_table, rules
from efflab.maximal_update.transfer import mean_curves, optima
from efflab.ui.plots import PALETTE, TEMPLATE, style_figure
from efflab.ui.widgets import dropdown, log_slider, slider
from efflab.ui.widgets import playground as make_playground

SWEEP_TITLES = {"width": "width", "expansion": "E", "granularity": "G"}


def _activation_colour(name: str, names: list[str]) -> str:
    return PALETTE[names.index(name) % len(PALETTE)]


def coordinate_figure(
    table: pd.DataFrame, *, parameterizations=None, title: str = "Coordinate check: mean |x| against width"
) -> go.Figure:
    """One row per parameterization, one column per step (1 = init): mean over seeds of l1 against width, log-log,
    one line per activation. Flat lines are what muP promises."""
    parameterizations = [
        p for p in (parameterizations or PARAMETERIZATIONS) if p in set(table["parameterization"])
    ]
    if not parameterizations:
        raise ValueError("table has none of the parameterizations asked for")
    steps = sorted(table["step"].unique())
    names = list(dict.fromkeys(table["activation"]))
    means = (
        table.groupby(["parameterization", "activation", "step", "width"], sort=False)["l1"].mean().reset_index()
    )
    figure = make_subplots(
        rows=len(parameterizations),
        cols=len(steps),
        shared_xaxes=True,
        subplot_titles=[f"{LABELS[p]}, step {s}" for p in parameterizations for s in steps],
        horizontal_spacing=0.03,
        vertical_spacing=0.09,
    )
    for row, parameterization in enumerate(parameterizations, start=1):
        for col, step in enumerate(steps, start=1):
            part = means[(means["parameterization"] == parameterization) & (means["step"] == step)]
            for name in names:
                line = part[part["activation"] == name].sort_values("width")
                values = line["l1"].replace([np.inf, -np.inf], np.nan)
                figure.add_scatter(
                    x=line["width"],
                    y=values,
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=row == 1 and col == 1,
                    line=dict(color=_activation_colour(name, names), width=1.5),
                    marker=dict(size=4),
                    row=row,
                    col=col,
                )
    figure.update_xaxes(type="log")
    figure.update_yaxes(type="log")
    figure.update_layout(
        title=title,
        template=TEMPLATE,
        height=240 * len(parameterizations) + 80,
        margin=dict(l=50, r=20, t=80, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.04, x=1.0, xanchor="right"),
    )
    for annotation in figure.layout.annotations:
        annotation.font.size = 11
    return figure


def slope_figure(result: Result, step: int | None = None) -> go.Figure:
    """The slope of log l1 against log width of every activation at one step, per parameterization, beside the
    flat band |slope| < 0.2."""
    slopes = result.slopes(step)
    figure = go.Figure()
    for index, parameterization in enumerate(PARAMETERIZATIONS):
        part = slopes[slopes["parameterization"] == parameterization]
        values = part["slope"].replace([np.inf], np.nan)
        figure.add_bar(x=part["activation"], y=values, name=LABELS[parameterization], marker_color=PALETTE[index])
    figure.add_hrect(y0=-0.2, y1=0.2, fillcolor="#2ca02c", opacity=0.12, line_width=0)
    figure.update_layout(barmode="group")
    step = result.budget.slope_step if step is None else step
    return style_figure(figure, f"Slope of log mean|x| against log width, step {step}", "activation", "slope")


def sweep_figure(
    table: pd.DataFrame, which: str = "width", *, highlight: int | None = None, parameterizations=None
) -> go.Figure:
    """Validation loss against LR, one line per width (or E, or G), seed band, argmin starred; one panel per
    parameterization."""
    if which not in SWEEP_TITLES:
        raise ValueError(f"which={which!r} is not allowed; expected one of {tuple(SWEEP_TITLES)}")
    present = list(dict.fromkeys(table["parameterization"]))
    parameterizations = [p for p in (parameterizations or present) if p in present]
    if not parameterizations:
        raise ValueError("table has none of the parameterizations asked for")
    means, best = mean_curves(table), optima(table)
    figure = make_subplots(
        rows=1,
        cols=len(parameterizations),
        shared_yaxes=True,
        subplot_titles=[LABELS[p] for p in parameterizations],
    )
    curves = sorted(table["curve"].unique())
    finite = means["max"].replace([np.inf], np.nan)
    for col, parameterization in enumerate(parameterizations, start=1):
        for index, curve in enumerate(curves):
            part = means[(means["parameterization"] == parameterization) & (means["curve"] == curve)]
            part = part.sort_values("lr")
            colour = PALETTE[index % len(PALETTE)]
            dim = highlight is not None and curve != highlight
            label = f"{SWEEP_TITLES[which]} {curve}" if which == "width" else f"{SWEEP_TITLES[which]}={curve}"
            upper = part["max"].replace([np.inf], np.nan)
            x = part["log2_lr"].tolist()
            figure.add_scatter(
                x=x + x[::-1],
                y=upper.tolist() + part["min"].replace([np.inf], np.nan).tolist()[::-1],
                fill="toself",
                fillcolor=colour,
                opacity=0.05 if dim else 0.15,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=label,
                row=1,
                col=col,
            )
            figure.add_scatter(
                x=x,
                y=part["mean"].replace([np.inf], np.nan),
                mode="lines+markers",
                name=label,
                legendgroup=label,
                showlegend=col == 1,
                opacity=0.3 if dim else 1.0,
                line=dict(color=colour, width=1.5 if dim else 3),
                row=1,
                col=col,
            )
            star = best[(best["parameterization"] == parameterization) & (best["curve"] == curve)]
            if len(star) and star["best_index"].iloc[0] >= 0:
                figure.add_scatter(
                    x=[math.log2(star["best_lr"].iloc[0])],
                    y=[star["best_loss"].iloc[0]],
                    mode="markers",
                    marker=dict(symbol="star", size=15, color=colour, line=dict(color="black", width=1)),
                    showlegend=False,
                    legendgroup=label,
                    opacity=0.3 if dim else 1.0,
                    row=1,
                    col=col,
                )
    top = float(np.nanmax(finite)) if np.isfinite(finite).any() else None
    low = float(means["min"].replace([np.inf], np.nan).min())
    figure.update_xaxes(title_text="log2 LR (η)")
    if top is not None:
        figure.update_yaxes(range=[low - 0.05, min(top, low + 1.5) + 0.05])
    figure.update_yaxes(title_text="validation loss (nats/byte)", col=1)
    title = {
        "width": "Loss against LR across widths (star: best LR of the seed mean; band: seeds)",
        "expansion": "μP at a fixed width: loss against LR across expansion rates E",
        "granularity": "μP at a fixed width: loss against LR across granularities G",
    }[which]
    figure.update_layout(
        title=title,
        template=TEMPLATE,
        height=400,
        margin=dict(l=60, r=20, t=70, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.06, x=1.0, xanchor="right"),
    )
    return figure


def optimum_table(result: Result) -> pd.DataFrame:
    """The best LR of every curve of every sweep, with each seed's own argmin (grid indices)."""
    rows = []
    for which in ("width", "expansion", "granularity"):
        for row in optima(result.sweep(which)).itertuples():
            rows.append(
                {
                    "sweep": SWEEP_TITLES[which],
                    "parameterization": LABELS[row.parameterization],
                    "value": row.curve,
                    "best LR": "all diverged" if row.best_index < 0 else f"2^{math.log2(row.best_lr):g}",
                    "grid index": row.best_index,
                    "each seed's index": row.seed_indices,
                    "best loss": round(row.best_loss, 3) if math.isfinite(row.best_loss) else None,
                }
            )
    return pd.DataFrame(rows)


def playground(result: Result):
    """Parameterization, width, E, G and the three multipliers, over the precomputed runs; the button runs a
    fresh coordinate check of the chosen parameterization at the chosen multipliers."""
    budget = result.budget
    best = optima(result.width_sweep)
    figures: dict = {}  # each panel drawn once per setting: a slider moved back answers at once

    def figure(key, draw):
        if key not in figures:
            figures[key] = draw()
        return figures[key]

    def render(parameterization, width, experts, granularity, alpha_in, alpha_out, alpha_router):
        multipliers = Multipliers(float(alpha_in), float(alpha_out), float(alpha_router))
        notes = []
        table = result.coordinate_table(parameterization, multipliers)
        shown = multipliers if table is not None else Multipliers()
        if table is None:
            notes.append(
                f"no coordinate check of {LABELS[parameterization]} at {multipliers.label()} yet "
                "(press the button); showing all α = 1"
            )
            table = result.coordinate_table(parameterization)
        fresh = result.has_fresh_check(parameterization, shown)
        source = f"fresh check, {table['seed'].nunique()} seeds" if fresh else "precomputed"
        title = f"Coordinate check, {LABELS[parameterization]}, {shown.label()} ({source})"
        if fresh:
            notes.append(f"the coordinate check shown is the fresh one from the button, at {shown.label()}")
        coord = figure(
            ("coordinates", parameterization, shown, fresh), lambda: coordinate_figure(table, title=title)
        )
        swept = parameterization if parameterization in set(result.width_sweep["parameterization"]) else "mup"
        if swept != parameterization:
            notes.append(
                "the width sweep ran under SP and μP only; showing μP's beside the "
                f"{LABELS[parameterization]} check"
            )
        width_panel = figure(
            ("width", swept, width),
            lambda: sweep_figure(result.width_sweep, "width", highlight=width, parameterizations=[swept]),
        )
        expert_panel = figure(
            ("expansion", experts), lambda: sweep_figure(result.expert_sweep, "expansion", highlight=experts)
        )
        granularity_panel = figure(
            ("granularity", granularity),
            lambda: sweep_figure(result.granularity_sweep, "granularity", highlight=granularity),
        )
        family = budget.family(granularity=granularity, expansion=experts)
        model = family.build(width, device="meta")
        rows = rule_table(rules(model, family, parameterization, multipliers), parameterization)
        here = best[(best["parameterization"] == swept) & (best["curve"] == width)]
        status = (
            f"{LABELS[parameterization]} at width {width} (m_d = {width / budget.base_width:g}), E={experts}, "
            f"G={granularity}, {multipliers.label()}"
        )
        if len(here) and here["best_index"].iloc[0] >= 0:
            status += f"; best LR at this width under {LABELS[swept]}: 2^{math.log2(here['best_lr'].iloc[0]):g}"
        if notes:
            status += ". " + "; ".join(notes)
        return [coord, width_panel, expert_panel, granularity_panel, rows], status

    def action(values, report):
        multipliers = Multipliers(
            float(values["alpha_in"]), float(values["alpha_out"]), float(values["alpha_router"])
        )
        table = live_coordinate_check(result, values["parameterization"], multipliers, report)
        figures.pop(("coordinates", values["parameterization"], multipliers, True), None)  # a re-run replaces it
        slopes = result.slopes(table=table)
        worst = slopes.loc[slopes["slope"].abs().idxmax()]
        return (
            f"fresh coordinate check of {LABELS[values['parameterization']]} at {multipliers.label()} done and "
            f"shown: steepest {worst['activation']} with slope {worst['slope']:+.2f} at step {budget.slope_step}"
        )

    return make_playground(
        render,
        action=action,
        action_label="Run coordinate check",
        parameterization=dropdown("parameterization", list(PARAMETERIZATIONS), value="mup"),
        width=slider("width", list(budget.sweep_widths)),
        experts=slider("E", list(budget.expert_counts), value=budget.expansion),
        granularity=slider("G", list(budget.granularities), value=budget.granularity),
        alpha_in=log_slider("alpha_in", low=0.1, high=10.0, value=1.0, description="α_in"),
        alpha_out=log_slider("alpha_out", low=0.1, high=10.0, value=1.0, description="α_out"),
        alpha_router=log_slider("alpha_router", low=0.1, high=10.0, value=1.0, description="α_router"),
    )
