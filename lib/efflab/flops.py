"""Counting parameters and FLOPs, the currency in which every notebook states its costs.

A FLOP here is one floating-point multiply or add, so one multiply-add costs 2 FLOPs and a matrix product
(m x k) @ (k x n) costs 2mkn. There are three ways to count, each a check on the others:

* :func:`measure_flops` runs the model under PyTorch's ``FlopCounterMode``, which adds up the matrix products,
  convolutions and attention kernels that actually execute;
* :func:`module_forward_flops` adds up the ``nn.Conv2d`` and ``nn.Linear`` layers through forward hooks, from
  the layers' actual shapes, so it stays right after structured pruning has thinned them;
* :func:`gpt_forward_flops` and :func:`gpt_training_flops_per_token` are closed-form formulas of a
  :class:`~efflab.models.gpt.GPTConfig`, for the scaling-law notebooks, which need the cost of models they
  never build.

Like ``FlopCounterMode``, the counts leave out what is cheap next to the matrix products: embedding lookups,
biases, normalization, activation functions, softmax and pooling.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from efflab.models.cnn import CNN
from efflab.models.gpt import GPTConfig
from efflab.validation import check_int


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalars in the model's parameters (a shared parameter counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_nonzero_parameters(model: nn.Module) -> int:
    """Number of nonzero scalars in the weights the model computes with: what is left after pruning.

    ``torch.nn.utils.prune`` stores a pruned weight as the parameter ``weight_orig`` and the buffer
    ``weight_mask``; the effective weight is their product. We count that product rather than the ``weight``
    attribute, which is only refreshed on the next forward pass and may be stale after an optimizer step.
    """
    total, seen = 0, set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            effective = parameter
            if name.endswith("_orig"):
                mask = getattr(module, name.removesuffix("_orig") + "_mask", None)
                effective = parameter if mask is None else parameter * mask
            total += int(torch.count_nonzero(effective))
    return total


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(Q K^T) V for Q (B, H, Tq, D), K (B, H, Tk, D), V (B, H, Tk, Dv): two batched matmuls."""
    batch, heads, query_len, head_dim = query_shape
    key_len, value_dim = key_shape[2], value_shape[3]
    return 2 * batch * heads * query_len * key_len * (head_dim + value_dim)


def check_example(model, example_input) -> None:
    """What the FLOP counters run: a callable model and an example input holding at least one element (an empty
    batch would count zero FLOPs for any model)."""
    if not callable(model):
        raise ValueError(f"model={model!r:.80} is not allowed; expected a module or function to run")
    if not isinstance(example_input, torch.Tensor) or example_input.numel() == 0:
        shape = (
            tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        )
        raise ValueError(f"example_input has shape {shape}; expected a tensor with at least one element")


def measure_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Forward FLOPs of ``model(example_input)``, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    ``FlopCounterMode`` knows the GPU attention kernels but, as of torch 2.13, not the CPU one
    (``aten._scaled_dot_product_flash_attention_for_cpu``), which it would count as zero; we register the same
    formula for it, so a model costs the same on either device. Attention is counted as the full T x T product
    even with ``is_causal=True``, as FlopCounterMode does for every kernel.
    """
    check_example(model, example_input)
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_attention: _attention_flops})
    with torch.no_grad(), counter:
        model(example_input)
    return counter.get_total_flops()


def module_forward_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Forward FLOPs of the ``nn.Conv2d`` and ``nn.Linear`` layers in ``model(example_input)``.

    Each layer is counted from its actual weight shape and output size, through a forward hook, every time it
    runs: a convolution costs 2 * C_in/groups * k_h * k_w per output element, a Linear layer 2 * in_features
    per output element. Everything else (attention products included) is left out, so for a convolutional
    network this equals :func:`measure_flops`.
    """
    check_example(model, example_input)
    total = 0

    def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            per_output = module.in_features
        total += 2 * per_output * output.numel()

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return total


