import copy
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from efflab.data.digits import infinite_batches, load_digits
from efflab.finetune import FinetuneBudget, finetune
from efflab.models.cnn import CNN, CNNConfig
from efflab.pruning import experiment
from efflab.pruning import pruners as pruning
from efflab.pruning.pruners import (
    Schedule,
    SparsityMismatch,
    StructuredPruner,
    UnstructuredPruner,
    constant_schedule,
    geometric_schedule,
    hybrid_schedule,
    make_schedule,
    one_shot_schedule,
)
from efflab.runtime import torch_threads
from efflab.train import TrainConfig, fit

RATIOS = (0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.98)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread, and threads fight over shared cores."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_digits(0)


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained for a few seconds: accurate enough that pruning damage shows."""
    torch.manual_seed(0)
    model = CNN(CNNConfig(widths=(8, 16), hidden=32))
    fit(model, infinite_batches(digits.train, 64, seed=0), TrainConfig(steps=120, lr=5e-3), progress=False)
    return model


def rows_of(table, **where):
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        mask &= (table[column] == value).to_numpy()
    return table[mask]


def small_model(seed=0):
    torch.manual_seed(seed)
    return CNN(CNNConfig(widths=(4, 8), hidden=16))


# --------------------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("steps", [1, 2, 5, 10])
def test_constant_steps_are_equal_fractions_of_the_original_and_sum_to_the_ratio(ratio, steps):
    schedule = constant_schedule(ratio, steps)
    assert schedule.steps == steps
    assert math.isclose(sum(schedule.removed_per_step), ratio, abs_tol=1e-12)
    assert np.allclose(schedule.removed_per_step, ratio / steps)
    assert schedule.cumulative[-1] == ratio


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("steps", [1, 3, 5, 10])
def test_geometric_steps_remove_a_constant_share_of_the_survivors_and_compound_to_the_ratio(ratio, steps):
    schedule = geometric_schedule(ratio, steps)
    shares = np.array(schedule.share_of_remaining)
    assert np.allclose(shares, 1 - (1 - ratio) ** (1 / steps))
    assert math.isclose(1 - np.prod(1 - shares), ratio, abs_tol=1e-9)
    assert schedule.cumulative[-1] == ratio


@pytest.mark.parametrize("ratio", [0.75, 0.9, 0.98])
def test_hybrid_jumps_to_its_start_then_goes_geometric(ratio):
    schedule = hybrid_schedule(ratio, 0.7, 5)
    assert schedule.steps == 5
    assert schedule.cumulative[0] == 0.7
    assert schedule.cumulative[-1] == ratio
    assert np.allclose(schedule.share_of_remaining[1:], schedule.share_of_remaining[1])


def test_hybrid_at_or_below_its_start_is_one_shot():
    assert hybrid_schedule(0.5, 0.7, 5).cumulative == (0.5,)
    assert hybrid_schedule(0.7, 0.7, 5).cumulative == (0.7,)


@pytest.mark.parametrize("regime", pruning.REGIMES)
@pytest.mark.parametrize("ratio", RATIOS)
def test_every_schedule_is_monotone_and_ends_on_target(regime, ratio):
    schedule = make_schedule(regime, ratio, steps=5, hybrid_start=0.6)
    values = np.array(schedule.cumulative)
    assert (np.diff(values) >= 0).all() and (values <= ratio).all() and values[-1] == ratio
    assert all(removed >= 0 for removed in schedule.removed_per_step)
    if regime == "one-shot":
        assert schedule.cumulative == (ratio,)


def test_schedule_table_has_one_row_per_step():
    table = pruning.schedule_table([one_shot_schedule(0.9), geometric_schedule(0.9, 4)])
    assert len(table) == 5
    assert table.groupby("regime")["removed (of original)"].sum().round(12).tolist() == [0.9, 0.9]


# --------------------------------------------------------------------------------------------------------------
# Bad inputs raise ValueErrors that name the parameter
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, True, "0.5", None, float("nan")])
def test_ratio_outside_zero_one_raises(ratio):
    for build in (one_shot_schedule, lambda r: constant_schedule(r, 5), lambda r: geometric_schedule(r, 5)):
        with pytest.raises(ValueError, match="ratio"):
            build(ratio)


def test_bad_schedules_and_budgets_raise():
    with pytest.raises(ValueError, match="steps"):
        constant_schedule(0.5, 0)
    with pytest.raises(ValueError, match="steps"):
        geometric_schedule(0.5, 0)
    with pytest.raises(ValueError, match="start"):
        hybrid_schedule(0.9, 1.0, 5)
    with pytest.raises(ValueError, match="steps"):
        hybrid_schedule(0.9, 0.5, 1)
    with pytest.raises(ValueError, match="regime"):
        make_schedule("gradual", 0.5)
    with pytest.raises(ValueError, match="non-decreasing"):
        Schedule("custom", 0.5, (0.6, 0.5))
    with pytest.raises(ValueError, match="end"):
        Schedule("custom", 0.5, (0.2, 0.4))
    with pytest.raises(ValueError, match="epochs"):
        FinetuneBudget(epochs=0)


def test_negative_patience_and_unknown_criteria_raise(digits):
    model = small_model()
    with pytest.raises(ValueError, match="patience"):
        pruning.prune_and_finetune(model, digits, one_shot_schedule(0.5), patience=-1)
    with pytest.raises(ValueError, match="patience"):
        finetune(model, digits.train, digits.val, FinetuneBudget(), patience=-2)
    with pytest.raises(ValueError, match="criterion"):
        UnstructuredPruner(model, "taylor")
    with pytest.raises(ValueError, match="criterion"):
        pruning.make_pruner(model, "structured", "global-magnitude", example_inputs=digits.train.x[:2])
    with pytest.raises(ValueError, match="granularity"):
        pruning.make_pruner(model, "semi-structured", "l2")
    with pytest.raises(ValueError, match="example_inputs"):
        pruning.make_pruner(model, "structured", "l2")


def test_pruners_refuse_to_unprune():
    pruner = UnstructuredPruner(small_model())
    pruner.prune_to(0.5)
    with pytest.raises(ValueError, match="already pruned"):
        pruner.prune_to(0.3)
    with pytest.raises(ValueError, match="ratio"):
        pruner.prune_to(1.0)


# --------------------------------------------------------------------------------------------------------------
# The sparsity reached is the scheduled one, exactly
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", pruning.UNSTRUCTURED_CRITERIA)
@pytest.mark.parametrize("regime", ["constant", "geometric", "hybrid"])
def test_unstructured_sparsity_equals_the_schedule_after_every_step(criterion, regime):
    model = small_model()
    pruner = UnstructuredPruner(model, criterion, seed=3)
    sizes = pruner.sizes
    previous_masks = None
    for ratio in make_schedule(regime, 0.93, steps=5).cumulative:
        table = pruner.prune_to(ratio)
        if criterion == "layer-magnitude":
            assert table.pruned.tolist() == [math.floor(ratio * n + 1e-9) for n in sizes]
        else:
            assert table.pruned.sum() == math.floor(ratio * sum(sizes) + 1e-9)
        assert pruner.pruned_units() == pruner.scheduled_units(ratio)
        masks = [module.weight_mask.clone() for _, module in pruner.layers]
        if previous_masks is not None:  # nested: nothing pruned earlier comes back
            assert all(((old == 0) <= (new == 0)).all() for old, new in zip(previous_masks, masks, strict=True))
        previous_masks = masks


def test_global_magnitude_removes_the_smallest_weights_across_layers():
    model = small_model()
    weights = torch.cat([m.weight.detach().abs().flatten() for _, m in pruning.prunable_layers(model)])
    pruner = UnstructuredPruner(model, "global-magnitude")
    pruner.prune_to(0.6)
    masks = torch.cat([m.weight_mask.flatten() for _, m in pruner.layers])
    assert weights[masks == 0].max() <= weights[masks == 1].min()


def test_a_wrong_mask_is_caught():
    model = small_model()
    pruner = UnstructuredPruner(model)
    pruner.prune_to(0.5)
    pruner.layers[0][1].weight_mask[0].fill_(1.0)  # un-prune some weights behind the pruner's back
    with pytest.raises(SparsityMismatch):
        pruner.check(0.5)


@pytest.mark.parametrize("criterion", pruning.STRUCTURED_CRITERIA)
def test_structured_pruning_removes_the_scheduled_channels_and_shrinks_the_model(criterion, digits):
    model = small_model()
    dense_parameters = pruning.count_parameters(model)
    example = digits.train.x[:2]
    pruner = StructuredPruner(model, criterion, example_inputs=example)
    for ratio in geometric_schedule(0.8, 3).cumulative:
        pruner.prune_to(ratio)
        widths = pruning.structured_widths(model)
        assert widths == {name: w - math.floor(ratio * w + 1e-9) for name, w in pruner.original.items()}
        assert pruner.pruned_units() == pruner.scheduled_units(ratio)
    assert model.features[0].conv.out_channels == 4 - 3 and model.classifier.hidden.out_features == 16 - 12
    assert model.classifier.out.out_features == 10  # the class scores are never pruned
    assert pruning.count_parameters(model) < dense_parameters
    logits = model(digits.test.x[:5])
    assert logits.shape == (5, 10)
    logits.sum().backward()  # still an ordinary trainable network


def test_a_wrong_width_is_caught(digits):
    model = small_model()
    pruner = StructuredPruner(model, "l2", example_inputs=digits.train.x[:2])
    pruner.prune_to(0.5)
    with pytest.raises(SparsityMismatch):
        pruner.check(0.75)


# --------------------------------------------------------------------------------------------------------------
# Masks persist through fine-tuning; fine-tuning keeps its budget
# --------------------------------------------------------------------------------------------------------------


def test_masked_weights_stay_exactly_zero_after_optimiser_steps(digits):
    model = small_model()
    pruner = UnstructuredPruner(model)
    pruner.prune_to(0.7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    batches = infinite_batches(digits.train, 32, seed=0)
    for _ in range(5):
        x, y = next(batches)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model(digits.train.x[:1])  # refresh the computed weight
    for _, module in pruner.layers:
        pruned = module.weight_mask == 0
        assert torch.count_nonzero(module.weight[pruned]) == 0
        assert torch.count_nonzero(pruning.effective_weight(module)[pruned]) == 0
        assert torch.count_nonzero(module.weight_orig[pruned]) > 0  # the optimiser did move what lies beneath
    pruner.check(0.7)


def test_fixed_budget_runs_spend_exactly_their_budget_and_keep_their_masks(digits):
    budget = FinetuneBudget(epochs=2, batch_size=128)
    for schedule in (one_shot_schedule(0.8), geometric_schedule(0.8, 3)):
        run = pruning.prune_and_finetune(small_model(), digits, schedule, budget=budget)
        assert run.epochs == pytest.approx(2.0)
        assert run.steps.epochs.iloc[-1] == pytest.approx(2.0)
        assert (run.steps.pruned_units == run.steps.scheduled_units).all()
        assert run.nonzero_parameters < run.parameters
    assert (
        sum(pruning.split_steps(17, 5)) == 17
        and max(pruning.split_steps(17, 5)) - min(pruning.split_steps(17, 5)) <= 1
    )


def test_patience_stops_on_its_own_and_reports_what_it_spent(digits):
    budget = FinetuneBudget(max_epochs_per_step=3)
    run = pruning.prune_and_finetune(small_model(), digits, geometric_schedule(0.8, 2), budget=budget, patience=0)
    assert run.epochs == pytest.approx(2.0)  # patience 0: one epoch per step
    run = pruning.prune_and_finetune(small_model(), digits, geometric_schedule(0.8, 2), budget=budget, patience=5)
    assert 2.0 <= run.epochs <= 6.0 + 1e-9  # capped at 3 epochs per step


def test_finetuning_never_ends_worse_than_it_started_on_validation(trained, digits):
    model = copy.deepcopy(trained)
    UnstructuredPruner(model).prune_to(0.9)
    before = pruning.run_evaluation(model, lambda m: pruning.classification_metrics(m, digits.val.x, digits.val.y))
    phase = finetune(model, digits.train, digits.val, FinetuneBudget(lr=0.5), steps=9)  # a harmful lr
    assert phase.val_accuracy >= before["val_accuracy"]


def test_same_seed_same_run(digits):
    runs = [
        pruning.prune_and_finetune(
            small_model(1), digits, geometric_schedule(0.8, 2), criterion="random", budget=FinetuneBudget(epochs=1)
        )
        for _ in range(2)
    ]
    assert runs[0].test_accuracy == runs[1].test_accuracy
    assert runs[0].steps.equals(runs[1].steps)


# --------------------------------------------------------------------------------------------------------------
# Without fine-tuning, more magnitude pruning never helps (nested masks)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["global-magnitude", "layer-magnitude"])
def test_accuracy_without_finetuning_does_not_rise_with_the_ratio(trained, digits, criterion):
    ratios = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    table = pruning.accuracy_without_finetuning(trained, digits, ratios, criterion=criterion)
    accuracy = table.test_accuracy.to_numpy()
    assert accuracy[0] > 0.8  # the model did learn
    # While the network still works, each further cut can only cost (up to a few test images of noise); once it
    # has collapsed towards chance, its outputs are dominated by biases and the order of near-chance accuracies
    # carries no meaning, so only the end is compared with the start there.
    working = accuracy[: ratios.index(0.8) + 1]
    assert (np.diff(working) <= 0.02).all()
    assert accuracy[-1] < accuracy[0]
    with pytest.raises(ValueError, match="increasing"):
        pruning.accuracy_without_finetuning(trained, digits, [0.5, 0.3])


def test_compare_latency_gives_a_positive_median_per_model():
    models = {"a": small_model(), "b": small_model(1)}
    latency = pruning.compare_latency(models, torch.zeros(4, 1, 8, 8), repeats=3, warmup=1)
    assert set(latency) == {"a", "b"} and all(t > 0 for t in latency.values())
    with pytest.raises(ValueError, match="repeats"):
        pruning.compare_latency(models, torch.zeros(1, 1, 8, 8), repeats=0)


# --------------------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------------------


def tiny_sweep():
    return replace(
        experiment.PruningSweep.quick(),
        widths=(4, 8),
        hidden=16,
        dense_epochs=2,
        seeds=2,
        unstructured_ratios=(0.5, 0.9),
        structured_ratios=(0.5, 0.8),
        patiences=(1,),
        finetune=FinetuneBudget(epochs=1, max_epochs_per_step=1),
        budget_ratio=0.9,
        budget_epochs=(0.5, 1),
        latency_batch=8,
        latency_repeats=2,
        workers=1,
    )


@pytest.fixture(scope="module")
def swept():
    return experiment.run_sweep(tiny_sweep(), progress=False)


def test_sweep_covers_every_configuration_and_seed(swept):
    sweep = swept.sweep
    assert len(swept.runs) == len(sweep.configurations()) * sweep.seeds
    assert set(swept.runs.seed) == {0, 1}
    main = swept.runs[swept.runs.criterion == "global-magnitude"]
    assert set(main.curve) == {"one-shot", "constant", "geometric", "hybrid", "patience 1"}
    assert set(swept.runs[swept.runs.criterion == "random"].curve) == set(sweep.side_regimes)
    hybrid_low = swept.runs[(swept.runs.curve == "hybrid") & (swept.runs.ratio <= sweep.hybrid_start)]
    one_shot_low = swept.runs[(swept.runs.curve == "one-shot") & (swept.runs.ratio <= sweep.hybrid_start)]
    assert sorted(hybrid_low.test_accuracy) == sorted(
        one_shot_low[one_shot_low.criterion.isin(hybrid_low.criterion)].test_accuracy
    )
    assert (swept.steps.pruned_units == swept.steps.scheduled_units).all()
    assert set(swept.budget.budget.dropna()) == {0.5, 1.0}
    assert set(swept.structured_models) == set(sweep.structured_ratios)


@pytest.mark.parametrize(
    ("granularity", "criterion", "regime", "ratio"),
    [("unstructured", "global-magnitude", "geometric", 0.9), ("structured", "l2", "patience", 0.8)],
)
def test_rerun_reproduces_the_stored_run(swept, granularity, criterion, regime, ratio):
    run = swept.rerun(seed=1, granularity=granularity, criterion=criterion, regime=regime, ratio=ratio)
    stored = rows_of(swept.runs, seed=1, granularity=granularity, criterion=criterion, regime=regime, ratio=ratio)
    assert run.test_accuracy == stored.test_accuracy.iloc[0]
    assert run.steps.to_dict("records") == rows_of(
        swept.steps, seed=1, granularity=granularity, criterion=criterion, regime=regime, ratio=ratio
    )[list(run.steps.columns)].to_dict("records")


def test_worker_processes_give_the_same_tables_as_this_process(swept):
    """The sweep's runs may be shared among processes; each run depends only on its inputs, so nothing changes."""
    sweep = replace(
        tiny_sweep(),
        seeds=1,
        unstructured_ratios=(0.9,),
        structured_ratios=(0.5,),
        criteria=(("unstructured", ("global-magnitude",)), ("structured", ("l2",))),
        regimes=("one-shot", "geometric"),
        budget_epochs=(1,),
        workers=2,
    )
    parallel = experiment.run_sweep(sweep, progress=False)
    serial = experiment.run_sweep(replace(sweep, workers=1), progress=False)
    for name in ("runs", "steps", "layers"):
        pd.testing.assert_frame_equal(getattr(parallel, name), getattr(serial, name))
    assert set(parallel.structured_models) == {0.5}


