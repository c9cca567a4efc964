import dataclasses

import numpy as np
import pytest
import torch

import efflab
from efflab import lm_grid
from efflab.lm_grid import DENSE, GridBudget, RunSpec, train_specs
from efflab.train import TrainConfig, language_model_loss, make_optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyGrid(GridBudget):
    def configurations(self):
        return (DENSE, 4)

    def spread_configurations(self):
        return (DENSE,)

    def spec(self, width, configuration, seed):
        if configuration == DENSE:
            return RunSpec(width, DENSE, seed)
        return RunSpec(width, 1, seed, "token_choice", expansion=configuration)


TINY = TinyGrid(
    widths=(16, 24),
    n_layer=1,
    n_head=2,
    block_size=16,
    batch_size=4,
    steps=8,
    eval_every=4,
    eval_batches=1,
    lr=3e-3,
    warmup_steps=2,
    spread_width=16,
    n_seeds=2,
    checkpoints=(4, 8),
)


@pytest.fixture(scope="module")
def run():
    return efflab.setup("quick", "cpu", 0, verbose=False)


def test_warmup_stable_decay_sequences_exactly():
    np.testing.assert_array_equal(lm_grid.stable_factors(6, 2), [0.5, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(lm_grid.cooldown_factors(3), [0.75, 0.5, 0.25])
    np.testing.assert_array_equal(lm_grid.wsd_factors(6, 2, 3), [0.5, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert lm_grid.cooldown_length(40, 0.2) == 10  # the decay is the last 20 % of the branch: 10 of 50 steps
    assert lm_grid.branch_plan((8, 16), 0.2) == [(8, 2), (16, 4)]
    assert TINY.branches() == [(4, 1), (8, 2)] and TINY.steps_per_run() == 8 + 1 + 2


def test_branched_run_follows_the_stable_phase_then_each_cooldown(monkeypatch, corpus):
    rates = []
    original = lm_grid.optimiser_step

    def recording(model, optimizer, batch, lr, device):
        rates.append(lr)
        original(model, optimizer, batch, lr, device)

    monkeypatch.setattr(lm_grid, "optimiser_step", recording)
    _, evaluations = lm_grid.train_branched(RunSpec(16, DENSE, 0), TINY, corpus, "cpu")
    stable = lm_grid.stable_factors(8, 2)
    expected = [*stable[:4], *lm_grid.cooldown_factors(1), *stable[4:], *lm_grid.cooldown_factors(2)]
    np.testing.assert_allclose(rates, TINY.lr * np.array(expected), rtol=0, atol=0)
    assert [(e["phase"], e["step"]) for e in evaluations] == [
        ("stable", 4),
        ("decayed", 5),
        ("stable", 8),
        ("decayed", 10),
    ]


def test_a_branch_is_exactly_the_decayed_run_of_its_length(corpus):
    spec = RunSpec(16, 1, 0, "token_choice", expansion=4)
    _, evaluations = lm_grid.train_branched(spec, TINY, corpus, "cpu")
    branched = next(e["val_loss"] for e in evaluations if e["phase"] == "decayed" and e["step"] == 5)
    # the same run trained on its own: warmup, 4 stable steps, a 1-step cooldown, one optimiser, one generator
    model = lm_grid.build_model(spec, TINY)
    optimizer = make_optimizer(model, TrainConfig(steps=1, lr=TINY.lr, weight_decay=0.1))
    generator = torch.Generator().manual_seed(spec.seed)
    for factor in lm_grid.wsd_factors(4, 2, 1):
        batch = corpus.get_batch("train", TINY.batch_size, TINY.block_size, generator=generator)
        lm_grid.optimiser_step(model, optimizer, batch, TINY.lr * factor, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        alone = language_model_loss(model, corpus, batches=TINY.eval_batches, batch_size=TINY.batch_size)
    assert branched == alone["val_loss"]


def test_same_numbers_inline_and_in_worker_processes(run, corpus):
    specs = TINY.specs(0)[:2]
    inline = train_specs(run, corpus, TINY, specs, progress=False, backend="inline")
    pooled = train_specs(run, corpus, TINY, specs, progress=False, backend="processes")
    np.testing.assert_array_equal(inline.curves.val_loss, pooled.curves.val_loss)
    assert list(inline.runs.label) == ["dense", "MoE E=4"]
    assert set(inline.law_points().phase) == {"decayed"} and len(inline.law_points()) == 2 * 2
    assert ("MoE E=4", 16, 0) in pooled.routers and ("dense", 16, 0) not in pooled.routers


def test_specs_cover_the_grid_then_the_extra_seeds():
    specs = TINY.specs(3)
    assert [(s.width, s.label, s.seed) for s in specs] == [
        (16, "dense", 3),
        (16, "MoE E=4", 3),
        (24, "dense", 3),
        (24, "MoE E=4", 3),
        (16, "dense", 4),
    ]


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"checkpoints": (8, 4)}, "checkpoints"),
        ({"checkpoints": (4,)}, "checkpoints"),  # the last checkpoint must end the stable phase
        ({"checkpoints": (1, 8)}, "checkpoints"),  # before the warmup ends
        ({"checkpoints": ()}, "checkpoints"),
        ({"spread_width": 99}, "spread_width"),
        ({"widths": (15,)}, "widths"),
        ({"cooldown_fraction": 1.0}, "cooldown_fraction"),
        ({"lr": float("nan")}, "lr"),
        ({"workers": 0}, "workers"),
    ],
)
def test_budget_validation(changes, name):
    with pytest.raises(ValueError, match=name):
        dataclasses.replace(TINY, **changes)
