"""Property tests at the boundaries of the training loop, pruning, Shapley values and the two learning-rate
packages: any input gives a valid result or a ValueError that names the parameter, never another exception (a
crash from deep inside torch or NumPy, a bare StopIteration) and never a silent NaN. Then one targeted test per
bad input that used to be accepted, replaced by a default, or crash."""

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from efflab.data.digits import Split, load_digits
from efflab.finetune import FinetuneBudget, finetune, scheduled_count
from efflab.maximal_update import experiment as mup_experiment
from efflab.maximal_update.coordinate_check import CoordinateCheckTask, log_log_slope
from efflab.maximal_update.experiment import MupBudget, coordinate_tasks
from efflab.maximal_update.model import ModelFamily
from efflab.maximal_update.parameterization import (
    Multiplier,
    Multipliers,
    attention_scale,
    parameterize,
    rules,
    sp_init_std,
    width_multiplier,
)
from efflab.maximal_update.transfer import SweepTask
from efflab.models.cnn import CNN, CNNConfig
from efflab.pruning import experiment as pruning_experiment
from efflab.pruning.experiment import DenseTask, PruneTask, PruningBudget, crossover_ratio, verdict
from efflab.pruning.pruners import (
    StructuredPruner,
    accuracy_without_finetuning,
    compare_latency,
    constant_schedule,
    geometric_schedule,
    hybrid_schedule,
    make_schedule,
    one_shot_schedule,
    prune_and_finetune,
    schedule_table,
)
from efflab.relative_lr import experiment as rel_experiment
from efflab.relative_lr.experiment import RelativeLRBudget, TrainTask
from efflab.relative_lr.groups import group_of
from efflab.relative_lr.measures import speedup_percent, steps_to_reach
from efflab.relative_lr.schedule import Preset, RelativeSchedule, relative_schedule
from efflab.shapley import experiment as shapley_experiment
from efflab.shapley import values as sh
from efflab.shapley.experiment import ShapleyBudget, estimate
from efflab.train import TrainConfig, classification_metrics, fit, language_model_loss, lr_factor, make_optimizer

from boundaries import FRACTIONS, NUMBERS, PROPERTY, SMALL_INTS, valid_or_named


class AdditiveGame:
    """v(S) = the sum of the kept players' worths: every marginal contribution of a player is its worth."""

    def __init__(self, worths):
        self.worths = torch.as_tensor(worths, dtype=torch.float64)
        self.players = len(self.worths)

    def __call__(self, coalitions):
        return coalitions.double() @ self.worths


def tiny_regression_batches(count, generator):
    return [(torch.randn(4, 3, generator=generator), torch.randint(0, 2, (4,), generator=generator))] * count


# --------------------------------------------------------------------------------------------------------------
# Property tests: the training loop
# --------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(
    lr=NUMBERS,
    weight_decay=NUMBERS,
    momentum=FRACTIONS,
    beta1=FRACTIONS,
    beta2=FRACTIONS,
    grad_clip=NUMBERS,
    optimizer=st.sampled_from(["adamw", "sgd"]),
    step=st.integers(0, 30),
)
def test_optimiser_settings(lr, weight_decay, momentum, beta1, beta2, grad_clip, optimizer, step):
    names = ("lr", "weight_decay", "momentum", "betas", "grad_clip")
    config = valid_or_named(
        lambda: TrainConfig(
            steps=30,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            betas=(beta1, beta2),
            grad_clip=grad_clip,
            optimizer=optimizer,
            warmup_steps=3,
        ),
        *names,
    )
    if config is not None:
        assert math.isfinite(config.lr) and config.lr > 0 and math.isfinite(config.weight_decay)
        assert 0 <= config.momentum < 1 and all(0 <= b < 1 for b in config.betas)
        factor = lr_factor(step, config)
        assert math.isfinite(factor) and 0 < factor <= 1
        make_optimizer(nn.Linear(2, 2), config)  # torch accepts every setting the config accepted


@PROPERTY
@given(steps=SMALL_INTS, available=st.integers(0, 6), as_iterator=st.booleans())
def test_fit_runs_its_steps_or_names_what_is_missing(steps, available, as_iterator):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = tiny_regression_batches(available, torch.Generator().manual_seed(0))
    source = iter(batches) if as_iterator else batches

    def train():
        return fit(model, source, TrainConfig(steps=steps, lr=1e-2), progress=False)

    history = valid_or_named(train, "steps", "batches")
    if history is not None:
        assert len(history) == steps <= available and history.loss.map(math.isfinite).all()


# --------------------------------------------------------------------------------------------------------------
# Property tests: learning-rate schedules of relative_lr
# --------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(
    base_lr=NUMBERS,
    steps=SMALL_INTS,
    warmup=SMALL_INTS,
    final_fraction=FRACTIONS,
    start=NUMBERS,
    end=NUMBERS,
    group=st.sampled_from(["embedding", "attention", "router", "experts", "ffn", "head", "norms"]),
)
def test_relative_schedules(base_lr, steps, warmup, final_fraction, start, end, group):
    names = ("base_lr", "steps", "warmup_steps", "final_fraction", "multiplier", "group")
    schedule = valid_or_named(
        lambda: relative_schedule(
            base_lr, steps, warmup_steps=warmup, final_fraction=final_fraction, multipliers={group: (start, end)}
        ),
        *names,
    )
    if schedule is None:
        return
    curve = schedule.curve(group)
    assert curve.shape == (schedule.steps,) and all(math.isfinite(v) and v > 0 for v in curve)
    peak, final = schedule.peak_lr(group), schedule.final_lr(group)
    assert all(v <= max(peak, final) * (1 + 1e-12) for v in curve)
    decay = curve[schedule.warmup_steps :]  # between the peak and the end
    assert all(v >= min(peak, final) * (1 - 1e-12) for v in decay)
    if peak >= final:  # from its peak the cosine only comes down
        assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(decay, decay[1:], strict=False))
    if schedule.warmup_steps:
        assert all(
            later >= earlier for earlier, later in zip(curve, curve[1 : schedule.warmup_steps], strict=False)
        )


