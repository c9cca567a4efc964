"""Notebook 09's experiment: a ViT on digits made sparse, cut into experts and routed; then MiniLM.

Part 1 (every seed, side by side through :func:`efflab.parallel.run_all`):

1. train a dense GELU ViT on the digits (cached);
2. for each *variant*: no fine-tuning (GELU kept), or the ReLU swap plus fine-tuning with the Hoyer penalty at
   each weight lambda of the budget (lambda = 0 is MoEfication's "ReLUfication"), and the few-large-experts
   ablation at the main weight (converted from the same fine-tuned model as the main variant: one
   fine-tuning per weight and seed); measure the zero fraction per layer before and after;
3. convert (balanced clustering), train norm-regressing routers, sweep dynamic-k over tau and top-k over k; train
   MoEfication's activation-share routers on the same model and sweep top-k;
4. time the gathered implementation against the dense forward on the first seed's main model, on the run's
   device.

Part 2: all-MiniLM-L6-v2, converted without fine-tuning, and (full mode) after a ReLU + Hoyer + embedding
distillation fine-tune; cosine similarity and neighbour agreement against relative FFN FLOPs.

Where things run: every task (the dense trainings, the fine-tunings and conversions, MiniLM) and the timing use
the run's device: at the full budget a ViT training step is about 4.8 GFLOP, 0.12 to 0.24 s on one CPU core.
Two parts run on the CPU core of their task: the clustering's NumPy and SciPy part (it reads a CPU copy of the FFN
weights, and the converted layers are built from the device's weights in the order it finds), and the ViT's
router trainings, whose steps are a handful of tiny kernels that would only queue on the GPU. Tasks hand back CPU
tensors (state dicts, converted models, curves of Python numbers), so results pickle between processes and load
on any machine.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from efflab.cache import cached
from efflab.data.digits import Split, infinite_batches, load_digits
from efflab.dense_to_moe.conversion import moefy
from efflab.dense_to_moe.cost import cost_model
from efflab.dense_to_moe.evaluation import classifier_sweep
from efflab.dense_to_moe.routers import RouterBudget, collect_layer_inputs, train_routers
from efflab.dense_to_moe.sparsity import relufy, sparsity_finetune, zero_fraction
from efflab.experiment import Budget, paper_table, seeds_for, spread
from efflab.models.vit import ViT, ViTConfig, vit_outside_ffn_flops_per_image
from efflab.parallel import gpu_share_for, run_all
from efflab.runtime import Run, Timer, seed_everything
from efflab.train import TrainConfig, fit
from efflab.validation import check_int, check_positive

NAME = "09_dense_to_dynamic_moe"
DATA_SEED = 0  # one split of the digits for every model seed: seeds vary the training, not the test set
NO_FINETUNE = "no fine-tuning (GELU)"
PAPER_SAVING = 0.6  # abstract: "up to 60%" less inference cost without significant loss


def _check_taus(name: str, taus) -> None:
    from efflab.dense_to_moe.selection import check_tau

    if not isinstance(taus, tuple) or not taus:
        raise ValueError(f"{name}={taus!r} is not allowed; expected a non-empty tuple of numbers in [0, 1]")
    for tau in taus:
        check_tau(tau)
    if list(taus) != sorted(taus) or taus[-1] != 1.0:
        raise ValueError(f"{name}={taus!r} is not allowed; expected increasing values ending at 1.0 (dense)")


@dataclass(frozen=True)
class DenseToMoEBudget(Budget):
    """Every size and step count of the notebook; ``quick()`` for two CPU cores, ``full()`` for a GPU (every task
    runs on the run's device)."""

    seeds: int = 3
    d_model: int = 32
    n_layers: int = 3
    n_heads: int = 2
    d_ff: int = 128
    train_steps: int = 200
    batch_size: int = 256
    lr: float = 6e-3
    finetune_steps: int = 100
    finetune_lr: float = 1e-3
    penalty_weights: tuple = (0.0, 0.003, 0.01)
    main_weight: float = 0.01
    n_experts: int = 16
    large_experts: int = 4
    router_width: int = 32
    router_steps: int = 200
    cluster_iterations: int = 3
    taus: tuple = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
    timing_taus: tuple = (0.4, 0.8, 0.95)
    timing_copies: int = 1
    timing_repeats: int = 3
    minilm_train_sentences: int = 64
    minilm_heldout_sentences: int = 64
    minilm_max_length: int = 32
    minilm_experts: int = 96
    minilm_router_width: int = 64
    minilm_router_steps: int = 100
    minilm_cluster_iterations: int = 1
    minilm_taus: tuple = (0.5, 0.8, 0.9, 0.97, 1.0)
    minilm_ks: tuple = (8, 32, 64)
    minilm_finetune_steps: int = 0
    minilm_finetune_weight: float = 1e-3
    minilm_finetune_lr: float = 1e-4

    def __post_init__(self):
        for name in ("seeds", "d_model", "n_layers", "n_heads", "d_ff", "train_steps", "batch_size"):
            check_int(name, getattr(self, name), low=1)
        for name in ("finetune_steps", "router_steps", "cluster_iterations", "timing_copies", "timing_repeats"):
            check_int(name, getattr(self, name), low=1)
        for name in ("minilm_train_sentences", "minilm_heldout_sentences", "minilm_router_steps"):
            check_int(name, getattr(self, name), low=2)
        check_int("minilm_max_length", self.minilm_max_length, low=4, high=256)
        check_int("minilm_cluster_iterations", self.minilm_cluster_iterations, low=1)
        check_int("minilm_finetune_steps", self.minilm_finetune_steps, low=0)
        check_int("router_width", self.router_width, low=1)
        check_int("minilm_router_width", self.minilm_router_width, low=1)
        for name in ("lr", "finetune_lr", "minilm_finetune_lr"):
            check_positive(name, getattr(self, name))
        check_positive("minilm_finetune_weight", self.minilm_finetune_weight, allow_zero=True)
        if not isinstance(self.penalty_weights, tuple) or not self.penalty_weights:
            raise ValueError(f"penalty_weights={self.penalty_weights!r} is not allowed; expected a tuple")
        for weight in self.penalty_weights:
            check_positive("penalty_weights", weight, allow_zero=True)
        if self.main_weight not in self.penalty_weights or self.main_weight == 0:
            raise ValueError(
                f"main_weight={self.main_weight!r} is not allowed; expected a positive entry of "
                f"penalty_weights={self.penalty_weights}"
            )
        if 0.0 not in self.penalty_weights:
            raise ValueError("penalty_weights must contain 0.0: the ReLU-only model is MoEfication's baseline")
        from efflab.dense_to_moe.clustering import check_expert_count

        self.vit_config()  # checks that n_heads divides d_model
        check_expert_count(self.d_ff, self.n_experts)
        check_expert_count(self.d_ff, self.large_experts, "large_experts")
        check_expert_count(1536, self.minilm_experts, "minilm_experts")
        _check_taus("taus", self.taus)
        _check_taus("minilm_taus", self.minilm_taus)
        if not isinstance(self.timing_taus, tuple) or not set(self.timing_taus) <= set(self.taus):
            raise ValueError(
                f"timing_taus={self.timing_taus!r} is not allowed; expected a tuple of entries of taus"
            )
        if not isinstance(self.minilm_ks, tuple) or not self.minilm_ks:
            raise ValueError(
                f"minilm_ks={self.minilm_ks!r} is not allowed; expected a non-empty tuple of top-k values"
            )
        for k in self.minilm_ks:
            check_int("minilm_ks", k, low=1, high=self.minilm_experts)

    @classmethod
    def quick(cls) -> DenseToMoEBudget:
        """Two CPU cores. Batches of 128 images, not 256, for the dense training and the sparsity fine-tuning
        (each step half the cost; the dense ViTs of three seeds reach 92.4 % test accuracy on average against
        93.4 % with 256), and 60 fine-tuning steps, not 100 (full mode: 256 images, 600 steps)."""
        return cls(batch_size=128, finetune_steps=60)

    @classmethod
    def full(cls) -> DenseToMoEBudget:
        return cls(
            seeds=5,
            d_model=64,
            n_layers=4,
            n_heads=4,
            d_ff=256,
            train_steps=1500,
            finetune_steps=600,
            penalty_weights=(0.0, 0.003, 0.01, 0.03),
            n_experts=32,
            large_experts=4,
            router_steps=1000,
            router_width=32,
            taus=(0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0),
            timing_copies=16,
            timing_repeats=10,
            minilm_train_sentences=1024,
            minilm_heldout_sentences=512,
            minilm_max_length=64,
            minilm_router_width=128,
            minilm_router_steps=1500,
            minilm_cluster_iterations=3,
            minilm_taus=(0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0),
            minilm_ks=(4, 8, 16, 24, 32, 48, 64),
            minilm_finetune_steps=300,
        )

    def vit_config(self) -> ViTConfig:
        return ViTConfig(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads, d_ff=self.d_ff)

    def top_ks(self, n_experts: int) -> tuple[int, ...]:
        """k = 1, 2, 4, ... up to every expert."""
        check_int("n_experts", n_experts, low=1)
        ks = [1]
        while ks[-1] < n_experts:
            ks.append(min(2 * ks[-1], n_experts))
        return tuple(ks)

    def variants(self) -> tuple[tuple[str, float | None, int], ...]:
        """(name, penalty weight or None for no fine-tuning, experts) of every converted model."""
        rows = [(NO_FINETUNE, None, self.n_experts)]
        rows += [
            (variant_name(w, self.n_experts, self.n_experts), w, self.n_experts) for w in self.penalty_weights
        ]
        rows.append(
            (
                variant_name(self.main_weight, self.large_experts, self.n_experts),
                self.main_weight,
                self.large_experts,
            )
        )
        return tuple(rows)

    def conversions(self) -> tuple[tuple[float | None, tuple[tuple[str, int], ...]], ...]:
        """The variants grouped by fine-tuning: (weight, ((name, experts), ...)). A model fine-tuned once is
        converted at every expert count of its group."""
        groups: dict = {}
        for name, weight, experts in self.variants():
            groups.setdefault(weight, []).append((name, experts))
        return tuple((weight, tuple(members)) for weight, members in groups.items())


def variant_name(weight: float, n_experts: int, default_experts: int) -> str:
    name = f"lambda={weight:g}"
    return name if n_experts == default_experts else f"{name}, E={n_experts}"


# ---- tasks ----------------------------------------------------------------------------------------------------


def check_task_device(device) -> None:
    """Where a task computes: a string torch reads as a CPU or CUDA device ("cpu", "cuda", "cuda:1")."""
    from efflab.dense_to_moe.timing import DEVICE_TYPES

    try:
        kind = torch.device(device).type if isinstance(device, str) else None
    except RuntimeError:
        kind = None
    if kind not in DEVICE_TYPES:
        raise ValueError(f"device={device!r} is not allowed; expected 'cpu', 'cuda' or 'cuda:<index>'")


@dataclass(frozen=True)
class DenseTask:
    seed: int
    budget: DenseToMoEBudget
    device: str = "cpu"

    def __post_init__(self):
        check_task_device(self.device)


@dataclass(frozen=True)
class ConversionTask:
    """One seed's model fine-tuned at ``weight`` (None: not at all), then converted at each of ``variants``
    ((name, experts) pairs), on ``device``; ``dense_state`` holds CPU tensors."""

    seed: int
    weight: float | None
    variants: tuple[tuple[str, int], ...]
    budget: DenseToMoEBudget
    dense_state: dict = field(compare=False, repr=False)
    device: str = "cpu"

    def __post_init__(self):
        check_task_device(self.device)


@dataclass(frozen=True)
class MiniLMTask:
    seed: int
    budget: DenseToMoEBudget
    device: str = "cpu"

    def __post_init__(self):
        check_task_device(self.device)


def run_task(task):
    """The one top-level function ``run_all`` calls: dispatch on the task's type."""
    seed_everything(task.seed)
    if isinstance(task, DenseTask):
        return train_dense(task)
    if isinstance(task, ConversionTask):
        return convert_and_sweep(task)
    if isinstance(task, MiniLMTask):
        return minilm_study(task)
    raise ValueError(f"task={task!r} is not allowed; expected a DenseTask, ConversionTask or MiniLMTask")


def _accuracy(model, split) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(split.x).argmax(-1) == split.y).double().mean())


