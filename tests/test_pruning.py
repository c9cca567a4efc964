import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from efflab.data.digits import infinite_batches, load_digits
from efflab.finetune import FinetuneBudget, finetune
from efflab.models.cnn import CNN, CNNConfig
from efflab.parallel import gpu_share_for
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
from efflab.runtime import Run, torch_threads
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


def test_global_magnitude_removes_the_smallest_parameters_across_layers_biases_included():
    model = small_model()
    values = torch.cat([p.detach().abs().flatten() for p in model.parameters()])  # every conv/linear parameter
    pruner = UnstructuredPruner(model, "global-magnitude")
    pruner.prune_to(0.6)
    masks = torch.cat(
        [
            getattr(m, f"{t}_mask").flatten()
            for m in model.modules()
            for t in ("weight", "bias")
            if hasattr(m, f"{t}_mask")
        ]
    )
    assert len(masks) == len(values) == sum(pruner.sizes)
    assert values[masks == 0].max() <= values[masks == 1].min()
    assert int((masks == 0).sum()) == math.floor(0.6 * len(values))


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
    for _, module, tensor in pruner.tensors:
        pruned = getattr(module, f"{tensor}_mask") == 0
        if not pruned.any():
            continue
        assert torch.count_nonzero(getattr(module, tensor)[pruned]) == 0
        assert torch.count_nonzero(pruning.effective_tensor(module, tensor)[pruned]) == 0
    moved = [m.weight_orig[m.weight_mask == 0] for _, m in pruner.layers]
    assert torch.count_nonzero(torch.cat(moved)) > 0  # the optimiser did move what lies beneath
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


@pytest.mark.parametrize("regime", pruning.REGIMES)
def test_patience_combines_with_every_schedule(regime, digits):
    """Patience is a fine-tuning rule, not a schedule: any schedule runs with it, and every phase then stops
    on its own. Patience 0 stops each phase after its first epoch, so a run spends one epoch per pruning step."""
    schedule = make_schedule(regime, 0.9, steps=3, hybrid_start=0.6)
    budget = FinetuneBudget(epochs=7, max_epochs_per_step=4)
    run = pruning.prune_and_finetune(small_model(), digits, schedule, budget=budget, patience=0)
    assert run.patience == 0 and run.schedule.regime == regime
    assert run.epochs == pytest.approx(schedule.steps)  # not the fixed budget of 7 epochs
    assert run.steps.phase_epochs.tolist() == pytest.approx([1.0] * schedule.steps)
    assert (run.steps.pruned_units == run.steps.scheduled_units).all()
    assert pruning.curve_name(regime, 0) == f"{regime} + patience 0" and pruning.curve_name(regime) == regime


def test_patience_is_not_a_regime():
    with pytest.raises(ValueError, match="regime"):
        make_schedule("patience", 0.5)
    with pytest.raises(ValueError, match="patience"):
        pruning.curve_name("geometric", -1)


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


def tiny_budget():
    return replace(
        experiment.PruningBudget.quick(),
        widths=(4, 8),
        hidden=16,
        dense_epochs=2,
        seeds=2,
        unstructured_ratios=(0.5, 0.9),
        structured_ratios=(0.5, 0.8),
        patiences=(1,),
        patience_regimes=("one-shot", "geometric"),
        patience_ratios=(0.9,),
        finetune=FinetuneBudget(epochs=1, max_epochs_per_step=2),
        budget_ratio=0.9,
        budget_epochs=(0.5, 1),
        latency_batch=8,
        latency_repeats=2,
    )


@pytest.fixture(scope="module")
def result():
    import efflab

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EFFLAB_EXECUTOR", "inline")  # the backends agree (tested below); inline is cheapest here
        return experiment.run_experiment(
            efflab.setup("quick", "cpu", 0, verbose=False), tiny_budget(), progress=False
        )