@PROPERTY
@given(
    steps=st.lists(st.one_of(st.integers(0, 50), st.floats(allow_nan=True, allow_infinity=True)), max_size=5),
    losses=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=5),
    uniform=st.lists(st.floats(0, 10), max_size=5),
    target=NUMBERS,
    total=SMALL_INTS,
)
def test_speedups_and_steps_to_reach(steps, losses, uniform, target, total):
    names = ("steps", "losses", "target", "total_steps", "schedule_losses", "uniform_losses")
    reached = valid_or_named(lambda: steps_to_reach(steps, losses, target), *names)
    if reached is not None:
        assert min(steps) <= reached <= max(steps)
    speedup = valid_or_named(lambda: speedup_percent(steps, losses, uniform, total), *names)
    if speedup is not None:
        assert math.isfinite(speedup)


# --------------------------------------------------------------------------------------------------------------
# Property tests: pruning schedules
# --------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(
    regime=st.sampled_from(["one-shot", "constant", "geometric", "hybrid", "gradual"]),
    ratio=FRACTIONS,
    steps=SMALL_INTS,
    hybrid_start=FRACTIONS,
)
def test_pruning_schedules(regime, ratio, steps, hybrid_start):
    schedule = valid_or_named(
        lambda: make_schedule(regime, ratio, steps=steps, hybrid_start=hybrid_start),
        "regime",
        "ratio",
        "steps",
        "hybrid_start",
    )
    if schedule is None:
        return
    values = schedule.cumulative
    assert all(math.isfinite(v) and 0 <= v < 1 for v in values) and values[-1] == ratio
    assert all(later >= earlier for earlier, later in zip(values, values[1:], strict=False))
    assert all(0 <= share < 1 for share in schedule.share_of_remaining)
    assert math.isclose(sum(schedule.removed_per_step), ratio, abs_tol=1e-12)
    assert schedule.steps == (
        1 if regime == "one-shot" or (regime == "hybrid" and ratio <= hybrid_start) else steps
    )


@PROPERTY
@given(ratio=FRACTIONS, start=FRACTIONS, steps=SMALL_INTS)
def test_each_schedule_function(ratio, start, steps):
    for build in (
        lambda: one_shot_schedule(ratio),
        lambda: constant_schedule(ratio, steps),
        lambda: geometric_schedule(ratio, steps),
        lambda: hybrid_schedule(ratio, start, steps),
    ):
        schedule = valid_or_named(build, "ratio", "start", "steps")
        if schedule is not None:
            assert schedule.cumulative[-1] == ratio and len(schedule_table([schedule])) == schedule.steps


@PROPERTY
@given(ratio=FRACTIONS, total=st.one_of(st.integers(-3, 500), st.floats(0, 10), st.none()))
def test_scheduled_counts(ratio, total):
    count = valid_or_named(lambda: scheduled_count(ratio, total), "ratio", "total")
    if count is not None:
        assert isinstance(count, int) and 0 <= count <= total and (ratio == 1 or total == 0 or count < total)


# --------------------------------------------------------------------------------------------------------------
# Property tests: Shapley estimators on a cheap additive game
# --------------------------------------------------------------------------------------------------------------

FAMILIES = st.sampled_from([family for family in shapley_experiment.FAMILIES if "norm" not in family])


@PROPERTY
@given(
    worths=st.lists(st.floats(-2, 2), min_size=2, max_size=5),
    family=FAMILIES,
    setting=st.one_of(st.none(), st.integers(-2, 12), st.floats(0, 4), st.booleans()),
    seed=st.one_of(st.integers(-2, 5), st.just(2**32)),
    truncation=FRACTIONS,
)
def test_shapley_estimators(worths, family, setting, seed, truncation):
    game = AdditiveGame(worths)
    names = ("setting", "seed", "truncation")
    result = valid_or_named(
        lambda: estimate(family, game, setting=setting, seed=seed, truncation=truncation), *names
    )
    if result is None:
        return
    assert result.scores.shape == (game.players,) and torch.isfinite(result.scores).all()
    assert 0 <= result.evaluations <= 2**game.players
    if family in ("exact Shapley", "permutations"):  # every marginal is the worth: exact on an additive game
        assert torch.allclose(result.scores, game.worths, atol=1e-9)


@PROPERTY
@given(
    players=st.integers(2, 5),
    permutations=SMALL_INTS,
    samples=SMALL_INTS,
    order=SMALL_INTS,
    direction=st.sampled_from(["removing", "adding", "both"]),
    max_players=SMALL_INTS,
)
def test_shapley_estimator_functions(players, permutations, samples, order, direction, max_players):
    game = AdditiveGame(torch.arange(1.0, players + 1))
    for make, names in (
        (lambda: sh.permutation_shapley(game, permutations), ("permutations",)),
        (lambda: sh.regression_shapley(game, samples, weighted=False), ("samples",)),
        (lambda: sh.partial_shapley(game, order, direction=direction), ("order", "direction")),
        (lambda: sh.exact_shapley(game, max_players=max_players), ("max_players", "too many to enumerate")),
    ):
        result = valid_or_named(make, *names)
        if result is not None:
            assert result.scores.shape == (players,) and torch.isfinite(result.scores).all()


