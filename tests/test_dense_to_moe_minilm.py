import html
import re

import numpy as np
import pytest
import torch
from minilm_text import SENTENCES

from efflab.dense_to_moe.conversion import configure
from efflab.dense_to_moe.cost import cost_model
from efflab.dense_to_moe.moe_layer import DynamicKMoE, Router
from efflab.dense_to_moe.sentence_encoder import embed, encoder_sweep, nearest_neighbours, tokenized_batches


@pytest.fixture(scope="module")
def minilm():
    from efflab.models.bert import MiniLMTokenizer, load_minilm

    dense = load_minilm("cpu")
    tokenizer = MiniLMTokenizer(max_length=32)
    batches = tokenized_batches(tokenizer, SENTENCES, 2)
    reference = embed(dense, batches)
    generator = np.random.default_rng(0)
    torch.manual_seed(0)
    for layer in dense.layers:  # any bijection gives the dense function back; the clustering is tested elsewhere
        moe = DynamicKMoE(layer.ffn, generator.permutation(1536), 96)
        moe.router = Router(384, 96, 16)
        layer.ffn = moe
    return dense, batches, reference


def test_tau_one_reproduces_the_dense_minilm(minilm):
    model, batches, reference = minilm
    cost = cost_model(model)
    rows = encoder_sweep(model, batches, reference, cost, "dynamic_k", [0.0, 1.0])
    configure(model, "dynamic_k", tau=1.0)
    try:
        assert torch.allclose(embed(model, batches), reference, atol=1e-5)
    finally:
        configure(model, "dense")
    assert rows[1]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rows[1]["neighbour_agreement"] == 1.0
    assert rows[1]["mean_k"] == 96
    assert rows[0]["mean_k"] >= 1 and rows[0]["relative_flops"] < rows[1]["relative_flops"]
    router_share = sum(cost.router_flops) / sum(cost.dense_ffn_flops)
    assert rows[1]["relative_flops"] == pytest.approx(1.0 + router_share)


def test_nearest_neighbours_skip_self():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    assert nearest_neighbours(e).tolist() == [1, 0, 1]


@pytest.mark.parametrize(("rule", "value"), [("dynamic_k", 0.5), ("top_k", 8)])
def test_every_word_is_coloured_by_its_expert_count(minilm, rule, value):
    from efflab.dense_to_moe.plots import words_html
    from efflab.dense_to_moe.sentence_encoder import word_experts
    from efflab.models.bert import MiniLMTokenizer

    model = minilm[0]
    sentence = "Tokenization splits 'unbelievable' words into pieces."
    words = word_experts(model, MiniLMTokenizer(max_length=32), sentence, rule, value)
    # WordPieces are joined back into the lower-cased words; [CLS] and [SEP] are left out
    assert [word for word, _ in words] == re.findall(r"\w+|[^\w\s]", sentence.lower())
    assert all(1 <= k <= 96 for _, k in words)
    if rule == "top_k":
        assert all(k == value for _, k in words)
    shown = words_html(words, 96).data
    assert all(f">{html.escape(word)}</span>" in shown for word, _ in words)
