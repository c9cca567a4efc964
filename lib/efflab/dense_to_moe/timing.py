"""Measuring wall-clock beside FLOPs: the median time of a routed forward pass.

A FLOP count is a promise; the clock says whether it is kept. The gathered implementation
(:mod:`~efflab.dense_to_moe.moe_layer`) runs only the selected (token, expert) pairs, but pays for listing them,
gathering rows, one small matrix product per expert and scattering the results back, and at toy sizes on a CPU
those overheads can outweigh the skipped arithmetic. The median of repeated runs, after one warm-up run, is
what we report; nothing here asserts a speed-up.

The measurement runs on the device it is given. A GPU works asynchronously: a call returns once its kernels are
queued, not when they have finished, so on CUDA the clock is read only after ``torch.cuda.synchronize`` has
waited for the device, before and after every timed run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from efflab.dense_to_moe.conversion import configure
from efflab.timing import median_times
from efflab.validation import check_int

DEVICE_TYPES = ("cpu", "cuda")


def timing_device(device) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:<index>" or a torch.device of these) as a torch.device; CUDA only
    where torch sees a GPU."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in DEVICE_TYPES:
        raise ValueError(
            f"device={device!r} is not allowed; expected 'cpu', 'cuda', 'cuda:<index>' or a torch.device of these"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is not allowed here: torch sees no CUDA GPU; use 'cpu'")
    return resolved


@torch.no_grad()
def time_forward(
    model: nn.Module,
    x: Tensor,
    rule: str,
    value,
    repeats: int,
    *,
    implementation: str = "gathered",
    device="cpu",
) -> float:
    """Median seconds of ``model(x)`` under ``rule`` (value = tau or k) with ``implementation``, on ``device``.

    The model and ``x`` are moved to ``device`` for the measurement; the model goes back where it was after it.
    """
    check_int("repeats", repeats, low=1)
    device = timing_device(device)
    home = next(model.parameters()).device
    options = {"tau": value} if rule == "dynamic_k" else {"k": value} if rule == "top_k" else {}
    configure(model, rule, implementation=implementation, record=False, **options)
    model.eval().to(device)
    x = x.to(device)
    try:
        works = {"forward": lambda: model(x)}
        return median_times(works, repeats=repeats, warmup=1, cuda=device.type == "cuda")["forward"]
    finally:
        configure(model, "dense", implementation="masked")
        model.to(home)
