"""The multiplicative coordinate local search that tuned the paper's multipliers (arXiv 2507.03526, section 4).

The authors' ``local_search.py`` (branch ``local_search_rel_sch``) tunes a handful of positive numbers, the
*knobs* (each group's s_g and e_g, and optionally η and f), by repeating passes of:

1. put the knobs in a random order;
2. for each knob in turn, try the incumbent point with that knob multiplied by each factor in
   {0.2, 2/3, 3/2, 5} (four training runs, side by side), the other knobs unchanged;
3. if the best of the four has a lower final loss than the incumbent, it becomes the incumbent;
4. stop when a whole pass changed nothing, or after a cap on passes.

Multiplying (rather than adding) fits numbers that span decades, and the factors form a lattice: 2/3 then 3/2 is
back where one started, which is why the tuned values read 0.666, 0.444 = (2/3)^2 and 1.125. A point that was
already evaluated is looked up, never trained again (:class:`LocalSearch` keys points by their values rounded to
12 significant digits, so 2/3 * 3/2 lands on the key of 1).

:class:`LocalSearch` is ask-and-tell: :meth:`LocalSearch.ask` returns the next batch of points to evaluate,
:meth:`LocalSearch.tell` takes their losses. The caller decides how to run a batch (the experiment runs it through
:func:`efflab.parallel.run_all`, and steps two searches, dense and MoE, in lock step so one batch holds both).
:func:`local_search` drives one search with a plain function.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from efflab.relative_lr.groups import GROUPS
from efflab.relative_lr.schedule import RelativeSchedule, check_multiplier
from efflab.validation import check_int

FACTORS = (0.2, 2 / 3, 3 / 2, 5.0)
GLOBAL_KNOBS = ("base_lr", "final_fraction")


def point_key(point: Mapping[str, float]) -> tuple:
    """A hashable key of a point: knob names with values rounded to 12 significant digits."""
    return tuple(sorted((name, float(f"{value:.12g}")) for name, value in point.items()))


def _loss_value(loss) -> float:
    """A diverged trial (NaN, inf, None) counts as infinitely bad, so it never wins."""
    if loss is None:
        return math.inf
    loss = float(loss)
    return loss if math.isfinite(loss) else math.inf


@dataclass(frozen=True)
class Trial:
    """One evaluated point: which pass and knob proposed it (``knob=None`` for the start) and its loss."""

    index: int
    pass_index: int
    knob: str | None
    factor: float | None
    point: dict
    loss: float
    accepted: bool = False


class LocalSearch:
    """The search's state: incumbent, every trial so far, the pass in progress.

    ``allowed(point) -> bool`` rules out points outside the knobs' domain (they are skipped, not evaluated);
    ``max_evaluations`` caps the trials, the start included.
    """

    def __init__(
        self,
        start: Mapping[str, float],
        *,
        knobs: Sequence[str] | None = None,
        factors: Sequence[float] = FACTORS,
        max_passes: int = 30,
        max_evaluations: int | None = None,
        seed: int = 0,
        allowed: Callable[[dict], bool] | None = None,
    ):
        if not isinstance(start, Mapping) or not start:
            raise ValueError(f"start={start!r} is not allowed; expected a non-empty mapping knob -> value")
        for name, value in start.items():
            check_multiplier(f"start[{name!r}]", value)
        self.knobs = tuple(start) if knobs is None else tuple(knobs)
        unknown = [k for k in self.knobs if k not in start]
        if not self.knobs or unknown or len(set(self.knobs)) != len(self.knobs):
            raise ValueError(f"knobs={knobs!r} is not allowed; expected distinct names from {tuple(start)}")
        if not factors:
            raise ValueError("factors=() is not allowed; expected at least one factor")
        for factor in factors:
            check_multiplier("factor", factor)
            if factor == 1:
                raise ValueError("factor=1 is not allowed; it would propose the incumbent itself")
        check_int("max_passes", max_passes, low=1)
        if max_evaluations is not None:
            check_int("max_evaluations", max_evaluations, low=1)
        self.factors = tuple(float(f) for f in factors)
        self.max_passes = max_passes
        self.max_evaluations = max_evaluations
        self.allowed = allowed
        self.random = random.Random(seed)
        self.incumbent = {name: float(value) for name, value in start.items()}
        self.incumbent_loss = math.inf
        self.trials: list[Trial] = []
        self.seen: dict[tuple, float] = {}
        self.passes = 0  # passes started
        self.stopped: str | None = None  # "converged", "pass cap", "evaluation cap", "no new points"
        self._order: list[str] = []
        self._changed = False
        self._pending: list[tuple[str | None, float | None, dict]] = [(None, None, dict(self.incumbent))]

    @property
    def done(self) -> bool:
        return self.stopped is not None

    @property
    def evaluations(self) -> int:
        return len(self.trials)

    def _remaining(self) -> int | None:
        return None if self.max_evaluations is None else self.max_evaluations - self.evaluations

    def ask(self) -> list[dict]:
        """The next batch of new points (empty once the search has stopped)."""
        if self.done:
            return []
        if self._pending:  # the start, or a batch asked for and not yet told
            return [point for _, _, point in self._pending]
        while True:
            if self._remaining() is not None and self._remaining() <= 0:
                self.stopped = "evaluation cap"
                return []
            if not self._order:
                if self.passes > 0 and not self._changed:
                    self.stopped = "converged"
                    return []
                if self.passes >= self.max_passes:
                    self.stopped = "pass cap"
                    return []
                self._order = list(self.knobs)
                self.random.shuffle(self._order)
                self.passes += 1
                self._changed = False
            knob = self._order.pop(0)
            batch, keys = [], set()
            for factor in self.factors:
                point = {**self.incumbent, knob: self.incumbent[knob] * factor}
                key = point_key(point)
                if key in self.seen or key in keys or (self.allowed is not None and not self.allowed(point)):
                    continue
                keys.add(key)
                batch.append((knob, factor, point))
            remaining = self._remaining()
            if remaining is not None:
                batch = batch[:remaining]
            if batch:
                self._pending = batch
                return [point for _, _, point in batch]

    def tell(self, losses: Sequence[float]) -> None:
        """The losses of the batch :meth:`ask` returned, in its order."""
        if not self._pending:
            raise ValueError("tell() was called without a batch from ask(); call ask() first")
        if len(losses) != len(self._pending):
            raise ValueError(f"losses has {len(losses)} values; expected {len(self._pending)}, one per point")
        values = [_loss_value(loss) for loss in losses]
        best = min(range(len(values)), key=values.__getitem__)
        improves = values[best] < self.incumbent_loss
        for i, ((knob, factor, point), loss) in enumerate(zip(self._pending, values, strict=True)):
            self.seen[point_key(point)] = loss
            accepted = improves and i == best
            self.trials.append(Trial(len(self.trials), self.passes, knob, factor, dict(point), loss, accepted))
        if improves:
            start = self._pending[best][0] is None
            self.incumbent = dict(self._pending[best][2])
            self.incumbent_loss = values[best]
            self._changed = self._changed or not start
        self._pending = []

    def summary(self) -> dict:
        start = self.trials[0] if self.trials else None
        return {
            "best": dict(self.incumbent),
            "best_loss": self.incumbent_loss,
            "start_loss": None if start is None else start.loss,
            "evaluations": self.evaluations,
            "passes": self.passes,
            "stopped": self.stopped,
        }


def local_search(evaluate: Callable[[list[dict]], Sequence[float]], start: Mapping[str, float], **options):
    """Run a :class:`LocalSearch` to its end with ``evaluate(points) -> losses``; returns the search."""
    search = LocalSearch(start, **options)
    while True:
        points = search.ask()
        if not points:
            return search
        search.tell(list(evaluate(points)))


# ---- knobs of a relative schedule


def schedule_knobs(groups: Sequence[str], *, include_global: bool = False) -> tuple[str, ...]:
    """``group.start`` and ``group.end`` for each group (the paper's ten numbers for five groups), optionally
    preceded by ``base_lr`` and ``final_fraction``."""
    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"group={group!r} is not allowed; expected one of {GROUPS}")
    names = tuple(f"{group}.{end}" for group in groups for end in ("start", "end"))
    return (*GLOBAL_KNOBS, *names) if include_global else names


def schedule_point(schedule: RelativeSchedule, knobs: Sequence[str]) -> dict[str, float]:
    """The values of ``knobs`` in a schedule."""
    point = {}
    for knob in knobs:
        if knob in GLOBAL_KNOBS:
            point[knob] = float(getattr(schedule, knob))
        else:
            group, end = _split(knob)
            point[knob] = schedule.multiplier(group)[0 if end == "start" else 1]
    return point


def schedule_at(schedule: RelativeSchedule, point: Mapping[str, float]) -> RelativeSchedule:
    """``schedule`` with the knobs of ``point`` set (a knob not in ``point`` keeps its value)."""
    multipliers = schedule.as_dict()
    changes = {}
    for knob, value in point.items():
        if knob in GLOBAL_KNOBS:
            changes[knob] = float(value)
            continue
        group, end = _split(knob)
        start, finish = multipliers.get(group, (1.0, 1.0))
        multipliers[group] = (float(value), finish) if end == "start" else (start, float(value))
    from dataclasses import replace

    return replace(schedule.with_multipliers(multipliers), **changes)


def within_domain(point: Mapping[str, float]) -> bool:
    """Whether a schedule accepts the point: f at most 1 (every multiplier is already > 0)."""
    return point.get("final_fraction", 1.0) <= 1.0


def _split(knob: str) -> tuple[str, str]:
    group, _, end = knob.partition(".")
    if group not in GROUPS or end not in ("start", "end"):
        raise ValueError(
            f"knob={knob!r} is not allowed; expected 'group.start' or 'group.end' with a group of "
            f"{GROUPS}, or one of {GLOBAL_KNOBS}"
        )
    return group, end
