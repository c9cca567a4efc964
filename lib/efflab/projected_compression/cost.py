"""What a training step costs, per method: the projections are paid once per step, the model once per token.

Counting as :mod:`efflab.flops` does (2 FLOPs per multiply-add, backward = twice the forward for the model):

* **pruned + retrain** and **from scratch** train a TinyLM of shape ``(d', f')``:
  ``C_model = 3 * forward(d', f'; B, T)``, linear in the ``B T`` tokens of the step;
* **projected compression** runs the *same* target-size model on the tokens, plus, once per step, the products
  that materialise every ``W' = P_out W P_in + A`` and their backward pass. For one piece with base block
  ``W`` (out x in), ``M = W P_in`` and ``W' = P_out M``:

      forward   2 out in k_in            (M = W P_in)         + 2 k_out out k_in'  (P_out M)
      backward  2 out in k_in            (dP_in = W^T dM)     + 2 k_out out k_in'  (dP_out = dW' M^T)
                + 2 out k_out k_in'      (dM = P_out^T dW', only when P_in exists)

  with ``k_in' = k_in`` (or ``in`` when the columns are untouched). ``W`` is frozen, so no gradient for it.

So ``C_PC(B T) = C_model(B T) + C_proj`` and the overhead ``C_proj / C_model`` falls like ``1 / (B T)``: with large
batches the per-token compute is that of the compressed model (the paper's claim), with tiny ones the projection
products dominate. :func:`breakeven_tokens` is the batch at which the overhead drops to a given fraction.
"""

from __future__ import annotations

import math

from efflab.flops import gpt_forward_flops
from efflab.models.gpt import GPTConfig
from efflab.projected_compression.importance import Target
from efflab.validation import check_fraction


def piece_shapes(config: GPTConfig, target: Target) -> list[tuple[int, int, int | None, int | None]]:
    """``(out, in, k_out, k_in)`` of every projected piece (None: that side is untouched), as in the layout."""
    target.check_against(config)
    d, f, d2, f2 = config.d_model, config.d_ff, target.d_model, target.d_ff
    shapes = [(config.vocab_size, d, None, d2), (config.block_size, d, None, d2), (config.vocab_size, d, None, d2)]
    for _ in range(config.n_layer):
        shapes += [(d, d, d2, d2)] * 3  # q, k, v blocks of qkv
        shapes += [(d, d, d2, d2), (f, d, f2, d2), (d, f, d2, f2)]  # out, up, down
    return shapes


def projection_flops_per_step(config: GPTConfig, target: Target) -> int:
    """FLOPs of materialising every compressed matrix and back-propagating into the projections, per step."""
    total = 0
    for out, inp, k_out, k_in in piece_shapes(config, target):
        width = inp
        if k_in is not None:
            total += 2 * 2 * out * inp * k_in  # W P_in, then dP_in = W^T dM
            width = k_in
        if k_out is not None:
            total += 2 * 2 * k_out * out * width  # P_out M, then dP_out = dW' M^T
            if k_in is not None:
                total += 2 * out * k_out * width  # dM = P_out^T dW'
    return total


def model_flops_per_step(config: GPTConfig, batch_size: int, seq_len: int | None = None) -> int:
    """Forward + backward FLOPs of one step of a TinyLM ``config`` on ``batch_size`` sequences."""
    return 3 * gpt_forward_flops(config, seq_len, batch_size)


def flops_per_step(config: GPTConfig, target: Target, batch_size: int, seq_len: int | None = None) -> dict:
    """Training FLOPs per step of each method; the base model's own step for comparison."""
    small = model_flops_per_step(target.config_for(config), batch_size, seq_len)
    return {
        "base model": model_flops_per_step(config, batch_size, seq_len),
        "pruned + retrain": small,
        "from scratch": small,
        "projected compression": small + projection_flops_per_step(config, target),
    }


def breakeven_tokens(config: GPTConfig, target: Target, overhead: float = 0.1) -> int:
    """Smallest number of tokens per step at which the projection products cost at most ``overhead`` of the
    compressed model's own step (at full context length)."""
    check_fraction("overhead", overhead)
    per_sequence = model_flops_per_step(target.config_for(config), 1)
    sequences = math.ceil(projection_flops_per_step(config, target) / (overhead * per_sequence))
    return sequences * config.block_size
