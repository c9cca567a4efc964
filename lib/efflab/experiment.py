"""The experiment contract every paper package keeps, so a reader who knows one notebook knows them all.

A paper's ``experiment.py`` defines

* a frozen budget dataclass derived from :class:`Budget`, with ``quick()`` and ``full()`` constructors,
  ``for_run(run)`` (the one that matches the run's mode) and ``describe()`` (one readable line);
* ``run_experiment(run, budget) -> result``, the whole experiment, its independent runs through
  :func:`efflab.parallel.run_all`;
* ``result.summary()``: a plain dict (JSON-able), the single source of every headline number;
* ``paper_rows(summary, committed)``: the paper-vs-run table (built with :func:`paper_table`), where
  ``committed`` is the summary of the committed full-mode run (:func:`committed_summary`) or None;
* ``findings(summary)``: Markdown sentences that state what this run found, computed from the summary.

Beside it, the package's ``workload.py`` defines ``workload(budget) -> list[efflab.workload.Work]``: the budget's
work, counted for the full-mode plan.

The notebook records ``result.summary()`` with :func:`efflab.results.record`; nothing is typed twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd

from efflab.results import load
from efflab.runtime import Run
from efflab.validation import check_int, check_seed

PAPER_COLUMNS = ("quantity", "paper", "this_run", "full_run", "note")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Base of every paper's budget: subclasses add fields, validate them in ``__post_init__`` and define
    ``quick()`` and ``full()``."""

    @classmethod
    def quick(cls) -> Budget:
        raise NotImplementedError(f"{cls.__name__} defines no quick budget")

    @classmethod
    def full(cls) -> Budget:
        raise NotImplementedError(f"{cls.__name__} defines no full budget")

    @classmethod
    def for_run(cls, run: Run) -> Budget:
        """The quick budget in quick mode, the full one in full mode."""
        if not isinstance(run, Run):
            raise ValueError(f"run={run!r} is not allowed; expected the Run returned by efflab.setup")
        return cls.quick() if run.quick else cls.full()

    def describe(self) -> str:
        """One line: the budget's name and every field."""
        fields = ", ".join(f"{f.name}={_short(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple) and len(value) > 8:
        return f"({', '.join(map(_short, value[:3]))}, ..., {_short(value[-1])}; {len(value)} values)"
    return repr(value)


def seeds_for(run_seed: int, count: int) -> tuple[int, ...]:
    """The seeds of an experiment with ``count`` repeats: the run's seed and the ones after it."""
    check_seed(run_seed)
    check_int("count", count, low=0, high=2**32 - run_seed)  # every seed stays below 2**32; 0 gives none
    return tuple(run_seed + offset for offset in range(count))


def committed_summary(name: str) -> dict | None:
    """The summary recorded by the committed full-mode run of notebook ``name``, or None."""
    entry = load(name)
    return None if entry is None else entry.get("values")


def committed_device(name: str) -> str:
    """Where the committed full-mode run of ``name`` ran, for the table's column title."""
    entry = load(name)
    if entry is None:
        return "GPU"
    device = str(entry.get("provenance", {}).get("device", "GPU"))
    return "cpu" if device in ("cpu", "x86_64", "") else device


def paper_table(rows: Sequence[Mapping], *, full_run_on: str = "GPU") -> pd.DataFrame:
    """The table every notebook ends its results with: the paper's number beside ours.

    Each row is a mapping with ``quantity``, ``paper`` and ``this_run``, and optionally ``full_run`` (the committed
    full-mode result, made on ``full_run_on``) and ``note`` (where the paper's number comes from, why ours may
    differ). Missing cells show "n/a".
    """
    for row in rows:
        missing = {"quantity", "paper", "this_run"} - set(row)
        if missing:
            raise ValueError(
                f"rows entry {dict(row)!r} lacks {sorted(missing)}; each row needs quantity, paper, this_run"
            )
    table = pd.DataFrame([{c: row.get(c) for c in PAPER_COLUMNS} for row in rows], columns=list(PAPER_COLUMNS))
    table = table.rename(columns={"this_run": "this run", "full_run": f"full-mode run ({full_run_on})"})
    return table.astype(object).where(table.notna(), "n/a").set_index("quantity")


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std (n=k)`` of values over seeds, the way every run-dependent number is quoted."""
    import numpy as np

    check_int("digits", digits, low=1)
    try:
        array = np.asarray(list(values), dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"values={values!r:.80} is not allowed; expected a sequence of numbers") from error
    if array.size == 0:
        raise ValueError("values is empty; expected at least one number")
    if array.size == 1:
        return f"{array[0]:.{digits}g}"
    return f"{array.mean():.{digits}g} ± {array.std(ddof=1):.{digits - 1}g} (n={array.size})"