def cnn_forward_flops(model: CNN, batch_size: int = 1) -> int:
    """Forward FLOPs of a (possibly pruned) :class:`~efflab.models.cnn.CNN` on ``batch_size`` images."""
    check_int("batch_size", batch_size, low=1)
    if not isinstance(model, CNN):
        raise ValueError(f"model={type(model).__name__} is not allowed; expected an efflab CNN")
    config = model.config
    device = next(model.parameters()).device
    images = torch.zeros(batch_size, config.in_channels, config.image_size, config.image_size, device=device)
    return module_forward_flops(model, images)


def check_config(config) -> None:
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config={config!r:.80} is not allowed; expected a GPTConfig")


def gpt_parameter_count(config: GPTConfig, *, include_embedding: bool = True) -> int:
    """Number of parameters of ``TinyLM(config)`` with the dense feed-forward block, from the config alone.

    ``include_embedding=False`` leaves out the token and position tables (lookups, not matrix products),
    giving the "non-embedding" N of Kaplan et al. (2020). The head is not tied to the embedding here, so it
    stays in N: it is a real d_model x vocab_size product for every token.
    """
    check_config(config)
    d, d_ff, bias = config.d_model, config.d_ff, int(config.bias)
    attention = d * 3 * d + bias * 3 * d + d * d + bias * d
    ffn = d * d_ff + bias * d_ff + d_ff * d + bias * d
    norm = d + bias * d
    total = config.n_layer * (attention + ffn + 2 * norm) + norm + d * config.vocab_size
    if include_embedding:
        total += (config.vocab_size + config.block_size) * d
    return total


def gpt_forward_flops(config: GPTConfig, seq_len: int | None = None, batch_size: int = 1) -> int:
    """Forward FLOPs of ``TinyLM(config)`` (dense feed-forward) on ``batch_size`` sequences of ``seq_len``.

    Per token and layer: the qkv projection 2 * d * 3d, the output projection 2 * d * d, the feed-forward
    block 2 * 2 * d * d_ff, and attention 2 * 2 * T * d (scores Q K^T, then the weighted sum of values). Plus
    the head, 2 * d * vocab_size per token. Attention is counted over the full T x T square, although the
    causal mask makes half of it unnecessary, because that is what ``FlopCounterMode`` counts for
    ``scaled_dot_product_attention``; this formula equals :func:`measure_flops` exactly. Embedding lookups,
    LayerNorm, GELU and softmax are not counted.
    """
    check_config(config)
    seq_len = config.block_size if seq_len is None else seq_len
    check_int("seq_len", seq_len, low=1, high=config.block_size)
    check_int("batch_size", batch_size, low=1)
    d = config.d_model
    per_layer = 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * config.d_ff + 2 * 2 * seq_len * d
    per_token = config.n_layer * per_layer + 2 * d * config.vocab_size
    return batch_size * seq_len * per_token


def gpt_training_flops_per_token(config: GPTConfig) -> int:
    """Training FLOPs per token, forward and backward, at full context: 6 N + 6 n_layer block_size d_model.

    This is the rule of Kaplan et al. (2020, "Scaling Laws for Neural Language Models", Table 1 and
    section 2.1): the forward pass costs about 2 FLOPs per parameter per token and the backward pass twice
    that, so 6 N with N the non-embedding parameters (:func:`gpt_parameter_count` with
    ``include_embedding=False``). The attention term counts the causal half of the score and value products,
    which is what a fused causal kernel computes, at context length ``block_size``. It is an estimate for
    compute budgets: it includes the few norm parameters and ignores cheap element-wise work.
    """
    n_non_embedding = gpt_parameter_count(config, include_embedding=False)
    return 6 * n_non_embedding + 6 * config.n_layer * config.block_size * config.d_model


D_MODEL_PER_BLOCK = 64  # the paper's shape rule: d_model = 64 * n_blocks


FLOPS_PER_ACTIVE_PARAMETER = 6  # c_f: 2 forward + 4 backward per parameter per token
