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


class Playground(Explorer):
    """An explorer with a line of status text and, optionally, an action behind a button.

    ``render(**values)`` answers every control at once from precomputed results and returns what to show (a
    figure, a table, Markdown, or a widget box of several); it may also return ``(shown, status)`` where
    ``status`` is a sentence for the status line (e.g. "budget 2048 is past the largest precomputed setting,
    1024; showing 1024"), so every control visibly answers. ``action(values, report)`` is the heavy path (one
    more training run): it is started by the button, calls ``report(fraction, message)`` as it goes, and may
    return a status sentence; the view is rendered again when it ends.
    """

    def __init__(
        self,
        render: Callable[..., object],
        controls: Mapping[str, widgets.ValueWidget],
        *,
        action: Callable[[dict, Callable[[float, str], None]], object] | None = None,
        action_label: str = "Run",
    ):
        self.status = widgets.HTML(value="")
        self.action = action
        self.button = widgets.Button(description=action_label, button_style="primary") if action else None
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="240px"))
        self.actions_run = 0
        super().__init__(render, controls)
        rows = [widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap"))]
        if self.button is not None:
            self.button.on_click(self._on_click)
            rows.append(widgets.HBox([self.button, self.progress]))
        self.widget = widgets.VBox([*rows, self.status, self.output])

    def refresh(self) -> None:
        shown = self.render(**self.values)
        status = ""
        if isinstance(shown, tuple) and len(shown) == 2 and isinstance(shown[1], str):
            shown, status = shown
        self.last = shown
        self.renders += 1
        self.status.value = status
        self.output.outputs = _display_all(shown)

    def report(self, fraction: float, message: str = "") -> None:
        self.progress.value = min(max(float(fraction), 0.0), 1.0)
        if message:
            self.status.value = message

    def run_action(self) -> None:
        """What the button does; tests call it directly."""
        if self.action is None:
            raise ValueError("this playground has no action; pass action= to add a button")
        self.button.disabled = True
        try:
            self.report(0.0, "running ...")
            message = self.action(self.values, self.report)
            self.actions_run += 1
            self.refresh()
            self.report(1.0, message if isinstance(message, str) else "done")
        except ValueError as error:
            self.status.value = f"<b>not run:</b> {error}"
        finally:
            self.button.disabled = False

    def _on_click(self, _button) -> None:
        self.run_action()


def playground(render, *, action=None, action_label: str = "Run", **controls) -> Playground:
    """Shorthand: ``playground(draw, tau=slider("tau", taus), action=train_one_more)``."""
    return Playground(render, controls, action=action, action_label=action_label)


def _display_all(shown) -> tuple:
    """Output-area state for one shown value, or for each value of a list of them."""
    values = shown if isinstance(shown, list) else [shown]
    return tuple(display_data(value) for value in values)


def log_slider(name: str, *, low: float, high: float, value: float, description: str | None = None):
    """A slider over numbers spread evenly in log scale (a learning rate, a multiplier)."""
    if not 0 < low < high or not low <= value <= high:
        raise ValueError(f"{name}: expected 0 < low <= value <= high, got low={low}, value={value}, high={high}")
    import math

    return widgets.FloatLogSlider(
        value=value,
        base=10,
        min=math.log10(low),
        max=math.log10(high),
        step=(math.log10(high) - math.log10(low)) / 40,
        description=description or name,
        continuous_update=False,
        style={"description_width": "initial"},
        readout_format=".3g",
    )


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
