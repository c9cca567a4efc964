import pytest
import torch
from torch import nn

from efflab.flops import measure_flops
from efflab.models.vit import ViT, ViTConfig, patchify, vit_ffn_flops_per_token, vit_outside_ffn_flops_per_image


def test_vit_maps_digits_to_logits_and_tokens_are_patches():
    config = ViTConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32)
    model = ViT(config)
    images = torch.randn(5, 1, 8, 8)
    assert model(images).shape == (5, 10)
    assert model.tokens(images).shape == (5, config.n_tokens, 16)
    patches = patchify(images, 2)
    assert patches.shape == (5, 16, 4)
    # token 1 is the patch at row 0, columns 2..3
    assert torch.equal(patches[:, 1], images[:, 0, 0:2, 2:4].reshape(5, 4))


def test_ffn_parts_are_named_and_activation_is_swappable():
    model = ViT(ViTConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32))
    ffn = model.layers[0].ffn
    assert (
        isinstance(ffn.up, nn.Linear) and isinstance(ffn.down, nn.Linear) and isinstance(ffn.activation, nn.GELU)
    )
    x = torch.randn(3, 16)
    ffn.activation = nn.ReLU()
    assert torch.allclose(ffn(x), ffn.down(torch.relu(ffn.up(x))))


def test_analytic_flops_match_torch_counter():
    config = ViTConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32)
    model = ViT(config)
    ffn = config.n_layers * config.n_tokens * vit_ffn_flops_per_token(config)
    expected = vit_outside_ffn_flops_per_image(config) + ffn
    assert measure_flops(model, torch.randn(1, 1, 8, 8)) == expected


@pytest.mark.parametrize(
    "changes", [{"patch_size": 3}, {"n_heads": 3}, {"activation": "tanh"}, {"d_ff": 0}, {"n_classes": 1}]
)
def test_bad_config_is_rejected(changes):
    with pytest.raises(ValueError):
        ViTConfig(**changes)


def test_wrong_image_shape_is_rejected():
    with pytest.raises(ValueError, match="images of shape"):
        ViT(ViTConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32))(torch.randn(2, 1, 6, 6))
