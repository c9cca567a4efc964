"""A mixture-of-experts feed-forward layer: routing, granularity, and three ways to run the experts.

A dense transformer block sends every token through one feed-forward network (FFN) of width d_ff. A mixture of
experts (MoE) keeps many FFNs, the *experts*, and a small linear *router* that sends each token to a few of
them, so the model holds many more parameters than one token ever uses.

**Granularity** (Krajewski, Ludziejewski et al. 2024, "Scaling Laws for Fine-Grained Mixture of Experts",
arXiv 2402.07871, section 4). Two numbers describe the layer:

* the *expansion rate* E = (parameters of all experts) / (parameters of the dense FFN), and
* the *granularity* G = d_ff / d_expert: each expert is G times narrower than the dense FFN.

There are then ``n_experts = E * G`` experts of width ``d_ff / G``, and each token is sent to ``top_k = G`` of
them by default, so the parameters a token uses (G experts of width d_ff / G) equal those of the dense FFN at
every G. G = 1 is the classic MoE (Switch, GShard): experts as wide as the FFN. The paper's finding is that
G = 1 is almost never compute-optimal; finer experts, each token combining more of them, do better.

**Routing.** Two ways to decide which expert sees which token:

* *Token choice* (:func:`route_token_choice`): every token picks its ``top_k`` experts by router score. The gate
  is the softmax probability, taken over all experts *before* the top-k (Switch, GShard) or over the chosen k
  *after* it (Mixtral). Nothing stops every token choosing the same expert, so a *load-balancing loss*
  (Fedus et al. 2021, "Switch Transformers", arXiv 2101.03961) pushes the router towards an even load,
  a *router z-loss* (Zoph et al. 2022, "ST-MoE", arXiv 2202.08906) keeps its logits small, and an
  optional *capacity factor* caps how many tokens an expert takes, the rest skipping the layer (the residual
  connection carries them on).
* *Expert choice* (:func:`route_expert_choice`; Zhou et al. 2022, arXiv 2202.09368, the routing of the
  granularity paper): every expert picks the tokens it scores highest, the same number for each expert, so the
  load is balanced by construction. For a causal language model the choice must not look at later tokens of the
  same sequence, so tokens compete only with tokens *at the same position* of other sequences in the batch
  (the granularity paper groups tokens this way). The paper adds a LayerNorm on the layer's output,
  which it found crucial for G > 1 (``output_norm``).

**Execution.** Routing yields a list of (token, expert, gate) assignments. Running the experts on them is
where the time goes, and there are three ways, which must agree in outputs and gradients (tests check it):

* ``"loop"``: for each expert, pick its tokens with a mask, run them through ``up[e]`` and ``down[e]``, add
  the result back. Plain and obviously right (the reference). The experts' matrices are taken with ``unbind``:
  indexing ``up[e]`` would make the backward pass build, for every expert, a gradient as large as *all*
  experts' weights. Each expert still costs a mask over all assignments and two small matrix products, so the
  loop's cost grows with the number of experts.
* ``"padded"``: copy every expert's tokens into one (n_experts, capacity, d_model) tensor, padding short
  experts with zero rows, and run all experts as one batched matrix product (``torch.bmm``). Static shapes (good
  for compilers), at the price of computing the padding: ideal for expert choice, where every expert holds
  exactly ``capacity`` tokens, wasteful for an unbalanced token choice.
* ``"grouped"``: sort the assignments by expert so each expert's tokens are contiguous rows, then one *grouped*
  matrix product runs each expert on its own slice (``torch._grouped_mm``, or a loop over the slices where
  torch lacks it or it fails for the device and dtype). No padding and no per-expert masks. For token choice the
  tokens are gathered into sorted order and back with index gathers whose backward passes are gathers too
  (:class:`_DispatchRows`, :class:`_CombineRows`), instead of the scatter-adds autograd would otherwise use.

``implementation="auto"`` picks by device and shape (:func:`default_path`, a rule read off
``benchmarks/moe_throughput.py``): ``"padded"`` for expert choice; for token choice ``"grouped"`` on a GPU, and
on a CPU the loop up to 128 experts (up to 8 in a model of width 64 or less), ``"grouped"`` beyond.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.models.gpt import INIT_STD, GPTConfig, residual_init_std
from efflab.validation import check_choice, check_int, check_positive

ROUTINGS = ("token_choice", "expert_choice")
SOFTMAX_ORDERS = ("before_topk", "after_topk")
IMPLEMENTATIONS = ("auto", "loop", "padded", "grouped")
GROUPED_KERNELS = ("auto", "torch", "segments")


@dataclass(frozen=True)
class MoEConfig:
    """Shape and routing of one MoE feed-forward layer.

    ``d_ff`` is the width of the dense FFN the layer replaces; ``expansion`` (E) and ``granularity`` (G) give
    ``n_experts = E * G`` experts of width ``d_ff // G``. ``top_k=None`` means ``G`` (the paper's rule: the
    active parameters do not depend on G). For expert choice ``top_k`` is the *average* number of experts per
    token: each expert takes ``capacity_factor * group * top_k / n_experts`` tokens of a group.

    ``capacity_factor=None`` means no cap for token choice (dropless) and 1.0 for expert choice.
    ``group_size`` (expert choice only) is how many sequences compete at each position; None means the whole
    batch. ``output_norm=None`` means on for expert choice and off for token choice.
    """

    d_model: int
    d_ff: int
    expansion: int = 8
    granularity: int = 1
    top_k: int | None = None
    routing: str = "token_choice"
    softmax_order: str = "before_topk"
    capacity_factor: float | None = None
    group_size: int | None = None
    balance_loss_weight: float = 0.01
    z_loss_weight: float = 0.001
    output_norm: bool | None = None
    implementation: str = "auto"
    grouped_kernel: str = "auto"
    init_std: float = INIT_STD
    output_init_std: float = INIT_STD

    def __post_init__(self):
        check_int("d_model", self.d_model, low=1)
        check_int("d_ff", self.d_ff, low=1)
        check_int("expansion", self.expansion, low=1)
        check_int("granularity", self.granularity, low=1)
        if self.d_ff % self.granularity != 0:
            raise ValueError(
                f"granularity={self.granularity!r} is not allowed with d_ff={self.d_ff}; expected a divisor of "
                f"d_ff, so that every expert is d_ff / granularity wide"
            )
        check_choice("routing", self.routing, ROUTINGS)
        if self.top_k is None:
            object.__setattr__(self, "top_k", self.granularity)
        check_int("top_k", self.top_k, low=1, high=self.n_experts)
        check_choice("softmax_order", self.softmax_order, SOFTMAX_ORDERS)
        if self.capacity_factor is not None:
            check_positive("capacity_factor", self.capacity_factor)
        if self.group_size is not None:
            check_int("group_size", self.group_size, low=1)
        check_positive("balance_loss_weight", self.balance_loss_weight, allow_zero=True)
        check_positive("z_loss_weight", self.z_loss_weight, allow_zero=True)
        if self.output_norm is None:
            object.__setattr__(self, "output_norm", self.routing == "expert_choice")
        check_choice("implementation", self.implementation, IMPLEMENTATIONS)
        check_choice("grouped_kernel", self.grouped_kernel, GROUPED_KERNELS)
        check_positive("init_std", self.init_std)
        check_positive("output_init_std", self.output_init_std)

    @property
    def n_experts(self) -> int:
        return self.expansion * self.granularity

    @property
    def expert_width(self) -> int:
        return self.d_ff // self.granularity

    @property
    def resolved_implementation(self) -> str:
        """The path ``"auto"`` takes on a GPU (see :func:`default_path` for the device-aware rule)."""
        return default_path(self, "cuda")

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the layer by kind: all experts, those one token uses, the router, the output norm.

        ``active`` counts ``top_k`` experts, which for expert choice is the average per token.
        """
        per_expert = 2 * self.d_model * self.expert_width
        return {
            "experts": self.n_experts * per_expert,
            "active": self.top_k * per_expert,
            "router": self.d_model * self.n_experts,
            "norm": 2 * self.d_model if self.output_norm else 0,
        }


