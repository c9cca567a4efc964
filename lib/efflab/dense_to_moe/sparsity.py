"""Stage 1 of D2DMoE: make the dense model's FFN activations sparse before it is cut into experts.

A dense FFN computes ``down(sigma(up(x)))``; its hidden activation ``a = sigma(up(x))`` has d_ff entries per token.
An expert (a group of neurons, :mod:`~efflab.dense_to_moe.clustering`) can be skipped for a token exactly when its
neurons contribute nothing, so the more zeros there are in ``a``, the less the MoE has to run. Two steps get them:

**The ReLU swap.** GELU is never exactly zero; ReLU is zero on every negative pre-activation. :func:`relufy`
replaces each ``ffn.activation`` by ``nn.ReLU`` (the weights are kept), so about half of the activations are zero
at once; fine-tuning repairs the small change of function.

**The squared Hoyer penalty.** For one token's activation vector a (Kurtz et al. 2020; the paper's section 3.1)

    H(a) = (sum_i |a_i|)^2 / sum_i a_i^2,          1 <= H(a) <= d_ff,

which is 1 when one neuron fires and d_ff when all fire equally. It does not change when a is scaled, so the
network cannot satisfy it by shrinking every activation (an L1 penalty can be met that way); it can only
concentrate activity in fewer neurons. The fine-tuning loss is

    L = task_loss + lambda(t) * (1 / L_ffn) sum_layers mean_tokens H(a),

with the weight ramped up over the T fine-tuning steps: ``linear`` lambda(t) = lambda t / T,
``linear_warmup`` lambda(t) = lambda min(1, 2t / T) (full weight from half-way, the authors' ViT setting) or
``constant``. :func:`squared_hoyer`, :func:`penalty_weight` and :class:`SparsityLoss` are these three lines;
:func:`zero_fraction` measures the result per layer.

Models plug in through ``model.layers[i].ffn.activation`` (the course ViT, the MiniLM loader).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from efflab.train import TrainConfig, cross_entropy, fit
from efflab.validation import check_choice, check_int, check_positive

SCHEDULES = ("linear", "linear_warmup", "constant")


def squared_hoyer(activations: Tensor, eps: float = 1e-12) -> Tensor:
    """H(a) = ||a||_1^2 / ||a||_2^2 over the last axis: one value per token, in [1, d_ff] (0 for an all-zero a)."""
    if not isinstance(activations, Tensor) or activations.dim() < 1 or not activations.is_floating_point():
        shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
        raise ValueError(f"activations has shape {shape}; expected a floating tensor (..., d_ff)")
    check_positive("eps", eps)
    l1 = activations.abs().sum(-1)
    return l1.square() / activations.square().sum(-1).clamp_min(eps)


def penalty_weight(step: int, steps: int, weight: float, schedule: str = "linear_warmup") -> float:
    """lambda(t) of the ramp: the penalty's weight at 0-based ``step`` of ``steps``."""
    check_int("steps", steps, low=1)
    check_int("step", step, low=0)
    check_positive("weight", weight, allow_zero=True)
    check_choice("schedule", schedule, SCHEDULES)
    progress = min(1.0, (step + 1) / steps)
    if schedule == "linear":
        return weight * progress
    if schedule == "linear_warmup":
        return weight * min(1.0, 2.0 * progress)
    return weight


def ffn_modules(model: nn.Module) -> list[nn.Module]:
    """``model.layers[i].ffn`` for every layer: the FFN blocks this package works on."""
    layers = getattr(model, "layers", None)
    if layers is None or not all(hasattr(layer, "ffn") for layer in layers):
        raise ValueError(
            f"model={type(model).__name__} is not allowed; expected model.layers[i].ffn on every layer"
        )
    return [layer.ffn for layer in layers]


def relufy(model: nn.Module) -> nn.Module:
    """Swap every FFN activation for ReLU, in place (weights untouched); returns the model."""
    for ffn in ffn_modules(model):
        if not hasattr(ffn, "activation"):
            raise ValueError(f"ffn={type(ffn).__name__} has no .activation to swap; expected a dense FFN")
        ffn.activation = nn.ReLU()
    return model


