import copy

import numpy as np
import pytest
import torch

from efflab.dense_to_moe.clustering import balanced_assignment, expert_permutation, split_neurons
from efflab.dense_to_moe.conversion import configure, moefy
from efflab.dense_to_moe.cost import cost_model
from efflab.dense_to_moe.evaluation import classifier_sweep, routed_forward
from efflab.dense_to_moe.moe_layer import DynamicKMoE
from efflab.dense_to_moe.routers import RouterBudget, collect_layer_inputs, moe_layers, train_routers
from efflab.dense_to_moe.selection import dynamic_k_mask, select, top_k_mask
from efflab.dense_to_moe.sparsity import relufy
from efflab.models.vit import ViT, ViTConfig, vit_outside_ffn_flops_per_image

CONFIG = ViTConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32)


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    dense = relufy(ViT(CONFIG)).eval()
    model = copy.deepcopy(dense)
    moefy(model, 8, iterations=2, seed=0)
    images = torch.randn(40, 1, 8, 8)
    inputs = collect_layer_inputs(model, lambda: model(images))
    train_routers(model, inputs, RouterBudget(width=8, steps=20, batch_size=64))
    return dense, model, images


def test_cluster_sizes_are_exact_and_permutation_is_a_bijection():
    torch.manual_seed(1)
    weight = torch.randn(48, 10)
    split = split_neurons(weight, 6, iterations=3, seed=0)
    assert np.bincount(split.labels, minlength=6).tolist() == [8] * 6
    assert sorted(split.permutation.tolist()) == list(range(48))
    # listed expert by expert
    assert (split.labels[split.permutation] == np.repeat(np.arange(6), 8)).all()


def test_balanced_assignment_is_optimal_on_a_small_case():
    from itertools import permutations

    rng = np.random.default_rng(0)
    points, centroids = rng.normal(size=(6, 2)), rng.normal(size=(3, 2))
    labels = balanced_assignment(points, centroids)
    cost = lambda lab: ((points - centroids[np.asarray(lab)]) ** 2).sum()  # noqa: E731
    best = min(cost(np.array(p) // 2) for p in permutations(range(6)))
    assert np.isclose(cost(labels), best)


def test_uneven_labels_and_bad_expert_counts_are_rejected():
    with pytest.raises(ValueError, match="sizes"):
        expert_permutation(np.array([0, 0, 0, 1]), 2)
    with pytest.raises(ValueError, match="divisor"):
        split_neurons(torch.randn(30, 4), 7)
    with pytest.raises(ValueError, match="divisor"):
        moefy(ViT(CONFIG), 5)


def test_all_experts_reproduce_the_dense_model(converted):
    dense, model, images = converted
    with torch.no_grad():
        reference = dense(images)
        configure(model, "dense")
        assert torch.allclose(model(images), reference, atol=1e-5)
        logits, k = routed_forward(model, images, "dynamic_k", 1.0)
    assert torch.allclose(logits, reference, atol=1e-5)
    assert (k == 8).all()


def test_tau_zero_runs_at_least_one_expert_and_one_when_the_max_is_unique(converted):
    _, model, images = converted
    _, k = routed_forward(model, images, "dynamic_k", 0.0)
    assert (k >= 1).all()
    scores = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.3, 0.0]])
    assert dynamic_k_mask(scores, 0.0).sum(1).tolist() == [1, 2]  # a tie keeps both


def test_expected_flops_are_monotone_in_tau_and_dense_plus_routers_at_one(converted):
    _, model, images = converted
    labels = torch.zeros(len(images), dtype=torch.long)
    cost = cost_model(model, vit_outside_ffn_flops_per_image(CONFIG))
    rows = classifier_sweep(model, images, labels, cost, "dynamic_k", [0.0, 0.3, 0.6, 0.9, 0.99, 1.0])
    flops = [r["relative_flops"] for r in rows]
    assert all(b >= a - 1e-12 for a, b in zip(flops, flops[1:], strict=False))
    dense = cost.dense(CONFIG.n_tokens)
    routers = CONFIG.n_tokens * sum(layer.router.flops_per_token() for layer in moe_layers(model))
    assert np.isclose(flops[-1] * dense, dense + routers)


