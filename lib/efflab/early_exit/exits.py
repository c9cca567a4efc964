"""Early exits: internal classifiers that let easy inputs leave a network before its last layer.

Kubaty et al. (2024), "How to Train Your Multi-Exit Model? Analyzing the Impact of Training Strategies",
arXiv 2407.14320. This module holds the method; :mod:`efflab.early_exit.experiment` runs the notebook's study.

**The model.** A backbone is a chain of stages f_1, ..., f_L (the conv blocks of the course CNN, or the
transformer blocks of a ViT) followed by its own classifier g. An *early-exit* model attaches small internal
classifiers ("heads") c_1, ..., c_{H-1} after some of the stages; the backbone's own classifier stays the last of
the H exits. Exit h sees the hidden state z_h of the stage it sits on and predicts y_h = c_h(z_h).

**The loss.** All exits are trained against the same label with the plain mean of their cross-entropies,

    L(x, y) = (1 / H) * sum_h CE(y_h(x), y).

**Three training regimes** (section 3 of the paper). Training is cut into three kinds of phase:

* phase 1 trains the backbone alone, with its own classifier and the ordinary cross-entropy;
* phase 2 trains the backbone and every head together with L;
* phase 3 trains the heads alone on a *frozen* backbone.

A regime is a sequence of phases. **Disjoint** is 1 then 3 (train a network, then bolt heads onto it);
**joint** is 2 alone, from scratch (heads and backbone grow up together); **mixed**, the one the paper proposes,
is 1 then 2 (train the backbone first, then let the heads reshape it). Frozen means frozen in *eval mode* too:
normalisation layers stop updating their running statistics, so the disjoint model's last exit is bit for bit the
backbone it started from. In the authors' code phase 3 stops each head early on validation accuracy and reloads
its best state, and mixed's phase 2 restarts the optimiser at the phase-1 learning rate with a cosine decay; we
follow both. The course also trains a named variant, **mixed_low_lr**, whose phase 2 moves the backbone at a
lower rate: a guard that this course's own first prototype suggested, after a phase-2 restart at the full rate
wrecked its backbone (not a warning from the paper).

**Phase-1 share.** With a fixed budget of T steps, a share s in [0, 1] gives phase 1 round(s T) steps and the
later phase the rest: mixed at s = 0 is joint, and at s = 1 no head ever trains. The authors sweep s over 0, 25,
50, 75 and 100 % (their ResNet-50 scripts) to ask where mixed should switch.

**The exit rule.** At inference the exits are tried in order, and a sample leaves at the first head whose
confidence (the largest softmax probability) is *strictly* above a threshold t; a sample that no head is sure
about takes the last exit. Strictness matters: a float32 softmax can round to exactly 1.0, and with ``>`` a
threshold of 1 still means "never exit early". The entropy rule (exit when the entropy of the softmax is
strictly below s) is the other common choice.

**Cost.** Reaching exit h costs the backbone up to the stage that exit h reads *plus every head up to and
including h*: a sample that leaves at exit 3 has also paid for heads 1 and 2, which it consulted and ignored. We
count these costs in FLOPs with the course counter (:func:`efflab.flops.module_forward_flops`, 2 FLOPs per
multiply-add; the authors' fvcore counts multiply-adds, which halves every number and leaves every ratio alone).
With n_h samples leaving at exit h out of N, the expected cost of a threshold is sum_h cost_h * n_h / N;
sweeping the threshold traces a cost-accuracy curve, and the paper reads it off at 25, 50, 75 and 100 % of the
backbone's cost.

**Simulated and real exits.** The curve is computed once from every head's logits on every sample (one pass, then
any threshold is a cheap lookup). A deployed model instead has to *stop computing* for the samples that left:
:meth:`EarlyExitNetwork.early_exit_forward` shrinks the batch after every head, so later stages only process the
rows that are still undecided, and :func:`measure_speedup` times that against the plain backbone.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.data.digits import check_labels
from efflab.flops import module_forward_flops
from efflab.models.cnn import CNN
from efflab.timing import interleaved_times, median_times
from efflab.train import TrainConfig, cross_entropy, fit, lr_factor, make_optimizer
from efflab.validation import check_choice, check_fraction, check_int, check_positive

PAPER_REGIMES = ("disjoint", "joint", "mixed")  # the paper's three, mixed as the authors run it
REGIMES = (*PAPER_REGIMES, "mixed_low_lr")  # plus the course's variant of mixed (see RegimeSchedule)
EXIT_RULES = ("confidence", "entropy")
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)

Batch = tuple[Tensor, Tensor]


class PooledHead(nn.Module):
    """The SDN head (Kaya et al. 2019, "Shallow-Deep Networks"), as the paper's code uses for CNNs.

    A feature map (B, C, H, W) is pooled to ``pool_size`` x ``pool_size`` by a learned mix of max- and
    average-pooling, ``alpha * maxpool + (1 - alpha) * avgpool`` (alpha is a free scalar, started at 0.5), then
    flattened into one linear layer. Pooling keeps the head cheap next to the block it reads: its only FLOPs are
    the linear layer's. A map already smaller than ``pool_size`` is kept at its own size. When the map divides
    evenly, adaptive pooling is the same as plain pooling with a fixed window, which CPUs run several times
    faster, so we use that.
    """

    def __init__(self, channels: int, num_classes: int, map_size: int, pool_size: int = 4):
        super().__init__()
        check_int("channels", channels, low=1)
        check_int("num_classes", num_classes, low=2)
        check_int("map_size", map_size, low=1)
        check_int("pool_size", pool_size, low=1)
        size = min(pool_size, map_size)
        self.pools = size < map_size  # a map already at the pooled size passes through (both pools are identity)
        if map_size % size == 0:
            window = map_size // size
            self.max_pool, self.avg_pool = nn.MaxPool2d(window), nn.AvgPool2d(window)
        else:
            self.max_pool, self.avg_pool = nn.AdaptiveMaxPool2d(size), nn.AdaptiveAvgPool2d(size)
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.linear = nn.Linear(channels * size * size, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        if self.pools:
            features = self.alpha * self.max_pool(features) + (1 - self.alpha) * self.avg_pool(features)
        return self.linear(features.flatten(1))


class EarlyExitNetwork(nn.Module):
    """A backbone with internal classifiers: ``forward`` returns the logits of every exit, earliest first.

    Arguments:
        backbone: the network being extended; ``backbone(x)`` must equal ``final_exit`` applied after all
            ``stages`` (true of the course CNN with its ``features`` and ``classifier``).
        stages: the backbone's blocks in order, each a submodule of ``backbone``.
        final_exit: the backbone's own classifier, the last exit.
        heads: one module per internal exit.
        place_at: for each head, the index of the stage whose output it reads (strictly increasing).

    Nothing here is specific to convolutions: a ViT passes its embedding and transformer blocks as stages,
    its norm and linear head as ``final_exit``, and heads that read the class token. :func:`attach_to_cnn`
    builds the CNN version.

    After :meth:`freeze_backbone` the backbone's parameters stop requiring gradients and the backbone stays in
    eval mode even when the whole network is put in training mode (``train()`` is overridden for that), so a
    training loop that calls ``model.train()`` every step cannot wake its normalisation layers up.
    """

    def __init__(
        self,
        backbone: nn.Module,
        stages: Sequence[nn.Module],
        final_exit: nn.Module,
        heads: Sequence[nn.Module],
        place_at: Sequence[int],
    ):
        super().__init__()
        stages, place_at = tuple(stages), tuple(place_at)
        owned = {id(module) for module in backbone.modules()}
        for name, module in [(f"stages[{i}]", s) for i, s in enumerate(stages)] + [("final_exit", final_exit)]:
            if id(module) not in owned:
                raise ValueError(f"{name} is not allowed: it is not a submodule of the backbone")
        if len(heads) != len(place_at):
            raise ValueError(f"place_at={place_at!r} is not allowed; expected one stage index per head")
        for index in place_at:
            check_int("place_at", index, low=0, high=len(stages) - 1)
        if list(place_at) != sorted(set(place_at)):
            raise ValueError(f"place_at={place_at!r} is not allowed; expected strictly increasing stage indices")
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        # The stages and the final exit are registered once, inside the backbone; here they are plain references
        # (nn.Module would otherwise register the final exit a second time, duplicating it in the state dict).
        self.stages = stages
        object.__setattr__(self, "final_exit", final_exit)
        self.place_at = place_at
        self.backbone_frozen = False

    @property
    def num_exits(self) -> int:
        return len(self.heads) + 1

    def exit_stages(self) -> tuple[int, ...]:
        """The stage each exit reads; the last exit reads the last stage."""
        return (*self.place_at, len(self.stages) - 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_until(x, self.num_exits - 1)

    def forward_until(self, x: Tensor, exit_index: int) -> list[Tensor]:
        """Logits of exits 0..``exit_index``, computing only the stages those exits need."""
        check_int("exit_index", exit_index, low=0, high=self.num_exits - 1)
        last_stage = self.exit_stages()[exit_index]
        heads_at = dict(zip(self.place_at, self.heads, strict=True))
        outputs = []
        hidden = x
        for index, stage in enumerate(self.stages[: last_stage + 1]):
            hidden = stage(hidden)
            if index in heads_at and len(outputs) <= exit_index:
                outputs.append(heads_at[index](hidden))
        if exit_index == self.num_exits - 1:
            outputs.append(self.final_exit(hidden))
        return outputs

    def exit_logits(self, x: Tensor) -> Tensor:
        """All exits' logits stacked: (H, B, num_classes)."""
        return torch.stack(self.forward(x))

    @torch.no_grad()
    def early_exit_forward(self, x: Tensor, threshold: float, rule: str = "confidence") -> tuple[Tensor, Tensor]:
        """Real early-exit inference: the logits of the exit each sample took, (B, C), and that exit, (B,).

        After each head, the rows that exit are written to the output and dropped from the batch, so every later
        stage runs on the undecided rows only. The loop runs over stages, never over samples.
        """
        check_threshold(threshold, rule)
        heads_at = dict(zip(self.place_at, enumerate(self.heads), strict=True))
        exits = torch.full((len(x),), self.num_exits - 1, dtype=torch.long, device=x.device)
        active = torch.arange(len(x), device=x.device)
        logits_out: Tensor | None = None
        hidden = x
        for index, stage in enumerate(self.stages):
            hidden = stage(hidden)
            if index not in heads_at:
                continue
            head_index, head = heads_at[index]
            logits = head(hidden)
            if logits_out is None:
                logits_out = logits.new_empty(len(x), logits.shape[-1])
            leaving = exit_mask(logits, threshold, rule)
            logits_out[active[leaving]] = logits[leaving]
            exits[active[leaving]] = head_index
            hidden, active = hidden[~leaving], active[~leaving]
            if len(active) == 0:
                return logits_out, exits
        final = self.final_exit(hidden)
        if logits_out is None:
            logits_out = final.new_empty(len(x), final.shape[-1])
        logits_out[active] = final
        return logits_out, exits

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def freeze_backbone(self) -> None:
        """Phase 3: the backbone stops learning, and stops updating normalisation statistics (eval mode)."""
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def unfreeze_backbone(self) -> None:
        self.backbone_frozen = False
        self.backbone.requires_grad_(True)
        self.backbone.train(self.training)

    def train(self, mode: bool = True) -> EarlyExitNetwork:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def _map_sizes(stages: Sequence[nn.Module], example: Tensor) -> list[tuple[int, ...]]:
    """The output shape (without the batch axis) of every stage on ``example``."""
    shapes, hidden = [], example
    with torch.no_grad():
        for stage in stages:
            hidden = stage(hidden)
            shapes.append(tuple(hidden.shape[1:]))
    return shapes


