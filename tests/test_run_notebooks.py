import json

import nbformat
import pytest

from efflab import run_notebooks


def write_notebook(path, body):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell(
        'MODE = "auto"\nDEVICE = "auto"\nSEED = 0\nRESULTS_DIR = None', metadata={"tags": ["parameters"]}
    )
    notebook.cells = [parameters, nbformat.v4.new_code_cell(body)]
    nbformat.write(notebook, path)


RECORDING = """
from pathlib import Path
from efflab import results
results.record("tiny", {"mode": MODE}, results_dir=RESULTS_DIR)
Path(RESULTS_DIR, "tiny_policy.zip").write_bytes(bytes(range(256)))
"""


@pytest.fixture
def folder(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_records.ipynb", RECORDING)
    write_notebook(notebooks / "02_fails.ipynb", "raise RuntimeError('boom')")
    write_notebook(notebooks / "03_hangs.ipynb", "import time\ntime.sleep(60)")
    return notebooks


def test_select_notebooks_by_prefix(folder):
    assert [p.name for p in run_notebooks.select_notebooks("01,03", folder)] == [
        "01_records.ipynb",
        "03_hangs.ipynb",
    ]
    with pytest.raises(ValueError, match="only="):
        run_notebooks.select_notebooks("99", folder)


def test_run_collects_records_failures_and_timeouts(folder, tmp_path):
    out = tmp_path / "out"
    options = dict(mode="full", device="cpu", cell_timeout=30, time_limit=40)
    ok = run_notebooks.run_notebook(folder / "01_records.ipynb", out, **options)
    assert ok.status == "ok" and ok.records["tiny"]["values"] == {"mode": "full"}
    failed = run_notebooks.run_with_retries(folder / "02_fails.ipynb", out, retries=3, **options)
    assert failed.status == "failed" and "boom" in failed.error
    assert failed.attempts == 1  # only a timeout is run again
    hung = run_notebooks.run_with_retries(
        folder / "03_hangs.ipynb", out, retries=1, **{**options, "cell_timeout": 2, "time_limit": 30}
    )
    assert hung.status == "timeout" and hung.attempts == 2  # a timed-out notebook is run once more

    ok.unit_seconds = ok.seconds / 2  # as if the notebook took two CPU units
    report = run_notebooks.markdown_report([ok, failed, hung], "full", "cpu")
    assert "| 01_records | ok |" in report and "| 03_hangs | timeout |" in report and "boom" in report
    assert f"| 2.0 (unit {ok.unit_seconds:.1f} s) |" in report and hung.units is None

    written = run_notebooks.commit_full_results([ok, failed], tmp_path / "results")
    assert [p.name for p in written] == ["tiny.json", "tiny_policy.zip"]
    assert written[1].read_bytes() == bytes(range(256))  # artifacts are copied unchanged
    entry = json.loads(written[0].read_text())
    assert entry["runner"]["notebook"] == "01_records" and entry["values"] == {"mode": "full"}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mode"):
        run_notebooks.main(["--mode", "fast"])