@PROPERTY
@given(
    entries=st.integers(0, 9),
    sizes=st.lists(st.one_of(st.integers(-1, 5), st.floats(0, 3)), max_size=3),
    removals=st.lists(st.integers(-1, 6), max_size=3),
    poison=st.sampled_from([None, math.nan]),
)
def test_coalition_tables_and_oracle_scores(entries, sizes, removals, poison):
    values = torch.linspace(0, 1, entries, dtype=torch.float64)
    table = valid_or_named(lambda: sh.CoalitionTable(values, -values), "accuracy", "loss")
    if table is None:
        return
    players = table.players
    ranking = torch.randperm(players, generator=torch.Generator().manual_seed(entries))
    scores = valid_or_named(lambda: sh.oracle_accuracy(ranking, table, sizes=sizes), "sizes")
    if scores is not None:
        assert all(0 <= v <= 1 for v in scores.values())
    coalitions = valid_or_named(lambda: sh.pruned_coalitions(ranking, removals), "removals", "ranking")
    if coalitions is not None:
        assert coalitions.shape == (len(removals), players)
        assert coalitions.sum(1).tolist() == [players - k for k in removals]
    reference = torch.arange(players, dtype=torch.float64)
    if poison is not None:
        reference[0] = poison
    tau = valid_or_named(lambda: sh.rank_correlation(ranking.double(), reference), "scores", "reference")
    if tau is not None:
        assert -1 <= tau <= 1


# --------------------------------------------------------------------------------------------------------------
# Property tests: muP multipliers and widths
# --------------------------------------------------------------------------------------------------------------

FAMILY = ModelFamily(base_width=32, n_layer=1, head_dim=16, ffn="moe", expansion=2, block_size=8)


@PROPERTY
@given(
    alpha_in=NUMBERS,
    alpha_out=NUMBERS,
    alpha_router=NUMBERS,
    width=st.one_of(st.sampled_from([32, 64, 96]), st.integers(-16, 100), st.none()),
    parameterization=st.sampled_from(["sp", "simple", "mup", "ntk"]),
)
def test_mup_multipliers_and_widths(alpha_in, alpha_out, alpha_router, width, parameterization):
    multipliers = valid_or_named(
        lambda: Multipliers(alpha_in, alpha_out, alpha_router), "alpha_in", "alpha_out", "alpha_router"
    )
    m = valid_or_named(lambda: width_multiplier(width, FAMILY.base_width), "width")
    if multipliers is None or m is None:
        return
    assert m >= 1 and math.isfinite(m)
    model = FAMILY.build(width, device="meta")
    found = valid_or_named(lambda: rules(model, FAMILY, parameterization, multipliers), "parameterization")
    if found is None:
        return
    for rule in found:
        assert math.isfinite(rule.forward_multiplier) and rule.forward_multiplier > 0
        assert math.isfinite(rule.lr_scale) and 0 < rule.lr_scale <= 1
        assert rule.init_std is None or (math.isfinite(rule.init_std) and rule.init_std > 0)


@PROPERTY
@given(
    parameterization=st.sampled_from(["sp", "mup", "ntk"]),
    head_dim=SMALL_INTS,
    base_head_dim=SMALL_INTS,
    n_layer=SMALL_INTS,
    factor=NUMBERS,
)
def test_mup_scales(parameterization, head_dim, base_head_dim, n_layer, factor):
    scale = valid_or_named(
        lambda: attention_scale(parameterization, head_dim, base_head_dim),
        "parameterization",
        "head_dim",
        "base_head_dim",
    )
    if scale is not None:
        assert math.isfinite(scale) and scale > 0
    std = valid_or_named(lambda: sp_init_std("blocks.0.attention.out.weight", "hidden", n_layer), "n_layer")
    if std is not None:
        assert 0 < std <= 0.02
    multiplier = valid_or_named(lambda: Multiplier(factor), "factor")
    if multiplier is not None:
        assert torch.equal(multiplier(torch.ones(2)), torch.full((2,), float(factor)))


@PROPERTY
@given(
    widths=st.lists(st.one_of(st.integers(-2, 300), st.floats(allow_nan=True, allow_infinity=True)), max_size=4),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
)
def test_log_log_slopes(widths, values):
    slope = valid_or_named(lambda: log_log_slope(widths, values), "widths", "values")
    if slope is not None:
        assert math.isfinite(slope) or slope == math.inf


# --------------------------------------------------------------------------------------------------------------
# Property tests: every budget's fields
# --------------------------------------------------------------------------------------------------------------

