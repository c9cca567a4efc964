"""Run the course's notebooks end to end and report what each one recorded.

    python -m efflab.run_notebooks [--mode quick|full] [--device auto|cpu|cuda] [--only 01,05] [--out DIR]
                                   [--cell-timeout S] [--time-limit S] [--retries N] [--no-units] [--jobs N]

Each notebook runs through papermill in its own process, with the parameters MODE, DEVICE and RESULTS_DIR
injected, a per-cell execution timeout and an outer time limit (a kernel can wait forever on a widget message,
so neither limit is optional; a notebook stopped by either is run again, up to ``--retries`` times, since such a
stall rarely repeats). The executed copies, every notebook's recorded results and a report (markdown and
JSON) land in ``--out``. In full mode the records are also copied to ``data/results/<name>.json``, with the
runner's own provenance, and so is every other file a notebook left beside them (an artifact, such as a trained
policy), which is how GPU results become part of the course.

Right before each notebook the runner times one CPU unit (:func:`efflab.timing.cpu_unit_seconds`), so the report
gives every notebook's time in seconds and in units, the measure the course's speed budgets are stated in.

``--jobs N`` runs N notebooks side by side, each lane pinned to its own share of the cores (every process a
notebook starts, its kernel and its executor's workers, inherits the lane's cores, and the executor sizes its
pool to them). On a GPU machine lanes let the notebooks that train on CPU cores run beside those that keep the
GPU busy; ``make full`` takes the lanes and the order (``--only``, longest first) of the full-mode plan
(``make plan``). Side by side, the units are not timed: a unit measured beside another notebook means nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from efflab.cache import REPO_ROOT, atomic_write
from efflab.results import COMMITTED_RESULTS, provenance, write_json
from efflab.timing import cpu_unit_seconds
from efflab.validation import check_choice, check_int, check_positive

NOTEBOOKS = REPO_ROOT / "notebooks"


@dataclass
class NotebookRun:
    notebook: str
    status: str  # "ok", "failed" or "timeout" (a cell ran past its timeout, or the notebook past its limit)
    seconds: float
    records: dict = field(default_factory=dict)
    error: str = ""
    artifacts: list[str] = field(default_factory=list)  # other files the notebook wrote beside its records
    attempts: int = 1
    unit_seconds: float | None = None  # one CPU unit, timed right before the notebook

    @property
    def units(self) -> float | None:
        return None if not self.unit_seconds else round(self.seconds / self.unit_seconds, 2)


def select_notebooks(only: str | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """Notebooks in teaching order; ``only="05,01"`` keeps those whose file name starts with a listed prefix, in
    the order listed (``--jobs`` lanes take them in that order: the full-mode plan lists the longest first)."""
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return notebooks
    chosen = []
    for prefix in (p.strip() for p in only.split(",")):
        chosen += [nb for nb in notebooks if prefix and nb.name.startswith(prefix) and nb not in chosen]
    if not chosen:
        raise ValueError(f"only={only!r} matches no notebook in {folder}")
    return chosen


def papermill_command(
    notebook: Path, executed: Path, results_dir: Path, mode: str, device: str, cell_timeout: int
):
    return [
        sys.executable,
        "-m",
        "papermill",
        str(notebook),
        str(executed),
        "--kernel",
        "python3",
        "--execution-timeout",
        str(cell_timeout),
        "-p",
        "MODE",
        mode,
        "-p",
        "DEVICE",
        device,
        "-p",
        "RESULTS_DIR",
        str(results_dir),
    ]


# Set this process's cores, then become the command: what the command starts inherits the cores.
_PIN = (
    "import os, sys; os.sched_setaffinity(0, map(int, sys.argv[1].split(',')));"
    " os.execv(sys.argv[2], sys.argv[2:])"
)


def pinned(command: list[str], cores: Iterable[int] | None) -> list[str]:
    """``command``, started on ``cores`` only (``None``: on every core this process may use)."""
    if cores is None:
        return command
    return [sys.executable, "-c", _PIN, ",".join(str(core) for core in cores), *command]


def core_lanes(jobs: int, cores: Iterable[int] | None = None) -> list[tuple[int, ...]]:
    """The cores (default: this process's) split into ``jobs`` disjoint lanes of near-equal size."""
    check_int("jobs", jobs, low=1)
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if jobs > len(cores):
        raise ValueError(f"jobs={jobs} is not allowed; expected at most {len(cores)}, one core per lane or more")
    size, extra = divmod(len(cores), jobs)
    bounds = [lane * size + min(lane, extra) for lane in range(jobs + 1)]
    return [tuple(cores[bounds[lane] : bounds[lane + 1]]) for lane in range(jobs)]


def run_side_by_side(notebooks: list[Path], jobs: int, run_one: Callable) -> list[NotebookRun]:
    """``run_one(notebook, cores)`` for every notebook, ``jobs`` lanes at a time, each lane on its own cores and
    taking the next notebook when it is free; the runs come back in the notebooks' order."""
    lanes = core_lanes(jobs)
    waiting: queue.SimpleQueue = queue.SimpleQueue()
    for notebook in notebooks:
        waiting.put(notebook)
    runs: dict[Path, NotebookRun] = {}

    def lane(cores):
        while True:
            try:
                notebook = waiting.get_nowait()
            except queue.Empty:
                return
            runs[notebook] = run_one(notebook, cores)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lane, lanes))  # re-raises what a lane raised
    return [runs[notebook] for notebook in notebooks]