def attach_to_cnn(cnn: nn.Module, place_at: Sequence[int] | None = None, pool_size: int = 4) -> EarlyExitNetwork:
    """Attach a :class:`PooledHead` after blocks of an :class:`efflab.models.cnn.CNN`.

    By default a head follows every block but the last, whose output feeds the CNN's own classifier (the last
    exit). The heads' input sizes are read from a forward pass of a blank image.
    """
    if not isinstance(cnn, CNN):
        raise ValueError(f"cnn={type(cnn).__name__} is not allowed; expected an efflab.models.cnn.CNN")
    config = cnn.config
    stages = list(cnn.features)
    place_at = tuple(range(len(stages) - 1)) if place_at is None else tuple(place_at)
    device = next(cnn.parameters()).device
    example = torch.zeros(1, config.in_channels, config.image_size, config.image_size, device=device)
    shapes = _map_sizes(stages, example)
    heads = []
    for index in place_at:
        check_int("place_at", index, low=0, high=len(stages) - 1)
        channels, height, _ = shapes[index]
        heads.append(PooledHead(channels, config.num_classes, height, pool_size))
    return EarlyExitNetwork(cnn, stages, cnn.classifier, heads, place_at).to(device)


def multi_exit_loss(network: EarlyExitNetwork, x: Tensor, y: Tensor) -> Tensor:
    """L = (1/H) sum_h CE(y_h, y): the plain mean of every exit's cross-entropy."""
    return torch.stack([F.cross_entropy(logits, y) for logits in network(x)]).mean()


