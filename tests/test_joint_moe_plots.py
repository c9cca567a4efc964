import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from efflab.joint_moe import law as jl
from efflab.joint_moe import plots as jp


def star(figure: go.Figure) -> go.Scatter:
    return next(trace for trace in figure.data if trace.name and trace.name.startswith("best E"))


def test_explorer_figure_agrees_with_the_law():
    figure = jp.explorer_figure(1e22, 24, 8, 0.0, 16_384)
    expected = jl.configs_by_experts(
        1e22, expert_counts=jp.EXPLORER_EXPERTS, memory_bytes=24 * jl.GB, kv_tokens=16_384
    ).loss.idxmin()
    assert star(figure).x[0] == expected == 4  # the paper's Table 2 cell for 1e22 FLOPs and 24 GB
    assert star(jp.explorer_figure(1e22, 640, 8, 0.0, 16_384)).x[0] > 4  # more memory, more experts
    summary = jp.explorer_figure(1e22, 24, 1, 0.0, 16_384).layout.annotations[-1].text
    assert summary.startswith("your E = 1") and "size set by" in summary


def test_without_memory_more_experts_always_help():
    figure = jp.loss_vs_experts(1e22, 1e6, selected=8)  # a million GB: memory never binds
    compute_only, limited = figure.data[0], figure.data[1]
    assert np.all(np.diff(compute_only.y) < 0)
    np.testing.assert_allclose(limited.y, compute_only.y)


def test_frontier_heatmap_and_savings_build():
    heatmap = jp.optimal_experts_heatmap(marked=(1e22, 80))
    cells = heatmap.data[0]
    assert np.asarray(cells.z).shape == (31, 36)
    assert set(np.unique(np.asarray(cells.customdata))) <= set(jl.EXPERT_COUNTS)
    assert len(heatmap.data[1].text) == len(jl.JOINT_TABLE_2)
    savings = jp.compute_saving_curves(jp.FLOPS_GRID)
    assert all(np.all(np.asarray(trace.y) > 1) for trace in savings.data)


def test_experiment_figures():
    runs = pd.DataFrame(
        {"width": [16, 16, 32, 32], "expansion": [1, 4, 1, 4], "seed": 0, "val_loss": [2.5, 2.4, 2.3, 2.2]}
    )
    assert len(jp.measured_expert_curves(runs, seed=0).data) == 2
    with pytest.raises(ValueError, match="expansion"):
        jp.measured_expert_curves(runs.drop(columns="expansion"), seed=0)
    exponents = jp.exponents_by_experts(jl.JOINT, (1, 2, 4, 8))
    assert len(exponents.data) == 4
    np.testing.assert_allclose(exponents.data[0].y, exponents.data[1].y)  # the same law on both sides