def run_notebook(
    notebook: Path,
    out: Path,
    *,
    mode: str,
    device: str,
    cell_timeout: int,
    time_limit: int,
    cores: tuple[int, ...] | None = None,
):
    """Execute one notebook (on ``cores`` only, when given); never raises for a failing notebook, the status
    says what happened."""
    results_dir = out / notebook.stem
    results_dir.mkdir(parents=True, exist_ok=True)
    command = pinned(
        papermill_command(notebook, out / notebook.name, results_dir, mode, device, cell_timeout), cores
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=notebook.parent, capture_output=True, text=True, timeout=time_limit)
        status, error = ("ok", "") if done.returncode == 0 else ("failed", done.stderr[-3000:])
        if status == "failed" and "CellTimeoutError" in done.stderr:
            status = "timeout"
    except subprocess.TimeoutExpired:
        status, error = "timeout", f"stopped after the outer time limit of {time_limit} s"
    seconds = time.perf_counter() - start
    records = {path.stem: json.loads(path.read_text()) for path in sorted(results_dir.glob("*.json"))}
    artifacts = [str(path) for path in sorted(results_dir.iterdir()) if path.is_file() and path.suffix != ".json"]
    return NotebookRun(notebook.stem, status, round(seconds, 1), records, error, artifacts)


def run_with_retries(notebook: Path, out: Path, *, retries: int, **limits) -> NotebookRun:
    """:func:`run_notebook`, run again (up to ``retries`` more times) while it ends in a timeout."""
    for attempt in range(1, retries + 2):
        run = run_notebook(notebook, out, **limits)
        run.attempts = attempt
        if run.status != "timeout":
            break
    return run


def markdown_report(runs: list[NotebookRun], mode: str, device: str) -> str:
    lines = [
        f"# Notebook run ({mode} mode, device {device})",
        "",
        "| notebook | status | seconds | CPU units | attempts | recorded |",
        "|---|---|---:|---:|---:|---|",
    ]
    for run in runs:
        recorded = ", ".join(run.records) or "-"
        units = "-" if run.units is None else f"{run.units:.1f} (unit {run.unit_seconds:.1f} s)"
        lines.append(
            f"| {run.notebook} | {run.status} | {run.seconds:.1f} | {units} | {run.attempts} | {recorded} |"
        )
    failures = [run for run in runs if run.status != "ok"]
    for run in failures:
        lines += ["", f"## {run.notebook}: {run.status}", "", "```", run.error.strip(), "```"]
    return "\n".join(lines) + "\n"