def test_gathered_equals_masked(converted):
    _, model, images = converted
    layer = moe_layers(model)[0]
    x = torch.randn(50, CONFIG.d_model)
    for rule, options in (("dynamic_k", {"tau": 0.5}), ("top_k", {"k": 3}), ("dynamic_k", {"tau": 0.0})):
        mask = select(layer.router(x), rule, **options)
        with torch.no_grad():
            assert torch.allclose(layer.gathered_forward(x, mask), layer.masked_forward(x, mask), atol=1e-5)
    empty = torch.zeros(50, 8, dtype=torch.bool)
    assert torch.allclose(layer.gathered_forward(x, empty), layer.bias.expand(50, -1))
    # and the whole model, through configure
    with torch.no_grad():
        configure(model, "dynamic_k", tau=0.7, implementation="masked")
        masked = model(images)
        configure(model, "dynamic_k", tau=0.7, implementation="gathered")
        gathered = model(images)
        configure(model, "dense", implementation="masked")
    assert torch.allclose(masked, gathered, atol=1e-5)


def test_top_k_runs_exactly_k():
    scores = torch.rand(7, 5)
    assert (top_k_mask(scores, 2).sum(1) == 2).all()


@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan"), "0.5", True])
def test_bad_tau_is_rejected(converted, tau):
    with pytest.raises(ValueError, match="tau"):
        dynamic_k_mask(torch.rand(3, 4), tau)
    with pytest.raises(ValueError, match="tau"):
        configure(converted[1], "dynamic_k", tau=tau)


def test_unknown_rules_and_bad_k_are_rejected(converted):
    model = converted[1]
    with pytest.raises(ValueError, match="rule"):
        configure(model, "top_p", tau=0.5)
    with pytest.raises(ValueError, match="rule"):
        select(torch.rand(2, 3), "random")
    with pytest.raises(ValueError, match="k="):
        configure(model, "top_k", k=9)
    layer = DynamicKMoE(ViT(CONFIG).layers[0].ffn, np.arange(32), 8)
    with pytest.raises(ValueError, match="router"):
        layer.configure("dynamic_k", tau=0.5)
    with pytest.raises(ValueError, match="bijection"):
        DynamicKMoE(ViT(CONFIG).layers[0].ffn, np.zeros(32, dtype=int), 8)


def test_timing_runs_on_the_given_device_and_rejects_others(converted):
    from efflab.dense_to_moe.timing import time_forward

    _, model, images = converted
    for device in ("cpu", torch.device("cpu")):
        assert time_forward(model, images, "dynamic_k", 0.5, 1, device=device) > 0
    assert next(model.parameters()).device.type == "cpu"
    assert all(layer.rule == "dense" and layer.implementation == "masked" for layer in moe_layers(model))
    bad = ["gpu", "meta", None] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(ValueError, match="device="):
            time_forward(model, images, "dense", None, 1, device=device)


def test_routers_trained_on_another_device_are_the_same_routers_and_join_their_layers():
    # on a CPU-only machine "another device" is the CPU named explicitly: the path that moves inputs and labels,
    # trains there and moves each router to its layer must give the routers of the default path, bitwise
    torch.manual_seed(0)
    dense = relufy(ViT(CONFIG)).eval()
    images = torch.randn(40, 1, 8, 8)
    trained = {}
    for device in (None, "cpu"):
        model = copy.deepcopy(dense)
        moefy(model, 8, iterations=2, seed=0)
        inputs = collect_layer_inputs(model, lambda model=model: model(images))
        losses = train_routers(model, inputs, RouterBudget(width=8, steps=5, batch_size=16), device=device)
        layers = moe_layers(model)
        assert all(next(layer.router.parameters()).device == layer.w1.device for layer in layers)
        trained[device] = (losses, [p.clone() for layer in layers for p in layer.router.parameters()])
    assert trained[None][0] == trained["cpu"][0]
    assert all(torch.equal(a, b) for a, b in zip(trained[None][1], trained["cpu"][1], strict=True))
