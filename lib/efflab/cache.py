"""A small on-disk cache for things that are slow to build and cheap to load (a corpus, a trained model).

Entries live under ``data/cache/`` (or ``$EFFLAB_CACHE``), keyed by a hash of the config that produced them.
Writes are atomic (a temporary file in the same folder, then ``os.replace``), so an interrupted run never leaves a
half-written entry behind; loads use ``torch.load(..., weights_only=True)``. Every entry carries a description
of what it holds (types, keys, dtypes, shapes, a format version), and one that fails to load or does not match
its description, or the caller's own check, is rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """The cache folder: ``$EFFLAB_CACHE`` when set, else ``data/cache`` in the repository."""
    return Path(os.environ.get("EFFLAB_CACHE", REPO_ROOT / "data" / "cache"))


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = True) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it into place.

    A rename within one folder is atomic, so readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename, so a crash cannot leave a renamed empty file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


CACHE_FORMAT = 1  # the layout of an entry on disk; bump it and every older entry is rebuilt
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def describe(value) -> object:
    """The shape of a cacheable value: types, dict keys, tensor dtypes and shapes, list lengths, as plain data.

    Stored beside every entry and compared on load, it catches an entry that unpickles fine but is not what was
    saved (another program's file under our name, a value of the wrong type, a truncated tensor).
    """
    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype), list(value.shape)]
    if isinstance(value, dict):
        return ["dict", {str(key): describe(item) for key, item in value.items()}]
    if isinstance(value, list | tuple):
        return [type(value).__name__, [describe(item) for item in value]]
    if value is None or isinstance(value, bool | int | float | str):
        return type(value).__name__
    raise ValueError(
        f"a cache entry contains {type(value).__name__}; expected tensors, numbers, strings and lists, tuples "
        "or dicts of them (what torch.load(weights_only=True) can read back)"
    )


def check_cache_name(name) -> None:
    """A cache name is one path component: letters, digits, '_' and '-', so an entry stays inside the folder."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"name={name!r} is not allowed; expected letters, digits, '_' or '-' (one file name, no path)"
        )


def cached(
    name: str,
    config: dict,
    build: Callable[[], object],
    *,
    directory: Path | str | None = None,
    check: Callable[[object], bool] | None = None,
):
    """Return the cached result of ``build()`` for ``config``, building and saving it when missing or not valid.

    ``build`` must return tensors or plain containers of them (what ``weights_only=True`` can load). An entry is
    valid when it loads, has this cache's layout (format, name, config key and :func:`describe` of its value),
    its value still matches that description, and ``check(value)`` (when given) is true; anything else (a
    truncated, garbled, foreign or outdated file) is deleted and rebuilt.
    """
    check_cache_name(name)
    if not isinstance(config, dict):
        raise ValueError(f"config={type(config).__name__} is not allowed; expected a dict")
    if directory is not None and (not isinstance(directory, str | Path) or str(directory).strip() == ""):
        raise ValueError(f"directory={directory!r} is not allowed; expected a folder path or None (the default)")
    key = config_key(config)
    path = Path(directory or cache_dir()) / f"{name}-{key}.pt"
    if path.exists():
        value = _load_valid(path, name, key, check)
        if value is not _INVALID:
            return value
        path.unlink(missing_ok=True)
    value = build()
    entry = {"format": CACHE_FORMAT, "name": name, "key": key, "schema": describe(value), "value": value}
    atomic_save(entry, path)
    return value


_INVALID = object()


def _load_valid(path: Path, name: str, key: str, check):
    try:
        entry = torch.load(path, weights_only=True)
    except Exception:  # truncated, garbled or foreign file
        return _INVALID
    if not isinstance(entry, dict) or set(entry) != {"format", "name", "key", "schema", "value"}:
        return _INVALID
    if (entry["format"], entry["name"], entry["key"]) != (CACHE_FORMAT, name, key):
        return _INVALID
    try:
        if describe(entry["value"]) != entry["schema"]:
            return _INVALID
        if check is not None and not check(entry["value"]):
            return _INVALID
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return _INVALID
    return entry["value"]
