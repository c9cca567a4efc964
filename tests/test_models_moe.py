import copy
import dataclasses
import math

import pytest
import torch

from efflab.models import moe
from efflab.models.gpt import FeedForward, GPTConfig, TinyLM, parameters_by_role
from efflab.models.moe import (
    MoEConfig,
    MoEFeedForward,
    grouped_matmul,
    load_balancing_loss,
    moe_ffn,
    moe_layers,
    route_expert_choice,
    route_token_choice,
)
from efflab.runtime import torch_threads
from efflab.train import TrainConfig, cross_entropy, fit


@pytest.fixture(autouse=True)
def one_thread():
    """The layers here are tiny: a second thread only adds synchronisation, which on a busy machine costs 10x."""
    with torch_threads(1):
        yield


def make_layer(seed=0, **options) -> MoEFeedForward:
    options = {"d_model": 16, "d_ff": 64, "expansion": 4, "granularity": 2, **options}
    torch.manual_seed(seed)
    return MoEFeedForward(MoEConfig(**options))


def with_path(layer: MoEFeedForward, implementation: str, **overrides) -> MoEFeedForward:
    copied = copy.deepcopy(layer)
    copied.config = dataclasses.replace(
        layer.config, implementation=implementation, top_k=layer.config.top_k, **overrides
    )
    return copied


def outputs_and_gradients(layer, x, upstream):
    x = x.clone().requires_grad_()
    y = layer(x)
    ((y * upstream).sum() + layer.aux_loss).backward()
    return [y.detach(), x.grad, layer.up.grad, layer.down.grad, layer.router.weight.grad]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"capacity_factor": 0.5},  # drops tokens
        {"softmax_order": "after_topk", "granularity": 4},
        {"granularity": 1, "top_k": 2, "expansion": 8},
        {"routing": "expert_choice"},
        {"routing": "expert_choice", "group_size": 2, "capacity_factor": 1.5},
    ],
    ids=["dropless", "capacity", "after-topk", "top2", "expert-choice", "expert-choice-groups"],
)
def test_execution_paths_agree_in_outputs_and_gradients(options):
    layer = make_layer(**options)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 16, generator=generator)
    upstream = torch.randn(4, 6, 16, generator=generator)
    reference = outputs_and_gradients(with_path(layer, "loop"), x, upstream)
    for path in ("padded", "grouped"):
        mine = outputs_and_gradients(with_path(layer, path), x, upstream)
        for value, expected in zip(mine, reference, strict=True):
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert reference[-1].abs().sum() > 0  # the router learns through the gates


def test_grouped_kernels_agree():
    layer = make_layer(granularity=4)
    x, upstream = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    slices = outputs_and_gradients(with_path(layer, "grouped", grouped_kernel="segments"), x, upstream)
    automatic = outputs_and_gradients(with_path(layer, "grouped", grouped_kernel="auto"), x, upstream)
    for mine, theirs in zip(automatic, slices, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_grouped_matmul_handles_empty_experts():
    rows, weight = torch.randn(7, 3), torch.randn(3, 3, 5)
    counts = torch.tensor([4, 0, 3])
    expected = torch.cat([rows[:4] @ weight[0], rows[4:] @ weight[2]])
    torch.testing.assert_close(grouped_matmul(rows, weight, counts, kernel="segments"), expected)
    torch.testing.assert_close(grouped_matmul(rows, weight, counts), expected)


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_one_expert_with_top1_equals_the_dense_ffn(routing):
    config = GPTConfig(d_model=16, n_head=2, d_ff=48)
    torch.manual_seed(0)
    dense = FeedForward(config)
    layer = MoEFeedForward(
        MoEConfig(d_model=16, d_ff=48, expansion=1, granularity=1, routing=routing, output_norm=False)
    )
    with torch.no_grad():
        layer.up[0].copy_(dense.up.weight.t())
        layer.down[0].copy_(dense.down.weight.t())
    x = torch.randn(3, 5, 16)
    x_dense, x_moe = x.clone().requires_grad_(), x.clone().requires_grad_()
    dense(x_dense).square().sum().backward()
    layer(x_moe).square().sum().backward()
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_moe.grad, x_dense.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.up.grad[0], dense.up.weight.grad.t(), rtol=1e-5, atol=1e-6)


