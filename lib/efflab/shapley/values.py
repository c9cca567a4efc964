"""Shapley-value channel pruning, after Adamczewski, Li & Van Gool (2024, arXiv 2407.15875).

Which channels of a trained layer can go? The paper answers with cooperative game theory. The *players* are the
``n`` output channels of one layer, ``N = {0, ..., n-1}``. A *coalition* ``S`` is a set of channels we keep; every
other channel of that layer is removed (its filter and its bias, so it outputs nothing) and nothing is retrained.
The *payoff* ``v(S)`` is how well the network does then, on a validation split: its accuracy (the paper's choice)
or its negative cross-entropy (smoother). The whole layer gives ``v(N)``, an empty layer ``v(∅)``, about chance.

**The Shapley value** of channel ``i`` is its marginal contribution averaged over every order in which the
channels could be added, which weights a coalition ``S`` not containing ``i`` by the chance that exactly ``S``
precedes ``i`` in a random order::

    φ_i = Σ_{S ⊆ N \\ {i}}  |S|! (n - |S| - 1)! / n!  ·  ( v(S ∪ {i}) - v(S) ).                 (1)

It is the only split of ``v(N) - v(∅)`` among the channels that is efficient (``Σ_i φ_i = v(N) - v(∅)``),
symmetric (interchangeable channels get equal shares), gives a channel that never changes the payoff zero, and
adds up over games. Prune the channels with the smallest ``φ``.

Two older ideas are corners of the same game:

* **leave-one-out** (LOO) looks at one term of (1), the one with ``S = N \\ {i}``: ``LOO_i = v(N) - v(N \\ {i})``.
  It sees a channel only in the company of all the others, so two channels that back each other up both look
  useless (removing either alone costs nothing), and LOO happily removes both;
* **oracle pruning** of size ``o`` searches all ``C(n, o)`` removal sets for the one that hurts least. It is exact
  for that one size but gives no ranking, and the best sets of different sizes need not be nested.

The Shapley value sits between them: it averages the marginals over coalitions of *every* size, so synergy and
redundancy between channels are counted.

**What it costs.** Equation (1) needs ``v`` on all ``2^n`` coalitions. Each estimator below is charged the
number of *distinct* coalitions it evaluates (a :class:`CountingGame` keeps the books):

==========================  ============================================  ==================================
estimator                   idea                                          coalition evaluations
==========================  ============================================  ==================================
:func:`exact_shapley`       every term of (1)                             ``2^n``
:func:`leave_one_out`       the ``|S| = n - 1`` term                      ``n + 1``
:func:`partial_shapley`     terms with at most ``K`` removed (or kept)    ``Σ_{j ≤ K} C(n, j)``
:func:`permutation_shapley` average marginals along ``M`` random orders   at most ``M (n - 1) + 2``
:func:`regression_shapley`  fit ``v(S) ≈ v(∅) + Σ_{i ∈ S} φ_i``         ``m`` (+ 2 when weighted)
:func:`norm_scores`         L1 / L2 norm of each filter                   0
:func:`random_scores`       a random order: the control                   0
==========================  ============================================  ==================================

**Evaluating many coalitions at once.** Removing channels zeroes them at the layer's output, and the next
layer is linear in its input. So we run the network up to the layer *once*, split the next layer's
pre-activation into one additive contribution per channel, ``z = b + Σ_c P_c``, and evaluate a whole batch of
coalitions as one matrix product of a (coalitions x channels) 0/1 mask matrix with the stacked contributions,
``Z = M P``. Only the (small) rest of the network runs per coalition. See :class:`ChannelGame`.

**The oracle benchmark** (the paper's section on the Oracle rank). With all ``2^n`` payoffs in hand we know the
best removal set and the best set to keep of every size (:func:`oracle_sets`, both directions). From the removal
sets we build the **Oracle rank** (:func:`oracle_rank`; the construction is *inferred*, see there) and score every
estimator by Kendall's τ against it. Beside it, the authors' own two scores (:func:`oracle_accuracy`): the
*accuracy of removal* (how much of the best removal set of size ``o`` a ranking's ``o`` lowest channels hold) and
the *accuracy of adding* (the same for the ``o`` highest and the best set to keep), for ``o = 1..5``. A uniformly
random ranking scores ``o/n`` on average (:func:`random_agreement`), the baseline any criterion must beat. This
measures the ranking *before* fine-tuning; later work (Feng et al. 2024, arXiv 2412.00143) found that for larger
networks the loss right after pruning barely predicts the loss after retraining.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from efflab.models.cnn import CNN
from efflab.validation import check_choice, check_finite, check_int, check_positive, check_seed

PAYOFFS = ("accuracy", "loss")
EXACT_LIMIT = 20  # 2^20 = 1,048,576 coalitions: the most we enumerate


class CoalitionGame(Protocol):
    """A cooperative game: ``game(coalitions)`` maps a (B, n) bool tensor (True = kept) to (B,) float64 payoffs."""

    players: int

    def __call__(self, coalitions: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------------------------------------------
# Coalitions as bit patterns
# --------------------------------------------------------------------------------------------------------------


def all_coalitions(players: int) -> Tensor:
    """Every coalition of ``players`` channels as a (2^n, n) bool tensor, row ``r`` keeping the bits set in ``r``.

    Row ``r`` is the binary number ``r``: bit ``i`` says whether channel ``i`` is kept. So row 0 is the empty
    coalition, the last row the full layer, and ``r | (1 << i)`` adds channel ``i`` to coalition ``r``.
    """
    check_int("players", players, low=1, high=EXACT_LIMIT)
    rows = torch.arange(2**players)
    return ((rows[:, None] >> torch.arange(players)) & 1).bool()


def coalition_index(coalitions: Tensor) -> Tensor:
    """The row of each coalition in :func:`all_coalitions`: its bits read as a binary number."""
    check_coalitions(coalitions)
    players = coalitions.shape[1]
    return (coalitions.long().cpu() << torch.arange(players)).sum(1)


def coalitions_missing_at_most(players: int, removed: int) -> Tensor:
    """Every coalition that lacks at most ``removed`` of the ``players`` channels, as a (rows, n) bool tensor."""
    check_int("players", players, low=1)
    check_int("removed", removed, low=0, high=players)
    blocks = [torch.ones(1, players, dtype=torch.bool)]
    for size in range(1, removed + 1):
        dropped = torch.combinations(torch.arange(players), size).view(-1, size)
        block = torch.ones(len(dropped), players, dtype=torch.bool)
        block.scatter_(1, dropped, False)
        blocks.append(block)
    return torch.cat(blocks)


def empty_and_full(players: int) -> Tensor:
    """The two coalitions every estimate is anchored to: nothing kept, everything kept."""
    check_int("players", players, low=1)
    return torch.stack([torch.zeros(players, dtype=torch.bool), torch.ones(players, dtype=torch.bool)])


def check_coalitions(coalitions: Tensor, players: int | None = None) -> None:
    """A (coalitions x channels) bool tensor, with one column per channel when ``players`` is given."""
    if not isinstance(coalitions, Tensor) or coalitions.dtype != torch.bool or coalitions.dim() != 2:
        raise ValueError("coalitions must be a 2-d bool tensor (coalitions x channels), True meaning kept")
    if players is not None and coalitions.shape[1] != players:
        raise ValueError(f"coalitions has {coalitions.shape[1]} columns; expected one per channel ({players})")


def shapley_weights(players: int) -> Tensor:
    """The weight of a coalition of size ``s`` (not containing ``i``) in (1): ``s! (n-s-1)! / n!``, for s < n.

    It is ``1 / (n C(n-1, s))``: pick the size uniformly (1/n), then one of the ``C(n-1, s)`` sets of that size.
    """
    check_int("players", players, low=1)
    return torch.tensor([1.0 / (players * math.comb(players - 1, s)) for s in range(players)], dtype=torch.float64)


def shapley_kernel_weights(coalitions: Tensor) -> Tensor:
    """The Shapley kernel of Lundberg & Lee (2017): ``(n-1) / (C(n,s) s (n-s))`` for a coalition of size ``s``.

    Weighted least squares with these weights, constrained to ``Σ φ = v(N) - v(∅)``, returns exactly the Shapley
    values when every coalition is in the fit. The empty and full coalitions have infinite weight: they enter
    through the constraint instead, and may not appear here.
    """
    check_coalitions(coalitions)
    players = coalitions.shape[1]
    sizes = coalitions.sum(1)
    if ((sizes == 0) | (sizes == players)).any():
        raise ValueError("coalitions contain the empty or the full coalition; they enter through the constraint")
    binomials = torch.tensor([math.comb(players, s) for s in range(players + 1)], dtype=torch.float64)
    sizes = sizes.cpu()
    return (players - 1) / (binomials[sizes] * sizes * (players - sizes))


# --------------------------------------------------------------------------------------------------------------
# 1. The game of one layer, evaluated for many coalitions at once
# --------------------------------------------------------------------------------------------------------------


def channel_layers(model: CNN) -> list[str]:
    """The layers whose outputs can be players: every convolution, and the hidden fully connected layer.

    (The output layer is not one: its outputs are the classes.) The names match ``model.get_submodule``.
    """
    return [f"features.{i}.conv" for i in range(len(model.features))] + ["classifier.hidden"]


@dataclass(frozen=True)
class _LayerParts:
    """The network cut around a layer: ``rest(next_layer(activation))`` gives the logits."""

    activation: Tensor  # (N, C, ...): the layer's output after its ReLU (and pool), the thing a mask multiplies
    next_layer: nn.Module  # the Conv2d or Linear that reads it
    rest: nn.Module  # everything after next_layer


class _MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` as the maximum of four strided views: the same numbers, several times faster on a CPU
    for the millions of tiny feature maps a batch of coalitions makes."""

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :height, :width]
        top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
        return torch.maximum(top, torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def _fast(module: nn.Module) -> nn.Module:
    """The module itself, or :class:`_MaxPool2x2` in place of a plain 2x2, stride-2 max-pool."""
    plain = isinstance(module, nn.MaxPool2d) and module.kernel_size in (2, (2, 2)) and module.stride in (2, (2, 2))
    plain = plain and module.padding in (0, (0, 0)) and module.dilation in (1, (1, 1)) and not module.ceil_mode
    return _MaxPool2x2() if plain else module


def _cut(model: CNN, layer: str, inputs: Tensor) -> _LayerParts:
    check_choice("layer", layer, channel_layers(model))
    blocks, head = model.features, model.classifier
    if layer == "classifier.hidden":
        activation = head.relu(head.hidden(head.flatten(blocks(inputs))))
        return _LayerParts(activation, head.out, nn.Identity())
    index = int(layer.split(".")[1])
    activation = blocks[: index + 1](inputs).contiguous()  # the coalition products are faster in this layout
    if index + 1 < len(blocks):
        following = blocks[index + 1]
        after_conv = [module for name, module in following.named_children() if name != "conv"]
        later = [module for block in blocks[index + 2 :] for module in block.children()]
        rest = nn.Sequential(*(_fast(module) for module in after_conv + later), head)
        return _LayerParts(activation, following.conv, rest)
    return _LayerParts(activation, head.hidden, nn.Sequential(head.relu, head.out))


def _channel_contributions(parts: _LayerParts) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Split the next layer's pre-activation into one additive term per input channel.

    Returns ``P`` (C, N, D), a bias (D,) and the shape of one sample's pre-activation, such that for any 0/1 mask
    ``m`` over the channels the next layer computes ``b + Σ_c m_c P_c`` (flattened to D numbers per sample).
    A convolution splits with ``groups=C``: group ``c`` convolves input channel ``c`` with its slice of every
    filter. A linear layer after a flatten splits its weight into per-channel column blocks.
    """
    activation, layer = parts.activation, parts.next_layer
    samples, channels = activation.shape[:2]
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"the layer after the players is a grouped convolution ({layer.groups} groups)")
        per_group = layer.weight.transpose(0, 1).reshape(-1, 1, *layer.kernel_size)
        out = F.conv2d(activation, per_group, None, layer.stride, layer.padding, layer.dilation, groups=channels)
        shape = (layer.out_channels, *out.shape[2:])
        contributions = out.reshape(samples, channels, -1).transpose(0, 1)
        bias = layer.bias.repeat_interleave(out.shape[2] * out.shape[3])
        return contributions, bias, shape
    flat = activation.reshape(samples, channels, -1)
    weight = layer.weight.view(layer.out_features, channels, flat.shape[2])
    return torch.einsum("nck,dck->cnd", flat, weight), layer.bias, (layer.out_features,)


class ChannelGame:
    """The coalition game of one layer's channels, played on a fixed split (the paper's per-layer game).

    ``game.outcomes(coalitions)`` returns the accuracy and the mean cross-entropy of the network with only the
    kept channels of ``layer``; ``game(coalitions)`` returns the payoff: accuracy, or the *negative* loss, so that
    more is better either way. Keeping a channel out equals zeroing its filter and bias: its output is then 0
    everywhere, and ReLU and max-pooling keep zeros at zero. (This CNN has no normalisation layer; with batch
    norm the mask would act after it, which is what removing the channel's scale and shift does.)

    The inputs go through the network up to ``layer`` once, at construction; see :func:`_channel_contributions`
    for the trick that then evaluates ``B`` coalitions as one (B x C) @ (C x N·D) matrix product, followed by
    the rest of the network on ``B·N`` rows. ``chunk`` bounds the number of floats in flight.
    """

    def __init__(
        self,
        model: CNN,
        layer: str,
        inputs: Tensor,
        labels: Tensor,
        *,
        payoff: str = "accuracy",
        chunk: int = 2**19,
    ):
        check_choice("payoff", payoff, PAYOFFS)
        check_int("chunk", chunk, low=1)
        if not (isinstance(inputs, Tensor) and isinstance(labels, Tensor)):
            raise ValueError("inputs and labels must be tensors: images (N, C, H, W) and their classes (N,)")
        if len(inputs) != len(labels) or len(inputs) == 0:
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) must be equally many, and some")
        if not (inputs.is_floating_point() and bool(torch.isfinite(inputs).all())):
            raise ValueError(f"inputs must be finite floating-point images; got {inputs.dtype}, or NaN or inf")
        classes = model.config.num_classes
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(
                f"labels must be a 1-d tensor of class indices; got {labels.dtype} {tuple(labels.shape)}"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise ValueError(f"labels must lie in [0, {classes}); got {int(labels.min())} to {int(labels.max())}")
        self.layer, self.payoff, self.chunk = layer, payoff, chunk
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            parts = _cut(model, layer, inputs.to(device))
            contributions, self._bias, self._shape = _channel_contributions(parts)
        model.train(was_training)
        self.players, self.samples = contributions.shape[:2]
        self._contributions = contributions.reshape(self.players, -1).contiguous()
        self._bias = self._bias.repeat(self.samples)  # one copy per sample, to add inside the matrix product
        self._rest = parts.rest
        self._labels = labels.to(device)

    def outcomes(self, coalitions: Tensor) -> dict[str, Tensor]:
        """Accuracy and mean cross-entropy (each (B,) float64, on the CPU) of every coalition in the batch."""
        check_coalitions(coalitions, self.players)
        per_coalition = self._contributions.shape[1]
        step = max(1, self.chunk // per_coalition)
        accuracy, loss = [], []
        with torch.no_grad():
            for start in range(0, len(coalitions), step):
                masks = coalitions[start : start + step].to(self._contributions)
                hidden = torch.addmm(self._bias, masks, self._contributions)
                logits = self._rest(hidden.view(-1, *self._shape))
                labels = self._labels.repeat(len(masks))
                # cross-entropy written out: several times faster than F.cross_entropy(reduction="none") here
                losses = torch.logsumexp(logits, 1) - logits.gather(1, labels[:, None])[:, 0]
                losses = losses.view(len(masks), self.samples)
                correct = (logits.argmax(1) == labels).view(len(masks), self.samples)
                accuracy.append(correct.sum(1).double().cpu() / self.samples)
                loss.append(losses.double().mean(1).cpu())
        return {"accuracy": torch.cat(accuracy), "loss": torch.cat(loss)}

    def __call__(self, coalitions: Tensor) -> Tensor:
        outcomes = self.outcomes(coalitions)
        return outcomes["accuracy"] if self.payoff == "accuracy" else -outcomes["loss"]


class CountingGame:
    """A game that keeps the books: each call evaluates only its distinct coalitions, and ``evaluations`` counts
    the distinct coalitions asked for over all calls, the cost measure of the paper's cost-benefit comparison."""

    def __init__(self, game: CoalitionGame):
        self.game = game
        self.players = game.players
        self._seen: list[Tensor] = []

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.players)
        distinct, inverse = torch.unique(coalitions.cpu(), dim=0, return_inverse=True)
        self._seen.append(distinct)
        return self.game(distinct).to(torch.float64).cpu()[inverse]

    @property
    def evaluations(self) -> int:
        if not self._seen:
            return 0
        return len(torch.unique(torch.cat(self._seen), dim=0))


