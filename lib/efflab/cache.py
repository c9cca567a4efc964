"""A small on-disk cache for things that are slow to build and cheap to load (a corpus, a trained model).

Entries live under ``data/cache/`` (or ``$EFFLAB_CACHE``), keyed by a hash of the config that produced them.
Writes are atomic (a temporary file in the same folder, then ``os.replace``), so an interrupted run never leaves a
half-written entry behind; loads use ``torch.load(..., weights_only=True)``, and an entry that fails to load is
rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def cached(name: str, config: dict, build: Callable[[], object], *, directory: Path | None = None):
    """Return the cached result of ``build()`` for ``config``, building and saving it when missing or corrupt.

    ``build`` must return tensors or plain containers of them (what ``weights_only=True`` can load).
    """
    path = Path(directory or cache_dir()) / f"{name}-{config_key(config)}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # truncated, garbled or foreign file: rebuild it
            path.unlink(missing_ok=True)
    value = build()
    atomic_save(value, path)
    return value
