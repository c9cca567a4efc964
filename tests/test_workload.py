"""The full-mode plan's counting and pricing (efflab.workload), on steps whose costs are known by hand."""

import math

import pytest
import torch
from torch import nn

from efflab.workload import (
    Machine,
    StepCost,
    Work,
    course_plan,
    forward_step,
    notebook_plan,
    price,
    step_cost,
    training_step,
)

BATCH, IN, OUT = 8, 32, 16  # batch, in and out features of a bias-free linear layer


def test_a_training_step_of_a_linear_layer_costs_its_two_products():
    model = nn.Linear(IN, OUT, bias=False)
    x = torch.randn(BATCH, IN)
    step = training_step(model, lambda: (x,), lambda m, inputs: m(inputs).square().mean())
    cost = step_cost(step)
    assert cost.flops == 2 * (2 * BATCH * IN * OUT)  # the forward product and the weight's gradient (x needs none)
    assert 10 <= cost.operations <= 60  # a handful of kernels: forward, loss, backward, AdamW's update
    assert cost.cpu_seconds > 0


def test_views_launch_no_kernel_and_an_untimed_step_has_no_seconds():
    x = torch.randn(4, 6)

    def step():
        return x.view(6, 4).t().reshape(24)[:5].unsqueeze(0) + 1

    cost = step_cost(step, timed=False)
    # the reshape of the transposed view must copy (one kernel), the add is another; the rest are views
    assert cost.operations == 2 and cost.flops == 0 and math.isnan(cost.cpu_seconds)


def test_a_forward_step_counts_the_forward_product_only():
    model = nn.Linear(IN, OUT, bias=False)
    x = torch.randn(BATCH, IN)
    assert step_cost(forward_step(model, lambda: (x,)), timed=False).flops == 2 * BATCH * IN * OUT


def test_the_step_runs_once_to_warm_up_then_once_counted_then_timed():
    calls = []
    step_cost(lambda: calls.append(1), repeats=3)
    assert len(calls) == 1 + 1 + 3
    cost = step_cost(lambda: calls.append(1), counted=False, repeats=3)
    assert len(calls) == 5 + 1 + 3 and cost.operations == cost.flops == 0


def machine(**changes):
    prices = {"host_per_op": (10e-6, 10e-6), "kernel_floor": (5e-6, 5e-6), "gpu_flops": (1e12, 1e12)}
    prices |= {"cpu_speed": (1.0, 1.0), "notebook_overhead": (10.0, 10.0)}
    return Machine(**(prices | changes))


def work(runs, steps, on="gpu", **kwargs):
    return Work("w", runs, steps, lambda: None, on=on, **kwargs)


def test_small_runs_sharing_the_gpu_are_bound_by_its_kernels():
    # 1,000 kernels a step: 10 ms on the host, 5 ms on the GPU; 16 runs, 8 at a time on 16 cores.
    plan = price([work(16, 100)], [StepCost(1000, 0, math.nan)], machine(), cores=16)
    assert plan.gpu_seconds == pytest.approx((8.0, 8.0))  # 16 x 100 x 5 ms: the GPU's time adds up
    assert plan.seconds[0] == pytest.approx(8.0)  # the hosts (2 rounds x 100 x 10 ms = 2 s) wait for it
    assert plan.core_seconds[0] == pytest.approx(16.0)  # 16 x 100 x 10 ms: each host a core
    assert plan.seconds[1] == pytest.approx(8.0)  # host plus GPU, 2 rounds x 100 x 15 ms = 3 s, still under


def test_a_lone_run_is_bound_by_its_host_and_flops_add_to_the_gpu():
    cost = StepCost(1000, int(5e9), math.nan)  # 5 GFLOP at 1 TFLOP/s: 5 ms more per step
    plan = price([work(1, 100)], [cost], machine(), cores=16)
    assert plan.gpu_seconds[0] == pytest.approx(100 * (5e-3 + 5e-3))
    assert plan.seconds == pytest.approx((100 * 10e-3, 100 * 20e-3))  # the longer of host and GPU, or both


def test_cpu_work_takes_rounds_of_one_run_per_core():
    plan = price([work(5, 10, on="cpu")], [StepCost(1, 0, 0.5)], machine(), cores=4)
    assert plan.seconds == pytest.approx((2 * 10 * 0.5, 2 * 10 * 0.5))  # 5 runs on 4 cores: 2 rounds
    assert plan.core_seconds[0] == pytest.approx(5 * 10 * 0.5) and plan.gpu_seconds == (0.0, 0.0)


def test_side_by_side_limits_the_runs_at_once():
    plan = price([work(4, 10, on="cpu", side_by_side=1)], [StepCost(1, 0, 1.0)], machine(), cores=16)
    assert plan.seconds[0] == pytest.approx(40.0)


def test_without_a_gpu_the_gpu_work_runs_on_cpu_cores():
    plan = price([work(2, 10)], [StepCost(1000, 0, 0.25)], machine(gpu=False, cores=2), cores=2)
    assert plan.seconds[0] == pytest.approx(2.5) and plan.gpu_seconds == (0.0, 0.0)


