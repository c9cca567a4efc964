import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from efflab.flops import (
    cnn_forward_flops,
    count_nonzero_parameters,
    count_parameters,
    gpt_forward_flops,
    gpt_parameter_count,
    gpt_training_flops_per_token,
    measure_flops,
    module_forward_flops,
)
from efflab.models.cnn import CNN, CNNConfig
from efflab.models.gpt import GPTConfig, TinyLM, parameters_by_role

GPT_CONFIGS = [
    GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=16),
    GPTConfig(vocab_size=256, block_size=32, n_layer=3, n_head=4, d_model=32, d_ff=48, bias=True),
    GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, d_model=8, d_ff=8),
]


@pytest.mark.parametrize("config", GPT_CONFIGS)
@pytest.mark.parametrize(("seq_len", "batch_size"), [(None, 1), (5, 3), (1, 2)])
def test_gpt_formula_equals_flop_counter(config, seq_len, batch_size):
    time = config.block_size if seq_len is None else seq_len
    idx = torch.zeros(batch_size, time, dtype=torch.long)
    measured = measure_flops(TinyLM(config), idx)
    assert gpt_forward_flops(config, seq_len, batch_size) == measured


class SelfAttention(nn.Module):
    def forward(self, x):
        return nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)


def test_flop_counter_counts_cpu_attention():
    # Without our formula for the CPU attention kernel, FlopCounterMode (torch 2.13) counts it as zero.
    # Two products, Q K^T and weights @ V, each 2 * B * H * T * T * D, over the full T x T square.
    assert measure_flops(SelfAttention(), torch.randn(2, 3, 10, 4)) == 2 * (2 * 2 * 3 * 10 * 10 * 4)


def test_gpt_forward_flops_rejects_bad_lengths():
    with pytest.raises(ValueError, match="seq_len"):
        gpt_forward_flops(GPT_CONFIGS[0], seq_len=GPT_CONFIGS[0].block_size + 1)
    with pytest.raises(ValueError, match="batch_size"):
        gpt_forward_flops(GPT_CONFIGS[0], batch_size=0)


@pytest.mark.parametrize("config", [*GPT_CONFIGS, GPTConfig()])
def test_gpt_parameter_count(config):
    model = TinyLM(config)
    assert count_parameters(model) == gpt_parameter_count(config)
    embedding = sum(p.numel() for p in parameters_by_role(model)["embedding"])
    assert gpt_parameter_count(config, include_embedding=False) == count_parameters(model) - embedding


def test_default_gpt_parameter_count_by_hand():
    # d=128, 4 layers, d_ff=512, no biases: per layer 4 d^2 (attention) + 2 d d_ff (ffn) + 2 d (norms)
    d, layers, vocab, block = 128, 4, 256, 128
    by_hand = vocab * d + block * d + layers * (4 * d * d + 2 * d * 512 + 2 * d) + d + d * vocab
    assert count_parameters(TinyLM(GPTConfig())) == by_hand == 869_504


def test_gpt_training_flops_per_token_is_six_n_plus_attention():
    config = GPTConfig()
    layers, context, d = config.n_layer, config.block_size, config.d_model
    n = gpt_parameter_count(config, include_embedding=False)
    assert gpt_training_flops_per_token(config) == 6 * n + 6 * layers * context * d
    # Tie it to the forward formula: take the causal half of the attention products, triple for the backward
    # pass, and add the 6 FLOPs per norm parameter that the 6N rule charges (norms do no matrix product).
    forward_per_token = gpt_forward_flops(config) // context
    causal_forward = forward_per_token - 2 * layers * context * d
    norm_parameters = (2 * layers + 1) * d
    assert gpt_training_flops_per_token(config) == 3 * causal_forward + 6 * norm_parameters


@pytest.mark.parametrize("image_size", [8, 32])
@pytest.mark.parametrize("widths", [(32, 64), (4, 8, 16), (6,)])
def test_cnn_hooks_equal_flop_counter(image_size, widths):
    model = CNN(CNNConfig(in_channels=3, image_size=image_size, widths=widths, hidden=20))
    images = torch.zeros(2, 3, image_size, image_size)
    assert module_forward_flops(model, images) == measure_flops(model, images)
    assert cnn_forward_flops(model, batch_size=2) == measure_flops(model, images)
    assert cnn_forward_flops(model, batch_size=2) == 2 * cnn_forward_flops(model)


def test_cnn_flops_by_hand():
    model = CNN(CNNConfig(in_channels=1, image_size=8, widths=(4, 8), hidden=16, num_classes=10))
    conv1 = 2 * 4 * 1 * 9 * 8 * 8
    conv2 = 2 * 8 * 4 * 9 * 4 * 4
    linear = 2 * (8 * 2 * 2) * 16 + 2 * 16 * 10
    assert cnn_forward_flops(model) == conv1 + conv2 + linear


def thin_middle_channels(model: CNN, keep: int) -> None:
    """Simulate structured pruning: keep the first ``keep`` output channels of block 0."""
    old, following = model.features[0].conv, model.features[1].conv
    thin = nn.Conv2d(old.in_channels, keep, old.kernel_size, padding="same")
    thin_next = nn.Conv2d(keep, following.out_channels, following.kernel_size, padding="same")
    with torch.no_grad():
        thin.weight.copy_(old.weight[:keep])
        thin.bias.copy_(old.bias[:keep])
        thin_next.weight.copy_(following.weight[:, :keep])
        thin_next.bias.copy_(following.bias)
    model.features[0].conv, model.features[1].conv = thin, thin_next


@pytest.mark.parametrize("image_size", [8, 32])
def test_flops_after_structured_pruning(image_size):
    model = CNN(CNNConfig(image_size=image_size, widths=(16, 32)))
    before = cnn_forward_flops(model)
    thin_middle_channels(model, keep=5)
    after = cnn_forward_flops(model)
    images = torch.zeros(1, 1, image_size, image_size)
    assert after == measure_flops(model, images)
    pixels = image_size**2
    saved = 2 * 11 * 1 * 9 * pixels + 2 * 32 * 11 * 9 * pixels // 4  # conv1 outputs, conv2 inputs
    assert before - after == saved


def test_count_parameters_trainable_only():
    model = CNN(CNNConfig(widths=(4,), hidden=8))
    total = count_parameters(model)
    assert total == (4 * 9 + 4) + (4 * 4 * 4 * 8 + 8) + (8 * 10 + 10)
    model.features.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - (4 * 9 + 4)
    assert count_parameters(model) == total


def test_shared_parameter_counts_once():
    linear = nn.Linear(3, 3, bias=False)
    assert count_parameters(nn.Sequential(linear, linear)) == 9
    assert count_nonzero_parameters(nn.Sequential(linear, linear)) == 9


def test_count_nonzero_parameters_after_pruning():
    torch.manual_seed(0)
    model = CNN(CNNConfig(widths=(8, 16), hidden=32))
    total = count_parameters(model)
    assert count_nonzero_parameters(model) == total
    conv = model.features[1].conv
    prune.l1_unstructured(conv, "weight", amount=0.5)
    pruned = conv.weight.numel() // 2
    assert count_nonzero_parameters(model) == total - pruned
    # the count follows the mask even before a forward pass refreshes conv.weight
    with torch.no_grad():
        conv.weight_orig.add_(1.0)
    assert count_nonzero_parameters(model) == total - pruned
    prune.remove(conv, "weight")
    assert count_nonzero_parameters(model) == total - pruned