# ---------------------------------------------------------------------------------------------------------------
# Training regimes


@dataclass(frozen=True)
class Phase:
    """One phase of a regime: what trains ("backbone", "joint" or "heads"), for how long, at what peak rate.

    In a "joint" phase the heads may have their own peak rate ``heads_lr`` (by default the backbone's).
    """

    trains: str
    steps: int
    lr: float
    heads_lr: float | None = None

    def __post_init__(self):
        check_choice("trains", self.trains, ("backbone", "joint", "heads"))
        check_int("steps", self.steps, low=1)
        check_positive("lr", self.lr)
        object.__setattr__(self, "heads_lr", self.lr if self.heads_lr is None else self.heads_lr)
        check_positive("heads_lr", self.heads_lr)


@dataclass(frozen=True)
class RegimeSchedule:
    """Phase lengths and learning rates shared by the regimes, so that every regime gets the same step budget.

    ``backbone_steps`` is phase 1; ``exit_steps`` is what follows it (phase 3 for disjoint, phase 2 for mixed).
    Joint, which has no phase 1, trains everything for ``backbone_steps + exit_steps`` at ``backbone_lr``. Either
    length may be 0 (the phase-share sweep goes from 0 % to 100 % phase 1), not both; a phase of 0 steps is left
    out, so mixed with no phase 1 *is* joint, and a regime with no later phase keeps untrained heads.

    **Mixed, as the authors run it** (their ResNet-50 scripts): phase 2 starts a fresh optimiser at the phase-1
    peak rate ``backbone_lr``, for backbone and heads alike, with a cosine decay over the remaining steps.
    **mixed_low_lr**, the course's variant: phase 2 moves the backbone at the lower ``mixed_lr`` while the new
    heads learn at ``heads_lr``; the course's first prototype saw its backbone collapse when phase 2 restarted
    at the phase-1 rate, which is why the course tried it. Both are trained, so the notebook shows what the
    lower rate changes.

    **Disjoint's phase 3** trains the heads on the frozen backbone for at most ``exit_steps`` steps, stopping each
    head early on validation accuracy (checked every ``check_every`` steps, ``patience`` checks without a gain)
    and reloading its best state, as the authors' code does (:func:`train_heads_early_stopping`).

    Every phase has a fresh AdamW optimiser with a linear warmup and a cosine decay to ``min_lr_ratio`` of its
    peak.
    """

    backbone_steps: int
    exit_steps: int
    backbone_lr: float = 3e-3
    mixed_lr: float = 1e-3
    heads_lr: float | None = None  # None: the backbone's rate, as in the authors' code
    warmup_steps: int = 20
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.05
    check_every: int = 25
    patience: int = 4

    def __post_init__(self):
        check_int("backbone_steps", self.backbone_steps, low=0)
        check_int("exit_steps", self.exit_steps, low=0)
        if self.backbone_steps + self.exit_steps == 0:
            raise ValueError("backbone_steps=0 and exit_steps=0 is not allowed; expected at least 1 step in all")
        object.__setattr__(self, "heads_lr", self.backbone_lr if self.heads_lr is None else self.heads_lr)
        for name in ("backbone_lr", "mixed_lr", "heads_lr"):
            check_positive(name, getattr(self, name))
        check_int("warmup_steps", self.warmup_steps, low=0)  # a phase shorter than this warms up throughout
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_fraction("min_lr_ratio", self.min_lr_ratio, inclusive=True)
        check_int("check_every", self.check_every, low=1)
        check_int("patience", self.patience, low=1)

    @property
    def total_steps(self) -> int:
        return self.backbone_steps + self.exit_steps

    def with_share(self, share: float) -> RegimeSchedule:
        """The same total budget with ``share`` of it in phase 1 (rounded to whole steps), the rest after it."""
        check_fraction("share", share, inclusive=True)
        first = round(share * self.total_steps)
        return replace(self, backbone_steps=first, exit_steps=self.total_steps - first)

    def phases(self, regime: str) -> tuple[Phase, ...]:
        """The regime as a sequence of phases (section 3 of the paper); phases of 0 steps are left out."""
        check_regime(regime)
        if regime == "joint":
            return (Phase("joint", self.total_steps, self.backbone_lr),)
        first = (Phase("backbone", self.backbone_steps, self.backbone_lr),) if self.backbone_steps else ()
        if not self.exit_steps:
            return first
        if regime == "disjoint":
            return (*first, Phase("heads", self.exit_steps, self.heads_lr))
        if regime == "mixed":
            return (*first, Phase("joint", self.exit_steps, self.backbone_lr))
        return (*first, Phase("joint", self.exit_steps, self.mixed_lr, heads_lr=self.heads_lr))

    def train_config(self, phase: Phase) -> TrainConfig:
        return TrainConfig(
            steps=phase.steps,
            lr=phase.lr,
            warmup_steps=min(self.warmup_steps, phase.steps),
            weight_decay=self.weight_decay,
            min_lr_ratio=self.min_lr_ratio,
        )


