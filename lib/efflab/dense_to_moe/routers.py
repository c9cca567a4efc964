"""Stage 3 of D2DMoE: routers that predict how much each expert would contribute, trained on a frozen model.

For a token x entering layer l, the label of expert e is the L2 norm of what the expert writes (the paper's
section 3.3; ``output`` labels with norm 2 in the authors' code):

    t_e(x) = || E_e(x) ||_2 = || W2[:, pi_e] sigma(W1[pi_e] x + b1[pi_e]) ||_2,

computed with every expert executed. A router r (:class:`~efflab.dense_to_moe.moe_layer.Router`, its last op an
``abs``) is fitted by mean squared error, sum_e (r_e(x) - t_e(x))^2 averaged over tokens; the backbone stays
frozen, in eval mode. An expert whose neurons are all zero for x has t_e = 0 exactly: after sparsity fine-tuning
many are, and the router learns to score them near zero, so dynamic-k skips them.

**The MoEfication baseline** (Zhang et al. 2022, as re-implemented by the D2DMoE authors) labels expert e by its
share of the positive activation mass, a_e(x) = sum_{i in e} max(a_i, 0) / max_j sum_{i in j} max(a_i, 0) in
[0, 1], and fits raw router logits with a binary cross-entropy; inference then takes a static top-k.

The inputs of every MoE layer are collected in one pass of the model with every expert on (which is the dense
model), and all routers train at once on shuffled tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.dense_to_moe.moe_layer import DynamicKMoE, Router
from efflab.validation import check_choice, check_int, check_positive, check_seed

TARGETS = ("output_norm", "activation_share")  # D2DMoE, MoEfication


def moe_layers(model: nn.Module) -> list[DynamicKMoE]:
    """Every ``model.layers[i].ffn`` that is a :class:`DynamicKMoE`, in layer order."""
    return [layer.ffn for layer in getattr(model, "layers", []) if isinstance(layer.ffn, DynamicKMoE)]


def check_layer_inputs(name: str, layer: DynamicKMoE, inputs) -> None:
    """One MoE layer's token states: a floating (tokens >= 1, d_model) tensor."""
    ok = isinstance(inputs, Tensor) and inputs.dim() == 2 and inputs.is_floating_point()
    if not ok or len(inputs) == 0 or inputs.shape[1] != layer.d_model:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"{name} has shape {shape}; expected a floating tensor (tokens >= 1, {layer.d_model})")


@torch.no_grad()
def collect_layer_inputs(model: nn.Module, forward: Callable[[], object]) -> list[Tensor]:
    """What each MoE layer receives during ``forward()`` with every expert on: a (tokens, d_model) tensor each.

    ``forward`` may call the model several times (batches); the rows are concatenated per layer.
    """
    if not callable(forward):
        raise ValueError(f"forward={forward!r} is not allowed; expected a function that runs the model")
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model has no DynamicKMoE layers; convert it with moefy first")
    saved = [(layer.rule, layer.record) for layer in layers]
    store: list[list[Tensor]] = [[] for _ in layers]
    handles = []
    for index, layer in enumerate(layers):
        layer.rule, layer.record = "dense", False
        handles.append(
            layer.register_forward_pre_hook(
                lambda _m, args, i=index: store[i].append(args[0].reshape(-1, args[0].shape[-1]).detach())
            )
        )
    was_training = model.training
    model.eval()
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
        for layer, (rule, record) in zip(layers, saved, strict=True):
            layer.rule, layer.record = rule, record
        model.train(was_training)
    if any(not rows for rows in store):
        raise ValueError("forward ran no MoE layer; expected it to call the model at least once")
    return [torch.cat(rows) for rows in store]


@torch.no_grad()
def router_labels(layer: DynamicKMoE, inputs: Tensor, target: str, chunk: int = 2048) -> Tensor:
    """(tokens, E) labels: expert output norms (D2DMoE) or normalised positive activation sums (MoEfication)."""
    check_choice("target", target, TARGETS)
    check_layer_inputs("inputs", layer, inputs)
    check_int("chunk", chunk, low=1)
    parts = []
    for start in range(0, len(inputs), chunk):
        flat = inputs[start : start + chunk]
        if target == "output_norm":
            parts.append(layer.expert_outputs(flat).norm(dim=-1))
        else:
            mass = layer.hidden(flat).clamp_min(0).sum(-1)
            parts.append(mass / mass.max(dim=-1, keepdim=True).values.clamp_min(1e-12))
    return torch.cat(parts)


@dataclass(frozen=True)
class RouterBudget:
    """How routers are trained: ``steps`` of Adam at ``lr`` on batches of ``batch_size`` tokens per layer."""

    width: int = 32
    steps: int = 300
    lr: float = 2e-3
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        check_int("width", self.width, low=1)
        check_int("steps", self.steps, low=1)
        check_positive("lr", self.lr)
        check_int("batch_size", self.batch_size, low=1)
        check_seed(self.seed)


def train_routers(
    model: nn.Module,
    layer_inputs: list[Tensor],
    budget: RouterBudget,
    *,
    target: str = "output_norm",
    device: torch.device | str | None = None,
) -> list[float]:
    """Attach a fresh router to every MoE layer and fit it; returns each layer's final training loss.

    ``target="output_norm"``: abs routers, MSE to the expert output norms (D2DMoE). ``"activation_share"``:
    logit routers, BCE to the positive-activation shares (MoEfication). The labels come from the layers where
    the inputs are; the routers train on ``device`` (default: there too) and then join their layers. A router is
    a small MLP whose step is a handful of tiny kernels: on a machine whose GPU is the busy part, it trains on a
    CPU core instead, from the same initial weights and batches.
    """
    check_choice("target", target, TARGETS)
    if not isinstance(budget, RouterBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a RouterBudget")
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model has no DynamicKMoE layers; convert it with moefy first")
    if len(layers) != len(layer_inputs):
        raise ValueError(
            f"layer_inputs has {len(layer_inputs)} entries; expected one per MoE layer ({len(layers)})"
        )
    for index, (layer, x) in enumerate(zip(layers, layer_inputs, strict=True)):
        check_layer_inputs(f"layer_inputs[{index}]", layer, x)
    labels = [router_labels(layer, x, target) for layer, x in zip(layers, layer_inputs, strict=True)]
    device = layer_inputs[0].device if device is None else torch.device(device)
    layer_inputs, labels = [x.to(device) for x in layer_inputs], [y.to(device) for y in labels]
    generator = torch.Generator().manual_seed(budget.seed)
    torch.manual_seed(budget.seed)
    output = "abs" if target == "output_norm" else "logits"
    routers = [Router(layer.d_model, layer.n_experts, budget.width, output).to(device) for layer in layers]
    parameters = [p for router in routers for p in router.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=budget.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, budget.steps, eta_min=budget.lr * 0.1)
    losses = [float("nan")] * len(layers)
    for _ in range(budget.steps):
        total = 0.0
        for index, (router, x, y) in enumerate(zip(routers, layer_inputs, labels, strict=True)):
            chosen = torch.randint(len(x), (min(budget.batch_size, len(x)),), generator=generator).to(device)
            predicted = router(x[chosen])
            if target == "output_norm":
                loss = F.mse_loss(predicted, y[chosen])
            else:
                loss = F.binary_cross_entropy_with_logits(predicted, y[chosen])
            losses[index] = float(loss.detach())
            total = total + loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()
    for layer, router in zip(layers, routers, strict=True):
        router.requires_grad_(False)
        router.eval()
        layer.router = router.to(layer.w1.device)
    return losses
