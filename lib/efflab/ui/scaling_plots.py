"""Figures shared by the scaling-law notebooks (fine-grained MoE, joint MoE): how evenly the experts were used,
how well a fitted law matches the measured losses, and one configuration's loss curve with the law drawn through.

Like ``efflab.ui.plots``, every factory takes plain arrays and tables and computes nothing of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.ui.plots import PALETTE, TEMPLATE, style_figure


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


def curves_with_law(
    curves: pd.DataFrame, tokens: np.ndarray, predicted: np.ndarray, *, law_name: str, title: str
) -> go.Figure:
    """One configuration's validation loss against tokens, every seed: the stable phase (constant rate, a dotted
    line) and the loss after each branched cooldown (markers: the points a law is fitted to), with the law's
    ``predicted`` loss at ``tokens`` as a black line.

    ``curves`` has columns seed, tokens, val_loss and, optionally, phase ("stable" or "decayed").
    """
    if curves.empty:
        raise ValueError("curves is empty; expected the evaluations of one configuration")
    if np.shape(tokens) != np.shape(predicted):
        raise ValueError(
            f"tokens and predicted have shapes {np.shape(tokens)} and {np.shape(predicted)}; expected the same"
        )
    phase = curves.phase if "phase" in curves else pd.Series("decayed", index=curves.index)
    figure = go.Figure()
    for index, (seed, group) in enumerate(curves.groupby("seed")):
        color = PALETTE[index % len(PALETTE)]
        stable = group[phase[group.index] == "stable"]
        decayed = group[phase[group.index] == "decayed"]
        if len(stable):
            figure.add_scatter(
                x=stable.tokens,
                y=stable.val_loss,
                mode="lines",
                name=f"stable phase, seed {seed}",
                line=dict(color=color, dash="dot"),
            )
        figure.add_scatter(
            x=decayed.tokens,
            y=decayed.val_loss,
            mode="markers",
            name=f"after cooldown, seed {seed}",
            marker=dict(color=color, size=9),
        )
    figure.add_scatter(x=tokens, y=predicted, name=law_name, line=dict(color="black"))
    figure.update_xaxes(type="log")
    return style_figure(figure, title, "training tokens", "validation loss (nats/byte)")