def check_regime(regime) -> None:
    check_choice("regime", regime, REGIMES)


def run_phase(
    network: EarlyExitNetwork,
    phase: Phase,
    batches: Iterable[Batch] | Callable[[], Batch],
    schedule: RegimeSchedule,
    *,
    validation: Batch | None = None,
    progress: bool | None = None,
    description: str | None = None,
) -> pd.DataFrame:
    """Train one phase with the course loop (:func:`efflab.train.fit`) and return its history.

    A "heads" phase needs ``validation`` data (x, y): it stops each head early on it
    (:func:`train_heads_early_stopping`).
    """
    config = schedule.train_config(phase)
    description = phase.trains if description is None else description
    if phase.trains == "backbone":
        network.unfreeze_backbone()
        return fit(
            network.backbone, batches, config, loss_fn=cross_entropy, progress=progress, description=description
        )
    if phase.trains == "heads":
        if validation is None:
            raise ValueError("validation=None is not allowed for a heads phase; expected (x, y) to stop heads on")
        history, _ = train_heads_early_stopping(
            network, batches, config, validation, check_every=schedule.check_every, patience=schedule.patience
        )
        return history
    network.unfreeze_backbone()
    groups = [
        {"params": list(network.backbone.parameters()), "name": "backbone"},
        {"params": network.head_parameters(), "name": "heads", "lr_scale": phase.heads_lr / phase.lr},
    ]
    return fit(
        network,
        batches,
        config,
        param_groups=groups,
        loss_fn=multi_exit_loss,
        progress=progress,
        description=description,
    )


@dataclass(frozen=True)
class HeadStopping:
    """What early stopping did to each internal head: the step of its best check, the step it stopped at, the
    best validation accuracy, and every check's validation accuracy (checks x heads)."""

    best_step: tuple[int, ...]
    stopped_at: tuple[int, ...]
    best_accuracy: tuple[float, ...]
    checks: pd.DataFrame  # step, then one column per head: "head 1", ...


@torch.no_grad()
def head_accuracies(network: EarlyExitNetwork, x: Tensor, y: Tensor) -> list[float]:
    """Validation accuracy of every internal head (not the final exit), in eval mode."""
    check_inputs(x)
    was_training = network.training
    network.eval()
    logits = network.forward_until(x, network.num_exits - 2) if network.heads else []
    network.train(was_training)
    check_labels("y", y, count=len(x), num_classes=logits[0].shape[-1] if logits else None)
    return [float((head.argmax(-1) == y).float().mean()) for head in logits]


def check_inputs(x, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} with shape {shape} is not allowed; expected a batch tensor (N >= 1, ...)")


def check_batch(name: str, batch) -> None:
    """A batch is a pair (x, y): inputs (N, ...) and N integer labels."""
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(f"{name} of type {type(batch).__name__} is not allowed; expected a pair (x, y)")
    check_inputs(batch[0], f"{name}[0]")
    check_labels(f"{name}[1]", batch[1], count=len(batch[0]), num_classes=None)


