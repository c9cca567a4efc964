import numpy as np
import pandas as pd
import pytest

from efflab.ui import scaling_plots


def test_expert_load_is_drawn_relative_to_the_even_share():
    loads = {"expert choice": np.full((2, 8), 1 / 8), "token choice": np.array([[0.5] + [0.5 / 7] * 7] * 2)}
    heatmaps = scaling_plots.expert_load_heatmaps(loads)
    assert np.allclose(heatmaps.data[0].z, 1.0)  # an even load is drawn as 1
    assert heatmaps.data[1].z[0][0] == pytest.approx(4.0)  # half of all assignments on one of eight experts
    with pytest.raises(ValueError, match="loads"):
        scaling_plots.expert_load_heatmaps({})


def test_law_parity_groups_points_by_label():
    parity = scaling_plots.law_parity([3.0, 2.5, 2.4], [2.9, 2.6, 2.4], ["G=1", "G=2", "G=2"])
    assert [len(trace.x) for trace in parity.data[:2]] == [1, 2]
    assert list(parity.data[1].y) == [2.5, 2.4]  # measured on y, predicted on x
    with pytest.raises(ValueError, match="shapes"):
        scaling_plots.law_parity([3.0], [2.9, 2.6], ["G=1"])


def test_curves_with_law_draws_each_seeds_phases_then_the_law():
    curves = pd.DataFrame(
        {
            "seed": [0, 0, 0, 1],
            "tokens": [1e5, 2e5, 2.5e5, 2.5e5],
            "val_loss": [2.9, 2.7, 2.6, 2.65],
            "phase": ["stable", "stable", "decayed", "decayed"],
        }
    )
    tokens = np.array([1e5, 2.5e5])
    figure = scaling_plots.curves_with_law(curves, tokens, np.array([2.8, 2.6]), law_name="law", title="t")
    names = [trace.name for trace in figure.data]
    assert names == ["stable phase, seed 0", "after cooldown, seed 0", "after cooldown, seed 1", "law"]
    assert list(figure.data[1].y) == [2.6] and list(figure.data[-1].y) == [2.8, 2.6]
    with pytest.raises(ValueError, match="curves"):
        scaling_plots.curves_with_law(curves.iloc[:0], tokens, tokens, law_name="law", title="t")
    with pytest.raises(ValueError, match="shapes"):
        scaling_plots.curves_with_law(curves, tokens, np.array([2.8]), law_name="law", title="t")
