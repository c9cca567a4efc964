import copy
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from efflab.early_exit.exits import (
    EarlyExitNetwork,
    Phase,
    PooledHead,
    RegimeSchedule,
    accuracy_at_budgets,
    accuracy_within_budget,
    activation_ranks,
    attach_to_cnn,
    check_threshold,
    choose_exits,
    cost_accuracy_curve,
    evaluate_threshold,
    exit_costs,
    exit_logits_on,
    head_accuracies,
    measure_speedup,
    multi_exit_loss,
    numerical_rank,
    run_phase,
    time_breakdown,
    train_heads_early_stopping,
    train_regime,
)
from efflab.flops import measure_flops, module_forward_flops
from efflab.models.cnn import CNN, CNNConfig

N_CLASSES = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when other work shares the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_cnn(seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    return CNN(CNNConfig(widths=(4, 8, 8), hidden=16, image_size=8, num_classes=N_CLASSES))


def toy_data(n: int = 96, seed: int = 0):
    """Images whose class is the brightest quadrant: learnable in a few steps, with some easy, some hard."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=generator)
    y = torch.randint(0, N_CLASSES, (n,), generator=generator)
    rows, cols = (y // 2) * 4, (y % 2) * 4
    strength = torch.rand(n, generator=generator) * 2
    for quadrant in range(N_CLASSES):  # a loop over the 4 classes, not over samples
        chosen = y == quadrant
        r, c = int(rows[chosen][0]) if chosen.any() else 0, int(cols[chosen][0]) if chosen.any() else 0
        x[chosen, :, r : r + 4, c : c + 4] += strength[chosen, None, None, None]
    return x, y


def batch_stream(x, y, batch_size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def next_batch():
        chosen = torch.randint(0, len(x), (batch_size,), generator=generator)
        return x[chosen], y[chosen]

    return next_batch


SCHEDULE = RegimeSchedule(backbone_steps=15, exit_steps=10, warmup_steps=2, check_every=2, patience=2)


@pytest.fixture(scope="module")
def trained():
    """A network after phase 1 then a short joint phase: heads that are sometimes sure, sometimes not."""
    x, y = toy_data()
    network = attach_to_cnn(small_cnn())
    run_phase(network, Phase("backbone", 15, 3e-3), batch_stream(x, y), SCHEDULE, progress=False)
    run_phase(network, Phase("joint", 10, 3e-3), batch_stream(x, y, seed=1), SCHEDULE, progress=False)
    network.eval()
    return network, x, y


def random_logits(seed: int, exits: int = 4, n: int = 200, scale: float = 4.0) -> torch.Tensor:
    return scale * torch.randn(exits, n, N_CLASSES, generator=torch.Generator().manual_seed(seed))


def test_pooled_head_is_adaptive_pooling_and_keeps_small_maps():
    features = torch.randn(3, 5, 8, 8)
    head = PooledHead(5, N_CLASSES, map_size=8, pool_size=4)
    mixed = 0.5 * F.adaptive_max_pool2d(features, 4) + 0.5 * F.adaptive_avg_pool2d(features, 4)
    expected = head.linear(mixed.flatten(1))
    assert torch.allclose(head(features), expected, atol=1e-6)
    small = PooledHead(5, N_CLASSES, map_size=2, pool_size=4)
    assert small.linear.in_features == 5 * 2 * 2 and small(torch.randn(3, 5, 2, 2)).shape == (3, N_CLASSES)
    odd = PooledHead(5, N_CLASSES, map_size=6, pool_size=4)
    assert odd(torch.randn(3, 5, 6, 6)).shape == (3, N_CLASSES)
    assert isinstance(head.alpha, nn.Parameter)


def test_the_last_exit_is_the_backbone_itself():
    cnn = small_cnn()
    network = attach_to_cnn(cnn).eval()
    x = torch.randn(5, 1, 8, 8)
    outputs = network(x)
    assert network.num_exits == cnn.depth == len(outputs)
    assert torch.equal(outputs[-1], cnn(x))
    assert all(o.shape == (5, N_CLASSES) for o in outputs)
    assert not any(key.startswith(("final_exit", "stages")) for key in network.state_dict())  # registered once
    copied = copy.deepcopy(network)  # the experiment copies networks: the stages must stay the backbone's own
    assert copied.final_exit is copied.backbone.classifier and copied.stages[0] is copied.backbone.features[0]
    for h in range(network.num_exits):
        prefix = network.forward_until(x, h)
        assert len(prefix) == h + 1 and all(torch.equal(a, b) for a, b in zip(prefix, outputs, strict=False))


def test_the_wrapper_rejects_modules_that_are_not_the_backbones():
    cnn = small_cnn()
    stages = list(cnn.features)
    head = PooledHead(4, N_CLASSES, 4)
    with pytest.raises(ValueError, match="submodule"):
        EarlyExitNetwork(cnn, [*stages[:-1], nn.ReLU()], cnn.classifier, [head], [0])
    with pytest.raises(ValueError, match="one stage index per head"):
        EarlyExitNetwork(cnn, stages, cnn.classifier, [head], [0, 1])
    with pytest.raises(ValueError, match="increasing"):
        EarlyExitNetwork(cnn, stages, cnn.classifier, [head, copy.deepcopy(head)], [1, 0])
    with pytest.raises(ValueError, match="place_at"):
        attach_to_cnn(cnn, place_at=[5])


def test_multi_exit_loss_is_the_mean_of_every_exits_cross_entropy():
    network = attach_to_cnn(small_cnn())
    x, y = toy_data(16)
    expected = sum(F.cross_entropy(logits, y) for logits in network(x)) / network.num_exits
    assert torch.allclose(multi_exit_loss(network, x, y), expected)


@pytest.mark.parametrize("threshold", [1.0, 1.5])
def test_a_threshold_at_or_above_one_sends_every_sample_to_the_last_exit(trained, threshold):
    network, x, y = trained
    logits = exit_logits_on(network, x)
    logits[0, :10] = torch.tensor([80.0, 0.0, 0.0, 0.0])  # a softmax that rounds to exactly 1.0 in float32
    assert float(logits[0, :10].softmax(-1).max()) == 1.0
    costs = [1, 2, 3]
    outcome = evaluate_threshold(logits, y, costs, threshold)
    assert (outcome.exits == 2).all() and outcome.histogram.tolist() == [0, 0, len(x)]
    assert outcome.accuracy == pytest.approx(float((logits[-1].argmax(-1) == y).float().mean()))
    _, exits = network.early_exit_forward(x, threshold)
    assert (exits == network.num_exits - 1).all()


def test_threshold_zero_sends_every_sample_to_the_first_exit():
    logits = random_logits(0)
    assert (choose_exits(logits, 0.0) == 0).all()
    assert (choose_exits(logits, math.inf, rule="entropy") == 0).all()
    assert (choose_exits(logits, 0.0, rule="entropy") == len(logits) - 1).all()


@settings(deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0))
def test_expected_cost_is_monotone_in_the_threshold(seed, scale):
    logits = random_logits(seed, scale=scale)
    labels = torch.zeros(logits.shape[1], dtype=torch.long)
    costs = [1.0, 2.5, 4.0, 7.0]
    confidence = cost_accuracy_curve(logits, labels, costs, np.linspace(0, 1, 41))
    assert (np.diff(confidence.expected_flops) >= -1e-12).all()  # stricter rule, later exits, more cost
    entropy = cost_accuracy_curve(logits, labels, costs, np.linspace(0, 2, 41), rule="entropy")
    assert (np.diff(entropy.expected_flops) <= 1e-12).all()  # looser rule, earlier exits, less cost


@pytest.mark.parametrize("rule, threshold", [("confidence", 0.7), ("confidence", 0.95), ("entropy", 0.5)])
def test_histogram_accounts_for_every_sample_and_prices_the_expected_cost(rule, threshold):
    logits = random_logits(3)
    labels = torch.randint(0, N_CLASSES, (logits.shape[1],), generator=torch.Generator().manual_seed(1))
    costs = [10.0, 25.0, 40.0, 70.0]
    outcome = evaluate_threshold(logits, labels, costs, threshold, rule=rule, backbone_flops=60.0)
    assert outcome.histogram.sum() == logits.shape[1]
    assert outcome.expected_flops == pytest.approx(np.dot(outcome.histogram, costs) / logits.shape[1])
    assert outcome.expected_flops == pytest.approx(float(torch.tensor(costs)[outcome.exits].mean()))
    assert outcome.relative_cost == pytest.approx(outcome.expected_flops / 60.0)
    chosen = logits[outcome.exits, torch.arange(logits.shape[1])]
    assert torch.equal(outcome.predictions, chosen.argmax(-1))


def test_exit_costs_are_the_backbone_prefix_plus_every_head_so_far():
    network = attach_to_cnn(small_cnn()).eval()
    example = torch.zeros(1, 1, 8, 8)
    costs = exit_costs(network, example)
    stage_flops, head_flops, hidden = [], [], example
    for index, stage in enumerate(network.stages):
        stage_flops.append(module_forward_flops(stage, hidden))
        hidden = stage(hidden)
        if index in network.place_at:
            head_flops.append(module_forward_flops(network.heads[network.place_at.index(index)], hidden))
    head_flops.append(module_forward_flops(network.final_exit, hidden))
    for h, stage in enumerate(network.exit_stages()):
        assert costs[h] == sum(stage_flops[: stage + 1]) + sum(head_flops[: h + 1])
    assert costs[-1] == module_forward_flops(network.backbone, example) + sum(head_flops[:-1])
    assert all(a < b for a, b in zip(costs, costs[1:], strict=False))
    # torch's own counter agrees with the hook-based one on the last exit
    assert costs[-1] == measure_flops(lambda x: network(x), example)


@pytest.mark.parametrize("rule, thresholds", [("confidence", (0.3, 0.6, 0.9, 0.99)), ("entropy", (0.1, 0.5, 1.0))])
def test_real_early_exits_agree_with_the_simulation(trained, rule, thresholds):
    network, x, _ = trained
    logits = exit_logits_on(network, x)
    for threshold in thresholds:
        simulated = choose_exits(logits, threshold, rule)
        real_logits, real_exits = network.early_exit_forward(x, threshold, rule)
        assert torch.equal(real_exits, simulated)
        assert torch.allclose(real_logits, logits[simulated, torch.arange(len(x))], atol=1e-5)


def test_real_early_exits_stop_computing_for_samples_that_left(trained):
    network, x, _ = trained
    threshold = float(exit_logits_on(network, x)[0].softmax(-1).amax(-1).median())  # about half leave at once
    rows_seen = []
    handles = [s.register_forward_hook(lambda m, i, o: rows_seen.append(len(i[0]))) for s in network.stages]
    try:
        _, exits = network.early_exit_forward(x, threshold)
    finally:
        for handle in handles:
            handle.remove()
    assert 0 < int((exits == 0).sum()) < len(x)  # the threshold splits the batch, so the check below bites
    expected = [len(x)]
    for stage in range(1, len(network.stages)):
        exits_before = [h for h, s in enumerate(network.place_at) if s < stage]
        expected.append(int((exits > max(exits_before, default=-1)).sum()))
    assert rows_seen == expected


def test_disjoint_keeps_the_backbone_bit_for_bit():
    x, y = toy_data()
    network = attach_to_cnn(small_cnn())
    run_phase(network, Phase("backbone", 15, 3e-3), batch_stream(x, y), SCHEDULE, progress=False)
    network.eval()
    with torch.no_grad():
        before = network.backbone(x)
    heads_before = copy.deepcopy(network.heads.state_dict())
    run_phase(network, Phase("heads", 10, 3e-3), batch_stream(x, y, seed=1), SCHEDULE, validation=(x, y))
    network.eval()
    final = exit_logits_on(network, x)[-1]
    assert torch.equal(final, before) and torch.equal(final.argmax(-1), before.argmax(-1))
    assert any(not torch.equal(v, network.heads.state_dict()[k]) for k, v in heads_before.items())


def test_a_regime_continued_from_a_shared_backbone_equals_the_regime_trained_whole():
    x, y = toy_data()

    def batches(phase):
        return batch_stream(x, y, seed=phase)

    whole = attach_to_cnn(small_cnn(seed=7))
    history = train_regime(whole, "mixed", SCHEDULE, batches, progress=False)
    assert list(history.phase.unique()) == [1, 2] and len(history) == SCHEDULE.total_steps
    shared = attach_to_cnn(small_cnn(seed=7))
    train_regime(shared, "mixed", replace(SCHEDULE, exit_steps=0), batches, progress=False)
    with torch.no_grad():
        backbone_only = shared.backbone(x)
    continued = copy.deepcopy(shared)
    later = train_regime(continued, "mixed", SCHEDULE, batches, skip_backbone=True, progress=False)
    assert list(later.phase.unique()) == [2] and len(later) == SCHEDULE.exit_steps
    assert all(
        torch.equal(a, b) for a, b in zip(exit_logits_on(whole, x), exit_logits_on(continued, x), strict=True)
    )
    assert not torch.equal(exit_logits_on(continued, x)[-1], backbone_only)  # phase 2 moved the backbone
    disjoint = copy.deepcopy(shared)
    train_regime(disjoint, "disjoint", SCHEDULE, batches, validation=(x, y), skip_backbone=True)
    assert torch.equal(exit_logits_on(disjoint, x)[-1], backbone_only)  # disjoint ends at the backbone


def test_early_stopping_reloads_each_heads_best_validation_state():
    x, y = toy_data(128)
    x_val, y_val = toy_data(64, seed=5)
    network = attach_to_cnn(small_cnn(seed=3))
    run_phase(network, Phase("backbone", 15, 3e-3), batch_stream(x, y), SCHEDULE, progress=False)
    backbone_before = copy.deepcopy(network.backbone.state_dict())
    config = SCHEDULE.train_config(Phase("heads", 60, 3e-2))  # a high rate, so that accuracy wanders
    history, stopping = train_heads_early_stopping(
        network, batch_stream(x, y, seed=2), config, (x_val, y_val), check_every=3, patience=3
    )
    checks = stopping.checks.set_index("step")
    final = head_accuracies(network, x_val, y_val)
    for h, accuracy in enumerate(final):
        column = checks[f"head {h + 1}"]
        seen = column[column.index <= stopping.stopped_at[h]]
        assert accuracy == pytest.approx(seen.max())  # the best check's state, not the last one
        assert stopping.best_step[h] == int(seen.idxmax()) and stopping.best_accuracy[h] == pytest.approx(
            seen.max()
        )
        assert stopping.best_step[h] <= stopping.stopped_at[h] <= len(history)
    assert all(torch.equal(v, network.backbone.state_dict()[k]) for k, v in backbone_before.items())
    assert (np.diff(history.heads_training) <= 0).all()  # a stopped head never starts again
    with pytest.raises(ValueError, match="validation"):
        run_phase(network, Phase("heads", 5, 1e-3), batch_stream(x, y), SCHEDULE)


class NormalisedBlock(nn.Sequential):
    def __init__(self, channels_in, channels_out):
        super().__init__(
            nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.BatchNorm2d(channels_out), nn.ReLU()
        )


def normalised_network() -> EarlyExitNetwork:
    """A backbone with batch norm, built from plain modules: the wrapper is not tied to the course CNN."""
    torch.manual_seed(0)
    stages = [NormalisedBlock(1, 4), NormalisedBlock(4, 8)]
    final = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, N_CLASSES))
    backbone = nn.Sequential(*stages, final)
    return EarlyExitNetwork(backbone, stages, final, [PooledHead(4, N_CLASSES, 8)], [0])


@pytest.mark.parametrize("trains, should_change", [("heads", False), ("joint", True)])
def test_a_frozen_backbone_keeps_its_weights_and_normalisation_statistics(trains, should_change):
    network = normalised_network()
    x, y = toy_data(64)
    before = copy.deepcopy(network.backbone.state_dict())
    run_phase(network, Phase(trains, 5, 1e-2), batch_stream(x, y), SCHEDULE, validation=(x, y), progress=False)
    after = network.backbone.state_dict()
    changed = {name for name, value in before.items() if not torch.equal(value, after[name])}
    if should_change:  # the control: the same phase with the backbone unfrozen moves both
        assert {"0.1.running_mean", "0.0.weight"} <= changed
    else:
        assert changed == set()
        network.train()  # what every training step does; a frozen backbone stays in eval mode
        assert not network.backbone.training and network.heads.training


@pytest.mark.parametrize("threshold", [-0.1, math.nan, "0.5", True, None])
def test_bad_thresholds_raise(threshold):
    with pytest.raises(ValueError, match="threshold"):
        check_threshold(threshold)
    with pytest.raises(ValueError, match="threshold"):
        choose_exits(random_logits(0), threshold)


def test_unknown_regimes_rules_and_phases_raise():
    with pytest.raises(ValueError, match="regime='both'"):
        SCHEDULE.phases("both")
    with pytest.raises(ValueError, match="regime='Joint'"):
        train_regime(attach_to_cnn(small_cnn()), "Joint", SCHEDULE, lambda i: None)
    with pytest.raises(ValueError, match="rule='margin'"):
        choose_exits(random_logits(0), 0.5, rule="margin")
    with pytest.raises(ValueError, match="trains='all'"):
        Phase("all", 10, 1e-3)
    with pytest.raises(ValueError, match="exit_steps=0"):
        RegimeSchedule(backbone_steps=0, exit_steps=0)
    with pytest.raises(ValueError, match="share"):
        SCHEDULE.with_share(1.5)


def test_schedule_phases_follow_the_authors_code():
    schedule = RegimeSchedule(backbone_steps=100, exit_steps=40, backbone_lr=3e-3, mixed_lr=1e-3)
    assert [p.trains for p in schedule.phases("disjoint")] == ["backbone", "heads"]
    assert schedule.phases("joint") == (Phase("joint", 140, 3e-3),)
    backbone, second = schedule.phases("mixed")
    assert backbone == Phase("backbone", 100, 3e-3)
    assert (second.trains, second.steps, second.lr, second.heads_lr) == ("joint", 40, 3e-3, 3e-3)  # phase-1 rate
    _, gentle = schedule.phases("mixed_low_lr")
    assert (gentle.lr, gentle.heads_lr) == (1e-3, 3e-3)  # the course's variant: a slower backbone, same heads
    assert schedule.phases("disjoint")[1].lr == gentle.heads_lr  # new heads learn alike in every regime


@pytest.mark.parametrize("total", [7, 40, 801])
def test_a_phase_one_share_splits_a_fixed_budget(total):
    schedule = RegimeSchedule(backbone_steps=total, exit_steps=0)
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        split = schedule.with_share(share)
        assert split.backbone_steps == round(share * total) and split.total_steps == total
        for regime in ("disjoint", "mixed", "mixed_low_lr", "joint"):
            assert sum(p.steps for p in split.phases(regime)) == total
    assert schedule.with_share(0.0).phases("mixed") == schedule.phases("joint")  # mixed at 0 % is joint
    assert [p.trains for p in schedule.with_share(1.0).phases("mixed")] == ["backbone"]  # no head trains
    assert [p.trains for p in schedule.with_share(0.0).phases("disjoint")] == ["heads"]  # a random backbone


def test_accuracy_within_budget_uses_the_step_rule():
    curve = pd.DataFrame({"relative_cost": [0.4, 0.2, 0.9, 1.05], "accuracy": [0.7, 0.5, 0.8, 0.9]})
    values = accuracy_within_budget(curve, [0.1, 0.25, 0.5, 0.75, 1.0, 2.0])
    assert np.isnan(values[0]) and values[1:].tolist() == [0.5, 0.7, 0.7, 0.8, 0.9]
    assert accuracy_at_budgets(curve) == {"25%": 0.5, "50%": 0.7, "75%": 0.7, "100%": 0.8}


def test_numerical_rank_counts_the_directions_the_data_spans():
    generator = torch.Generator().manual_seed(0)
    low_rank = torch.randn(300, 3, generator=generator) @ torch.randn(3, 40, generator=generator)
    assert numerical_rank(low_rank) == 3
    assert numerical_rank(low_rank + 5.0) == 3  # a constant offset is not a direction
    assert numerical_rank(torch.ones(10, 4)) == 0
    assert numerical_rank(torch.randn(10, 50, generator=generator)) == 9  # capped by N - 1 after centring
    assert numerical_rank(low_rank.reshape(300, 4, 10)) == 3  # flattened per sample
    with pytest.raises(ValueError, match="rtol"):
        numerical_rank(low_rank, rtol=0)


@pytest.mark.parametrize("samples, dimension", [(200, 30), (40, 300)])
def test_numerical_rank_thresholds_the_singular_values(samples, dimension):
    """A matrix with singular values 10^0 ... 10^-5 (centred rows, orthonormal factors): 12 lie above 1e-3."""
    generator = torch.Generator().manual_seed(1)
    left = torch.randn(samples, 20, generator=generator, dtype=torch.float64)
    left, _ = torch.linalg.qr(left - left.mean(0))
    right, _ = torch.linalg.qr(torch.randn(dimension, 20, generator=generator, dtype=torch.float64))
    singular = torch.logspace(0, -5, 20, dtype=torch.float64)
    matrix = left @ torch.diag(singular) @ right.T
    assert numerical_rank(matrix, rtol=1e-3) == int((singular > 1e-3).sum()) == 12
    assert numerical_rank(matrix, rtol=1e-6) == 20


def test_activation_ranks_has_one_row_per_stage(trained):
    network, x, _ = trained
    table = activation_ranks(network, x)
    assert table.stage.tolist() == list(range(len(network.stages)))
    assert (table["rank"] <= table.dimension).all() and (table["rank"] <= len(x) - 1).all()
    assert ((table.rank_fraction > 0) & (table.rank_fraction <= 1)).all()


def test_measure_speedup_reports_the_flop_ratio_of_the_exits_taken(trained):
    network, x, _ = trained
    costs = exit_costs(network, x[:1])
    backbone = module_forward_flops(network.backbone, x[:1])
    everyone_last = measure_speedup(network, x, 1.0, costs=costs, repeats=1)
    assert everyone_last["flop_ratio"] == pytest.approx(costs[-1] / backbone)
    everyone_first = measure_speedup(network, x, 0.0, costs=costs, repeats=1)
    assert everyone_first["flop_ratio"] == pytest.approx(costs[0] / backbone)
    assert everyone_first["time_ratio"] > 0 and everyone_first["backbone_ms"] > 0


def test_time_breakdown_covers_every_part_once(trained):
    network, x, _ = trained
    table = time_breakdown(network, x, repeats=1)
    assert len(table) == len(network.stages) + len(network.heads) + 1
    assert table.flops.sum() == exit_costs(network, x[:1])[-1]  # every block, every head, the classifier
    assert table.flop_share.sum() == pytest.approx(1.0) and table.time_share.sum() == pytest.approx(1.0)
    assert (table.ms > 0).all()
