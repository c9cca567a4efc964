"""Turning a dense (sparsified) model into its MoE version, and setting every layer's routing rule at once.

:func:`moefy` replaces each ``model.layers[i].ffn`` (a dense FFN with ``up``, ``activation``, ``down``) by a
:class:`~efflab.dense_to_moe.moe_layer.DynamicKMoE` built from the balanced clustering of that layer's neurons;
the rest of the model is untouched, so with every expert on the converted model computes what the dense one did.
"""

from __future__ import annotations

from torch import nn

from efflab.dense_to_moe.clustering import ExpertSplit, split_neurons
from efflab.dense_to_moe.moe_layer import DynamicKMoE
from efflab.dense_to_moe.routers import moe_layers
from efflab.dense_to_moe.sparsity import ffn_modules


def moefy(model: nn.Module, n_experts: int, *, iterations: int = 3, seed: int = 0) -> list[ExpertSplit]:
    """Replace every FFN of ``model`` (in place) by its MoE-fied version; returns each layer's clustering."""
    ffns = ffn_modules(model)
    if any(isinstance(ffn, DynamicKMoE) for ffn in ffns):
        raise ValueError("model is already converted; moefy expects dense FFNs")
    splits = []
    for layer, ffn in zip(model.layers, ffns, strict=True):
        split = split_neurons(ffn.up.weight, n_experts, iterations=iterations, seed=seed)
        layer.ffn = DynamicKMoE(ffn, split.permutation, n_experts).to(ffn.up.weight.device)
        splits.append(split)
    return splits


def configure(
    model: nn.Module,
    rule: str,
    *,
    tau: float | None = None,
    k: int | None = None,
    implementation: str | None = None,
    record: bool | None = None,
) -> nn.Module:
    """Set the rule ("dense", "dynamic_k" with ``tau``, "top_k" with ``k``) on every MoE layer."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model has no DynamicKMoE layers; convert it with moefy first")
    for layer in layers:
        layer.configure(rule, tau=tau, k=k, implementation=implementation)
        if record is not None:
            layer.record = record
            layer.last_mask = None
    return model


def experts_per_token(model: nn.Module):
    """After a recorded forward pass: k per token, stacked over layers, (layers, *token shape) int tensor."""
    import torch

    masks = [layer.last_mask for layer in moe_layers(model)]
    if any(m is None for m in masks):
        raise ValueError("no mask recorded; configure(model, ..., record=True) and run a forward pass first")
    return torch.stack([m.sum(-1) for m in masks])
