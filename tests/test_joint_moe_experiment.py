import dataclasses
import json

import numpy as np
import pytest

import efflab
from efflab.joint_moe import plots
from efflab.joint_moe.experiment import ExpertCountBudget, findings, law_points, paper_rows, run_experiment

TINY = dataclasses.replace(
    ExpertCountBudget.quick(),
    widths=(16, 24),
    expert_counts=(2, 4),
    n_layer=1,
    block_size=16,
    batch_size=8,
    steps=8,
    warmup_steps=1,
    eval_every=4,
    eval_batches=1,
    spread_width=16,
    spread_experts=(1, 4),
    n_seeds=2,
    checkpoints=(4, 8),
    bootstrap=3,
)


@pytest.fixture(scope="module")
def result(corpus):
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    return run_experiment(run, TINY, corpus=corpus, progress=False)


def test_grid_covers_every_width_and_expert_count_then_the_extra_seeds():
    specs = TINY.specs(0)
    assert len(specs) == 2 * 3 + 2  # widths x (dense + 2 expert counts), one more seed of two configurations
    assert [spec.label for spec in specs[:3]] == ["dense", "MoE E=2", "MoE E=4"]
    assert all(spec.routing == "token_choice" and spec.granularity == 1 for spec in specs if spec.expansion)


def test_every_expert_count_gets_the_papers_learning_rate_rule(result):
    rates = result.grid.runs.groupby("expansion").lr.first()
    np.testing.assert_allclose(rates.to_numpy(), TINY.lr * rates.index.to_numpy(float) ** -0.25)
    assert dataclasses.replace(TINY, lr_rule=False).learning_rate(TINY.specs(0)[2]) == TINY.lr


def test_runs_have_matched_active_parameters_and_e_times_the_ffn(result):
    runs = result.grid.runs
    assert set(runs.expansion) == {1, 2, 4}
    for width, group in runs.groupby("width"):
        assert group.active_params.nunique() == 1  # every model at a width uses the same parameters per token
        ffn = TINY.n_layer * 2 * width * 4 * width
        np.testing.assert_array_equal(group.params - group.active_params, (group.expansion - 1) * ffn)
    snapshot = result.grid.routers[("MoE E=4", 16, 0)]
    assert snapshot.experts_per_token[0, 1] == pytest.approx(1.0)  # dropless top-1: one expert per token


def test_summary_table_and_findings_come_from_the_run(result):
    summary = result.summary()
    json.dumps(summary)
    points = law_points(result.grid)
    assert summary["fit"]["points"] == len(points["loss"]) == len(result.grid.runs) * 2
    assert np.all(np.isfinite(result.joint_fit.fit.predict(points)))
    table = paper_rows(summary, None)
    assert "≥32" in table.loc["Table 2: best E under memory (12 cells)", "paper"]
    text = findings(summary)
    wrong = {**summary, "fit": {**summary["fit"], "coefficients": {**summary["fit"]["coefficients"], "zeta": 0.1}}}
    right = {
        **summary,
        "fit": {**summary["fit"], "coefficients": {**summary["fit"]["coefficients"], "zeta": -0.1}},
    }
    assert "wrong sign at this scale" in findings(wrong) and "the paper's sign" in findings(right)
    assert ("wrong sign" in text) == (summary["fit"]["coefficients"]["zeta"] > 0)


def test_playground_answers_every_control(result):
    view = plots.playground(result)
    assert view.renders == 1 and len(view.last) == 2
    changes = (
        ("flops", view.controls["flops"].options[0]),
        ("memory_gb", 640),
        ("experts", 64),
        ("width", 24),
        ("run_experts", 1),
    )
    for name, value in changes:
        before = view.status.value
        view.controls[name].value = value
        assert view.status.value != before, name
    shown = [trace.name for trace in view.last[0].data]
    view.controls["kv_tokens"].value = 0
    view.controls["inference_tokens"].value = 1e13
    assert view.renders == 1 + len(changes) + 2 and shown  # the explorer figure is redrawn for each


def test_budget_validation():
    with pytest.raises(ValueError, match="spread_width"):
        dataclasses.replace(TINY, spread_width=99)
    with pytest.raises(ValueError, match="spread_experts"):
        dataclasses.replace(TINY, spread_experts=(8,))
    with pytest.raises(ValueError, match="expert_counts"):
        dataclasses.replace(TINY, expert_counts=(1, 2))
    with pytest.raises(ValueError, match="expert_counts"):
        dataclasses.replace(TINY, expert_counts=())
    assert ExpertCountBudget.for_run(efflab.setup("quick", "cpu", 0, verbose=False)) == ExpertCountBudget.quick()
