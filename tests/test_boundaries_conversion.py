"""Boundaries of dense-to-MoE conversion, projected compression, the encoders and the core helpers: any input
gives a valid result or a ValueError that names the parameter, never a crash from deep inside torch, NumPy or
SciPy, never a silent NaN, and never an explicit value quietly replaced by a default."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from efflab.data import sentences
from efflab.dense_to_moe.clustering import balanced_assignment, expert_permutation, lloyd_codebook, split_neurons
from efflab.dense_to_moe.conversion import configure, moefy
from efflab.dense_to_moe.cost import CostModel, cost_model
from efflab.dense_to_moe.evaluation import classifier_sweep
from efflab.dense_to_moe.experiment import DenseToMoEBudget
from efflab.dense_to_moe.moe_layer import DynamicKMoE, Router
from efflab.dense_to_moe.routers import RouterBudget, collect_layer_inputs, router_labels, train_routers
from efflab.dense_to_moe.selection import dynamic_k_mask, select, top_k_mask
from efflab.dense_to_moe.sentence_encoder import (
    distillation_finetune,
    embed,
    encoder_sweep,
    nearest_neighbours,
    real_token_inputs,
    tokenized_batches,
)
from efflab.dense_to_moe.sparsity import penalty_weight, sparsity_finetune, squared_hoyer, zero_fraction
from efflab.experiment import seeds_for, spread
from efflab.flops import gpt_parameter_count, measure_flops, module_forward_flops
from efflab.models.bert import BertConfig, MiniLM, mean_pool
from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import (
    MoEConfig,
    MoEFeedForward,
    combine,
    default_path,
    dispatch,
    expert_choice_capacity,
    grouped_matmul,
    load_balancing_loss,
    moe_ffn,
    route_expert_choice,
    route_token_choice,
    router_z_loss,
    token_choice_capacity,
)
from efflab.models.vit import ViT, ViTConfig, patchify
from efflab.parallel import run_all
from efflab.projected_compression.experiment import CompressionBudget
from efflab.projected_compression.hard_pruning import hard_prune
from efflab.projected_compression.importance import (
    Importance,
    Selection,
    Target,
    random_importance,
)
from efflab.projected_compression.importance import (
    select as select_channels,
)
from efflab.projected_compression.projection import ProjectedLM, projection_sources, selection_matrix
from efflab.projected_compression.sentence_encoder import (
    EncoderBudget,
    ProjectedFeedForward,
    kept_units,
    prune_ffn,
)
from efflab.results import load, record
from efflab.runtime import Run, torch_threads
from efflab.timing import interleaved_times
from efflab.train import TrainConfig

from boundaries import NUMBERS, POISON, PROPERTY, SMALL_INTS, valid_or_named

RNG = np.random.default_rng(0)


# ---- small models, built once ----------------------------------------------------------------------------------

VIT = ViTConfig(image_size=4, patch_size=2, d_model=8, n_layers=2, n_heads=2, d_ff=8)
GPT = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, d_model=8, d_ff=16)
TARGET = Target(d_model=4, d_ff=8)


@pytest.fixture(scope="module")
def routed_vit():
    """A tiny ViT cut into 2 experts per FFN, with routers (one step of training: any router will do)."""
    torch.manual_seed(0)
    model = ViT(VIT)
    moefy(model, 2, iterations=1)
    images = torch.rand(6, 1, 4, 4)
    inputs = collect_layer_inputs(model, lambda: model(images))
    train_routers(model, inputs, RouterBudget(width=4, steps=1, batch_size=8))
    return model, images


@pytest.fixture(scope="module")
def base_lm():
    torch.manual_seed(0)
    return TinyLM(GPT)


def poisoned_importance() -> Importance:
    scores = random_importance(TinyLM(GPT), seed=0)
    return Importance(torch.full((8,), math.nan), scores.qk, scores.vo, scores.ffn)


def tiny_selection(config: GPTConfig = GPT, target: Target = TARGET, **overrides) -> Selection:
    parts = {
        "d": torch.arange(target.d_model),
        "qk": tuple(torch.tensor([0, 1, 4, 5]) for _ in range(config.n_layer)),
        "vo": tuple(torch.tensor([0, 1, 4, 5]) for _ in range(config.n_layer)),
        "ffn": tuple(torch.arange(target.d_ff) for _ in range(config.n_layer)),
    }
    return Selection(**{**parts, **overrides})


# ---- property tests: routers, selection, keep ratios, projections --------------------------------------------


@PROPERTY
@given(
    tokens=st.integers(0, 6),
    experts=st.integers(1, 6),
    tau=NUMBERS,
    k=SMALL_INTS,
    poison=POISON,
    seed=st.integers(0, 100),
)
def test_dynamic_k_and_top_k_masks(tokens, experts, tau, k, poison, seed):
    scores = torch.rand(tokens, experts, generator=torch.Generator().manual_seed(seed))
    if poison is not None and tokens:
        scores[0, 0] = poison
    mask = valid_or_named(lambda: dynamic_k_mask(scores, tau), "tau", "scores")
    if mask is not None:
        assert mask.shape == scores.shape and mask.dtype == torch.bool and bool(mask.any(-1).all())
        assert not (poison is not None and tokens > 0)
    mask = valid_or_named(lambda: top_k_mask(scores, k), "k", "scores")
    if mask is not None:
        assert mask.shape == scores.shape and (mask.sum(-1) == k).all()


@PROPERTY
@given(rule=st.sampled_from(["dynamic_k", "top_k", "dense", "other", None]), tau=NUMBERS, k=SMALL_INTS)
def test_select_checks_its_rule_and_values(rule, tau, k):
    scores = torch.rand(3, 4)
    mask = valid_or_named(lambda: select(scores, rule, tau=tau, k=k), "rule", "tau", "k")
    if mask is not None:
        assert mask.shape == (3, 4) and bool(mask.any(-1).all())


@PROPERTY
@given(tokens=st.integers(1, 8), experts=st.integers(1, 6), top_k=SMALL_INTS, capacity=NUMBERS, poison=POISON)
def test_token_choice_routing_under_poisoned_scores(tokens, experts, top_k, capacity, poison):
    logits = torch.randn(tokens, experts)
    if poison is not None:
        logits[-1, -1] = poison
    routing = valid_or_named(
        lambda: route_token_choice(logits, top_k, capacity_factor=capacity), "top_k", "capacity_factor", "logits"
    )
    if routing is not None:
        assert poison is None
        assert torch.isfinite(routing.gates).all() and int(routing.counts.sum()) == len(routing.token_index)
        assert math.isfinite(float(load_balancing_loss(routing)))


@PROPERTY
@given(n_tokens=SMALL_INTS, top_k=SMALL_INTS, n_experts=SMALL_INTS, capacity=NUMBERS)
def test_expert_capacities(n_tokens, top_k, n_experts, capacity):
    for make, tokens_name in ((token_choice_capacity, "n_tokens"), (expert_choice_capacity, "group")):
        value = valid_or_named(
            lambda make=make: make(n_tokens, top_k, n_experts, capacity),
            tokens_name,
            "top_k",
            "n_experts",
            "capacity",
        )
        if value is not None:
            assert isinstance(value, int) and 1 <= value <= n_tokens


@PROPERTY
@given(
    counts=st.lists(st.integers(-1, 3), min_size=1, max_size=4), rows=st.integers(0, 8), width=st.integers(1, 3)
)
def test_grouped_matmul_checks_counts_against_rows(counts, rows, width):
    weight = torch.randn(len(counts), 2, width)
    x = torch.randn(rows, 2)
    out = valid_or_named(lambda: grouped_matmul(x, weight, torch.tensor(counts), kernel="segments"), "counts")
    if out is not None:
        assert out.shape == (rows, width) and sum(counts) == rows and min(counts) >= 0


@PROPERTY
@given(size=st.integers(1, 12), keep=NUMBERS, poison=POISON, seed=st.integers(0, 100))
def test_kept_units(size, keep, poison, seed):
    scores = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    if poison is not None:
        scores[0] = poison
    kept = valid_or_named(lambda: kept_units(scores, keep), "keep", "scores")
    if kept is not None:
        assert poison is None and 0 < keep <= 1
        assert len(kept) == max(1, round(keep * size)) and kept.tolist() == sorted(set(kept.tolist()))


@PROPERTY
@given(indices=st.lists(st.integers(-2, 8), max_size=5), size=SMALL_INTS)
def test_selection_matrices(indices, size):
    matrix = valid_or_named(
        lambda: selection_matrix(torch.tensor(indices, dtype=torch.long), size), "indices", "size"
    )
    if matrix is not None:
        assert matrix.shape == (len(indices), size) and (matrix.sum(1) == 1).all()
        assert matrix.argmax(1).tolist() == indices


@PROPERTY
@given(d=st.integers(-1, 9), f=st.integers(-1, 20), poison=POISON)
def test_importance_selection_to_target_widths(d, f, poison):
    importance = random_importance(TinyLM(GPT), seed=0)
    if poison is not None:
        importance.ffn[0][3] = poison
    selection = valid_or_named(
        lambda: select_channels(importance, GPT, Target(d, f)), "d_model", "d_ff", "importance"
    )
    if selection is not None:
        assert poison is None
        assert selection.d.shape == (d,) and selection.ffn[0].shape == (f,)
        assert selection.qk[0].shape == (d,) and len(set(selection.qk[0].tolist())) == d


@PROPERTY
@given(labels=st.lists(st.integers(-1, 4), min_size=1, max_size=8), n_experts=SMALL_INTS)
def test_expert_permutation(labels, n_experts):
    order = valid_or_named(lambda: expert_permutation(np.array(labels), n_experts), "labels", "n_experts")
    if order is not None:
        assert sorted(order.tolist()) == list(range(len(labels)))
        assert np.all(np.diff(np.array(labels)[order]) >= 0)


@PROPERTY
@given(eps=NUMBERS, zeros=st.booleans())
def test_squared_hoyer(eps, zeros):
    activations = torch.zeros(3, 5) if zeros else torch.rand(3, 5)
    value = valid_or_named(lambda: squared_hoyer(activations, eps), "eps")
    if value is not None:
        assert torch.isfinite(value).all() and (value >= 0).all() and (value <= 5 + 1e-5).all()


@PROPERTY
@given(
    step=SMALL_INTS, steps=SMALL_INTS, weight=NUMBERS, schedule=st.sampled_from(["linear", "constant", "cosine"])
)
def test_penalty_weight(step, steps, weight, schedule):
    value = valid_or_named(lambda: penalty_weight(step, steps, weight, schedule), "step", "weight", "schedule")
    if value is not None:
        assert 0 <= value <= weight


@PROPERTY
@given(tokens=NUMBERS, pairs=st.lists(NUMBERS, min_size=1, max_size=3), outside=NUMBERS)
def test_cost_model(tokens, pairs, outside):
    def relative():
        cost = CostModel(outside, (10, 10), (8, 8), (32, 32))
        return cost.relative(tokens, pairs)

    value = valid_or_named(relative, "tokens_per_sample", "pairs_per_sample", "outside_flops")
    if value is not None:
        assert math.isfinite(value) and value >= 0


@PROPERTY
@given(images=st.lists(st.one_of(st.floats(-1e3, 1e3, width=32), POISON.filter(bool)), min_size=16, max_size=16))
def test_vit_images(images):
    model = ViT(VIT)
    logits = valid_or_named(lambda: model(torch.tensor(images).view(1, 1, 4, 4)), "images")
    if logits is not None:
        assert torch.isfinite(logits).all()


BERT = BertConfig(vocab_size=20, max_positions=8, n_layer=1, n_head=2, d_model=8, d_ff=16)


@PROPERTY
@given(
    ids=st.lists(st.integers(-2, 22), min_size=3, max_size=3),
    mask=st.lists(st.integers(-1, 2), min_size=3, max_size=3),
)
def test_minilm_inputs(ids, mask):
    model = MiniLM(BERT)
    states = valid_or_named(
        lambda: model(torch.tensor([ids]), torch.tensor([mask])), "input_ids", "attention_mask"
    )
    if states is not None:
        assert states.shape == (1, 3, 8) and torch.isfinite(states).all()


# ---- property tests: budgets -----------------------------------------------------------------------------------


@PROPERTY
@given(
    n_experts=SMALL_INTS,
    large=SMALL_INTS,
    minilm=st.one_of(st.sampled_from([96, 7, 1536, 2000]), SMALL_INTS),
    taus=st.one_of(st.lists(NUMBERS, max_size=3).map(tuple), NUMBERS),
    timing=st.one_of(st.sampled_from([(0.4,), (0.5,), ()]), NUMBERS),
    ks=st.one_of(st.lists(SMALL_INTS, max_size=3).map(tuple), SMALL_INTS),
    heads=SMALL_INTS,
    lr=NUMBERS,
)
def test_dense_to_moe_budgets(n_experts, large, minilm, taus, timing, ks, heads, lr):
    budget = valid_or_named(
        lambda: DenseToMoEBudget(
            n_experts=n_experts,
            large_experts=large,
            minilm_experts=minilm,
            minilm_taus=(*taus, 1.0) if isinstance(taus, tuple) else taus,
            timing_taus=timing,
            minilm_ks=ks,
            n_heads=heads,
            finetune_lr=lr,
        ),
        "n_experts",
        "large_experts",
        "minilm_experts",
        "minilm_taus",
        "timing_taus",
        "minilm_ks",
        "n_heads",
        "finetune_lr",
    )
    if budget is not None:
        assert budget.d_ff % budget.n_experts == 0 and budget.d_ff % budget.large_experts == 0
        assert 1536 % budget.minilm_experts == 0 and all(1 <= k <= budget.minilm_experts for k in budget.minilm_ks)
        assert budget.top_ks(budget.n_experts)[-1] == budget.n_experts


@PROPERTY
@given(
    width=SMALL_INTS, steps=SMALL_INTS, lr=NUMBERS, batch=SMALL_INTS, seed=st.one_of(SMALL_INTS, st.just(2**32))
)
def test_router_budgets(width, steps, lr, batch, seed):
    valid_or_named(
        lambda: RouterBudget(width=width, steps=steps, lr=lr, batch_size=batch, seed=seed),
        "width",
        "steps",
        "lr",
        "batch_size",
        "seed",
    )


@PROPERTY
@given(
    d_model=st.sampled_from([4, 8, 12, 48]),
    pretrain=st.one_of(st.tuples(SMALL_INTS, SMALL_INTS), SMALL_INTS),
    keeps=st.one_of(st.lists(NUMBERS, max_size=2).map(tuple), NUMBERS),
    budgets=st.one_of(st.lists(SMALL_INTS, max_size=2).map(tuple), SMALL_INTS),
    lrs=st.one_of(st.lists(NUMBERS, max_size=2).map(tuple), NUMBERS),
    pretrain_lr=NUMBERS,
)
def test_compression_budgets(d_model, pretrain, keeps, budgets, lrs, pretrain_lr):
    budget = valid_or_named(
        lambda: CompressionBudget(
            d_model=d_model,
            n_head=4,
            pretrain_steps=pretrain,
            keep_fractions=keeps,
            token_budgets=budgets,
            retrain_lrs=lrs,
            pretrain_lr=pretrain_lr,
        ),
        "d_model",
        "pretrain_steps",
        "keep_fractions",
        "token_budgets",
        "retrain_lrs",
        "pretrain_lr",
    )
    if budget is not None:
        assert budget.pretrain_steps[0] < budget.pretrain_steps[1] and budget.d_model > budget.n_head
        assert all(0 < k < 1 for k in budget.keep_fractions) and all(lr > 0 for lr in budget.retrain_lrs)


@PROPERTY
@given(
    layers=st.one_of(st.lists(SMALL_INTS, max_size=3).map(tuple), SMALL_INTS),
    keep=NUMBERS,
    heldout=SMALL_INTS,
    max_length=st.one_of(SMALL_INTS, st.just(300)),
)
def test_encoder_budgets(layers, keep, heldout, max_length):
    budget = valid_or_named(
        lambda: EncoderBudget(layers=layers, keep_ffn=keep, heldout_sentences=heldout, max_length=max_length),
        "layers",
        "keep_ffn",
        "heldout_sentences",
        "max_length",
    )
    if budget is not None:
        assert all(0 <= layer <= 5 for layer in budget.layers) and list(budget.layers) == sorted(
            set(budget.layers)
        )


# ---- property tests: core helpers ------------------------------------------------------------------------------


def _identity(task):
    return task


@PROPERTY
@given(workers=SMALL_INTS, share=NUMBERS, backend=st.sampled_from(["inline", "threads"]))
def test_run_all_arguments(workers, share, backend):
    results = valid_or_named(
        lambda: run_all(_identity, [1, 2], backend=backend, workers=workers, gpu_share=share, progress=False),
        "workers",
        "gpu_share",
        "backend",
    )
    if results is not None:
        assert results == [1, 2]


@PROPERTY
@given(repeats=SMALL_INTS, warmup=SMALL_INTS)
def test_interleaved_times(repeats, warmup):
    times = valid_or_named(
        lambda: interleaved_times({"noop": lambda: None}, repeats=repeats, warmup=warmup), "repeats", "warmup"
    )
    if times is not None:
        assert len(times["noop"]) == repeats and all(t >= 0 for t in times["noop"])


@PROPERTY
@given(seed=st.one_of(SMALL_INTS, st.just(2**32 - 1)), count=SMALL_INTS)
def test_seeds_for(seed, count):
    seeds = valid_or_named(lambda: seeds_for(seed, count), "seed", "count")
    if seeds is not None:
        assert len(seeds) == count and all(0 <= s < 2**32 for s in seeds)


@PROPERTY
@given(values=st.lists(st.floats(-1e6, 1e6), max_size=4), digits=SMALL_INTS)
def test_spread(values, digits):
    text = valid_or_named(lambda: spread(values, digits), "values", "digits")
    if text is not None:
        assert values and isinstance(text, str)


# ---- targeted tests: the concrete bad inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: route_expert_choice(torch.randn(2, 3, 4), 0), "top_k"),
        (lambda: route_token_choice(torch.randn(3, 4), 1, capacity_factor=-1), "capacity_factor"),
        (lambda: route_token_choice(torch.randn(3, 4), 1, capacity_factor=math.nan), "capacity_factor"),
        (lambda: token_choice_capacity(4, 1, 0, 1.0), "n_experts"),  # was a ZeroDivisionError
        (lambda: expert_choice_capacity(4, 3, 2, 1.0), "top_k"),
        (lambda: router_z_loss(torch.zeros(0, 4)), "logits"),  # was a silent NaN
        (lambda: grouped_matmul(torch.randn(3, 2), torch.randn(2, 2, 2), torch.tensor([1, 1])), "counts"),
        (lambda: grouped_matmul(torch.randn(3, 5), torch.randn(2, 2, 2), torch.tensor([1, 2])), "rows"),
        (lambda: moe_ffn(expansoin=4), "expansoin"),  # was a TypeError
        (lambda: default_path(MoEConfig(d_model=4, d_ff=8), "gpu0"), "device"),  # was a RuntimeError
        (lambda: MoEFeedForward(MoEConfig(d_model=4, d_ff=8))(torch.tensor(1.0)), "x"),  # was an IndexError
        (lambda: load_balancing_loss("routing"), "routing"),
    ],
)
def test_moe_bad_inputs(call, named):
    with pytest.raises(ValueError, match=named):
        call()


def test_moe_dispatch_and_combine_check_rows():
    routing = route_token_choice(torch.randn(3, 4), 2)
    with pytest.raises(ValueError, match="x"):
        dispatch(torch.randn(4, 8), routing)
    with pytest.raises(ValueError, match="rows"):
        combine(torch.randn(5, 8), routing)
    assert combine(dispatch(torch.randn(3, 8), routing), routing).shape == (3, 8)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: dynamic_k_mask(torch.tensor([[math.nan, 1.0]]), 0.5), "scores"),  # was an all-False row
        (lambda: top_k_mask(torch.tensor(1.0), 1), "scores"),  # was an IndexError
        (lambda: expert_permutation(np.array([0, -1, 1, 1]), 2), "labels"),  # was a NumPy ValueError
        (lambda: expert_permutation(np.array([0.0, 1.0]), 2), "labels"),  # was a TypeError
        (lambda: lloyd_codebook(RNG.random((3, 2)), 5, 1, 0), "n_clusters"),
        (lambda: lloyd_codebook(RNG.random((3, 2)), 2, 1, -1), "seed"),
        (lambda: balanced_assignment(RNG.random((4, 2)), RNG.random((2, 3))), "centroids"),
        (lambda: split_neurons(torch.full((4, 2), math.nan), 2), "up_weight"),  # was SciPy's error
        (lambda: split_neurons(torch.ones(4), 2), "up_weight"),
        (lambda: Router(0, 2, 4), "d_model"),  # was torch's RuntimeError
        (lambda: Router(4, -1, 4), "n_experts"),
        (lambda: DenseToMoEBudget(large_experts=3), "large_experts"),  # blamed n_experts
        (lambda: DenseToMoEBudget(minilm_experts=7), "minilm_experts"),  # blamed n_experts
        (lambda: DenseToMoEBudget(timing_taus=0.4), "timing_taus"),  # was a TypeError
        (lambda: DenseToMoEBudget(minilm_ks=()), "minilm_ks"),
        (lambda: DenseToMoEBudget(minilm_ks=8), "minilm_ks"),  # was a TypeError
        (lambda: DenseToMoEBudget(n_heads=3), "n_heads"),  # failed only when the ViT was built
        (lambda: DenseToMoEBudget().top_ks(0), "n_experts"),
        (lambda: RouterBudget(steps=0), "steps"),
        (lambda: CostModel(0.0, (1,), (2,), (4,)).relative(0, [1.0]), "tokens_per_sample"),  # ZeroDivisionError
        (lambda: CostModel(0.0, (1,), (2,), (4,)).relative(1, [math.nan]), "pairs_per_sample"),
        (lambda: CostModel(math.inf, (1,), (2,), (4,)), "outside_flops"),
        (lambda: CostModel(0.0, (1, 1), (2,), (4,)), "router_flops"),
        (lambda: squared_hoyer(torch.zeros(2, 3), eps=0), "eps"),  # was a silent NaN
        (lambda: tokenized_batches(None, [], 2), "sentences"),  # gave no batch, then crashed later
        (lambda: tokenized_batches(None, "one sentence", 2), "sentences"),
        (lambda: embed(nn.Linear(1, 1), []), "batches"),  # was torch.cat's RuntimeError
        (lambda: real_token_inputs(nn.Linear(1, 1), []), "batches"),
        (lambda: nearest_neighbours(torch.randn(1, 4)), "embeddings"),  # was the row itself
        (lambda: encoder_sweep(nn.Linear(1, 1), [], torch.zeros(0, 4), None, "top_k", [1]), "batches"),
    ],
)
def test_dense_to_moe_bad_inputs(call, named):
    with pytest.raises(ValueError, match=named):
        call()


def test_distillation_on_no_batches_is_rejected_before_the_relu_swap():
    model = ViT(VIT)
    with pytest.raises(ValueError, match="batches"):  # was a ZeroDivisionError at the first step
        distillation_finetune(model, [], [], weight=0.1, config=TrainConfig(steps=1))
    assert isinstance(model.layers[0].ffn.activation, nn.GELU)


def test_sparsity_finetune_checks_the_weight_before_the_relu_swap():
    model = ViT(VIT)
    with pytest.raises(ValueError, match="weight"):
        sparsity_finetune(model, iter([]), -1.0, TrainConfig(steps=1))
    assert isinstance(model.layers[0].ffn.activation, nn.GELU)
    with pytest.raises(ValueError, match="config"):
        sparsity_finetune(model, iter([]), 0.1, {"steps": 1})


def test_routing_helpers_reject_empty_work(routed_vit):
    model, images = routed_vit
    layer = model.layers[0].ffn
    with pytest.raises(ValueError, match="forward"):  # was torch.cat's RuntimeError
        collect_layer_inputs(model, lambda: None)
    with pytest.raises(ValueError, match="forward"):  # was a zero fraction of 0 for every layer
        zero_fraction(model, lambda: None)
    with pytest.raises(ValueError, match="inputs"):
        router_labels(layer, torch.zeros(0, 8), "output_norm")
    with pytest.raises(ValueError, match="chunk"):  # was range()'s ValueError
        router_labels(layer, torch.zeros(2, 8), "output_norm", chunk=0)
    with pytest.raises(ValueError, match="layer_inputs"):  # was a NaN loss
        train_routers(model, [torch.zeros(0, 8), torch.zeros(0, 8)], RouterBudget(steps=1))
    with pytest.raises(ValueError, match="budget"):
        train_routers(model, [torch.zeros(2, 8), torch.zeros(2, 8)], {"steps": 1})
    cost = cost_model(model)
    labels = torch.zeros(len(images), dtype=torch.long)
    with pytest.raises(ValueError, match="x"):  # was a NaN accuracy
        classifier_sweep(model, images[:0], labels[:0], cost, "top_k", [1])
    with pytest.raises(ValueError, match="y"):
        classifier_sweep(model, images, labels[:2], cost, "top_k", [1])
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(3, 5))


def test_configure_leaves_the_layer_as_it_was_on_a_bad_argument(routed_vit):
    model, _ = routed_vit
    layer: DynamicKMoE = model.layers[0].ffn
    configure(model, "top_k", k=1)
    with pytest.raises(ValueError, match="implementation"):  # used to set k=2 first
        layer.configure("top_k", k=2, implementation="fused")
    assert (layer.rule, layer.k, layer.implementation) == ("top_k", 1, "masked")
    with pytest.raises(ValueError, match="tau"):
        layer.configure("dynamic_k", tau=math.nan)
    assert layer.rule == "top_k"
    configure(model, "dense")


def test_moefy_rejects_a_partly_converted_model_before_changing_it():
    model = ViT(VIT)
    moefy(model, 2, iterations=1)
    model.layers[1].ffn = ViT(VIT).layers[1].ffn
    dense_ffn = model.layers[1].ffn
    with pytest.raises(ValueError, match="already converted"):
        moefy(model, 2)
    assert model.layers[1].ffn is dense_ffn


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: CompressionBudget(pretrain_steps=100), "pretrain_steps"),  # was a TypeError
        (lambda: CompressionBudget(pretrain_steps=(100, 1.5)), "pretrain_steps"),  # blamed "steps"
        (lambda: CompressionBudget(token_budgets=(0,)), "token_budgets"),  # blamed "steps"
        (lambda: CompressionBudget(retrain_lrs=(math.nan,)), "retrain_lrs"),  # blamed "lr"
        (lambda: CompressionBudget(pretrain_lr=math.inf), "pretrain_lr"),
        (lambda: CompressionBudget(projection_lrs=()), "projection_lrs"),
        (lambda: CompressionBudget(keep_fractions=0.5), "keep_fractions"),  # was a TypeError
        (lambda: CompressionBudget(d_model=4, n_head=4), "d_model"),  # failed only at the first target
        (lambda: EncoderBudget(layers=5), "layers"),  # was a TypeError
        (lambda: EncoderBudget(layers=(6,)), "layers"),
        (lambda: EncoderBudget(keep_ffn=0), "keep_ffn"),
        (lambda: Target(0, 4).check_against(GPT), "d_model"),
        (lambda: kept_units(torch.rand(8), 0), "keep"),  # kept one unit: an explicit 0 became "at least one"
        (lambda: kept_units(torch.tensor([1.0, math.nan]), 0.5), "scores"),  # NaN was always kept
        (lambda: selection_matrix(torch.tensor([0, 9]), 4), "indices"),  # was an IndexError
        (lambda: selection_matrix(torch.tensor([1, 1]), 4), "indices"),
        (lambda: random_importance(TinyLM(GPT), seed=-1), "seed"),  # was torch's RuntimeError
        (
            lambda: select_channels(Importance(torch.rand(8), (), (), ()), GPT, TARGET),
            "importance.qk",
        ),  # was an IndexError
        (
            lambda: select_channels(poisoned_importance(), GPT, TARGET),
            r"importance\.d",
        ),  # NaN channels were kept first
    ],
)
def test_projected_compression_bad_inputs(call, named):
    with pytest.raises(ValueError, match=named):
        call()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"qk": (torch.tensor([0, 1, 4]),)}, r"selection\.qk"),  # was a shape error inside load_state_dict
        ({"d": torch.tensor([0, 1, 2, 9])}, r"selection\.d"),  # was an IndexError
        ({"ffn": ()}, r"selection\.ffn"),
        ({"vo": (torch.tensor([0.0, 1.0, 4.0, 5.0]),)}, r"selection\.vo"),
    ],
)
def test_pruning_and_projection_check_the_selection_alike(base_lm, overrides, named):
    selection = tiny_selection(**overrides)
    with pytest.raises(ValueError, match=named):
        hard_prune(base_lm, selection, TARGET)
    with pytest.raises(ValueError, match=named):  # used to fail only at the first forward pass
        ProjectedLM(base_lm, selection, TARGET)


def test_projection_sources_names_an_unknown_matrix(base_lm):
    projected = ProjectedLM(base_lm, tiny_selection(), TARGET)
    assert projection_sources(projected, "blocks.0.ffn.up.weight").shape == (8, 4)
    with pytest.raises(ValueError, match="name"):  # was a KeyError
        projection_sources(projected, "blocks.9.ffn.up.weight")


def test_encoder_ffn_compression_checks_kept_units():
    ffn = MiniLM(BERT).layers[0].ffn
    for make in (prune_ffn, ProjectedFeedForward):
        with pytest.raises(ValueError, match="kept"):  # was an IndexError
            make(ffn, torch.tensor([0, 16]))
        with pytest.raises(ValueError, match="kept"):
            make(ffn, torch.tensor([], dtype=torch.long))
        with pytest.raises(ValueError, match="ffn"):
            make(nn.Linear(2, 2), torch.tensor([0]))
        assert make(ffn, torch.tensor([1, 3]))(torch.randn(1, 2, 8)).shape == (1, 2, 8)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: MiniLM(BERT)(torch.tensor([[0, 25]])), "input_ids"),  # was an IndexError
        (lambda: MiniLM(BERT)(torch.zeros(1, 3)), "input_ids"),
        (lambda: MiniLM(BERT)(torch.tensor([[1, 2]]), torch.tensor([[0, 0]])), "attention_mask"),  # silent NaN
        (lambda: MiniLM(BERT)(torch.tensor([[1, 2]]), torch.tensor([[1, 2]])), "attention_mask"),
        (lambda: MiniLM(BERT)(torch.tensor([[1, 2]]), None, torch.tensor([[0, 3]])), "token_type_ids"),
        (lambda: mean_pool(torch.randn(2, 3, 4), torch.ones(2, 4)), "attention_mask"),
        (lambda: ViT(VIT)(torch.full((1, 1, 4, 4), math.nan)), "images"),  # was a silent NaN
        (lambda: ViT(VIT)(torch.zeros(1, 1, 4, 4, dtype=torch.long)), "images"),
        (lambda: ViT({"d_model": 8}), "config"),
        (lambda: patchify(torch.zeros(1, 4, 4), 2), "images"),  # was a ValueError from unpacking
        (lambda: patchify(torch.zeros(1, 1, 4, 4), 3), "images"),
        (lambda: sentences.paragraphs(None), "text"),  # was a TypeError
        (lambda: sentences.is_good_sentence(3), "sentence"),
        (lambda: sentences.extract_sentences("A text."), "texts"),
    ],
)
def test_encoder_and_data_bad_inputs(call, named):
    with pytest.raises(ValueError, match=named):
        call()


def test_an_empty_sentence_split_is_named(monkeypatch):
    monkeypatch.setattr(sentences, "_all_sentences", lambda: {"train": (), "heldout": ()})
    with pytest.raises(ValueError, match="split"):
        sentences.load_sentences("heldout", 1)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: run_all(_identity, [1], backend="inline", workers=0), "workers"),
        (lambda: run_all(_identity, [1], backend="threads"), "backend"),
        (lambda: run_all(_identity, [1], backend="inline", gpu_share=True), "gpu_share"),  # True passed as 1
        (lambda: run_all(_identity, [1], backend="inline", gpu_share=math.nan), "gpu_share"),
        (lambda: run_all(_identity, 5, backend="inline"), "tasks"),  # was a TypeError
        (lambda: interleaved_times({"a": lambda: None}, repeats=0), "repeats"),
        (lambda: interleaved_times({"a": 1}, repeats=1), "works"),  # was a TypeError
        (lambda: measure_flops(nn.Linear(4, 2), torch.empty(0, 4)), "example_input"),  # counted 0 FLOPs
        (lambda: module_forward_flops(nn.Linear(4, 2), torch.empty(0, 4)), "example_input"),
        (lambda: gpt_parameter_count({"d_model": 8}), "config"),  # was an AttributeError
        (lambda: seeds_for(0, -1), "count"),  # returned no seed
        (lambda: seeds_for(-1, 2), "seed"),
        (lambda: seeds_for(2**32 - 1, 2), "count"),  # the second seed was out of range
        (lambda: spread([1.0, 2.0], digits=0), "digits"),  # was a format error
        (lambda: spread(["a"]), "values"),
        (lambda: torch_threads(0).__enter__(), "threads"),  # was torch's RuntimeError
        (lambda: Run("fast", torch.device("cpu"), 0, 1), "mode"),
        (lambda: Run("quick", "cpu", 0, 1), "device"),
        (lambda: record("x", {}, run="quick"), "run"),  # was an AttributeError
    ],
)
def test_core_helper_bad_inputs(call, named):
    with pytest.raises(ValueError, match=named):
        call()


def test_seeds_for_honours_zero_repeats():
    assert seeds_for(3, 0) == ()
    assert seeds_for(3, 2) == (3, 4)


def test_load_honours_an_explicit_results_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record("probe", {"a": 1}, results_dir=tmp_path)
    assert load("probe", results_dir="")["values"] == {"a": 1}  # "" was replaced by the committed results
