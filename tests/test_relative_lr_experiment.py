"""The experiment end to end at a toy size, its summary, table and findings, the speed-up, the playground."""

import json
from dataclasses import replace

import pandas as pd
import pytest

import efflab
from efflab import parallel
from efflab.relative_lr import experiment, plots
from efflab.relative_lr.experiment import (
    RelativeLRBudget,
    build_model,
    findings,
    multiplier_table,
    non_embedding_parameters,
    paper_rows,
    run_experiment,
)
from efflab.relative_lr.measures import speedup_percent, steps_to_reach

TINY = dict(
    d_model=8,
    n_layer=1,
    n_head=2,
    block_size=16,
    batch_size=4,
    n_experts=2,
    steps=12,
    warmup_steps=2,
    eval_every=4,
    eval_batches=1,
    track_every=3,
    seeds=2,
    ablation_seeds=1,
    lr_grid=(4e-3, 1e-2),
    search_steps=6,
    search_evaluations=5,
    corpus_bytes=20_000,
)


# The toy study with a transfer to a 32-wide model: about 16x the proxy's non-embedding parameters.
TRANSFER = dict(
    TINY,
    transfer_d_model=32,
    transfer_n_layer=1,
    transfer_n_head=2,
    transfer_steps=16,
    transfer_lr_grid=(4e-3, 1e-2),
)


def _run_tiny(patch: pytest.MonkeyPatch, budget: RelativeLRBudget):
    patch.setenv("EFFLAB_EXECUTOR", "inline")
    return run_experiment(efflab.setup("quick", "cpu", 0, verbose=False), budget)


@pytest.fixture(scope="module")
def result():
    with pytest.MonkeyPatch.context() as patch:
        yield _run_tiny(patch, RelativeLRBudget(**TINY))


@pytest.fixture(scope="module")
def transferred():
    """The study with a transfer, and every task it handed to ``run_all`` (each one a training)."""
    trained = []

    def recording(function, tasks, **options):
        trained.extend(tasks)
        return parallel.run_all(function, tasks, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "run_all", recording)
        yield _run_tiny(patch, RelativeLRBudget(**TRANSFER)), trained


def test_steps_to_reach_interpolates_between_evaluations():
    assert steps_to_reach([10, 20, 30], [3.0, 2.0, 1.0], 1.5) == pytest.approx(25.0)
    assert steps_to_reach([10, 20, 30], [3.0, 2.0, 1.0], 3.5) == 10.0
    assert steps_to_reach([10, 20, 30], [3.0, 2.0, 1.0], 0.5) is None


def test_speedup_is_signed_and_zero_for_the_same_curve():
    steps, uniform = [25, 50, 75, 100], [3.0, 2.5, 2.2, 2.0]
    faster = [2.8, 2.2, 2.0, 1.9]  # reaches 2.0 at step 75
    assert speedup_percent(steps, faster, uniform, 100) == pytest.approx(25.0)
    assert speedup_percent(steps, uniform, faster, 100) == pytest.approx(-25.0)
    assert speedup_percent(steps, uniform, uniform, 100) == 0.0


def test_budget_checks_its_fields():
    with pytest.raises(ValueError, match="warmup_steps"):
        RelativeLRBudget(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="lr_grid"):
        RelativeLRBudget(lr_grid=(1e-3, float("nan")))
    with pytest.raises(ValueError, match="ablation"):
        RelativeLRBudget(ablation=("transformer",))
    with pytest.raises(ValueError, match="ablation_seeds"):
        RelativeLRBudget(seeds=2, ablation_seeds=3)
    full = RelativeLRBudget.full()
    assert full.transfer_steps > 0 and RelativeLRBudget.quick().transfer_steps == 0


