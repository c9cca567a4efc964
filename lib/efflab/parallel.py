"""Independent runs side by side: every seed, grid point or regime of an experiment on every free core.

Most of the course's experiments are many small, independent trainings. A tiny model cannot use two cores well
(per-operation overhead dominates), but two tiny models on two cores train twice as fast. :func:`run_all` is the
one way the paper packages run such work::

    results = run_all(train_one, tasks, description="grid")

``train_one`` is a top-level (picklable) function of one task, and ``tasks`` a list of picklable values, each
carrying what the run needs, its seed included. The results come back in task order. Three backends run them:

``inline``
    one task after another in this process (for debugging, and what a single task or a single core gets);
``processes``
    a local pool with one worker per free core, each pinned to one intra-op thread (the default);
``ray``
    a Ray cluster (``EFFLAB_EXECUTOR=ray``; ``RAY_ADDRESS`` names the cluster, none starts a local one), one task
    per CPU, plus a share of a GPU when the tasks train on CUDA (``gpu_share=gpu_share_for(run.device)``: Ray
    hides the GPUs from a task that asks for none).

Every backend runs each task with one torch thread and the global random generators seeded to the same value
before it starts, so a task that seeds itself from its own fields gives bitwise the same result on each backend.
A task that raises stops the run with :class:`TaskFailed`, which names the task and carries the worker's own
traceback. Inside a task, :func:`task_progress` is a progress bar that the parent shows live, whichever process
the task runs in (on Ray only the overall bar is shown).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import socket
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch
from tqdm.auto import tqdm

from efflab.runtime import seed_everything, torch_threads
from efflab.validation import check_choice, check_int, check_range

BACKENDS = ("inline", "processes", "ray")
TASKS_PER_GPU = 8  # small models leave most of a GPU idle: this many tasks share one, each its own process
TASK_SEED = 0  # what the global generators hold when a task starts, on every backend
_relay = None  # in a pool worker: the queue that carries task progress to the parent


class TaskFailed(RuntimeError):
    """A task raised; the message names the task and holds the original traceback."""

    def __init__(self, index: int, task, details: str):
        self.index, self.task, self.details = index, task, details
        super().__init__(f"task {index} ({_short(task)}) failed:\n{details}")


def _short(task, limit: int = 200) -> str:
    text = repr(task)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def free_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_backend() -> str:
    """``$EFFLAB_EXECUTOR`` when set, else ``processes``."""
    backend = os.environ.get("EFFLAB_EXECUTOR", "processes").strip().lower() or "processes"
    check_choice("EFFLAB_EXECUTOR", backend, BACKENDS)
    return backend


def gpu_share_for(device, tasks_per_gpu: int = TASKS_PER_GPU) -> float | None:
    """The fraction of a GPU one task asks Ray for when it trains on ``device``: ``1 / tasks_per_gpu`` on CUDA,
    ``None`` (no GPU) otherwise."""
    check_int("tasks_per_gpu", tasks_per_gpu, low=1)
    try:
        kind = torch.device(device).type
    except (TypeError, RuntimeError):
        raise ValueError(
            f"device={device!r} is not allowed; expected a torch device such as 'cpu' or 'cuda'"
        ) from None
    return 1.0 / tasks_per_gpu if kind == "cuda" else None


def run_all(
    function: Callable,
    tasks: Sequence,
    *,
    backend: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    description: str = "runs",
    gpu_share: float | None = None,
) -> list:
    """``[function(task) for task in tasks]``, run side by side; results in task order.

    ``workers`` caps the pool (default: one per free core); ``progress`` shows a bar over tasks (default: on in
    a notebook, off under CI); ``gpu_share`` is the fraction of a GPU one task takes (CUDA tasks only): Ray
    reserves it, and the local pool runs no more tasks at once than fit on this machine's GPUs.
    """
    from efflab.train import progress_enabled

    if isinstance(tasks, str) or not isinstance(tasks, Iterable):
        raise ValueError(f"tasks={tasks!r:.80} is not allowed; expected a list of tasks")
    tasks = list(tasks)
    backend = default_backend() if backend is None else backend
    check_choice("backend", backend, BACKENDS)
    if workers is not None:
        check_int("workers", workers, low=1)
    if gpu_share is not None:
        check_range("gpu_share", gpu_share, low=0, high=1, low_open=True)
    if not callable(function):
        raise ValueError(f"function={function!r} is not allowed; expected a callable")
    if not tasks:
        return []
    show = progress_enabled(progress)
    pool_size = min(len(tasks), free_cores() if workers is None else workers)
    if gpu_share is not None:
        pool_size = min(pool_size, max(1, int(torch.cuda.device_count() / gpu_share + 1e-9)))
    if backend == "processes" and pool_size == 1:
        backend = "inline"
    with tqdm(total=len(tasks), desc=description, disable=not show, unit="run") as bar:
        if backend == "inline":
            return _run_inline(function, tasks, bar, show)
        if backend == "processes":
            return _run_processes(function, tasks, bar, show, pool_size)
        return _run_ray(function, tasks, bar, gpu_share)


def _call(function: Callable, task):
    """Run one task as every backend does: one thread, fixed global seeds; a failure comes back as text."""
    with torch_threads(1):
        seed_everything(TASK_SEED)
        try:
            return True, function(task)
        except Exception:
            return False, traceback.format_exc()


def _unwrap(index: int, task, outcome):
    ok, value = outcome
    if not ok:
        raise TaskFailed(index, task, value)
    return value


def _run_inline(function, tasks, bar, show) -> list:
    global _relay
    results = []
    previous, _relay = _relay, (_InlineRelay() if show else None)
    try:
        for index, task in enumerate(tasks):
            results.append(_unwrap(index, task, _call(function, task)))
            bar.update()
    finally:
        _relay = previous
    return results


def _open_relay(relay) -> None:
    global _relay
    _relay = relay


def _call_in_worker(job):
    function, task = job
    return _call(function, task)


def _run_processes(function, tasks, bar, show, pool_size) -> list:
    pool, relay = _pool(pool_size)
    bars: dict = {}
    results: list = [None] * len(tasks)
    pending: dict = {}
    try:
        pending = {pool.submit(_call_in_worker, (function, task)): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(relay, bars, show)
            for future in done:
                index = pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as error:  # a worker died (killed, out of memory): start afresh next time
                    _close_pool()
                    raise TaskFailed(index, tasks[index], f"its worker process died ({error})") from error
                results[index] = _unwrap(index, tasks[index], outcome)
                bar.update()
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    finally:
        _drain(relay, bars, show)
        for task_bar in bars.values():
            task_bar.close()
    return results


_open_pool: tuple | None = None  # (size, pool, relay): kept between calls, so only the first call pays start-up


def _pool(size: int):
    """The local pool with ``size`` workers, started on first use and reused by later calls.

    Workers come from a fork server that has imported torch once: forking a process that already runs torch's
    thread pools is unsafe, and spawning re-imports everything in every worker. Kept between calls, the workers
    also keep what they loaded (a cached corpus, an imported paper package), so a notebook that runs several
    grids pays the start-up once.
    """
    global _open_pool
    if _open_pool is not None and _open_pool[0] != size:
        _close_pool()
    if _open_pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "efflab.parallel"])
        relay = context.Queue()
        pool = ProcessPoolExecutor(size, mp_context=context, initializer=_open_relay, initargs=(relay,))
        _open_pool = (size, pool, relay)
    return _open_pool[1], _open_pool[2]


def _close_pool() -> None:
    global _open_pool
    if _open_pool is not None:
        _open_pool[1].shutdown(wait=False, cancel_futures=True)
        _open_pool = None


atexit.register(_close_pool)


def _run_ray(function, tasks, bar, gpu_share) -> list:
    try:
        import ray
    except ImportError as error:
        raise ValueError(
            "backend='ray' needs Ray, which is not installed; install the cluster extra: pip install -e .[cluster]"
        ) from error
    address = os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError or its own types here
            raise ValueError(
                f"RAY_ADDRESS={address!r}: no Ray cluster could be reached there ({error})"
            ) from error
    options = {"num_cpus": 1} if gpu_share is None else {"num_cpus": 1, "num_gpus": gpu_share}
    remote = ray.remote(**options)(_call)
    references = [remote.remote(function, task) for task in tasks]
    index_of = {reference: index for index, reference in enumerate(references)}
    results: list = [None] * len(tasks)
    remaining = list(references)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        for reference in done:
            index = index_of[reference]
            results[index] = _unwrap(index, tasks[index], ray.get(reference))
            bar.update()
    return results


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens there (Ray itself would retry for minutes)."""
    if address is None or address == "auto":
        return  # start a local Ray, or let Ray find the one this machine runs
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"RAY_ADDRESS={address!r} is not allowed; expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"RAY_ADDRESS={address!r}: no Ray cluster could be reached there ({error})") from error


