import dataclasses
import json
import math

import pytest
import torch

import efflab
from efflab.data.text import ByteCorpus, unigram_loss
from efflab.first_steps import plots as first_plots
from efflab.first_steps.experiment import (
    UNIFORM_LOSS,
    ByteLMBudget,
    findings,
    paper_rows,
    run_experiment,
    temperature_table,
    train_byte_lm,
)
from efflab.train import language_model_loss


@pytest.fixture(scope="module")
def budget():
    return dataclasses.replace(
        ByteLMBudget.quick(),
        d_model=32,
        n_layer=1,
        n_head=2,
        block_size=16,
        batch_size=8,
        steps=20,
        warmup_steps=2,
        eval_every=10,
    )


def test_budget_follows_the_run_mode():
    quick = efflab.setup("quick", "cpu", 0, verbose=False)
    full = efflab.setup("full", "cpu", 0, verbose=False)
    assert ByteLMBudget.for_run(quick) == ByteLMBudget.quick()
    assert ByteLMBudget.for_run(full).d_model > ByteLMBudget.quick().d_model


def test_unigram_loss_matches_a_hand_computation():
    corpus = ByteCorpus(
        train=torch.tensor([97, 97, 98], dtype=torch.uint8), val=torch.tensor([97], dtype=torch.uint8)
    )
    # add-one smoothing: p(a) = (2 + 1) / (3 + 256)
    assert unigram_loss(corpus) == pytest.approx(-math.log(3 / 259))


def test_training_beats_uniform_and_is_reproducible(corpus, budget):
    run = efflab.setup("quick", "cpu", 3, verbose=False)
    model, history = train_byte_lm(run, corpus, budget)
    again, _ = train_byte_lm(run, corpus, budget)
    assert len(history) == budget.steps and history.val_loss.notna().sum() == 2
    assert history.val_loss.dropna().iloc[-1] < UNIFORM_LOSS
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    scored = language_model_loss(model, corpus, batches=2, batch_size=budget.batch_size, seed=3)
    assert set(scored) == {"val_loss"} and scored["val_loss"] > 0


def test_temperature_table_is_consistent(corpus, budget):
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    model, _ = train_byte_lm(run, corpus, dataclasses.replace(budget, steps=5, warmup_steps=0))
    table = temperature_table(model, corpus, "def ", (0.2, 1.0, 5.0), sample_length=12)
    assert table.probabilities.shape == (3, 256)
    assert torch.allclose(table.probabilities.sum(dim=1), torch.ones(3))
    peaks = table.probabilities.max(dim=1).values
    assert peaks[0] >= peaks[1] >= peaks[2]  # colder is sharper
    assert all(len(sample.encode("utf-8", errors="surrogatepass")) >= 1 for sample in table.samples)
    probabilities, sample = table.at(1.0)
    assert torch.equal(probabilities, table.probabilities[1]) and sample == table.samples[1]
    with pytest.raises(ValueError, match="temperature=0.7"):
        table.at(0.7)
    with pytest.raises(ValueError, match="prompt"):
        temperature_table(model, corpus, "", (1.0,))
    with pytest.raises(ValueError, match="temperature"):
        temperature_table(model, corpus, "x", (0.0,))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("d_model", 0),
        ("n_layer", 1.5),
        ("n_head", 3),  # 128 is not a multiple of 3
        ("block_size", -1),
        ("batch_size", 0),
        ("steps", 0),
        ("lr", float("nan")),
        ("lr", -1e-3),
        ("warmup_steps", 1000),
        ("eval_every", 0),
        ("eval_batches", 0),
        ("prompt", ""),
        ("temperatures", ()),
        ("temperatures", (1.0, float("inf"))),
        ("sample_length", 0),
    ],
)
def test_every_budget_field_is_validated(field, value):
    with pytest.raises(ValueError, match=field if field != "n_head" else "d_model"):
        dataclasses.replace(ByteLMBudget.quick(), **{field: value})


def test_the_experiment_keeps_the_contract(corpus, budget):
    run = efflab.setup("quick", "cpu", 0, verbose=False)
    small = dataclasses.replace(budget, temperatures=(0.5, 2.0), sample_length=8)
    result = run_experiment(run, small, corpus=corpus)
    summary = result.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["final_val_loss"] == pytest.approx(result.history.val_loss.dropna().iloc[-1])
    table = paper_rows(summary, None)
    assert list(table.index) == [
        "validation loss vs uniform (nats/byte)",
        "validation loss vs unigram (nats/byte)",
    ]
    assert table.iloc[0, 0] == round(UNIFORM_LOSS, 3) and (table.iloc[:, 2] == "n/a").all()
    assert "ByteLMBudget(" in small.describe()
    playground = first_plots.playground(result)
    first = playground.status.value
    playground.controls["temperature"].value = 2.0
    assert playground.status.value != first and playground.renders == 2
    assert len(first_plots.loss_curve(result).layout.shapes) == 2  # the two reference lines


@pytest.mark.parametrize(
    ("loss", "phrase"), [(1.0, "uses context"), (4.0, "byte frequencies"), (6.0, "has not learned")]
)
def test_findings_name_where_the_loss_lies(loss, phrase):
    summary = {
        "final_val_loss": loss,
        "unigram_val_loss": 3.0,
        "peak_probability_coldest": 0.9,
        "peak_probability_hottest": 0.2,
        "train_seconds": 10.0,
        "steps": 100,
        "parameters": 1000,
    }
    assert phrase in findings(summary)