# ---------------------------------------------------------------------------------------------------- routing


@dataclass
class Routing:
    """Which expert processes which token, as assignments sorted by expert.

    ``token_index``, ``expert_index`` and ``gates`` have one entry per kept assignment, sorted by expert (stable,
    so within an expert in order of priority); ``counts[e]`` is how many belong to expert e. ``gates`` carries
    the router's gradient. For token choice, ``slot_position[t * top_k + j]`` is where token t's j-th choice
    sits in the sorted arrays, or ``len(token_index)`` when it was dropped, and ``sorted_slots`` is the inverse
    map (the slot ``t * top_k + j`` of every sorted assignment) and ``slot_gates`` the gates in slot order;
    expert choice has no such slots.
    ``capacity`` is the most assignments any expert can hold (token choice: the cap, None when dropless;
    expert choice: every expert's count). ``probabilities`` (tokens, n_experts) and
    ``routed_counts`` (assignments per expert before the cap) feed the losses and diagnostics.
    """

    token_index: Tensor
    expert_index: Tensor
    gates: Tensor
    counts: Tensor
    n_tokens: int
    probabilities: Tensor
    logits: Tensor
    routed_counts: Tensor
    capacity: int | None = None
    slot_position: Tensor | None = None
    sorted_slots: Tensor | None = None
    slot_gates: Tensor | None = None
    top_k: int | None = None

    @property
    def dropless(self) -> bool:
        """True when token choice kept every (token, choice) slot; always False for expert choice (no slots)."""
        if self.slot_position is None:
            return False
        return len(self.token_index) == len(self.slot_position)

    @property
    def n_experts(self) -> int:
        return self.counts.numel()

    def detached(self) -> Routing:
        """The same routing without autograd history, safe to keep after the step."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).detach()
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )


def check_logits(logits, dims: int) -> None:
    """Router logits: a floating tensor of ``dims`` dimensions, at least one expert, no NaN or infinity.

    The finiteness check runs on CPU tensors only: on a GPU it would stop the device at every layer of every
    step to read one boolean, and a training run that diverged shows it in its loss anyway.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != dims:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        expected = "(tokens, n_experts)" if dims == 2 else "(batch, time, n_experts)"
        raise ValueError(f"logits has shape {shape}; expected a floating tensor {expected}")
    if logits.shape[-1] < 1 or logits.numel() == 0:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected at least one token and one expert")
    if logits.device.type == "cpu" and not torch.isfinite(logits).all():
        raise ValueError("logits contains NaN or infinity; expected finite router scores")