VALUES = {
    "int": st.one_of(st.integers(-3, 600), st.floats(-1, 5), st.none(), st.booleans()),
    "float": NUMBERS,
    "fraction": FRACTIONS,
    "floats": st.one_of(st.tuples(NUMBERS), st.tuples(st.floats(0.01, 0.2), st.floats(0.3, 0.97)), st.just(())),
    "ints": st.one_of(st.tuples(SMALL_INTS), st.tuples(st.integers(1, 4), st.integers(5, 9)), st.just(())),
}
BUDGETS = {
    FinetuneBudget: {
        "epochs": "float",
        "batch_size": "int",
        "lr": "float",
        "weight_decay": "float",
        "max_epochs_per_step": "int",
        "min_delta": "float",
    },
    PruningBudget: {
        "widths": "ints",
        "hidden": "int",
        "dense_epochs": "int",
        "dense_lr": "float",
        "seeds": "int",
        "unstructured_ratios": "floats",
        "structured_ratios": "floats",
        "steps": "int",
        "hybrid_start": "fraction",
        "patiences": "ints",
        "patience_ratios": "floats",
        "budget_ratio": "fraction",
        "budget_epochs": "floats",
        "latency_batch": "int",
        "latency_repeats": "int",
    },
    ShapleyBudget: {
        "widths": "ints",
        "hidden": "int",
        "train_steps": "int",
        "batch_size": "int",
        "lr": "float",
        "seeds": "int",
        "partial_orders": "ints",
        "permutations": "ints",
        "regression_samples": "ints",
        "repeats": "int",
        "truncation": "fraction",
        "matched": "int",
        "finetune_removals": "ints",
        "finetune_steps": "int",
        "finetune_lr": "float",
        "network_ratio": "fraction",
        "network_permutations": "int",
        "network_finetune_steps": "int",
        "oracle_sizes": "int",
        "chunk": "int",
    },
    RelativeLRBudget: {
        "d_model": "int",
        "n_layer": "int",
        "n_head": "int",
        "block_size": "int",
        "batch_size": "int",
        "n_experts": "int",
        "steps": "int",
        "warmup_steps": "int",
        "eval_every": "int",
        "eval_batches": "int",
        "track_every": "int",
        "seeds": "int",
        "lr_grid": "floats",
        "weight_decay": "float",
        "search_steps": "int",
        "search_passes": "int",
        "search_evaluations": "int",
        "transfer_steps": "int",
        "transfer_lr_grid": "floats",
    },
    MupBudget: {
        "base_width": "int",
        "n_layer": "int",
        "head_dim": "int",
        "ffn_ratio": "int",
        "expansion": "int",
        "granularity": "int",
        "block_size": "int",
        "coord_seeds": "int",
        "coord_steps": "int",
        "coord_lr": "float",
        "coord_batch_size": "int",
        "slope_step": "int",
        "sweep_log2_lrs": "floats",
        "sweep_seeds": "int",
        "sweep_steps": "int",
        "sweep_batch_size": "int",
        "warmup_steps": "int",
        "eval_batches": "int",
        "fixed_width": "int",
        "expert_counts": "ints",
        "granularities": "ints",
        "moe_sweep_seeds": "int",
    },
}
# Fields whose checks compare them with another field: a ValueError may name either.
RELATED = {
    "steps": ("warmup_steps", "eval_every", "transfer_steps", "slope_step"),
    "d_model": ("n_head",),
    "n_head": ("d_model",),
    "block_size": ("corpus_bytes", "blocks"),
    "widths": ("exact_layers", "finetune_removals", "too many to enumerate", "finetune_layer"),
    "hidden": ("exact_layers",),
    "unstructured_ratios": ("patience_ratios", "budget_ratio"),
    "base_width": ("coord_widths", "sweep_widths", "fixed_width", "head_dim", "granularity"),
    "head_dim": ("base_width", "coord_widths", "sweep_widths", "fixed_width"),
    "ffn_ratio": ("base_width", "fixed_width", "granularity"),
    "granularity": ("base_width", "coord_widths", "sweep_widths", "fixed_width"),
    "coord_steps": ("slope_step",),
    "sweep_steps": ("warmup_steps",),
    "granularities": ("fixed_width",),
    "transfer_steps": ("transfer_d_model", "transfer_n_layer", "transfer_n_head", "transfer_lr_grid"),
}


@pytest.mark.parametrize("kind", list(BUDGETS), ids=lambda kind: kind.__name__)
@PROPERTY
@given(data=st.data())
def test_budget_fields(kind, data):
    name = data.draw(st.sampled_from(list(BUDGETS[kind])), label="field")
    value = data.draw(VALUES[BUDGETS[kind][name]], label=name)
    base = kind() if kind is FinetuneBudget else kind.quick()
    related = RELATED.get(name, ()) + RELATED.get(name.removeprefix("coord_").removeprefix("sweep_"), ())
    budget = valid_or_named(lambda: replace(base, **{name: value}), name, *related)
    if budget is not None:
        assert getattr(budget, name) == value  # an explicit value is kept, never swapped for a default
        for number in value if isinstance(value, tuple) else (value,):
            assert not isinstance(number, bool) and number is not None and math.isfinite(number)


# --------------------------------------------------------------------------------------------------------------
# Targeted: learning rates, epochs, steps, weight decay, momentum and betas
# --------------------------------------------------------------------------------------------------------------

