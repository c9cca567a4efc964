"""The coordinate check: under muP no activation grows or shrinks with width after a few steps; under SP the
logits grow, under simpleP the router logits grow. Widths 32-512 (muP; SP and simpleP stop at 256), three seeds,
the slope at step 4 of log(mean over seeds of mean|x|) against log(width)."""

import math

import pandas as pd
import pytest

from efflab.maximal_update.coordinate_check import (
    CoordinateCheckTask,
    activation_names,
    coordinate_slopes,
    log_log_slope,
    records_table,
    run_coordinate_check,
)
from efflab.maximal_update.model import ModelFamily
from efflab.parallel import run_all

FAMILY = ModelFamily(base_width=32, n_layer=1, block_size=32, expansion=4)
WIDTHS = (32, 64, 128, 256, 512)
SEEDS = (0, 1, 2)
STEP = 4


@pytest.fixture(scope="module")
def slopes() -> pd.DataFrame:
    # muP must stay flat all the way to 512; SP's and simpleP's growth already shows by 256 (and 512 is the
    # costly width), so they stop there.
    tasks = [
        CoordinateCheckTask(
            FAMILY, width, parameterization, seed, steps=STEP, lr=1e-2, batch_size=4, block_size=32
        )
        for width in reversed(WIDTHS)
        for parameterization in ("sp", "simple", "mup")
        for seed in SEEDS
        if parameterization == "mup" or width <= 256
    ]
    table = records_table(tasks, run_all(run_coordinate_check, tasks, progress=False))
    assert set(table["activation"]) == set(activation_names(FAMILY))
    assert sorted(table[table["parameterization"] == "mup"]["width"].unique()) == list(WIDTHS)
    return coordinate_slopes(table, STEP).set_index(["parameterization", "activation"])["slope"]


def test_mup_keeps_every_hidden_activation_and_the_router_logits_flat(slopes):
    for activation in activation_names(FAMILY):
        if activation == "output logits":
            continue
        assert abs(slopes["mup", activation]) < 0.2, (activation, slopes["mup"].to_dict())


def test_sp_output_logits_grow_with_width(slopes):
    assert slopes["sp", "output logits"] > 0.3, slopes["sp"].to_dict()


def test_simple_p_router_logits_grow_while_mup_router_logits_do_not(slopes):
    assert slopes["simple", "router logits 1"] > 0.3, slopes["simple"].to_dict()
    assert abs(slopes["mup", "router logits 1"]) < 0.2


def test_records_one_value_per_forward_pass_and_pads_a_blow_up():
    task = CoordinateCheckTask(FAMILY, 32, "sp", 0, steps=3, batch_size=2, block_size=8)
    records = run_coordinate_check(task)
    assert set(records) == {*activation_names(FAMILY), "loss"}
    assert all(len(values) == 3 for values in records.values())
    assert all(math.isfinite(v) and v > 0 for v in records["router logits 1"])


def test_two_layers_record_every_block_separately():
    """The full budget's depth: every block's attention, router logits and MoE output get their own record, and
    the slopes come out for every one of them (their values are not asserted: two widths, two steps)."""
    family = FAMILY.with_changes(n_layer=2)
    names = activation_names(family)
    assert {"router logits 2", "MoE out 2", "attention 2"} <= set(names) and len(names) == 8
    tasks = [
        CoordinateCheckTask(family, width, parameterization, 0, steps=2, batch_size=2, block_size=8)
        for width in (32, 64)
        for parameterization in ("sp", "mup")
    ]
    results = [run_coordinate_check(task) for task in tasks]
    for records in results:
        assert set(records) == {*names, "loss"}
        for values in records.values():
            assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
        assert records["router logits 1"] != records["router logits 2"]
        assert records["MoE out 1"] != records["MoE out 2"]
    slopes = coordinate_slopes(records_table(tasks, results), 2)
    assert len(slopes) == 2 * len(names)
    assert set(slopes["activation"]) == set(names) and slopes["slope"].map(math.isfinite).all()


def test_slope_of_a_power_law_and_of_a_blow_up():
    widths = [32, 64, 128]
    assert log_log_slope(widths, [w**0.5 for w in widths]) == pytest.approx(0.5)
    assert log_log_slope(widths, [1.0, math.inf, 2.0]) == math.inf
    with pytest.raises(ValueError, match="two widths"):
        log_log_slope([32], [1.0])


def test_bad_tasks_raise_value_errors():
    with pytest.raises(ValueError, match="parameterization"):
        CoordinateCheckTask(FAMILY, 64, "standard", 0)
    with pytest.raises(ValueError, match="base_width"):
        CoordinateCheckTask(FAMILY, 80, "mup", 0)
    with pytest.raises(ValueError, match="lr"):
        CoordinateCheckTask(FAMILY, 64, "mup", 0, lr=math.nan)
    with pytest.raises(ValueError, match="block_size"):
        CoordinateCheckTask(FAMILY, 64, "mup", 0, block_size=64)
