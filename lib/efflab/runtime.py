"""Where a notebook starts: pick the mode and device, seed everything, and say what was chosen.

Every notebook opens with ``run = efflab.setup(MODE, DEVICE, SEED)``. The returned :class:`Run` is the one place
that knows whether we are in *quick* mode (a laptop CPU, minutes) or *full* mode (one GPU, a larger scale), so the
experiment modules can ask ``run.quick`` and pick their budgets, and the notebook never hard-codes a step count.

``MODE="auto"`` means full on a GPU and quick otherwise; the environment variable ``EFFLAB_MODE`` overrides
"auto" so that a test runner can force quick mode without editing the notebook.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from efflab.validation import check_choice, check_int, check_seed

MODES = ("auto", "quick", "full")
DEVICES = ("auto", "cpu", "cuda")

# Set on import, so that every worker process of the executor does the same; CPU results are unchanged.
# On a CUDA GPU, float32 matrix products run on the tensor cores as TensorFloat-32 (float32's range, a 10-bit
# mantissa), which PyTorch recommends for training and which makes full mode's larger products several times
# faster; and cuDNN picks deterministic convolution algorithms, so that the same seed gives the same network
# (notebook 01 re-runs a pruning run live and checks that it matches the stored one).
torch.backends.cuda.matmul.fp32_precision = "tf32"
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that the same seed gives the same numbers."""
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (code that still draws from the global NumPy RNG)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(device: str) -> torch.device:
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU; use 'cpu' or 'auto'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_mode(mode: str, device: torch.device) -> str:
    check_choice("mode", mode, MODES)
    if mode == "auto":
        override = os.environ.get("EFFLAB_MODE", "").strip().lower()
        if override:
            check_choice("EFFLAB_MODE", override, ("quick", "full"))
            return override
        return "full" if device.type == "cuda" else "quick"
    return mode


@dataclass(frozen=True)
class Run:
    """What a notebook runs with: mode, device, seed and the number of CPU threads."""

    mode: str
    device: torch.device
    seed: int
    threads: int
    started_at: float = field(default_factory=time.time, compare=False)

    def __post_init__(self):
        check_choice("mode", self.mode, ("quick", "full"))
        if not isinstance(self.device, torch.device):
            raise ValueError(
                f"device={self.device!r} is not allowed; expected a torch.device (see resolve_device)"
            )
        check_seed(self.seed)
        check_int("threads", self.threads, low=1)

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    def budget(self, quick, full):
        """Pick the quick or the full value of a budget, e.g. ``run.budget(quick=200, full=5000)``."""
        return quick if self.quick else full

    def summary(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return (
            f"efflab | mode={self.mode} | device={self.device.type} ({name}) | seed={self.seed} "
            f"| threads={self.threads} | torch {torch.__version__}"
        )


def setup(mode: str = "auto", device: str = "auto", seed: int = 0, *, verbose: bool = True) -> Run:
    """Resolve mode and device, seed everything, fix the thread count, print one summary line."""
    check_seed(seed)
    resolved_device = resolve_device(device)
    resolved_mode = resolve_mode(mode, resolved_device)
    threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    torch.set_num_threads(threads)
    seed_everything(seed)
    run = Run(resolved_mode, resolved_device, seed, threads)
    if verbose:
        print(run.summary())
    return run


@dataclass
class Timer:
    """Context manager that measures wall time: ``with Timer() as t: ...; t.seconds``."""

    seconds: float = field(default=0.0, init=False)
    _start: float = field(default=0.0, init=False, repr=False)

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` intra-op threads (None leaves the setting alone), then restore it.

    The course's models are small enough that per-operation overhead dominates: splitting a tiny matrix product
    over cores costs more in synchronisation than it saves, and on cores shared with other work two threads can
    be several times slower than one. Experiments with tiny models therefore train on one thread.
    """
    if threads is not None:
        check_int("threads", threads, low=1)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


COURSE_PACKAGES = (
    "torch",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "plotly",
    "ipywidgets",
    "gymnasium",
    "stable-baselines3",
    "torch-pruning",
    "papermill",
)


def environment_table():
    """Versions of Python and the course's main packages, and the compute torch can see, as a small table."""
    import platform
    from importlib import metadata

    import pandas as pd

    rows = {"python": platform.python_version()}
    for package in COURSE_PACKAGES:
        try:
            rows[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            rows[package] = "not installed"
    rows["cuda GPU"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    rows["CPU threads"] = str(torch.get_num_threads())
    return pd.DataFrame({"version": rows})