def check_capacity_arguments(tokens_name: str, n_tokens, top_k, n_experts, capacity_factor) -> None:
    """The sizes behind an expert's capacity: ints >= 1 with ``top_k <= n_experts``, a finite factor > 0."""
    check_int(tokens_name, n_tokens, low=1)
    check_int("n_experts", n_experts, low=1)
    check_int("top_k", top_k, low=1, high=n_experts)
    check_positive("capacity_factor", capacity_factor)


def token_choice_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Tokens one expert may take: ``ceil(capacity_factor * n_tokens * top_k / n_experts)``, in [1, n_tokens]."""
    check_capacity_arguments("n_tokens", n_tokens, top_k, n_experts, capacity_factor)
    return max(1, min(n_tokens, math.ceil(capacity_factor * n_tokens * top_k / n_experts)))


def route_token_choice(
    logits: Tensor, top_k: int, *, softmax_order: str = "before_topk", capacity_factor: float | None = None
) -> Routing:
    """Every token (row of ``logits``, shape (tokens, n_experts)) picks its ``top_k`` highest-scoring experts.

    With a capacity factor, an expert keeps its first ``capacity`` assignments in priority order: all first
    choices before any second choice (GShard, Lepikhin et al. 2020, arXiv 2006.16668), then by token order;
    the rest are dropped and the token skips that expert.
    """
    check_logits(logits, 2)
    n_tokens, n_experts = logits.shape
    check_int("top_k", top_k, low=1, high=n_experts)
    check_choice("softmax_order", softmax_order, SOFTMAX_ORDERS)
    if capacity_factor is not None:
        check_positive("capacity_factor", capacity_factor)
    probabilities = logits.softmax(dim=-1)
    if softmax_order == "before_topk":
        top_gates, top_experts = probabilities.topk(top_k, dim=-1)
    else:
        top_logits, top_experts = logits.topk(top_k, dim=-1)
        top_gates = top_logits.softmax(dim=-1)
    # Assignments in priority order: choice-major (every first choice, then every second ...), token-minor.
    priority_experts = top_experts.t().reshape(-1)
    order = torch.argsort(priority_experts, stable=True)
    sorted_experts = priority_experts[order]
    routed_counts = torch.bincount(priority_experts, minlength=n_experts)
    capacity = None
    if capacity_factor is not None:
        capacity = token_choice_capacity(n_tokens, top_k, n_experts, capacity_factor)
        starts = routed_counts.cumsum(0) - routed_counts
        rank = torch.arange(len(order), device=logits.device) - starts[sorted_experts]
        keep = rank < capacity
        order, sorted_experts = order[keep], sorted_experts[keep]
        counts = routed_counts.clamp(max=capacity)
    else:
        counts = routed_counts
    token_index = order % n_tokens
    choice_index = order // n_tokens
    slot = token_index * top_k + choice_index  # the (token, choice) pair, token-major
    slot_position = torch.full((n_tokens * top_k,), len(order), dtype=torch.long, device=logits.device)
    slot_position[slot] = torch.arange(len(order), device=logits.device)
    gates = top_gates.reshape(-1).index_select(0, slot)
    return Routing(
        token_index=token_index,
        expert_index=sorted_experts,
        gates=gates,
        counts=counts,
        n_tokens=n_tokens,
        probabilities=probabilities,
        logits=logits,
        routed_counts=routed_counts,
        capacity=capacity,
        slot_position=slot_position,
        sorted_slots=slot,
        slot_gates=top_gates.reshape(-1),
        top_k=top_k,
    )


def expert_choice_capacity(group: int, top_k: int, n_experts: int, capacity_factor: float = 1.0) -> int:
    """Tokens each expert picks from a group: ``round(capacity_factor * group * top_k / n_experts)``, >= 1."""
    check_capacity_arguments("group", group, top_k, n_experts, capacity_factor)
    return max(1, min(group, round(capacity_factor * group * top_k / n_experts)))


def route_expert_choice(
    logits: Tensor, top_k: int, *, capacity_factor: float = 1.0, group_size: int | None = None
) -> Routing:
    """Every expert picks the tokens it scores highest, among tokens at the same position of other sequences.

    ``logits`` has shape (batch, time, n_experts); tokens are numbered ``b * time + t``. The scores are the
    softmax over experts of each token's logits (so a token's gates sum to at most 1). The batch is cut into
    groups of ``group_size`` sequences (None: one group); at every position each expert takes its
    :func:`expert_choice_capacity` best tokens of each group. A token no expert picks skips the layer.
    """
    check_logits(logits, 3)
    batch, time, n_experts = logits.shape
    check_int("top_k", top_k, low=1, high=n_experts)
    if group_size is not None:
        check_int("group_size", group_size, low=1)
    group_size = batch if group_size is None else group_size
    if batch % group_size != 0:
        raise ValueError(
            f"group_size={group_size!r} is not allowed with a batch of {batch} sequences; expected a divisor"
        )
    check_positive("capacity_factor", capacity_factor)
    capacity = expert_choice_capacity(group_size, top_k, n_experts, capacity_factor)
    probabilities = logits.softmax(dim=-1)
    # (batch, time, n) -> (groups, group_size, n) with the members of a group at one position.
    n_groups = batch // group_size * time
    grouped = probabilities.view(batch // group_size, group_size, time, n_experts).permute(0, 2, 1, 3)
    grouped = grouped.reshape(n_groups, group_size, n_experts)
    tokens = torch.arange(batch * time, device=logits.device).view(batch // group_size, group_size, time)
    tokens = tokens.permute(0, 2, 1).reshape(n_groups, group_size)
    gates, members = grouped.transpose(1, 2).topk(capacity, dim=-1)  # (groups, n, capacity)
    token_index = tokens.gather(1, members.reshape(n_groups, -1)).view(n_groups, n_experts, capacity)
    # Expert-major order: every expert's tokens contiguous.
    token_index = token_index.permute(1, 0, 2).reshape(-1)
    gates = gates.permute(1, 0, 2).reshape(-1)
    per_expert = n_groups * capacity
    counts = torch.full((n_experts,), per_expert, dtype=torch.long, device=logits.device)
    expert_index = torch.arange(n_experts, device=logits.device).repeat_interleave(per_expert)
    return Routing(
        token_index=token_index,
        expert_index=expert_index,
        gates=gates,
        counts=counts,
        n_tokens=batch * time,
        probabilities=probabilities.reshape(-1, n_experts),
        logits=logits.reshape(-1, n_experts),
        routed_counts=counts.clone(),
        capacity=per_expert,
        top_k=None,
    )


def check_routing(routing) -> None:
    if not isinstance(routing, Routing):
        raise ValueError(
            f"routing={routing!r:.80} is not allowed; expected a Routing from route_token_choice or similar"
        )


def load_balancing_loss(routing: Routing) -> Tensor:
    """Switch Transformer's balance loss: ``n_experts * sum_e f_e * P_e``, equal to 1 when the load is even.

    f_e is the fraction of assignments routed to expert e (before any cap; a count, so no gradient) and P_e the
    mean router probability of e; the gradient flows through P_e and lowers the probability of busy experts.
    """
    check_routing(routing)
    fraction = routing.routed_counts.to(routing.probabilities.dtype) / routing.routed_counts.sum()
    return routing.n_experts * (fraction * routing.probabilities.mean(dim=0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's z-loss: the mean squared log-partition ``logsumexp(logits)^2``, which keeps the logits small."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1 or logits.numel() == 0:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits has shape {shape}; expected a non-empty floating tensor (..., n_experts)")
    return logits.logsumexp(dim=-1).square().mean()


@dataclass(frozen=True)
class RouterStats:
    """Diagnostics of one forward pass (detached).

    ``load``: fraction of processed assignments per expert (uniform = 1 / n_experts). ``dropped_fraction``: for
    token choice the fraction of (token, choice) assignments over capacity; for expert choice the fraction of
    tokens no expert picked. ``entropy``: mean entropy (nats) of a token's router distribution, at most
    ln n_experts (a router that has not decided anything yet).
    """

    load: Tensor
    dropped_fraction: float
    entropy: float
    n_experts: int

    @property
    def max_entropy(self) -> float:
        return math.log(self.n_experts)

    @property
    def imbalance(self) -> float:
        """The busiest expert's load over the uniform load (1 = perfectly balanced)."""
        return float(self.load.max()) * self.n_experts


