"""The multiplicative local search: keeps the incumbent, never repeats a point, walks to an optimum."""

import math

import pytest

from efflab.relative_lr.schedule import relative_schedule
from efflab.relative_lr.search import (
    FACTORS,
    LocalSearch,
    local_search,
    point_key,
    schedule_at,
    schedule_knobs,
    schedule_point,
)


def counting(objective):
    calls = []

    def evaluate(points):
        calls.extend(point_key(p) for p in points)
        return [objective(p) for p in points]

    return evaluate, calls


def log_bowl(target):
    return lambda p: sum(math.log(p[k] / target[k]) ** 2 for k in target)


def test_the_incumbent_stays_when_no_trial_improves():
    start = {"a": 1.0, "b": 2.0}
    evaluate, calls = counting(log_bowl(start))  # the start is the optimum
    search = local_search(evaluate, start, seed=3)
    assert search.incumbent == start
    assert search.stopped == "converged" and search.passes == 1
    assert len(calls) == 1 + 2 * len(FACTORS)
    assert not any(t.accepted for t in search.trials[1:])


def test_no_point_is_evaluated_twice_and_the_optimum_on_the_lattice_is_found():
    target = {"a": 5.0, "b": (2 / 3) ** 2, "c": 1.5 * 0.2}
    evaluate, calls = counting(log_bowl(target))
    search = local_search(evaluate, {"a": 1.0, "b": 1.0, "c": 1.0}, seed=0)
    assert len(calls) == len(set(calls)) == search.evaluations
    assert search.stopped == "converged"
    for knob, value in target.items():
        assert search.incumbent[knob] == pytest.approx(value, rel=1e-9)
    assert search.incumbent_loss == pytest.approx(0.0, abs=1e-18)


def test_improvements_are_kept_one_knob_at_a_time():
    evaluate, _ = counting(log_bowl({"a": 5.0, "b": 1.0}))
    search = local_search(evaluate, {"a": 1.0, "b": 1.0}, seed=1, max_passes=1)
    accepted = [t for t in search.trials if t.accepted and t.knob is not None]
    assert [t.knob for t in accepted] == ["a"] and accepted[0].factor == 5.0
    assert search.incumbent == {"a": 5.0, "b": 1.0}
    # b's trials were proposed around the new incumbent (a = 5) when b came after a, around a = 1 otherwise.
    losses = [t.loss for t in search.trials]
    assert min(losses) == search.incumbent_loss


def test_caps_on_passes_and_evaluations():
    evaluate, calls = counting(log_bowl({"a": 100.0}))
    assert local_search(evaluate, {"a": 1.0}, max_passes=2).stopped == "pass cap"
    evaluate, calls = counting(log_bowl({"a": 100.0, "b": 0.01}))
    search = local_search(evaluate, {"a": 1.0, "b": 1.0}, max_evaluations=6)
    assert search.evaluations == len(calls) == 6 and search.stopped == "evaluation cap"


def test_the_order_of_knobs_is_random_but_seeded():
    def order(seed):
        evaluate, _ = counting(lambda p: 1.0)
        search = local_search(evaluate, {k: 1.0 for k in "abcdef"}, seed=seed)
        return [t.knob for t in search.trials[1 :: len(FACTORS)]]

    assert order(0) == order(0)
    assert sorted(order(0)) == list("abcdef")
    assert any(order(s) != order(0) for s in range(1, 5))


def test_diverged_trials_never_win_and_disallowed_points_are_skipped():
    def evaluate(points):
        return [float("nan") if p["a"] > 1 else p["a"] for p in points]

    search = local_search(evaluate, {"a": 1.0}, allowed=lambda p: p["a"] >= 0.5)
    assert search.incumbent["a"] == pytest.approx(2 / 3)
    assert all(t.point["a"] >= 0.5 for t in search.trials)


def test_ask_and_tell_must_alternate():
    search = LocalSearch({"a": 1.0})
    with pytest.raises(ValueError, match="losses"):
        search.tell([1.0, 2.0])
    search.tell([1.0] * len(search.ask()))
    search.ask()
    search.tell([2.0] * len(FACTORS))
    search.ask()  # a new knob pass or the end
    assert search.done


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start": {}}, "start"),
        ({"start": {"a": 0.0}}, "start"),
        ({"start": {"a": 1.0}, "factors": (1.0, 2.0)}, "factor"),
        ({"start": {"a": 1.0}, "factors": (-2.0,)}, "factor"),
        ({"start": {"a": 1.0}, "knobs": ("b",)}, "knobs"),
        ({"start": {"a": 1.0}, "max_passes": 0}, "max_passes"),
    ],
)
def test_bad_settings_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LocalSearch(**kwargs)


def test_knobs_read_and_write_a_schedule():
    schedule = relative_schedule(1e-3, 20, warmup_steps=2, final_fraction=0.1, multipliers={"head": (2.0, 0.5)})
    knobs = schedule_knobs(("embedding", "head"), include_global=True)
    assert knobs == ("base_lr", "final_fraction", "embedding.start", "embedding.end", "head.start", "head.end")
    point = schedule_point(schedule, knobs)
    assert point["head.start"] == 2.0 and point["embedding.end"] == 1.0 and point["base_lr"] == 1e-3
    changed = schedule_at(schedule, {**point, "embedding.start": 5.0, "final_fraction": 0.05})
    assert changed.multiplier("embedding") == (5.0, 1.0) and changed.multiplier("head") == (2.0, 0.5)
    assert changed.final_fraction == 0.05
    assert schedule_at(schedule, point) == schedule
    with pytest.raises(ValueError, match="knob"):
        schedule_at(schedule, {"head.middle": 1.0})
