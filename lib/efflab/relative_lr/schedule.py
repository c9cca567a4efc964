r"""Relative learning-rate schedules: one warmup-and-cosine shape, a start and an end per component.

**The uniform schedule.** With base learning rate η, warmup W, run length T and final fraction f, step t (0-based,
the index of the update) uses

.. math::

    \eta(t) = \eta \cdot \frac{t + 1}{W} \quad (t < W), \qquad
    \eta(t) = \eta \left[ f + (1 - f) \, c(t) \right] \quad (t \geq W),

    c(t) = \tfrac12 \left( 1 + \cos\!\left( \pi \min\!\left(1, \tfrac{t - W}{T - W}\right) \right) \right),

exactly :func:`efflab.train.lr_factor` (and the authors' ``CosineScheduler``): the cosine reaches η·f at the
schedule's end point t = T (their ``final_lr_step = n_steps``) and stays there; the last update, t = T - 1, is one
cosine step above it.

**The relative schedule** (arXiv 2507.03526, section 3; code ``lizrd/train/scheduler.py`` on the authors'
``local_search_rel_sch`` branch). Each group g gets a *start multiplier* s_g and an *end fraction* e_g; the shape
c(t) is shared and only the two end points move:

.. math::

    \eta_g(t) = \eta \, s_g \, \frac{t + 1}{W} \quad (t < W), \qquad
    \eta_g(t) = \eta \left[ f e_g + (s_g - f e_g) \, c(t) \right] \quad (t \geq W).

So group g peaks at η·s_g right after warmup (t = W) and ends at η·f·e_g (t = T). With s_g = e_g = 1 every term
is the uniform one, operation for operation, so the two schedules agree bitwise (a test checks it). The
schedule decreases after warmup whenever s_g >= f·e_g; the paper's tuned values all satisfy that.

**Presets.** The authors' local search (section 4) on a 512-wide, 8-layer MoE found the MoE values below (config
``relativity_paper/local_search/relative.yaml``); the dense ones are from ``relativity_paper/dense/
large_relative.yaml``. The odd numbers are products of the search's factors: 0.666 = 2/3, 0.444 = (2/3)^2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from torch import nn

from efflab.relative_lr.groups import GROUPS, OTHER, RULES, partition
from efflab.train import TrainConfig
from efflab.validation import check_int


def check_multiplier(name: str, value) -> None:
    """A multiplier is a finite number > 0 (a zero start would freeze a group, a negative one would ascend)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; expected a finite number > 0")