def experts_per_token(routing: Routing) -> Tensor:
    """How many experts processed each token: top_k for dropless token choice, anything for expert choice."""
    check_routing(routing)
    return torch.bincount(routing.token_index, minlength=routing.n_tokens)


def router_stats(routing: Routing) -> RouterStats:
    """:class:`RouterStats` of one routing."""
    check_routing(routing)
    with torch.no_grad():
        counts = routing.counts.double()
        load = (counts / counts.sum().clamp(min=1)).float().cpu()
        if routing.slot_position is not None:
            dropped = 1.0 - float(routing.counts.sum()) / float(routing.routed_counts.sum())
        else:
            dropped = float((experts_per_token(routing) == 0).float().mean())
        p = routing.probabilities
        entropy = float(-(p * p.clamp(min=1e-12).log()).sum(dim=-1).mean())
    return RouterStats(load=load, dropped_fraction=dropped, entropy=entropy, n_experts=routing.n_experts)


# -------------------------------------------------------------------------------------------- moving the rows


class _DispatchRows(torch.autograd.Function):
    """Token-choice dispatch ``x[token_index]`` whose backward is a gather, not a scatter-add.

    Each token appears once per kept choice. The gradient of token t is the sum over its ``top_k`` slots of the
    gradient rows at their sorted positions; a dropped slot reads an appended zero row.
    """

    @staticmethod
    def forward(ctx, x, token_index, slot_position, top_k, dropless):
        ctx.save_for_backward(slot_position)
        ctx.top_k, ctx.dropless = top_k, dropless
        return x.index_select(0, token_index)

    @staticmethod
    def backward(ctx, grad):
        (slot_position,) = ctx.saved_tensors
        per_slot = _rows_by_slot(grad, slot_position, ctx.dropless)
        return per_slot.view(-1, ctx.top_k, grad.shape[1]).sum(dim=1), None, None, None, None


