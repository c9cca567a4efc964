import dataclasses

import numpy as np
import pytest
import torch

import efflab
from efflab.data.text import ByteCorpus
from efflab.fine_grained_moe.experiment import GranularityBudget, fit_laws, run_granularity_experiment
from efflab.lm_grid import DENSE, law_parameters, seed_spread
from efflab.models.gpt import GPTConfig, TinyLM, parameters_by_role
from efflab.models.moe import moe_ffn

TINY = dataclasses.replace(
    GranularityBudget.quick(),
    widths=(16, 24),
    granularities=(1, 2),
    n_layer=1,
    block_size=16,
    batch_size=8,
    steps=6,
    warmup_steps=1,
    eval_every=2,
    eval_batches=1,
    spread_width=16,
    spread_granularities=(DENSE, 2),
    n_seeds=2,
    fit_from_step=2,
)


@pytest.fixture(scope="module")
def corpus():
    text = ("def add(a, b):\n    return a + b\n\n" * 200).encode()
    data = torch.tensor(list(text), dtype=torch.uint8)
    return ByteCorpus(train=data[:5000], val=data[5000:])


@pytest.fixture(scope="module")
def results(corpus):
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    return run_granularity_experiment(run, corpus, TINY, progress=False)


def test_law_parameters_count_attention_and_every_expert():
    config = GPTConfig(n_layer=2, n_head=2, d_model=16)
    for expansion, factory in ((1, None), (4, moe_ffn(expansion=4, granularity=2))):
        model = TinyLM(config, factory)
        roles = parameters_by_role(model)
        counted = sum(p.numel() for p in roles["attention"])
        ffn_matrices = ("ffn.up", "ffn.down", "ffn.up.weight", "ffn.down.weight")
        counted += sum(p.numel() for name, p in model.named_parameters() if name.endswith(ffn_matrices))
        assert law_parameters(config, expansion) == counted


def test_grid_covers_every_width_granularity_and_seed(results):
    specs = TINY.specs(0)
    assert len(specs) == 2 * 3 + 2 + 1  # widths x (dense + G), one more seed of two configs, token choice
    assert len(results.runs) == len(specs)
    assert set(results.curves.step) == {2, 4, 6}
    assert (results.runs.val_loss < np.log(256)).all()
    moe_rows = results.runs[results.runs.granularity != DENSE]
    assert (moe_rows.params > moe_rows.active_params).all()  # E = 8 FFNs' worth of experts, one FFN active


def test_routers_are_recorded_for_moe_runs_only(results):
    snapshot = results.routers[("MoE G=2", 16, 0)]
    assert snapshot.load.shape == (1, 8 * 2)
    np.testing.assert_allclose(snapshot.load.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(snapshot.load, 1 / 16, rtol=1e-6)  # expert choice: balanced by construction
    np.testing.assert_allclose(snapshot.experts_per_token.sum(axis=1), 1.0)
    token_choice = results.routers[("MoE G=2 (token choice)", 16, 0)]
    assert token_choice.experts_per_token[0, 2] == pytest.approx(1.0)  # dropless top-2: exactly two each
    assert not any(label == "dense" for label, _, _ in results.routers)


def test_seed_spread_and_fits_have_the_expected_shapes(results):
    spread = seed_spread(results)
    assert set(spread) == {"dense", "MoE G=2"}
    assert all(values.shape == (2, 3) for values in spread.values())
    fits = fit_laws(results, n_starts=2)
    assert fits.n_moe_points == (2 * 2 + 1) * 3  # (2 widths x 2 G + a second seed) x 3 evaluations
    assert set(fits.moe.coefficients) == {"a", "alpha", "b", "beta", "g", "gamma", "c"}


def test_budget_validation():
    with pytest.raises(ValueError, match="spread_width"):
        dataclasses.replace(TINY, spread_width=99)
    with pytest.raises(ValueError, match="spread_granularities"):
        dataclasses.replace(TINY, spread_granularities=(8,))
    with pytest.raises(ValueError, match="eval_every"):
        dataclasses.replace(TINY, eval_every=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        dataclasses.replace(TINY, warmup_steps=7)
    assert GranularityBudget.for_run(efflab.setup("quick", "cpu", 0, verbose=False)) == GranularityBudget.quick()
