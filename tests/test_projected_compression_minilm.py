"""The MiniLM study end to end at a tiny size: both methods get the same budget and end at the same size, PC starts
as the hard-pruned encoder, and the scores are what they claim to be."""

import pytest
import torch

from efflab.projected_compression import sentence_encoder
from efflab.projected_compression.sentence_encoder import (
    METHODS,
    EncoderBudget,
    compressed_top,
    prepared_data,
    run_encoder_study,
    score,
)
from efflab.runtime import setup

TINY = EncoderBudget(
    layers=(5,),
    keep_ffn=0.25,
    train_sentences=8,
    heldout_sentences=6,
    max_length=12,
    steps=2,
    batch_size=4,
    seeds=2,
)
D, F_KEPT = 384, 384  # MiniLM's residual width, and a quarter of its FFN width 1536


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from efflab.data.sentences import available

    available("train")  # the sentence pool is read once from the shared cache; the study's entries go elsewhere
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EFFLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("EFFLAB_EXECUTOR", "inline")
        result = run_encoder_study(setup("quick", "cpu", 0, verbose=False), TINY)
        yield result, prepared_data(TINY)


def test_both_methods_get_the_same_steps_and_sentences(study):
    result, _ = study
    for method in METHODS:
        outcomes = result.runs[method]
        assert len(outcomes) == TINY.seeds
        for outcome in outcomes:
            assert outcome["steps"] == len(outcome["train_loss"]) == TINY.steps
            assert outcome["sentences"] == TINY.steps * TINY.batch_size


def test_merged_and_pruned_encoders_have_the_target_width_and_the_same_size(study):
    result, _ = study
    summary = result.summary()
    assert (summary["d_ff"], summary["target_d_ff"]) == (1536, F_KEPT)
    # one post-norm BERT layer with FFN width F_KEPT: q, k, v, out; two layer norms; up and down, all with biases
    layer = 4 * (D * D + D) + 2 * 2 * D + (F_KEPT * D + F_KEPT) + (D * F_KEPT + D)
    for method in METHODS:
        for outcome in result.runs[method]:
            assert outcome["ffn_widths"] == [F_KEPT]
            assert outcome["parameters"] == layer
    assert summary["parameter_match"] and summary["merge_error"] < 1e-5


def test_before_training_pc_is_the_hard_pruned_encoder(study):
    _, data = study
    projected = compressed_top(data, TINY, "projected compression")
    pruned = compressed_top(data, TINY, "pruned, no retrain")
    trainable = {name for name, p in projected.named_parameters() if p.requires_grad}
    assert trainable and all(".p_" in name or ".a_" in name for name in trainable)
    heldout = data["heldout"]
    with torch.no_grad():
        gap = (projected(heldout["states"], heldout["mask"]) - pruned(heldout["states"], heldout["mask"])).abs()
    assert gap.max() < 1e-6
    assert score(projected, heldout) == pytest.approx(score(pruned, heldout), abs=1e-6)


def test_scores_lie_in_their_ranges_and_the_uncompressed_top_scores_perfectly(study):
    result, _ = study
    scores = [result.uncompressed, result.no_retrain, *(o for m in METHODS for o in result.runs[m])]
    for values in scores:
        assert -1.0 <= values["cosine"] <= 1.0 + 1e-6
        assert 0.0 <= values["neighbours"] <= 1.0
        assert (values["neighbours"] * TINY.heldout_sentences) == pytest.approx(
            round(values["neighbours"] * TINY.heldout_sentences)
        )
    assert result.uncompressed["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result.uncompressed["neighbours"] == 1.0
    assert result.no_retrain["cosine"] < result.uncompressed["cosine"]
    # two steps of distillation moved the compressed encoders away from where they started
    for method in METHODS:
        assert all(o["cosine"] != result.no_retrain["cosine"] for o in result.runs[method])


def _tensors(value) -> list:
    return [t for v in value.values() for t in _tensors(v)] if isinstance(value, dict) else [value]


def test_the_states_are_prepared_on_the_given_device_and_held_on_the_cpu(study, monkeypatch):
    from efflab.models import bert

    _, cached_data = study
    devices, keys = [], []
    load = bert.load_minilm
    monkeypatch.setattr(bert, "load_minilm", lambda device: devices.append(device) or load(device))
    monkeypatch.setattr(sentence_encoder, "cached", lambda name, key, build: keys.append(key) or build())
    data = prepared_data(TINY, "cpu")
    assert devices == ["cpu"] and "device" not in keys[0]
    assert all(t.device.type == "cpu" for t in _tensors(data))
    assert all(torch.equal(a, b) for a, b in zip(_tensors(data), _tensors(cached_data), strict=True))
    # prepared on another device, the entry is keyed by its device type (its numbers differ in the last bits)
    monkeypatch.setattr(sentence_encoder, "cached", lambda name, key, build: keys.append(key))
    prepared_data(TINY, torch.device("cuda", 0))
    assert keys[-1] == {**keys[0], "device": "cuda"}