def test_the_budget_refuses_a_transfer_model_less_than_ten_times_larger():
    pattern = r"transfer_d_model=24, transfer_n_layer=1, transfer_n_head=2 is not allowed.*expected at least 10x"
    with pytest.raises(ValueError, match=pattern):
        RelativeLRBudget(**{**TRANSFER, "transfer_d_model": 24})  # 8.8x the proxy
    assert RelativeLRBudget(**TRANSFER).transfer_d_model == 32
    off = RelativeLRBudget(**{**TRANSFER, "transfer_d_model": 8, "transfer_steps": 0})  # not checked while off
    assert off.transfer_steps == 0


def test_the_full_budget_transfers_to_a_model_at_least_ten_times_larger():
    budget = RelativeLRBudget.full()
    import torch

    with torch.device("meta"):
        for arch in ("dense", "moe"):
            small = build_model(arch, budget.d_model, budget.n_layer, budget.n_head, budget.n_experts)
            big = build_model(
                arch, budget.transfer_d_model, budget.transfer_n_layer, budget.transfer_n_head, budget.n_experts
            )
            assert non_embedding_parameters(big) >= 10 * non_embedding_parameters(small)


def test_the_experiment_runs_and_summarises(result):
    summary = result.summary()
    json.dumps(summary)
    for arch in ("dense", "moe"):
        values = summary["architectures"][arch]
        assert values["base_lr"] in TINY["lr_grid"]
        assert len(values["speedup"]["paper"]) == len(values["speedup"]["found"]) == TINY["seeds"]
        assert values["search"]["evaluations"] <= TINY["search_evaluations"]
        assert values["search"]["best_loss"] <= values["search"]["start_loss"]
        # The first seed's uniform run is the sweep's run at the chosen rate: trained once, the same numbers.
        assert values["final_loss"]["uniform"][0] == values["lr_sweep"][f"{values['base_lr']:g}"]
    ablated = summary["architectures"]["moe"]["ablation"]
    assert set(ablated) == {"embedding", "router", "experts", "head"}
    assert all(len(v) == TINY["ablation_seeds"] for v in ablated.values())
    reference = summary["architectures"]["moe"]["ablation_reference"]
    assert reference == summary["architectures"]["moe"]["speedup"]["paper"][: TINY["ablation_seeds"]]
    assert summary["architectures"]["dense"]["ablation"] == {}
    updates = result.runs[("moe", "uniform", result.seeds[0])]["updates"]
    assert updates["steps"] == [0, 3, 6, 9]
    assert all(size > 0 for sizes in updates["sizes"].values() for size in sizes)


def test_table_and_findings_come_from_the_summary(result):
    summary = result.summary()
    table = paper_rows(summary, None)
    assert isinstance(table, pd.DataFrame) and "paper" in table.columns
    assert table.loc["speed-up over uniform, MoE, paper's preset", "this run"].endswith("%")
    text = findings(summary)
    assert "MoE, the paper's preset" in text and "Search (dense)" in text
    assert len(multiplier_table(summary)) == 4 + 5


def test_figures_build(result):
    summary = result.summary()
    for figure in (
        plots.lr_curves(result, "moe"),
        plots.sweep_figure(result),
        plots.loss_curves(result, "dense"),
        plots.speedup_bars(summary),
        plots.update_sizes(result, "moe"),
        plots.ablation_bars(summary, "moe"),
        plots.search_trace(result),
    ):
        assert len(figure.data) > 0
    assert plots.transfer_bars(summary) is None


