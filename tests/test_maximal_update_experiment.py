"""The experiment contract of notebook 07 on a tiny budget: budgets, the summary, the paper table, the findings'
phrasing for each outcome, the figures and the playground."""

import copy
import dataclasses
import math

import pandas as pd
import pytest

import efflab
from efflab.maximal_update import plots
from efflab.maximal_update.experiment import MupBudget, findings, paper_rows, run_experiment
from efflab.maximal_update.transfer import optimum_shift

TINY = dataclasses.replace(
    MupBudget.quick(),
    block_size=8,
    max_bytes=50_000,
    coord_widths=(32, 64),
    coord_seeds=2,
    coord_steps=2,
    coord_batch_size=2,
    slope_step=2,
    sweep_widths=(32, 64),
    sweep_log2_lrs=(-8, -6, -4),
    sweep_seeds=2,
    sweep_steps=3,
    sweep_batch_size=2,
    warmup_steps=1,
    eval_batches=1,
    fixed_width=32,
    expert_counts=(2, 4),
    granularities=(1, 2),
)


@pytest.fixture(scope="module")
def result():
    return run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), TINY)


def test_budgets_are_valid_and_quick_is_smaller_than_full():
    quick, full = MupBudget.quick(), MupBudget.full()
    assert quick.sweep_widths[-1] < full.sweep_widths[-1] and quick.sweep_steps < full.sweep_steps
    assert "MupBudget(" in quick.describe()
    assert quick.lrs[0] == pytest.approx(2.0**-9)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(coord_widths=(32, 48)), "coord_widths=48"),
        (dict(coord_widths=(64, 32)), "increasing"),
        (dict(sweep_log2_lrs=(-8, math.nan, -4)), "finite"),
        (dict(coord_lr=math.inf), "coord_lr"),
        (dict(slope_step=9), "slope_step"),
        (dict(granularities=(1, 3)), "granularity=3"),
        (dict(expert_counts=(2,)), "expert_counts"),
    ],
)
def test_bad_budgets_raise_value_errors(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **change)


def test_summary_covers_every_parameterization_and_sweep(result):
    summary = result.summary()
    assert set(summary["coordinate_check"]) == {"sp", "simple", "mup"}
    assert set(summary["sweeps"]) == {"width", "expansion", "granularity"}
    assert set(summary["sweeps"]["width"]) == {"sp", "mup"}
    width = summary["sweeps"]["width"]["mup"]
    assert width["curves"] == [32, 64] and len(width["seed_indices"]["32"]) == 2
    assert set(width["best_index"].values()) <= {0, 1, 2}
    assert len(result.width_sweep) == 2 * 2 * 3 * 2
    assert len(result.expert_sweep) == 2 * 3 and len(result.granularity_sweep) == 2 * 3
    rows = paper_rows(summary, None)
    assert isinstance(rows, pd.DataFrame) and len(rows) == 8 and "paper" in rows.columns
    assert "Coordinate check" in findings(summary)


def _with(summary, mup_range, sp_range, seed_ranges=(0, 0)):
    changed = copy.deepcopy(summary)
    changed["sweeps"]["width"]["mup"]["shift"]["range"] = mup_range
    changed["sweeps"]["width"]["sp"]["shift"]["range"] = sp_range
    changed["sweeps"]["width"]["mup"]["seed_ranges"] = list(seed_ranges)
    return changed


def test_findings_have_a_phrasing_for_each_outcome(result):
    summary = result.summary()
    assert "agrees with the paper" in findings(_with(summary, 0, 2))
    assert "too short or too narrow" in findings(_with(summary, 1, 1))
    assert "disagrees with the paper" in findings(_with(summary, 3, 0, (3, 3)))
    assert "Mixed across seeds" in findings(_with(summary, 1, 2, (0, 2)))
    flat = copy.deepcopy(summary)
    flat["coordinate_check"]["mup"].update(max_abs_hidden_slope=0.05, max_abs_router_slope=0.1, router_slope=0.1)
    assert "everything flat" in findings(flat)
    flat["coordinate_check"]["mup"]["max_abs_router_slope"] = 0.9
    assert "**not** flat" in findings(flat)
    shifted = copy.deepcopy(summary)
    shifted["sweeps"]["granularity"]["mup"]["shift"]["range"] = 0
    assert "does not show here" in findings(shifted)
    shifted["sweeps"]["granularity"]["mup"]["shift"]["range"] = 1
    assert "neither confirms nor rules out" in findings(shifted)
    shifted["sweeps"]["granularity"]["mup"]["shift"]["range"] = 2
    assert "granularity shifts the optimal LR" in findings(shifted)


def test_optimum_shift_counts_grid_steps():
    assert optimum_shift([3, 2, 1]) == {"first_to_last": -2, "range": 2, "monotone_down": True}
    assert optimum_shift([2, -1, 2])["range"] == 0
    assert optimum_shift([-1, -1])["range"] is None


def test_figures_and_playground(result):
    assert len(plots.coordinate_figure(result.coordinates).data) > 0
    assert len(plots.sweep_figure(result.width_sweep, "width", highlight=64).data) > 0
    with pytest.raises(ValueError, match="which"):
        plots.sweep_figure(result.width_sweep, "depth")
    assert len(plots.optimum_table(result)) == 2 * 2 + 2 + 2
    board = plots.playground(result)
    first = board.status.value
    board.controls["width"].value = 64
    assert board.status.value != first and "width 64" in board.status.value
    board.controls["parameterization"].value = "simple"
    assert "SP and μP only" in board.status.value
    board.controls["alpha_router"].value = 10.0
    assert "press the button" in board.status.value
    board.run_action()
    assert board.actions_run == 1 and ("simple", 1.0, 1.0, 10.0) in result.live
    assert "press the button" not in board.status.value
