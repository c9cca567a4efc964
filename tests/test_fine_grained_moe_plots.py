import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from efflab.fine_grained_moe import law as laws
from efflab.fine_grained_moe import plots as moe_plots
from efflab.ui.widgets import explorer, slider


def test_granularity_diagram_draws_every_expert_and_the_chosen_ones():
    figure = moe_plots.granularity_diagram(expansion=4, granularities=(1, 4))
    boxes = figure.layout.shapes
    assert len(boxes) == 1 + 4 + 16  # the dense FFN, then E*G experts per row
    chosen = [box for box in boxes if box.fillcolor == moe_plots.PALETTE[1]]
    assert len(chosen) == 1 + 4  # top-G per row: always one dense FFN's width
    assert sum(box.x1 - box.x0 for box in chosen) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="expansion"):
        moe_plots.granularity_diagram(expansion=0)


def test_law_figures_build():
    frontier = moe_plots.compute_optimal_frontier(np.logspace(18, 22, 5), granularities=(1, 8))
    assert [trace.name for trace in frontier.data][:3] == ["dense", "MoE G=1", "MoE G=8"]
    shares = moe_plots.router_cost_share((256, 4096))
    assert shares.data[0].y[-1] > shares.data[1].y[-1]  # routing weighs more on the narrow model


def test_law_explorer_answers_from_python():
    def draw(granularity, flops):
        return moe_plots.granularity_explorer_figure(flops, granularity)

    view = explorer(draw, granularity=slider("G", [1, 8, 64], value=8), flops=slider("F", [1e18, 1e22]))
    view.controls["flops"].value = 1e22
    view.controls["granularity"].value = 64
    assert view.renders == 3 and isinstance(view.last, go.Figure)
    assert "optimal G=" in view.last.layout.annotations[-1].text


def test_experts_per_token_bars():
    bars = moe_plots.experts_per_token_bars({"a": np.array([[0.1, 0.2, 0.7]])})
    assert list(bars.data[0].y) == pytest.approx([0.1, 0.2, 0.7])


def test_measured_figures():
    runs = pd.DataFrame(
        {
            "width": [32, 32, 32],
            "granularity": [0, 1, 2],
            "routing": ["dense", "expert_choice", "expert_choice"],
            "seed": [0, 0, 0],
            "val_loss": [2.7, 2.6, 2.5],
        }
    )
    figure = moe_plots.measured_granularity_curves(runs, seed=0)
    assert list(figure.data[0].y) == [2.6, 2.5]
    with pytest.raises(ValueError, match="val_loss"):
        moe_plots.measured_granularity_curves(runs.drop(columns="val_loss"), seed=0)
    curves = pd.DataFrame(
        {
            "seed": [0, 0, 1],
            "tokens": [1e5, 2e5, 1e5],
            "val_loss": [2.9, 2.7, 2.95],
            "params": [1e5] * 3,
            "granularity": [2] * 3,
        }
    )
    with_law = moe_plots.measured_with_law(curves, laws.FG_MOE, title="t")
    assert len(with_law.data) == 3  # two seeds and the law
    with pytest.raises(ValueError, match="curves"):
        moe_plots.measured_with_law(curves.iloc[:0], laws.FG_MOE, title="t")
