"""Checks at the library boundary: a bad value raises a ValueError that names the parameter, the value and what
is allowed, so a reader who mistypes a knob learns what to type instead of reading a stack trace.

Numbers must be finite: NaN compares false with everything and infinity passes every lower bound, so either
would slip through a plain ``value > 0`` and fail much later, deep inside torch or NumPy. A parameter for which
infinity means something (a limit that may be switched off) says so by name with ``allow_infinite=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def is_number(value) -> bool:
    """A real number (int or float, not bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_finite(name: str, value, *, allow_infinite: bool = False) -> None:
    """Raise a ValueError unless ``value`` is a real number that is not NaN (nor infinite, by default)."""
    ok = is_number(value) and not math.isnan(value) and (allow_infinite or math.isfinite(value))
    if not ok:
        kind = "a number (infinity allowed), not NaN" if allow_infinite else "a finite number"
        raise ValueError(f"{name}={value!r} is not allowed; expected {kind}")


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise a ValueError naming the parameter, the bad value and what is allowed."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; expected one of {tuple(allowed)}")


def check_positive(name: str, value, *, allow_zero: bool = False, allow_infinite: bool = False) -> None:
    """Raise a ValueError unless ``value`` is a finite number > 0 (or >= 0 with ``allow_zero``)."""
    ok = is_number(value) and not math.isnan(value) and (allow_infinite or math.isfinite(value))
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        kind = "a number" if allow_infinite else "a finite number"
        raise ValueError(f"{name}={value!r} is not allowed; expected {kind} {bound}")


def check_range(name: str, value, *, low: float, high: float, low_open: bool = False, high_open: bool = False):
    """Raise a ValueError unless ``value`` is a finite number in the interval from ``low`` to ``high``."""
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is not allowed; expected a finite number in {span}")


def check_seed(seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed!r} is not allowed; expected an integer in [0, 2**32)")


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> None:
    """Raise a ValueError unless ``value`` is an integer in [low, high] (either bound may be open)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer in [{lo}, {hi}]")


def check_fraction(name: str, value, *, inclusive: bool = False) -> None:
    """Raise a ValueError unless ``value`` lies in (0, 1), or [0, 1] with ``inclusive``."""
    ok = is_number(value) and ((0 <= value <= 1) if inclusive else (0 < value < 1))
    if not ok:
        span = "[0, 1]" if inclusive else "(0, 1)"
        raise ValueError(f"{name}={value!r} is not allowed; expected a number in {span}")
