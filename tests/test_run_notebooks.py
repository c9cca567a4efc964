import json
import os
import subprocess
import sys
import threading
import time

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
import os
from pathlib import Path
from efflab import results
results.record("tiny", {"mode": MODE, "cores": sorted(os.sched_getaffinity(0))}, results_dir=RESULTS_DIR)
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


def test_select_notebooks_by_prefix_in_the_order_listed(folder):
    assert [p.name for p in run_notebooks.select_notebooks("01,03", folder)] == [
        "01_records.ipynb",
        "03_hangs.ipynb",
    ]
    assert [p.name for p in run_notebooks.select_notebooks("03,0,01", folder)] == [
        "03_hangs.ipynb",
        "01_records.ipynb",
        "02_fails.ipynb",
    ]  # in the order listed, each once
    assert len(run_notebooks.select_notebooks(None, folder)) == 3
    with pytest.raises(ValueError, match="only="):
        run_notebooks.select_notebooks("99", folder)


def test_run_collects_records_failures_and_timeouts(folder, tmp_path):
    out = tmp_path / "out"
    options = dict(mode="full", device="cpu", cell_timeout=30, time_limit=40)
    last_core = max(os.sched_getaffinity(0))
    ok = run_notebooks.run_notebook(folder / "01_records.ipynb", out, cores=(last_core,), **options)
    assert ok.status == "ok" and ok.records["tiny"]["values"] == {"mode": "full", "cores": [last_core]}
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
    assert entry["runner"]["notebook"] == "01_records" and entry["values"]["mode"] == "full"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mode"):
        run_notebooks.main(["--mode", "fast"])
    with pytest.raises(ValueError, match="jobs"):
        run_notebooks.main(["--jobs", "0"])


def test_lanes_split_the_cores_into_disjoint_near_equal_shares():
    assert run_notebooks.core_lanes(2, range(16)) == [tuple(range(8)), tuple(range(8, 16))]
    assert run_notebooks.core_lanes(2, [4, 0, 2, 3, 1]) == [(0, 1, 2), (3, 4)]
    assert run_notebooks.core_lanes(1, [3, 5]) == [(3, 5)]
    for jobs in (0, 3):
        with pytest.raises(ValueError, match="jobs"):
            run_notebooks.core_lanes(jobs, [0, 1])


def test_a_pinned_command_and_what_it_starts_run_on_the_lane_only():
    core = min(os.sched_getaffinity(0))
    grandchild = (
        "import os, subprocess, sys; print(subprocess.check_output([sys.executable, '-c', "
        + repr("import os; print(sorted(os.sched_getaffinity(0)))")
        + "], text=True).strip())"
    )
    output = subprocess.check_output(run_notebooks.pinned([sys.executable, "-c", grandchild], (core,)), text=True)
    assert output.strip() == str([core])
    assert run_notebooks.pinned(["echo"], None) == ["echo"]


def test_side_by_side_lanes_share_the_notebooks_and_keep_their_order():
    jobs = min(2, len(os.sched_getaffinity(0)))
    seen, lock = [], threading.Lock()

    def run_one(notebook, cores):
        time.sleep(0.05 if notebook.name == "a" else 0.01)  # the first lane is busy while the second takes more
        with lock:
            seen.append((notebook.name, cores, threading.get_ident()))
        return run_notebooks.NotebookRun(notebook.name, "ok", 0.0)

    notebooks = [run_notebooks.Path(name) for name in "abcd"]
    runs = run_notebooks.run_side_by_side(notebooks, jobs, run_one)
    assert [run.notebook for run in runs] == list("abcd")
    lanes = {cores for _, cores, _ in seen}
    assert sorted(name for name, _, _ in seen) == list("abcd") and len(lanes) == jobs
    assert sum(len(cores) for cores in lanes) == len(set().union(*lanes))  # disjoint


def test_make_full_runs_every_notebook_once():
    makefile = (run_notebooks.REPO_ROOT / "Makefile").read_text()
    order = next(line.split("?=")[1].strip() for line in makefile.splitlines() if line.startswith("FULL_ORDER"))
    chosen = run_notebooks.select_notebooks(order)
    assert sorted(chosen) == run_notebooks.select_notebooks() and len(order.split(",")) == len(chosen)
