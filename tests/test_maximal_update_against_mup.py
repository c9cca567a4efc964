"""Our muP on the dense part of the course LM against microsoft's ``mup`` package (1.0.0): the same per-parameter
LR scale (MuAdam), the same init (mup.init.normal_) and the same readout multiplier (MuReadout)."""

import mup
import pytest
import torch

from efflab.maximal_update.model import ModelFamily
from efflab.maximal_update.parameterization import Multipliers, logical_name, parameterize, sp_init_std

FAMILY = ModelFamily(base_width=32, n_layer=2, block_size=16, ffn="dense")
WIDTH, ETA = 128, 1e-3


def mup_model(readout_mult: float | None = None):
    """A plain TinyLM of the family with mup's base shapes set against the base width (no rescaling)."""
    model, base = FAMILY.build(WIDTH), FAMILY.build(FAMILY.base_width, device="meta")
    if readout_mult is not None:
        for network in (model, base):
            network.head = mup.MuReadout(network.config.d_model, 256, bias=False, output_mult=readout_mult)
    mup.set_base_shapes(model, base, rescale_params=False, do_assert=readout_mult is not None)
    return model


def test_learning_rate_scale_of_every_parameter_matches_mu_adam():
    ours = {rule.name: rule for rule in parameterize(FAMILY, WIDTH, "mup").rules}
    model = mup_model()
    optimizer = mup.MuAdam(model.parameters(), lr=ETA)
    theirs = {id(p): group["lr"] / ETA for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert set(names) == set(ours)
    for name, parameter in names.items():
        assert theirs[id(parameter)] == pytest.approx(ours[name].lr_scale, rel=1e-12), name
    assert {round(v, 6) for v in theirs.values()} == {1.0, 0.25}


def test_init_of_every_parameter_matches_mup_init():
    ours = {rule.name: rule for rule in parameterize(FAMILY, WIDTH, "mup").rules}
    model = mup_model()
    for name, parameter in model.named_parameters():
        rule = ours[name]
        if rule.init_std is None:
            continue
        torch.manual_seed(11)
        mup.init.normal_(parameter, std=sp_init_std(name, rule.kind, FAMILY.n_layer))
        torch.manual_seed(11)
        mine = torch.empty(parameter.shape).normal_(0.0, rule.init_std)
        assert torch.allclose(parameter.detach(), mine, rtol=1e-6, atol=0), name


def test_readout_multiplier_matches_mu_readout():
    built = parameterize(FAMILY, WIDTH, "mup", Multipliers(alpha_out=2.0), seed=4)
    model = mup_model(readout_mult=2.0)
    raw = {logical_name(name): p for name, p in built.model.named_parameters()}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(raw[name])
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(built.model(x), model(x), rtol=1e-5, atol=1e-6)


def test_mup_refuses_a_plain_linear_router_shape():
    """A Linear with a growing fan-in and a fixed fan-out must be a MuReadout, by mup's own check: the shape of
    the MoE router, which is why our muP treats the router as output-like."""
    model = FAMILY.build(WIDTH)
    base = FAMILY.build(FAMILY.base_width, device="meta")
    with pytest.raises(AssertionError, match="MuReadout"):
        mup.set_base_shapes(model, base, rescale_params=False)
