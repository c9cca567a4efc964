"""Checks at the library boundary: a bad value raises a ValueError that names the parameter, the value and what
is allowed, so a reader who mistypes a knob learns what to type instead of reading a stack trace."""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise a ValueError naming the parameter, the bad value and what is allowed."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; expected one of {tuple(allowed)}")


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """Raise a ValueError unless ``value`` is a number > 0 (or >= 0 with ``allow_zero``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is not allowed; expected a number {bound}")


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
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and ((0 <= value <= 1) if inclusive else (0 < value < 1))
    if not ok:
        span = "[0, 1]" if inclusive else "(0, 1)"
        raise ValueError(f"{name}={value!r} is not allowed; expected a number in {span}")
