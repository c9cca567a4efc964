import copy

import pytest
import torch

from efflab.data.digits import infinite_batches, load_digits
from efflab.dense_to_moe.routers import RouterBudget, router_labels
from efflab.dense_to_moe.sparsity import penalty_weight, sparsity_finetune, squared_hoyer, zero_fraction
from efflab.models.vit import ViT, ViTConfig
from efflab.train import TrainConfig


def test_squared_hoyer_bounds_and_scale_invariance():
    one_hot = torch.tensor([[0.0, 3.0, 0.0, 0.0]])
    flat = torch.ones(1, 4)
    assert torch.allclose(squared_hoyer(one_hot), torch.tensor([1.0]))
    assert torch.allclose(squared_hoyer(flat), torch.tensor([4.0]))
    a = torch.rand(5, 9)
    assert torch.allclose(squared_hoyer(a), squared_hoyer(7.0 * a))


def test_penalty_ramps():
    assert penalty_weight(0, 10, 1.0, "linear") == pytest.approx(0.1)
    assert penalty_weight(4, 10, 1.0, "linear_warmup") == pytest.approx(1.0)
    assert penalty_weight(1, 10, 1.0, "linear_warmup") == pytest.approx(0.4)
    assert penalty_weight(3, 10, 0.5, "constant") == 0.5
    with pytest.raises(ValueError, match="schedule"):
        penalty_weight(0, 10, 1.0, "cosine")
    with pytest.raises(ValueError, match="weight"):
        penalty_weight(0, 10, -1.0)


def test_hoyer_finetune_lowers_the_nonzero_fraction_against_zero_penalty():
    digits = load_digits(0)
    torch.manual_seed(0)
    base = ViT(ViTConfig(d_model=8, n_layers=1, n_heads=2, d_ff=32))
    zeros = {}
    for weight in (0.0, 0.1):
        model = copy.deepcopy(base)
        torch.manual_seed(1)
        sparsity_finetune(
            model, infinite_batches(digits.train, 32, seed=3), weight, TrainConfig(steps=15, lr=3e-3)
        )
        zeros[weight] = sum(zero_fraction(model, lambda m=model: m(digits.val.x)))
    assert zeros[0.1] > zeros[0.0]


def test_router_labels_are_expert_output_norms_and_shares():
    from efflab.dense_to_moe.conversion import moefy
    from efflab.dense_to_moe.routers import moe_layers

    torch.manual_seed(0)
    model = ViT(ViTConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16))
    moefy(model, 4, iterations=1)
    layer = moe_layers(model)[0]
    x = torch.randn(6, 8)
    norms = router_labels(layer, x, "output_norm")
    one = torch.zeros(4, dtype=torch.bool)
    one[2] = True
    expected = (layer.masked_forward(x, one.expand(6, -1)) - layer.bias).norm(dim=-1)
    assert torch.allclose(norms[:, 2], expected, atol=1e-5)
    shares = router_labels(layer, x, "activation_share")
    assert torch.allclose(shares.max(1).values, torch.ones(6))
    with pytest.raises(ValueError, match="target"):
        router_labels(layer, x, "gates")
    with pytest.raises(ValueError, match="steps"):
        RouterBudget(steps=0)
