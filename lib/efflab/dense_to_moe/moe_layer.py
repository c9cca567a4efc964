"""The MoE-fied FFN: the dense layer's neurons regrouped into E experts, a router, and two ways to execute.

Given the permutation pi of :mod:`~efflab.dense_to_moe.clustering` (expert e owns neurons pi[e s .. (e + 1) s - 1],
s = d_ff / E), expert e is the small FFN

    E_e(x) = W2[:, pi_e] sigma(W1[pi_e] x + b1[pi_e]),

and the layer computes y(x) = b2 + sum_{e selected} E_e(x). With every expert selected this is the dense FFN with
its hidden units listed in another order: the same numbers, up to the order of the floating-point sum
(``allclose``, not bit-equality). The output bias b2 belongs to no expert and is always added.

Weights are stored expert-major: ``w1`` (E, s, d_model), ``b1`` (E, s), ``w2`` (E, s, d_model).

**Two implementations of the same sum** (``implementation``):

``masked``
    compute every expert, multiply the hidden units of unselected experts by 0. Simple, differentiable, and as
    slow as the dense layer: this is how the cost-accuracy curves are computed.
``gathered``
    execute only the selected (token, expert) pairs: the pairs are listed expert by expert, each expert
    multiplies just its rows (:func:`efflab.models.moe.grouped_matmul`: ``torch._grouped_mm`` where it works, a
    loop over experts elsewhere), and the outputs are scattered back with ``index_add_``. Its FLOPs are what the
    cost accounting charges, so its wall-clock can be set beside the FLOP ratio.

``rule`` is "dense" (every expert, no router), "dynamic_k" (``tau``) or "top_k" (``k``), see
:mod:`~efflab.dense_to_moe.selection`. With ``record = True`` the layer keeps its last mask in ``last_mask``
(the leading input shape plus E), which is how per-token k is read out.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.dense_to_moe.clustering import as_index, check_expert_count
from efflab.dense_to_moe.selection import check_rule, check_tau, select
from efflab.models.moe import grouped_matmul
from efflab.validation import check_choice, check_int

IMPLEMENTATIONS = ("masked", "gathered")


class DynamicKMoE(nn.Module):
    """(..., d_model) -> (..., d_model): a dense FFN regrouped into experts, run under a routing rule."""

    def __init__(self, ffn: nn.Module, permutation, n_experts: int):
        super().__init__()
        up, down = getattr(ffn, "up", None), getattr(ffn, "down", None)
        if not (isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and hasattr(ffn, "activation")):
            raise ValueError(
                f"ffn={type(ffn).__name__} is not allowed; expected a dense FFN with up, activation, down"
            )
        d_ff, d_model = up.weight.shape
        self.expert_size = check_expert_count(d_ff, n_experts)
        self.n_experts, self.d_model, self.d_ff = n_experts, d_model, d_ff
        order = as_index(permutation)
        if sorted(order.tolist()) != list(range(d_ff)):
            raise ValueError(f"permutation is not a bijection of range({d_ff})")
        order = order.to(up.weight.device)  # the layer is built where the dense FFN's weights are
        shape = (n_experts, self.expert_size)
        with torch.no_grad():
            up_bias = up.bias if up.bias is not None else up.weight.new_zeros(d_ff)
            down_bias = down.bias if down.bias is not None else down.weight.new_zeros(d_model)
            self.w1 = nn.Parameter(up.weight[order].reshape(*shape, d_model).clone(), requires_grad=False)
            self.b1 = nn.Parameter(up_bias[order].reshape(shape).clone(), requires_grad=False)
            self.w2 = nn.Parameter(down.weight[:, order].T.reshape(*shape, d_model).clone(), requires_grad=False)
            self.bias = nn.Parameter(down_bias.clone(), requires_grad=False)
        self.activation = copy.deepcopy(ffn.activation)
        self.router: nn.Module | None = None
        self.rule, self.tau, self.k = "dense", 1.0, n_experts
        self.implementation = "masked"
        self.record = False
        self.last_mask: Tensor | None = None
        self._up_in_out: tuple | None = None

    # ---- configuration ------------------------------------------------------------------------------------
    def configure(self, rule: str, *, tau: float | None = None, k: int | None = None, implementation=None):
        """Set the routing rule (and its tau or k) and, optionally, the implementation."""
        check_rule(rule)
        if rule != "dense" and self.router is None:
            raise ValueError(f"rule={rule!r} needs a router; attach one (train_routers) or use rule='dense'")
        if rule == "dynamic_k":
            tau = check_tau(1.0 if tau is None else tau)
        if rule == "top_k":
            check_int("k", k, low=1, high=self.n_experts)
        if implementation is not None:
            check_choice("implementation", implementation, IMPLEMENTATIONS)
        # Every argument is checked before any is set: a bad one leaves the layer as it was.
        if rule == "dynamic_k":
            self.tau = tau
        if rule == "top_k":
            self.k = k
        if implementation is not None:
            self.implementation = implementation
        self.rule = rule
        return self

    # ---- the computation ----------------------------------------------------------------------------------
    def hidden(self, flat: Tensor) -> Tensor:
        """Every expert's hidden units, (tokens, E, s)."""
        pre = F.linear(flat, self.w1.reshape(self.d_ff, self.d_model), self.b1.reshape(-1))
        return self.activation(pre).view(-1, self.n_experts, self.expert_size)

    def expert_outputs(self, flat: Tensor) -> Tensor:
        """Each expert's contribution E_e(x), (tokens, E, d_model): what the router's labels are made of."""
        return torch.einsum("nes,esd->ned", self.hidden(flat), self.w2)

    def scores(self, flat: Tensor) -> Tensor:
        if self.router is None:
            raise ValueError("this layer has no router; attach one with train_routers first")
        return self.router(flat)

    def mask(self, flat: Tensor) -> Tensor:
        """The (tokens, E) selection of the current rule (all True for "dense")."""
        if self.rule == "dense":
            return torch.ones(flat.shape[0], self.n_experts, dtype=torch.bool, device=flat.device)
        return select(self.scores(flat), self.rule, tau=self.tau, k=self.k)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x has shape {shape}; expected (..., d_model={self.d_model})")
        flat = x.reshape(-1, self.d_model)
        if self.rule == "dense" and not self.record:
            out = self.dense_forward(flat)
        else:
            mask = self.mask(flat)
            if self.record:
                self.last_mask = mask.view(*x.shape[:-1], self.n_experts)
            if self.implementation == "gathered":
                out = self.gathered_forward(flat, mask)
            else:
                out = self.masked_forward(flat, mask)
        return out.view(x.shape)

    def dense_forward(self, flat: Tensor) -> Tensor:
        hidden = self.hidden(flat).reshape(-1, self.d_ff)
        return torch.addmm(self.bias, hidden, self.w2.reshape(self.d_ff, self.d_model))

    def masked_forward(self, flat: Tensor, mask: Tensor) -> Tensor:
        hidden = (self.hidden(flat) * mask.unsqueeze(-1).to(flat.dtype)).reshape(-1, self.d_ff)
        return torch.addmm(self.bias, hidden, self.w2.reshape(self.d_ff, self.d_model))

    def _apply(self, fn, recurse=True):
        # .to(), .cpu(), .half() and the like: drop the copy of w1, which would stay where it was made (a CUDA
        # tensor kept by a model handed back on the CPU); the next gathered forward rebuilds it.
        self._up_in_out = None
        return super()._apply(fn, recurse)

    def _up_weight_in_out(self) -> Tensor:
        """w1 as (E, d_model, s), contiguous, recomputed only when w1 changes."""
        key = (self.w1._version, self.w1.data_ptr(), self.w1.device)
        if self._up_in_out is None or self._up_in_out[0] != key:
            self._up_in_out = (key, self.w1.detach().transpose(1, 2).contiguous())
        return self._up_in_out[1]

    def gathered_forward(self, flat: Tensor, mask: Tensor) -> Tensor:
        """Only the selected (token, expert) pairs, grouped by expert."""
        experts, tokens = mask.T.nonzero(as_tuple=True)  # expert-major order: each expert's tokens together
        counts = mask.sum(0)
        rows = flat[tokens]
        pre = grouped_matmul(rows, self._up_weight_in_out(), counts) + self.b1[experts]
        outputs = grouped_matmul(self.activation(pre), self.w2, counts)
        return torch.zeros_like(flat).index_add_(0, tokens, outputs) + self.bias


class Router(nn.Module):
    """Linear -> ReLU -> Linear(E), then ``abs`` (D2DMoE: non-negative norm predictions) or raw ``logits``
    (the MoEfication baseline, trained with a binary cross-entropy)."""

    def __init__(self, d_model: int, n_experts: int, width: int, output: str = "abs"):
        super().__init__()
        check_int("d_model", d_model, low=1)
        check_int("n_experts", n_experts, low=1)
        check_int("width", width, low=1)
        check_choice("output", output, ("abs", "logits"))
        self.output = output
        self.net = nn.Sequential(nn.Linear(d_model, width), nn.ReLU(), nn.Linear(width, n_experts))

    def forward(self, x: Tensor) -> Tensor:
        scores = self.net(x)
        return scores.abs() if self.output == "abs" else scores

    def flops_per_token(self) -> int:
        return sum(2 * m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))