def train_heads_early_stopping(
    network: EarlyExitNetwork,
    batches: Iterable[Batch] | Callable[[], Batch],
    config: TrainConfig,
    validation: Batch,
    *,
    check_every: int,
    patience: int,
) -> tuple[pd.DataFrame, HeadStopping]:
    """Phase 3: train the heads on the frozen backbone, stopping each one early on validation accuracy.

    Each step minimises the paper's loss L restricted to the heads still training (the final exit belongs to
    the frozen backbone, so its term has no gradient; a stopped head's term is dropped; the others keep the
    1/H weight). Every ``check_every`` steps (and after the last) each head's validation accuracy is measured;
    a head that beats its best so far has its state saved, one that has not improved for ``patience`` checks
    stops training. At the end every head reloads its best state. The authors' stopper
    (``EarlyStopperEarlyExit``) also counts patience per head, but saves the whole model whenever any head
    improves and stops when all have run out; with the backbone frozen the heads are independent, so we keep
    each head's own best. Because the backbone cannot change, its forward pass runs without gradients.

    Returns the history (step, lr, loss, seconds, heads_training) and a :class:`HeadStopping`.
    """
    check_int("check_every", check_every, low=1)
    check_int("patience", patience, low=1)
    check_batch("validation", validation)
    network.freeze_backbone()
    heads = list(network.heads)
    device = next(network.parameters()).device
    x_val, y_val = (t.to(device) for t in validation)
    groups = [{"params": list(head.parameters()), "name": f"head {h + 1}"} for h, head in enumerate(heads)]
    optimizer = make_optimizer(network, config, groups)
    next_batch = batches if callable(batches) else _next_of(iter(batches))
    active = [True] * len(heads)
    best = [-math.inf] * len(heads)
    best_state = [copy.deepcopy(head.state_dict()) for head in heads]
    best_step, stopped_at, waited = [0] * len(heads), [config.steps] * len(heads), [0] * len(heads)
    rows, checks = [], []
    heads_at = dict(zip(network.place_at, range(len(heads)), strict=True))
    start = time.perf_counter()
    for step in range(config.steps):
        if not any(active):
            break
        factor = lr_factor(step, config)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group["lr_scale"] * factor
        network.train()  # the heads train; the frozen backbone stays in eval mode
        x, y = (t.to(device) for t in next_batch())
        losses = []
        with torch.no_grad():
            hidden, inputs = x, {}
            for index, stage in enumerate(network.stages[: max(network.place_at) + 1]):
                hidden = stage(hidden)
                if index in heads_at and active[heads_at[index]]:
                    inputs[heads_at[index]] = hidden
        for h, features in inputs.items():
            losses.append(F.cross_entropy(heads[h](features), y))
        loss = torch.stack(losses).sum() / network.num_exits
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(network.head_parameters(), config.grad_clip)
        optimizer.step()  # a stopped head has no gradient, so AdamW leaves it alone
        rows.append(dict(step=step + 1, lr=config.lr * factor, loss=loss.item(), heads_training=sum(active)))
        if (step + 1) % check_every == 0 or step + 1 == config.steps:
            accuracy = head_accuracies(network, x_val, y_val)
            checks.append({"step": step + 1, **{f"head {h + 1}": a for h, a in enumerate(accuracy)}})
            for h, value in enumerate(accuracy):
                if not active[h]:
                    continue
                if value > best[h]:
                    best[h], best_step[h], waited[h] = value, step + 1, 0
                    best_state[h] = copy.deepcopy(heads[h].state_dict())
                else:
                    waited[h] += 1
                    if waited[h] >= patience:
                        active[h], stopped_at[h] = False, step + 1
                        heads[h].requires_grad_(False)
        rows[-1]["seconds"] = time.perf_counter() - start
    for head, state in zip(heads, best_state, strict=True):
        head.load_state_dict(state)
        head.requires_grad_(True)
    stopping = HeadStopping(
        best_step=tuple(best_step),
        stopped_at=tuple(min(s, len(rows)) for s in stopped_at),
        best_accuracy=tuple(best),
        checks=pd.DataFrame(checks),
    )
    return pd.DataFrame(rows), stopping


def _next_of(iterator: Iterator[Batch]) -> Callable[[], Batch]:
    return lambda: next(iterator)


