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
on lanes as ``python -m efflab.run_notebooks --jobs N`` runs them (a shared queue, in the order given), slowing
the notebooks side by side while together they ask for more than the one GPU, and reports when the last lane
ends, beside the GPU's and the cores' busy time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from efflab.models.moe import moe_layers
from efflab.runtime import torch_threads
from efflab.train import TrainConfig, cross_entropy, make_optimizer
from efflab.validation import check_choice, check_int, check_positive

PLACES = ("gpu", "cpu")  # where a full-mode run's steps execute: the run's device, or CPU cores
# Operations that launch no kernel: views are checked through ``is_view``; these allocate or read metadata.
FREE_OPS = frozenset(
    torch.ops.aten.__getattr__(name).default
    for name in ("detach", "empty_like", "lift_fresh", "alias", "_unsafe_view", "_local_scalar_dense")
) | {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default}


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """``torch._grouped_mm``, the MoE layer's one-launch expert products, which ``FlopCounterMode`` does not
    count: rows of ``a`` meet the matrix of their group in ``b``; 2 FLOPs per multiply-add."""
    if len(a_shape) == 2 and len(b_shape) == 3:  # (tokens, k) with one (k, n) per expert
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 2 and len(b_shape) == 2:  # (k, tokens) @ (tokens, n), tokens split by group
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(a_shape) * b_shape[-1]  # a batch of products


EXTRA_FLOPS = {torch.ops.aten._grouped_mm: _grouped_mm_flops}


@dataclass(frozen=True)
class Work:
    """``runs`` independent runs of ``steps`` steps each, every step like ``step()``, executed ``on`` the GPU
    (the run's device in full mode) or on CPU cores; ``side_by_side``: how many of the runs the experiment
    hands to the executor at once (None: all of them); ``trains``: whether each step is one optimiser step;
    ``pool``: a name shared by neighbouring items that the experiment hands to the executor in one call."""

    what: str
    runs: int
    steps: int
    step: Callable[[], object] = field(repr=False, compare=False)
    on: str = "gpu"
    side_by_side: int | None = None
    trains: bool = True  # every step is one optimiser step (False: a forward pass, an evaluation, a search)
    pool: str | None = None  # neighbouring items of one pool go to the executor together

    def __post_init__(self):
        check_int("runs", self.runs, low=1)
        check_int("steps", self.steps, low=1)
        check_choice("on", self.on, PLACES)
        if not callable(self.step):
            raise ValueError(f"step={self.step!r} is not allowed; expected a callable that performs one step")
        if self.side_by_side is not None:
            check_int("side_by_side", self.side_by_side, low=1)
        if self.pool is not None and not isinstance(self.pool, str):
            raise ValueError(f"pool={self.pool!r} is not allowed; expected a name or None")


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


def step_cost(
    step: Callable[[], object], *, counted: bool = True, timed: bool = True, repeats: int = 3
) -> StepCost:
    """One ``step()``'s cost. A first call warms up (it creates what a first step creates, such as the
    optimiser's state); then, if ``counted``, one call counts the operations and FLOPs (otherwise both are 0),
    and, if ``timed``, the median of ``repeats`` calls gives the seconds on one core (one call where the warm-up
    took over a second; otherwise ``cpu_seconds`` is nan). Each call is one more step of the state it changes."""
    if not callable(step):
        raise ValueError(f"step={step!r} is not allowed; expected a callable")
    check_int("repeats", repeats, low=1)
    operations = flops = 0
    times = []
    with torch_threads(1):
        start = time.perf_counter()
        step()
        if time.perf_counter() - start > 1.0:
            repeats = 1
        if counted:
            counter, counting = _OperationCounter(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
            with counter, counting:
                step()
            operations, flops = counter.operations, counting.get_total_flops()
        for _ in range(repeats if timed else 0):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2] if times else math.nan
    return StepCost(operations, flops, seconds)


def work_cost(work: Work, machine: Machine | None = None) -> StepCost:
    """:func:`step_cost` of ``work``'s step: counted where it runs on the GPU of ``machine`` (default: the
    full-mode machine), timed where it runs on CPU cores."""
    on_gpu = work.on == "gpu" and (machine or Machine()).gpu
    return step_cost(work.step, counted=on_gpu, timed=not on_gpu)