def test_granularity_bookkeeping_keeps_active_parameters():
    base = MoEConfig(d_model=32, d_ff=128, expansion=8, granularity=1)
    for granularity in (1, 2, 4, 8):
        config = MoEConfig(d_model=32, d_ff=128, expansion=8, granularity=granularity)
        assert config.n_experts == 8 * granularity
        assert config.expert_width == 128 // granularity
        assert config.top_k == granularity
        counts = config.parameter_counts()
        assert counts["active"] == 2 * 32 * 128  # one dense FFN's worth
        assert counts["experts"] == base.parameter_counts()["experts"] == 8 * 2 * 32 * 128
        layer = MoEFeedForward(config)
        assert layer.up.numel() + layer.down.numel() == counts["experts"]
        assert layer.router.weight.numel() == counts["router"]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"granularity": 3}, "granularity"),  # does not divide d_ff = 64
        ({"top_k": 9, "expansion": 4, "granularity": 2}, "top_k"),  # more than the 8 experts
        ({"expansion": 0}, "expansion"),
        ({"routing": "hash"}, "routing"),
        ({"implementation": "fast"}, "implementation"),
        ({"capacity_factor": 0.0}, "capacity_factor"),
        ({"softmax_order": "sideways"}, "softmax_order"),
        ({"balance_loss_weight": -1.0}, "balance_loss_weight"),
    ],
)
def test_bad_configs_raise_value_errors_naming_the_parameter(options, name):
    with pytest.raises(ValueError, match=name):
        MoEConfig(**{"d_model": 16, "d_ff": 64, **options})


def test_factory_rejects_shape_options_and_bad_values():
    with pytest.raises(ValueError, match="d_ff"):
        moe_ffn(d_ff=10)
    with pytest.raises(ValueError, match="granularity"):
        moe_ffn(granularity=0)
    with pytest.raises(ValueError, match="granularity"):
        TinyLM(GPTConfig(d_model=16, n_head=2, d_ff=48), moe_ffn(granularity=5))
    with pytest.raises(ValueError, match="group_size"):
        make_layer(routing="expert_choice", group_size=3)(torch.randn(4, 2, 16))


def test_capacity_drops_exactly_the_overflow():
    # Every token prefers expert 0: with capacity 2 only the first two tokens keep their first choice.
    logits = torch.tensor([[5.0, 1.0, 0.0]] * 6)
    routing = route_token_choice(logits, top_k=1, capacity_factor=1.0)  # capacity ceil(6 * 1 / 3) = 2
    assert routing.capacity == 2
    assert routing.counts.tolist() == [2, 0, 0] and routing.routed_counts.tolist() == [6, 0, 0]
    assert routing.token_index.tolist() == [0, 1]
    stats = moe.router_stats(routing)
    assert stats.dropped_fraction == pytest.approx(4 / 6)


def test_first_choices_take_priority_over_second_choices():
    # Token 0 ranks expert 1 second, token 1 ranks it first; with room for one, token 1 keeps it.
    logits = torch.tensor([[3.0, 2.0, 0.0], [0.0, 3.0, 2.0]])
    routing = route_token_choice(logits, top_k=2, capacity_factor=0.75)  # ceil(0.75 * 2 * 2 / 3) = 1
    kept = set(zip(routing.token_index.tolist(), routing.expert_index.tolist(), strict=True))
    assert kept == {(0, 0), (1, 1), (1, 2)}


def test_softmax_order_changes_the_gates():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    before = route_token_choice(logits, 2, softmax_order="before_topk")
    after = route_token_choice(logits, 2, softmax_order="after_topk")
    assert float(before.gates.sum()) < 1.0
    assert float(after.gates.sum()) == pytest.approx(1.0)


def test_balance_loss_is_one_under_uniform_routing():
    logits = torch.zeros(8, 4)  # uniform probabilities; top-1 ties are broken by index
    routing = route_token_choice(logits, 1)
    routing.routed_counts = torch.tensor([2, 2, 2, 2])  # an even assignment
    assert float(load_balancing_loss(routing)) == pytest.approx(1.0)
    skewed = route_token_choice(torch.tensor([[4.0, 0.0, 0.0, 0.0]] * 8), 1)
    assert float(load_balancing_loss(skewed)) > 1.0


def test_aux_loss_is_the_weighted_sum_of_the_two_losses():
    layer = make_layer(balance_loss_weight=0.5, z_loss_weight=0.25)
    layer(torch.randn(2, 3, 16))
    routing = layer.last_routing
    expected = 0.5 * load_balancing_loss(routing) + 0.25 * moe.router_z_loss(routing.logits)
    torch.testing.assert_close(layer.aux_loss, expected)


