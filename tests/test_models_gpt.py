import math

import pytest
import torch
from torch import nn

from efflab.models.gpt import (
    ROLES,
    FeedForward,
    GPTConfig,
    TinyLM,
    parameters_by_role,
    probabilities_from_logits,
    residual_init_std,
)

SMALL = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=16)


def make_model(config=SMALL, seed=0, **kwargs):
    torch.manual_seed(seed)
    return TinyLM(config, **kwargs).eval()


def random_tokens(batch, time, vocab=SMALL.vocab_size, seed=1):
    return torch.randint(vocab, (batch, time), generator=torch.Generator().manual_seed(seed))


def test_logits_shape():
    model = make_model()
    assert model(random_tokens(3, 7)).shape == (3, 7, SMALL.vocab_size)
    assert model(random_tokens(2, SMALL.block_size)).shape == (2, SMALL.block_size, SMALL.vocab_size)


def test_sequence_longer_than_block_size_raises():
    with pytest.raises(ValueError, match="block_size"):
        make_model()(random_tokens(1, SMALL.block_size + 1))


def test_causality():
    model = make_model()
    idx = random_tokens(2, 10)
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % SMALL.vocab_size
    before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :6], after[:, :6], rtol=0, atol=0)
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_default_config_values():
    config = GPTConfig()
    assert (config.vocab_size, config.block_size, config.d_model, config.d_ff) == (256, 128, 128, 512)
    assert GPTConfig(d_model=64, n_head=2, d_ff=100).d_ff == 100
    assert GPTConfig(d_model=64, n_head=8).head_dim == 8


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"d_model": 30, "n_head": 4}, "n_head"),
        ({"n_head": 0}, "n_head"),
        ({"n_layer": 0}, "n_layer"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"block_size": 1.5}, "block_size"),
        ({"d_model": 0}, "d_model"),
        ({"d_ff": 0}, "d_ff"),
        ({"dropout": 1.5}, "dropout"),
        ({"bias": "yes"}, "bias"),
    ],
)
def test_bad_config_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GPTConfig(**kwargs)


@pytest.mark.parametrize("bias", [False, True])
def test_parameters_by_role_covers_every_parameter_once(bias):
    config = GPTConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, d_model=16, bias=bias)
    model = make_model(config)
    groups = parameters_by_role(model)
    assert tuple(groups) == ROLES
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    expected = {
        "embedding": list(model.embedding.parameters()),
        "attention": [p for b in model.blocks for p in b.attention.parameters()],
        "ffn": [p for b in model.blocks for p in b.ffn.parameters()],
        "router": [],
        "norm": [p for b in model.blocks for p in [*b.norm1.parameters(), *b.norm2.parameters()]]
        + list(model.norm.parameters()),
        "head": list(model.head.parameters()),
    }
    for role in ROLES:
        assert {id(p) for p in groups[role]} == {id(p) for p in expected[role]}, role


class RoutedFFN(nn.Module):
    """A stand-in for an MoE layer: a router, two experts and a constant auxiliary loss."""

    def __init__(self, config, layer_index):
        super().__init__()
        self.router = nn.Linear(config.d_model, 2)
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(2))
        self.register_buffer("aux_loss", torch.tensor(float(layer_index + 1)))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        weights = self.router(x).softmax(-1)
        return sum(weights[..., i : i + 1] * expert(x) for i, expert in enumerate(self.experts))


def test_custom_ffn_factory_is_used_and_aux_losses_summed():
    layer_indices = []

    def factory(config, layer_index):
        layer_indices.append(layer_index)
        return RoutedFFN(config, layer_index)

    model = make_model(
        GPTConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, d_model=16), ffn_factory=factory
    )
    assert layer_indices == [0, 1, 2]
    assert all(isinstance(block.ffn, RoutedFFN) for block in model.blocks)
    model(random_tokens(2, 5))
    assert all(block.ffn.calls == 1 for block in model.blocks)
    assert model.aux_loss.item() == 1 + 2 + 3

    groups = parameters_by_role(model)
    routers = [p for b in model.blocks for p in b.ffn.router.parameters()]
    assert {id(p) for p in groups["router"]} == {id(p) for p in routers}
    experts = [p for b in model.blocks for p in b.ffn.experts.parameters()]
    assert {id(p) for p in groups["ffn"]} == {id(p) for p in experts}


