"""The experiment contract of notebook 07 on a tiny budget: budgets, the summary, the paper table, the findings'
phrasing for each outcome, the figures and the playground."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

import efflab
from efflab.maximal_update import plots
from efflab.maximal_update.experiment import (
    MupBudget,
    findings,
    grid_move,
    paper_rows,
    run_experiment,
    transfer_verdict,
)
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


def _sweep_entry(curves, best_index, seed_ranges):
    """A made-up sweep summary of one parameterization: best LR 2^-8 moved by ``best_index`` grid steps."""
    lrs = {str(c): 2.0 ** (-8 + index) for c, index in zip(curves, best_index, strict=True)}
    span = max(best_index) - min(best_index)
    return {
        "best_lr": lrs,
        "best_loss": {str(c): 2.0 - 0.1 * i for i, c in enumerate(curves)},
        "best_loss_seeds": {str(c): [2.0 - 0.1 * i, 2.05 - 0.1 * i] for i, c in enumerate(curves)},
        "shift": {"range": span},
        "seed_ranges": list(seed_ranges),
    }


def made_up_summary(*, mup=0, sp=2, seeds=(0, 0), experts=0, granularity=2, slopes=None):
    """A summary as ``Result.summary`` writes it, with the best LR of each sweep moved by the given number of
    grid steps (μP and SP across width, μP across E and G) and each seed's own move in ``seeds``."""
    coordinate = {
        p: {"max_abs_hidden_slope": 0.1, "router_slope": 0.1, "max_abs_router_slope": 0.1, "output_slope": 0.1}
        for p in ("sp", "simple", "mup")
    }
    for parameterization, values in (slopes or {}).items():
        coordinate[parameterization].update(values)
    widths = [32, 64, 128]
    return {
        "coordinate_check": coordinate,
        "slope_step": 4,
        "coord_widths": [32, 256],
        "sweep_widths": widths,
        "fixed_width": 64,
        "seeds": [0, 1],
        "sweeps": {
            "width": {
                "mup": _sweep_entry(widths, (0, mup, 0), seeds),
                "sp": _sweep_entry(widths, (0, sp, sp), seeds),
            },
            "expansion": {"mup": _sweep_entry([2, 4, 8], (0, 0, experts), (experts,))},
            "granularity": {"mup": _sweep_entry([1, 2, 4], (0, granularity, 0), (granularity,))},
        },
    }


def _paragraph(text: str, start: str) -> str:
    return next(part for part in text.split("\n\n") if part.startswith(start))


NOISE = "moved by one grid step, which noise alone can do on this grid: this neither confirms nor rules out"
VERDICTS = {
    (0, "stays"): "stayed on the same grid point: agrees with the paper's claim that it stays.",
    (0, "moves"): "stayed on the same grid point: disagrees with the paper's claim that it moves.",
    (1, "stays"): f"{NOISE} the paper's claim that it stays.",
    (1, "moves"): f"{NOISE} the paper's claim that it moves.",
    (2, "stays"): "moved by 2 grid steps: disagrees with the paper's claim that it stays.",
    (2, "moves"): "moved by 2 grid steps: agrees with the paper's claim that it moves.",
    (3, "stays"): "moved by 3 grid steps: disagrees with the paper's claim that it stays.",
    (3, "moves"): "moved by 3 grid steps: agrees with the paper's claim that it moves.",
}
AXES = {  # the summary field that moves, the paragraph, its subject, and the paper's claim
    "width": ("mup", "**Width sweep**", "μP's best LR ", "stays"),
    "E": ("experts", "**Across E**", "The best LR ", "stays"),
    "G": ("granularity", "**Across G**", "The best LR ", "moves"),
}


@pytest.mark.parametrize("axis", list(AXES))
@pytest.mark.parametrize("steps", [0, 1, 2, 3])
def test_one_rule_for_a_best_lr_move_on_every_axis(axis, steps):
    """0 grid steps: stayed; 1: cannot be told from noise; 2 or more: moved; then agree or disagree with the
    paper's claim for that axis (stays for width and E, moves for G)."""
    change, start, subject, claim = AXES[axis]
    paragraph = _paragraph(findings(made_up_summary(**{change: steps})), start)
    assert subject + VERDICTS[steps, claim] in paragraph, paragraph