def players_of(name: str, values: Tensor) -> int:
    """The number of channels of a full table of payoffs: its length must be ``2^n`` for some ``n >= 1``."""
    if not isinstance(values, Tensor) or values.dim() != 1:
        raise ValueError(f"{name} must be a 1-d tensor of payoffs, one per coalition")
    players = max(1, len(values).bit_length() - 1)
    if len(values) != 2**players:
        raise ValueError(f"{name} has {len(values)} entries; expected a power of two (>= 2), one per coalition")
    return players


@dataclass(frozen=True, eq=False)
class CoalitionTable:
    """Accuracy and loss of every coalition of a layer, indexed like :func:`all_coalitions`."""

    accuracy: Tensor
    loss: Tensor

    def __post_init__(self):
        if players_of("accuracy", self.accuracy) != players_of("loss", self.loss):
            raise ValueError(
                f"accuracy and loss have {len(self.accuracy)} and {len(self.loss)} entries; expected one each"
            )

    @property
    def players(self) -> int:
        return int(math.log2(len(self.accuracy)))

    def values(self, payoff: str = "accuracy") -> Tensor:
        """The payoff of every coalition: accuracy, or negative loss."""
        check_choice("payoff", payoff, PAYOFFS)
        return self.accuracy if payoff == "accuracy" else -self.loss

    def game(self, payoff: str = "accuracy") -> TabulatedGame:
        return TabulatedGame(self.values(payoff))


