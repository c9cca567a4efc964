"""Measuring wall-clock beside FLOPs: the median time of a routed forward pass.

A FLOP count is a promise; the clock says whether it is kept. The gathered implementation
(:mod:`~efflab.dense_to_moe.moe_layer`) runs only the selected (token, expert) pairs, but pays for listing them,
gathering rows, one small matrix product per expert and scattering the results back, and at toy sizes on a CPU
those overheads can outweigh the skipped arithmetic. The median of repeated runs, after one warm-up run, is
what we report; nothing here asserts a speed-up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from efflab.dense_to_moe.conversion import configure
from efflab.timing import median_times
from efflab.validation import check_int


@torch.no_grad()
def time_forward(
    model: nn.Module, x: Tensor, rule: str, value, repeats: int, *, implementation: str = "gathered"
) -> float:
    """Median seconds of ``model(x)`` under ``rule`` (value = tau or k) with ``implementation``."""
    check_int("repeats", repeats, low=1)
    options = {"tau": value} if rule == "dynamic_k" else {"k": value} if rule == "top_k" else {}
    configure(model, rule, implementation=implementation, record=False, **options)
    model.eval()
    try:
        return median_times({"forward": lambda: model(x)}, repeats=repeats, warmup=1, cuda=x.is_cuda)["forward"]
    finally:
        configure(model, "dense", implementation="masked")