def test_expert_choice_gives_every_expert_the_same_number_of_tokens_per_position():
    logits = torch.randn(8, 5, 4)
    routing = route_expert_choice(logits, top_k=2, group_size=4)  # capacity round(4 * 2 / 4) = 2 per group
    assert routing.counts.tolist() == [2 * 2 * 5] * 4  # 2 groups x 5 positions x capacity 2
    # A token is only ever picked together with tokens at its own position.
    positions = routing.token_index % 5
    per_expert = positions.view(4, 2 * 5, 2)
    assert bool((per_expert[..., 0] == per_expert[..., 1]).all())


def test_router_stats_report_load_dropped_and_entropy():
    layer = make_layer()
    layer(torch.randn(3, 4, 16))
    stats = layer.last_stats
    assert stats.load.shape == (8,) and float(stats.load.sum()) == pytest.approx(1.0)
    assert stats.dropped_fraction == 0.0
    assert 0.0 < stats.entropy <= math.log(8) + 1e-6
    assert stats.imbalance >= 1.0


def test_tiny_lm_with_moe_trains_and_reports_its_router():
    config = GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, d_model=16)
    torch.manual_seed(0)
    model = TinyLM(config, moe_ffn(expansion=4, granularity=2))
    assert len(moe_layers(model)) == 2
    roles = parameters_by_role(model)
    assert len(roles["router"]) == 2 and all(p.shape == (8, 16) for p in roles["router"])
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(32, (64, 9), generator=generator)

    def batch():
        rows = data[torch.randint(64, (16,), generator=generator)]
        return rows[:, :-1], rows[:, 1:]

    x, y = batch()
    with torch.no_grad():
        before = float(cross_entropy(model, x, y))
    assert float(model.aux_loss) > 0  # balance + z-loss of both layers reach the loss
    fit(model, batch, TrainConfig(steps=30, lr=1e-2), progress=False)
    with torch.no_grad():
        assert float(cross_entropy(model, x, y)) < before


def test_grouped_mm_probe_is_cached_and_falls_back(monkeypatch):
    moe._GROUPED_MM_WORKS.clear()
    first = moe.grouped_mm_available(torch.device("cpu"), torch.float32, 4, 6)
    assert moe._GROUPED_MM_WORKS[("cpu", None, torch.float32, 4, 6)] == first
    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    moe._GROUPED_MM_WORKS.clear()
    assert not moe.grouped_mm_available(torch.device("cpu"), torch.float32, 4, 6)
    rows, weight, counts = torch.randn(5, 4), torch.randn(2, 4, 6), torch.tensor([2, 3])
    torch.testing.assert_close(grouped_matmul(rows, weight, counts), moe._segments_matmul(rows, weight, [2, 3]))
    moe._GROUPED_MM_WORKS.clear()


def test_default_path_follows_the_benchmark_rule():
    from efflab.models.moe import CPU_LOOP_MAX_EXPERTS, CPU_SMALL_D_MODEL, CPU_SMALL_LOOP_MAX_EXPERTS, default_path

    def token_choice(d_model, n_experts):
        return MoEConfig(d_model=d_model, d_ff=4 * d_model, expansion=n_experts)

    small, wide = CPU_SMALL_D_MODEL, 2 * CPU_SMALL_D_MODEL
    assert default_path(token_choice(small, CPU_SMALL_LOOP_MAX_EXPERTS), "cpu") == "loop"
    assert default_path(token_choice(small, CPU_SMALL_LOOP_MAX_EXPERTS + 1), "cpu") == "grouped"
    assert default_path(token_choice(wide, CPU_LOOP_MAX_EXPERTS), "cpu") == "loop"
    assert default_path(token_choice(wide, CPU_LOOP_MAX_EXPERTS + 1), "cpu") == "grouped"
    assert default_path(token_choice(small, 2), "cuda") == "grouped"
    expert_choice = MoEConfig(d_model=16, d_ff=64, expansion=8, granularity=4, routing="expert_choice")
    assert default_path(expert_choice, "cpu") == default_path(expert_choice, "cuda") == "padded"
    pinned = MoEConfig(d_model=16, d_ff=64, expansion=8, granularity=4, implementation="padded")
    assert default_path(pinned, "cpu") == "padded"
