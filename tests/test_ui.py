import ipywidgets as widgets
import nbformat
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from efflab.ui import plots
from efflab.ui.widgets import dropdown, explorer, slider


def history(offset=0.0):
    return (
        pd.DataFrame({"step": [1, 2, 3, 4], "loss": [4.0, 3.0, 2.5, 2.0], "val_loss": [None, 3.1, None, 2.2]})
        + offset
    )


def test_training_curves_draw_one_line_per_run_and_metric():
    figure = plots.training_curves({"a": history(), "b": history(1)}, metrics=("loss", "val_loss"))
    assert isinstance(figure, go.Figure) and len(figure.data) == 4
    val_line = figure.data[1]
    assert list(val_line.y) == [3.1, 2.2]  # evaluations only where measured


def test_training_curves_reject_unknown_metrics():
    with pytest.raises(ValueError, match="accuracy"):
        plots.training_curves(history(), metrics=("accuracy",))


def test_band_plot_shows_mean_and_spread():
    values = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    figure = plots.band_plot([0, 1, 2], {"run": values}, title="t", x_title="x", y_title="y")
    band, mean = figure.data
    assert list(mean.y) == [2.0, 3.0, 4.0]
    assert list(band.y) == [3.0, 4.0, 5.0, 3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="columns"):
        plots.band_plot([0, 1], {"run": values}, title="t", x_title="x", y_title="y")


def test_comparison_bars_carry_errors():
    figure = plots.comparison_bars({"dense": 1.0, "moe": 0.8}, errors={"moe": 0.1}, title="t", y_title="loss")
    assert list(figure.data[0].y) == [1.0, 0.8] and list(figure.data[0].error_y.array) == [0.0, 0.1]


def test_paper_vs_run_table_fills_missing_cells():
    table = plots.paper_vs_run([{"quantity": "accuracy", "paper": 0.9, "this_run": 0.85}])
    assert table.loc["accuracy", "this run"] == 0.85
    assert table.loc["accuracy", "full-mode run (GPU)"] == "n/a"
    with pytest.raises(ValueError, match="this_run"):
        plots.paper_vs_run([{"quantity": "accuracy", "paper": 0.9}])
    on_cpu = plots.paper_vs_run([{"quantity": "a", "paper": 1, "this_run": 2, "full_run": 3}], full_run_on="cpu")
    assert on_cpu.loc["a", "full-mode run (cpu)"] == 3


def test_explorer_redraws_when_a_control_changes():
    seen = []

    def render(ratio, regime):
        seen.append((ratio, regime))
        return f"{regime}@{ratio}"

    view = explorer(
        render, ratio=slider("ratio", [0.5, 0.9]), regime=dropdown("regime", ["one-shot", "iterative"])
    )
    assert view.last == "one-shot@0.5"
    view.controls["ratio"].value = 0.9
    view.controls["regime"].value = "iterative"
    assert view.last == "iterative@0.9" and view.renders == 3
    assert isinstance(view.widget, widgets.VBox)
    (shown,) = view.output.outputs  # the output area holds exactly the latest rendering
    assert shown["output_type"] == "display_data" and shown["data"]["text/plain"] == "'iterative@0.9'"


def test_explorer_shows_a_figure_as_its_plotly_bundle():
    def draw(value):
        return plots.comparison_bars({"a": value}, title="t", y_title="y")

    view = explorer(draw, value=slider("v", [1]))
    (shown,) = view.output.outputs
    assert shown["data"]["application/vnd.plotly.v1+json"]["data"][0]["type"] == "bar"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.from_dict(shown)])])
    nbformat.validate(notebook)  # a well-formed notebook output, as the front end receives it


def test_explorer_needs_controls_and_options():
    with pytest.raises(ValueError, match="controls"):
        explorer(lambda: None)
    with pytest.raises(ValueError, match="ratio"):
        slider("ratio", [])


def test_next_byte_bars_sorts_and_labels_bytes():
    probabilities = np.zeros(256)
    probabilities[[ord("a"), ord(" "), ord("\n")]] = [0.2, 0.5, 0.3]
    figure = plots.next_byte_bars(probabilities, top=3)
    assert list(figure.data[0].x) == ["␣", "\\n", "a"]
    assert list(figure.data[0].y) == [0.5, 0.3, 0.2]
    with pytest.raises(ValueError, match="probabilities"):
        plots.next_byte_bars(np.ones(10))


def test_next_byte_bars_shows_a_subtitle_on_one_line():
    figure = plots.next_byte_bars(np.full(256, 1 / 256), subtitle="def f():\n    pass")
    assert figure.layout.title.subtitle.text == "def f():⏎    pass"
