"""Stage 5 of D2DMoE: what a forward pass costs when each token runs its own number of experts.

The authors' accounting (``benchmark_moe`` in their code), per sample:

    FLOPs = (everything outside the experts, the routers included)
            + (FLOPs of one expert on one token) x (number of executed token-expert pairs),

averaged over the evaluation samples. With T_l tokens entering MoE layer l, routers costing R_l per token and
experts costing X_l = 4 d_model s per (token, expert) pair (the up and the down projection, 2 FLOPs per
multiply-add as in :mod:`efflab.flops`), a sample whose tokens ran P_l pairs in layer l costs

    C = C_outside + sum_l (T_l R_l + P_l X_l),

and the dense model costs C_dense = C_outside + sum_l T_l D_l with D_l = 4 d_model d_ff = E X_l. So at tau = 1
(every expert, P_l = E T_l) the MoE costs the dense model plus its routers, and the relative cost C / C_dense is
the x-axis of every cost-accuracy curve. For a real pretrained model we report the FFN part alone
(C_outside = 0): "relative FFN FLOPs".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from efflab.dense_to_moe.routers import moe_layers
from efflab.validation import check_int, check_positive


@dataclass(frozen=True)
class CostModel:
    """Per-token FFN costs of each MoE layer and the per-sample cost outside the FFNs."""

    outside_flops: float  # per sample, outside every FFN (routers excluded: they are counted per token)
    router_flops: tuple[int, ...]  # per token, per layer (0 where a layer has no router)
    expert_flops: tuple[int, ...]  # per executed (token, expert) pair, per layer
    dense_ffn_flops: tuple[int, ...]  # per token, per layer: the dense FFN

    def __post_init__(self):
        check_positive("outside_flops", self.outside_flops, allow_zero=True)
        for name in ("router_flops", "expert_flops", "dense_ffn_flops"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != len(self.dense_ffn_flops) or not values:
                raise ValueError(f"{name}={values!r} is not allowed; expected a tuple with one entry per layer")
            for value in values:
                check_int(name, value, low=0 if name == "router_flops" else 1)

    def dense(self, tokens_per_sample: float) -> float:
        """C_dense per sample, for samples of ``tokens_per_sample`` tokens entering every layer."""
        check_positive("tokens_per_sample", tokens_per_sample)
        return self.outside_flops + tokens_per_sample * sum(self.dense_ffn_flops)

    def moe(self, tokens_per_sample: float, pairs_per_sample) -> float:
        """C per sample given the mean number of executed pairs per sample in each layer."""
        check_positive("tokens_per_sample", tokens_per_sample)
        pairs = list(pairs_per_sample)
        if len(pairs) != len(self.expert_flops):
            raise ValueError(f"pairs_per_sample has {len(pairs)} entries; expected one per layer")
        for p in pairs:
            check_positive("pairs_per_sample", p, allow_zero=True)
        routers = tokens_per_sample * sum(self.router_flops)
        experts = sum(p * x for p, x in zip(pairs, self.expert_flops, strict=True))
        return self.outside_flops + routers + experts

    def relative(self, tokens_per_sample: float, pairs_per_sample) -> float:
        return self.moe(tokens_per_sample, pairs_per_sample) / self.dense(tokens_per_sample)


def cost_model(model: nn.Module, outside_flops: float = 0.0) -> CostModel:
    """The :class:`CostModel` of a converted model (``outside_flops`` per sample, 0 for FFN-only accounting)."""
    check_positive("outside_flops", outside_flops, allow_zero=True)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model has no DynamicKMoE layers; convert it with moefy first")
    return CostModel(
        outside_flops=float(outside_flops),
        router_flops=tuple(0 if layer.router is None else layer.router.flops_per_token() for layer in layers),
        expert_flops=tuple(4 * layer.d_model * layer.expert_size for layer in layers),
        dense_ffn_flops=tuple(4 * layer.d_model * layer.d_ff for layer in layers),
    )
