"""Figures for the glimpse notebook (10): scenes with glimpse boxes, the memory, beliefs, and the scale story.

Plain data in, ``go.Figure`` out; nothing here trains or runs an episode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.ui.plots import PALETTE, TEMPLATE, band_plot, comparison_bars

STEP_COLOURS = ("#e45756", "#f58518", "#54a24b", "#4c78a8", "#b279a2", "#9d755d", "#72b7b2", "#eeca3b")


def _grey(image: np.ndarray) -> go.Heatmap:
    return go.Heatmap(z=np.asarray(image), colorscale="gray", zmin=0, zmax=1, showscale=False, hoverinfo="z")


def _box_shapes(boxes: Sequence[Sequence[int]], *, xref: str = "x", yref: str = "y") -> list[dict]:
    """Rectangles (and their step numbers) for boxes given as (top, left, side), in heatmap pixel coordinates."""
    shapes = []
    for step, (top, left, side) in enumerate(boxes):
        colour = STEP_COLOURS[step % len(STEP_COLOURS)]
        label = dict(text=str(step + 1), textposition="top left", font=dict(color=colour, size=14))
        edges = dict(x0=left - 0.5, x1=left + side - 0.5, y0=top - 0.5, y1=top + side - 0.5)
        shapes.append(
            dict(type="rect", xref=xref, yref=yref, line=dict(color=colour, width=3), label=label, **edges)
        )
    return shapes


def _square_axes(figure: go.Figure, col: int | None = None) -> None:
    """Image axes: rows grow downwards, square pixels, no tick labels (``col``: the subplot, in a one-row grid)."""
    where = {} if col is None else {"row": 1, "col": col}
    anchor = "x" if col in (None, 1) else f"x{col}"
    figure.update_yaxes(autorange="reversed", scaleanchor=anchor, showticklabels=False, **where)
    figure.update_xaxes(showticklabels=False, **where)


def scene_with_glimpses(canvas: np.ndarray, boxes: Sequence[Sequence[int]], *, title: str) -> go.Figure:
    """The canvas (H, W) with numbered glimpse boxes, first glimpse in red."""
    figure = go.Figure(_grey(canvas))
    for shape in _box_shapes(boxes):
        figure.add_shape(**shape)
    figure.update_layout(
        title=title, template=TEMPLATE, height=360, width=380, margin=dict(l=10, r=10, t=50, b=10)
    )
    _square_axes(figure)
    return figure


def glimpse_readings(readings: np.ndarray, labels: Sequence[str], *, title: str) -> go.Figure:
    """A row of G x G readings, e.g. the same spot seen at several scales: every one costs the same pixels."""
    readings = np.asarray(readings)
    figure = make_subplots(rows=1, cols=len(readings), subplot_titles=list(labels), horizontal_spacing=0.03)
    for index, reading in enumerate(readings):
        figure.add_trace(_grey(reading), row=1, col=index + 1)
        _square_axes(figure, index + 1)
    figure.update_layout(title=title, template=TEMPLATE, height=280, margin=dict(l=10, r=10, t=80, b=10))
    return figure


def episode_step(
    canvas: np.ndarray,
    memory: np.ndarray,
    boxes: Sequence[Sequence[int]],
    belief: np.ndarray,
    label: int,
    *,
    title: str,
) -> go.Figure:
    """Three panels after some glimpses: the scene with its boxes, what the memory holds (unseen pixels blank),
    and the task model's belief over the ten classes (the true class in green)."""
    figure = make_subplots(
        rows=1,
        cols=3,
        column_widths=[0.34, 0.34, 0.32],
        subplot_titles=("scene and glimpses", "memory: what was seen", "task model's belief"),
        horizontal_spacing=0.06,
    )
    figure.add_trace(_grey(canvas), row=1, col=1)
    for shape in _box_shapes(boxes, xref="x", yref="y"):
        figure.add_shape(**shape)
    seen, resolution = np.asarray(memory[0], dtype=float), np.asarray(memory[1])
    figure.add_trace(_grey(np.where(resolution > 0, seen, np.nan)), row=1, col=2)
    _square_axes(figure, 1)
    _square_axes(figure, 2)
    colours = [PALETTE[2] if digit == label else "#9e9e9e" for digit in range(len(belief))]
    figure.add_trace(go.Bar(x=[str(d) for d in range(len(belief))], y=belief, marker_color=colours), row=1, col=3)
    figure.update_yaxes(range=[0, 1], title_text="probability", row=1, col=3)
    figure.update_layout(
        title=title, template=TEMPLATE, height=360, showlegend=False, margin=dict(l=10, r=10, t=80, b=30)
    )
    figure.layout.plot_bgcolor = "#f3f0e8"
    return figure