class TabulatedGame:
    """A game read from a table of all ``2^n`` payoffs: estimators are charged as before, nothing is recomputed."""

    def __init__(self, values: Tensor):
        players = players_of("values", values)
        self.players, self.values = players, values.to(torch.float64).cpu()

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.players)
        return self.values[coalition_index(coalitions)]


def check_enumerable(players: int, max_players: int = EXACT_LIMIT) -> None:
    check_int("players", players, low=1)
    check_int("max_players", max_players, low=1, high=EXACT_LIMIT)
    if players > max_players:
        raise ValueError(
            f"a layer of {players} channels has 2^{players} coalitions, too many to enumerate; expected at most "
            f"{max_players} channels (use partial_shapley, permutation_shapley or regression_shapley instead)"
        )


def tabulate(game: ChannelGame, *, max_players: int = EXACT_LIMIT) -> CoalitionTable:
    """Evaluate all ``2^n`` coalitions of a layer (the exact game), both payoffs at once."""
    check_enumerable(game.players, max_players)
    outcomes = game.outcomes(all_coalitions(game.players))
    return CoalitionTable(outcomes["accuracy"], outcomes["loss"])


# --------------------------------------------------------------------------------------------------------------
# 2. Estimators: every one returns scores (higher = more important) and what they cost
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Estimate:
    """Channel scores from one estimator, and the distinct coalitions it evaluated to get them."""

    method: str
    scores: Tensor
    evaluations: int

    @property
    def ranking(self) -> Tensor:
        """Channels from least to most important: the order in which to prune them (ties by channel index)."""
        return torch.argsort(self.scores, stable=True)