class _CombineRows(torch.autograd.Function):
    """Token-choice combine: sorted rows back to (token, choice) slots, dropped slots zero; backward a gather."""

    @staticmethod
    def forward(ctx, rows, slot_position, sorted_slots, dropless):
        ctx.save_for_backward(sorted_slots)
        return _rows_by_slot(rows, slot_position, dropless)

    @staticmethod
    def backward(ctx, grad):
        (sorted_slots,) = ctx.saved_tensors
        return grad.index_select(0, sorted_slots), None, None, None


def _rows_by_slot(rows: Tensor, slot_position: Tensor, dropless: bool) -> Tensor:
    """``rows[slot_position]``, where position ``len(rows)`` (a dropped slot) reads a row of zeros."""
    if not dropless:  # the zero row costs a copy of every row: only pay it when something was dropped
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
    return rows.index_select(0, slot_position)


def check_rows(name: str, rows, count: int) -> None:
    """A floating (count, d_model) tensor: the tokens of a routing, or one output row per assignment."""
    if not isinstance(rows, Tensor) or not rows.is_floating_point() or rows.dim() != 2 or len(rows) != count:
        shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
        raise ValueError(f"{name} has shape {shape}; expected a floating tensor ({count}, d_model)")


def dispatch(x: Tensor, routing: Routing) -> Tensor:
    """The tokens of every assignment, in expert-sorted order: (assignments, d_model)."""
    check_routing(routing)
    check_rows("x", x, routing.n_tokens)
    if routing.slot_position is None:
        return x.index_select(0, routing.token_index)
    return _DispatchRows.apply(x, routing.token_index, routing.slot_position, routing.top_k, routing.dropless)


def combine(rows: Tensor, routing: Routing) -> Tensor:
    """Sum gate-weighted expert outputs (rows in expert-sorted order) into one row per token: (tokens, d_model).

    Token choice gathers every token's ``top_k`` outputs side by side and weights them with one batched
    product, (1 x k) gates times (k x d) outputs per token; expert choice, where a token has any number of
    outputs, scatter-adds them.
    """
    check_routing(routing)
    check_rows("rows", rows, len(routing.token_index))
    if routing.slot_position is None:
        weighted = rows * routing.gates.to(rows.dtype).unsqueeze(1)
        return weighted.new_zeros(routing.n_tokens, rows.shape[1]).index_add(0, routing.token_index, weighted)
    per_slot = _CombineRows.apply(rows, routing.slot_position, routing.sorted_slots, routing.dropless)
    per_slot = per_slot.view(routing.n_tokens, routing.top_k, rows.shape[1])
    gates = routing.slot_gates.to(rows.dtype).view(routing.n_tokens, 1, routing.top_k)
    return torch.bmm(gates, per_slot).squeeze(1)


# ------------------------------------------------------------------------------------- the default path

