"""Offline English sentences: filters, the fixed split, seeded sampling, validation."""

import pytest

from efflab.data import sentences
from efflab.data.sentences import available, load_sentences


def test_splits_are_large_disjoint_and_clean():
    train = load_sentences("train", available("train"))
    heldout = load_sentences("heldout", available("heldout"))
    assert len(train) >= 5000 and len(heldout) >= 1000
    assert not {s.lower() for s in train} & {s.lower() for s in heldout}
    assert len({s.lower() for s in train}) == len(train)
    for s in train[:2000] + heldout[:500]:
        assert sentences.is_good_sentence(s), s
        assert s == " ".join(s.split()), s


def test_heldout_is_about_one_in_five():
    fraction = available("heldout") / (available("heldout") + available("train"))
    assert 0.15 < fraction < 0.25


def test_sampling_is_seeded_and_a_smaller_count_is_a_prefix():
    assert load_sentences("train", 50, seed=3) == load_sentences("train", 50, seed=3)
    assert load_sentences("train", 20, seed=3) == load_sentences("train", 50, seed=3)[:20]
    assert load_sentences("train", 50, seed=3) != load_sentences("train", 50, seed=4)
    assert len(set(load_sentences("heldout", 300, seed=0))) == 300


def test_paragraphs_drop_code_and_headings():
    text = (
        "The title\n*********\n\nFirst sentence here.  Second\none here.\n\n   x = 1\n   y = 2\n\n1. Listed item."
    )
    assert sentences.paragraphs(text) == ["First sentence here.  Second one here.", "Listed item."]


def test_sentence_splitting_respects_abbreviations_and_quotes():
    text = "Use a list, e.g. Foo or Bar,  here. It is ‘special.’  Then “quoted” words follow. Done!"
    assert sentences.split_sentences(text) == [
        "Use a list, e.g. Foo or Bar, here.",
        "It is ‘special.’",
        "Then “quoted” words follow.",
        "Done!",
    ]


@pytest.mark.parametrize(
    "sentence, good",
    [
        ("This sentence is a perfectly ordinary English sentence.", True),
        ("too short.", False),
        ("this one does not start with a capital letter at all.", False),
        ("This one has no full stop at the end of it anywhere", False),
        ("Call f(x, y[0] when the value of x is known to be positive.", False),
        ("The value 0x1f2e3d4c5b6a 0x99887766 0x12345678 is printed here.", False),
        ("Compute the result # and keep a comment in the middle of it.", False),
    ],
)
def test_sentence_filter(sentence, good):
    assert sentences.is_good_sentence(sentence) is good


def test_extraction_splits_by_hash_and_removes_repeats():
    texts = [
        "The quick brown fox jumps over the lazy dog again.",
        "The quick  brown fox jumps over the LAZY dog again.",
    ]
    result = sentences.extract_sentences(texts)
    assert sum(len(v) for v in result.values()) == 1
    again = sentences.extract_sentences(texts[::-1])
    assert [len(result[s]) for s in sentences.SPLITS] == [len(again[s]) for s in sentences.SPLITS]


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="split"):
        load_sentences("validation", 10)
    with pytest.raises(ValueError, match="count"):
        load_sentences("train", 0)
    with pytest.raises(ValueError, match="count"):
        load_sentences("train", -5)
    with pytest.raises(ValueError, match="count"):
        load_sentences("heldout", available("heldout") + 1)
    with pytest.raises(ValueError, match="count"):
        load_sentences("train", 2.5)
    with pytest.raises(ValueError, match="seed"):
        load_sentences("train", 10, seed=-1)
    with pytest.raises(ValueError, match="split"):
        available("test")
