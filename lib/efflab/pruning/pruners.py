"""One-shot vs iterative pruning, as defined by Janusz et al. (2025, arXiv 2508.13836).

Pruning removes weights from a trained network and then fine-tunes what is left so that it recovers. The question
the paper asks sounds settled but, the authors argue, was mostly assumed: is it better to remove everything at
once (*one-shot*) or a little at a time with fine-tuning in between (*iterative*)? Their answer, measured under
matched fine-tuning budgets: **one-shot wins at low pruning ratios, iterative wins at high ones**. They also
recommend *patience-based* fine-tuning and propose a *hybrid* schedule.

This module is the lecture's vocabulary, in the order a pruning run uses it (the split into schedules, scores,
pruners and counters follows Torch-Pruning's importance / pruner / counter split):

1. **Schedules.** Let ``p`` be the target pruning ratio, the fraction of
   the *original* prunable parameters (or channels) to remove, and ``s_k`` the cumulative ratio after step ``k``.

   * one-shot: a single step, ``s_1 = p``;
   * iterative constant: ``T`` equal steps *of the original size*, ``s_k = k p / T``;
   * iterative geometric: every step removes the same share ``q`` of what is *still there*,
     ``s_k = 1 - (1 - q)^k`` with ``q = 1 - (1 - p)^(1/T)`` so that ``s_T = p``;
   * hybrid: one jump to an intermediate ratio ``p0`` (where one-shot is still as good as iterative), then
     geometric steps from ``p0`` to ``p``.

   *Patience* is not a schedule. It is a rule for the fine-tuning phase after every step, and it combines with
   any of the four (the authors' run configurations use it with one-shot too): instead of a fixed share of the
   budget, a phase runs until the validation accuracy (what the authors' configurations monitor) has not
   improved by more than ``min_delta`` for ``patience`` epochs, and the best checkpoint of the phase is kept.

   The constant schedule takes big *relative* bites at the end: its last step removes ``(p/T) / (1 - (T-1)p/T)``
   of the survivors, which is 91 % of them for ``p = 0.98, T = 5``. The geometric one always removes ``q``
   (54 % there). That difference is the whole argument for geometric steps at high ratios.

2. **Scores** (criteria). Unstructured: the magnitude ``|w|`` of each parameter (weights *and* biases of every
   convolution and linear layer, as in the authors' code), compared across the whole network
   (*global*) or within each layer (*layer-wise*), or a random score as the control that any criterion must
   beat. Structured: the L1 or L2 norm of each channel's weights, taken over the whole dependency group that
   removing the channel touches (its filter *and* the next layer's input slice), as Torch-Pruning does it.

3. **Pruners.** Unstructured pruning goes through ``torch.nn.utils.prune``: the weight becomes
   ``weight_orig * weight_mask``, recomputed before every forward pass, so a pruned weight stays exactly zero
   however the optimiser moves ``weight_orig``. Masks make nothing faster, though. Structured pruning physically
   removes channels and neurons with Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph"), which
   slices every layer coupled to a removed channel, so the pruned network is a genuinely smaller dense network.

4. **Counters.** After every step the pruner measures what it did and raises :class:`SparsityMismatch` unless
   the measured sparsity equals the scheduled one *exactly*, in whole weights (or channels per layer). The
   authors' code asserts the same after every step; it is the cheapest guard against a schedule bug.

5. **Fine-tuning with a budget, or with patience.** Without patience, regimes are compared at *equal total
   fine-tuning compute*: a fixed number of optimiser steps, split evenly over the pruning steps, so one-shot
   gets one long phase and geometric five short ones. With patience, every phase runs as long as it keeps
   improving (up to a cap) and the run reports the epochs it really spent, so it is compared with fixed-budget
   runs *at those epochs*. Every phase gets a fresh optimiser (the authors rebuild it at every step) and ends on
   its best validation checkpoint.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from efflab.data.digits import Digits
from efflab.finetune import FinetuneBudget, check_patience, finetune, model_device, scheduled_count
from efflab.flops import count_nonzero_parameters, count_parameters, module_forward_flops
from efflab.timing import median_times
from efflab.train import classification_metrics, run_evaluation
from efflab.validation import check_choice, check_int, check_seed, is_number

REGIMES = ("one-shot", "constant", "geometric", "hybrid")  # patience combines with each of them
GRANULARITIES = ("unstructured", "structured")
UNSTRUCTURED_CRITERIA = ("global-magnitude", "layer-magnitude", "random")
STRUCTURED_CRITERIA = ("l1", "l2")
CRITERIA = {"unstructured": UNSTRUCTURED_CRITERIA, "structured": STRUCTURED_CRITERIA}


class SparsityMismatch(RuntimeError):
    """The sparsity measured after a pruning step differs from the scheduled one."""


def check_ratio(name: str, value) -> None:
    """A pruning ratio is a fraction of the original weights in [0, 1): 1 would remove everything."""
    if not (is_number(value) and 0 <= value < 1):
        raise ValueError(f"{name}={value!r} is not allowed; expected a pruning ratio in [0, 1)")


# --------------------------------------------------------------------------------------------------------------
# 1. Schedules
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """The cumulative pruning ratio after each step: ``cumulative[k]`` is ``s_(k+1)``, ending at ``ratio``.

    Every entry is a fraction of the *original* model. The constructor checks what every schedule must satisfy:
    at least one step, entries in [0, 1), never decreasing (pruned weights are not restored), ending on target.
    """

    regime: str
    ratio: float
    cumulative: tuple[float, ...]

    def __post_init__(self):
        if not (isinstance(self.regime, str) and self.regime):
            raise ValueError(f"regime={self.regime!r} is not allowed; expected a name, such as one of {REGIMES}")
        check_ratio("ratio", self.ratio)
        values = tuple(float(v) for v in self.cumulative)
        if not values:
            raise ValueError("cumulative=() is not allowed; expected at least one pruning step")
        for index, value in enumerate(values):
            check_ratio(f"cumulative[{index}]", value)
        if any(later < earlier for earlier, later in zip(values, values[1:], strict=False)):
            raise ValueError(f"cumulative={values!r} is not allowed; expected a non-decreasing sequence")
        if not math.isclose(values[-1], self.ratio, rel_tol=0, abs_tol=1e-12):
            raise ValueError(f"cumulative ends at {values[-1]!r}; expected it to end at ratio={self.ratio!r}")
        object.__setattr__(self, "cumulative", values[:-1] + (float(self.ratio),))

    @property
    def steps(self) -> int:
        return len(self.cumulative)

    @property
    def removed_per_step(self) -> tuple[float, ...]:
        """What each step removes, as a fraction of the original model (these sum to ``ratio``)."""
        previous = (0.0,) + self.cumulative[:-1]
        return tuple(now - before for before, now in zip(previous, self.cumulative, strict=True))

    @property
    def share_of_remaining(self) -> tuple[float, ...]:
        """What each step removes, as a fraction of what was still there before it (geometric: constant)."""
        previous = (0.0,) + self.cumulative[:-1]
        return tuple((now - before) / (1 - before) for before, now in zip(previous, self.cumulative, strict=True))


def one_shot_schedule(ratio: float) -> Schedule:
    """Remove ``ratio`` of the weights in one step."""
    return Schedule("one-shot", ratio, (ratio,))


def constant_schedule(ratio: float, steps: int) -> Schedule:
    """``steps`` equal steps of ``ratio / steps`` of the *original* weights: ``s_k = k * ratio / steps``."""
    check_ratio("ratio", ratio)
    check_int("steps", steps, low=1)
    return Schedule("constant", ratio, tuple(ratio * k / steps for k in range(1, steps + 1)))


def geometric_schedule(ratio: float, steps: int) -> Schedule:
    """``steps`` steps that each remove the same share ``q = 1 - (1 - ratio)^(1/steps)`` of the survivors.

    After ``k`` steps a fraction ``(1 - q)^k = (1 - ratio)^(k/steps)`` of the weights is left, so
    ``s_k = 1 - (1 - ratio)^(k/steps)``: the steps shrink as the network does.
    """
    check_ratio("ratio", ratio)
    check_int("steps", steps, low=1)
    return Schedule("geometric", ratio, tuple(1 - (1 - ratio) ** (k / steps) for k in range(1, steps + 1)))


def hybrid_schedule(ratio: float, start: float, steps: int) -> Schedule:
    """One-shot to ``start``, then ``steps - 1`` geometric steps from ``start`` to ``ratio`` (``steps`` in all).

    The surviving fraction goes from ``1 - start`` to ``1 - ratio`` by a constant factor per step. When the
    target does not exceed ``start`` there is nothing left to do iteratively, and hybrid *is* one-shot.
    """
    check_ratio("ratio", ratio)
    check_ratio("start", start)
    check_int("steps", steps, low=1)
    if ratio <= start:
        return Schedule("hybrid", ratio, (ratio,))
    if steps < 2:
        raise ValueError(f"steps={steps!r} is not allowed for a hybrid schedule above its start; expected >= 2")
    factor = (1 - ratio) / (1 - start)
    tail = tuple(1 - (1 - start) * factor ** (k / (steps - 1)) for k in range(1, steps))
    return Schedule("hybrid", ratio, (start,) + tail)


def make_schedule(regime: str, ratio: float, *, steps: int = 5, hybrid_start: float = 0.7) -> Schedule:
    """The schedule of a named regime (patience is a fine-tuning option, not a regime: see :func:`curve_name`).

    Every argument is checked, also those the regime does not use: a mistyped value is a mistake either way.
    """
    check_choice("regime", regime, REGIMES)
    check_ratio("ratio", ratio)
    check_int("steps", steps, low=1)
    check_ratio("hybrid_start", hybrid_start)
    if regime == "one-shot":
        return one_shot_schedule(ratio)
    if regime == "constant":
        return constant_schedule(ratio, steps)
    if regime == "hybrid":
        return hybrid_schedule(ratio, hybrid_start, steps)
    return geometric_schedule(ratio, steps)


def curve_name(regime: str, patience: int | None = None) -> str:
    """The label of one line in the plots: the schedule, and its patience when it fine-tunes with patience."""
    check_choice("regime", regime, REGIMES)
    if patience is None:
        return regime
    check_patience(patience)
    return f"{regime} + patience {patience}"


def schedule_table(schedules) -> pd.DataFrame:
    """One row per step of each schedule: cumulative ratio, what the step removes of the original model and of
    the weights still there before it."""
    rows = []
    for schedule in schedules:
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedules holds {schedule!r}; expected Schedule objects")
        for step, (cumulative, removed, share) in enumerate(
            zip(schedule.cumulative, schedule.removed_per_step, schedule.share_of_remaining, strict=True), start=1
        ):
            rows.append(
                {
                    "regime": schedule.regime,
                    "step": step,
                    "cumulative ratio": cumulative,
                    "removed (of original)": removed,
                    "removed (of survivors)": share,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# 2-4. Scores, pruners and counters: unstructured (masks)
# --------------------------------------------------------------------------------------------------------------


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``nn.Conv2d`` and ``nn.Linear`` layers, by name: what both kinds of pruning cut."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def prunable_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Every tensor unstructured pruning may mask: ``(layer, module, "weight" or "bias")``.

    The authors' code collects *all* parameters of the convolution and linear layers, biases included, and ranks
    them together; we do the same. (Biases are a few hundred of the ~14 thousand parameters here, and large ones
    survive long, so this changes little at low ratios; at 98 % it decides which units still have an offset.)
    """
    return [
        (name, module, tensor)
        for name, module in prunable_layers(model)
        for tensor in ("weight", "bias")
        if getattr(module, tensor, None) is not None
    ]


