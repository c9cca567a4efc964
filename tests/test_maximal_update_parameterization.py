"""SP, simpleP and muP for the course LM: init, multipliers, optimizer groups, and their base-width equivalence."""

import math

import pytest
import torch

from efflab.maximal_update.model import ModelFamily
from efflab.maximal_update.parameterization import (
    Multipliers,
    attention_scale,
    logical_name,
    parameter_kind,
    parameterize,
    rule_table,
    width_multiplier,
)
from efflab.models.gpt import INIT_STD
from efflab.train import TrainConfig, fit, make_optimizer

MOE = ModelFamily(base_width=32, n_layer=2, block_size=16)
DENSE = ModelFamily(base_width=32, n_layer=2, block_size=16, ffn="dense")
BATCH = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))


def one_step(built):
    """The parameters after one training step on a fixed batch (Adam, the groups' LRs)."""
    fit(
        built.model,
        lambda: (BATCH, BATCH.roll(-1, dims=1)),
        TrainConfig(steps=1, lr=1e-2, grad_clip=None),
        param_groups=built.parameter_groups(),
        progress=False,
    )
    return {name: p.detach().clone() for name, p in built.model.named_parameters()}


@pytest.mark.parametrize("family", [MOE, DENSE], ids=["moe", "dense"])
def test_mup_at_the_base_width_is_sp_bitwise(family):
    sp = parameterize(family, 32, "sp", seed=3)
    for other in ("mup", "simple"):
        built = parameterize(family, 32, other, seed=3)
        assert torch.equal(sp.model(BATCH), built.model(BATCH))
    sp_after = one_step(parameterize(family, 32, "sp", seed=3))
    mup_after = one_step(parameterize(family, 32, "mup", seed=3))
    assert sp_after.keys() == mup_after.keys()
    for name in sp_after:
        assert torch.equal(sp_after[name], mup_after[name]), name


def test_mup_differs_from_sp_away_from_the_base_width():
    sp, mup = parameterize(MOE, 64, "sp", seed=3), parameterize(MOE, 64, "mup", seed=3)
    assert not torch.equal(sp.model(BATCH), mup.model(BATCH))