def training_step(
    model: nn.Module,
    batch: Callable[[], tuple[torch.Tensor, ...]],
    loss: Callable[..., torch.Tensor] = cross_entropy,
    *,
    config: TrainConfig | None = None,
    param_groups: list[dict] | None = None,
) -> Callable[[], float]:
    """One optimiser step as :func:`efflab.train.fit` takes it with ``config`` and ``param_groups``: its
    optimiser (fused AdamW by default), the loss checked to be finite, zero_grad, backward, the gradient clipped
    if the config says so, step. ``loss(model, *batch())`` is the loss."""
    config = TrainConfig(steps=1) if config is None else config
    optimizer = make_optimizer(model, config, param_groups)

    def step() -> float:
        model.train()
        value = loss(model, *batch())
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss became {value.item()}")
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
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


def on_gpu_path(model: nn.Module) -> nn.Module:
    """``model`` with every MoE layer pinned to the execution path ``"auto"`` takes on a GPU: counted on a CPU,
    ``"auto"`` would take the CPU's (for token choice a loop over the experts, one product each)."""
    for layer in moe_layers(model):
        layer.config = replace(layer.config, implementation=layer.config.resolved_implementation)
    return model


@dataclass(frozen=True)
class Machine:
    """The full-mode machine and the prices of its work, each a (cheap, dear) pair. ``gpu=False``: a machine
    without one, where the work meant for the GPU runs on CPU cores too (quick mode's laptop)."""

    cores: int = 16
    gpu: bool = True
    runs_per_gpu: int = 8
    host_per_op: tuple[float, float] = (6e-6, 12e-6)  # s of one core per dispatched operation
    kernel_floor: tuple[float, float] = (3e-6, 5e-6)  # s the GPU spends on the smallest kernel
    gpu_flops: tuple[float, float] = (250e12, 120e12)  # TF32 products: 50 % and 25 % of an H200's 495 TFLOP/s
    cpu_speed: tuple[float, float] = (1.25, 0.8)  # a core there against one core here
    notebook_overhead: tuple[float, float] = (20.0, 35.0)  # s: kernel, imports, workers and CUDA start, figures

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
    """The price of some work on a lane; each figure a (cheap, dear) pair of seconds."""

    works: tuple[Work, ...]
    costs: tuple[StepCost, ...]
    seconds: tuple[float, float]  # wall time on the lane
    gpu_seconds: tuple[float, float]  # time the GPU is busy
    core_seconds: tuple[float, float]  # time the cores are busy


def step_seconds(work: Work, cost: StepCost, machine: Machine, end: int) -> tuple[float, float]:
    """One step's seconds at the ``end`` (0 cheap, 1 dear) of the prices: on its core, and on the GPU."""
    if work.on == "gpu" and machine.gpu:
        host = cost.operations * machine.host_per_op[end]
        device = cost.operations * machine.kernel_floor[end] + cost.flops / machine.gpu_flops[end]
        return (max(host, device) if end == 0 else host + device), device
    return cost.cpu_seconds / machine.cpu_speed[end], 0.0


def price(works: Sequence[Work], costs: Sequence[StepCost], machine: Machine, cores: int) -> WorkPlan:
    """Wall, GPU and core seconds of ``works`` handed to the executor together, on a lane of ``cores`` cores.

    The executor runs ``at_once`` runs side by side (one per core, at most ``runs_per_gpu`` on the GPU, at most
    what ``side_by_side`` allows) and a worker takes the next run when it is free, which is simulated here; the
    GPU's busy time is a floor on the wall time, since the runs on it share it.
    """
    check_int("cores", cores, low=1)
    works, costs = tuple(works), tuple(costs)
    if not works or len(works) != len(costs):
        raise ValueError(f"works and costs are not allowed; expected as many costs ({len(costs)}) as works")
    at_once = min(cores, sum(work.runs for work in works), *(w.side_by_side for w in works if w.side_by_side))
    if any(work.on == "gpu" for work in works) and machine.gpu:
        at_once = min(at_once, machine.runs_per_gpu)
    seconds, gpu, busy = [], [], []
    for end in (0, 1):
        runs, device = [], 0.0
        for work, cost in zip(works, costs, strict=True):
            on_core, on_gpu = step_seconds(work, cost, machine, end)
            runs += [work.steps * on_core] * work.runs
            device += work.runs * work.steps * on_gpu
        seconds.append(max(list_schedule(runs, at_once), device))
        gpu.append(device)
        busy.append(sum(runs))
    return WorkPlan(works, costs, tuple(seconds), tuple(gpu), tuple(busy))


