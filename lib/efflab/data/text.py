"""A byte-level text corpus made from Python itself: its bundled documentation and its standard library source.

The language-model notebooks (MoE scaling, muP, relative learning rates, dense-to-MoE) need a few megabytes of real
text, and nothing may be downloaded. Every Python installation carries two such texts:

* the help pages behind ``help("with")``, ``help("LOOPING")`` and friends, stored as English prose in
  ``pydoc_data.topics.topics``; and
* the standard library's own ``.py`` files, a large body of carefully written code and docstrings.

We take the documentation first (sorted by topic name), then source files, skipping test suites, IDLE's tests,
installed third-party packages, ``pydoc_data`` (whose source merely repeats the docs) and ``encodings`` (codec
tables: walls of code-point literals, not code anyone writes), and stop at ``max_bytes``. The files are taken in
the order of a hash of their path, a fixed shuffle: in alphabetical order a capped corpus would be all
``asyncio`` and ``email`` and the validation tail one odd package, while the shuffle samples the whole library.
The exact bytes therefore depend on the Python version (3.11 and 3.12 ship slightly
different libraries): results are reproducible for one interpreter, and comparable, not identical, across them.

The model's vocabulary is the 256 possible byte values: no tokenizer to train, store or explain, and any string
can be encoded. UTF-8 spells a non-ASCII character as several bytes, so a model may emit an incomplete
character; ``decode`` shows such bytes as the replacement character "\ufffd" instead of failing.

The validation split is the last ``val_fraction`` of the documentation *and* the last ``val_fraction`` of the
source, so both splits hold the same mix of prose and code. Building reads a few thousand files, so the bytes
are cached on disk (``efflab.cache``), keyed by ``max_bytes`` and the Python version.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from efflab.cache import cached
from efflab.validation import check_choice, check_fraction, check_int

DEFAULT_MAX_BYTES = 4_000_000
EXCLUDED_FOLDERS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "pydoc_data", "encodings", "__pycache__"}
)
DOCUMENT_SEPARATOR = b"\n\n"
CACHE_FORMAT = 2  # bump when the way the corpus is built changes, so old cache entries are not reused


@dataclass(frozen=True, eq=False)
class ByteCorpus:
    """Training and validation bytes (uint8 tensors) and the helpers a byte-level language model needs."""

    train: Tensor
    val: Tensor
    vocab_size: ClassVar[int] = 256

    def __post_init__(self):
        for name in ("train", "val"):
            data = getattr(self, name)
            if not isinstance(data, Tensor) or data.dtype != torch.uint8 or data.ndim != 1 or len(data) == 0:
                shape = (str(data.dtype), tuple(data.shape)) if isinstance(data, Tensor) else type(data).__name__
                raise ValueError(f"{name} is {shape}; expected a non-empty 1-D uint8 tensor of bytes")

    def get_batch(
        self, split: str, batch_size: int, block_size: int, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` random windows of ``block_size`` bytes as int64 inputs ``x`` and targets ``y``.

        ``y[b, t]`` is the byte that follows ``x[b, t]``: each window is read as ``block_size + 1`` consecutive
        bytes, ``x`` is all but the last and ``y`` all but the first. The windows are gathered at once by adding
        ``0..block_size`` to a column of random start offsets, which gives a (batch, block + 1) index matrix.
        """
        check_choice("split", split, ("train", "val"))
        data = self.train if split == "train" else self.val
        check_int("batch_size", batch_size, low=1)
        check_int("block_size", block_size, low=1, high=len(data) - 1)
        starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(block_size + 1)].long()
        return windows[:, :-1], windows[:, 1:]

    @staticmethod
    def encode(text: str) -> Tensor:
        """The UTF-8 bytes of ``text`` as an int64 tensor of token ids."""
        if not isinstance(text, str):
            raise ValueError(f"text={text!r} is not allowed; expected a string")
        return _as_tensor(text.encode("utf-8")).long()

    @staticmethod
    def decode(tokens: Tensor | Sequence[int]) -> str:
        """Token ids back to text; an invalid or cut-off UTF-8 sequence becomes "\ufffd"."""
        if isinstance(tokens, Tensor):
            if tokens.ndim != 1 or tokens.is_floating_point() or tokens.is_complex():
                raise ValueError(f"tokens has shape {tuple(tokens.shape)}, {tokens.dtype}; expected 1-D byte ids")
            tokens = tokens.tolist()
        try:
            data = bytes(list(tokens))
        except (TypeError, ValueError):
            raise ValueError("tokens holds values that are not byte ids; expected integers in [0, 256)") from None
        return data.decode("utf-8", errors="replace")


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files in sorted relative-path order, without tests or installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in EXCLUDED_FOLDERS]
        found += [Path(folder, name) for name in names if name.endswith(".py")]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _join_capped(documents: Iterable[bytes], budget: int) -> bytes:
    """Concatenate documents (each followed by a blank line) until ``budget`` bytes; cut the last one short.

    ``documents`` may be lazy: files past the budget are never read.
    """
    gathered = bytearray()
    for document in documents:
        if len(gathered) >= budget:
            break
        gathered += document + DOCUMENT_SEPARATOR
    return bytes(gathered[:budget])


