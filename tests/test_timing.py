"""Interleaved timing and the CPU unit."""

import time

import pytest
import torch

from efflab.timing import cpu_unit_seconds, interleaved_times, median_times


def test_works_take_turns_in_every_round():
    order = []
    times = interleaved_times(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1
    )
    assert order == ["a", "b"] * 4
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}


def test_a_slower_work_measures_slower():
    medians = median_times({"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, repeats=3, warmup=0)
    assert medians["slow"] >= 0.009 > medians["fast"]


@pytest.mark.parametrize(
    ("options", "named"), [(dict(repeats=0), "repeats"), (dict(repeats=1, warmup=-1), "warmup")]
)
def test_bad_arguments_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        interleaved_times({"a": lambda: None}, **options)
    with pytest.raises(ValueError, match="works"):
        interleaved_times({}, repeats=1)


def test_the_cpu_unit_is_a_positive_time_and_leaves_the_generator_alone():
    before = torch.random.get_rng_state()
    assert cpu_unit_seconds(steps=3) > 0  # a twentieth of the unit: the same code path, a second instead of twenty
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("steps", [0, 2, 4, 3.0, True])
def test_the_cpu_unit_refuses_a_step_count_it_cannot_split_in_thirds(steps):
    with pytest.raises(ValueError, match=r"\bsteps\b"):
        cpu_unit_seconds(steps=steps)