def _on(split: Split, device: torch.device) -> Split:
    """``split`` with its images and labels on ``device``."""
    return Split(split.x.to(device), split.y.to(device))


def _vit(b: DenseToMoEBudget, state: dict, device: torch.device) -> ViT:
    """A ViT of the budget's shape holding ``state``, on ``device``."""
    model = ViT(b.vit_config())
    model.load_state_dict(state)
    return model.to(device)


def train_dense(task: DenseTask) -> dict:
    """The dense GELU ViT of one seed (cached by config, seed and, off the CPU, device type: CUDA's numbers differ
    from the CPU's in the last bits), with its test accuracy. The cache and the result hold CPU tensors."""
    b = task.budget
    device = torch.device(task.device)
    config = dataclasses.asdict(b.vit_config())
    key = {"config": config, "seed": task.seed, "steps": b.train_steps, "lr": b.lr, "batch": b.batch_size}
    if device.type != "cpu":  # a CPU entry keeps the key it had before tasks could run elsewhere
        key["device"] = device.type

    def build() -> dict:
        seed_everything(task.seed)
        digits = load_digits(DATA_SEED)
        model = ViT(b.vit_config())  # initialised on the CPU: the same start on every device
        history = fit(
            model,
            infinite_batches(digits.train, b.batch_size, seed=task.seed),
            TrainConfig(steps=b.train_steps, lr=b.lr, warmup_steps=b.train_steps // 20, weight_decay=0.01),
            device=device,
            progress=False,
        )
        state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
        return {"state": state, "loss": torch.tensor(history.loss.to_numpy())}

    entry = cached("d2dmoe_vit", key, build)
    model = _vit(b, entry["state"], device)
    accuracy = _accuracy(model, _on(load_digits(DATA_SEED).test, device))
    return {"seed": task.seed, "state": entry["state"], "accuracy": accuracy}


def convert_and_sweep(task: ConversionTask) -> list[dict]:
    """Fine-tune (or not), then for each variant: convert, train both kinds of router, sweep both rules. Runs on
    the task's device; the converted models come back on the CPU."""
    b = task.budget
    device = torch.device(task.device)
    digits = load_digits(DATA_SEED)  # on the CPU: the fine-tuning's batches come from it, fit moves each one
    model = _vit(b, task.dense_state, device)
    train, test = _on(digits.train, device), _on(digits.test, device)
    if task.weight is None:
        zero_before = zero_fraction(model, lambda: model(test.x))
        zero_after = zero_before
    else:
        probe = relufy(copy.deepcopy(model))
        zero_before = zero_fraction(probe, lambda: probe(test.x))
        sparsity_finetune(
            model,
            infinite_batches(digits.train, b.batch_size, seed=task.seed + 1000),
            task.weight,
            TrainConfig(steps=b.finetune_steps, lr=b.finetune_lr, warmup_steps=b.finetune_steps // 10),
        )
        zero_after = zero_fraction(model, lambda: model(test.x))
    shared = {
        "seed": task.seed,
        "weight": task.weight,
        "zero_before": zero_before,
        "zero_after": zero_after,
        "sparse_accuracy": _accuracy(model, test),
    }
    return [
        {
            **shared,
            "variant": name,
            "n_experts": experts,
            **_convert(copy.deepcopy(model), experts, task.seed, b, train, test),
        }
        for name, experts in task.variants
    ]


def _convert(model: ViT, n_experts: int, seed: int, b: DenseToMoEBudget, train: Split, test: Split) -> dict:
    """MoE-fy ``model`` in place, train MoEfication's routers and then D2DMoE's, sweep each rule (seeded afresh,
    so a variant's numbers do not depend on which variants were converted before it); the splits are on the
    model's device, the routers train on the task's CPU core (:func:`~efflab.dense_to_moe.routers.train_routers`),
    the model is handed back on the CPU."""
    seed_everything(seed)
    moefy(model, n_experts, iterations=b.cluster_iterations, seed=seed)
    outside = vit_outside_ffn_flops_per_image(b.vit_config())
    inputs = collect_layer_inputs(model, lambda: model(train.x))
    routers = RouterBudget(width=b.router_width, steps=b.router_steps, seed=seed)
    curves = {}
    train_routers(model, inputs, routers, target="activation_share", device="cpu")
    moefication_cost = cost_model(model, outside)
    curves["moefication"] = classifier_sweep(model, test.x, test.y, moefication_cost, "top_k", b.top_ks(n_experts))
    for row in curves["moefication"]:
        del row["k"]
    train_routers(model, inputs, routers, target="output_norm", device="cpu")
    cost = cost_model(model, outside)
    curves["dynamic_k"] = classifier_sweep(model, test.x, test.y, cost, "dynamic_k", b.taus)
    curves["top_k"] = classifier_sweep(model, test.x, test.y, cost, "top_k", b.top_ks(n_experts))
    return {"curves": curves, "cost": cost, "model": model.cpu()}


def minilm_study(task: MiniLMTask) -> dict:
    """MiniLM's FFNs converted without and (when the budget says so) with sparsity fine-tuning.

    Returns the held-out ``sentences``, each conversion's ``curves`` and converted ``models`` (on the CPU), the
    ``seconds`` of each stage, and ``sparse_dense_cosine``: each starting model's mean cosine similarity to the
    dense original before conversion (1 for the unchanged model; what the fine-tune alone moved for the other).
    """
    from efflab.data.sentences import load_sentences
    from efflab.dense_to_moe.sentence_encoder import (
        distillation_finetune,
        embed,
        encoder_sweep,
        real_token_inputs,
        tokenized_batches,
    )
    from efflab.models.bert import MiniLMTokenizer, load_minilm

    b = task.budget
    device = torch.device(task.device)
    tokenizer = MiniLMTokenizer(max_length=b.minilm_max_length)
    train_sentences = load_sentences("train", b.minilm_train_sentences, seed=task.seed)
    heldout = load_sentences("heldout", b.minilm_heldout_sentences, seed=task.seed)
    train_batches = tokenized_batches(tokenizer, train_sentences, 32)
    heldout_batches = tokenized_batches(tokenizer, heldout, 64)
    dense = load_minilm(device)
    dense_heldout = embed(dense, heldout_batches)
    conversions = {"no fine-tuning (GELU)": dense}
    seconds = {}
    if b.minilm_finetune_steps > 0:
        with Timer() as timer:
            targets = [t.to(device) for t in embed(dense, train_batches).split(32)]
            tuned = copy.deepcopy(dense)
            distillation_finetune(
                tuned,
                train_batches,
                targets,
                weight=b.minilm_finetune_weight,
                config=TrainConfig(steps=b.minilm_finetune_steps, lr=b.minilm_finetune_lr, weight_decay=0.0),
            )
        seconds["fine-tune"] = timer.seconds
        conversions["ReLU + Hoyer + distillation"] = tuned
    out = {"sentences": heldout, "curves": {}, "models": {}, "seconds": seconds, "sparse_dense_cosine": {}}
    for name, model in conversions.items():
        start = dense_heldout if model is dense else embed(model, heldout_batches)
        out["sparse_dense_cosine"][name] = float((start * dense_heldout).sum(-1).mean())
        model = copy.deepcopy(model) if model is dense else model
        with Timer() as timer:
            moefy(model, b.minilm_experts, iterations=b.minilm_cluster_iterations, seed=task.seed)
            inputs = real_token_inputs(model, train_batches)
            train_routers(
                model,
                inputs,
                RouterBudget(
                    width=b.minilm_router_width, steps=b.minilm_router_steps, batch_size=512, seed=task.seed
                ),
            )
        seconds[f"convert {name}"] = timer.seconds
        cost = cost_model(model)
        curves = {
            "dynamic_k": encoder_sweep(model, heldout_batches, dense_heldout, cost, "dynamic_k", b.minilm_taus),
            "top_k": encoder_sweep(model, heldout_batches, dense_heldout, cost, "top_k", b.minilm_ks),
        }
        out["curves"][name] = curves
        out["models"][name] = model.cpu()
    return out


# ---- the whole experiment -------------------------------------------------------------------------------------


@dataclass
class DenseToMoEResult:
    budget: DenseToMoEBudget
    seeds: tuple[int, ...]
    dense_accuracy: dict[int, float]
    conversions: list[dict]
    minilm: dict | None
    timing: pd.DataFrame
    test_images: torch.Tensor
    test_labels: torch.Tensor
    seconds: float

    # ---- tables -----------------------------------------------------------------------------------------------
    def curve_table(self) -> pd.DataFrame:
        """One row per (seed, variant, curve, setting): accuracy, relative FLOPs, mean k."""
        rows = []
        for c in self.conversions:
            for curve, points in c["curves"].items():
                for p in points:
                    rows.append(
                        {
                            "seed": c["seed"],
                            "variant": c["variant"],
                            "curve": curve,
                            "value": p["value"],
                            "accuracy": p["accuracy"],
                            "relative_flops": p["relative_flops"],
                            "mean_k": p["mean_k"],
                        }
                    )
        return pd.DataFrame(rows)

    def zero_table(self) -> pd.DataFrame:
        """Zero fraction per (seed, variant, layer) before and after fine-tuning."""
        rows = []
        for c in self.conversions:
            for layer, (before, after) in enumerate(zip(c["zero_before"], c["zero_after"], strict=True)):
                rows.append(
                    {
                        "seed": c["seed"],
                        "variant": c["variant"],
                        "layer": layer + 1,
                        "before": before,
                        "after": after,
                    }
                )
        return pd.DataFrame(rows)

    def conversion(self, variant: str, seed: int | None = None) -> dict:
        seed = self.seeds[0] if seed is None else seed
        for c in self.conversions:
            if c["variant"] == variant and c["seed"] == seed:
                return c
        raise ValueError(f"variant={variant!r} is not allowed; expected one of {self.variants()}")

    def variants(self) -> list[str]:
        return list(dict.fromkeys(c["variant"] for c in self.conversions))

    @property
    def main_variant(self) -> str:
        return variant_name(self.budget.main_weight, self.budget.n_experts, self.budget.n_experts)

    def ffn_share(self) -> float:
        """The FFNs' share of the dense ViT's FLOPs: the most any FFN-only conversion could save."""
        cost = self.conversions[0]["cost"]
        tokens = self.budget.vit_config().n_tokens
        return 1.0 - cost.outside_flops / cost.dense(tokens)

    # ---- headline numbers -------------------------------------------------------------------------------------
    def saving_at_drop(self, variant: str, curve: str, drop: float = 0.01) -> list[float]:
        """Per seed: the largest FLOP saving (1 - relative FLOPs) among the settings whose accuracy is at most
        ``drop`` below the seed's dense GELU model (0 when none is)."""
        savings = []
        for seed in self.seeds:
            points = self.conversion(variant, seed)["curves"][curve]
            ok = [
                1 - p["relative_flops"] for p in points if p["accuracy"] >= self.dense_accuracy[seed] - drop - 1e-9
            ]
            savings.append(max([0.0, *ok]))
        return savings

    def summary(self) -> dict:
        b = self.budget
        main = self.main_variant
        relu_only = variant_name(0.0, b.n_experts, b.n_experts)
        savings = {
            "d2dmoe_dynamic_k": self.saving_at_drop(main, "dynamic_k"),
            "d2dmoe_top_k": self.saving_at_drop(main, "top_k"),
            "moefication_top_k": self.saving_at_drop(relu_only, "moefication"),
            "no_finetune_dynamic_k": self.saving_at_drop(NO_FINETUNE, "dynamic_k"),
            "relu_only_dynamic_k": self.saving_at_drop(relu_only, "dynamic_k"),
            "large_experts_dynamic_k": self.saving_at_drop(
                variant_name(b.main_weight, b.large_experts, b.n_experts), "dynamic_k"
            ),
        }
        zeros = self.zero_table().groupby("variant")[["before", "after"]].mean()
        summary = {
            "seeds": list(self.seeds),
            "dense_accuracy": [self.dense_accuracy[s] for s in self.seeds],
            "sparse_accuracy": {
                v: [self.conversion(v, s)["sparse_accuracy"] for s in self.seeds] for v in self.variants()
            },
            "zero_fraction": {
                v: {"before": float(r.before), "after": float(r.after)} for v, r in zeros.iterrows()
            },
            "vit_saving_at_one_point_drop": savings,
            "main_variant": main,
            "vit_ffn_share": self.ffn_share(),
            "timing": self.timing.to_dict(orient="records"),
            "seconds": self.seconds,
        }
        if self.minilm is not None:
            summary["minilm"] = {
                name: {
                    "saving_at_cosine_095": {rule: minilm_saving(points, 0.95) for rule, points in curves.items()},
                    "curves": {
                        rule: [
                            {
                                k: p[k]
                                for k in ("value", "cosine", "neighbour_agreement", "relative_flops", "mean_k")
                            }
                            for p in points
                        ]
                        for rule, points in curves.items()
                    },
                }
                for name, curves in self.minilm["curves"].items()
            }
            summary["minilm_seconds"] = self.minilm["seconds"]
        return summary


def minilm_saving(points: list[dict], threshold: float) -> float:
    """The largest FFN-FLOP saving among settings whose mean cosine similarity stays >= ``threshold``."""
    return max([0.0, *[1 - p["relative_flops"] for p in points if p["cosine"] >= threshold]])


def run_experiment(run: Run, budget: DenseToMoEBudget, *, minilm: bool = True, progress: bool | None = None):
    """The whole notebook's computation; returns a :class:`DenseToMoEResult`."""
    start = time.perf_counter()
    seeds = seeds_for(run.seed, budget.seeds)
    device = str(run.device)
    first: list = [DenseTask(seed, budget, device=device) for seed in seeds]
    if minilm:  # needs no ViT: the longest task goes first, beside the dense trainings (three seeds, two cores)
        first.insert(0, MiniLMTask(run.seed, budget, device=device))
    share = gpu_share_for(run.device)  # on Ray, a task on CUDA must see the GPU
    trained = run_all(run_task, first, description="dense ViTs (and MiniLM)", progress=progress, gpu_share=share)
    minilm_result = trained.pop(0) if minilm else None
    dense = {o["seed"]: o for o in trained}
    tasks = [  # the longest first (most variants, then fine-tuned), so that no core idles at the end
        ConversionTask(seed, weight, variants, budget, dense[seed]["state"], device=device)
        for weight, variants in sorted(budget.conversions(), key=lambda g: (-len(g[1]), g[0] is None))
        for seed in seeds
    ]
    done = run_all(run_task, tasks, description="sparsify, convert, route", progress=progress, gpu_share=share)
    order = {name: index for index, (name, _, _) in enumerate(budget.variants())}
    conversions = sorted(
        (entry for entries in done for entry in entries),
        key=lambda c: (seeds.index(c["seed"]), order[c["variant"]]),
    )
    test = load_digits(DATA_SEED).test
    result = DenseToMoEResult(
        budget=budget,
        seeds=seeds,
        dense_accuracy={s: dense[s]["accuracy"] for s in seeds},
        conversions=conversions,
        minilm=minilm_result,
        timing=pd.DataFrame(),
        test_images=test.x,
        test_labels=test.y,
        seconds=0.0,
    )
    result.timing = measure_timing(result, run.device)
    result.seconds = time.perf_counter() - start
    return result


def measure_timing(result: DenseToMoEResult, device="cpu") -> pd.DataFrame:
    """Wall-clock of the gathered implementation at a few taus against the dense forward (first seed's main
    model, the test images ``timing_copies`` times) on ``device``, beside the FLOP ratio of the same setting."""
    from efflab.dense_to_moe.timing import time_forward, timing_device

    device = timing_device(device)
    b = result.budget
    entry = result.conversion(result.main_variant)
    model = entry["model"]
    x = result.test_images.repeat(b.timing_copies, 1, 1, 1)
    flops = {p["value"]: p["relative_flops"] for p in entry["curves"]["dynamic_k"]}
    rows = []
    with torch.no_grad():
        dense_seconds = time_forward(model, x, "dense", None, b.timing_repeats, device=device)
        for tau in b.timing_taus:
            for implementation in ("gathered", "masked"):
                seconds = time_forward(
                    model, x, "dynamic_k", tau, b.timing_repeats, implementation=implementation, device=device
                )
                rows.append(
                    {
                        "device": str(device),
                        "tau": tau,
                        "implementation": implementation,
                        "flop_ratio": flops[tau],
                        "time_ratio": seconds / dense_seconds,
                        "seconds": seconds,
                        "dense_seconds": dense_seconds,
                    }
                )
    return pd.DataFrame(rows)


# ---- the paper beside this run --------------------------------------------------------------------------------


def _mean(values) -> float:
    return float(np.mean(values))


def paper_rows(summary: dict, committed: dict | None = None) -> pd.DataFrame:
    """The paper's claim beside this run's numbers (and the committed full-mode run's, when there is one)."""

    def vit(s, key):
        return None if s is None else f"{100 * _mean(s['vit_saving_at_one_point_drop'][key]):.0f}%"

    def minilm(s, conversion, rule):
        if s is None or "minilm" not in s or conversion not in s["minilm"]:
            return None
        return f"{100 * s['minilm'][conversion]['saving_at_cosine_095'][rule]:.0f}%"

    rows = [
        {
            "quantity": "ViT: FLOP saving within 1 point of dense accuracy, D2DMoE dynamic-k",
            "paper": "up to 60% (abstract: ImageNet ViT-B, NLP)",
            "this_run": vit(summary, "d2dmoe_dynamic_k"),
            "full_run": vit(committed, "d2dmoe_dynamic_k"),
            "note": "whole-model FLOPs; ours leaves attention dense (the paper also converts the MHA projections)",
        },
        {
            "quantity": "ViT: same, static top-k with the norm router",
            "paper": "below dynamic-k (figures; unverified)",
            "this_run": vit(summary, "d2dmoe_top_k"),
            "full_run": vit(committed, "d2dmoe_top_k"),
            "note": "",
        },
        {
            "quantity": "ViT: same, MoEfication (ReLU only, activation router, top-k)",
            "paper": "degrades earlier (figures; unverified)",
            "this_run": vit(summary, "moefication_top_k"),
            "full_run": vit(committed, "moefication_top_k"),
            "note": "",
        },
        {
            "quantity": "ViT: same, dynamic-k without sparsity fine-tuning",
            "paper": "worse (ablation; unverified)",
            "this_run": vit(summary, "no_finetune_dynamic_k"),
            "full_run": vit(committed, "no_finetune_dynamic_k"),
            "note": "GELU kept",
        },
        {
            "quantity": "ViT: same, few large experts",
            "paper": "worse (ablation; unverified)",
            "this_run": vit(summary, "large_experts_dynamic_k"),
            "full_run": vit(committed, "large_experts_dynamic_k"),
            "note": "",
        },
    ]
    for conversion in ("no fine-tuning (GELU)", "ReLU + Hoyer + distillation"):
        for rule in ("dynamic_k", "top_k"):
            rows.append(
                {
                    "quantity": f"MiniLM ({conversion}): FFN-FLOP saving with cosine >= 0.95, {rule}",
                    "paper": "up to 60% (abstract; BERT on a classification task, not embeddings)",
                    "this_run": minilm(summary, conversion, rule),
                    "full_run": minilm(committed, conversion, rule),
                    "note": "relative FFN FLOPs; routers included",
                }
            )
    return paper_table(rows, full_run_on="GPU")


def findings(summary: dict) -> str:
    """What this run found, in sentences computed from its summary."""
    s = summary["vit_saving_at_one_point_drop"]
    dyn, top, moe = s["d2dmoe_dynamic_k"], s["d2dmoe_top_k"], s["moefication_top_k"]
    n = len(dyn)
    lines = []
    ahead = sum(d > t + 1e-9 for d, t in zip(dyn, moe, strict=True))
    verdict = (
        "agrees with the paper: D2DMoE saves more than MoEfication on every seed"
        if ahead == n
        else "disagrees with the paper: MoEfication saved at least as much on every seed"
        if ahead == 0
        else f"is mixed across seeds: D2DMoE saved more than MoEfication on {ahead} of {n}"
    )
    lines.append(
        f"**ViT on digits.** Within one accuracy point of the dense model, dynamic-k saves {spread(dyn)} of the "
        f"FLOPs, static top-k with the same router {spread(top)}, MoEfication {spread(moe)}. This {verdict}."
    )
    reach = _mean(dyn)
    lines.append(
        f"The paper's headline is *up to* {PAPER_SAVING:.0%} less inference cost; our mean is {reach:.0%}, "
        + ("at or above it." if reach >= PAPER_SAVING else "below it.")
        + f" Attention and the patch embedding stay dense here: the FFNs are {summary['vit_ffn_share']:.0%} of "
        "this ViT's FLOPs, which caps what any conversion of them can save."
    )
    nf, large = s["no_finetune_dynamic_k"], s["large_experts_dynamic_k"]
    for label, values in (("without sparsity fine-tuning", nf), ("with few large experts", large)):
        worse = sum(v < d - 1e-9 for v, d in zip(values, dyn, strict=True))
        word = (
            "less on every seed"
            if worse == n
            else "no less on any seed"
            if worse == 0
            else f"less on {worse} of {n} seeds"
        )
        lines.append(f"Dynamic-k {label} saves {spread(values)}: {word} than the full method.")
    zeros = summary["zero_fraction"].get(summary["main_variant"])
    if zeros:
        lines.append(
            f"Sparsity fine-tuning at the main weight moved the zero fraction of FFN activations from "
            f"{zeros['before']:.0%} (right after the ReLU swap) to {zeros['after']:.0%}."
        )
    timing = [r for r in summary["timing"] if r["implementation"] == "gathered"]
    if timing:
        faster = [r for r in timing if r["time_ratio"] < 1]
        lines.append(
            f"**Wall-clock ({timing[0]['device']}).** The gathered implementation took "
            + ", ".join(
                f"{r['time_ratio']:.0%} of the dense time at {r['flop_ratio']:.0%} of its FLOPs" for r in timing
            )
            + (
                "; it was never faster than the dense forward at this size."
                if not faster
                else f"; it beat the dense forward at {len(faster)} of {len(timing)} settings."
            )
        )
    for name, entry in summary.get("minilm", {}).items():
        saving = entry["saving_at_cosine_095"]
        better = (
            "dynamic-k"
            if saving["dynamic_k"] > saving["top_k"]
            else "top-k"
            if saving["top_k"] > saving["dynamic_k"]
            else "neither rule"
        )
        lines.append(
            f"**MiniLM, {name}.** With mean cosine similarity >= 0.95 to the dense embeddings, dynamic-k saves "
            f"{saving['dynamic_k']:.0%} of the FFN FLOPs and top-k {saving['top_k']:.0%} ({better} saves more)."
        )
    return "\n\n".join(lines)