def commit_full_results(runs: list[NotebookRun], destination: Path = COMMITTED_RESULTS) -> list[Path]:
    """Copy each successful notebook's records to ``destination`` with the runner's provenance added, and its
    artifacts as they are; every file is written atomically."""
    written = []
    runner = provenance()
    for run in runs:
        if run.status != "ok":
            continue
        for name, entry in run.records.items():
            path = destination / f"{name}.json"
            write_json(
                {**entry, "runner": {**runner, "notebook": run.notebook, "notebook_seconds": run.seconds}}, path
            )
            written.append(path)
        for artifact in map(Path, run.artifacts):
            path = destination / artifact.name
            atomic_write(path, lambda handle, source=artifact: handle.write(source.read_bytes()))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m efflab.run_notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="quick", help="quick or full (default quick)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--only", default=None, help="comma-separated prefixes, e.g. 01,05, run in that order")
    parser.add_argument("--out", default=str(REPO_ROOT / "runs" / "latest"), help="folder for outputs")
    parser.add_argument("--cell-timeout", type=int, default=900, help="seconds one cell may run")
    parser.add_argument("--time-limit", type=int, default=1800, help="seconds one notebook may run")
    parser.add_argument("--retries", type=int, default=1, help="runs again of a notebook that timed out")
    parser.add_argument("--no-units", action="store_true", help="do not time a CPU unit before each notebook")
    parser.add_argument(
        "--jobs", type=int, default=1, help="notebooks side by side, each on its share of the cores"
    )
    args = parser.parse_args(argv)
    check_choice("mode", args.mode, ("quick", "full"))
    check_choice("device", args.device, ("auto", "cpu", "cuda"))
    check_positive("cell_timeout", args.cell_timeout)
    check_positive("time_limit", args.time_limit)
    check_positive("retries", args.retries, allow_zero=True)
    check_int("jobs", args.jobs, low=1)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    notebooks = select_notebooks(args.only)
    limits = dict(mode=args.mode, device=args.device, cell_timeout=args.cell_timeout, time_limit=args.time_limit)

    def run_one(notebook: Path, cores: tuple[int, ...] | None) -> NotebookRun:
        unit = None if args.no_units or cores is not None else cpu_unit_seconds()
        lane = "" if cores is None else f", cores {cores[0]}-{cores[-1]}"
        print(f"running {notebook.name} ({args.mode}, {args.device}{lane}) ...", flush=True)
        run = run_with_retries(notebook, out, retries=args.retries, cores=cores, **limits)
        run.unit_seconds = None if unit is None else round(unit, 2)
        units = "" if run.units is None else f", {run.units:.1f} CPU units of {unit:.1f} s"
        print(
            f"  {notebook.stem}: {run.status} in {run.seconds:.1f} s{units} ({run.attempts} attempt(s))",
            flush=True,
        )
        return run

    start = time.perf_counter()
    if args.jobs > 1 and not hasattr(os, "sched_setaffinity"):
        print("--jobs needs CPU affinity, which only Linux offers: running one notebook at a time", flush=True)
        args.jobs = 1
    if args.jobs == 1:
        runs = [run_one(notebook, None) for notebook in notebooks]
    else:
        runs = run_side_by_side(notebooks, args.jobs, run_one)
    print(f"{len(runs)} notebook(s) in {time.perf_counter() - start:.1f} s wall ({args.jobs} lane(s))", flush=True)

    report = markdown_report(runs, args.mode, args.device)
    (out / "report.md").write_text(report)
    runs_json = [{**asdict(r), "units": r.units} for r in runs]
    write_json({"mode": args.mode, "device": args.device, "runs": runs_json}, out / "report.json")
    if args.mode == "full":
        for path in commit_full_results(runs):
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    print(report)
    return 0 if all(run.status == "ok" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