INF, NAN = math.inf, math.nan
SCHEDULE = RelativeSchedule(1e-3, 10, 2, 0.1)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: TrainConfig(steps=5, lr=INF), "lr"),
        (lambda: TrainConfig(steps=INF), "steps"),
        (lambda: TrainConfig(steps=5, weight_decay=INF), "weight_decay"),
        (lambda: TrainConfig(steps=5, momentum=INF), "momentum"),
        (lambda: TrainConfig(steps=5, momentum=1.5), "momentum"),
        (lambda: TrainConfig(steps=5, betas=(INF, 0.95)), "betas"),
        (lambda: TrainConfig(steps=5, betas=(0.9, 1.0)), "betas"),
        (lambda: TrainConfig(steps=5, betas=(0.9,)), "betas"),
        (lambda: TrainConfig(steps=5, betas=(0.9, NAN)), "betas"),
        (lambda: FinetuneBudget(lr=INF), "lr"),
        (lambda: FinetuneBudget(epochs=INF), "epochs"),
        (lambda: FinetuneBudget(weight_decay=INF), "weight_decay"),
        (lambda: relative_schedule(INF, 10, warmup_steps=2, final_fraction=0.1), "base_lr"),
        (lambda: replace(RelativeLRBudget(), lr_grid=(1e-3, INF)), "lr_grid"),
        (lambda: replace(RelativeLRBudget(), lr_grid=(True,)), "lr_grid"),
        (lambda: replace(RelativeLRBudget(), weight_decay=INF), "weight_decay"),
        (lambda: replace(PruningBudget.quick(), dense_lr=INF), "dense_lr"),
        (lambda: replace(PruningBudget.quick(), budget_epochs=(2, INF)), "budget_epochs"),
        (lambda: replace(ShapleyBudget.quick(), lr=INF), "lr"),
        (lambda: replace(ShapleyBudget.quick(), finetune_lr=INF), "finetune_lr"),
        (lambda: replace(MupBudget.quick(), coord_lr=INF), "coord_lr"),
        (lambda: SweepTask(FAMILY, 32, "mup", INF, 0, steps=5, batch_size=2, block_size=8), "lr"),
        (lambda: CoordinateCheckTask(FAMILY, 32, "mup", 0, lr=INF), "lr"),
        (lambda: DenseTask(0, CNNConfig(), INF, 1e-3, 8), "epochs"),
        (lambda: DenseTask(0, CNNConfig(), 2, INF, 8), "lr"),
        (lambda: TrainTask("dense", 16, 1, 2, 8, 2, 4, SCHEDULE, 0, weight_decay=INF), "weight_decay"),
        (lambda: Preset("mine", base_lr=INF), "base_lr"),
        (lambda: Preset("mine", final_fraction=2.0), "final_fraction"),
    ],
)
def test_infinite_or_out_of_range_rates_epochs_and_optimiser_settings(make, named):
    with pytest.raises(ValueError, match=named):
        make()


# --------------------------------------------------------------------------------------------------------------
# Targeted: the training loop and fine-tuning
# --------------------------------------------------------------------------------------------------------------


def _batches(count):
    return tiny_regression_batches(count, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: fit(nn.Linear(3, 2), _batches(2), TrainConfig(steps=3), progress=False), "batches"),
        (lambda: fit(nn.Linear(3, 2), iter(_batches(2)), TrainConfig(steps=3), progress=False), "batches"),
        (lambda: fit(nn.Linear(3, 2), 42, TrainConfig(steps=3), progress=False), "batches"),
        (lambda: fit(nn.Linear(3, 2), lambda: torch.zeros(4, 3), TrainConfig(steps=1), progress=False), "batches"),
        (lambda: fit(nn.ReLU(), _batches(3), TrainConfig(steps=3), progress=False), "model"),
        (lambda: fit(nn.Linear(3, 2), _batches(3), {"steps": 3}, progress=False), "config"),
        (lambda: make_optimizer(nn.Linear(3, 2), TrainConfig(steps=1), [{"lr_scale": 1.0}]), "param_groups"),
        (
            lambda: make_optimizer(nn.Linear(3, 2), TrainConfig(steps=1), [{"params": [], "lr_scale": INF}]),
            "lr_scale",
        ),
        (lambda: lr_factor(-1, TrainConfig(steps=5)), "step"),
        (lambda: lr_factor(2.5, TrainConfig(steps=5)), "step"),
        (lambda: classification_metrics(nn.Linear(3, 2), torch.zeros(0, 3), torch.zeros(0).long()), "x and y"),
        (lambda: classification_metrics(nn.Linear(3, 2), torch.zeros(2, 3), torch.tensor([0, 2])), "y"),
        (lambda: classification_metrics(nn.Linear(3, 2), torch.zeros(2, 3), torch.tensor([0, -1])), "y"),
        (lambda: classification_metrics(nn.Linear(3, 2), torch.zeros(2, 3), torch.tensor([0.0, 1.0])), "y"),
        (lambda: scheduled_count(NAN, 10), "ratio"),
        (lambda: scheduled_count(INF, 10), "ratio"),
        (lambda: scheduled_count(0.5, -1), "total"),
    ],
)
def test_training_loop_inputs(make, named):
    with pytest.raises(ValueError, match=named):
        make()


def test_language_model_loss_honours_an_explicit_block_size(corpus):
    from efflab.models.gpt import GPTConfig, TinyLM

    model = TinyLM(GPTConfig(n_layer=1, n_head=1, d_model=8, block_size=8))
    with pytest.raises(ValueError, match="block_size"):  # 0 used to be replaced by the model's context
        language_model_loss(model, corpus, block_size=0, batches=1, batch_size=2)
    with pytest.raises(ValueError, match="seed"):
        language_model_loss(model, corpus, batches=1, batch_size=2, seed=-1)


@pytest.fixture(scope="module")
def digits():
    return load_digits(0)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"budget": None}, "budget"),
        ({"val": Split(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))}, "val"),
        ({"train": "digits"}, "train"),
        ({"seed": -1}, "seed"),
    ],
)
def test_finetune_inputs(digits, changes, named):
    arguments = {"train": digits.train, "val": digits.val, "budget": FinetuneBudget(), "seed": 0, **changes}
    with pytest.raises(ValueError, match=named):
        finetune(CNN(CNNConfig(widths=(2,), hidden=4)), steps=1, **arguments)