# ---- live progress from inside a task -------------------------------------------------------------------------


class _InlineRelay:
    """The relay of the inline backend: messages go straight to bars in this process."""

    def __init__(self):
        self.bars: dict = {}

    def put(self, message) -> None:
        _apply(message, self.bars)


def _relay_put(message) -> None:
    if _relay is not None:
        _relay.put(message)


def _apply(message, bars: dict) -> None:
    kind, index, *rest = message
    if kind == "open":
        total, description = rest
        bars[index] = tqdm(total=total, desc=description, leave=False)
    elif index in bars:
        if kind == "update":
            bars[index].update(rest[0])
        elif kind == "postfix":
            bars[index].set_postfix(rest[0], refresh=False)
        elif kind == "close":
            bars.pop(index).close()


def _drain(relay, bars: dict, show: bool) -> None:
    """Apply every progress message waiting in ``relay`` (or drop them, when bars are off)."""
    while True:
        try:
            message = relay.get_nowait()
        except queue.Empty:
            return
        if show:
            _apply(message, bars)


class TaskProgress:
    """A progress bar for the work inside one task, drawn by the parent process (a tqdm-like subset)."""

    _count = 0

    def __init__(self, total: int, description: str):
        TaskProgress._count += 1
        self.key = (os.getpid(), TaskProgress._count)
        _relay_put(("open", self.key, total, description))

    def update(self, n: int = 1) -> None:
        _relay_put(("update", self.key, n))

    def set_postfix(self, **values) -> None:
        _relay_put(
            ("postfix", self.key, {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in values.items()})
        )

    def close(self) -> None:
        _relay_put(("close", self.key))

    def __enter__(self) -> TaskProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def task_progress(total: int, description: str) -> TaskProgress:
    """A bar over ``total`` steps of the current task; shown live by :func:`run_all` (a no-op elsewhere)."""
    check_int("total", total, low=0)
    return TaskProgress(total, str(description))