def train_regime(
    network: EarlyExitNetwork,
    regime: str,
    schedule: RegimeSchedule,
    batches: Callable[[int], Iterable[Batch] | Callable[[], Batch]],
    *,
    validation: Batch | None = None,
    skip_backbone: bool = False,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Train ``network`` along ``regime`` in place; the history's ``phase`` column numbers the phases 1-3.

    ``batches(i)`` is the batch stream of the regime's i-th phase, so phase 1 and what follows it draw different
    (seeded) batch orders. With ``skip_backbone`` the network already holds a phase-1 backbone (shared between
    regimes, as in the authors' code) and only the later phases run; their streams keep their numbers. After a
    heads phase, ``history.attrs["stopping"]`` holds its :class:`HeadStopping`.
    """
    phases = schedule.phases(regime)
    if any(phase.trains == "heads" for phase in phases):
        if validation is None:
            raise ValueError("validation=None is not allowed for a heads phase; expected (x, y) to stop on")
        check_batch("validation", validation)
    histories, stopping = [], None
    for index, phase in enumerate(phases):
        number = {"backbone": 1, "joint": 2, "heads": 3}[phase.trains]
        if number == 1 and skip_backbone:
            continue
        if number == 3:
            history, stopping = train_heads_early_stopping(
                network,
                batches(index),
                schedule.train_config(phase),
                validation,
                check_every=schedule.check_every,
                patience=schedule.patience,
            )
        else:
            history = run_phase(
                network, phase, batches(index), schedule, progress=progress, description=f"{regime} phase {number}"
            )
        histories.append(history.assign(phase=number))
    network.eval()
    columns = ["step", "lr", "loss", "seconds", "phase"]
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=columns)
    history.attrs["stopping"] = stopping
    return history


# ---------------------------------------------------------------------------------------------------------------
# The exit rule and the cost-accuracy trade-off


def check_rule(rule) -> None:
    check_choice("rule", rule, EXIT_RULES)


def check_threshold(threshold, rule: str = "confidence") -> None:
    """A threshold is a number >= 0 (for confidence, anything >= 1 means "never exit early")."""
    check_rule(rule)
    ok = isinstance(threshold, int | float | np.integer | np.floating) and not isinstance(threshold, bool)
    if not ok or math.isnan(threshold) or threshold < 0:
        unit = "a confidence (max softmax probability)" if rule == "confidence" else "an entropy in nats"
        raise ValueError(f"threshold={threshold!r} is not allowed; expected {unit}: a number >= 0")


def exit_mask(logits: Tensor, threshold: float, rule: str = "confidence") -> Tensor:
    """Which rows of ``logits`` (..., C) are confident enough to exit: max p > t, or entropy(p) < t (strict)."""
    check_threshold(threshold, rule)
    if not isinstance(logits, Tensor) or logits.ndim == 0 or logits.shape[-1] == 0:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits with shape {shape} are not allowed; expected a tensor (..., C) with C >= 1")
    probabilities = logits.softmax(-1)
    if rule == "confidence":
        return probabilities.amax(-1) > threshold
    entropy = -(probabilities * logits.log_softmax(-1)).sum(-1)
    return entropy < threshold


def choose_exits(exit_logits: Tensor, threshold: float, rule: str = "confidence") -> Tensor:
    """The exit each sample takes, (N,), from all exits' logits (H, N, C): the first that passes the rule.

    The last exit always "passes": a sample no internal head is sure about takes the backbone's answer.
    """
    check_exit_logits(exit_logits)
    passes = exit_mask(exit_logits, threshold, rule)
    passes[-1] = True
    return passes.int().argmax(0)  # argmax returns the first maximum: the earliest passing exit


def check_exit_logits(exit_logits) -> None:
    """Every exit's logits (H, N, C): at least one exit, one sample and two classes, all finite."""
    if not isinstance(exit_logits, Tensor) or exit_logits.ndim != 3 or min(exit_logits.shape) == 0:
        shape = tuple(exit_logits.shape) if isinstance(exit_logits, Tensor) else type(exit_logits).__name__
        raise ValueError(f"exit_logits with shape {shape} is not allowed; expected a tensor (H, N, C)")
    if not torch.isfinite(exit_logits).all():
        raise ValueError("exit_logits with NaN or infinite entries are not allowed; expected finite logits")


def check_costs(costs, num_exits: int, backbone_flops=None) -> None:
    """One finite cost >= 0 per exit; the cost relative costs divide by (``backbone_flops``, by default the last
    exit's) must be > 0."""
    if not isinstance(costs, Sequence | np.ndarray) or len(costs) != num_exits:
        raise ValueError(f"costs={costs!r} is not allowed; expected one cost per exit ({num_exits})")
    values = np.asarray(costs)
    if values.ndim != 1 or values.dtype.kind not in "iuf" or not (np.isfinite(values) & (values >= 0)).all():
        raise ValueError(f"costs={list(costs)!r} is not allowed; expected finite FLOP counts >= 0")
    if backbone_flops is None:
        check_positive("costs[-1]", float(values[-1]))
    else:
        check_positive("backbone_flops", backbone_flops)


def exit_costs(network: EarlyExitNetwork, example: Tensor) -> list[int]:
    """FLOPs of reaching each exit on one sample: the stages up to it plus every head up to and including it."""

    class Prefix(nn.Module):
        def __init__(self, exit_index: int):
            super().__init__()
            self.network, self.exit_index = network, exit_index

        def forward(self, x):
            return self.network.forward_until(x, self.exit_index)

    was_training = network.training
    network.eval()
    costs = [module_forward_flops(Prefix(h), example[:1]) for h in range(network.num_exits)]
    network.train(was_training)
    return costs


@dataclass(frozen=True)
class ExitOutcome:
    """What one threshold does to a test set: where each sample exits, what it predicts, what it costs."""

    threshold: float
    rule: str
    exits: Tensor  # (N,) exit index per sample
    predictions: Tensor  # (N,)
    histogram: np.ndarray  # (H,) samples per exit
    accuracy: float
    expected_flops: float  # sum_h cost_h * n_h / N
    relative_cost: float  # expected_flops / the backbone's FLOPs


def evaluate_threshold(
    exit_logits: Tensor,
    labels: Tensor,
    costs: Sequence[float],
    threshold: float,
    *,
    rule: str = "confidence",
    backbone_flops: float | None = None,
) -> ExitOutcome:
    """Simulate the exit rule on precomputed logits (H, N, C); cheap enough to call from a slider."""
    check_exit_logits(exit_logits)
    check_labels("labels", labels, count=exit_logits.shape[1], num_classes=exit_logits.shape[2])
    check_costs(costs, len(exit_logits), backbone_flops)
    exits = choose_exits(exit_logits, threshold, rule)
    predictions = exit_logits.argmax(-1).gather(0, exits[None]).squeeze(0)
    histogram = torch.bincount(exits.cpu(), minlength=len(costs)).numpy()
    expected = float(np.dot(histogram, np.asarray(costs, dtype=float)) / len(exits))
    reference = backbone_flops if backbone_flops is not None else costs[-1]
    accuracy = float((predictions == labels.to(predictions.device)).float().mean())
    return ExitOutcome(
        float(threshold), rule, exits, predictions, histogram, accuracy, expected, expected / reference
    )


def default_thresholds(rule: str = "confidence", count: int = 101) -> np.ndarray:
    """The sweep: ``linspace(0, 1, count)`` as in the paper's code, refined towards 1 for confidence.

    Trained heads are often 99.9 % sure, so a plain grid would put all the interesting operating points between
    its last two values; we add 1 - 10^-k for k = 3..6. Entropy thresholds sweep 0..ln(10) nats.
    """
    check_rule(rule)
    check_int("count", count, low=2)
    if rule == "entropy":
        return np.linspace(0.0, math.log(10), count)
    near_one = 1 - 10.0 ** -np.arange(3, 7)
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, count), near_one]))


