"""The boundary checks: every bad value is refused with a message that names it; NaN and infinity never pass."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from efflab.validation import check_choice, check_finite, check_fraction, check_int, check_positive, check_range

ANYTHING = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.text(max_size=3), st.none()
)


def outcome(check, *args, **kwargs):
    """'ok' or the ValueError's message; any other exception fails the test."""
    try:
        check(*args, **kwargs)
    except ValueError as error:
        return str(error)
    return "ok"


@given(ANYTHING)
def test_check_positive_accepts_exactly_the_finite_positive_numbers(value):
    expected = (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
    result = outcome(check_positive, "lr", value)
    assert (result == "ok") == expected
    assert result == "ok" or result.startswith("lr=")


@given(ANYTHING)
def test_check_fraction_accepts_exactly_the_open_unit_interval(value):
    expected = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
    result = outcome(check_fraction, "ratio", value)
    assert (result == "ok") == expected and (result == "ok" or "ratio=" in result)


@given(ANYTHING, st.integers(-5, 5), st.integers(5, 10))
def test_check_range_is_closed_and_finite(value, low, high):
    number = isinstance(value, int | float) and not isinstance(value, bool)
    expected = number and math.isfinite(value) and low <= value <= high
    assert (outcome(check_range, "tau", value, low=low, high=high) == "ok") == expected


@given(ANYTHING)
def test_check_int_refuses_floats_and_bools(value):
    expected = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    assert (outcome(check_int, "steps", value, low=1) == "ok") == expected


def test_infinity_only_where_a_parameter_allows_it_by_name():
    with pytest.raises(ValueError, match=r"epochs=inf .* finite"):
        check_positive("epochs", math.inf)
    check_positive("time_limit", math.inf, allow_infinite=True)
    with pytest.raises(ValueError, match="not NaN"):
        check_finite("limit", math.nan, allow_infinite=True)
    with pytest.raises(ValueError, match=r"mode='fast' .* \('quick', 'full'\)"):
        check_choice("mode", "fast", ("quick", "full"))
