"""Headline numbers with their provenance, so a run can be judged without opening its notebook.

At the end of a notebook, ``record(name, values, run=run, results_dir=RESULTS_DIR)`` writes
``<results_dir>/<name>.json``: the values plus where they came from (mode, device, torch version, git commit,
date, wall time since ``setup``). With ``results_dir=None`` nothing is written and the record is only returned,
which is what a reader working interactively wants.

Full-mode results committed under ``data/results/`` are written by ``efflab.run_notebooks`` only; ``load(name)``
reads them back so a quick-mode notebook can show the GPU run's numbers beside its own.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

from efflab.cache import REPO_ROOT, atomic_write
from efflab.runtime import Run

COMMITTED_RESULTS = REPO_ROOT / "data" / "results"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_name(name) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"name={name!r} is not allowed; expected letters, digits, '_', '-' or '.', not starting with '.'"
        )


def git_commit() -> str | None:
    """The repository's current commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(run: Run | None = None) -> dict:
    """Where a number came from: machine, versions, commit, date and, given a run, its mode and wall time."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": "cpu",
    }
    if run is not None:
        device = run.device
        info["device"] = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        )
        info.update(mode=run.mode, seed=run.seed, threads=run.threads)
        info["wall_seconds"] = round(time.time() - run.started_at, 2)
    return info


def _jsonable(value):
    """Turn tensors, numpy scalars and non-finite floats into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays/scalars
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"values contain {type(value).__name__}, which cannot be written as JSON")


def write_json(data: dict, path: Path) -> None:
    """Write JSON atomically (see :func:`efflab.cache.atomic_write`)."""

    def dump(handle):
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")

    atomic_write(path, dump, binary=False)


def record(name: str, values: dict, *, run: Run | None = None, results_dir=None) -> dict:
    """Return ``{"name", "values", "provenance"}``; also write it to ``results_dir/<name>.json`` when given."""
    check_name(name)
    if not isinstance(values, dict):
        raise ValueError(f"values={type(values).__name__} is not allowed; expected a dict")
    if run is not None and not isinstance(run, Run):
        raise ValueError(f"run={run!r:.80} is not allowed; expected the Run returned by efflab.setup, or None")
    entry = {"name": name, "values": _jsonable(values), "provenance": provenance(run)}
    if results_dir is not None:
        write_json(entry, Path(results_dir) / f"{name}.json")
    return entry


def load(name: str, results_dir=None) -> dict | None:
    """The record written for ``name`` (committed full-mode results by default), or None when there is none."""
    check_name(name)
    path = Path(COMMITTED_RESULTS if results_dir is None else results_dir) / f"{name}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"results file {path} is not valid JSON ({error}); delete or regenerate it") from error


def write_beside(path: Path, metadata: dict, run: Run | None = None, **extra) -> None:
    """Write ``path``'s JSON twin (same name, ``.json``): what the saved artifact at ``path`` was made for
    (``metadata``, checked by :func:`read_beside`), where it came from (its provenance) and ``extra`` fields."""
    if not isinstance(metadata, dict):
        raise ValueError(
            f"metadata={metadata!r:.80} is not allowed; expected a dict describing what it was made for"
        )
    write_json(
        _jsonable({"metadata": metadata, "provenance": provenance(run), **extra}), Path(path).with_suffix(".json")
    )


def read_beside(path: Path, expected: dict) -> dict:
    """The JSON twin of the artifact at ``path``, once its metadata agrees with ``expected`` on every key.

    A twin that is missing or unreadable, or that describes something else (another game, another model), raises
    a ValueError naming the file and the keys that differ: the artifact beside it would be read wrongly.
    """
    if not isinstance(expected, dict):
        raise ValueError(f"expected={expected!r:.80} is not allowed; expected a dict describing what is wanted")
    twin = Path(path).with_suffix(".json")
    try:
        info = json.loads(twin.read_text())
        saved = info["metadata"]
        saved.items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"the file saved at {path} has no readable metadata JSON beside it ({error!r})"
        ) from error
    wanted = _jsonable(expected)
    differing = {key: (saved.get(key), value) for key, value in wanted.items() if saved.get(key) != value}
    if differing:
        raise ValueError(f"the file saved at {path} was made for something else: {differing} (saved, expected)")
    return info
