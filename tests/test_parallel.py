"""The executor: results in task order, the same numbers on every backend, failures that name their task."""

import math
import os
from pathlib import Path

import pytest
import torch

from efflab import parallel
from efflab.parallel import TaskFailed, run_all, task_progress
from efflab.runtime import seed_everything


def tiny_training(seed: int) -> list[float]:
    """A task that seeds itself, trains a small model for a few steps and returns its losses."""
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = []
    with task_progress(5, f"seed {seed}") as bar:
        for _ in range(5):
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.update()
    return losses


def unseeded_draw(_task) -> float:
    return torch.rand(()).item()


def threads_seen(_task) -> int:
    return torch.get_num_threads()


def fails_on_three(value: int) -> int:
    if value == 3:
        raise ArithmeticError(f"three is not welcome ({value})")
    return value


def test_results_come_back_in_task_order():
    assert run_all(math.sqrt, [16, 1, 9, 4], backend="processes", progress=False) == [4.0, 1.0, 3.0, 2.0]
    assert run_all(math.sqrt, [], progress=False) == []


def test_inline_and_processes_give_bitwise_equal_trainings():
    inline = run_all(tiny_training, [0, 1, 2], backend="inline", progress=True)
    processes = run_all(tiny_training, [0, 1, 2], backend="processes", workers=2, progress=True)
    assert inline == processes
    assert inline[0] != inline[1]  # different seeds, different runs


def test_every_task_starts_from_the_same_generator_state_on_one_thread():
    draws = run_all(unseeded_draw, range(3), backend="inline", progress=False)
    assert len(set(draws)) == 1
    assert run_all(unseeded_draw, range(2), backend="processes", progress=False) == draws[:2]
    assert run_all(threads_seen, range(2), backend="processes", progress=False) == [1, 1]
    assert run_all(threads_seen, range(2), backend="inline", progress=False) == [1, 1]


@pytest.mark.parametrize("backend", ["inline", "processes"])
def test_a_failing_task_is_named_with_its_traceback(backend):
    with pytest.raises(TaskFailed) as failure:
        run_all(fails_on_three, [1, 2, 3, 4], backend=backend, progress=False)
    assert failure.value.index == 2 and failure.value.task == 3
    message = str(failure.value)
    assert "task 2 (3) failed" in message
    assert "ArithmeticError: three is not welcome (3)" in message and "fails_on_three" in message


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (dict(backend="threads"), "backend"),
        (dict(workers=0), "workers"),
        (dict(gpu_share=1.5), "gpu_share"),
        (dict(gpu_share=float("nan")), "gpu_share"),
    ],
)
def test_bad_arguments_are_named(arguments, named):
    with pytest.raises(ValueError, match=named):
        run_all(math.sqrt, [1.0], progress=False, **arguments)


def test_a_task_asks_for_a_gpu_share_only_when_it_trains_on_cuda():
    assert parallel.gpu_share_for("cpu") is None and parallel.gpu_share_for(torch.device("cpu")) is None
    assert (
        parallel.gpu_share_for("cuda")
        == parallel.gpu_share_for(torch.device("cuda", 0))
        == 1 / parallel.TASKS_PER_GPU
    )
    assert parallel.gpu_share_for("cuda:1", tasks_per_gpu=4) == 0.25
    for bad, named in [("gpu", "device"), (None, "device"), ("cuda", "tasks_per_gpu")]:
        with pytest.raises(ValueError, match=named):
            parallel.gpu_share_for(bad, **({"tasks_per_gpu": 0} if named == "tasks_per_gpu" else {}))


def test_the_environment_picks_the_backend(monkeypatch):
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    assert parallel.default_backend() == "inline"
    monkeypatch.setenv("EFFLAB_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="EFFLAB_EXECUTOR"):
        parallel.default_backend()


def test_task_progress_outside_run_all_is_silent():
    with task_progress(3, "alone") as bar:
        bar.update()
        bar.set_postfix(loss=0.5)
    with pytest.raises(ValueError, match="total"):
        task_progress(-1, "negative")


def start_local_ray(ray, attempts: int = 2) -> None:
    """A local Ray on two CPUs. Its raylet must register within a fixed 30 s; on a machine busy with other work
    the first start can miss that, so it gets a second chance."""
    for attempt in range(attempts):
        try:
            # Ray's workers import a task's function by its module; this test module is found through tests/.
            tests = str(Path(__file__).resolve().parent)
            runtime_env = {
                "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
            }
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
            return
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def test_ray_runs_the_same_trainings_on_a_local_cluster():
    import ray  # installed by `make test`; this test must run, never skip

    start_local_ray(ray)
    try:
        on_ray = run_all(tiny_training, [0, 1, 2], backend="ray", progress=False)
        with pytest.raises(TaskFailed, match="three is not welcome"):
            run_all(fails_on_three, [3], backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert on_ray == run_all(tiny_training, [0, 1, 2], backend="inline", progress=False)


def test_an_unreachable_ray_cluster_names_its_address(monkeypatch):
    ray = __import__("ray")
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ValueError, match="127.0.0.1:1"):
        run_all(math.sqrt, [1.0], backend="ray", progress=False)
    monkeypatch.setenv("RAY_ADDRESS", "no-port-here")
    with pytest.raises(ValueError, match="host:port"):
        run_all(math.sqrt, [1.0], backend="ray", progress=False)


def test_the_local_pool_runs_no_more_cuda_tasks_at_once_than_fit_on_the_gpus(monkeypatch):
    sizes = []
    monkeypatch.setattr(parallel, "free_cores", lambda: 16)
    monkeypatch.setattr(parallel, "_run_processes", lambda f, tasks, bar, show, size: sizes.append(size) or [])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    parallel.run_all(abs, list(range(20)), backend="processes", gpu_share=parallel.gpu_share_for("cuda"))
    parallel.run_all(abs, list(range(20)), backend="processes")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    parallel.run_all(abs, list(range(20)), backend="processes", gpu_share=0.25)
    assert sizes == [parallel.TASKS_PER_GPU, 16, 8]