def cost_accuracy_curve(
    exit_logits: Tensor,
    labels: Tensor,
    costs: Sequence[float],
    thresholds: Iterable[float] | None = None,
    *,
    rule: str = "confidence",
    backbone_flops: float | None = None,
) -> pd.DataFrame:
    """One row per threshold: threshold, expected_flops, relative_cost, accuracy."""
    thresholds = default_thresholds(rule) if thresholds is None else list(thresholds)
    if len(thresholds) == 0:
        raise ValueError("thresholds=[] is not allowed; expected at least one threshold")
    rows = []
    for threshold in thresholds:
        outcome = evaluate_threshold(
            exit_logits, labels, costs, threshold, rule=rule, backbone_flops=backbone_flops
        )
        rows.append(
            dict(
                threshold=outcome.threshold,
                expected_flops=outcome.expected_flops,
                relative_cost=outcome.relative_cost,
                accuracy=outcome.accuracy,
            )
        )
    return pd.DataFrame(rows)


def accuracy_within_budget(curve: pd.DataFrame, budgets: Iterable[float]) -> np.ndarray:
    """Accuracy at each relative-cost budget, by the paper's step rule; NaN where no point fits.

    The rule (the authors' table script): take the curve point with the largest cost that does not exceed the
    budget, and report its accuracy, without interpolating. Ties in cost go to the later threshold of the sweep.
    """
    budgets = check_budgets("budgets", budgets, allow_infinite=True)
    if not isinstance(curve, pd.DataFrame) or not {"relative_cost", "accuracy"} <= set(curve.columns):
        raise ValueError("curve is not allowed: expected a DataFrame with relative_cost and accuracy columns")
    ordered = curve.sort_values("relative_cost", kind="stable")
    cost, accuracy = ordered.relative_cost.to_numpy(), ordered.accuracy.to_numpy()
    position = np.searchsorted(cost, budgets, side="right") - 1
    return np.where(position >= 0, accuracy[np.clip(position, 0, None)], np.nan)


def accuracy_at_budgets(curve: pd.DataFrame, fractions: Sequence[float] = BUDGET_FRACTIONS) -> dict[str, float]:
    """The paper's table row: accuracy at 25, 50, 75 and 100 % of the backbone's cost, keyed "25%" etc."""
    fractions = check_budgets("fractions", fractions)
    values = accuracy_within_budget(curve, fractions)
    return {f"{round(100 * f)}%": float(v) for f, v in zip(fractions, values, strict=True)}


def check_budgets(name: str, budgets, *, allow_infinite: bool = False) -> np.ndarray:
    """Relative-cost budgets as a float array: numbers >= 0, not NaN (infinity, "no limit", where allowed)."""
    listed = list(budgets)
    values = np.asarray(listed)
    ok = values.ndim == 1 and values.dtype.kind in "iuf" and not np.isnan(values).any() and (values >= 0).all()
    if not ok or not (allow_infinite or np.isfinite(values).all()):
        kind = "numbers >= 0 (infinity allowed)" if allow_infinite else "finite numbers >= 0"
        raise ValueError(f"{name}={listed!r} is not allowed; expected {kind}")
    return values.astype(float)


def area_under_curve(curve: pd.DataFrame, up_to: float = 1.0) -> float:
    """Mean accuracy within budget over relative costs in [0, ``up_to``] (budgets no exit fits count as 0).

    One number per curve that rewards being accurate early; a perfect model scores 1 only if it is right at
    no cost, so compare regimes with it rather than reading it absolutely.
    """
    check_positive("up_to", up_to)
    grid = np.linspace(0.0, up_to, 201)
    return float(np.nan_to_num(accuracy_within_budget(curve, grid), nan=0.0).mean())