CPU_LOOP_MAX_EXPERTS = 128
"""On a CPU, token choice runs the loop up to this many experts at any width (``benchmarks/moe_throughput.py``,
one thread, 4096 tokens, d_model 256: the loop matched or beat the grouped product from 4 to 128 experts, by
1.2x at 128; at 256 the two were level)."""
CPU_SMALL_D_MODEL = 64
CPU_SMALL_LOOP_MAX_EXPERTS = 8
"""In a model no wider than :data:`CPU_SMALL_D_MODEL`, token choice on a CPU loops up to this many experts only:
there every expert's products are so small that per-operation overhead dominates, and one grouped product beat
the loop from 16 experts on (2048 tokens, d_model 32 to 64, forward and backward: mostly 1.1x to 1.75x, and
0.95x to 0.98x at two shapes with many experts per token)."""


def default_path(config: MoEConfig, device) -> str:
    """The execution path ``implementation="auto"`` takes on ``device``: a fixed rule from the benchmark, so the
    same configuration always runs the same arithmetic (a path measured at run time could differ between two
    processes and change the last bits of a result).

    * a GPU: ``"padded"`` for expert choice (every expert holds exactly its capacity, so there is no padding)
      and ``"grouped"`` for token choice (one kernel for all experts instead of one launch per expert);
    * a CPU: ``"padded"`` for expert choice; for token choice the loop (small products run well on a CPU, and
      the loop skips the sort and the gathers) up to :data:`CPU_LOOP_MAX_EXPERTS` experts, or up to
      :data:`CPU_SMALL_LOOP_MAX_EXPERTS` in a model of width at most :data:`CPU_SMALL_D_MODEL`, and
      ``"grouped"`` beyond.
    """
    if not isinstance(config, MoEConfig):
        raise ValueError(f"config={config!r:.80} is not allowed; expected an MoEConfig")
    if config.implementation != "auto":
        return config.implementation
    if config.routing == "expert_choice":
        return "padded"
    try:
        on_cpu = torch.device(device).type == "cpu"
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not allowed; expected a torch device such as 'cpu'") from error
    if not on_cpu:
        return "grouped"
    small = config.d_model <= CPU_SMALL_D_MODEL
    most_for_loop = CPU_SMALL_LOOP_MAX_EXPERTS if small else CPU_LOOP_MAX_EXPERTS
    return "loop" if config.n_experts <= most_for_loop else "grouped"


# ---------------------------------------------------------------------------------------- grouped matmul


_GROUPED_MM_WORKS: dict[tuple, bool] = {}


def _segments_matmul(rows: Tensor, weight: Tensor, counts: list[int]) -> Tensor:
    """Each expert's contiguous slice of ``rows`` times its own matrix: the fallback grouped product."""
    # unbind, not weight[e]: the backward of n selects would build n gradients the size of all experts.
    parts = [chunk @ matrix for chunk, matrix in zip(rows.split(counts), weight.unbind(0), strict=True)]
    return torch.cat(parts) if parts else rows.new_zeros(0, weight.shape[-1])


def grouped_mm_available(device: torch.device, dtype: torch.dtype, in_features: int, out_features: int) -> bool:
    """Whether ``torch._grouped_mm`` exists here *and* computes the right numbers, forward and backward.

    It is a private API: older versions lack it, some builds run it only on recent GPUs or in bfloat16, and
    shapes may need alignment. So we try it once per (device, dtype, shape) on a tiny problem with an empty
    group, compare it with :func:`_segments_matmul`, and remember the answer.
    """
    device = torch.device(device)
    key = (device.type, device.index, dtype, in_features, out_features)
    if key in _GROUPED_MM_WORKS:
        return _GROUPED_MM_WORKS[key]
    works = False
    if hasattr(torch, "_grouped_mm"):
        try:
            generator = torch.Generator().manual_seed(0)
            counts = [3, 0, 5]
            rows = torch.randn(sum(counts), in_features, generator=generator)
            weight = torch.randn(len(counts), in_features, out_features, generator=generator)
            upstream = torch.randn(sum(counts), out_features, generator=generator)
            results = []
            for use_torch in (True, False):
                a = rows.to(device, dtype).requires_grad_()
                w = weight.to(device, dtype).requires_grad_()
                if use_torch:
                    offsets = torch.tensor(counts, device=device).cumsum(0).to(torch.int32)
                    out = torch._grouped_mm(a, w, offs=offsets)
                else:
                    out = _segments_matmul(a, w, counts)
                (out * upstream.to(device, dtype)).sum().backward()
                results.append([out.detach().float(), a.grad.float(), w.grad.float()])
            tolerance = 1e-3 if dtype == torch.float32 else 5e-2
            works = all(
                torch.allclose(mine, reference, rtol=tolerance, atol=tolerance * in_features**0.5)
                for mine, reference in zip(*results, strict=True)
            )
        except Exception:  # any failure (missing kernel, unsupported dtype or layout) means: use the fallback
            works = False
    _GROUPED_MM_WORKS[key] = works
    return works


