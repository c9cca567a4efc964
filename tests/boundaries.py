"""What the bad-input tests (``test_boundaries*.py``) share: the strategies that mix sensible values with bad
ones, hypothesis's settings for them, and the one check every test makes.

The contract under test: a public function or budget either works, or raises a ``ValueError`` whose message
blames the parameter by name ("lr=inf is not allowed", "features['N'] contains NaN"); any other exception, or a
``ValueError`` that blames nothing, fails the test.
"""

import math
import re

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 1000), st.none(), st.booleans()
)
SMALL_INTS = st.one_of(st.integers(-3, 40), st.floats(-1, 5), st.none(), st.booleans())
FRACTIONS = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0]), st.none())
POISON = st.sampled_from([None, math.nan, math.inf, -math.inf])

# A message blames a parameter when it starts a phrase about it: "lr=inf is not allowed", "features['N'] contains".
BLAME = r"(=|\[| contains| has| have| holds| lacks| is | cannot)"


def valid_or_named(make, *names, blame: str = ""):
    """Call ``make()``; a ValueError must name one of ``names`` (as a word, followed by ``blame``, a pattern);
    any other exception fails the test."""
    try:
        return make()
    except ValueError as error:
        assert any(re.search(rf"\b{re.escape(name)}{blame}", str(error)) for name in names), str(error)
        return None