def effective_tensor(module: nn.Module, tensor: str = "weight") -> Tensor:
    """The tensor a layer computes with: ``<tensor>_orig * <tensor>_mask`` once pruned, else the parameter.

    We never read the ``weight`` attribute of a pruned layer directly: ``torch.nn.utils.prune`` refreshes it
    only in the next forward pass, so after an optimiser step or a checkpoint restore it can be stale.
    """
    if hasattr(module, f"{tensor}_mask"):
        return getattr(module, f"{tensor}_orig") * getattr(module, f"{tensor}_mask")
    return getattr(module, tensor)


def effective_weight(module: nn.Module) -> Tensor:
    """The weight a layer computes with (see :func:`effective_tensor`)."""
    return effective_tensor(module, "weight")


def _masked(module: nn.Module, tensor: str) -> int:
    mask = getattr(module, f"{tensor}_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def unstructured_sparsity(model: nn.Module) -> pd.DataFrame:
    """Per prunable layer: its parameters (weights and bias), how many are masked, and the pruned fraction."""
    totals: dict[str, list[int]] = {}
    for name, module, tensor in prunable_tensors(model):
        count = totals.setdefault(name, [0, 0])
        count[0] += getattr(module, tensor).numel()
        count[1] += _masked(module, tensor)
    return pd.DataFrame(
        [{"layer": n, "weights": t, "pruned": p, "sparsity": p / t} for n, (t, p) in totals.items()]
    )


class UnstructuredPruner:
    """Prunes a model's parameters with masks, to a cumulative ratio at a time: ``pruner.prune_to(0.8)``.

    ``criterion``:

    * ``"global-magnitude"``: remove the smallest ``|w|`` across *all* layers together, so layers with many
      small weights give up more. It needs no per-layer tuning, and it can empty a small layer entirely;
    * ``"layer-magnitude"``: remove the smallest ``|w|`` within each layer, the same ratio everywhere;
    * ``"random"``: remove parameters in a fixed random order (drawn once from ``seed``), the control.

    Weights and biases are ranked together (:func:`prunable_tensors`). Each call removes only parameters that
    are still there, so masks are nested: what is pruned at 50 % is among what is pruned at 80 %. After each
    call the measured sparsity must equal the schedule exactly.
    """

    def __init__(self, model: nn.Module, criterion: str = "global-magnitude", *, seed: int = 0):
        check_choice("criterion", criterion, UNSTRUCTURED_CRITERIA)
        check_seed(seed)
        self.model = model
        self.criterion = criterion
        self.layers = prunable_layers(model)
        self.tensors = prunable_tensors(model)
        if not self.layers:
            raise ValueError("model has no nn.Conv2d or nn.Linear layer to prune")
        self.ratio = 0.0
        self._random_scores = None
        if criterion == "random":
            generator = torch.Generator().manual_seed(seed)
            self._random_scores = [
                torch.rand(getattr(module, t).shape, generator=generator).to(getattr(module, t).device)
                for _, module, t in self.tensors
            ]

    @property
    def sizes(self) -> list[int]:
        """Parameters per layer (weights and bias)."""
        return [int(s) for s in unstructured_sparsity(self.model).weights]

    def scores(self) -> list[Tensor]:
        """Importance of every prunable tensor's entries, tensor by tensor: higher means kept longer."""
        if self._random_scores is not None:
            return self._random_scores
        return [effective_tensor(module, t).detach().abs() for _, module, t in self.tensors]

    def scheduled_pruned(self, ratio: float) -> list[int] | int:
        """Pruned parameters the schedule asks for: one total (global criteria) or one count per layer."""
        if self.criterion == "layer-magnitude":
            return [scheduled_count(ratio, size) for size in self.sizes]
        return scheduled_count(ratio, sum(self.sizes))

    def scheduled_units(self, ratio: float) -> int:
        """How many parameters the schedule says are pruned at ``ratio``, in all."""
        target = self.scheduled_pruned(ratio)
        return sum(target) if isinstance(target, list) else target

    def pruned_units(self) -> int:
        """How many parameters the masks actually remove."""
        return int(unstructured_sparsity(self.model).pruned.sum())

    def _prune_together(self, chosen: list[int], scores: list[Tensor], amount: int) -> None:
        # An int amount counts entries among those still unmasked (torch.nn.utils.prune's PruningContainer).
        if amount <= 0:
            return
        parameters = [(self.tensors[i][1], self.tensors[i][2]) for i in chosen]
        prune.global_unstructured(
            parameters,
            pruning_method=prune.L1Unstructured,
            amount=int(amount),
            importance_scores={parameters[j]: scores[i] for j, i in enumerate(chosen)},
        )

    def prune_to(self, ratio: float) -> pd.DataFrame:
        """Prune until a fraction ``ratio`` of the original parameters is masked; return the per-layer sparsity."""
        check_ratio("ratio", ratio)
        if ratio < self.ratio:
            raise ValueError(f"ratio={ratio!r} is not allowed; the model is already pruned to {self.ratio!r}")
        measured = unstructured_sparsity(self.model)
        target = self.scheduled_pruned(ratio)
        scores = self.scores()
        if self.criterion == "layer-magnitude":
            for layer, want, have in zip(measured.layer, target, measured.pruned, strict=True):
                chosen = [i for i, (name, _, _) in enumerate(self.tensors) if name == layer]
                self._prune_together(chosen, scores, int(want - have))
        else:
            self._prune_together(list(range(len(self.tensors))), scores, int(target - measured.pruned.sum()))
        self.ratio = ratio
        return self.check(ratio)

    def check(self, ratio: float) -> pd.DataFrame:
        """Raise :class:`SparsityMismatch` unless the masks hold exactly the scheduled number of zeros."""
        measured = unstructured_sparsity(self.model)
        target = self.scheduled_pruned(ratio)
        got = list(measured.pruned) if isinstance(target, list) else int(measured.pruned.sum())
        if got != target:
            raise SparsityMismatch(f"after pruning to {ratio!r}: {got} parameters are masked, scheduled {target}")
        for _, module, tensor in self.tensors:  # the effective tensors really are zero where masked
            mask = getattr(module, f"{tensor}_mask", None)
            if mask is not None and torch.count_nonzero(effective_tensor(module, tensor)[mask == 0]):
                raise SparsityMismatch(f"a masked {tensor} is not zero in the effective {tensor}")
        return measured


# --------------------------------------------------------------------------------------------------------------
# 2-4. Scores, pruners and counters: structured (channels removed with Torch-Pruning)
# --------------------------------------------------------------------------------------------------------------


def structured_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers whose *outputs* (conv channels, hidden neurons) may be removed: all but the last layer.

    The last layer's outputs are the class scores; removing one would remove a class.
    """
    layers = prunable_layers(model)
    return layers[:-1]


def output_width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def structured_widths(model: nn.Module) -> dict[str, int]:
    """The current output width of every structurally prunable layer."""
    return {name: output_width(module) for name, module in structured_layers(model)}


class StructuredPruner:
    """Removes whole channels (conv) and neurons (linear), with the same ratio in every prunable layer.

    Per layer and step: build the *dependency group* of the layer's output channels (the channel's filter and
    bias, plus every slice downstream that reads it: the next convolution's input channel, or the 4 columns of
    the flattened features a 2x2 channel feeds), score each channel by the L1 or L2 norm over the whole group
    (``torch_pruning.importance.GroupMagnitudeImportance``), and let Torch-Pruning cut the lowest-scoring ones
    out of every coupled tensor. The result is a smaller ordinary network: no masks, fewer FLOPs.

    The ratio counts channels, not weights: a layer whose inputs and outputs both lose ``p`` of their channels
    keeps about ``(1 - p)^2`` of its weights.
    """

    def __init__(self, model: nn.Module, criterion: str = "l2", *, example_inputs: Tensor):
        import torch_pruning as tp  # imported here: only structured pruning needs it

        check_choice("criterion", criterion, STRUCTURED_CRITERIA)
        check_example_inputs(example_inputs)
        self.model = model
        self.criterion = criterion
        self.example_inputs = example_inputs
        self.original = structured_widths(model)
        if not self.original:
            raise ValueError("model has no layer whose outputs can be pruned (it needs at least two layers)")
        self.ratio = 0.0
        self._tp = tp
        self._importance = tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)
        # Traced once: pruning slices the traced modules in place, so the graph stays valid between steps.
        self._graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)

    def scheduled_widths(self, ratio: float) -> dict[str, int]:
        return {name: width - scheduled_count(ratio, width) for name, width in self.original.items()}

    def scheduled_units(self, ratio: float) -> int:
        """How many channels and neurons the schedule says are removed at ``ratio``, in all."""
        return sum(scheduled_count(ratio, width) for width in self.original.values())

    def pruned_units(self) -> int:
        """How many channels and neurons are actually gone."""
        return sum(self.original.values()) - sum(structured_widths(self.model).values())

    def prune_to(self, ratio: float) -> pd.DataFrame:
        """Remove channels until each layer has lost ``floor(ratio * original width)``; return the widths."""
        check_ratio("ratio", ratio)
        if ratio < self.ratio:
            raise ValueError(f"ratio={ratio!r} is not allowed; the model is already pruned to {self.ratio!r}")
        tp, graph = self._tp, self._graph
        for name, module in structured_layers(self.model):
            keep = self.scheduled_widths(ratio)[name]
            remove = output_width(module) - keep
            if remove <= 0:
                continue
            prune_fn = (
                tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
            )
            whole = graph.get_pruning_group(module, prune_fn, idxs=list(range(output_width(module))))
            scores = self._importance(whole)
            weakest = torch.argsort(scores, stable=True)[:remove]
            graph.get_pruning_group(module, prune_fn, idxs=sorted(weakest.tolist())).prune()
        self.ratio = ratio
        return self.check(ratio)

    def check(self, ratio: float) -> pd.DataFrame:
        """Raise :class:`SparsityMismatch` unless every layer has exactly the scheduled number of channels."""
        widths, want = structured_widths(self.model), self.scheduled_widths(ratio)
        if widths != want:
            raise SparsityMismatch(f"after pruning to {ratio!r}: widths {widths}, scheduled {want}")
        return self.sparsity()

    def sparsity(self) -> pd.DataFrame:
        """Per layer: original and current width, and the fraction of channels removed."""
        widths = structured_widths(self.model)
        return pd.DataFrame(
            [
                {"layer": name, "channels": width, "kept": widths[name], "sparsity": 1 - widths[name] / width}
                for name, width in self.original.items()
            ]
        )


def check_example_inputs(example_inputs) -> None:
    """Structured pruning traces the model on a batch of inputs; it must be a tensor with a batch dimension."""
    if not isinstance(example_inputs, Tensor) or example_inputs.dim() < 2 or len(example_inputs) == 0:
        got = "None" if example_inputs is None else f"a {type(example_inputs).__name__}"
        raise ValueError(f"example_inputs is {got}; structured pruning needs a batch of inputs (a tensor)")


def make_pruner(model: nn.Module, granularity: str, criterion: str, *, seed: int = 0, example_inputs=None):
    """An :class:`UnstructuredPruner` or a :class:`StructuredPruner` for ``model``."""
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("criterion", criterion, CRITERIA[granularity])
    if granularity == "unstructured":
        return UnstructuredPruner(model, criterion, seed=seed)
    return StructuredPruner(model, criterion, example_inputs=example_inputs)


# --------------------------------------------------------------------------------------------------------------
# 5. Fine-tuning under a budget, and one whole pruning run
# --------------------------------------------------------------------------------------------------------------


def measured_ratio(sparsity: pd.DataFrame) -> float:
    """The overall pruned fraction in a sparsity table: of all prunable weights, or of all prunable channels."""
    if "weights" in sparsity:
        return float(sparsity.pruned.sum() / sparsity.weights.sum())
    return float(1 - sparsity.kept.sum() / sparsity.channels.sum())


@dataclass
class PruningRun:
    """The outcome of pruning one trained model along one schedule.

    ``steps`` has one row per pruning step: the scheduled and measured ratio, the epochs spent so far and the
    validation and test accuracy after that step's fine-tuning. ``layers`` is the final per-layer sparsity.
    """

    model: nn.Module
    schedule: Schedule
    granularity: str
    criterion: str
    patience: int | None
    steps: pd.DataFrame
    layers: pd.DataFrame
    test_accuracy: float
    val_accuracy: float
    epochs: float
    parameters: int
    nonzero_parameters: int
    flops: int


def split_steps(total: int, parts: int) -> list[int]:
    """Split ``total`` optimiser steps into ``parts`` phases that differ by at most one step."""
    check_int("total", total, low=0)
    check_int("parts", parts, low=1)
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def prune_and_finetune(
    trained: nn.Module,
    data: Digits,
    schedule: Schedule,
    *,
    granularity: str = "unstructured",
    criterion: str = "global-magnitude",
    budget: FinetuneBudget | None = None,
    patience: int | None = None,
    seed: int = 0,
    on_epoch: Callable[[float], None] | None = None,
) -> PruningRun:
    """Prune a *copy* of ``trained`` along ``schedule``, fine-tuning after every step: score, prune, fine-tune.

    Without ``patience`` the run spends exactly ``budget.epochs`` epochs of fine-tuning, split evenly over the
    steps. With it, whatever the schedule, each phase stops on its own (see :func:`efflab.finetune.finetune`:
    ``patience`` epochs without a gain in validation accuracy, or ``budget.max_epochs_per_step``) and ``epochs``
    says what the run cost.
    Test accuracy is measured after every step, on a split that neither training nor checkpointing saw.
    Everything runs on ``trained``'s device: the batches, the scored chunks and the example inputs are moved
    there (a no-op when ``data`` already is), and the returned model stays there.
    """
    budget = FinetuneBudget() if budget is None else budget
    if not isinstance(budget, FinetuneBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a FinetuneBudget")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule={schedule!r} is not allowed; expected a Schedule")
    if patience is not None:
        check_patience(patience)
    check_seed(seed)
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("criterion", criterion, CRITERIA[granularity])
    model = copy.deepcopy(trained)
    example = data.train.x[:2].to(model_device(model))
    pruner = make_pruner(model, granularity, criterion, seed=seed, example_inputs=example)
    per_epoch = budget.steps_per_epoch(data.train)
    phases = split_steps(round(budget.epochs * per_epoch), schedule.steps)
    rows, spent = [], 0.0

    def report(epochs_in_phase: float) -> None:
        if on_epoch is not None:
            on_epoch(spent + epochs_in_phase)

    for index, ratio in enumerate(schedule.cumulative):
        sparsity = pruner.prune_to(ratio)
        phase = finetune(
            model,
            data.train,
            data.val,
            budget,
            steps=None if patience is not None else phases[index],
            patience=patience,
            seed=(seed * 1000 + index) % 2**32,  # each phase its own batch order
            on_epoch=report,
        )
        spent += phase.epochs
        test = run_evaluation(model, lambda m: classification_metrics(m, data.test.x, data.test.y, prefix="test"))
        rows.append(
            {
                "step": index + 1,
                "scheduled_ratio": ratio,
                "measured_ratio": measured_ratio(sparsity),
                "scheduled_units": pruner.scheduled_units(ratio),
                "pruned_units": pruner.pruned_units(),
                "epochs": spent,
                "phase_epochs": phase.epochs,
                "val_accuracy": phase.val_accuracy,
                "test_accuracy": test["test_accuracy"],
            }
        )
    steps = pd.DataFrame(rows)
    layers = sparsity.loc[:, ["layer", "sparsity"]]
    flops = module_forward_flops(model, data.train.x[:1].to(model_device(model)))
    return PruningRun(
        model=model,
        schedule=schedule,
        granularity=granularity,
        criterion=criterion,
        patience=patience,
        steps=steps,
        layers=layers,
        test_accuracy=float(steps.test_accuracy.iloc[-1]),
        val_accuracy=float(steps.val_accuracy.iloc[-1]),
        epochs=spent,
        parameters=count_parameters(model),
        nonzero_parameters=count_nonzero_parameters(model),
        flops=flops,
    )


def accuracy_without_finetuning(
    trained: nn.Module, data: Digits, ratios, *, criterion: str = "global-magnitude", seed: int = 0
) -> pd.DataFrame:
    """Test accuracy of a copy of ``trained`` masked to each of ``ratios`` in turn, with no fine-tuning at all.

    One pruner walks up the ratios, so the masks are nested: every weight removed at 0.5 is also removed at 0.8.
    This isolates the damage a criterion does from the recovery that fine-tuning buys.
    """
    ratios = list(ratios)
    for ratio in ratios:
        check_ratio("ratios", ratio)
    if ratios != sorted(ratios):
        raise ValueError(f"ratios={ratios!r} is not allowed; expected increasing ratios (the masks are nested)")
    check_choice("criterion", criterion, UNSTRUCTURED_CRITERIA)
    check_seed(seed)
    model = copy.deepcopy(trained)
    pruner = UnstructuredPruner(model, criterion, seed=seed)
    rows = []
    for ratio in ratios:
        pruner.prune_to(ratio)
        test = run_evaluation(model, lambda m: classification_metrics(m, data.test.x, data.test.y, prefix="test"))
        rows.append({"criterion": criterion, "ratio": ratio, "test_accuracy": test["test_accuracy"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# What structured pruning buys: measured latency beside the FLOP count
# --------------------------------------------------------------------------------------------------------------


def compare_latency(
    models: dict[str, nn.Module], inputs: Tensor, *, repeats: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Median forward time in seconds of each model on ``inputs`` (:func:`efflab.timing.median_times`).

    The models take turns within every repeat (dense, pruned A, pruned B, dense, ...) so that a burst of load
    from another process slows all of them alike rather than whichever happened to be running; the median over
    ``repeats`` then ignores the bursts that remain.
    """
    if not models:
        raise ValueError("models={} is not allowed; expected at least one model to time")
    if not isinstance(inputs, Tensor):
        raise ValueError(f"inputs={inputs!r} is not allowed; expected a batch of inputs as a tensor")
    check_int("repeats", repeats, low=1)
    check_int("warmup", warmup, low=0)
    with torch.inference_mode():
        for model in models.values():
            model.eval()
        works = {name: (lambda m=model: m(inputs)) for name, model in models.items()}
        return median_times(works, repeats=repeats, warmup=warmup, cuda=inputs.is_cuda)
