"""The name-based partition: every parameter in exactly one group, group sizes equal to the modules' counts."""

import pytest

from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import moe_ffn, moe_layers
from efflab.relative_lr.groups import (
    DENSE_GROUPS,
    MOE_GROUPS,
    OTHER,
    group_of,
    group_sizes,
    partition,
    present_groups,
)

CONFIG = GPTConfig(block_size=32, n_layer=3, n_head=2, d_model=24)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(params=["dense", "moe"])
def model(request):
    ffn = moe_ffn(expansion=4, granularity=2) if request.param == "moe" else None
    return TinyLM(CONFIG, ffn)


def test_every_parameter_lands_in_exactly_one_group(model):
    names = [name for name, _ in model.named_parameters()]
    grouped = [name for members in partition(model).values() for name in members]
    assert sorted(grouped) == sorted(names)
    assert len(grouped) == len(set(grouped))


def test_group_sizes_match_the_modules(model):
    sizes = group_sizes(model)
    assert sum(sizes.values()) == count(model)
    assert sizes["embedding"] == count(model.embedding)
    assert sizes["head"] == count(model.head)
    assert sizes["attention"] == sum(count(block.attention) for block in model.blocks)
    norms = count(model.norm) + sum(count(b.norm1) + count(b.norm2) for b in model.blocks)
    layers = moe_layers(model)
    if layers:
        expected = layers[0].config.parameter_counts()
        assert sizes["router"] == CONFIG.n_layer * expected["router"]
        assert sizes["experts"] == CONFIG.n_layer * expected["experts"]
        assert sizes["ffn"] == 0
        assert present_groups(model) == MOE_GROUPS
    else:
        assert sizes["ffn"] == sum(count(block.ffn) for block in model.blocks)
        assert sizes["router"] == sizes["experts"] == 0
        assert present_groups(model) == DENSE_GROUPS
    assert sizes[OTHER] == norms


def test_first_matching_rule_wins_and_the_rest_is_other():
    assert group_of("blocks.0.ffn.router.weight") == "router"  # inside the ffn, but the router rule comes first
    assert group_of("blocks.2.ffn.up") == "experts"
    assert group_of("blocks.2.ffn.up.weight") == "ffn"
    assert group_of("blocks.0.ffn.norm.weight") == OTHER  # an MoE output norm is a norm
    assert group_of("blocks.1.norm2.weight") == OTHER
    rules = (("head", r"^embedding\."), ("embedding", r"^embedding\."))
    assert group_of("embedding.token.weight", rules) == "head"


def test_an_expert_choice_moe_with_an_output_norm_is_partitioned_too():
    model = TinyLM(CONFIG, moe_ffn(expansion=2, granularity=1, routing="expert_choice"))
    sizes = group_sizes(model)
    layer = moe_layers(model)[0]
    assert layer.norm is not None
    assert sizes["experts"] == CONFIG.n_layer * layer.config.parameter_counts()["experts"]
    assert sum(sizes.values()) == count(model)


@pytest.mark.parametrize(
    ("rules", "name"),
    [((("heads", r"^head\."),), "group"), ((("head", r"(unclosed"),), "pattern"), (("head",), "rules")],
)
def test_bad_rules_raise(rules, name, model):
    with pytest.raises(ValueError, match=name):
        partition(model, rules)
