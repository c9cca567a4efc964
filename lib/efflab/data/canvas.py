"""Cluttered digit canvases: a small digit somewhere on a large, noisy canvas (the task of notebook 10).

AdaGlimpse (arXiv 2404.03482) studies an agent that looks at an image through a few small glimpses and must
decide *where* to look. That only matters when most of the image is uninformative, so, like the classic
"cluttered MNIST" benchmark, we hide the object: each canvas is ``canvas_size`` x ``canvas_size`` pixels of
black, one 8x8 digit pasted at a random position, and ``n_fragments`` distractors, each a random
``fragment_size`` x ``fragment_size`` crop of *another* digit, pasted at random positions. A fragment looks like a
piece of a stroke, so a model cannot find the digit just by looking for ink; it has to look for a whole digit.

Overlaps are combined with a pixel-wise maximum: clutter can add ink next to or over the digit but never erase
it, so the label always stays readable.

Everything is built for all samples at once with index arithmetic. For each patch we compute the flat canvas
index of each of its pixels, ``row * canvas_size + col``, and write every patch of every canvas with a single
``scatter_reduce_(..., reduce="amax")``; fragments are cut out with one gather in the same way. There is no loop
over samples, so thousands of canvases take milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from efflab.data.digits import SPLIT_NAMES, check_labels, load_digit_images, split_indices
from efflab.validation import check_choice, check_int, check_seed


@dataclass(frozen=True, eq=False)
class Canvases:
    """Canvases ``x`` (N, 1, S, S) float32 in [0, 1], labels ``y`` (N,) int64, and the digit's top-left corner
    ``positions`` (N, 2) int64 as (row, col)."""

    x: Tensor
    y: Tensor
    positions: Tensor

    def __post_init__(self):
        shape = tuple(getattr(self.x, "shape", ()))
        if not isinstance(self.x, Tensor) or len(shape) != 4 or shape[1] != 1 or shape[2] != shape[3]:
            raise ValueError(f"x with shape {shape} is not allowed; expected canvases (N, 1, S, S)")
        check_pixels("x", self.x)
        check_labels("y", self.y, count=len(self.x))
        corners = self.positions
        if not isinstance(corners, Tensor) or corners.shape != (len(self.x), 2) or corners.is_floating_point():
            raise ValueError(f"positions={corners!r} is not allowed; expected integer corners ({len(self.x)}, 2)")
        if len(corners) and (corners.min() < 0 or corners.max() >= shape[-1]):
            raise ValueError(f"positions outside [0, {shape[-1]}) are not allowed; expected corners on the canvas")

    def __len__(self) -> int:
        return len(self.y)


def _window(top_left: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Row and column indices of ``height`` x ``width`` windows whose top-left corners are ``top_left`` (..., 2).

    Returns index tensors of shapes (..., height, 1) and (..., 1, width); indexing with both broadcasts to
    (..., height, width), one entry per pixel of every window.
    """
    rows = top_left[..., 0, None, None] + torch.arange(height)[:, None]
    cols = top_left[..., 1, None, None] + torch.arange(width)
    return rows, cols


def paste_max(canvases: Tensor, patches: Tensor, top_left: Tensor) -> Tensor:
    """Paste ``patches`` (N, K, h, w) onto ``canvases`` (N, S, S) at ``top_left`` (N, K, 2), keeping the maximum.

    Returns new canvases; the input is not modified. Patch k of sample n covers rows ``top_left[n, k, 0]`` to
    ``top_left[n, k, 0] + h - 1`` and the matching columns. Where patches overlap each other or ink already on
    the canvas, the brightest value wins.
    """
    n_samples, size, _ = canvases.shape
    height, width = patches.shape[-2:]
    limit = torch.tensor([size - height, size - width])
    if (top_left < 0).any() or (top_left > limit).any():
        raise ValueError(
            f"top_left is not allowed: a corner lies outside [0, {size - height}] x [0, {size - width}]; "
            "expected every patch to fit inside the canvas"
        )
    rows, cols = _window(top_left, height, width)
    flat_index = (rows * size + cols).reshape(n_samples, -1)
    flat_canvases = canvases.reshape(n_samples, -1).clone()
    flat_canvases.scatter_reduce_(1, flat_index, patches.reshape(n_samples, -1), reduce="amax")
    return flat_canvases.reshape(n_samples, size, size)