def marginals_by_size(values: Tensor) -> Tensor:
    """Mean marginal contribution of each channel to coalitions of each size: an (n channels, n sizes) table.

    Entry ``[i, s]`` averages ``v(S ∪ {i}) - v(S)`` over the ``C(n-1, s)`` coalitions ``S`` of size ``s`` without
    ``i``. Equation (1) gives every size the same total weight ``1/n``, so the Shapley value is the plain mean of
    a row, while leave-one-out is the last column (``s = n - 1``) alone.
    """
    players = players_of("values", values)
    rows = torch.arange(len(values))
    sizes = all_coalitions(players).sum(1)
    values = values.to(torch.float64).cpu()
    table = torch.zeros(players, players, dtype=torch.float64)
    for player in range(players):  # a loop over channels; each step handles 2^(n-1) coalitions at once
        without = rows[(rows >> player) & 1 == 0]
        gains = values[without | (1 << player)] - values[without]
        table[player].index_add_(0, sizes[without], gains)
    counts = torch.tensor([math.comb(players - 1, s) for s in range(players)], dtype=torch.float64)
    return table / counts


def shapley_from_table(values: Tensor) -> Tensor:
    """Equation (1) over a full table of payoffs (indexed like :func:`all_coalitions`): the mean over sizes."""
    return marginals_by_size(values).mean(1)


