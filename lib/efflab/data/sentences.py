"""English sentences from Python's own documentation, for sentence-embedding distillation and retrieval tests.

The sentence-encoder notebooks need thousands of real English sentences, and nothing may be downloaded. Every
Python installation carries two bodies of English prose (the same ones :mod:`efflab.data.text` uses as bytes):

* the help pages behind ``help("with")``, stored as plain text in ``pydoc_data.topics.topics`` (about 1,200
  sentences survive the filters below), and
* the docstrings of the standard library's ``.py`` files (tests and installed packages skipped), found as the
  triple-quoted strings that open a line: nearly all are docstrings, and what is not (a template, a SQL
  statement) rarely passes the filters below. A regular expression over the text takes half a second where
  parsing every file takes ten; nothing is imported. About 10,000 sentences.

From each text we keep its prose:

1. the text is cut into paragraphs at blank lines; a paragraph with an indented line (a grammar rule, a code
   example, a table, a note's body) or a heading underline is dropped, and list markers ("1.", "*") are removed;
2. a paragraph's lines are joined and cut into sentences after ".", "!" or "?" followed by a space and a capital
   letter or a quote (a closing quote may come first), except after common abbreviations ("e.g.", "i.e.", "etc.");
3. a sentence is kept when it starts with a capital letter, ends with a full stop, has 6 to 40 words and 40 to
   240 characters, is at least 85% letters and spaces, has balanced brackets and no "#", "\\" or ">>>" (code
   and comments); repeats (ignoring case and spacing) are removed.

The split into ``"train"`` and ``"heldout"`` is fixed by a hash of each sentence's text (one in five is held
out), so it does not depend on the order of the sources, and no sentence is in both. ``load_sentences(split,
count, seed)`` returns ``count`` sentences of the split in a seeded random order; a smaller ``count`` with the
same seed gives a prefix of a larger one. Reading the library takes a second, so the sentences are cached
(``efflab.cache``), keyed by the Python version: the help pages and docstrings change a little between
versions, so the exact sentences are reproducible for one interpreter.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import platform
import re
from collections.abc import Iterable, Iterator

import numpy as np

from efflab.cache import cached
from efflab.data.text import stdlib_source_files
from efflab.validation import check_choice, check_int, check_seed

SPLITS = ("train", "heldout")
HELDOUT_ONE_IN = 5
MIN_WORDS, MAX_WORDS = 6, 40
MIN_CHARS, MAX_CHARS = 40, 240
CACHE_FORMAT = 4  # bump when the way sentences are extracted changes, so old cache entries are not reused

_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'’”]))\s+(?=[A-Z\"“])")
_LIST_MARKER = re.compile(r"^(\d+\.|\*|-|•)\s+")
_UNDERLINE = re.compile(r"^[*=\-~^]{3,}$")


def check_text(name: str, value) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r:.80} is not allowed; expected a string")


def paragraphs(text: str) -> list[str]:
    """The prose paragraphs of one text (step 1), each joined into a single line."""
    check_text("text", text)
    kept = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or any(line[0].isspace() or _UNDERLINE.match(line.strip()) for line in lines):
            continue
        kept.append(_LIST_MARKER.sub("", " ".join(line.strip() for line in lines)))
    return kept


def split_sentences(paragraph: str) -> list[str]:
    """Cut one paragraph into sentences (step 2), not after ``_ABBREVIATIONS``; runs of spaces become one."""
    check_text("paragraph", paragraph)
    pieces = _SENTENCE_END.split(paragraph)
    sentences: list[str] = []
    for piece in pieces:
        if sentences and sentences[-1].endswith(_ABBREVIATIONS):
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return [" ".join(s.split()) for s in sentences]


def is_good_sentence(sentence: str) -> bool:
    """The length, shape and character filters of step 3 of the module docstring."""
    check_text("sentence", sentence)
    words = sentence.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS and MIN_CHARS <= len(sentence) <= MAX_CHARS):
        return False
    if not (sentence[0].isupper() and sentence.endswith(".") and not sentence.endswith("..")):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    if letters < 0.85 * len(sentence) or any(code in sentence for code in ("#", "\\", ">>>")):
        return False
    return all(sentence.count(a) == sentence.count(b) for a, b in ("()", "[]", "{}"))


def help_pages() -> list[str]:
    """The text of every help page, in order of topic name."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


_TRIPLE_QUOTED = re.compile(r"^[ \t]*[rRuU]?(\"\"\"|\'\'\')(.*?)\1", re.S | re.M)


def stdlib_docstrings() -> Iterator[str]:
    """The triple-quoted strings that open a line in the standard library's files (docstrings), dedented."""
    for path in stdlib_source_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in _TRIPLE_QUOTED.finditer(text):
            yield inspect.cleandoc(match.group(2))


def extract_sentences(texts: Iterable[str]) -> dict[str, list[str]]:
    """Steps 1-3 of the module docstring over ``texts``, then the hash split into ``{"train", "heldout"}``."""
    if isinstance(texts, str):
        raise ValueError(f"texts={texts!r:.80} is not allowed; expected an iterable of texts, not one string")
    seen: set[str] = set()
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for text in texts:
        for paragraph in paragraphs(text):
            for sentence in split_sentences(paragraph):
                key = " ".join(sentence.lower().split())
                if key in seen or not is_good_sentence(sentence):
                    continue
                seen.add(key)
                digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
                splits["heldout" if digest % HELDOUT_ONE_IN == 0 else "train"].append(sentence)
    return splits


@functools.lru_cache(maxsize=1)
def _all_sentences() -> dict[str, tuple[str, ...]]:
    def build() -> dict[str, list[str]]:
        return extract_sentences([*help_pages(), *stdlib_docstrings()])

    config = {"python": platform.python_version(), "format": CACHE_FORMAT}
    splits = cached("sentences", config, build)
    return {split: tuple(splits[split]) for split in SPLITS}


def available(split: str) -> int:
    """How many sentences ``split`` holds with this Python's help pages."""
    check_choice("split", split, SPLITS)
    return len(_all_sentences()[split])


def load_sentences(split: str, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct sentences of ``split`` ("train" or "heldout"), in an order shuffled by ``seed``."""
    check_choice("split", split, SPLITS)
    pool = _all_sentences()[split]
    if not pool:
        raise ValueError(f"split={split!r} holds no sentences with this Python's help pages and docstrings")
    check_int("count", count, low=1, high=len(pool))
    check_seed(seed)
    order = np.random.default_rng(seed).permutation(len(pool))[:count]
    return [pool[i] for i in order]
