"""Property tests at the core's numeric boundaries: any input gives a valid result or a ValueError that names the
parameter, never another exception (a crash from deep inside torch or NumPy) and never a silent NaN."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import MoEConfig, route_expert_choice, route_token_choice
from efflab.train import TrainConfig, lr_factor

from boundaries import NUMBERS, PROPERTY, SMALL_INTS, valid_or_named


@PROPERTY
@given(steps=SMALL_INTS, lr=NUMBERS, warmup=SMALL_INTS, min_lr_ratio=NUMBERS, step=st.integers(0, 60))
def test_learning_rate_schedules(steps, lr, warmup, min_lr_ratio, step):
    config = valid_or_named(
        lambda: TrainConfig(steps=steps, lr=lr, warmup_steps=warmup, min_lr_ratio=min_lr_ratio),
        "steps",
        "lr",
        "warmup_steps",
        "min_lr_ratio",
    )
    if config is not None:
        factor = lr_factor(min(step, config.steps - 1), config)
        assert math.isfinite(factor) and 0 < factor <= 1


@PROPERTY
@given(
    tokens=st.integers(1, 12),
    experts=st.integers(1, 6),
    top_k=SMALL_INTS,
    capacity=st.one_of(st.none(), NUMBERS),
    poison=st.sampled_from([None, math.nan, math.inf]),
)
def test_token_choice_routing(tokens, experts, top_k, capacity, poison):
    logits = torch.randn(tokens, experts)
    if poison is not None:
        logits[0, 0] = poison
    routing = valid_or_named(
        lambda: route_token_choice(logits, top_k, capacity_factor=capacity), "top_k", "capacity_factor", "logits"
    )
    if routing is not None:
        assert torch.isfinite(routing.gates).all() and int(routing.counts.sum()) == len(routing.token_index)


@PROPERTY
@given(
    batch=st.integers(1, 4),
    time=st.integers(1, 3),
    experts=st.integers(1, 6),
    top_k=SMALL_INTS,
    capacity=NUMBERS,
    group=st.one_of(st.none(), st.integers(-1, 5)),
)
def test_expert_choice_routing(batch, time, experts, top_k, capacity, group):
    logits = torch.randn(batch, time, experts)
    routing = valid_or_named(
        lambda: route_expert_choice(logits, top_k, capacity_factor=capacity, group_size=group),
        "top_k",
        "capacity_factor",
        "group_size",
    )
    if routing is not None:
        assert torch.isfinite(routing.gates).all()


@PROPERTY
@given(d_ff=st.integers(-1, 64), expansion=SMALL_INTS, granularity=SMALL_INTS, capacity=NUMBERS, init_std=NUMBERS)
def test_moe_layer_configs(d_ff, expansion, granularity, capacity, init_std):
    valid_or_named(
        lambda: MoEConfig(
            d_model=8,
            d_ff=d_ff,
            expansion=expansion,
            granularity=granularity,
            capacity_factor=capacity,
            init_std=init_std,
        ),
        "d_ff",
        "expansion",
        "granularity",
        "capacity_factor",
        "init_std",
        "top_k",
    )


@PROPERTY
@given(d_model=SMALL_INTS, n_head=SMALL_INTS, dropout=NUMBERS, block=SMALL_INTS)
def test_language_model_configs(d_model, n_head, dropout, block):
    valid_or_named(
        lambda: GPTConfig(d_model=d_model, n_head=n_head, dropout=dropout, block_size=block, n_layer=1),
        "d_model",
        "n_head",
        "dropout",
        "block_size",
    )


@pytest.mark.parametrize(
    ("tokens", "named"),
    [
        (torch.tensor([[0, 300]]), "idx"),
        (torch.tensor([[-1, 3]]), "idx"),
        (torch.zeros(1, 9, dtype=torch.long), "block_size"),
        (torch.zeros(2, 3), "idx"),
    ],
)
def test_language_model_inputs_outside_the_vocabulary_or_context(tokens, named):
    model = TinyLM(GPTConfig(n_layer=1, n_head=1, d_model=8, block_size=8))
    with pytest.raises(ValueError, match=named):
        model(tokens)