def grouped_matmul(rows: Tensor, weight: Tensor, counts: Tensor, *, kernel: str = "auto") -> Tensor:
    """Rows sorted by expert (``counts[e]`` each) times ``weight[e]``: (rows, in) x (n, in, out) -> (rows, out).

    ``kernel="torch"`` uses ``torch._grouped_mm`` (an error if it does not work here), ``"segments"`` the
    loop over slices, ``"auto"`` the first when :func:`grouped_mm_available` says it works.
    """
    check_choice("kernel", kernel, GROUPED_KERNELS)
    if not isinstance(weight, Tensor) or weight.dim() != 3:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight has shape {shape}; expected (n_experts, in_features, out_features)")
    if not isinstance(rows, Tensor) or rows.dim() != 2 or rows.shape[1] != weight.shape[1]:
        shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
        raise ValueError(f"rows has shape {shape}; expected (rows, in_features={weight.shape[1]})")
    ok = isinstance(counts, Tensor) and counts.shape == (weight.shape[0],) and not counts.is_floating_point()
    # The sum is read on CPU tensors only: on a GPU it would stop the device at every layer of every step.
    on_cpu = ok and counts.device.type == "cpu"
    if not ok or (on_cpu and (int(counts.sum()) != len(rows) or bool((counts < 0).any()))):
        raise ValueError(
            f"counts={counts!r:.80} is not allowed; expected {weight.shape[0]} non-negative integer counts "
            f"summing to the {len(rows)} rows"
        )
    use_torch = kernel == "torch" or (
        kernel == "auto" and grouped_mm_available(rows.device, rows.dtype, weight.shape[1], weight.shape[2])
    )
    if use_torch:
        offsets = counts.cumsum(0).to(torch.int32)
        return torch._grouped_mm(rows, weight, offs=offsets)
    return _segments_matmul(rows, weight, counts.tolist())


# --------------------------------------------------------------------------------------------------- the layer


