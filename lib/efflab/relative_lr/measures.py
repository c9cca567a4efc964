r"""What the notebook measures: how big each component's updates are, and how many steps a schedule saves.

**Relative update size** (the paper's Figure 1 motivation: components change at different paces). For group g
with weights W_g (all its tensors together) and the change ΔW_g made by one optimiser step,

.. math::

    u_g(t) = \frac{\lVert W_g(t+1) - W_g(t) \rVert_F}{\lVert W_g(t+1) \rVert_F}.

:class:`UpdateTracker` measures it every ``every`` steps from inside the training loop: its loss function keeps a
copy of the weights before update t and compares at the next call, which sees the weights after it.

**Speed-up at equal steps** (the paper's "up to 23% faster"; our reading, *inferred*: the share of the run the
baseline needs that the schedule can skip). Both runs train T steps. If the schedule's loss curve reaches the
uniform run's final loss L_u(T) at step n_s, the speed-up is

.. math::

    100 \, (1 - n_s / T) \;\%.

If it never does, the same measure is taken the other way and reported negative: with n_u the step at which the
uniform run reaches the schedule's final loss, -100 (1 - n_u / T) %. Curves are evaluated every few steps and
read with linear interpolation between evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from efflab.train import cross_entropy
from efflab.validation import check_finite, check_int


class UpdateTracker:
    """A loss function for :func:`efflab.train.fit` that also records u_g(t) every ``every`` updates.

    ``groups`` maps a group name to its parameters. After training, ``steps`` holds the 0-based indices of the
    measured updates and ``sizes[group]`` the matching u_g values.
    """

    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], every: int, loss_fn=cross_entropy):
        check_int("every", every, low=1)
        self.groups = {name: list(params) for name, params in groups.items() if len(params) > 0}
        self.every = every
        self.loss_fn = loss_fn
        self.calls = 0
        self.before: dict[str, list[Tensor]] | None = None
        self.steps: list[int] = []
        self.sizes: dict[str, list[float]] = {name: [] for name in self.groups}

    @torch.no_grad()
    def _measure(self) -> None:
        for name, params in self.groups.items():
            change = sum(float((p - old).pow(2).sum()) for p, old in zip(params, self.before[name], strict=True))
            size = sum(float(p.pow(2).sum()) for p in params)
            self.sizes[name].append(math.sqrt(change) / max(math.sqrt(size), 1e-30))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        step = self.calls  # this call computes the loss of update ``step``
        self.calls += 1
        if self.before is not None:
            self._measure()
            self.steps.append(step - 1)
            self.before = None
        if step % self.every == 0:
            with torch.no_grad():
                self.before = {name: [p.detach().clone() for p in ps] for name, ps in self.groups.items()}
        return self.loss_fn(model, x, y)

    def as_dict(self) -> dict:
        return {"steps": list(self.steps), "sizes": {name: list(v) for name, v in self.sizes.items()}}


def loss_curve(steps: Sequence[float], losses: Sequence[float], name: str = "losses") -> tuple[np.ndarray, ...]:
    """A curve as two arrays: finite, increasing steps and as many finite losses (``name`` says which curve)."""
    try:
        steps, losses = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"steps and {name} must be sequences of numbers") from None
    if steps.shape != losses.shape or steps.ndim != 1 or len(steps) == 0:
        raise ValueError(f"steps and {name} must be 1-D and of one length; got {steps.shape} and {losses.shape}")
    if not (np.all(np.isfinite(steps)) and np.all(np.diff(steps) > 0)):
        raise ValueError(f"steps={steps.tolist()!r} is not allowed; expected finite, increasing steps")
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"{name} must be finite; got {losses.tolist()!r}")
    return steps, losses


def steps_to_reach(steps: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The first step at which a loss curve is at or below ``target`` (linear between points), or None."""
    steps, losses = loss_curve(steps, losses)
    check_finite("target", target)
    below = np.nonzero(losses <= target)[0]
    if len(below) == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
    return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))


def speedup_percent(
    steps: Sequence[float], schedule_losses: Sequence[float], uniform_losses: Sequence[float], total_steps: int
) -> float:
    """Signed speed-up of a schedule over the uniform run at equal steps (see the module docstring)."""
    check_int("total_steps", total_steps, low=1)
    loss_curve(steps, schedule_losses, "schedule_losses")
    loss_curve(steps, uniform_losses, "uniform_losses")
    reached = steps_to_reach(steps, schedule_losses, float(uniform_losses[-1]))
    if reached is not None:
        return 100.0 * (1.0 - reached / total_steps)
    behind = steps_to_reach(steps, uniform_losses, float(schedule_losses[-1]))
    return -100.0 * (1.0 - (behind if behind is not None else total_steps) / total_steps)
