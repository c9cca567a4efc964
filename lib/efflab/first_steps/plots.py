"""Figures and the playground of notebook 00: the loss curve against its reference points, and the sampling
temperature. Plain data in, figures out; nothing here trains."""

from __future__ import annotations

import plotly.graph_objects as go

from efflab.first_steps.experiment import UNIFORM_LOSS
from efflab.ui.plots import next_byte_bars, training_curves
from efflab.ui.widgets import Playground, slider


def loss_curve(result) -> go.Figure:
    """Training and validation loss, with the uniform and unigram losses as dotted lines."""
    figure = training_curves(
        result.history, metrics=("loss", "val_loss"), title="TinyLM on Python's own text", y_title="nats per byte"
    )
    reference = {"uniform (ln 256)": UNIFORM_LOSS, "unigram (byte frequencies)": result.unigram_loss}
    for index, (name, value) in enumerate(reference.items()):
        figure.add_hline(
            y=value,
            line_dash="dot",
            line_color="gray",
            annotation_text=name,
            annotation_position="top right" if index == 0 else "bottom right",
        )
    return figure


def playground(result) -> Playground:
    """A temperature slider over the precomputed table: the next-byte distribution after the prompt and a
    continuation sampled with one shared seed, so the temperature is the only thing that changes."""
    table = result.table

    def render(temperature):
        probabilities, sample = table.at(temperature)
        title = f"Next byte after {table.prompt!r} at temperature {temperature}"
        figure = next_byte_bars(probabilities, title=title, subtitle=(table.prompt + sample)[:100])
        peak = float(probabilities.max())
        status = (
            f"temperature {temperature}: the most likely next byte gets probability {peak:.2f}; "
            f"the sample begins {(table.prompt + sample)[:40]!r}"
        )
        return figure, status

    start = 1.0 if 1.0 in table.temperatures else table.temperatures[0]
    return Playground(render, {"temperature": slider("temperature", table.temperatures, value=start)})
