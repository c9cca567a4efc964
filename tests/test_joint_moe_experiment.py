import dataclasses

import numpy as np
import pytest
import torch

import efflab
from efflab.data.text import ByteCorpus
from efflab.joint_moe.experiment import ExpertCountBudget, fit_joint_law, law_points, run_expert_count_experiment
from efflab.lm_grid import seed_spread, train_specs

TINY = dataclasses.replace(
    ExpertCountBudget.quick(),
    widths=(16, 24),
    expert_counts=(2, 4),
    n_layer=1,
    block_size=16,
    batch_size=8,
    steps=6,
    warmup_steps=1,
    eval_every=2,
    eval_batches=1,
    spread_width=16,
    spread_experts=(1, 4),
    n_seeds=2,
    fit_from_step=2,
)


@pytest.fixture(scope="module")
def corpus():
    text = ("def add(a, b):\n    return a + b\n\n" * 200).encode()
    data = torch.tensor(list(text), dtype=torch.uint8)
    return ByteCorpus(train=data[:5000], val=data[5000:])


@pytest.fixture(scope="module")
def run():
    return efflab.setup("quick", "cpu", 0, verbose=False)


@pytest.fixture(scope="module")
def results(run, corpus):
    return run_expert_count_experiment(run, corpus, TINY, progress=False)


def test_grid_covers_every_width_and_expert_count_then_the_extra_seeds():
    specs = TINY.specs(0)
    assert len(specs) == 2 * 3 + 2  # widths x (dense + 2 expert counts), one more seed of two configurations
    assert [spec.label for spec in specs[:3]] == ["dense", "MoE E=2", "MoE E=4"]
    assert all(spec.routing == "token_choice" and spec.granularity == 1 for spec in specs if spec.expansion)


def test_runs_have_matched_active_parameters_and_e_times_the_ffn(results):
    runs = results.runs
    assert len(runs) == len(TINY.specs(0))
    assert set(runs.expansion) == {1, 2, 4}
    for width, group in runs.groupby("width"):
        assert group.active_params.nunique() == 1  # every model at a width uses the same parameters per token
        ffn = TINY.n_layer * 2 * width * 4 * width
        np.testing.assert_array_equal(group.params - group.active_params, (group.expansion - 1) * ffn)
    assert (runs.val_loss < np.log(256)).all()


def test_token_choice_top_one_sends_every_token_to_exactly_one_expert(results):
    snapshot = results.routers[("MoE E=4", 16, 0)]
    assert snapshot.load.shape == (1, 4)
    np.testing.assert_allclose(snapshot.load.sum(axis=1), 1.0, rtol=1e-6)
    assert snapshot.experts_per_token[0, 1] == pytest.approx(1.0)  # dropless: no token skipped, none doubled
    assert not any(label == "dense" for label, _, _ in results.routers)


def test_seed_spread_and_fit(results):
    spread = seed_spread(results)
    assert list(spread) == ["dense", "MoE E=4"]
    assert all(values.shape == (2, 3) for values in spread.values())
    fit = fit_joint_law(results, n_starts=2)
    assert fit.n_points == len(results.runs) * 3 and fit.expert_counts == (1, 2, 4)
    assert set(fit.fit.coefficients) == {"a", "alpha", "delta", "gamma", "b", "beta", "omega", "zeta", "c"}
    points = law_points(results)
    assert {len(values) for values in points.values()} == {fit.n_points}
    assert np.all(np.isfinite(fit.fit.predict(points)))


def test_same_seed_same_losses(run, corpus):
    spec = TINY.specs(0)[2]
    first, second = (train_specs(run, corpus, TINY, [spec], progress=False) for _ in range(2))
    np.testing.assert_array_equal(first.curves.val_loss, second.curves.val_loss)


def test_budget_validation():
    with pytest.raises(ValueError, match="spread_width"):
        dataclasses.replace(TINY, spread_width=99)
    with pytest.raises(ValueError, match="spread_experts"):
        dataclasses.replace(TINY, spread_experts=(8,))
    with pytest.raises(ValueError, match="expert_counts"):
        dataclasses.replace(TINY, expert_counts=(1, 2))
    with pytest.raises(ValueError, match="expert_counts"):
        dataclasses.replace(TINY, expert_counts=())
    with pytest.raises(ValueError, match="fit_from_step"):
        dataclasses.replace(TINY, fit_from_step=7)
    assert ExpertCountBudget.for_run(efflab.setup("quick", "cpu", 0, verbose=False)) == ExpertCountBudget.quick()
    assert ExpertCountBudget.full().expert_counts[-1] > ExpertCountBudget.quick().expert_counts[-1]
