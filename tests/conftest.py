"""Fixtures shared by the glimpse tests: a small game on 24 px scenes of the validation digits.

The task model is left untrained: these tests check the game's bookkeeping (boxes, rewards, seeding, logs),
not how hard it is, so its beliefs only need to be real distributions.
"""

import pytest
import torch

from efflab.glimpse.scenes import SceneConfig, load_scenes
from efflab.glimpse.task_model import GlimpseClassifier, TaskModelConfig, freeze


@pytest.fixture(scope="session")
def scenes():
    return load_scenes("val", SceneConfig(canvas_size=24, layouts=1))


@pytest.fixture(scope="session")
def task_model():
    torch.manual_seed(0)
    return freeze(GlimpseClassifier(TaskModelConfig()))
