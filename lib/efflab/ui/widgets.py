"""Explorers: a row of controls above a figure that is redrawn whenever a control changes.

An explorer never trains. Its ``render`` function looks up precomputed results (or runs something cheap, well
under a second) and returns a figure, a table or text; anything heavier belongs behind a button with a progress
bar. Because the state lives in Python, tests drive an explorer exactly as a reader would, without a browser:
set ``explorer.controls["ratio"].value`` and look at ``explorer.last``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
from IPython.core.interactiveshell import InteractiveShell
from IPython.display import display


class Explorer:
    """Controls plus an output area; ``render(**values)`` is called on start and after every change."""

    def __init__(self, render: Callable[..., object], controls: Mapping[str, widgets.ValueWidget]):
        if not controls:
            raise ValueError("controls={} is not allowed; an explorer needs at least one control")
        self.render = render
        self.controls = dict(controls)
        self.output = widgets.Output()
        self.last: object = None
        self.renders = 0
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox(list(self.controls.values())), self.output])
        self.refresh()

    @property
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def refresh(self) -> None:
        """Render with the current values and show the result in the output area.

        The result becomes the output area's whole state in one widget update, instead of being displayed
        inside ``with self.output:``, which asks the front end to capture the cell's own display messages by
        message id. Fewer, simpler messages: headless executors (nbclient under papermill) now and then stalled
        on cells that built an explorer the capturing way.
        """
        self.last = self.render(**self.values)
        self.renders += 1
        self.output.outputs = (display_data(self.last),)

    def _on_change(self, _change) -> None:
        self.refresh()

    def _ipython_display_(self) -> None:
        display(self.widget)


def display_data(value) -> dict:
    """The ``display_data`` output a notebook cell would show for ``value``.

    Objects that render themselves through ``_repr_mimebundle_`` (plotly figures) are asked for their bundle
    directly: IPython's formatter would let a plotly figure display itself in the cell instead.
    """
    bundle = getattr(value, "_repr_mimebundle_", None)
    if callable(bundle):
        data = bundle()
        data, metadata = data if isinstance(data, tuple) else (data, {})
    else:
        data, metadata = InteractiveShell.instance().display_formatter.format(value)
    return {"output_type": "display_data", "data": data, "metadata": metadata}


def slider(name: str, options: Sequence, *, value=None, description: str | None = None) -> widgets.SelectionSlider:
    """A slider over a fixed list of values (the grid an experiment was precomputed on)."""
    options = list(options)
    if not options:
        raise ValueError(f"options for {name!r} is empty; a slider needs at least one value")
    return widgets.SelectionSlider(
        options=options,
        value=options[0] if value is None else value,
        description=description or name,
        continuous_update=False,
        style={"description_width": "initial"},
        layout=widgets.Layout(width="420px"),
    )


def dropdown(name: str, options: Sequence, *, value=None, description: str | None = None) -> widgets.Dropdown:
    """A dropdown over a fixed list of choices."""
    options = list(options)
    if not options:
        raise ValueError(f"options for {name!r} is empty; a dropdown needs at least one choice")
    return widgets.Dropdown(
        options=options,
        value=options[0] if value is None else value,
        description=description or name,
        style={"description_width": "initial"},
    )


def explorer(render: Callable[..., object], **controls: widgets.ValueWidget) -> Explorer:
    """Shorthand: ``explorer(draw, ratio=slider("ratio", ratios), regime=dropdown("regime", regimes))``."""
    return Explorer(render, controls)