def test_aux_loss_is_zero_tensor_for_dense_model():
    model = make_model()
    model(random_tokens(1, 4))
    assert isinstance(model.aux_loss, torch.Tensor) and model.aux_loss.item() == 0


def test_initialization_scales():
    config = GPTConfig(n_layer=8, d_model=256, n_head=4, bias=True)
    model = make_model(config)
    block = model.blocks[0]
    for weight in (block.attention.qkv.weight, block.ffn.up.weight, model.head.weight):
        assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    for weight in (block.attention.out.weight, block.ffn.down.weight):
        assert weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert residual_init_std(config) == 0.02 / 4
    assert model.embedding.token.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(block.attention.qkv.bias == 0) and torch.all(block.ffn.down.bias == 0)
    assert model.head.weight.data_ptr() != model.embedding.token.weight.data_ptr()  # untied


def test_same_seed_same_init_and_same_samples():
    a, b = make_model(seed=3), make_model(seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    prompt = random_tokens(2, 3)
    out_a = a.generate(prompt, 12, generator=torch.Generator().manual_seed(7))
    out_b = b.generate(prompt, 12, generator=torch.Generator().manual_seed(7))
    assert out_a.shape == (2, 15)
    assert torch.equal(out_a, out_b)
    assert torch.equal(out_a[:, :3], prompt)


def test_generate_crops_context_to_block_size():
    model = make_model()
    prompt = random_tokens(1, SMALL.block_size)
    out = model.generate(prompt, 2 * SMALL.block_size, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3 * SMALL.block_size)
    # the last sampled token depended only on the block_size tokens before it
    context = out[:, -SMALL.block_size - 1 : -1]
    assert torch.equal(model.next_token_probabilities(out[:, :-1]), model.next_token_probabilities(context))


def test_generate_top_k_one_is_greedy():
    model = make_model()
    prompt = random_tokens(2, 4)
    out = model.generate(prompt, 5, top_k=1)
    for step in range(5):
        logits = model(out[:, : 4 + step])[:, -1]
        assert torch.equal(out[:, 4 + step], logits.argmax(-1))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        make_model().generate(random_tokens(1, 2), 1, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        probabilities_from_logits(torch.zeros(4), temperature)


def test_probabilities_from_logits():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature in (0.1, 1.0, 10.0):
        probs = probabilities_from_logits(logits, temperature)
        torch.testing.assert_close(probs.sum(-1), torch.ones(3))
        assert torch.all(probs >= 0)
    assert torch.equal(probabilities_from_logits(logits, 1.0), logits.softmax(-1))
    one_hot = nn.functional.one_hot(logits.argmax(-1), 50).float()
    torch.testing.assert_close(probabilities_from_logits(logits, 1e-6), one_hot)
    assert not torch.isnan(probabilities_from_logits(logits, 1e-40)).any()
    # higher temperature, flatter distribution: higher entropy
    entropy = [
        -(p * p.clamp_min(1e-30).log()).sum()
        for p in (probabilities_from_logits(logits[0], t) for t in (0.5, 1.0, 2.0))
    ]
    assert entropy[0] < entropy[1] < entropy[2]
    top3 = probabilities_from_logits(logits, 1.0, top_k=3)
    assert torch.all((top3 > 0).sum(-1) == 3)
    torch.testing.assert_close(top3.sum(-1), torch.ones(3))


def test_next_token_probabilities_match_logits():
    model = make_model()
    idx = random_tokens(2, 6)
    probs = model.next_token_probabilities(idx, 0.7)
    torch.testing.assert_close(probs, probabilities_from_logits(model(idx)[:, -1], 0.7))