class MoEFeedForward(nn.Module):
    """The MoE feed-forward block: (..., d_model) -> (..., d_model), a drop-in for the dense FFN of TinyLM.

    Experts are ``down(GELU(up(x)))`` like :class:`efflab.models.gpt.FeedForward`, without biases, stored as
    stacked matrices ``up`` (n_experts, d_model, width) and ``down`` (n_experts, width, d_model). The router is
    a submodule named ``router`` (its own role in ``parameters_by_role``) and runs in float32. After every
    forward pass, ``aux_loss`` holds the weighted balance and z-losses and ``last_routing`` the assignments
    (detached); ``last_stats`` turns them into :class:`RouterStats`.
    """

    def __init__(self, config: MoEConfig):
        super().__init__()
        if not isinstance(config, MoEConfig):
            raise ValueError(f"config={config!r:.80} is not allowed; expected an MoEConfig")
        self.config = config
        n, d, width = config.n_experts, config.d_model, config.expert_width
        self.router = nn.Linear(d, n, bias=False)
        self.up = nn.Parameter(torch.empty(n, d, width))
        self.down = nn.Parameter(torch.empty(n, width, d))
        self.activation = nn.GELU()
        self.norm = nn.LayerNorm(d) if config.output_norm else None
        nn.init.normal_(self.router.weight, std=config.init_std)
        nn.init.normal_(self.up, std=config.init_std)
        nn.init.normal_(self.down, std=config.output_init_std)
        self.aux_loss: Tensor = torch.zeros(())
        self.last_routing: Routing | None = None

    def route(self, x: Tensor) -> Routing:
        """Router logits in float32 (outside any autocast), then token or expert choice."""
        config = self.config
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())
        if config.routing == "expert_choice":
            if logits.dim() == 2:  # tokens without a time axis compete all together
                logits = logits.unsqueeze(1)
            return route_expert_choice(
                logits,
                config.top_k,
                capacity_factor=1.0 if config.capacity_factor is None else config.capacity_factor,
                group_size=config.group_size,
            )
        return route_token_choice(
            logits.reshape(-1, config.n_experts),
            config.top_k,
            softmax_order=config.softmax_order,
            capacity_factor=config.capacity_factor,
        )

    def forward(self, x: Tensor) -> Tensor:
        ok = isinstance(x, Tensor) and x.is_floating_point() and x.dim() >= 1
        if not ok or x.shape[-1] != self.config.d_model:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x has shape {shape}; expected a floating tensor (..., d_model={self.config.d_model})"
            )
        routing = self.route(x)
        tokens = x.reshape(-1, x.shape[-1])
        run = {"loop": self._run_loop, "padded": self._run_padded, "grouped": self._run_grouped}
        out = run[default_path(self.config, tokens.device)](tokens, routing)
        if self.norm is not None:
            out = self.norm(out)
        self.aux_loss = self._aux_loss(routing)
        self.last_routing = routing.detached()
        return out.view(x.shape)

    @property
    def last_stats(self) -> RouterStats | None:
        """:class:`RouterStats` of the last forward pass (computed on request: it needs a device sync)."""
        return None if self.last_routing is None else router_stats(self.last_routing)

    def _aux_loss(self, routing: Routing) -> Tensor:
        config = self.config
        loss = routing.logits.new_zeros(())
        if config.z_loss_weight:
            loss = loss + config.z_loss_weight * router_z_loss(routing.logits)
        if config.balance_loss_weight and config.routing == "token_choice":
            loss = loss + config.balance_loss_weight * load_balancing_loss(routing)
        return loss

    def expert(self, rows: Tensor, e: int) -> Tensor:
        """Expert ``e`` on some rows: ``GELU(rows @ up[e]) @ down[e]``."""
        return self.activation(rows @ self.up[e].to(rows.dtype)) @ self.down[e].to(rows.dtype)

    def _run_loop(self, tokens: Tensor, routing: Routing) -> Tensor:
        out = tokens.new_zeros(tokens.shape)
        gates = routing.gates.to(tokens.dtype)
        # unbind, not up[e]: the backward of n selects would build n gradients the size of all experts
        ups, downs = self.up.to(tokens.dtype).unbind(0), self.down.to(tokens.dtype).unbind(0)
        for e in range(self.config.n_experts):
            mine = routing.expert_index == e
            rows = routing.token_index[mine]
            hidden = self.activation(tokens[rows] @ ups[e])
            out.index_add_(0, rows, (hidden @ downs[e]) * gates[mine].unsqueeze(1))
        return out

    def _run_padded(self, tokens: Tensor, routing: Routing) -> Tensor:
        n = self.config.n_experts
        capacity = routing.capacity if routing.capacity is not None else int(routing.counts.max())
        starts = routing.counts.cumsum(0) - routing.counts
        rank = torch.arange(len(routing.token_index), device=tokens.device) - starts[routing.expert_index]
        cell = routing.expert_index * capacity + rank  # where each assignment sits in the (n, capacity) grid
        # Every grid cell reads a token; empty cells read an appended zero row.
        source = torch.full((n * capacity,), routing.n_tokens, dtype=torch.long, device=tokens.device)
        source[cell] = routing.token_index
        padded_tokens = torch.cat([tokens, tokens.new_zeros(1, tokens.shape[1])]).index_select(0, source)
        padded_tokens = padded_tokens.view(n, capacity, -1)
        hidden = self.activation(torch.bmm(padded_tokens, self.up.to(tokens.dtype)))
        outputs = torch.bmm(hidden, self.down.to(tokens.dtype)).reshape(n * capacity, -1)
        return combine(outputs.index_select(0, cell), routing)

    def _run_grouped(self, tokens: Tensor, routing: Routing) -> Tensor:
        kernel = self.config.grouped_kernel
        rows = dispatch(tokens, routing)
        hidden = self.activation(grouped_matmul(rows, self.up.to(rows.dtype), routing.counts, kernel=kernel))
        outputs = grouped_matmul(hidden, self.down.to(rows.dtype), routing.counts, kernel=kernel)
        return combine(outputs, routing)


def moe_ffn(**options) -> Callable[[GPTConfig, int], MoEFeedForward]:
    """An ``ffn_factory`` for :class:`~efflab.models.gpt.TinyLM`: an MoE in every block.

    ``options`` are :class:`MoEConfig` fields (``expansion``, ``granularity``, ``routing`` ...); d_model and
    d_ff come from the model's config, and the output projection gets GPT-2's smaller residual init. Experts
    have no biases, whatever ``config.bias`` says.

    Example: ``TinyLM(config, moe_ffn(expansion=8, granularity=4))``.
    """
    for name in ("d_model", "d_ff"):
        if name in options:
            raise ValueError(f"{name}={options[name]!r} is not allowed here; it comes from the model's GPTConfig")
    known = [f.name for f in fields(MoEConfig) if f.name not in ("d_model", "d_ff")]
    for name in options:
        if name not in known:
            raise ValueError(f"{name}={options[name]!r} is not allowed; expected MoEConfig fields, one of {known}")
    granularity = options.get("granularity", 1)
    valid_width = granularity if isinstance(granularity, int) and granularity > 0 else 1
    template = MoEConfig(d_model=1, d_ff=valid_width, **options)  # validates the options now, not at build time

    def factory(config: GPTConfig, layer_index: int) -> MoEFeedForward:
        moe_config = replace(
            template,
            d_model=config.d_model,
            d_ff=config.d_ff,
            top_k=options.get("top_k"),
            output_init_std=options.get("output_init_std", residual_init_std(config)),
        )
        return MoEFeedForward(moe_config)

    return factory


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """The MoE layers of a model, in order."""
    return [module for module in model.modules() if isinstance(module, MoEFeedForward)]
