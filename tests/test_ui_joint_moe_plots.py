import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from efflab.joint_moe import law as jl
from efflab.joint_moe import plots as jp


def star(figure: go.Figure) -> go.Scatter:
    return next(trace for trace in figure.data if trace.name and trace.name.startswith("best E"))


def test_explorer_answers_from_python_and_agrees_with_the_law():
    explorer = jp.joint_law_explorer(flops=1e22, memory_gb=24, experts=8)
    assert explorer.renders == 1 and explorer.controls["kv_tokens"].value == 16_384  # the paper's Table 2 cache
    expected = jl.configs_by_experts(1e22, expert_counts=jp.EXPLORER_EXPERTS, memory_bytes=24 * jl.GB,
                                     kv_tokens=16_384).loss.idxmin()  # fmt: skip
    assert star(explorer.last).x[0] == expected == 4  # the paper's Table 2 cell for 1e22 FLOPs and 24 GB
    explorer.controls["memory_gb"].value = 640
    assert explorer.renders == 2 and star(explorer.last).x[0] > 4  # more memory, more experts
    explorer.controls["experts"].value = 1
    summary = explorer.last.layout.annotations[-1].text
    assert summary.startswith("your E = 1") and "size set by" in summary
    marker = next(trace for trace in explorer.last.data if trace.name == "your budgets")
    assert marker.x[0] == pytest.approx(np.log10(640)) and marker.y[0] == pytest.approx(22.0)


def test_without_memory_more_experts_always_help():
    figure = jp.loss_vs_experts(1e22, 1e6, selected=8)  # a million GB: memory never binds
    compute_only, limited = figure.data[0], figure.data[1]
    assert np.all(np.diff(compute_only.y) < 0)
    np.testing.assert_allclose(limited.y, compute_only.y)


def test_frontier_heatmap_and_savings_build():
    frontier = jp.relative_frontier(jp.FLOPS_GRID)
    assert [trace.name for trace in frontier.data] == [f"E={e}" for e in jl.EXPERT_COUNTS]
    np.testing.assert_allclose(frontier.data[0].y, 0.0)  # dense against itself
    heatmap = jp.optimal_experts_heatmap(marked=(1e22, 80))
    cells = heatmap.data[0]
    assert np.asarray(cells.z).shape == (31, 36)
    assert set(np.unique(np.asarray(cells.customdata))) <= set(jl.EXPERT_COUNTS)
    assert len(heatmap.data[1].text) == len(jl.JOINT_TABLE_2)
    savings = jp.compute_saving_curves(jp.FLOPS_GRID)
    assert all(np.all(np.asarray(trace.y) > 1) for trace in savings.data)


def test_experiment_figures():
    runs = pd.DataFrame({"width": [16, 16, 32, 32], "expansion": [1, 4, 1, 4], "seed": 0,
                         "val_loss": [2.5, 2.4, 2.3, 2.2]})  # fmt: skip
    assert len(jp.measured_expert_curves(runs, seed=0).data) == 2
    with pytest.raises(ValueError, match="expansion"):
        jp.measured_expert_curves(runs.drop(columns="expansion"), seed=0)
    exponents = jp.exponents_by_experts(jl.JOINT, (1, 2, 4, 8))
    assert len(exponents.data) == 4
    np.testing.assert_allclose(exponents.data[0].y, exponents.data[1].y)  # the same law on both sides