def test_a_pool_shares_its_workers_and_the_next_run_takes_the_first_free_one():
    # runs of 30, 10, 10 and 10 s on two workers: 30 | 10 + 10 + 10, so 30 s, not 40 as item after item
    items = [work(1, 30, on="cpu", pool="grid"), work(3, 10, on="cpu", pool="grid")]
    plan = notebook_plan("nb", items, machine(), cores=2, costs=[StepCost(1, 0, 1.0)] * 2)
    assert len(plan.works) == 1 and plan.seconds == pytest.approx((40.0, 40.0))  # 30 s and the overhead
    apart = [work(1, 30, on="cpu"), work(3, 10, on="cpu")]
    assert notebook_plan("nb", apart, machine(), cores=2, costs=[StepCost(1, 0, 1.0)] * 2).seconds[0] == 60.0


def test_grouped_expert_products_count_their_flops():
    tokens, k, n, experts = 12, 8, 4, 3
    a, b = torch.randn(tokens, k), torch.randn(experts, k, n)
    offsets = torch.tensor([4, 8, 12], dtype=torch.int32)
    try:
        torch._grouped_mm(a, b, offs=offsets)
    except (RuntimeError, NotImplementedError):
        pytest.skip("this build has no float32 grouped product on the CPU")
    cost = step_cost(lambda: torch._grouped_mm(a, b, offs=offsets), timed=False)
    assert cost.flops == 2 * tokens * k * n


def test_a_notebook_adds_its_overhead_and_its_items():
    items = [work(1, 10, on="cpu"), work(1, 20, on="cpu")]
    plan = notebook_plan("nb", items, machine(), cores=2, costs=[StepCost(1, 0, 1.0)] * 2)
    assert plan.seconds == pytest.approx((40.0, 40.0))


def test_the_course_fills_each_lane_from_one_queue_in_order():
    seconds = {"a": 100, "b": 10, "c": 10, "d": 50}
    works = {name: [work(1, s, on="cpu")] for name, s in seconds.items()}
    costs = {name: [StepCost(1, 0, 1.0)] for name in seconds}
    plan = course_plan(works, machine(cores=4), jobs=2, costs=costs)
    assert plan.lanes == (("a",), ("b", "c", "d"))  # b, c and d go to the lane that is free first
    assert plan.lane_seconds == ((110.0, 110.0), (100.0, 100.0))  # 10 s of overhead per notebook
    assert plan.seconds == pytest.approx((110.0, 110.0))


def test_notebooks_side_by_side_share_the_gpu():
    # two notebooks that keep the GPU busy all their 100 s (with 10 s of overhead each) on two lanes: together they
    # want more than one GPU, so each runs at the speed the GPU allows, and the course ends when the GPU is done
    works = {name: [work(1, 100)] for name in ("a", "b")}
    costs = {name: [StepCost(200, 0, math.nan)] for name in works}  # 200 kernels of 5 µs: 1 ms a step, GPU-bound
    plan = course_plan(works, machine(cores=4, host_per_op=(1e-6, 1e-6)), jobs=2, costs=costs)
    alone = plan.notebooks[0].seconds[0]
    assert alone == pytest.approx(10.1) and plan.gpu_seconds[0] == pytest.approx(0.2)
    demand = 2 * 0.1 / 10.1  # each keeps the GPU busy 1 % of its time: no slowdown
    assert demand < 1 and plan.seconds[0] == pytest.approx(alone)
    heavy = {name: [StepCost(200_000, 0, math.nan)] for name in works}  # 1 s of GPU a step: all GPU
    plan = course_plan(works, machine(cores=4, host_per_op=(1e-6, 1e-6)), jobs=2, costs=heavy)
    alone = plan.notebooks[0].seconds[0]  # 10 s overhead + 100 s on the GPU
    shares = 2 * 100 / alone  # together they ask for 1.8 GPUs: each goes 1.8 times slower
    assert plan.lane_seconds[0][0] == pytest.approx(alone * shares) == pytest.approx(plan.gpu_seconds[0])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"runs": 0}, "runs"), ({"steps": 1.5}, "steps"), ({"on": "tpu"}, "on"), ({"step": 3}, "step")],
)
def test_bad_work_names_the_parameter(kwargs, name):
    fields = {"what": "w", "runs": 1, "steps": 1, "step": lambda: None} | kwargs
    with pytest.raises(ValueError, match=name):
        Work(**fields)


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"cores": 0}, "cores"), ({"gpu_flops": (1.0,)}, "gpu_flops"), ({"gpu": 1}, "gpu")]
)
def test_bad_machine_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Machine(**kwargs)


def test_the_course_plan_covers_every_notebook():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("full_mode_plan", root / "benchmarks" / "full_mode_plan.py")
    plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    assert list(plan.COURSE) == sorted(path.stem for path in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for budget, workload in plan.COURSE.values():
        assert callable(budget.full) and workload.__name__ == "workload"