def check_pixels(name: str, images: Tensor) -> None:
    """Raise a ValueError unless every pixel of ``images`` lies in [0, 1] (NaN does not)."""
    if images.numel() and not ((images >= 0) & (images <= 1)).all():
        raise ValueError(
            f"{name} with values in [{images.min():.3g}, {images.max():.3g}] (or NaN) are not allowed; "
            "expected pixels in [0, 1] (raw intensities, before normalisation)"
        )


def _check_inputs(images: Tensor, labels) -> None:
    if images.ndim != 3 or images.shape[1] != images.shape[2] or len(images) == 0:
        raise ValueError(
            f"images with shape {tuple(images.shape)} are not allowed; expected (N, D, D) with N >= 1"
        )
    check_pixels("images", images)
    check_labels("labels", labels, count=len(images))


def make_canvases(
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    canvas_size: int = 32,
    n_fragments: int = 4,
    fragment_size: int = 4,
    seed: int = 0,
) -> Canvases:
    """Place each of ``images`` (N, D, D), pixels in [0, 1], on its own cluttered ``canvas_size``-square canvas.

    The digit's position is drawn first, then the fragments, so the same seed with and without clutter puts
    every digit in the same place. Each fragment comes from a different image than the one it clutters (when
    N > 1), so the clutter never repeats the digit's own strokes. A fragment cut from an empty corner is blank:
    the *expected* clutter is a little less than ``n_fragments`` visible pieces.
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    _check_inputs(images, labels)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    digit_size = images.shape[-1]
    check_int("canvas_size", canvas_size, low=digit_size)
    check_int("n_fragments", n_fragments, low=0)
    check_int("fragment_size", fragment_size, low=1, high=digit_size)
    check_seed(seed)

    n_samples = len(images)
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, canvas_size - digit_size + 1, (n_samples, 2), generator=generator)

    # Shift each sample's own index by 1..N-1 (mod N) to name a *different* source image for each fragment.
    shift = 1 + torch.randint(0, max(n_samples - 1, 1), (n_samples, n_fragments), generator=generator)
    sources = (torch.arange(n_samples)[:, None] + shift) % n_samples
    crop_corner = torch.randint(
        0, digit_size - fragment_size + 1, (n_samples, n_fragments, 2), generator=generator
    )
    crop_rows, crop_cols = _window(crop_corner, fragment_size, fragment_size)
    fragments = images[sources[..., None, None], crop_rows, crop_cols]
    fragment_corner = torch.randint(
        0, canvas_size - fragment_size + 1, (n_samples, n_fragments, 2), generator=generator
    )

    canvases = torch.zeros(n_samples, canvas_size, canvas_size)
    canvases = paste_max(canvases, images[:, None], positions[:, None])
    canvases = paste_max(canvases, fragments, fragment_corner)
    return Canvases(x=canvases.unsqueeze(1), y=labels, positions=positions)


def load_canvases(
    split: str = "train",
    *,
    canvas_size: int = 32,
    n_fragments: int = 4,
    fragment_size: int = 4,
    seed: int = 0,
) -> Canvases:
    """Canvases made from one split of the digits (the split of ``efflab.data.digits.load_digits(seed)``).

    Pixels stay in [0, 1], not standardised: a glimpse sensor crops and resizes raw canvases, and a model that
    wants zero-mean inputs can subtract the training canvases' mean itself. Each split draws its placements from
    its own random stream (derived from ``seed`` and the split's name), so val and test never reuse the train
    layouts.
    """
    check_choice("split", split, SPLIT_NAMES)
    check_seed(seed)
    images, labels = load_digit_images()
    chosen = split_indices(labels, seed=seed)[split]
    stream = np.random.SeedSequence([seed, SPLIT_NAMES.index(split)])
    return make_canvases(
        images[chosen],
        labels[chosen],
        canvas_size=canvas_size,
        n_fragments=n_fragments,
        fragment_size=fragment_size,
        seed=int(stream.generate_state(1)[0]),
    )
