"""The work of a budget of notebook 06, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

from efflab.grid_workload import grid_like_results, grid_work
from efflab.joint_moe.experiment import ExpertCountBudget, fit_joint_law
from efflab.workload import Work


def workload(budget: ExpertCountBudget) -> list[Work]:
    """The grid's trainings and evaluations, dense and with each expert count (the grid of any lm_grid budget,
    :func:`efflab.grid_workload.grid_work`), and the joint law's fit with its bootstrap (SciPy on one
    CPU core, on losses made up at the grid's size)."""
    if not isinstance(budget, ExpertCountBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected an ExpertCountBudget")
    return [
        *grid_work(budget),
        Work(
            "joint law fit and bootstrap",
            1,
            1,
            lambda: fit_joint_law(grid_like_results(budget), resamples=budget.bootstrap),
            on="cpu",
            trains=False,
        ),
    ]
