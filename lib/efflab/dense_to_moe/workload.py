"""The work of a budget of notebook 09, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.data.digits import infinite_batches, load_digits
from efflab.dense_to_moe.clustering import split_neurons
from efflab.dense_to_moe.conversion import configure
from efflab.dense_to_moe.cost import cost_model
from efflab.dense_to_moe.evaluation import classifier_sweep
from efflab.dense_to_moe.experiment import DATA_SEED, DenseToMoEBudget
from efflab.dense_to_moe.moe_layer import DynamicKMoE, Router
from efflab.dense_to_moe.routers import RouterBudget, collect_layer_inputs, moe_layers, router_labels
from efflab.dense_to_moe.sentence_encoder import embed, encoder_sweep
from efflab.dense_to_moe.sparsity import SparsityLoss, relufy
from efflab.models.vit import ViT, vit_outside_ffn_flops_per_image
from efflab.train import TrainConfig, cross_entropy, make_optimizer
from efflab.workload import Work, forward_step

TRAIN_BATCH, HELDOUT_BATCH = 32, 64  # sentences per batch of MiniLM's training and held-out sentences
LABEL_CHUNK = 2048  # tokens per piece of router_labels (its default chunk)
ROUTER_BATCH = 512  # tokens per layer of a MiniLM router step


def workload(budget: DenseToMoEBudget) -> list[Work]:
    """The work in the experiment's three steps: the MiniLM study beside every seed's dense ViT training; the
    ViTs' forward passes over the test images, one sparsity fine-tuning per seed and penalty weight and, for
    each expert count, the clustering, router inputs and labels, two router trainings per converted model
    (MoEfication's, then D2DMoE's) and one routed pass per setting of the three sweeps; then the wall-clock
    timing of the first seed's main model.

    Every item runs on the run's device, as the experiment's tasks do, but for the clusterings of the ViTs and
    of MiniLM (NumPy and SciPy) and the ViTs' router trainings, on the task's one core.

    Upper bounds: the dense ViTs are cached (a stored model is not trained again), and every MiniLM batch is
    counted at ``minilm_max_length`` tokens (a batch is padded to its longest sentence, cut at that length).
    """
    if not isinstance(budget, DenseToMoEBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a DenseToMoEBudget")
    digits = load_digits(DATA_SEED)
    pools = {
        "dense ViTs and MiniLM": [*_minilm_work(budget), _dense_training(budget, digits)],
        "sparsify, convert, route": _conversion_work(budget, digits),
    }
    pooled = [replace(work, pool=pool) for pool, works in pools.items() for work in works]
    return pooled + _timing_work(budget, digits.test.x)


def _dense_training(b: DenseToMoEBudget, digits) -> Work:
    """Every seed's dense GELU ViT, trained as ``train_dense`` trains it."""
    config = TrainConfig(steps=b.train_steps, lr=b.lr, warmup_steps=b.train_steps // 20, weight_decay=0.01)
    batches = infinite_batches(digits.train, b.batch_size, seed=0)
    return Work("ViT: dense training", b.seeds, b.train_steps, _fit_step(ViT(b.vit_config()), batches, config))


def _conversion_work(b: DenseToMoEBudget, digits) -> list[Work]:
    """Every seed's conversion tasks: the fine-tunings, then each expert count's conversions."""
    weights = len(b.penalty_weights)
    tune = TrainConfig(steps=b.finetune_steps, lr=b.finetune_lr, warmup_steps=b.finetune_steps // 10)
    works = [
        Work(  # accuracy of the dense model; zero fractions and accuracy of each starting point of a conversion
            "ViT: passes over the test images",
            b.seeds,
            3 + 3 * weights,
            forward_step(ViT(b.vit_config()), lambda: (digits.test.x,)),
            trains=False,
        ),
        Work(
            "ViT: sparsity fine-tuning",
            b.seeds * weights,
            b.finetune_steps,
            _fit_step(
                relufy(ViT(b.vit_config())),
                infinite_batches(digits.train, b.batch_size, seed=0),
                tune,
                SparsityLoss(b.main_weight, b.finetune_steps),
            ),
        ),
    ]
    for experts, variants in Counter(experts for _, _, experts in b.variants()).items():
        works += _expert_work(b, experts, b.seeds * variants, digits)
    return works


def _expert_work(b: DenseToMoEBudget, experts: int, conversions: int, digits) -> list[Work]:
    """``conversions`` ViTs cut into ``experts`` experts: clustering, router inputs and labels, routers, sweeps."""
    model = _converted(ViT(b.vit_config()), experts, b.router_width)
    cost = cost_model(model, vit_outside_ffn_flops_per_image(b.vit_config()))
    up = ViT(b.vit_config()).layers[0].ffn.up.weight
    tau = b.taus[len(b.taus) // 2]
    label = f"ViT, E={experts}"

    def inputs_and_labels():
        layer_inputs = collect_layer_inputs(model, lambda: model(digits.train.x))
        for target in ("activation_share", "output_norm"):
            for layer, x in zip(moe_layers(model), layer_inputs, strict=True):
                router_labels(layer, x, target)

    return [
        Work(
            f"{label}: clustering of one layer",
            conversions,
            b.n_layers,
            lambda: split_neurons(up, experts, iterations=b.cluster_iterations),
            on="cpu",
            trains=False,
        ),
        Work(f"{label}: router inputs and labels", conversions, 1, inputs_and_labels, trains=False),
        Work(
            f"{label}: router training, twice",
            conversions,
            2 * b.router_steps,
            _router_step(model, RouterBudget(width=b.router_width, steps=b.router_steps)),
            on="cpu",
        ),
        Work(
            f"{label}: routed passes over the test images",
            conversions,
            2 * len(b.top_ks(experts)) + len(b.taus),
            lambda: classifier_sweep(model, digits.test.x, digits.test.y, cost, "dynamic_k", [tau]),
            trains=False,
        ),
    ]


def _timing_work(b: DenseToMoEBudget, images: Tensor) -> list[Work]:
    """The dense forward and, at every timing tau, the gathered and the masked one, each a warm-up and
    ``timing_repeats`` timed passes over the test images ``timing_copies`` times, on the run's device."""
    model = _converted(ViT(b.vit_config()), b.n_experts, b.router_width)
    x = images.repeat(b.timing_copies, 1, 1, 1)
    passes, tau = b.timing_repeats + 1, b.timing_taus[len(b.timing_taus) // 2]

    def routed(rule: str, implementation: str) -> Callable[[], Tensor]:
        def step():
            configure(model, rule, tau=tau, implementation=implementation, record=False)
            with torch.no_grad():
                return model.eval()(x)

        return step

    return [
        Work("timing: dense forward", 1, passes, routed("dense", "gathered"), trains=False),
        *(
            Work(
                f"timing: {kind} forward", 1, passes * len(b.timing_taus), routed("dynamic_k", kind), trains=False
            )
            for kind in ("gathered", "masked")
        ),
    ]


def _minilm_work(b: DenseToMoEBudget) -> list[Work]:
    from efflab.models.bert import encode, load_minilm

    dense = load_minilm("cpu")
    d_model, layers = dense.layers[0].ffn.up.in_features, len(dense.layers)
    conversions = 1 + (b.minilm_finetune_steps > 0)
    train_batches = math.ceil(b.minilm_train_sentences / TRAIN_BATCH)
    heldout_batches = math.ceil(b.minilm_heldout_sentences / HELDOUT_BATCH)
    tokens = b.minilm_train_sentences * b.minilm_max_length

    def sentences(count: int) -> dict[str, Tensor]:
        shape = (count, b.minilm_max_length)
        return {
            "input_ids": torch.randint(1000, 30000, shape),
            "attention_mask": torch.ones(shape, dtype=torch.long),
        }

    train, heldout = sentences(TRAIN_BATCH), sentences(HELDOUT_BATCH)
    converted = _converted(copy.deepcopy(dense), b.minilm_experts, b.minilm_router_width)
    reference = F.normalize(torch.randn(HELDOUT_BATCH, d_model), dim=-1)  # the dense model's embeddings
    cost = cost_model(converted)
    states = torch.randn(LABEL_CHUNK, d_model)  # token states entering a layer
    tau = b.minilm_taus[len(b.minilm_taus) // 2]
    works = [
        Work(  # the dense and the fine-tuned model's references
            "MiniLM: embeddings of held-out batches",
            1,
            conversions * heldout_batches,
            lambda: embed(dense, [heldout]),
            trains=False,
        ),
        Work(  # the fine-tune's targets, and every conversion's router inputs
            "MiniLM: passes over training batches",
            1,
            (2 * conversions - 1) * train_batches,
            lambda: embed(dense, [train]),
            trains=False,
        ),
    ]
    if b.minilm_finetune_steps:
        packed = torch.stack([train["input_ids"], train["attention_mask"]], dim=1)
        targets = F.normalize(torch.randn(TRAIN_BATCH, d_model), dim=-1)

        def distillation(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return F.mse_loss(encode(model, x[:, 0], x[:, 1]), y, reduction="sum") / len(y)

        loss = SparsityLoss(b.minilm_finetune_weight, b.minilm_finetune_steps, task_loss=distillation)
        config = TrainConfig(steps=b.minilm_finetune_steps, lr=b.minilm_finetune_lr, weight_decay=0.0)
        tuned = relufy(copy.deepcopy(dense))
        works.append(
            Work(
                "MiniLM: distillation fine-tuning",
                1,
                b.minilm_finetune_steps,
                _fit_step(tuned, itertools.repeat((packed, targets)), config, loss),
            )
        )
    layer = moe_layers(converted)[0]
    return works + [
        Work(
            "MiniLM: clustering of one layer",
            1,
            conversions * layers,
            lambda: split_neurons(
                dense.layers[0].ffn.up.weight, b.minilm_experts, iterations=b.minilm_cluster_iterations
            ),
            on="cpu",
            trains=False,
        ),
        Work(
            f"MiniLM: router labels, {LABEL_CHUNK} tokens of one layer",
            1,
            conversions * layers * math.ceil(tokens / LABEL_CHUNK),
            lambda: router_labels(layer, states, "output_norm"),
            trains=False,
        ),
        Work(
            "MiniLM: router training",
            1,
            conversions * b.minilm_router_steps,
            _router_step(
                converted,
                RouterBudget(width=b.minilm_router_width, steps=b.minilm_router_steps, batch_size=ROUTER_BATCH),
            ),
        ),
        Work(
            "MiniLM: routed passes over held-out batches",
            1,
            conversions * (len(b.minilm_taus) + len(b.minilm_ks)) * heldout_batches,
            lambda: encoder_sweep(converted, [heldout], reference, cost, "dynamic_k", [tau]),
            trains=False,
        ),
    ]


def _converted(model: nn.Module, n_experts: int, router_width: int) -> nn.Module:
    """``model`` with every FFN cut into ``n_experts`` experts and given an untrained router; the experts take
    their neurons in order, not by clustering: which neurons an expert holds changes no cost."""
    for block in model.layers:
        block.ffn = DynamicKMoE(block.ffn, np.arange(block.ffn.up.out_features), n_experts)
        block.ffn.router = Router(block.ffn.d_model, n_experts, router_width).requires_grad_(False).eval()
    return model


def _fit_step(
    model: nn.Module, batches: Iterator, config: TrainConfig, loss_fn=cross_entropy
) -> Callable[[], float]:
    """One step of :func:`efflab.train.fit`: the loss and its finiteness check, backward, clipping, the fused
    AdamW step, the loss read back."""
    optimizer = make_optimizer(model, config)

    def step() -> float:
        model.train()
        loss = loss_fn(model, *next(batches))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        return loss.item()

    return step


def _router_step(model: nn.Module, budget: RouterBudget) -> Callable[[], None]:
    """One step of :func:`~efflab.dense_to_moe.routers.train_routers` (D2DMoE's targets; MoEfication's cost
    the same): a batch of tokens per layer through its router, each loss read, one Adam step over all routers
    and one step of their cosine schedule. The tokens and their labels are random: a step costs the same."""
    layers = moe_layers(model)
    routers = [Router(layer.d_model, layer.n_experts, budget.width) for layer in layers]
    inputs = [torch.randn(LABEL_CHUNK, layer.d_model) for layer in layers]
    labels = [torch.rand(LABEL_CHUNK, layer.n_experts) for layer in layers]
    optimizer = torch.optim.Adam([p for router in routers for p in router.parameters()], lr=budget.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, budget.steps, eta_min=budget.lr * 0.1)
    generator = torch.Generator().manual_seed(budget.seed)

    def step() -> None:
        total = 0.0
        for router, x, y in zip(routers, inputs, labels, strict=True):
            chosen = torch.randint(len(x), (min(budget.batch_size, len(x)),), generator=generator)
            loss = F.mse_loss(router(x[chosen]), y[chosen])
            float(loss.detach())
            total = total + loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()

    return step