# --------------------------------------------------------------------------------------------------------------
# Targeted: pruning schedules, pruners, budget and tasks
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: make_schedule("hybrid", 0.9, hybrid_start=1.2), "hybrid_start"),
        (lambda: make_schedule("hybrid", 0.9, hybrid_start=NAN), "hybrid_start"),
        (lambda: make_schedule("one-shot", 0.9, hybrid_start=1.2), "hybrid_start"),
        (lambda: make_schedule("one-shot", 0.5, steps=0), "steps"),
        (lambda: make_schedule("geometric", NAN), "ratio"),
        (lambda: make_schedule("constant", 0.5, steps=2.5), "steps"),
        (lambda: constant_schedule(0.5, True), "steps"),
        (lambda: schedule_table([None]), "schedules"),
        (lambda: replace(PruningBudget.quick(), widths=(0, 32)), "widths"),
        (lambda: replace(PruningBudget.quick(), widths=()), "widths"),
        (lambda: replace(PruningBudget.quick(), latency_repeats=0), "latency_repeats"),
        (lambda: replace(PruningBudget.quick(), latency_batch=INF), "latency_batch"),
        (lambda: replace(PruningBudget.quick(), main_criteria=(("structured", "l2"),)), "main_criteria"),
        (lambda: replace(PruningBudget.quick(), finetune={"epochs": 4}), "finetune"),
        (lambda: replace(PruningBudget.quick(), budget_epochs=()), "budget_epochs"),
        (lambda: replace(PruningBudget.quick(), budget_regimes=()), "budget_regimes"),
        (lambda: replace(PruningBudget.quick(), seeds=0), "seeds"),
        (lambda: DenseTask(-1, CNNConfig(), 2, 1e-3, 8), "seed"),
        (lambda: DenseTask(0, "cnn", 2, 1e-3, 8), "model"),
        (lambda: crossover_ratio([], [], []), "ratios"),
        (lambda: crossover_ratio([0.5, 0.9], [0.9, NAN], [0.8, 0.9]), "early"),
        (lambda: crossover_ratio([0.9, 0.5], [0.9, 0.8], [0.8, 0.9]), "ratios"),
        (lambda: verdict([0.1, -0.1], NAN), "tolerance"),
        (lambda: verdict([0.1, NAN], 0.01), "gaps"),
        (lambda: compare_latency({"a": nn.Linear(2, 2)}, torch.zeros(1, 2), repeats=0), "repeats"),
        (lambda: compare_latency({"a": nn.Linear(2, 2)}, [[0.0, 0.0]]), "inputs"),
        (lambda: StructuredPruner(CNN(CNNConfig(widths=(2,), hidden=4)), example_inputs=[1]), "example_inputs"),
    ],
)
def test_pruning_inputs(make, named):
    with pytest.raises(ValueError, match=named):
        make()


def _prune_task(**changes):
    values = dict(
        seed=0,
        granularity="unstructured",
        criterion="global-magnitude",
        regime="one-shot",
        ratio=0.5,
        kind="main",
        epochs=2.0,
        patience=None,
        steps=5,
        hybrid_start=0.7,
        finetune=FinetuneBudget(),
        model=CNNConfig(),
        dense_state={},
    )
    return PruneTask(**{**values, **changes})


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"kind": "main", "patience": 2}, "patience"),
        ({"kind": "patience", "patience": None}, "patience"),
        ({"kind": "twin"}, "kind"),
        ({"ratio": 1.0}, "ratio"),
        ({"epochs": INF}, "epochs"),
        ({"hybrid_start": 1.2}, "hybrid_start"),
        ({"criterion": "l2"}, "criterion"),
        ({"finetune": None}, "finetune"),
        ({"steps": 1}, "steps"),
    ],
)
def test_prune_tasks_are_checked_at_construction(changes, named):
    _prune_task()  # the unchanged task is valid
    with pytest.raises(ValueError, match=named):
        _prune_task(**changes)


def test_pruning_run_arguments_are_checked_before_any_work(digits):
    model = CNN(CNNConfig(widths=(2,), hidden=4))
    schedule = one_shot_schedule(0.5)
    with pytest.raises(ValueError, match="budget"):  # used to fall through `budget or FinetuneBudget()`
        prune_and_finetune(model, digits, schedule, budget="fast")
    with pytest.raises(ValueError, match="schedule"):
        prune_and_finetune(model, digits, 0.5)
    with pytest.raises(ValueError, match="criterion"):
        accuracy_without_finetuning(model, digits, [0.5], criterion="l1")


# --------------------------------------------------------------------------------------------------------------
# Targeted: Shapley values and the Shapley study
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    return CNN(CNNConfig(widths=(3, 4), hidden=5)).eval()


def _images(count=6):
    return torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(0))


