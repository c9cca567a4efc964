"""Plotly figure factories shared by the notebooks.

Each factory takes plain data (a history table, a dict of numbers) and returns a ``go.Figure``; none of them
trains or computes anything, so they are cheap enough to call from a widget callback. The renderer is set to
``plotly_mimetype`` on import: it draws offline in JupyterLab and never loads scripts from the internet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

pio.renderers.default = "plotly_mimetype"

TEMPLATE = "plotly_white"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def style_figure(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    """The course's look: white template, titles, a legend above the plot; every factory ends here."""
    figure.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        template=TEMPLATE,
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"),
    )
    return figure


def training_curves(
    histories: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    metrics: Sequence[str] = ("loss",),
    x: str = "step",
    title: str = "Training curves",
    y_title: str = "loss",
    log_y: bool = False,
) -> go.Figure:
    """One line per (run, metric). ``histories`` is one history table from ``train.fit`` or a dict of them.

    Metrics measured only at some steps (evaluations) are drawn through their measured points only.
    """
    if isinstance(histories, pd.DataFrame):
        histories = {"": histories}
    figure = go.Figure()
    for run_index, (run_name, history) in enumerate(histories.items()):
        for metric_index, metric in enumerate(metrics):
            if metric not in history:
                raise ValueError(f"metrics contains {metric!r}, which is not a column of {list(history)}")
            points = history[[x, metric]].dropna()
            label = " ".join(part for part in (run_name, metric) if part)
            figure.add_scatter(
                x=points[x],
                y=points[metric],
                name=label,
                mode="lines+markers" if len(points) < 30 else "lines",
                line=dict(
                    color=PALETTE[run_index % len(PALETTE)], dash=("solid", "dash", "dot")[metric_index % 3]
                ),
            )
    if log_y:
        figure.update_yaxes(type="log")
    return style_figure(figure, title, x, y_title)


def band_plot(
    x: Sequence[float],
    series: Mapping[str, np.ndarray],
    *,
    title: str,
    x_title: str,
    y_title: str,
) -> go.Figure:
    """Mean line with a min-max band per series; each value is an array of shape (seeds, len(x)).

    This is how noisy toy-scale findings are shown: every seed counts, and the band is the spread.
    """
    figure = go.Figure()
    for index, (name, values) in enumerate(series.items()):
        values = np.atleast_2d(np.asarray(values, dtype=float))
        if values.shape[1] != len(x):
            raise ValueError(f"series {name!r} has {values.shape[1]} columns, expected len(x)={len(x)}")
        color = PALETTE[index % len(PALETTE)]
        low, high = values.min(axis=0), values.max(axis=0)
        figure.add_scatter(
            x=list(x) + list(x)[::-1],
            y=list(high) + list(low)[::-1],
            fill="toself",
            fillcolor=color,
            opacity=0.2,
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
        )
        figure.add_scatter(
            x=list(x), y=values.mean(axis=0), name=f"{name} (n={len(values)})", line=dict(color=color)
        )
    return style_figure(figure, title, x_title, y_title)


def comparison_bars(
    values: Mapping[str, float],
    *,
    errors: Mapping[str, float] | None = None,
    title: str,
    y_title: str,
) -> go.Figure:
    """Bars for named values, with optional error bars (e.g. the standard deviation over seeds)."""
    names = list(values)
    figure = go.Figure(
        go.Bar(
            x=names,
            y=[values[name] for name in names],
            error_y=None if errors is None else dict(type="data", array=[errors.get(n, 0.0) for n in names]),
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(names))],
        )
    )
    return style_figure(figure, title, "", y_title)


def paper_vs_run(rows: Sequence[Mapping], *, full_run_on: str = "GPU") -> pd.DataFrame:
    """The table every notebook ends its results with: the paper's number beside ours.

    Each row is a mapping with ``quantity``, ``paper`` and ``this_run``, and optionally ``full_run`` (the committed
    full-mode result, made on ``full_run_on``) and ``note`` (where the paper's number comes from, why ours may
    differ). Missing cells show "n/a".
    """
    columns = ["quantity", "paper", "this_run", "full_run", "note"]
    for row in rows:
        missing = {"quantity", "paper", "this_run"} - set(row)
        if missing:
            raise ValueError(
                f"rows entry {dict(row)!r} lacks {sorted(missing)}; each row needs quantity, paper, this_run"
            )
    table = pd.DataFrame([{column: row.get(column) for column in columns} for row in rows], columns=columns)
    table = table.rename(columns={"this_run": "this run", "full_run": f"full-mode run ({full_run_on})"})
    return table.fillna("n/a").set_index("quantity")


def byte_label(value: int) -> str:
    """A readable name for a byte: the character itself, or an escape such as '\\n' or '0x9c'."""
    character = chr(value)
    if character == " ":
        return "␣"
    if character.isprintable() and value < 128:
        return character
    return repr(character)[1:-1] if value < 128 else f"0x{value:02x}"


def next_byte_bars(
    probabilities: Sequence[float], *, top: int = 20, title: str = "Next byte", subtitle: str | None = None
) -> go.Figure:
    """The ``top`` most likely next bytes of a byte-level model as bars, most likely first.

    ``subtitle`` (e.g. a sampled continuation) is shown under the title, newlines drawn as "⏎".
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.shape != (256,):
        raise ValueError(f"probabilities has shape {probabilities.shape}; expected (256,), one per byte value")
    order = np.argsort(-probabilities, kind="stable")[:top]
    labels = [byte_label(int(b)) for b in order]
    figure = go.Figure(go.Bar(x=labels, y=probabilities[order], marker_color=PALETTE[0]))
    figure.update_yaxes(range=[0, 1])
    figure.update_xaxes(type="category")
    figure = style_figure(figure, title, "byte", "probability")
    if subtitle is not None:
        figure.update_layout(
            title=dict(subtitle=dict(text=subtitle.replace("\n", "⏎"), font=dict(family="monospace"))),
            margin=dict(t=80),
        )
    return figure
