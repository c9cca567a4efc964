"""The static edition: figures become divs drawn by a local plotly.js, widgets their initial state, nothing
external is linked."""

import json

import nbformat
import plotly.graph_objects as go
import pytest

from efflab.ui import site


def executed_notebook(tmp_path):
    figure = json.loads(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])).to_json())
    state = {
        "box": {"state": {"_model_name": "VBoxModel", "children": ["IPY_MODEL_slider", "IPY_MODEL_out"]}},
        "slider": {
            "state": {
                "_model_name": "SelectionSliderModel",
                "description": "ratio",
                "index": 1,
                "_options_labels": ["0.5", "0.9"],
            }
        },
        "out": {
            "state": {
                "_model_name": "OutputModel",
                "outputs": [{"output_type": "display_data", "data": {site.PLOTLY_MIME: figure}, "metadata": {}}],
            }
        },
    }
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# 05 · A notebook\n\nThe paper, arXiv 2402.07871, in brief."),
        nbformat.v4.new_code_cell(
            "fig",
            outputs=[nbformat.v4.new_output("display_data", data={site.PLOTLY_MIME: figure, "text/plain": "F"})],
        ),
        nbformat.v4.new_code_cell(
            "playground",
            outputs=[
                nbformat.v4.new_output(
                    "display_data",
                    data={site.WIDGET_MIME: {"model_id": "box", "version_major": 2}, "text/plain": "W"},
                )
            ],
        ),
    ]
    notebook.metadata["widgets"] = {site.WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}
    folder = tmp_path / "executed"
    folder.mkdir()
    nbformat.write(notebook, folder / "05_a_notebook.ipynb")
    return folder


def test_the_site_is_self_contained(tmp_path):
    pages = site.build_site(executed_notebook(tmp_path), tmp_path / "site")
    page = pages[0].read_text()
    assert '<script src="plotly.min.js"></script>' in page and (tmp_path / "site" / "plotly.min.js").exists()
    assert page.count("Plotly.newPlot") == 2  # the figure and the playground's initial figure
    assert "<b>ratio</b> 0.9" in page and "running kernel" in page
    assert site.EXTERNAL_TAG.search(page) is None and "cdnjs" not in page
    index = (tmp_path / "site" / "index.html").read_text()
    assert "05_a_notebook.html" in index and "arXiv 2402.07871" in index and "A notebook" in index


def test_an_empty_folder_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="run_notebooks"):
        site.build_site(tmp_path, tmp_path / "site")