def exact_shapley(game: CoalitionGame, *, max_players: int = EXACT_LIMIT) -> Estimate:
    """Equation (1) by enumerating all ``2^n`` coalitions; refuses layers wider than ``max_players``."""
    check_enumerable(game.players, max_players)
    counted = CountingGame(game)
    values = counted(all_coalitions(game.players))
    return Estimate("exact Shapley", shapley_from_table(values), counted.evaluations)


def leave_one_out(game: CoalitionGame) -> Estimate:
    """``LOO_i = v(N) - v(N \\ {i})``: what the full layer loses without channel ``i`` alone."""
    counted = CountingGame(game)
    values = counted(coalitions_missing_at_most(game.players, 1))
    return Estimate("leave-one-out", values[0] - values[1:], counted.evaluations)


PARTIAL_DIRECTIONS = ("removing", "adding")


def partial_shapley(game: CoalitionGame, order: int, *, direction: str = "removing") -> Estimate:
    """The terms of (1) close to one end of the lattice: the paper's partial Shapley value, in two directions.

    ``direction="removing"`` keeps the terms in which at most ``order`` channels (channel ``i`` included) are
    removed, ``|S| ≥ n - order``: coalitions near the full layer. ``order = 1`` keeps only ``S = N \\ {i}``,
    whose weight is ``1/n``: the leave-one-out score divided by ``n``. ``direction="adding"`` keeps the terms in
    which at most ``order`` channels (``i`` included) are kept, ``|S ∪ {i}| ≤ order``: coalitions near the empty
    layer, channels added to almost nothing. ``order = 1`` is then ``v({i}) - v(∅)`` over ``n``. Either way the
    Shapley weights are left as they are (the partial sum is not rescaled), ``order = n`` is the exact value, and
    the cost is the ``Σ_{j ≤ order} C(n, j)`` coalitions that lack (or hold) at most ``order`` channels.
    """
    players = game.players
    check_int("order", order, low=1, high=players)
    check_choice("direction", direction, PARTIAL_DIRECTIONS)
    counted = CountingGame(game)
    if direction == "removing":
        parents = coalitions_missing_at_most(players, order - 1)  # S ∪ {i}: at most order - 1 others removed
    else:
        # complements of "at most `order` removed" keep at most `order`; the first row is the empty coalition
        parents = ~coalitions_missing_at_most(players, order)[1:]
    children = parents[:, None, :] & ~torch.eye(players, dtype=torch.bool)  # [p, i] = parent p without i
    values = counted(torch.cat([parents, children.reshape(-1, players)]))
    parent_values, child_values = values[: len(parents)], values[len(parents) :].view(len(parents), players)
    weights = shapley_weights(players)[parents.sum(1) - 1]  # weight of |S| = |parent| - 1
    marginals = (parent_values[:, None] - child_values) * parents  # zero where i was not in the parent
    name = f"partial Shapley (K={order})" if direction == "removing" else f"partial Shapley, adding (K={order})"
    return Estimate(name, (weights[:, None] * marginals).sum(0), counted.evaluations)


def _truncated_chains(counted: CountingGame, position: Tensor, truncation: float) -> Tensor:
    """Payoffs along each order, stopping a chain once it is within ``truncation · |v(N) - v(∅)|`` of ``v(N)``.

    A stopped chain stays flat, so its remaining channels get marginal 0 (Ghorbani & Zou 2019, "Data Shapley",
    call this truncated Monte Carlo). The loop runs over chain positions, one batch of open chains per step.
    """
    permutations, players = position.shape
    ends = counted(empty_and_full(players))
    tolerance = truncation * float((ends[1] - ends[0]).abs())
    values = torch.empty(permutations, players + 1, dtype=torch.float64)
    values[:, 0] = ends[0]
    open_chains = torch.ones(permutations, dtype=torch.bool)
    for step in range(1, players + 1):
        values[:, step] = values[:, step - 1]
        if open_chains.any():
            values[open_chains, step] = counted(position[open_chains] < step)
        open_chains &= (ends[1] - values[:, step]).abs() > tolerance
    return values