def test_sp_width_move_uses_the_same_rule_and_flags_a_sweep_that_cannot_separate():
    moved = _paragraph(findings(made_up_summary(mup=0, sp=2)), "**Width sweep**")
    assert "SP's moved by 2 grid steps: agrees with the paper's claim that it moves." in moved
    assert "too short or too narrow" not in moved
    close = _paragraph(findings(made_up_summary(mup=1, sp=1)), "**Width sweep**")
    assert "SP's moved by one grid step, which noise alone can do" in close
    assert "too short or too narrow" in close
    lost = made_up_summary(sp=0)
    lost["sweeps"]["width"]["sp"]["shift"]["range"] = None
    assert "SP's could not be found on every curve" in findings(lost)


@pytest.mark.parametrize("mup", [0, 1])
def test_the_seed_count_never_contradicts_the_seed_mean(mup):
    """Every seed alone moving two steps, while the seed mean stayed within one: the count says so plainly."""
    paragraph = _paragraph(findings(made_up_summary(mup=mup, seeds=(2, 3))), "**Width sweep**")
    assert "says the same" not in paragraph
    assert "μP's stayed for 0 of 2, moved one grid step for 0 and two or more for 2." in paragraph
    mixed = _paragraph(findings(made_up_summary(mup=mup, seeds=(0, 1, None))), "**Width sweep**")
    assert "μP's stayed for 1 of 2, moved one grid step for 1 and two or more for 0." in mixed


def test_findings_of_the_coordinate_check_and_of_one_seed():
    flat = findings(made_up_summary(slopes={"mup": {"max_abs_hidden_slope": 0.05}}))
    assert "everything flat" in flat
    assert "(One seed: read it as a hint.)" in _paragraph(flat, "**Across E**")
    assert "**not** flat" in findings(made_up_summary(slopes={"mup": {"max_abs_router_slope": 0.9}}))
    grows = findings(made_up_summary(slopes={"simple": {"router_slope": 0.8, "max_abs_hidden_slope": 0.25}}))
    assert "some hidden activation grows too" in grows


def test_findings_of_a_real_run(result):
    text = findings(result.summary())
    assert all(start in text for start in ("**Coordinate check**", "**Width sweep**", "**Across E**"))


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


def test_the_button_at_all_alphas_one_shows_the_fresh_check(result):
    """With every α = 1 the precomputed check is on screen; pressing the button must replace it by the fresh
    one, and say so. The precomputed table is doubled here, so the two cannot be confused."""
    doubled = result.coordinates.assign(l1=2 * result.coordinates["l1"])
    stale = dataclasses.replace(result, coordinates=doubled, live={})
    board = plots.playground(stale)
    assert board.controls["parameterization"].value == "mup" and "fresh" not in board.status.value
    assert "precomputed" in board.last[0].layout.title.text
    board.button.click()
    assert board.actions_run == 1 and ("mup", 1.0, 1.0, 1.0) in stale.live
    assert "fresh coordinate check" in board.status.value
    panel = board.last[0]
    assert "fresh check" in panel.layout.title.text
    fresh = stale.live[("mup", 1.0, 1.0, 1.0)]
    expected = plots.coordinate_figure(fresh)
    assert len(panel.data) == len(expected.data)
    for shown, wanted in zip(panel.data, expected.data, strict=True):
        assert np.array_equal(np.asarray(shown.y, float), np.asarray(wanted.y, float), equal_nan=True)
    board.controls["width"].value = 64  # any later render still shows the fresh check, and says so
    assert "fresh one from the button" in board.status.value
    assert "fresh check" in board.last[0].layout.title.text


def test_the_move_rule_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="steps=-1"):
        grid_move(-1)
    with pytest.raises(ValueError, match="claim='drifts'"):
        transfer_verdict(0, "drifts")
    assert grid_move(None) is None
    assert [grid_move(n) for n in (0, 1, 2, 5)] == ["stayed", "one step", "moved", "moved"]
