"""The 8x8 handwritten digits that ship with scikit-learn: the course's small image dataset.

1,797 grey-scale images of the digits 0-9 (about 180 per class), each 8x8 pixels with intensities 0..16. They
are installed with scikit-learn, so nothing is downloaded, and they are small enough that a CNN or a tiny ViT
trains on them in seconds on a laptop CPU, which is what quick mode needs.

Three choices every experiment shares live here, so that no notebook re-invents them:

* **A stratified split.** Each class is divided between train, validation and test in the same proportions, so
  a 15 % validation split holds about 15 % of the zeros, 15 % of the ones, and so on. With only ~180 images per
  class, a plain random split can leave one split noticeably short of a class; stratifying removes that noise.
* **Normalisation with training statistics.** Pixels are scaled to [0, 1] and then standardised with the mean and
  standard deviation of the *training* pixels only: the validation and test images must not leak into anything
  the model is fitted with, not even the normalisation.
* **Seeded batching.** The batch order is a function of a seed alone, so two runs with the same seed see exactly
  the same batches in the same order.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from efflab.validation import check_fraction, check_int, check_seed

SPLIT_NAMES = ("train", "val", "test")
N_CLASSES = 10
MAX_INTENSITY = 16.0  # scikit-learn stores each pixel as an integer count 0..16


@dataclass(frozen=True, eq=False)
class Split:
    """One part of the dataset: normalised float32 images ``x`` (N, 1, 8, 8) and int64 labels ``y`` (N,)."""

    x: Tensor
    y: Tensor

    def __post_init__(self):
        if not isinstance(self.x, Tensor) or self.x.ndim < 2:
            raise ValueError(f"x={self.x!r} is not allowed; expected an image tensor (N, ...)")
        check_labels("y", self.y, count=len(self.x), num_classes=None)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class Digits:
    """The three splits and the training-pixel statistics used to normalise all of them.

    ``mean`` and ``std`` are kept so that new images (a drawing, a cluttered canvas) can be normalised the same
    way: ``(pixels_in_0_1 - mean) / std``.
    """

    train: Split
    val: Split
    test: Split
    mean: float
    std: float


def check_labels(name: str, labels, *, count: int | None = None, num_classes: int | None = N_CLASSES) -> None:
    """Raise a ValueError unless ``labels`` is a 1-D tensor or array of integer class indices, ``count`` of them
    (when given), each in [0, num_classes) (or just >= 0 with ``num_classes=None``)."""
    if isinstance(labels, Tensor):
        integral = not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool)
    else:
        labels = np.asarray(labels)
        integral = labels.dtype.kind in "iu"
    if not integral:
        raise ValueError(f"{name} with dtype {labels.dtype} is not allowed; expected integer class indices")
    if labels.ndim != 1 or (count is not None and len(labels) != count):
        expected = "N" if count is None else count
        raise ValueError(f"{name} with shape {tuple(labels.shape)} is not allowed; expected ({expected},)")
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        allowed = ">= 0" if num_classes is None else f"in [0, {num_classes})"
        raise ValueError(f"{name} with values in [{low}, {high}] is not allowed; expected class indices {allowed}")


def digits_file() -> Path:
    """scikit-learn's copy of the digits, one image per row (64 pixel counts, then the label), located without
    importing scikit-learn: the import takes seconds, reading the file a few milliseconds."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-learn is not installed; the digits ship with it (pip install scikit-learn)")
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