def permutation_shapley(
    game: CoalitionGame, permutations: int, *, seed: int = 0, truncation: float | None = None
) -> Estimate:
    """Average each channel's marginal contribution along ``permutations`` random orders (an unbiased estimate).

    Along one order the channels join one at a time, from the empty layer to the full one; channel ``i`` is
    credited ``v(before ∪ {i}) - v(before)``. One order costs ``n - 1`` new coalitions (the empty and full ones
    are shared by all). With ``truncation`` (a fraction of ``|v(N) - v(∅)|``; not in the paper) an order stops
    once the payoff is that close to ``v(N)``, and its later channels get 0: cheaper, slightly biased.
    """
    check_int("permutations", permutations, low=1)
    check_seed(seed)
    if truncation is not None:
        check_positive("truncation", truncation, allow_zero=True)
    players = game.players
    counted = CountingGame(game)
    generator = torch.Generator().manual_seed(seed)
    order = torch.rand(permutations, players, generator=generator).argsort(1)  # order[m, j]: j-th to join
    position = order.argsort(1)  # position[m, i]: when channel i joins order m
    if truncation is None:
        chains = position[:, None, :] < torch.arange(players + 1)[None, :, None]  # (M, n + 1, n)
        values = counted(chains.reshape(-1, players)).view(permutations, players + 1)
        method = f"permutations (M={permutations})"
    else:
        values = _truncated_chains(counted, position, truncation)
        method = f"truncated permutations (M={permutations})"
    marginals = values.gather(1, position + 1) - values.gather(1, position)
    return Estimate(method, marginals.mean(0), counted.evaluations)


def solve_shapley_regression(
    coalitions: Tensor, values: Tensor, *, empty: float, full: float, weights: Tensor | None = None
) -> Tensor:
    """Weighted least squares for ``v(S) - v(∅) ≈ Σ_{i ∈ S} φ_i`` subject to ``Σ_i φ_i = v(N) - v(∅)``.

    The constraint is solved for the last channel, ``φ_last = Δ - Σ_{i<last} φ_i``, which leaves an ordinary
    least-squares problem in the other ``n - 1`` unknowns (minimum-norm when there are too few samples).
    """
    check_coalitions(coalitions)
    samples = len(coalitions)
    if not isinstance(values, Tensor) or values.shape != (samples,):
        raise ValueError(f"values must be a tensor of shape ({samples},), one payoff per coalition")
    if weights is not None and (not isinstance(weights, Tensor) or weights.shape != (samples,)):
        raise ValueError(f"weights must be a tensor of shape ({samples},), one weight per coalition")
    check_finite("empty", empty)
    check_finite("full", full)
    kept = coalitions.to(torch.float64).cpu()
    gain = full - empty
    design = kept[:, :-1] - kept[:, -1:]
    target = values.to(torch.float64).cpu() - empty - kept[:, -1] * gain
    if weights is not None:
        root = weights.to(torch.float64).cpu().sqrt()
        design, target = design * root[:, None], target * root
    head = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]
    return torch.cat([head, (gain - head.sum()).view(1)])