GAME = AdditiveGame([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: estimate("partial Shapley", GAME), "setting"),  # used to blame order=None
        (lambda: estimate("partial Shapley", GAME, setting=9), "setting"),
        (lambda: estimate("permutations", GAME, setting=0), "setting"),
        (lambda: estimate("kernel regression", GAME, setting=2.5), "setting"),
        (lambda: estimate("exact Shapley", GAME, setting=3), "setting"),
        (lambda: estimate("truncated permutations", GAME, setting=2, truncation=NAN), "truncation"),
        (lambda: sh.exact_shapley(GAME, max_players=0), "max_players"),
        (lambda: sh.exact_shapley(GAME, max_players=99), "max_players"),
        (lambda: sh.TabulatedGame(torch.zeros(0)), "values"),
        (lambda: sh.TabulatedGame(torch.zeros(1)), "values"),
        (lambda: sh.CoalitionTable(torch.zeros(3), torch.zeros(3)), "accuracy"),
        (lambda: sh.CoalitionTable(torch.zeros(4), torch.zeros(8)), "loss"),
        (lambda: sh.shapley_from_table(torch.zeros(6)), "values"),
        (lambda: sh.oracle_sets(sh.CoalitionTable(torch.zeros(8), torch.zeros(8)), []), "sizes"),
        (lambda: sh.random_agreement(4, [0]), "sizes"),
        (lambda: sh.rank_correlation(torch.tensor([0.0, NAN]), torch.tensor([0.0, 1.0])), "scores"),
        (lambda: sh.pruned_coalitions(torch.tensor([0.0, 1.0]), [1]), "ranking"),
        (lambda: sh.pruned_coalitions(torch.tensor([0, 0]), [1]), "ranking"),
        (lambda: sh.pruned_coalitions(torch.tensor([1, 0]), [3]), "removals"),
        (lambda: sh.oracle_agreement(torch.tensor([0, 1, 2]), torch.tensor([[True, False]])), "ranking"),
        (lambda: sh.coalition_index(torch.tensor([1, 0])), "coalitions"),
        (lambda: sh.shapley_kernel_weights(torch.tensor([[1, 0]])), "coalitions"),
        (lambda: sh.empty_and_full(0), "players"),
        (
            lambda: sh.solve_shapley_regression(
                torch.tensor([[True, False]]), torch.tensor([0.5]), empty=NAN, full=1.0
            ),
            "empty",
        ),
        (
            lambda: sh.solve_shapley_regression(
                torch.tensor([[True, False]]), torch.tensor([0.5, 0.1]), empty=0, full=1
            ),
            "values",
        ),
    ],
)
def test_shapley_inputs(make, named):
    with pytest.raises(ValueError, match=named):
        make()


@pytest.mark.parametrize(
    ("inputs", "labels", "named"),
    [
        (_images(), torch.tensor([0, 1, 2, 3, 4, 10]), "labels"),
        (_images(), torch.tensor([0, 1, 2, 3, 4, -1]), "labels"),
        (_images(), torch.zeros(6), "labels"),
        (_images().masked_fill(torch.arange(64).view(1, 1, 8, 8) == 0, math.nan), torch.zeros(6).long(), "inputs"),
        (_images().long(), torch.zeros(6).long(), "inputs"),
        ([[0.0]], torch.zeros(1).long(), "inputs"),
    ],
)
def test_channel_games_check_images_and_labels(small_cnn, inputs, labels, named):
    with pytest.raises(ValueError, match=named):
        sh.ChannelGame(small_cnn, "features.0.conv", inputs, labels)


def test_norms_and_channel_removal_name_the_layer_and_channels(small_cnn):
    with pytest.raises(ValueError, match="layer"):
        sh.norm_scores(small_cnn, "features.9.conv")
    with pytest.raises(ValueError, match="channels"):  # 1.5 used to be truncated to channel 1
        sh.remove_channels(small_cnn, "features.0.conv", [1.5], _images(2))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"repeats": 0}, "repeats"),
        ({"truncation": NAN}, "truncation"),
        ({"matched": 0}, "matched"),
        ({"permutations": (0, 2)}, "permutations"),
        ({"widths": (1, 16)}, "exact_layers"),
        ({"finetune_removals": (0,)}, "finetune_removals"),
        ({"network_ratio": 1.0}, "network_ratio"),
        ({"oracle_sizes": 0}, "oracle_sizes"),
        ({"chunk": INF}, "chunk"),
    ],
)
def test_shapley_budget_fields(changes, named):
    with pytest.raises(ValueError, match=named):
        replace(ShapleyBudget.quick(), **changes)


def test_shapley_budget_queries_name_their_arguments():
    budget = ShapleyBudget.quick()
    with pytest.raises(ValueError, match="layer"):
        budget.width("features.5.conv")
    with pytest.raises(ValueError, match="family"):
        budget.matched_setting("taylor", 12)
    with pytest.raises(ValueError, match="players"):
        budget.settings("permutations", 0)


# --------------------------------------------------------------------------------------------------------------
# Targeted: relative learning rates
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: relative_schedule(1e-3, 10, warmup_steps=2, final_fraction=0.1, multipliers=[]), "multipliers"),
        (lambda: steps_to_reach([0, 1], [1.0, 0.5], None), "target"),
        (lambda: steps_to_reach([0, None], [1.0, 0.5], 0.7), "steps"),
        (lambda: steps_to_reach([0, 1], [1.0, NAN], 0.7), "losses"),
        (lambda: steps_to_reach([1, 0], [1.0, 0.5], 0.7), "steps"),
        (lambda: speedup_percent([0, 1], [1.0, 0.5], [], 10), "uniform_losses"),
        (lambda: speedup_percent([0, 1], [1.0], [1.0, 0.5], 10), "schedule_losses"),
        (lambda: group_of(None), "name"),
        (lambda: group_of("head.weight", rules=[("heads", r"^head\.")]), "group"),
        (lambda: TrainTask("dense", 16, 1, 2, 8, 2, 4, SCHEDULE, -1), "seed"),
        (lambda: TrainTask("dense", 16, 1, 2, 8, 2, 4, None, 0), "schedule"),
        (lambda: TrainTask("dense", 16, 1, 3, 8, 2, 4, SCHEDULE, 0), "n_head"),
        (lambda: TrainTask("dense", 16, 1, 2, 8, 2, 0, SCHEDULE, 0), "batch_size"),
        (lambda: TrainTask("dense", 16, 1, 2, 8, 2, 4, SCHEDULE, 0, track_every=-1), "track_every"),
    ],
)
def test_relative_lr_inputs(make, named):
    with pytest.raises(ValueError, match=named):
        make()