def test_rerun_checks_its_inputs(swept):
    with pytest.raises(ValueError, match="seed"):
        swept.rerun(seed=7, granularity="unstructured", criterion="random", regime="one-shot", ratio=0.5)
    with pytest.raises(ValueError, match="criterion"):
        swept.rerun(seed=0, granularity="structured", criterion="random", regime="one-shot", ratio=0.5)


def test_summary_costs_and_paper_rows(swept):
    costs = experiment.structured_costs(swept)
    assert costs.loc["dense", "flop_ratio"] == 1.0
    assert (costs.drop(index="dense").parameter_ratio < 1).all() and (
        costs.drop(index="dense").flop_ratio < 1
    ).all()
    summary = experiment.summarize(swept, costs)
    assert set(summary["structured_costs"]) == {"0.5", "0.8"}
    rows = experiment.paper_rows(summary, summary)
    assert all(row["this_run"] and row["full_run"] == row["this_run"] for row in rows)
    note = experiment.closing_note(summary, 61.0, "quick")
    assert "61 s" in note and "latency" in note and "iterative is better at high pruning ratios" in note


def test_crossover_ratio_cases():
    ratios = [0.5, 0.7, 0.9]
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.8, 0.9, 0.6]) == pytest.approx(0.6)
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.8, 0.8, 0.6]) == pytest.approx(0.7)  # a tie
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.8, 0.7, 0.6]) == pytest.approx(0.8)
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.9, 0.9, 0.9]) == 0.5  # never behind
    assert math.isnan(experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.9, 0.9, 0.4]))  # behind at the end
    with pytest.raises(ValueError, match="shape"):
        experiment.crossover_ratio(ratios, [0.9], [0.8])


def test_sweep_budgets_are_valid_and_checked():
    quick, full = experiment.PruningSweep.quick(), experiment.PruningSweep.full()
    assert quick.seeds >= 3 and full.seeds > quick.seeds
    assert quick.unstructured_ratios[0] == 0.5 and quick.unstructured_ratios[-1] == 0.98
    assert full.patiences == (3, 10, 30) and len(full.unstructured_ratios) > len(quick.unstructured_ratios)
    with pytest.raises(ValueError, match="unstructured_ratios"):
        replace(quick, unstructured_ratios=(0.9, 0.5))
    with pytest.raises(ValueError, match="patience"):
        replace(quick, patiences=(-1,))
    with pytest.raises(ValueError, match="criterion"):
        replace(quick, criteria=(("structured", ("random",)),))
    assert "digits" in quick.describe()


def test_canvas_data_is_normalised_with_train_statistics():
    sweep = replace(experiment.PruningSweep.quick(), dataset="canvas", canvas_size=16)
    data = experiment.load_data(sweep, 0)
    assert data.train.x.shape[1:] == (1, 16, 16) and sweep.model_config().image_size == 16
    assert abs(float(data.train.x.mean())) < 1e-4 and abs(float(data.train.x.std()) - 1) < 1e-3