@torch.no_grad()
def exit_logits_on(network: EarlyExitNetwork, x: Tensor, batch_size: int = 1024) -> Tensor:
    """All exits' logits (H, N, C) on ``x`` in eval mode, in chunks."""
    check_int("batch_size", batch_size, low=1)
    check_inputs(x)
    network.eval()
    device = next(network.parameters()).device
    chunks = [network.exit_logits(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Wall-clock of real early exits


@torch.no_grad()
def measure_speedup(
    network: EarlyExitNetwork,
    x: Tensor,
    threshold: float,
    *,
    rule: str = "confidence",
    costs: Sequence[float] | None = None,
    repeats: int = 11,
) -> dict[str, float]:
    """Wall-clock of real early exits beside the FLOP estimate, both relative to the plain backbone.

    Times ``network.early_exit_forward`` and ``network.backbone`` on the same batch, alternating, ``repeats``
    times each after a warm-up. ``flop_ratio`` is the expected cost over the backbone's; ``time_ratio`` is what
    the clock says: the median over the repeats of (early-exit time / backbone time) in the same round, which
    cancels most of the load that other work puts on a shared machine. The ``_ms`` columns are plain medians.

    The gap between the two ratios is the price of the heads' bookkeeping (softmax, masks, gathering the
    remaining rows), of small batches running less efficiently than big ones, and of the work a FLOP count
    leaves out (pooling, activations, memory traffic), which weighs most in the early, large maps.
    """
    check_int("repeats", repeats, low=1)
    check_threshold(threshold, rule)
    check_inputs(x)
    if costs is not None:
        check_costs(costs, network.num_exits)
    network.eval()
    example = x[:1]
    costs = exit_costs(network, example) if costs is None else costs
    backbone_flops = module_forward_flops(network.backbone, example)
    _, exits = network.early_exit_forward(x, threshold, rule)
    histogram = torch.bincount(exits.cpu(), minlength=network.num_exits).numpy()
    flop_ratio = float(np.dot(histogram, costs) / len(x) / backbone_flops)
    works = {
        "backbone": lambda: network.backbone(x),
        "early": lambda: network.early_exit_forward(x, threshold, rule),
    }
    times = interleaved_times(works, repeats=repeats, warmup=1, cuda=x.is_cuda)
    backbone, early = times["backbone"], times["early"]
    return dict(
        threshold=float(threshold),
        flop_ratio=flop_ratio,
        time_ratio=statistics.median(e / b for e, b in zip(early, backbone, strict=True)),
        backbone_ms=1e3 * statistics.median(backbone),
        early_exit_ms=1e3 * statistics.median(early),
    )


@torch.no_grad()
def time_breakdown(network: EarlyExitNetwork, x: Tensor, *, repeats: int = 11) -> pd.DataFrame:
    """Where a forward pass spends its FLOPs and its time: one row per block, head and the final classifier.

    Columns: part, flops (per sample, by the course counter), ms (median over ``repeats`` rounds on the batch
    ``x``, each round timing every part once), and each part's share of the totals. Comparing the two shares
    shows which parts a FLOP count under- or over-states on this machine.
    """
    check_int("repeats", repeats, low=1)
    network.eval()
    heads_at = dict(zip(network.place_at, enumerate(network.heads), strict=True))
    parts, hidden = [], x
    for index, stage in enumerate(network.stages):
        parts.append((f"block {index + 1}", stage, hidden))
        hidden = stage(hidden)
        if index in heads_at:
            head_index, head = heads_at[index]
            parts.append((f"head {head_index + 1}", head, hidden))
    parts.append(("classifier", network.final_exit, hidden))
    # Round-robin over the parts, so that a burst of load elsewhere on the machine is spread over all of them.
    works = {name: (lambda m=module, i=inputs: m(i)) for name, module, inputs in parts}
    medians = median_times(works, repeats=repeats, warmup=1, cuda=x.is_cuda)
    table = pd.DataFrame(
        [
            dict(part=name, flops=module_forward_flops(module, inputs[:1]), ms=1e3 * medians[name])
            for name, module, inputs in parts
        ]
    )
    return table.assign(flop_share=table.flops / table.flops.sum(), time_share=table.ms / table.ms.sum())


# ---------------------------------------------------------------------------------------------------------------
# Numerical rank of activations


def numerical_rank(activations: Tensor, rtol: float = 1e-3) -> int:
    """The number of directions a set of representations really spans.

    ``activations`` is an (N, ...) batch, flattened to an N x D matrix A (one row per sample) and centred
    (the mean row is subtracted, so a constant offset does not count as a direction). Its numerical rank is the
    number of singular values sigma_i with sigma_i > rtol * sigma_max: the dimension of the subspace the
    representations occupy, ignoring directions whose spread is negligible next to the main one. It never
    exceeds min(N - 1, D), so measure it with N well above D, or it only counts samples.

    The singular values are the square roots of the eigenvalues of the smaller Gram matrix, A^T A (D x D) or
    A A^T (N x N), which is much cheaper than an SVD of A when one side is long; in float64, squaring leaves
    ample precision for a relative tolerance of 1e-3.
    """
    check_positive("rtol", rtol)
    if not isinstance(activations, Tensor) or activations.ndim == 0 or not torch.isfinite(activations).all():
        raise ValueError("activations is not allowed: expected a finite tensor (N, ...)")
    matrix = activations.reshape(len(activations), -1).double()
    matrix = matrix - matrix.mean(0, keepdim=True)
    gram = matrix.T @ matrix if matrix.shape[1] <= matrix.shape[0] else matrix @ matrix.T
    singular = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()
    if singular.numel() == 0 or singular.max() == 0:
        return 0
    return int((singular > rtol * singular.max()).sum())


@torch.no_grad()
def activation_ranks(network: EarlyExitNetwork, x: Tensor, rtol: float = 1e-3) -> pd.DataFrame:
    """Numerical rank of every stage's output on ``x``: columns stage, rank, dimension, rank_fraction.

    ``rank_fraction`` divides the rank by the most it could be, min(N - 1, dimension), so that blocks of
    different widths (and a sample count below some block's dimension) compare on one scale.
    """
    check_positive("rtol", rtol)
    check_inputs(x)
    network.eval()
    rows, hidden = [], x.to(next(network.parameters()).device)
    for index, stage in enumerate(network.stages):
        hidden = stage(hidden)
        dimension = hidden[0].numel()
        rank = numerical_rank(hidden, rtol)
        possible = max(1, min(len(x) - 1, dimension))
        rows.append(dict(stage=index, rank=rank, dimension=dimension, rank_fraction=rank / possible))
    return pd.DataFrame(rows)
