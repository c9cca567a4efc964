import sysconfig
from pathlib import Path

import pytest
import torch

from efflab.data import text
from efflab.data.text import EXCLUDED_FOLDERS, ByteCorpus, load_corpus, stdlib_source_files

SMALL = 600_000  # all of the documentation (~0.47 MB) and the first source files: quick to build


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep every test away from the repository's cache."""
    monkeypatch.setenv("EFFLAB_CACHE", str(tmp_path / "env-cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(SMALL, cache_directory=tmp_path_factory.mktemp("cache"))


def numbered_corpus(n: int = 200) -> ByteCorpus:
    """Bytes 0, 1, 2, ...: a window's first byte is its offset, so each batch row reveals where it was cut."""
    return ByteCorpus(train=torch.arange(n, dtype=torch.uint8), val=torch.arange(50, dtype=torch.uint8))


def test_sizes_types_and_content(corpus):
    assert corpus.train.dtype == torch.uint8 and corpus.val.dtype == torch.uint8
    assert len(corpus.train) + len(corpus.val) == SMALL
    assert abs(len(corpus.val) - 0.1 * SMALL) <= 2
    assert corpus.vocab_size == 256
    train_text, val_text = corpus.decode(corpus.train), corpus.decode(corpus.val)
    assert "assert" in train_text and "def " in train_text  # documentation and source
    assert "def " in val_text and "The " in val_text  # validation holds the same mix


def test_targets_are_inputs_shifted_by_one():
    corpus = numbered_corpus()
    x, y = corpus.get_batch("train", 64, 10, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 10) and x.dtype == y.dtype == torch.int64
    offsets = x[:, :1]
    assert torch.equal(x, offsets + torch.arange(10))
    assert torch.equal(y, offsets + 1 + torch.arange(10))
    assert y.max() <= 199


def test_windows_reach_both_ends_and_stay_in_bounds():
    corpus = numbered_corpus(12)
    x, y = corpus.get_batch("train", 500, 5, generator=torch.Generator().manual_seed(1))
    assert set(x[:, 0].tolist()) == set(range(12 - 5))
    x, y = corpus.get_batch("train", 3, 11, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[0], torch.arange(11)) and torch.equal(y[0], torch.arange(1, 12))


def test_real_batches_are_windows_of_the_split(corpus):
    x, y = corpus.get_batch("val", 4, 16, generator=torch.Generator().manual_seed(3))
    windows = corpus.val.long().unfold(0, 17, 1)
    for row in torch.cat([x, y[:, -1:]], dim=1):
        assert (windows == row).all(dim=1).any()


def test_same_generator_seed_same_batch(corpus):
    def batch(seed):
        return corpus.get_batch("train", 8, 32, generator=torch.Generator().manual_seed(seed))

    assert all(torch.equal(a, b) for a, b in zip(batch(7), batch(7), strict=True))
    assert not torch.equal(batch(7)[0], batch(8)[0])


def test_encode_decode_round_trip():
    for sample in ["", "def f(x):\n    return x", "naïve café — 🐍"]:
        tokens = ByteCorpus.encode(sample)
        assert tokens.dtype == torch.int64
        assert ByteCorpus.decode(tokens) == sample
        assert ByteCorpus.decode(tokens.tolist()) == sample
    assert ByteCorpus.decode(ByteCorpus.encode("é")[:1]) == "\ufffd"


def test_stdlib_files_skip_tests_and_packages():
    files = stdlib_source_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    relative = [path.relative_to(root).as_posix() for path in files]
    assert "os.py" in relative and relative == sorted(relative)
    assert not any(set(path.relative_to(root).parts) & EXCLUDED_FOLDERS for path in files)


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    first = load_corpus(20_000, cache_directory=tmp_path)

    def fail(max_bytes):
        raise AssertionError("the corpus was rebuilt although it was cached")

    monkeypatch.setattr(text, "_build_corpus_parts", fail)
    second = load_corpus(20_000, cache_directory=tmp_path)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)


def test_a_corrupt_cache_file_is_rebuilt(tmp_path):
    first = load_corpus(20_000, cache_directory=tmp_path)
    (cache_file,) = tmp_path.glob("*.pt")
    cache_file.write_bytes(b"this is not a torch file")
    second = load_corpus(20_000, cache_directory=tmp_path)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert set(torch.load(cache_file, weights_only=True)["value"]) == {"docs", "source"}


def test_cache_key_and_location(tmp_path):
    load_corpus(20_000)
    load_corpus(30_000)
    assert len(list((tmp_path / "env-cache").glob("byte_corpus-*.pt"))) == 2


@pytest.mark.parametrize(
    ("split", "batch_size", "block_size", "parameter"),
    [
        ("train", 2, 200, "block_size"),
        ("train", 2, 0, "block_size"),
        ("val", 2, 50, "block_size"),
        ("train", 0, 4, "batch_size"),
        ("test", 2, 4, "split"),
    ],
)
def test_bad_batch_settings_name_the_parameter(split, batch_size, block_size, parameter):
    with pytest.raises(ValueError, match=parameter):
        numbered_corpus().get_batch(split, batch_size, block_size, generator=torch.Generator())


def test_block_size_error_names_the_largest_allowed_value():
    with pytest.raises(ValueError, match=r"block_size=200 .*\[1, 199\]"):
        numbered_corpus().get_batch("train", 2, 200, generator=torch.Generator())


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": 10}, "max_bytes"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_corpus_settings_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        load_corpus(**kwargs)


def test_a_cached_corpus_of_the_wrong_dtype_is_rebuilt(tmp_path):
    first = load_corpus(20_000, cache_directory=tmp_path)
    (cache_file,) = tmp_path.glob("*.pt")
    entry = torch.load(cache_file, weights_only=True)
    entry["value"] = {name: part.float() for name, part in entry["value"].items()}
    entry["schema"] = [
        "dict",
        {name: ["tensor", "torch.float32", list(part.shape)] for name, part in entry["value"].items()},
    ]
    torch.save(entry, cache_file)
    second = load_corpus(20_000, cache_directory=tmp_path)
    assert second.train.dtype == torch.uint8 and torch.equal(first.train, second.train)
