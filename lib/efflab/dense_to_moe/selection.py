"""Stage 4 of D2DMoE: which experts a token runs, given its router's scores g(x) in R^E.

**Dynamic-k** (the paper's rule, section 3.3; ``dynk_max`` in the authors' code). The router predicts, for each
expert, the norm of what that expert would add to the token's output, g_e(x) >= 0. Expert e runs iff

    g_e(x) >= (1 - tau) * max_j g_j(x),          0 <= tau <= 1,

so the number of experts k(x) differs from token to token: a token whose predicted contributions are spread runs
many, a token dominated by a few experts runs few. tau = 1 keeps every expert (the threshold is 0 and the scores
are non-negative): the layer is then the dense FFN. tau = 0 keeps only the experts that tie for the maximum,
at least one. Larger tau, more compute. (Our tau is the authors' code's; the threshold relative to the maximum
is 1 - tau.)

**Static top-k** (MoEfication's rule): every token runs the k experts with the highest scores.

Both return a boolean mask (tokens, E): True where the expert runs. Selected experts are added with weight 1 (no
gate scaling), so with every expert selected the output is exactly the dense one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from efflab.validation import check_choice, check_int

RULES = ("dynamic_k", "top_k")  # the two routing rules of the sweep; "dense" (every expert) is a third setting
SETTINGS = ("dense", *RULES)


def check_tau(tau) -> float:
    """tau must be a finite number in [0, 1]."""
    ok = isinstance(tau, int | float) and not isinstance(tau, bool) and math.isfinite(tau) and 0 <= tau <= 1
    if not ok:
        raise ValueError(f"tau={tau!r} is not allowed; expected a number in [0, 1] (1 runs every expert)")
    return float(tau)


def check_rule(rule) -> str:
    check_choice("rule", rule, SETTINGS)
    return rule


def check_scores(scores) -> None:
    """Router scores: a floating tensor (..., E) with at least one expert and no NaN or infinity (a NaN score
    would silently drop its token's every expert under dynamic-k, or always win top-k)."""
    ok = isinstance(scores, Tensor) and scores.is_floating_point() and scores.dim() >= 1 and scores.shape[-1] >= 1
    if not ok:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores has shape {shape}; expected a floating tensor (tokens, n_experts >= 1)")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contains NaN or infinity; expected finite router outputs")


def dynamic_k_mask(scores: Tensor, tau: float) -> Tensor:
    """g_e >= (1 - tau) max_j g_j, per token: (tokens, E) scores -> (tokens, E) bool, at least one True per row."""
    check_scores(scores)
    tau = check_tau(tau)
    if (scores < 0).any():
        raise ValueError("scores has negative entries; dynamic-k expects non-negative router outputs (abs head)")
    threshold = (1.0 - tau) * scores.max(dim=-1, keepdim=True).values
    return scores >= threshold


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """The k highest-scoring experts of every token."""
    check_scores(scores)
    check_int("k", k, low=1, high=scores.shape[-1])
    chosen = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)


def select(scores: Tensor, rule: str, *, tau: float = 1.0, k: int = 1) -> Tensor:
    """The mask of ``rule`` ("dynamic_k" with ``tau`` or "top_k" with ``k``)."""
    check_choice("rule", rule, RULES)
    return dynamic_k_mask(scores, tau) if rule == "dynamic_k" else top_k_mask(scores, k)
