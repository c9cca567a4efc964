"""Sweeping a converted model over its routing rule: accuracy, cost and per-token k at every setting.

Routers read each layer's *actual* input, which depends on what the earlier layers computed under the same rule,
so every setting (a tau of dynamic-k, a k of top-k) is one full forward pass with every layer routed; nothing is
extrapolated from a dense pass. One pass gives the prediction, the executed (token, expert) pairs per layer (the
cost, :mod:`~efflab.dense_to_moe.cost`) and k per token per layer (histograms, patch maps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from efflab.dense_to_moe.conversion import configure, experts_per_token
from efflab.dense_to_moe.cost import CostModel
from efflab.dense_to_moe.selection import check_rule
from efflab.train import model_device


@torch.no_grad()
def routed_forward(model: nn.Module, x: Tensor, rule: str, value) -> tuple[Tensor, Tensor]:
    """Outputs and k per token, (layers, *token shape), under ``rule`` ("dynamic_k": value = tau; "top_k": k)."""
    check_rule(rule)
    options = {"tau": value} if rule == "dynamic_k" else {"k": value} if rule == "top_k" else {}
    configure(model, rule, record=True, **options)
    model.eval()
    try:
        output = model(x)
        k = experts_per_token(model)
    finally:
        configure(model, "dense", record=False)
    return output, k


@torch.no_grad()
def classifier_sweep(
    model: nn.Module, x: Tensor, y: Tensor, cost: CostModel, rule: str, values: Sequence
) -> list[dict]:
    """For each value: accuracy, relative FLOPs, mean k, and k per token (layers, images, tokens) as uint8 on the
    CPU. ``x`` and ``y`` are moved to the model's device (a no-op where they are there already)."""
    if not isinstance(x, Tensor) or x.dim() < 1 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x has shape {shape}; expected a batch of at least one input")
    if not isinstance(y, Tensor) or y.shape != (len(x),) or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y has shape {shape}; expected integer labels of shape ({len(x)},), one per input")
    check_rule(rule)
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    rows = []
    for value in values:
        logits, k = routed_forward(model, x, rule, value)
        tokens = k.shape[-1]
        pairs = k.sum(-1).double().mean(-1).tolist()  # per layer: pairs per image
        rows.append(
            {
                "rule": rule,
                "value": value,
                "accuracy": float((logits.argmax(-1) == y).double().mean()),
                "relative_flops": cost.relative(tokens, pairs),
                "mean_k": float(k.double().mean()),
                "k": k.to(torch.uint8 if k.max() < 256 else torch.int16).cpu(),
            }
        )
    return rows