def _path_hash(path: Path) -> str:
    """A fixed pseudo-random order of files that does not depend on where Python is installed."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return hashlib.sha256(path.relative_to(root).as_posix().encode()).hexdigest()


def _as_tensor(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


def _build_corpus_parts(max_bytes: int) -> dict[str, Tensor]:
    """Up to ``max_bytes`` of documentation, then source to fill the rest, as two uint8 tensors."""
    from pydoc_data.topics import topics

    docs = _join_capped((topics[name].encode("utf-8") for name in sorted(topics)), max_bytes)
    source_files = (path.read_bytes() for path in sorted(stdlib_source_files(), key=_path_hash))
    source = _join_capped(source_files, max_bytes - len(docs))
    return {"docs": _as_tensor(docs), "source": _as_tensor(source)}


def _is_corpus_parts(parts) -> bool:
    """What a cached corpus must be: the documentation and the source, each a 1-D uint8 tensor."""
    return (
        isinstance(parts, dict)
        and set(parts) == {"docs", "source"}
        and all(isinstance(v, Tensor) and v.dtype == torch.uint8 and v.ndim == 1 for v in parts.values())
    )


def load_corpus(
    max_bytes: int = DEFAULT_MAX_BYTES,
    val_fraction: float = 0.1,
    *,
    cache_directory: Path | str | None = None,
) -> ByteCorpus:
    """The byte corpus, at most ``max_bytes`` long, split into train and val.

    The first call builds it from the installed Python (a second or so) and caches it under ``cache_directory``
    (default: ``efflab.cache.cache_dir()``); later calls load the cache. A corrupt cache file is rebuilt.
    """
    check_int("max_bytes", max_bytes, low=1)
    check_fraction("val_fraction", val_fraction)
    config = {
        "max_bytes": max_bytes,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "format": CACHE_FORMAT,
    }
    parts = cached(
        "byte_corpus",
        config,
        lambda: _build_corpus_parts(max_bytes),
        directory=Path(cache_directory) if cache_directory is not None else None,
        check=_is_corpus_parts,
    )
    pieces = [parts["docs"], parts["source"]]
    cuts = [round(len(piece) * (1 - val_fraction)) for piece in pieces]
    train = torch.cat([piece[:cut] for piece, cut in zip(pieces, cuts, strict=True)])
    val = torch.cat([piece[cut:] for piece, cut in zip(pieces, cuts, strict=True)])
    if min(len(train), len(val)) < 2:
        raise ValueError(
            f"max_bytes={max_bytes!r} with val_fraction={val_fraction!r} is not allowed: it leaves "
            f"{len(train)} training and {len(val)} validation bytes; expected at least 2 in each"
        )
    return ByteCorpus(train=train, val=val)


def unigram_loss(corpus: ByteCorpus) -> float:
    """Cross-entropy (nats per byte) on the validation split of the byte frequencies of the training split.

    Add-one smoothing keeps bytes unseen in training from costing infinity.
    """
    counts = torch.bincount(corpus.train.long(), minlength=256).double() + 1.0
    log_probabilities = (counts / counts.sum()).log()
    return float(-log_probabilities[corpus.val.long()].mean())