def list_schedule(durations: Sequence[float], workers: int) -> float:
    """When the last of ``durations`` ends, each started in order on the first of ``workers`` to be free."""
    free = [0.0] * workers
    for duration in durations:
        worker = free.index(min(free))
        free[worker] += duration
    return max(free)


@dataclass(frozen=True)
class NotebookPlan:
    notebook: str
    works: tuple[WorkPlan, ...]  # one per pool (work handed to the executor together), in order
    seconds: tuple[float, float]
    gpu_seconds: tuple[float, float]
    core_seconds: tuple[float, float]


def pools(works: Sequence[Work]) -> list[list[int]]:
    """Indices of ``works`` grouped into what the executor gets together: neighbours with the same ``pool``."""
    groups: list[list[int]] = []
    for index, work in enumerate(works):
        if groups and work.pool is not None and works[groups[-1][-1]].pool == work.pool:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def notebook_plan(
    notebook: str, works: Sequence[Work], machine: Machine, cores: int | None = None, costs=None
) -> NotebookPlan:
    """Price a notebook's work, one pool after another, on a lane of ``cores`` (default: all the machine's)."""
    cores = machine.cores if cores is None else cores
    costs = list(costs) if costs is not None else [work_cost(work, machine) for work in works]
    plans = tuple(
        price([works[i] for i in group], [costs[i] for i in group], machine, cores) for group in pools(works)
    )

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
    lanes: tuple[tuple[str, ...], ...]  # the notebooks each lane runs, in order (at the dear end)
    lane_seconds: tuple[tuple[float, float], ...]  # when each lane ends
    gpu_seconds: tuple[float, float]
    core_seconds: tuple[float, float]
    cores: int

    @property
    def seconds(self) -> tuple[float, float]:
        """When the last lane ends, or the GPU's or the cores' busy time where that is longer."""
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
    """Lay the notebooks (``works``: notebook -> its work, in the order the runner takes them) on ``jobs`` lanes
    of equal cores, each taking the next notebook when it is free (:func:`share_the_gpu`); price the course."""
    check_int("jobs", jobs, low=1, high=machine.cores)
    cores = machine.cores // jobs
    costs = costs or {name: [work_cost(work, machine) for work in items] for name, items in works.items()}
    plans = [notebook_plan(name, items, machine, cores, costs[name]) for name, items in works.items()]
    runs = [share_the_gpu(plans, jobs, end) for end in (0, 1)]
    return CoursePlan(
        notebooks=tuple(plans),
        jobs=jobs,
        lanes=runs[1][0],
        lane_seconds=tuple(zip(runs[0][1], runs[1][1], strict=True)),
        gpu_seconds=tuple(sum(plan.gpu_seconds[end] for plan in plans) for end in (0, 1)),
        core_seconds=tuple(sum(plan.core_seconds[end] for plan in plans) for end in (0, 1)),
        cores=machine.cores,
    )


def share_the_gpu(plans: Sequence[NotebookPlan], jobs: int, end: int):
    """The lanes' notebooks and end times when ``jobs`` lanes take ``plans`` in order, at the ``end`` of prices.

    Alone, a notebook keeps the GPU busy for the share ``gpu_seconds / seconds`` of its time. Side by side, while
    the shares of the notebooks running add up to more than one GPU, each of them advances that many times slower:
    the GPU's queue is shared, the rest of their work waits on it.
    """
    waiting = list(plans)
    lanes: list[list[str]] = [[] for _ in range(jobs)]
    ends = [0.0] * jobs
    running: dict[int, list] = {}  # lane -> [plan, its seconds alone still to go]
    now = 0.0
    while waiting or running:
        for lane in range(jobs):
            if lane not in running and waiting:
                plan = waiting.pop(0)
                lanes[lane].append(plan.notebook)
                running[lane] = [plan, plan.seconds[end]]
        demand = sum(plan.gpu_seconds[end] / plan.seconds[end] for plan, _ in running.values())
        slowdown = max(1.0, demand)
        step = min(left for _, left in running.values()) * slowdown
        now += step
        for lane in list(running):
            running[lane][1] -= step / slowdown
            if running[lane][1] <= 1e-9 * step:
                ends[lane] = now
                del running[lane]
    return tuple(tuple(lane) for lane in lanes), tuple(ends)