def test_experiment_covers_every_configuration_and_seed(result):
    budget = result.budget
    assert len(result.runs) == len(budget.configurations()) * budget.seeds
    assert len(result.patience) == len(budget.patience_configurations()) * budget.seeds
    assert set(result.runs.seed) == {0, 1} and result.runs.patience.isna().all()
    main = result.runs[result.runs.criterion == "global-magnitude"]
    assert set(main.curve) == set(pruning.REGIMES)
    assert set(result.runs[result.runs.criterion == "random"].curve) == set(budget.side_regimes)
    assert set(result.patience.curve) == {"one-shot + patience 1", "geometric + patience 1"}
    low = result.runs.ratio <= budget.hybrid_start
    hybrid = result.runs[low & (result.runs.curve == "hybrid")].sort_values(
        ["granularity", "criterion", "seed", "ratio"]
    )
    one_shot = result.runs[low & (result.runs.curve == "one-shot")]
    one_shot = one_shot[one_shot.criterion.isin(hybrid.criterion)].sort_values(
        ["granularity", "criterion", "seed", "ratio"]
    )
    assert hybrid.test_accuracy.tolist() == one_shot.test_accuracy.tolist()  # hybrid below its start is one-shot
    assert (result.steps.pruned_units == result.steps.scheduled_units).all()
    assert np.allclose(result.runs.epochs, budget.finetune.epochs)  # matched: every fixed run spent the budget
    assert set(result.budget_study.budget.dropna()) == {0.5, 1.0}
    assert set(result.structured_models) == set(budget.structured_ratios)


def test_each_patience_run_has_a_twin_with_exactly_its_epochs(result):
    patience = result.patience
    assert np.allclose(patience.twin_epochs, patience.epochs)
    cap = result.budget.finetune.max_epochs_per_step
    assert (patience.epochs <= patience.pruning_steps * cap + 1e-9).all()
    assert (patience.capped_phases <= patience.pruning_steps).all()


@pytest.mark.parametrize(
    ("granularity", "criterion", "regime", "ratio", "patience"),
    [
        ("unstructured", "global-magnitude", "geometric", 0.9, None),
        ("structured", "l2", "constant", 0.8, None),
        ("unstructured", "global-magnitude", "one-shot", 0.9, 1),
    ],
)
def test_rerun_reproduces_the_stored_run(result, granularity, criterion, regime, ratio, patience):
    run = result.rerun(
        seed=1, granularity=granularity, criterion=criterion, regime=regime, ratio=ratio, patience=patience
    )
    table = result.runs if patience is None else result.patience
    stored = rows_of(table, seed=1, granularity=granularity, criterion=criterion, regime=regime, ratio=ratio)
    assert run.test_accuracy == stored.test_accuracy.iloc[0] and run.epochs == stored.epochs.iloc[0]


def test_processes_give_the_same_results_as_inline(result):
    """A task carries its seed, configuration and dense state dict, so where it runs changes nothing."""
    tasks = [t for t in experiment.build_tasks(result.budget, result.dense_states) if t.kind == "patience"][:2]
    inline = [experiment.prune_one(t) for t in tasks]
    pooled = experiment.run_all(experiment.prune_one, tasks, backend="processes", workers=2, progress=False)
    assert [o["row"] for o in inline] == [o["row"] for o in pooled]
    assert [o["steps"] for o in inline] == [o["steps"] for o in pooled]


class Captured(Exception):
    """Raised by the stand-in for run_all once it has seen the pruning tasks."""


@pytest.mark.parametrize(("device", "share"), [("cpu", None), ("cuda", gpu_share_for("cuda"))])
def test_every_task_carries_the_runs_device(monkeypatch, device, share):
    """run_experiment hands each task the run's device, and on CUDA asks Ray for a share of a GPU per task."""
    calls = []

    def capture(function, tasks, **options):
        calls.append((list(tasks), options["gpu_share"]))
        if function is experiment.prune_one:
            raise Captured
        return [{"state": {}, "row": {}} for _ in tasks]

    monkeypatch.setattr(experiment, "run_all", capture)
    run = Run("quick", torch.device(device), 0, 1)  # a CUDA run needs no GPU to plan its tasks
    with pytest.raises(Captured):
        experiment.run_experiment(run, tiny_budget(), progress=False)
    (dense, dense_share), (pruning, pruning_share) = calls
    assert all(isinstance(t, experiment.DenseTask) for t in dense) and len(pruning) > len(dense)
    assert {t.device for t in dense + pruning} == {device}
    assert dense_share == pruning_share == share


