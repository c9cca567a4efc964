import pytest
import torch
from torch import nn

from efflab.models.cnn import CNN, ChannelsLastMaxPool, CNNConfig


@pytest.mark.parametrize(
    ("image_size", "widths", "feature_size"),
    [(8, (32, 64), 2), (32, (32, 64), 8), (8, (4, 8, 16, 32), 2), (32, (8,), 16), (3, (4,), 3)],
)
def test_output_shape_and_pooling(image_size, widths, feature_size):
    config = CNNConfig(in_channels=3, image_size=image_size, widths=widths, hidden=16)
    model = CNN(config)
    logits = model(torch.randn(5, 3, image_size, image_size))
    assert logits.shape == (5, 10)
    assert config.feature_size == feature_size
    assert model.depth == len(widths) == len(model.features)
    assert model.classifier.hidden.in_features == widths[-1] * feature_size**2


def test_named_parts_are_plain_modules():
    model = CNN(CNNConfig(widths=(8, 16, 32)))
    for block, width, pool in zip(model.features, (8, 16, 32), model.config.pools(), strict=True):
        assert isinstance(block.conv, nn.Conv2d) and block.conv.out_channels == width
        assert isinstance(block.relu, nn.ReLU)
        assert ("pool" in block._modules) == pool
    assert all(isinstance(block.pool, nn.MaxPool2d) for block in model.features if "pool" in block._modules)
    assert model.config.pools() == [True, True, False]  # 8 -> 4 -> 2, then it would drop below 2x2
    assert [type(m) for m in model.classifier] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]


def test_same_seed_same_weights():
    torch.manual_seed(0)
    a = CNN(CNNConfig())
    torch.manual_seed(0)
    b = CNN(CNNConfig())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_widths_become_a_tuple():
    assert CNNConfig(widths=[4, 8]).widths == (4, 8)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 1}, "num_classes"),
        ({"image_size": 0}, "image_size"),
        ({"hidden": 2.5}, "hidden"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"widths": ()}, "widths"),
        ({"widths": (8, 0)}, r"widths\[1\]"),
    ],
)
def test_bad_config_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CNNConfig(**kwargs)


def test_channels_last_pools_change_the_layout_not_the_numbers():
    torch.manual_seed(0)
    model = CNN(CNNConfig(widths=(8, 16), hidden=16))
    images = torch.randn(6, 1, 8, 8)
    pooled = model.features[0](images)
    assert pooled.is_contiguous(memory_format=torch.channels_last)
    plain = CNN(CNNConfig(widths=(8, 16), hidden=16))
    plain.load_state_dict(model.state_dict())
    for block in plain.features:
        if isinstance(getattr(block, "pool", None), ChannelsLastMaxPool):
            block.pool = nn.MaxPool2d(2)
    assert plain.features[0](images).is_contiguous()
    torch.testing.assert_close(model(images), plain(images), rtol=1e-5, atol=1e-6)
