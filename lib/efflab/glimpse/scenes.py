"""The scenes the glimpse agent explores: cluttered digit canvases, several layouts per digit.

The course's canvases (``efflab.data.canvas``) hide one 8x8 digit among fragments of other digits. A split of the
digits has only a few hundred to a thousand images, so each split is laid out several times, every layout with
its own placements of digit and clutter. Training canvases come from the training digits only and held-out
canvases from the test digits only: an agent or a task model is never scored on a digit it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from efflab.data.canvas import Canvases, make_canvases
from efflab.data.digits import SPLIT_NAMES, load_digit_images, split_indices
from efflab.validation import check_choice, check_int, check_seed


@dataclass(frozen=True)
class SceneConfig:
    """Canvas size, clutter, and how many layouts of each digit a split holds.

    The defaults are chosen so that the choice of glimpses matters and can be learned in a minute: on a 32 px
    canvas an 8 px digit is unreadable in a whole-scene glimpse (an 8 x 8 reading, 4x smaller) and readable in a
    sharp one; two fragments of clutter make ink alone a poor guide to the digit without hiding it. With four
    fragments the coarse view points at the digit less often, and a SAC agent needs several times more updates
    to learn to use it.
    """

    canvas_size: int = 32
    n_fragments: int = 2
    fragment_size: int = 4
    layouts: int = 4

    def __post_init__(self):
        check_int("canvas_size", self.canvas_size, low=8)
        check_int("n_fragments", self.n_fragments, low=0)
        check_int("fragment_size", self.fragment_size, low=1, high=8)
        check_int("layouts", self.layouts, low=1)


def load_scenes(split: str, config: SceneConfig, *, seed: int = 0) -> Canvases:
    """``config.layouts`` cluttered layouts of every digit of ``split``, concatenated (N = layouts x digits).

    Each (seed, split, layout) triple draws its placements from its own random stream, so layouts never repeat
    each other and no split reuses another's placements.
    """
    check_choice("split", split, SPLIT_NAMES)
    check_seed(seed)
    images, labels = load_digit_images()
    chosen = split_indices(labels, seed=seed)[split]
    streams = np.random.SeedSequence([seed, SPLIT_NAMES.index(split)]).spawn(config.layouts)
    layouts = [
        make_canvases(
            images[chosen],
            labels[chosen],
            canvas_size=config.canvas_size,
            n_fragments=config.n_fragments,
            fragment_size=config.fragment_size,
            seed=int(stream.generate_state(1)[0]),
        )
        for stream in streams
    ]
    return Canvases(
        x=torch.cat([layout.x for layout in layouts]),
        y=torch.cat([layout.y for layout in layouts]),
        positions=torch.cat([layout.positions for layout in layouts]),
    )