def regression_shapley(game: CoalitionGame, samples: int, *, seed: int = 0, weighted: bool = True) -> Estimate:
    """Fit a linear model of the payoff on which channels are kept, from ``samples`` random coalitions.

    ``weighted=True`` is KernelSHAP (Lundberg & Lee 2017), the weighted least squares the paper proposes:
    coalition sizes are drawn in proportion to the Shapley kernel's total weight per size, ``∝ 1/(s(n-s))``
    (so the draws themselves carry the weights), and the fit is constrained to efficiency, which costs the two
    extra payoffs ``v(∅)`` and ``v(N)``. With all coalitions it returns the exact values.

    ``weighted=False`` is the plain regression of the authors' public code: sizes uniform in ``1..n-1``,
    ordinary least squares with an intercept, no constraint. It estimates something close to, but not equal to,
    the Shapley value.
    """
    check_int("samples", samples, low=1)
    check_seed(seed)
    players = game.players
    if players < 2:
        raise ValueError(f"a layer of {players} channel has no proper coalition to regress on; expected >= 2")
    counted = CountingGame(game)
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.arange(1, players, dtype=torch.float64)
    size_weights = 1 / (sizes * (players - sizes)) if weighted else torch.ones_like(sizes)
    drawn = torch.multinomial(size_weights, samples, replacement=True, generator=generator) + 1
    places = torch.rand(samples, players, generator=generator).argsort(1).argsort(1)
    coalitions = places < drawn[:, None]  # a uniform random coalition of each drawn size
    values = counted(coalitions)
    if weighted:
        ends = counted(empty_and_full(players))
        scores = solve_shapley_regression(coalitions, values, empty=float(ends[0]), full=float(ends[1]))
        return Estimate(f"kernel regression (m={samples})", scores, counted.evaluations)
    design = torch.cat([torch.ones(samples, 1, dtype=torch.float64), coalitions.to(torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, values[:, None], driver="gelsd").solution[:, 0]
    return Estimate(f"plain regression (m={samples})", solution[1:], counted.evaluations)


def norm_scores(model: nn.Module, layer: str, p: int = 1) -> Estimate:
    """The L1 (``p=1``) or L2 norm of each output channel's weights: free, and blind to what the data need."""
    check_choice("p", p, (1, 2))
    module = dict(model.named_modules()).get(layer) if isinstance(layer, str) else None
    if not isinstance(getattr(module, "weight", None), Tensor):
        raise ValueError(f"layer={layer!r} is not allowed; expected the name of a layer with weights in model")
    weight = module.weight.detach()
    return Estimate(f"L{p} norm", weight.flatten(1).norm(p=p, dim=1).double().cpu(), 0)


def random_scores(players: int, *, seed: int = 0) -> Estimate:
    """A uniformly random ranking: the control every criterion must beat."""
    check_int("players", players, low=1)
    check_seed(seed)
    return Estimate("random", torch.rand(players, generator=torch.Generator().manual_seed(seed)).double(), 0)


# --------------------------------------------------------------------------------------------------------------
# 3. Judging a ranking: against the exact values, against oracle sets, by what pruning it leaves
# --------------------------------------------------------------------------------------------------------------


def rank_correlation(scores: Tensor, reference: Tensor) -> float:
    """Kendall's τ-b between two score vectors: +1 same order, 0 unrelated, -1 reversed.

    ``(1 + τ) / 2`` is roughly the fraction of channel pairs the two put in the same order. A constant score
    vector orders nothing, so it gets 0.
    """
    scores, reference = np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)
    if scores.shape != reference.shape:
        raise ValueError(f"scores {scores.shape} and reference {reference.shape} must have the same shape")
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(reference))):
        raise ValueError("scores and reference must be finite; a NaN has no place in an order")
    if np.ptp(scores) == 0 or np.ptp(reference) == 0:
        return 0.0
    return float(stats.kendalltau(scores, reference).statistic)


ORACLE_DIRECTIONS = ("removing", "adding")


def oracle_sets(
    table: CoalitionTable, sizes: Sequence[int], *, payoff: str = "accuracy", direction: str = "removing"
) -> Tensor:
    """The oracle set of each size, as a (len(sizes), n) bool tensor.

    ``direction="removing"`` (True = removed): among all ``C(n, o)`` ways to remove ``o`` channels, the one whose
    remaining network has the highest payoff, the best ``o`` to remove. ``direction="adding"`` (True = kept):
    among all ways to keep only ``o`` channels, the one with the highest payoff, the best ``o`` to keep. Ties
    (common with accuracy on a few hundred images) go to the lower loss, and for the loss payoff to the higher
    accuracy; a tie on both goes to the lower coalition index.
    """
    check_choice("direction", direction, ORACLE_DIRECTIONS)
    players = table.players
    check_sizes(sizes, players)
    primary = table.values(payoff).numpy()
    secondary = table.values("loss" if payoff == "accuracy" else "accuracy").numpy()
    coalitions = all_coalitions(players)
    kept = coalitions.sum(1).numpy()
    best = []
    for size in sizes:  # one search per size
        candidates = np.flatnonzero(kept == (players - size if direction == "removing" else size))
        order = np.lexsort((-candidates, secondary[candidates], primary[candidates]))
        winner = candidates[order[-1]]
        best.append(~coalitions[winner] if direction == "removing" else coalitions[winner])
    return torch.stack(best)


def oracle_rank(table: CoalitionTable, *, payoff: str = "accuracy") -> Estimate:
    """The Oracle rank, the benchmark ranking built from the removal oracle sets of every size 1..n-1.

    Our construction, **inferred** from the paper's text and the authors' code (the paper's exact recipe was not
    available): oracle sets of different sizes need not be nested, so each channel is placed by the smallest size
    ``o`` at which it first enters the best removal set (removed earliest = least important), ties broken by how
    many of the sets it belongs to (more = less important), then by channel index. The scores are the places,
    so higher means more important, like every estimator's; it costs the ``2^n`` evaluations of the table.
    """
    players = table.players
    sets = oracle_sets(table, list(range(1, players)), payoff=payoff).numpy()  # row o - 1: best removal set of o
    sizes = np.arange(1, players)[:, None]
    first = np.where(sets, sizes, players).min(axis=0)  # size at which each channel is first removed (n: never)
    count = sets.sum(axis=0)
    ranking = np.lexsort((np.arange(players), -count, first))  # least important first
    scores = torch.empty(players, dtype=torch.float64)
    scores[torch.as_tensor(ranking)] = torch.arange(players, dtype=torch.float64)
    return Estimate("Oracle rank", scores, 2**players)


