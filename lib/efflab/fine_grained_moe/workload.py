"""The work of a budget of notebook 05, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

from efflab.fine_grained_moe.experiment import PATH_CHECK_LAYER, GranularityBudget, execution_path_check, fit_laws
from efflab.grid_workload import grid_like_results, grid_work
from efflab.workload import Work


def workload(budget: GranularityBudget) -> list[Work]:
    """The execution-path check (one MoE layer through three paths, on a CPU core whatever the run's device),
    the grid's trainings and evaluations (:func:`efflab.grid_workload.grid_work`), and the two laws' fits with
    their bootstrap (SciPy on one CPU core, on losses made up at the grid's size)."""
    if not isinstance(budget, GranularityBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a GranularityBudget")
    return [
        Work("execution-path check", 1, 1, lambda: execution_path_check(PATH_CHECK_LAYER), on="cpu", trains=False),
        *grid_work(budget),
        Work(
            "law fits and bootstrap",
            1,
            1,
            lambda: fit_laws(grid_like_results(budget), resamples=budget.bootstrap),
            on="cpu",
            trains=False,
        ),
    ]
