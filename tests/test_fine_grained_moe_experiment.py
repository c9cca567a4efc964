import dataclasses
import json

import numpy as np
import pytest

import efflab
from efflab.fine_grained_moe import plots
from efflab.fine_grained_moe.experiment import GranularityBudget, findings, paper_rows, run_experiment
from efflab.lm_grid import DENSE, law_parameters
from efflab.models.gpt import GPTConfig, TinyLM, parameters_by_role
from efflab.models.moe import moe_ffn

TINY = dataclasses.replace(
    GranularityBudget.quick(),
    widths=(16, 24),
    granularities=(1, 2),
    n_layer=1,
    block_size=16,
    batch_size=8,
    steps=8,
    warmup_steps=1,
    eval_every=4,
    eval_batches=1,
    spread_width=16,
    spread_granularities=(DENSE, 2),
    n_seeds=2,
    checkpoints=(4, 8),
    bootstrap=3,
)


@pytest.fixture(scope="module")
def result(corpus):
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    return run_experiment(run, TINY, corpus=corpus, progress=False)


def test_law_parameters_count_attention_and_every_expert():
    config = GPTConfig(n_layer=2, n_head=2, d_model=16)
    for expansion, factory in ((1, None), (4, moe_ffn(expansion=4, granularity=2))):
        model = TinyLM(config, factory)
        roles = parameters_by_role(model)
        counted = sum(p.numel() for p in roles["attention"])
        ffn_matrices = ("ffn.up", "ffn.down", "ffn.up.weight", "ffn.down.weight")
        counted += sum(p.numel() for name, p in model.named_parameters() if name.endswith(ffn_matrices))
        assert law_parameters(config, expansion) == counted


def test_grid_covers_every_width_granularity_and_seed(result):
    grid = result.grid
    assert (
        len(grid.runs) == len(TINY.specs(0)) == 2 * 3 + 2 + 1
    )  # widths x (dense + G), a second seed, token choice
    assert set(grid.law_points().step) == {4 + 1, 8 + 2}  # each checkpoint plus its cooldown
    assert (grid.runs.val_loss < np.log(256)).all()
    moe_rows = grid.runs[grid.runs.granularity != DENSE]
    assert (moe_rows.params > moe_rows.active_params).all()  # E = 8 FFNs' worth of experts, one FFN active


def test_routers_are_recorded_for_moe_runs_only(result):
    routers = result.grid.routers
    snapshot = routers[("MoE G=2", 16, 0)]
    assert snapshot.load.shape == (1, 8 * 2)
    np.testing.assert_allclose(snapshot.load, 1 / 16, rtol=1e-6)  # expert choice: balanced by construction
    token_choice = routers[("MoE G=2 (token choice)", 16, 0)]
    assert token_choice.experts_per_token[0, 2] == pytest.approx(1.0)  # dropless top-2: exactly two each
    assert not any(label == "dense" for label, _, _ in routers)


def test_summary_table_and_findings_come_from_the_run(result):
    summary = result.summary()
    json.dumps(summary)  # plain values only
    assert summary["fits"]["moe"]["points"] == (2 * 2 + 1) * 2  # (2 widths x 2 G + a second seed) x 2 branches
    for kind in ("moe", "dense"):
        for name, (low, high) in summary["fits"][kind]["intervals"].items():
            assert low <= high, name
    table = paper_rows(summary, None)
    assert "> 40x" in table.paper.values and f"{summary['saving_at_1e25']:.0f}x" in table["this run"].values
    text = findings(summary)
    winners = set(summary["best_by_width"].values())
    assert all(label in text for label in winners)
    changed = {**summary, "best_by_width": {"16": "G=2", "24": "G=2"}}
    assert "the finest tested, gave the lowest loss at every width" in findings(changed)
    flagged = {**summary, "fits": {**summary["fits"], "moe": {**summary["fits"]["moe"], "at_bounds": ["c"]}}}
    assert "degenerate" in findings(flagged)


def test_points_carry_flops_with_the_router_and_wall_clock(result):
    points = result.points
    moe = points[points.granularity == 2].iloc[0]
    dense = points[(points.granularity == DENSE) & (points.width == moe.width) & (points.step == moe.step)].iloc[0]
    assert moe.training_flops > dense.training_flops  # same active parameters, plus the router's eq. 10 term
    assert (points.seconds > 0).all()


def test_playground_answers_every_control(result):
    view = plots.playground(result)
    assert view.renders == 1 and len(view.last) == 2
    for name, value in (("granularity", 1), ("flops", 1e22), ("width", 24), ("configuration", "dense")):
        before = view.status.value
        view.controls[name].value = value
        assert view.status.value != before, name
    view.controls["coefficients"].value = "MoE, E=16 (Table 8)"
    assert "E=16" in view.status.value
    cost = plots.measured_against_cost(result.points, seed=0)
    assert len(cost.data) > 0


def test_budget_validation():
    with pytest.raises(ValueError, match="spread_width"):
        dataclasses.replace(TINY, spread_width=99)
    with pytest.raises(ValueError, match="spread_granularities"):
        dataclasses.replace(TINY, spread_granularities=(8,))
    with pytest.raises(ValueError, match="eval_every"):
        dataclasses.replace(TINY, eval_every=0)
    with pytest.raises(ValueError, match="granularities"):
        dataclasses.replace(TINY, granularities=())
    assert GranularityBudget.for_run(efflab.setup("quick", "cpu", 0, verbose=False)) == GranularityBudget.quick()