def oracle_accuracy(
    ranking: Tensor,
    table: CoalitionTable,
    *,
    sizes: Sequence[int],
    payoff: str = "accuracy",
    sets: tuple[Tensor, Tensor] | None = None,
):
    """The authors' two scores of a ranking, for oracle set sizes ``sizes`` (the code uses 1..5).

    *Accuracy of removal*: the share of the removal oracle set of size ``o`` among the ``o`` lowest-ranked
    channels; *accuracy of adding*: the share of the adding oracle set of size ``o`` among the ``o`` highest-ranked
    ones. Each is averaged over ``sizes``; a uniformly random ranking scores ``o/n`` on average for each size.
    ``sets`` may hold the two directions' oracle sets for ``sizes``, already searched (scoring many rankings
    on one table). Returns ``{"removal": float, "adding": float}``.
    """
    check_sizes(sizes, table.players)
    check_ranking(ranking, table.players)
    if sets is None:
        sets = (
            oracle_sets(table, sizes, payoff=payoff, direction="removing"),
            oracle_sets(table, sizes, payoff=payoff, direction="adding"),
        )
    removing, adding = sets
    if len(removing) != len(sizes) or len(adding) != len(sizes):
        raise ValueError(f"sets holds {len(removing)} and {len(adding)} oracle sets; expected {len(sizes)} each")
    return {
        "removal": float(oracle_agreement(ranking, removing).mean()),
        "adding": float(oracle_agreement(ranking.flip(0), adding).mean()),
    }


def check_sizes(sizes: Sequence[int], players: int) -> None:
    """Oracle set sizes: at least one, each in 1..n-1 (removing none or all channels has no best set)."""
    if len(sizes) == 0:
        raise ValueError("sizes is empty; expected at least one oracle set size")
    for size in sizes:
        check_int("sizes", size, low=1, high=players - 1)


def check_ranking(ranking: Tensor, players: int | None = None) -> None:
    """A ranking is an order of all ``players`` channels (by default, as many as it holds): a permutation of
    0..n-1, as an integer tensor."""
    ok = isinstance(ranking, Tensor) and ranking.dim() == 1 and not ranking.is_floating_point()
    ok = ok and ranking.dtype != torch.bool
    players = len(ranking) if ok and players is None else players
    if not (ok and torch.equal(ranking.sort().values.cpu().long(), torch.arange(players))):
        raise ValueError(f"ranking must be a permutation of the {players} channel indices, as an integer tensor")


def oracle_agreement(ranking: Tensor, removed: Tensor) -> Tensor:
    """For each oracle set of size ``o``: the fraction of it among the first ``o`` channels of ``ranking``."""
    check_coalitions(removed)
    check_ranking(ranking, removed.shape[1])
    sizes = removed.sum(1)
    if not bool((sizes > 0).all()):
        raise ValueError("removed holds an empty set; every oracle set has at least one channel")
    position = torch.empty_like(ranking)
    position[ranking] = torch.arange(len(ranking))
    bottom = position[None, :] < sizes[:, None]
    return (bottom & removed).sum(1).double() / sizes


def random_agreement(players: int, sizes: Sequence[int]) -> Tensor:
    """What a uniformly random ranking scores on average: ``o/n`` of an oracle set of size ``o``."""
    check_int("players", players, low=2)
    check_sizes(sizes, players)
    return torch.tensor([size / players for size in sizes], dtype=torch.float64)


def pruned_coalitions(ranking: Tensor, removals: Sequence[int]) -> Tensor:
    """Coalitions that remove the ``k`` lowest-ranked channels, one row per ``k`` in ``removals``."""
    check_ranking(ranking)
    for count in removals:
        check_int("removals", count, low=0, high=len(ranking))
    position = torch.empty_like(ranking)
    position[ranking] = torch.arange(len(ranking))
    counts = torch.as_tensor(list(removals))
    return position[None, :] >= counts[:, None]


# --------------------------------------------------------------------------------------------------------------
# 4. Pruning for real: cut the channels out
# --------------------------------------------------------------------------------------------------------------


def remove_channels(model: CNN, layer: str, channels: Sequence[int], example_inputs: Tensor) -> CNN:
    """Remove ``channels`` of ``layer`` from ``model`` in place, with every weight slice that reads them.

    Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph") finds the coupled slices: the next
    convolution's input channels, or the columns of the flattened features that a channel feeds. What is left is
    an ordinary, smaller dense network. Returns ``model``.
    """
    import torch_pruning as tp  # imported here: only pruning for real needs it

    check_choice("layer", layer, channel_layers(model))
    module = model.get_submodule(layer)
    width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in channels):
        raise ValueError(f"channels={channels!r} is not allowed; expected integer channel indices")
    channels = sorted({int(c) for c in channels})
    if any(not 0 <= c < width for c in channels) or len(channels) >= width:
        raise ValueError(f"channels={channels!r} is not allowed; expected distinct indices below {width}, not all")
    if channels:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        prune = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        graph.get_pruning_group(module, prune, idxs=channels).prune()
    return model
