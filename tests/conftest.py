"""Fixtures shared across test files.

``corpus``: a few kilobytes of repeated Python source as a byte corpus, for the language-model grids of the
first-steps, fine-grained and joint MoE tests. ``scenes`` and ``task_model``: a small glimpse game on 24 px
scenes of the validation digits; the task model is left untrained, since those tests check the game's
bookkeeping (boxes, rewards, seeding, logs), not how hard it is, so its beliefs only need to be real
distributions.
"""

import pytest
import torch

from efflab.data.text import ByteCorpus
from efflab.glimpse.scenes import SceneConfig, load_scenes
from efflab.glimpse.task_model import GlimpseClassifier, TaskModelConfig, freeze


@pytest.fixture(scope="session")
def corpus():
    text = ("def add(a, b):\n    return a + b\n\n" * 200).encode()
    data = torch.tensor(list(text), dtype=torch.uint8)
    return ByteCorpus(train=data[:5000], val=data[5000:])


@pytest.fixture(scope="session")
def scenes():
    return load_scenes("val", SceneConfig(canvas_size=24, layouts=1))


@pytest.fixture(scope="session")
def task_model():
    torch.manual_seed(0)
    return freeze(GlimpseClassifier(TaskModelConfig()))