def test_what_the_tasks_return_is_on_the_cpu(result):
    assert result.device == "cpu"
    assert all(v.device.type == "cpu" for state in result.dense_states.values() for v in state.values())
    models = list(result.structured_models.values())
    assert models and all(p.device.type == "cpu" for m in models for p in m.parameters())
    run = result.rerun(seed=0, granularity="structured", criterion="l2", regime="one-shot", ratio=0.5)
    assert all(p.device.type == "cpu" for p in run.model.parameters())


def test_digits_on_the_cpu_are_the_loaded_tensors(digits):
    moved = experiment.load_digits_on(0, "cpu")
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(moved, name).x, getattr(digits, name).x)
        assert torch.equal(getattr(moved, name).y, getattr(digits, name).y)


@pytest.mark.parametrize("device", ["gpu", "", None, 0, torch.device("cpu")])
def test_a_task_refuses_a_device_that_is_no_torch_device_name(result, device):
    task = experiment.build_tasks(result.budget, result.dense_states)[0]
    with pytest.raises(ValueError, match="device"):
        replace(task, device=device)
    with pytest.raises(ValueError, match="device"):
        experiment.DenseTask(0, result.budget.model_config(), 1, 1e-3, 8, device=device)


def test_rerun_checks_its_inputs(result):
    with pytest.raises(ValueError, match="seed"):
        result.rerun(seed=7, granularity="unstructured", criterion="random", regime="one-shot", ratio=0.5)
    with pytest.raises(ValueError, match="criterion"):
        result.rerun(seed=0, granularity="structured", criterion="random", regime="one-shot", ratio=0.5)
    with pytest.raises(ValueError, match="patience"):
        result.rerun(seed=0, granularity="structured", criterion="l2", regime="one-shot", ratio=0.5, patience=-1)


def test_summary_is_plain_data_that_matches_the_tables(result):
    import json

    summary = result.summary()
    json.dumps(summary)
    runs = result.runs
    for curve, by_ratio in summary["unstructured"]["accuracy"].items():
        for ratio, values in by_ratio.items():
            rows = rows_of(runs, granularity="unstructured", criterion="global-magnitude", curve=curve)
            rows = rows[np.isclose(rows.ratio, float(ratio))].sort_values("seed")
            assert values == rows.test_accuracy.tolist()
    for curve, by_ratio in summary["patience"].items():
        for ratio, cell in by_ratio.items():
            rows = result.patience[
                (result.patience.curve == curve) & np.isclose(result.patience.ratio, float(ratio))
            ]
            assert cell["twin_accuracy"] == rows.sort_values("seed").twin_test_accuracy.tolist()
    assert summary["test_images"] == len(load_digits(0).test)
    assert set(summary["structured_costs"]) == {"0.5", "0.8"}
    assert all(c["parameter_ratio"] < 1 and c["flop_ratio"] < 1 for c in summary["structured_costs"].values())


def test_paper_rows_put_the_committed_run_in_its_own_column(result):
    summary = result.summary()
    other = copy.deepcopy(summary)
    other["unstructured"]["accuracy"]["one-shot"]["0.5"] = [1.0, 1.0]  # a different full-mode run
    table = experiment.paper_rows(summary, other)
    full = [c for c in table.columns if c.startswith("full-mode")][0]
    row = "one-shot minus best iterative, lowest ratio (unstructured)"
    assert table.loc[row, "this run"] != table.loc[row, full]
    assert "one-shot −" in table.loc[row, full]
    alone = experiment.paper_rows(summary, None)
    assert (alone[full] == "n/a").all()
    assert (
        "patience-based pruning is advocated"
        in alone.loc["geometric + patience 1: accuracy gained by patience at equal epochs", "paper"]
    )


# --------------------------------------------------------------------------------------------------------------
# findings(): a phrasing for every outcome, on synthetic summaries
# --------------------------------------------------------------------------------------------------------------