def _relative_result():
    outcome = {"eval_steps": [5, 10], "val_loss": [2.0, 1.5]}
    runs = {("dense", "uniform", 0): outcome, ("dense", "paper", 0): outcome}
    return rel_experiment.Result(
        budget=RelativeLRBudget(),
        seeds=(0,),
        tuning_seed=1000,
        sweep={},
        base_lr={"dense": 1e-3},
        schedules={("dense", "uniform"): SCHEDULE},
        runs=runs,
        searches={},
        ablation={},
    )


def test_relative_lr_result_honours_explicit_steps_and_checks_the_live_rate():
    result = _relative_result()
    # the schedule's curve reaches the uniform run's final loss at step 10 of the budget's 120
    assert result.speedups("dense", "paper") == [pytest.approx(100 * (1 - 10 / RelativeLRBudget().steps))]
    assert result.speedups("dense", "paper", steps=40) == [pytest.approx(75.0)]
    with pytest.raises(ValueError, match="steps"):  # 0 used to be replaced by the budget's steps
        result.speedups("dense", "paper", steps=0)
    with pytest.raises(ValueError, match="base_lr"):
        rel_experiment.live_run(result, "dense", {}, "fast")
    with pytest.raises(ValueError, match="run"):
        rel_experiment.run_experiment(None, RelativeLRBudget())


# --------------------------------------------------------------------------------------------------------------
# Targeted: muP
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: ModelFamily(balance_loss_weight=NAN), "balance_loss_weight"),
        (lambda: ModelFamily(z_loss_weight=-1.0), "z_loss_weight"),
        (lambda: Multiplier(0.0), "factor"),
        (lambda: Multiplier(INF), "factor"),
        (lambda: attention_scale("mup", 0, 16), "head_dim"),
        (lambda: attention_scale("mup", 16, 0), "base_head_dim"),
        (lambda: sp_init_std("blocks.0.ffn.down.weight", "hidden", 0), "n_layer"),
        (lambda: sp_init_std("blocks.0.ffn.down.weight", "matrix", 1), "kind"),
        (lambda: parameterize(None, 32, "mup"), "family"),
        (lambda: parameterize(FAMILY, 32, "mup", multipliers=0), "multipliers"),
        (lambda: rules(FAMILY.build(32, device="meta"), FAMILY, "mup", multipliers={}), "multipliers"),
        (lambda: log_log_slope([32, 64], [1.0]), "values"),
        (lambda: log_log_slope([0, 64], [1.0, 1.0]), "widths"),
        (lambda: log_log_slope([64, 64], [1.0, 1.0]), "widths"),
        (lambda: replace(MupBudget.quick(), sweep_log2_lrs=(-9, -6, 2000)), "sweep_log2_lrs"),
        (lambda: replace(MupBudget.quick(), sweep_log2_lrs=(-9, -6, True)), "sweep_log2_lrs"),
        (lambda: SweepTask(None, 32, "mup", 1e-3, 0, steps=5, batch_size=2, block_size=8), "family"),
        (
            lambda: SweepTask(FAMILY, 32, "mup", 1e-3, 0, steps=5, batch_size=2, block_size=8, max_bytes=0),
            "max_bytes",
        ),
        (
            lambda: SweepTask(FAMILY, 32, "mup", 1e-3, 0, steps=5, batch_size=2, block_size=8, multipliers=1),
            "multipliers",
        ),
        (lambda: CoordinateCheckTask(FAMILY, 32, "mup", 0, multipliers=(1.0, 1.0, 1.0)), "multipliers"),
        (lambda: coordinate_tasks(MupBudget.quick(), (0,), "cpu", widths=()), "widths"),
        (lambda: coordinate_tasks(MupBudget.quick(), (0,), "cpu", multipliers=0), "multipliers"),
    ],
)
def test_mup_inputs(make, named):
    with pytest.raises(ValueError, match=named):
        make()


def test_mup_result_honours_an_explicit_step():
    rows = [
        dict(parameterization="mup", width=w, seed=0, step=s, activation="embedding", group="hidden", l1=1.0)
        for w in (32, 64)
        for s in (1, 2)
    ]
    result = mup_experiment.Result(
        budget=MupBudget.quick(),
        seeds=(0,),
        coordinates=pd.DataFrame(rows),
        width_sweep=pd.DataFrame(),
        expert_sweep=pd.DataFrame(),
        granularity_sweep=pd.DataFrame(),
    )
    assert list(result.slopes(2).slope) == [0.0]
    with pytest.raises(ValueError, match="step=0"):  # 0 used to be replaced by the budget's slope step
        result.slopes(0)
    with pytest.raises(ValueError, match="multipliers"):
        result.coordinate_table("mup", multipliers=0)
    with pytest.raises(ValueError, match="run"):
        mup_experiment.run_experiment(None, MupBudget.quick())
    with pytest.raises(ValueError, match="run"):
        pruning_experiment.run_experiment(None, PruningBudget.quick())