def accuracy_by_glimpse(curves: Mapping[str, np.ndarray], *, title: str) -> go.Figure:
    """Accuracy after 0..T glimpses, mean line and min-max band over seeds, one series per policy."""
    steps = next(iter(curves.values())).shape[-1]
    figure = band_plot(
        list(range(steps)), curves, title=title, x_title="glimpses taken", y_title="held-out accuracy"
    )
    figure.update_yaxes(range=[0, 1])
    figure.update_xaxes(dtick=1)
    return figure


def side_by_step(sides: Mapping[str, np.ndarray], canvas_size: int, *, title: str) -> go.Figure:
    """Distribution of the glimpse side at each step (box plots): large first, then small, is "look, then zoom".

    ``sides`` maps a name to an array (N, T) of box sides in pixels.
    """
    figure = go.Figure()
    for index, (name, values) in enumerate(sides.items()):
        values = np.asarray(values)
        steps = np.broadcast_to(np.arange(1, values.shape[1] + 1), values.shape)
        colour = PALETTE[index % len(PALETTE)]
        figure.add_trace(
            go.Box(x=steps.ravel(), y=values.ravel(), name=name, marker_color=colour, boxpoints=False)
        )
    figure.add_hline(y=canvas_size, line_dash="dot", line_color="gray", annotation_text="whole scene")
    figure.update_layout(
        title=title, template=TEMPLATE, height=380, boxmode="group", xaxis_title="glimpse", yaxis_title="side (px)"
    )
    figure.update_yaxes(range=[0, canvas_size + 2])
    figure.update_xaxes(dtick=1)
    return figure


def logged_episode(log, scenes, sensor, *, index: int, glimpses: int, name: str) -> go.Figure:
    """:func:`episode_step` for episode ``index`` of an :class:`~efflab.glimpse.policies.EpisodeLog`, stopped
    after ``glimpses`` glimpses. The memory is repainted from the logged boxes (a few tensor operations)."""
    boxes = log.boxes[index : index + 1, :glimpses]
    memory = sensor.remember(scenes.x[index : index + 1], boxes)[0]
    belief = log.beliefs[index, glimpses].numpy()
    label, guess = int(scenes.y[index]), int(belief.argmax())
    verdict = "right" if guess == label else "wrong"
    title = f"{name}: after {glimpses} glimpse(s) the model says {guess} ({verdict}; it is a {label})"
    return episode_step(scenes.x[index, 0].numpy(), memory.numpy(), boxes[0].tolist(), belief, label, title=title)


def playground(result, *, scenes: int = 40):
    """The notebook's playground over a :class:`~efflab.glimpse.experiment.GlimpseResult`: pick a policy, a
    held-out scene and a number of glimpses.

    Two panels answer every control from the episodes already played: the episode itself (boxes, memory,
    belief; the policy's first seed) and every policy's held-out accuracy after that many glimpses, the chosen
    policy highlighted. The status line says what the task model concluded and how often that policy is right.
    """
    from efflab.glimpse.experiment import accuracy_curves
    from efflab.ui.widgets import dropdown, slider
    from efflab.ui.widgets import playground as make_playground

    logs, test = result.logs, result.test_scenes
    glimpses = result.game.glimpses
    curves = accuracy_curves(logs)
    default = next((name for name in logs if name.startswith("SAC")), next(iter(logs)))

    def render(policy, glimpses_taken, scene):
        episode = logged_episode(
            logs[policy][0], test, result.game.sensor, index=scene, glimpses=glimpses_taken, name=policy
        )
        means = {name: float(curve[:, glimpses_taken].mean()) for name, curve in curves.items()}
        halves = {name: float(np.ptp(curve[:, glimpses_taken]) / 2) for name, curve in curves.items()}
        bars = comparison_bars(
            means,
            errors=halves,
            title=f"held-out accuracy after {glimpses_taken} glimpse(s) (error bar: half the range over seeds)",
            y_title="accuracy",
        )
        bars.data[0].marker.line = dict(width=[4 if name == policy else 0 for name in means], color="black")
        bars.update_yaxes(range=[0, 1])
        belief = logs[policy][0].beliefs[scene, glimpses_taken]
        guess, label = int(belief.argmax()), int(test.y[scene])
        status = (
            f"{policy}, scene {scene} (a {label}): after {glimpses_taken} of {glimpses} glimpse(s) the task model "
            f"says {guess} with probability {float(belief.max()):.2f}; over all {len(test)} held-out scenes this "
            f"policy is right {means[policy]:.1%} of the time at this step."
        )
        return [episode, bars], status

    return make_playground(
        render,
        policy=dropdown("policy", list(logs), value=default),
        glimpses_taken=slider("glimpses", list(range(glimpses + 1)), value=glimpses),
        scene=slider("held-out scene", list(range(min(scenes, len(test))))),
    )
