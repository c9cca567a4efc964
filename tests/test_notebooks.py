"""Notebook hygiene: every course notebook is committed clean and can be parameterised by papermill.

Executing the notebooks is not done here: ``make test`` passes ``notebooks/`` to pytest with ``--nbval-lax``.
"""

import ast
from pathlib import Path

import nbformat
import pytest

from efflab.clean_notebooks import clean, is_clean

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
REQUIRED_PARAMETERS = {"MODE", "DEVICE", "SEED", "RESULTS_DIR"}


def test_the_course_has_notebooks():
    assert any(path.name == "00_start_here.ipynb" for path in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_with_python3_kernel(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert is_clean(notebook), f"{path.name} has outputs or metadata; run `make clean-notebooks`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_defining_the_standard_knobs(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} has {len(tagged)} cells tagged 'parameters'"
    assigned = {
        target.id
        for node in ast.parse(tagged[0].source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert assigned >= REQUIRED_PARAMETERS, f"missing {REQUIRED_PARAMETERS - assigned}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_a_title_and_calls_setup(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert any("efflab.setup(MODE, DEVICE, SEED)" in cell.source for cell in notebook.cells)


def test_clean_strips_outputs_and_keeps_tags():
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"], "scrolled": True})
    cell.outputs = [nbformat.v4.new_output("stream", text="hi")]
    cell.execution_count = 3
    notebook.cells = [cell]
    notebook.metadata = {"kernelspec": {"name": "python3"}, "widgets": {"state": {}}}
    assert not is_clean(notebook)
    cleaned = clean(notebook)
    assert cleaned.cells[0].outputs == [] and cleaned.cells[0].execution_count is None
    assert cleaned.cells[0].metadata == {"tags": ["parameters"]}
    assert cleaned.metadata == {"kernelspec": {"name": "python3"}}
    assert is_clean(cleaned)
