"""What a full-mode run will cost, counted before it runs: the plan behind the course's full-mode estimates.

A paper package lists its budget's work in its ``workload.py`` as :class:`Work` items: ``runs`` independent
runs of ``steps`` steps each, every step like ``step``, a callable that performs one such step at full size.
:func:`step_cost` performs it once here, on one CPU core, and counts what it would cost on any machine:

* the operations PyTorch dispatches (views excepted): on a GPU each one is a kernel launch;
* the FLOPs of its matrix products and convolutions (PyTorch's ``FlopCounterMode``);
* its seconds on one core of this machine, for work that stays on CPU cores in full mode.

A :class:`Machine` prices those counts, as a range from its cheap to its dear assumptions. On the GPU, one
step of a run costs the host ``host_per_op`` per operation (Python, dispatch and launch, on one CPU core) and
the GPU ``kernel_floor`` per operation plus its FLOPs at ``gpu_flops``. Host and GPU overlap, except where
the step waits for a result (every training loop here reads its loss), so a step takes between the longer of
the two and their sum. Up to ``runs_per_gpu`` runs share the GPU, each in its own process on its own core:
their host time overlaps, while the GPU's busy time adds up. On CPU cores a step takes its measured seconds,
one run per core.

:func:`notebook_plan` prices one notebook's work on a lane of cores; :func:`course_plan` lays the notebooks
on lanes as ``python -m efflab.run_notebooks --jobs N`` runs them (a shared queue in teaching order) and
reports the longest lane, the GPU's busy time and the cores' busy time, each a floor on the course's wall time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from efflab.runtime import torch_threads
from efflab.validation import check_choice, check_int, check_positive

PLACES = ("gpu", "cpu")  # where a full-mode run's steps execute: the run's device, or CPU cores
# Operations that launch no kernel: views are checked through ``is_view``; these allocate or read metadata.
FREE_OPS = frozenset(
    torch.ops.aten.__getattr__(name).default
    for name in ("detach", "empty_like", "lift_fresh", "alias", "_unsafe_view", "_local_scalar_dense")
) | {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default}


@dataclass(frozen=True)
class Work:
    """``runs`` independent runs of ``steps`` steps each, every step like ``step()``, executed ``on`` the GPU
    (the run's device in full mode) or on CPU cores; ``side_by_side``: how many of the runs the experiment
    hands to the executor at once (None: all of them); ``trains``: whether each step is one optimiser step."""

    what: str
    runs: int
    steps: int
    step: Callable[[], object] = field(repr=False, compare=False)
    on: str = "gpu"
    side_by_side: int | None = None
    trains: bool = True  # every step is one optimiser step (False: a forward pass, an evaluation, a search)

    def __post_init__(self):
        check_int("runs", self.runs, low=1)
        check_int("steps", self.steps, low=1)
        check_choice("on", self.on, PLACES)
        if not callable(self.step):
            raise ValueError(f"step={self.step!r} is not allowed; expected a callable that performs one step")
        if self.side_by_side is not None:
            check_int("side_by_side", self.side_by_side, low=1)


@dataclass(frozen=True)
class StepCost:
    operations: int  # dispatched operations that launch a kernel on a GPU
    flops: int
    cpu_seconds: float  # one core of this machine


class _OperationCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.operations = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func in FREE_OPS):
            self.operations += 1
        return func(*args, **(kwargs or {}))


def step_cost(step: Callable[[], object], *, timed: bool = True, repeats: int = 3) -> StepCost:
    """Count one ``step()``'s operations and FLOPs (after one warm-up call, which creates what a first step
    creates, such as the optimiser's state) and, if ``timed``, time it on one core: the median of ``repeats``
    more calls (otherwise ``cpu_seconds`` is nan). Each call is one more step of whatever state it changes."""
    if not callable(step):
        raise ValueError(f"step={step!r} is not allowed; expected a callable")
    check_int("repeats", repeats, low=1)
    with torch_threads(1):
        step()
        counter, flops = _OperationCounter(), FlopCounterMode(display=False)
        with counter, flops:
            step()
        times = []
        for _ in range(repeats if timed else 0):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2] if times else math.nan
    return StepCost(counter.operations, flops.get_total_flops(), seconds)


def work_cost(work: Work, machine: Machine | None = None) -> StepCost:
    """:func:`step_cost` of ``work``'s step, timed only where it runs on CPU cores of ``machine``."""
    return step_cost(work.step, timed=work.on == "cpu" or (machine is not None and not machine.gpu))


def training_step(
    model: nn.Module,
    batch: Callable[[], tuple[torch.Tensor, ...]],
    loss: Callable[..., torch.Tensor],
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
) -> Callable[[], float]:
    """One optimiser step as the course's training loops take it: AdamW, zero_grad, forward and backward,
    step, and the loss read back. ``loss(model, *batch())`` returns the scalar loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step() -> float:
        model.train()
        value = loss(model, *batch())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        return value.item()

    return step


def forward_step(model: nn.Module, batch: Callable[[], tuple[torch.Tensor, ...]]) -> Callable[[], object]:
    """One evaluation pass: the model in eval mode on ``batch()`` without gradients."""

    def step():
        model.eval()
        with torch.no_grad():
            return model(*batch())

    return step


@dataclass(frozen=True)
class Machine:
    """The full-mode machine and the prices of its work, each a (cheap, dear) pair. ``gpu=False``: a machine
    without one, where the work meant for the GPU runs on CPU cores too (quick mode's laptop)."""

    cores: int = 16
    gpu: bool = True
    runs_per_gpu: int = 8
    host_per_op: tuple[float, float] = (6e-6, 12e-6)  # s of one core per dispatched operation
    kernel_floor: tuple[float, float] = (3e-6, 5e-6)  # s the GPU spends on the smallest kernel
    gpu_flops: tuple[float, float] = (150e12, 60e12)  # FLOP/s of small TF32 products on an H200 (peak ~495)
    cpu_speed: tuple[float, float] = (1.25, 0.8)  # a core there against one core here
    notebook_overhead: tuple[float, float] = (15.0, 25.0)  # s: kernel start, imports, figures, tables

    def __post_init__(self):
        check_int("cores", self.cores, low=1)
        check_int("runs_per_gpu", self.runs_per_gpu, low=1)
        if not isinstance(self.gpu, bool):
            raise ValueError(f"gpu={self.gpu!r} is not allowed; expected True or False")
        for name in ("host_per_op", "kernel_floor", "gpu_flops", "cpu_speed", "notebook_overhead"):
            pair = getattr(self, name)
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError(f"{name}={pair!r} is not allowed; expected a (cheap, dear) pair")
            for value in pair:
                check_positive(name, value)


@dataclass(frozen=True)
class WorkPlan:
    work: Work
    cost: StepCost
    seconds: tuple[float, float]  # wall time on the lane
    gpu_seconds: tuple[float, float]  # time the GPU is busy
    core_seconds: tuple[float, float]  # time the cores are busy


def price(work: Work, cost: StepCost, machine: Machine, cores: int) -> WorkPlan:
    """Wall, GPU and core seconds of ``work`` on a lane of ``cores`` cores of ``machine``."""
    check_int("cores", cores, low=1)
    on_gpu = work.on == "gpu" and machine.gpu
    at_once = min(work.runs, cores, work.side_by_side or work.runs)
    if on_gpu:
        at_once = min(at_once, machine.runs_per_gpu)
    rounds = math.ceil(work.runs / at_once)
    seconds, gpu, busy = [], [], []
    for end in (0, 1):
        if on_gpu:
            host = cost.operations * machine.host_per_op[end]
            device = cost.operations * machine.kernel_floor[end] + cost.flops / machine.gpu_flops[end]
            per_step = max(host, device) if end == 0 else host + device
            total_device = work.runs * work.steps * device
            seconds.append(max(rounds * work.steps * per_step, total_device))
            gpu.append(total_device)
            busy.append(work.runs * work.steps * per_step)
        else:
            per_step = cost.cpu_seconds / machine.cpu_speed[end]
            seconds.append(rounds * work.steps * per_step)
            gpu.append(0.0)
            busy.append(work.runs * work.steps * per_step)
    return WorkPlan(work, cost, tuple(seconds), tuple(gpu), tuple(busy))


@dataclass(frozen=True)
class NotebookPlan:
    notebook: str
    works: tuple[WorkPlan, ...]
    seconds: tuple[float, float]
    gpu_seconds: tuple[float, float]
    core_seconds: tuple[float, float]


def notebook_plan(
    notebook: str, works: Sequence[Work], machine: Machine, cores: int | None = None, costs=None
) -> NotebookPlan:
    """Price a notebook's work, one item after another, on a lane of ``cores`` (default: all the machine's)."""
    cores = machine.cores if cores is None else cores
    costs = costs if costs is not None else [work_cost(work, machine) for work in works]
    plans = tuple(price(work, cost, machine, cores) for work, cost in zip(works, costs, strict=True))

    def total(name, end):
        return sum(getattr(plan, name)[end] for plan in plans)

    overhead = machine.notebook_overhead
    seconds = tuple(overhead[end] + total("seconds", end) for end in (0, 1))
    gpu = tuple(total("gpu_seconds", end) for end in (0, 1))
    busy = tuple(overhead[end] + total("core_seconds", end) for end in (0, 1))
    return NotebookPlan(notebook, plans, seconds, gpu, busy)


@dataclass(frozen=True)
class CoursePlan:
    notebooks: tuple[NotebookPlan, ...]
    jobs: int
    lanes: tuple[tuple[str, ...], ...]  # the notebooks each lane runs, in order
    lane_seconds: tuple[tuple[float, float], ...]
    gpu_seconds: tuple[float, float]
    core_seconds: tuple[float, float]
    cores: int

    @property
    def seconds(self) -> tuple[float, float]:
        """The longest lane, or the GPU's or the cores' busy time where that is longer."""
        return tuple(
            max(
                max(lane[end] for lane in self.lane_seconds),
                self.gpu_seconds[end],
                self.core_seconds[end] / self.cores,
            )
            for end in (0, 1)
        )


def course_plan(
    works: dict[str, Sequence[Work]], machine: Machine = Machine(), jobs: int = 1, costs=None
) -> CoursePlan:
    """Lay the notebooks (``works``: notebook -> its work, in teaching order) on ``jobs`` lanes of equal cores,
    each lane taking the next notebook when it is free, and price the course (its dear end decides the order)."""
    check_int("jobs", jobs, low=1, high=machine.cores)
    cores = machine.cores // jobs
    costs = costs or {name: [work_cost(work, machine) for work in items] for name, items in works.items()}
    plans = [notebook_plan(name, items, machine, cores, costs[name]) for name, items in works.items()]
    lanes: list[list[NotebookPlan]] = [[] for _ in range(jobs)]
    finish = [0.0] * jobs
    for plan in plans:
        lane = finish.index(min(finish))
        lanes[lane].append(plan)
        finish[lane] += plan.seconds[1]

    def lane_total(lane, end):
        return sum(plan.seconds[end] for plan in lane)

    return CoursePlan(
        notebooks=tuple(plans),
        jobs=jobs,
        lanes=tuple(tuple(plan.notebook for plan in lane) for lane in lanes),
        lane_seconds=tuple((lane_total(lane, 0), lane_total(lane, 1)) for lane in lanes),
        gpu_seconds=tuple(sum(plan.gpu_seconds[end] for plan in plans) for end in (0, 1)),
        core_seconds=tuple(sum(plan.core_seconds[end] for plan in plans) for end in (0, 1)),
        cores=machine.cores,
    )