def check_multipliers(multipliers: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``{group: (start, end)}`` with known groups and positive finite numbers; returns plain floats."""
    if not isinstance(multipliers, Mapping):
        raise ValueError(f"multipliers={multipliers!r} is not allowed; expected a mapping group -> (start, end)")
    checked = {}
    for group, pair in multipliers.items():
        if group not in GROUPS:
            raise ValueError(f"group={group!r} is not allowed; expected one of {GROUPS}")
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(f"multipliers[{group!r}]={pair!r} is not allowed; expected a (start, end) pair")
        check_multiplier(f"start multiplier of {group}", pair[0])
        check_multiplier(f"end multiplier of {group}", pair[1])
        checked[group] = (float(pair[0]), float(pair[1]))
    return checked


def check_final_fraction(value) -> None:
    """f, where the uniform cosine ends as a fraction of η: a number in (0, 1]."""
    check_multiplier("final_fraction", value)
    if value > 1:
        raise ValueError(f"final_fraction={value!r} is not allowed; expected a number in (0, 1]")


@dataclass(frozen=True)
class RelativeSchedule:
    """η, T, W, f and the multipliers ``((group, s_g, e_g), ...)``; a group not listed has s_g = e_g = 1.

    Frozen and made of plain numbers, so it is hashable and travels to worker processes. Build one with
    :func:`relative_schedule`, which takes the multipliers as a mapping.
    """

    base_lr: float
    steps: int
    warmup_steps: int
    final_fraction: float
    multipliers: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self):
        check_multiplier("base_lr", self.base_lr)
        check_int("steps", self.steps, low=1)
        check_int("warmup_steps", self.warmup_steps, low=0)
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps!r} is not allowed with steps={self.steps}; expected an integer "
                f"in [0, {self.steps - 1}], so that the cosine has at least one step"
            )
        check_final_fraction(self.final_fraction)
        pairs = {}
        for entry in self.multipliers:
            if not (isinstance(entry, tuple) and len(entry) == 3):
                raise ValueError(f"multipliers entry {entry!r} is not allowed; expected (group, start, end)")
            if entry[0] in pairs:
                raise ValueError(f"group={entry[0]!r} appears twice in multipliers; expected each group once")
            pairs[entry[0]] = (entry[1], entry[2])
        check_multipliers(pairs)

    # ---- the formula

    def multiplier(self, group: str) -> tuple[float, float]:
        """(s_g, e_g) of a group; 1, 1 for a group not listed and for ``other``."""
        if group != OTHER and group not in GROUPS:
            raise ValueError(f"group={group!r} is not allowed; expected one of {(*GROUPS, OTHER)}")
        for name, start, end in self.multipliers:
            if name == group:
                return start, end
        return 1.0, 1.0

    def lr(self, group: str, step: int) -> float:
        """η_g(t), written so that s_g = e_g = 1 repeats :func:`efflab.train.lr_factor` operation for operation."""
        check_int("step", step, low=0)
        start, end_multiplier = self.multiplier(group)
        if step < self.warmup_steps:
            return self.base_lr * (start * ((step + 1) / self.warmup_steps))
        decay_steps = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        end = self.final_fraction * end_multiplier
        return self.base_lr * (end + (start - end) * cosine)

    def peak_lr(self, group: str) -> float:
        """η·s_g, the rate right after warmup."""
        return self.base_lr * self.multiplier(group)[0]

    def final_lr(self, group: str) -> float:
        """η·f·e_g, where the cosine ends (t = T)."""
        return self.base_lr * (self.final_fraction * self.multiplier(group)[1])

    def curve(self, group: str) -> np.ndarray:
        """η_g(t) for every update t = 0 .. T - 1."""
        return np.array([self.lr(group, step) for step in range(self.steps)])

    # ---- what the training loop needs

    def train_config(self, **overrides) -> TrainConfig:
        """The uniform run of the same shape (η, T, W, f); ``overrides`` are other TrainConfig fields."""
        return TrainConfig(
            steps=self.steps,
            lr=self.base_lr,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.final_fraction,
            **overrides,
        )

    def param_groups(self, model: nn.Module, rules=RULES) -> list[dict]:
        """One optimiser group per non-empty component, each following its own ``lr_schedule``."""
        parameters = dict(model.named_parameters())
        return [
            {"params": [parameters[n] for n in names], "name": group, "lr_schedule": partial(self.lr, group)}
            for group, names in partition(model, rules).items()
            if names
        ]

    # ---- variations

    def as_dict(self) -> dict[str, tuple[float, float]]:
        return {group: (start, end) for group, start, end in self.multipliers}

    def with_multipliers(self, multipliers: Mapping[str, tuple[float, float]]) -> RelativeSchedule:
        return replace(self, multipliers=_as_entries(multipliers))

    def uniform(self) -> RelativeSchedule:
        """The same η, T, W, f with every multiplier 1."""
        return replace(self, multipliers=())

    def reset(self, group: str) -> RelativeSchedule:
        """This schedule with one group back at 1, 1 (the paper's removal ablation)."""
        return self.with_multipliers({g: pair for g, pair in self.as_dict().items() if g != group})


def _as_entries(multipliers: Mapping[str, tuple[float, float]]) -> tuple[tuple[str, float, float], ...]:
    """Canonical entries: groups in ``GROUPS`` order, those at exactly 1, 1 left out (they are the default)."""
    checked = check_multipliers(multipliers)
    return tuple((group, *checked[group]) for group in GROUPS if checked.get(group, (1.0, 1.0)) != (1.0, 1.0))


def relative_schedule(
    base_lr: float,
    steps: int,
    *,
    warmup_steps: int,
    final_fraction: float,
    multipliers: Mapping[str, tuple[float, float]] | None = None,
) -> RelativeSchedule:
    """A :class:`RelativeSchedule` from a ``{group: (start, end)}`` mapping (None: uniform)."""
    entries = _as_entries({} if multipliers is None else multipliers)
    return RelativeSchedule(base_lr, steps, warmup_steps, final_fraction, entries)


@dataclass(frozen=True)
class Preset:
    """Named multipliers with the η and f they were tuned with, and where they come from."""

    name: str
    multipliers: dict[str, tuple[float, float]] = field(default_factory=dict)
    base_lr: float | None = None
    final_fraction: float | None = None
    source: str = ""

    def __post_init__(self):
        check_multipliers(self.multipliers)
        if self.base_lr is not None:
            check_multiplier("base_lr", self.base_lr)
        if self.final_fraction is not None:
            check_final_fraction(self.final_fraction)


PAPER_MOE = Preset(
    "paper (MoE)",
    {
        "embedding": (5.0, 0.666),
        "attention": (1.0, 1.0),
        "router": (0.666, 1.0),
        "experts": (0.3, 1.125),
        "head": (0.666, 0.444),
    },
    base_lr=3e-3,
    final_fraction=0.0444,
    source="authors' config relativity_paper/local_search/relative.yaml (512-wide 8-layer MoE)",
)
PAPER_DENSE = Preset(
    "paper (dense)",
    {"embedding": (5.0, 0.667), "attention": (1.0, 0.2), "ffn": (1.0, 0.667), "head": (1.0, 0.444)},
    base_lr=5e-4,
    final_fraction=0.0667,
    source="authors' config relativity_paper/dense/large_relative.yaml (1536-wide 24-layer dense)",
)
UNIFORM = Preset("uniform", {}, source="every multiplier 1")


def paper_preset(architecture: str) -> Preset:
    """The paper's multipliers for ``"moe"`` or ``"dense"``."""
    if architecture not in ("moe", "dense"):
        raise ValueError(f"architecture={architecture!r} is not allowed; expected one of ('moe', 'dense')")
    return PAPER_MOE if architecture == "moe" else PAPER_DENSE