@contextlib.contextmanager
def recorded_activations(model: nn.Module) -> Iterator[list[Tensor]]:
    """Inside the block, every forward pass appends each layer's hidden activation ``a`` (with its graph) to the
    yielded list, in layer order. The list is cleared by the caller; hooks are removed on exit."""
    store: list[Tensor] = []
    handles = [
        ffn.activation.register_forward_hook(lambda _m, _i, output: store.append(output))
        for ffn in ffn_modules(model)
    ]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def hoyer_of_layers(activations: list[Tensor]) -> Tensor:
    """(1 / L) sum_layers mean_tokens H(a): the penalty term of one forward pass."""
    if not activations:
        raise ValueError("activations is empty; the model ran no FFN under recorded_activations")
    return torch.stack([squared_hoyer(a).mean() for a in activations]).mean()


class SparsityLoss:
    """``task_loss + lambda(t) * hoyer`` as a loss function for :func:`efflab.train.fit`.

    ``fit`` calls the loss once per step, so the object counts its calls to know t. ``task_loss(model, x, y)``
    defaults to cross-entropy; ``last_penalty`` keeps the latest Hoyer value for logging.
    """

    def __init__(
        self,
        weight: float,
        steps: int,
        *,
        schedule: str = "linear_warmup",
        task_loss: Callable[[nn.Module, Tensor, Tensor], Tensor] = cross_entropy,
    ):
        check_positive("weight", weight, allow_zero=True)
        check_int("steps", steps, low=1)
        check_choice("schedule", schedule, SCHEDULES)
        self.weight, self.steps, self.schedule, self.task_loss = weight, steps, schedule, task_loss
        self.step = 0
        self.last_penalty = float("nan")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with recorded_activations(model) as activations:
            loss = self.task_loss(model, x, y)
        penalty = hoyer_of_layers(activations)
        self.last_penalty = float(penalty.detach())
        weight = penalty_weight(min(self.step, self.steps - 1), self.steps, self.weight, self.schedule)
        self.step += 1
        return loss + weight * penalty if weight > 0 else loss


def check_train_config(config) -> None:
    """The fine-tuning's :class:`~efflab.train.TrainConfig` (checked before the ReLU swap changes the model)."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config={config!r} is not allowed; expected a TrainConfig")


def sparsity_finetune(
    model: nn.Module,
    batches,
    weight: float,
    config: TrainConfig,
    *,
    schedule: str = "linear_warmup",
    task_loss: Callable[[nn.Module, Tensor, Tensor], Tensor] = cross_entropy,
    progress: bool | None = False,
):
    """ReLU swap, then fine-tune with the ramped Hoyer penalty (``weight=0``: the swap and plain fine-tuning, the
    MoEfication baseline's "ReLUfication"). Returns ``fit``'s history."""
    check_train_config(config)
    loss = SparsityLoss(weight, config.steps, schedule=schedule, task_loss=task_loss)  # checks before the swap
    relufy(model)
    return fit(model, batches, config, loss_fn=loss, progress=progress, description=f"sparsify lambda={weight:g}")


@torch.no_grad()
def zero_fraction(model: nn.Module, forward: Callable[[], object]) -> list[float]:
    """Per layer, the fraction of FFN hidden activations that are exactly zero during ``forward()``."""
    was_training = model.training
    model.eval()
    with recorded_activations(model) as activations:
        forward()
    model.train(was_training)
    if not activations:
        raise ValueError("forward ran no FFN; expected it to call the model at least once")
    n_layers = len(ffn_modules(model))
    zeros = [0.0] * n_layers
    counts = [0] * n_layers
    for index, a in enumerate(activations):
        zeros[index % n_layers] += float((a == 0).sum())
        counts[index % n_layers] += a.numel()
    return [z / max(c, 1) for z, c in zip(zeros, counts, strict=True)]