def synthetic_summary(low_gap, high_gap, patience_gap):
    """Two seeds, ratios 0.5 and 0.9. ``low_gap``/``high_gap``: one-shot minus every iterative schedule per seed;
    ``patience_gap``: patience minus its twin per seed."""
    base = 0.8

    def part():
        accuracy = {}
        for curve in ("one-shot", "constant", "geometric", "hybrid"):
            sign = 0 if curve == "one-shot" else 1
            accuracy[curve] = {
                "0.5": [base - sign * g for g in low_gap] if curve != "hybrid" else [base] * 2,
                "0.9": [base - sign * g for g in high_gap],
            }
        return {"criterion": "x", "ratios": [0.5, 0.9], "accuracy": accuracy}

    cell = {"accuracy": [0.7 + g for g in patience_gap], "twin_accuracy": [0.7, 0.7], "epochs": [9.0, 11.0]}
    return {
        "seeds": [0, 1],
        "test_images": 100,
        "hybrid_start": 0.7,
        "fixed_budget_epochs": 5.0,
        "unstructured": part(),
        "structured": part(),
        "patience": {"geometric + patience 2": {"0.9": {**cell, "capped_phases": 0, "phases": 10}}},
    }


def test_findings_agree_when_every_seed_goes_the_papers_way():
    text = experiment.findings(synthetic_summary([0.05, 0.04], [-0.1, -0.2], [0.03, 0.02]))
    lines = text.splitlines()
    assert sum("agrees with the paper" in line for line in lines) == 2 + 2 + 1 + 0  # low/high x 2, patience
    assert "disagrees" not in text and "mixed" not in text
    assert "10.0 epochs on average" in text  # the epochs patience really used


def test_findings_disagree_when_every_seed_goes_the_other_way():
    text = experiment.findings(synthetic_summary([-0.05, -0.04], [0.1, 0.2], [-0.03, -0.02]))
    assert text.count("disagrees with the paper") == 5 + 1  # and hybrid, behind geometric here
    assert "never catches up" in text  # geometric stays behind one-shot at the top ratio


def test_findings_say_mixed_and_tie():
    text = experiment.findings(synthetic_summary([0.05, -0.05], [0.0, 0.001], [0.03, -0.03]))
    lines = text.splitlines()
    assert "mixed across seeds" in lines[0] and "mixed across seeds" in lines[-2]
    assert "cannot tell the two apart" in lines[1]  # within half a test image (0.005) in every seed


def test_verdict_counts_seeds_against_a_tolerance():
    assert experiment.verdict([0.1, 0.2], 0.01) == "agrees"
    assert experiment.verdict([-0.1, 0.005], 0.01) == "disagrees"
    assert experiment.verdict([-0.1, 0.1], 0.01) == "mixed"
    assert experiment.verdict([0.001, -0.002], 0.01) == "tie"


def test_crossover_ratio_cases():
    ratios = [0.5, 0.7, 0.9]
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.8, 0.9, 0.6]) == pytest.approx(0.6)
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.8, 0.8, 0.6]) == pytest.approx(0.7)  # a tie
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.8, 0.7, 0.6]) == pytest.approx(0.8)
    assert experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.9, 0.9, 0.9]) == 0.5  # never behind
    assert math.isnan(experiment.crossover_ratio(ratios, [0.9, 0.8, 0.5], [0.9, 0.9, 0.4]))  # behind at the end
    with pytest.raises(ValueError, match="shape"):
        experiment.crossover_ratio(ratios, [0.9], [0.8])


def test_budgets_are_checked():
    quick = experiment.PruningBudget.quick()
    assert {"one-shot", "constant", "geometric"} <= set(quick.patience_regimes)  # patience beside each schedule
    assert "PruningBudget(" in quick.describe()
    with pytest.raises(ValueError, match="unstructured_ratios"):
        replace(quick, unstructured_ratios=(0.9, 0.5))
    with pytest.raises(ValueError, match="patience"):
        replace(quick, patiences=(-1,))
    with pytest.raises(ValueError, match="patience_ratios"):
        replace(quick, patience_ratios=(0.61,))  # not on the unstructured grid
    with pytest.raises(ValueError, match="budget_ratio"):
        replace(quick, budget_ratio=0.61)
    with pytest.raises(ValueError, match="criterion"):
        replace(quick, criteria=(("structured", ("random",)),))
    with pytest.raises(ValueError, match="patience_regimes"):
        replace(quick, patience_regimes=("patience",))
    with pytest.raises(ValueError, match="run"):
        experiment.run_experiment(object(), quick)