@pytest.mark.parametrize("parameterization", ["sp", "simple", "mup"])
def test_every_parameter_is_in_exactly_one_group(parameterization):
    built = parameterize(MOE, 128, parameterization)
    grouped = [id(p) for group in built.parameter_groups() for p in group["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in built.model.parameters()}


def test_group_learning_rates_are_eta_over_m_for_matrices_and_eta_otherwise():
    eta = 3e-3
    for family in (MOE, DENSE):
        built = parameterize(family, 128, "mup")
        optimizer = make_optimizer(built.model, TrainConfig(steps=1, lr=eta), built.parameter_groups())
        seen = set()
        for group in optimizer.param_groups:
            expected = eta / 4 if group["kind"] in ("hidden", "experts") else eta
            assert group["lr"] == pytest.approx(expected, rel=1e-12), group["name"]
            seen.add(group["kind"])
        assert {"hidden", "input", "output", "vector"} <= seen
        assert ("experts" in seen and "router" in seen) == (family.ffn == "moe")
    sp = parameterize(MOE, 128, "sp")
    assert all(group["lr_scale"] == 1.0 for group in sp.parameter_groups())


def test_expert_fan_in_is_the_model_or_expert_width_never_the_expert_count():
    for expansion, granularity in ((2, 1), (8, 1), (4, 4)):
        family = MOE.with_changes(expansion=expansion, granularity=granularity)
        built = parameterize(family, 64, "mup", seed=1)
        experts = [rule for rule in built.rules if rule.kind == "experts"]
        assert {rule.shape[0] for rule in experts} == {expansion * granularity}
        for rule in experts:
            assert rule.fan_in_multiplier == 2.0 and rule.lr_scale == 0.5, (expansion, granularity, rule)
        up = built.model.blocks[0].ffn.up.detach()
        assert float(up.std()) == pytest.approx(INIT_STD / math.sqrt(2), rel=0.05)


def test_router_and_readout_multipliers_by_parameterization():
    alphas = Multipliers(alpha_in=2.0, alpha_out=0.5, alpha_router=3.0)
    expected = {"sp": (0.5, 3.0), "simple": (0.5 / 4, 3.0), "mup": (0.5 / 4, 3.0 / 4)}
    for parameterization, (head, router) in expected.items():
        built = parameterize(MOE, 128, parameterization, alphas, seed=0)
        model = built.model
        raw_router = model.blocks[0].ffn.router.parametrizations.weight.original
        assert torch.equal(model.blocks[0].ffn.router.weight, raw_router * router)
        raw_head = model.head.parametrizations.weight.original
        assert torch.equal(model.head.weight, raw_head * head)
        raw_token = model.embedding.token.parametrizations.weight.original
        assert torch.equal(model.embedding.token.weight, raw_token * 2.0)
        # The router's logits, as the MoE layer computes them, carry the multiplier.
        x = torch.randn(5, 128)
        logits = model.blocks[0].ffn.route(x).logits
        assert torch.allclose(logits, router * (x @ raw_router.t()), rtol=1e-5, atol=1e-6)


def test_init_scales_with_the_fan_in_only_for_matrices():
    built = parameterize(DENSE, 256, "mup", seed=0)
    by_name = {rule.name: rule for rule in built.rules}
    assert by_name["blocks.0.attention.qkv.weight"].init_std == pytest.approx(INIT_STD / math.sqrt(8))
    assert by_name["blocks.0.ffn.down.weight"].init_std == pytest.approx(INIT_STD / math.sqrt(4) / math.sqrt(8))
    assert by_name["head.weight"].init_std == INIT_STD
    assert by_name["embedding.token.weight"].init_std == INIT_STD
    qkv = dict(built.model.named_parameters())["blocks.0.attention.qkv.weight"]
    assert float(qkv.detach().std()) == pytest.approx(INIT_STD / math.sqrt(8), rel=0.03)


def test_attention_scale_is_one_over_sqrt_head_dim_at_the_base_and_one_over_head_dim_beyond():
    assert attention_scale("sp", 64, 16) is None
    assert attention_scale("mup", 16, 16) is None
    assert attention_scale("mup", 64, 16) == pytest.approx(4 / 64)
    assert all(block.attention.scale is None for block in parameterize(MOE, 64, "mup").model.blocks)


def test_kinds_and_names():
    assert logical_name("head.parametrizations.weight.original") == "head.weight"
    assert parameter_kind("blocks.1.ffn.router.parametrizations.weight.original", (4, 32)) == "router"
    assert parameter_kind("blocks.1.ffn.up", (4, 32, 64)) == "experts"
    assert parameter_kind("blocks.0.norm1.weight", (32,)) == "vector"
    with pytest.raises(ValueError, match="no kind"):
        parameter_kind("mystery.weight", (3, 3))
    for bad in (3, None, ("head", "weight")):
        with pytest.raises(ValueError, match="name=.* expected a parameter name"):
            parameter_kind(bad, (3, 3))


def test_the_rule_table_marks_the_mup_router_row_as_inferred():
    for parameterization in ("sp", "simple", "mup"):
        table = parameterize(MOE, 64, parameterization).rule_table().set_index("kind")
        inferred = table["note"].str.contains("inferred")
        assert list(inferred[inferred].index) == (["router"] if parameterization == "mup" else [])
    with pytest.raises(ValueError, match="parameterization"):
        rule_table(parameterize(MOE, 64, "mup").rules, "ntk")


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="parameterization='ntk'"):
        parameterize(MOE, 64, "ntk")
    with pytest.raises(ValueError, match="base_width=32"):
        parameterize(MOE, 48, "mup")
    with pytest.raises(ValueError, match="base_width=32"):
        width_multiplier(48, 32)
    assert width_multiplier(128, 32) == 4.0
    with pytest.raises(ValueError, match="head_dim"):
        ModelFamily(base_width=24)
    for bad in (0.0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="alpha_out"):
            Multipliers(alpha_out=bad)
    with pytest.raises(ValueError, match="multipliers"):
        parameterize(MOE, 64, "mup", {"alpha_in": 2.0})
    with pytest.raises(ValueError, match="seed"):
        parameterize(MOE, 64, "mup", seed=-1)
