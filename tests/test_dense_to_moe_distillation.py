"""The MiniLM sparsity fine-tune (ReLU swap, Hoyer penalty, embedding distillation) at a tiny size, and the
experiment's path that converts the fine-tuned model."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from minilm_text import SENTENCES
from torch import nn

from efflab.dense_to_moe.conversion import configure
from efflab.dense_to_moe.moe_layer import DynamicKMoE, Router
from efflab.dense_to_moe.sentence_encoder import distillation_finetune, embed, tokenized_batches
from efflab.dense_to_moe.sparsity import (
    hoyer_of_layers,
    penalty_weight,
    recorded_activations,
    relufy,
    zero_fraction,
)
from efflab.train import TrainConfig

STEPS = 3
WEIGHT = 0.01  # moves the Hoyer value within three steps; distillation still pulls the embeddings back


@pytest.fixture(scope="module")
def finetuned():
    """The dense model, its embeddings, and two fine-tunes on the same batches: penalty weight 0 and WEIGHT."""
    from efflab.models.bert import MiniLMTokenizer, load_minilm

    dense = load_minilm("cpu")
    # The embedding block is frozen (its word table alone holds half of the weights, so half of the optimiser's
    # work); fit skips parameters without gradients, and all six layers, FFNs included, are still trained.
    dense.embeddings.requires_grad_(False)
    batches = tokenized_batches(MiniLMTokenizer(max_length=16), SENTENCES, 2)
    teacher = embed(dense, batches)
    targets = list(teacher.split(2))
    config = TrainConfig(steps=STEPS, lr=1e-4, weight_decay=0.0)
    models, histories = {}, {}
    for weight in (0.0, WEIGHT):
        models[weight] = copy.deepcopy(dense)
        histories[weight] = distillation_finetune(models[weight], batches, targets, weight=weight, config=config)
    return {"dense": dense, "batches": batches, "teacher": teacher, "models": models, "histories": histories}


def _forward_all(model, batches):
    return [model(batch["input_ids"], batch["attention_mask"]) for batch in batches]


@torch.no_grad()
def _mean_hoyer(model, batches) -> float:
    """The penalty term (mean over layers and tokens of H(a)), averaged over the batches."""
    values = []
    for batch in batches:
        with recorded_activations(model) as activations:
            _forward_all(model, [batch])
        values.append(float(hoyer_of_layers(activations)))
    return sum(values) / len(values)


def _cosine(model, batches, teacher) -> float:
    return float((embed(model, batches) * teacher).sum(-1).mean())


def test_every_ffn_is_relu_after_the_finetune(finetuned):
    assert isinstance(finetuned["dense"].layers[0].ffn.activation, nn.GELU)  # the teacher is left alone
    for model in finetuned["models"].values():
        assert all(type(layer.ffn.activation) is nn.ReLU for layer in model.layers)


@torch.no_grad()
def test_first_loss_is_distillation_plus_ramped_hoyer(finetuned):
    from efflab.models.bert import encode

    first, teacher = finetuned["batches"][0], finetuned["teacher"][:2]
    swapped = relufy(copy.deepcopy(finetuned["dense"]))  # both fine-tunes take their first step from this model
    embeddings = encode(swapped, first["input_ids"], first["attention_mask"])
    distillation = F.mse_loss(embeddings, teacher, reduction="sum") / 2  # ||e(x) - e_dense(x)||^2 per sentence
    hoyer = _mean_hoyer(swapped, [first])
    losses = {weight: float(history.loss.iloc[0]) for weight, history in finetuned["histories"].items()}
    assert losses[0.0] == pytest.approx(float(distillation), rel=1e-4)
    expected = float(distillation) + penalty_weight(0, STEPS, WEIGHT) * hoyer
    assert losses[WEIGHT] == pytest.approx(expected, rel=1e-4)
    assert losses[WEIGHT] > losses[0.0] + 0.1  # the penalty is a visible share of the loss, not a rounding


def test_larger_penalty_gives_sparser_activations(finetuned):
    batches, models = finetuned["batches"], finetuned["models"]
    hoyer = {weight: _mean_hoyer(model, batches) for weight, model in models.items()}
    zeros = {
        weight: float(np.mean(zero_fraction(model, lambda m=model: _forward_all(m, batches))))
        for weight, model in models.items()
    }
    assert hoyer[WEIGHT] < 0.9 * hoyer[0.0]
    assert zeros[WEIGHT] > zeros[0.0]


def test_distillation_pulls_the_embeddings_back_to_the_teacher(finetuned):
    batches, teacher = finetuned["batches"], finetuned["teacher"]
    swapped = relufy(copy.deepcopy(finetuned["dense"]))
    after_swap = _cosine(swapped, batches, teacher)  # the ReLU swap alone moves them a long way
    tuned = _cosine(finetuned["models"][WEIGHT], batches, teacher)
    assert tuned > 0.75 and tuned > after_swap + 0.1


def test_tau_one_reproduces_the_finetuned_model(finetuned):
    tuned, batches = finetuned["models"][WEIGHT], finetuned["batches"]
    reference = embed(tuned, batches)
    converted = copy.deepcopy(tuned)
    generator = np.random.default_rng(0)
    torch.manual_seed(0)
    for layer in converted.layers:  # any bijection gives the dense function back; clustering is tested elsewhere
        layer.ffn = DynamicKMoE(layer.ffn, generator.permutation(1536), 96)
        layer.ffn.router = Router(384, 96, 16)
        assert type(layer.ffn.activation) is nn.ReLU
    configure(converted, "dynamic_k", tau=1.0)
    assert torch.allclose(embed(converted, batches), reference, atol=1e-5)


def test_experiment_converts_the_finetuned_minilm(monkeypatch):
    """The experiment's MiniLM task with a fine-tune, on a small random BERT in place of the pretrained one: the
    pipeline is the same, and clustering the pretrained model's 1536 neurons in six layers, twice, would take
    several times as long as the rest of this file."""
    from efflab.dense_to_moe.experiment import DenseToMoEBudget, MiniLMTask, minilm_study
    from efflab.models import bert

    def small_bert(device="cpu"):
        torch.manual_seed(0)
        return bert.MiniLM(bert.BertConfig(n_layer=2, n_head=2, d_model=16, d_ff=48)).to(device).eval()

    monkeypatch.setattr(bert, "load_minilm", small_bert)
    budget = dataclasses.replace(
        DenseToMoEBudget.quick(),
        minilm_train_sentences=4,
        minilm_heldout_sentences=4,
        minilm_max_length=16,
        minilm_experts=8,
        minilm_router_width=4,
        minilm_router_steps=2,
        minilm_taus=(0.0, 0.5, 1.0),
        minilm_ks=(2, 8),
        minilm_finetune_steps=2,
        minilm_finetune_weight=WEIGHT,
    )
    out = minilm_study(MiniLMTask(seed=0, budget=budget))
    tuned = "ReLU + Hoyer + distillation"
    assert list(out["curves"]) == ["no fine-tuning (GELU)", tuned] and "fine-tune" in out["seconds"]
    assert all(type(layer.ffn.activation) is nn.ReLU for layer in out["models"][tuned].layers)
    untouched = out["models"]["no fine-tuning (GELU)"]
    assert all(isinstance(layer.ffn.activation, nn.GELU) for layer in untouched.layers)
    for name, curves in out["curves"].items():
        at_one = curves["dynamic_k"][-1]
        assert at_one["value"] == 1.0 and at_one["mean_k"] == 8
        # the converted model at tau = 1 computes what its dense starting point (fine-tuned or not) computed
        assert at_one["cosine"] == pytest.approx(out["sparse_dense_cosine"][name], abs=1e-5)
    assert out["sparse_dense_cosine"]["no fine-tuning (GELU)"] == pytest.approx(1.0, abs=1e-6)
    assert out["sparse_dense_cosine"][tuned] < 1.0 - 1e-4