def test_the_transfer_reuses_both_presets_on_a_model_ten_times_larger(transferred):
    result, _ = transferred
    summary = result.summary()
    json.dumps(summary)
    transfer = summary["transfer"]
    assert transfer["steps"] == TRANSFER["transfer_steps"]
    for arch in ("dense", "moe"):
        small = build_model(arch, 8, 1, 2, TINY["n_experts"], TINY["block_size"])
        big = build_model(arch, 32, 1, 2, TINY["n_experts"], TINY["block_size"])
        values = transfer["architectures"][arch]
        ratio = non_embedding_parameters(big) / non_embedding_parameters(small)
        assert values["size_ratio"] == pytest.approx(ratio) and ratio >= 10
        assert values["base_lr"] in TRANSFER["transfer_lr_grid"]
        for preset in ("paper", "found"):
            assert len(values["speedup"][preset]) == TINY["seeds"]
        assert values["final_loss"]["uniform"][0] == values["lr_sweep"][f"{values['base_lr']:g}"]
        outcome = result.transfer[(arch, "found", result.seeds[-1])]
        assert outcome["eval_steps"][-1] == TRANSFER["transfer_steps"] and outcome["updates"] is None


def test_transfer_findings_rows_and_figure_come_from_the_summary(transferred):
    summary = transferred[0].summary()
    text = findings(summary)
    table = paper_rows(summary, None)
    for label in ("dense", "MoE"):
        for preset in ("paper's preset", "found preset"):
            assert f"Transfer ({label}, {preset})" in text
            assert table.loc[f"speed-up on a larger model, {label}, {preset}", "this run"].endswith("x")
    assert "full mode only" not in text
    assert len(plots.transfer_bars(summary).data) == 4


def test_quick_results_say_there_is_no_transfer(result):
    summary = result.summary()
    assert summary["transfer"] is None and RelativeLRBudget.quick().transfer_steps == 0
    assert "runs in full mode only" in findings(summary)
    assert paper_rows(summary, None).loc["speed-up on a larger model, MoE, found preset", "this run"] == "n/a"


def test_no_configuration_is_trained_twice(transferred):
    result, trained = transferred
    trainings = [replace(task, track_every=0) for task in trained]  # measuring update sizes is no other training
    assert len(trainings) == len(set(trainings))
    shapes = (
        (TINY["d_model"], TINY["steps"], TINY["lr_grid"]),
        (TRANSFER["transfer_d_model"], TRANSFER["transfer_steps"], TRANSFER["transfer_lr_grid"]),
    )
    for arch in ("dense", "moe"):
        for d_model, steps, grid in shapes:
            uniform = [
                task
                for task in trained
                if (task.architecture, task.d_model, task.schedule.steps) == (arch, d_model, steps)
                and not task.schedule.multipliers
            ]
            # The sweep on the first seed, then the other seeds: the first seed's run is the sweep's.
            assert len(uniform) == len(grid) + TINY["seeds"] - 1


def test_playground_presets_sliders_and_button(result):
    playground = plots.playground(result)
    controls = playground.controls
    assert controls["architecture"].value == "moe" and controls["preset"].value == "paper"
    assert controls["embedding_start"].value == pytest.approx(5.0)
    assert "paper preset" in playground.status.value
    renders = playground.renders
    controls["preset"].value = "uniform"
    assert controls["embedding_start"].value == pytest.approx(1.0)
    assert playground.renders == renders + 1  # the sliders moved without a render each
    controls["head_end"].value = 0.5
    assert "custom settings" in playground.status.value
    before = playground.last[0].data[-1].y[-1]
    controls["head_start"].value = 3.0
    assert playground.last[0].data[-1].y[-1] != before  # the head's curve moved
    controls["router_start"].value = 2.0
    controls["architecture"].value = "dense"
    controls["router_start"].value = 2.0
    assert "router" in playground.status.value and "no effect" in playground.status.value
    playground.run_action()
    assert playground.actions_run == 1
    assert "speed-up" in playground.status.value
    assert any(trace.name == "your run" for trace in playground.last[1].data)


def test_a_live_run_of_the_uniform_settings_reproduces_the_stored_run(result):
    from efflab.relative_lr.experiment import live_run

    stored = result.runs[("dense", "uniform", result.seeds[0])]
    again = live_run(result, "dense", {}, result.base_lr["dense"])
    assert again["val_loss"] == stored["val_loss"]
    assert again["speedup"] == 0.0