@functools.cache
def _digit_table() -> np.ndarray:
    """The file's rows, read once per process (a pruning grid loads the digits in every one of its tasks)."""
    table = np.loadtxt(digits_file(), delimiter=",")
    table.flags.writeable = False
    return table


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as a float32 array (1797, 8, 8) scaled to [0, 1], and their int64 labels (1797,)."""
    table = _digit_table()
    images = (table[:, :-1].reshape(-1, 8, 8) / MAX_INTENSITY).astype(np.float32)
    return images, table[:, -1].astype(np.int64)


def split_indices(
    labels: np.ndarray, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> dict[str, np.ndarray]:
    """Sorted indices of the train, val and test samples: a stratified split that depends on the seed alone.

    How it works, without a loop over classes: shuffle the indices, then sort them by label with a *stable* sort,
    so each class forms one contiguous run whose members are still in random order. A sample's position inside its
    run, divided by the run's length, is a number in [0, 1) that is uniform within every class; thresholding it at
    ``test_fraction`` and ``test_fraction + val_fraction`` cuts every class in the same proportions.
    """
    check_labels("labels", labels, num_classes=None)
    check_seed(seed)
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction!r} is not allowed; "
            "expected a sum < 1 so that some samples are left to train on"
        )
    labels = np.asarray(labels)
    shuffled = np.random.default_rng(seed).permutation(len(labels))
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    grouped_labels = labels[grouped]
    class_sizes = np.bincount(grouped_labels)
    run_starts = np.cumsum(class_sizes) - class_sizes
    rank_in_class = np.arange(len(grouped)) - run_starts[grouped_labels]
    quantile = rank_in_class / class_sizes[grouped_labels]

    in_test = quantile < test_fraction
    in_val = ~in_test & (quantile < test_fraction + val_fraction)
    in_train = ~in_test & ~in_val
    parts = {"train": in_train, "val": in_val, "test": in_test}
    blamed = {
        "train": f"val_fraction + test_fraction = {val_fraction + test_fraction!r}",
        "val": f"val_fraction={val_fraction!r}",
        "test": f"test_fraction={test_fraction!r}",
    }
    n_classes = len(np.unique(labels))
    for name, member in parts.items():
        if len(np.unique(grouped_labels[member])) < n_classes:
            raise ValueError(
                f"{blamed[name]} is not allowed: it leaves the {name} split without an example of every "
                "class; expected fractions that give each split at least one sample per class"
            )
    return {name: np.sort(grouped[member]) for name, member in parts.items()}


def load_digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> Digits:
    """The digits, split (stratified, by ``seed``) into train / val / test and normalised with train statistics.

    The same seed always gives identical tensors. With the defaults the split sizes are about 65 / 15 / 20 %.
    """
    images, labels = load_digit_images()
    indices = split_indices(labels, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    train_pixels = images[indices["train"]]
    mean, std = float(train_pixels.mean()), float(train_pixels.std())

    def make_split(name: str) -> Split:
        chosen = indices[name]
        normalised = (images[chosen] - mean) / std
        x = torch.from_numpy(normalised.astype(np.float32)).unsqueeze(1)  # add the channel axis
        return Split(x=x, y=torch.from_numpy(labels[chosen]))

    return Digits(
        train=make_split("train"),
        val=make_split("val"),
        test=make_split("test"),
        mean=mean,
        std=std,
    )


def _check_batching(split: Split, batch_size: int, seed: int) -> None:
    if not isinstance(split, Split):
        raise ValueError(f"split={split!r} is not allowed; expected a Split")
    check_int("batch_size", batch_size, low=1)
    check_seed(seed)
    if len(split) == 0:
        raise ValueError("split is empty; expected a split with at least one sample")


def _epoch(split: Split, batch_size: int, order: Tensor, drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """Cut one epoch's sample ``order`` into consecutive batches."""
    usable = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, usable, batch_size):
        chosen = order[start : start + batch_size]
        yield split.x[chosen], split.y[chosen]


def batches(
    split: Split,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of ``(x, y)`` batches; with ``shuffle`` the order is a seeded random permutation.

    Every sample appears exactly once (the last batch is smaller unless ``drop_last``). The arguments are checked
    when this is called, not when the first batch is drawn, so a bad value fails where it was written.
    """
    _check_batching(split, batch_size, seed)
    if shuffle:
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(len(split))
    return _epoch(split, batch_size, order, drop_last)


def infinite_batches(split: Split, batch_size: int, *, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Full-size batches forever, epoch after epoch, each epoch in a fresh permutation from one seeded generator.

    Training loops that count steps rather than epochs use this. The incomplete batch at the end of each epoch is
    dropped so that every step sees the same batch size, which is why ``batch_size`` may not exceed the split.
    """
    _check_batching(split, batch_size, seed)
    check_int("batch_size", batch_size, low=1, high=len(split))
    generator = torch.Generator().manual_seed(seed)

    def forever() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            order = torch.randperm(len(split), generator=generator)
            yield from _epoch(split, batch_size, order, drop_last=True)

    return forever()
