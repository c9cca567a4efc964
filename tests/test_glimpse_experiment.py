import json

import numpy as np
import pytest
import torch

from efflab.data.digits import load_digit_images, split_indices
from efflab.glimpse import experiment
from efflab.glimpse.experiment import GlimpseExperiment
from efflab.glimpse.policies import EpisodeLog
from efflab.glimpse.scenes import SceneConfig, load_scenes


def test_layouts_repeat_each_digit_in_new_places_and_splits_keep_their_digits():
    config = SceneConfig(canvas_size=20, layouts=3)
    scenes = load_scenes("test", config, seed=0)
    _, labels = load_digit_images()
    digits = len(split_indices(labels, seed=0)["test"])
    assert scenes.x.shape == (3 * digits, 1, 20, 20)
    first, second = scenes.positions[:digits], scenes.positions[digits : 2 * digits]
    assert torch.equal(scenes.y[:digits], scenes.y[digits : 2 * digits]) and not torch.equal(first, second)
    again = load_scenes("test", config, seed=0)
    assert torch.equal(again.x, scenes.x)
    bare = SceneConfig(canvas_size=20, n_fragments=0, layouts=1)
    seen_in_training = {tuple(c.flatten().tolist()) for c in digit_crops(load_scenes("train", bare))}
    assert not any(tuple(c.flatten().tolist()) in seen_in_training for c in digit_crops(load_scenes("test", bare)))


def digit_crops(scenes):
    rows = scenes.positions[:, 0, None, None] + torch.arange(8)[:, None]
    cols = scenes.positions[:, 1, None, None] + torch.arange(8)
    return scenes.x[torch.arange(len(scenes))[:, None, None], 0, rows, cols]


def test_quick_and_full_mode_play_the_same_game():
    quick, full = GlimpseExperiment.quick(), GlimpseExperiment.full()
    assert quick.metadata() == full.metadata()  # a policy trained in full mode runs in a quick-mode notebook
    assert json.loads(json.dumps(quick.metadata())) == quick.metadata()
    assert full.agent.updates > quick.agent.updates and full.task_model.steps > quick.task_model.steps
    assert quick.pixel_fraction == pytest.approx(3 * 64 / 32**2)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [({"glimpses": 0}, "glimpses"), ({"observation_grid": 33}, "observation_grid"), ({"test_layouts": 0}, "test")],
)
def test_bad_settings_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        GlimpseExperiment(**kwargs)
    with pytest.raises(ValueError, match="n_fragments"):
        SceneConfig(n_fragments=-1)


def test_the_gate_stops_a_task_model_that_cannot_read_an_ideal_glimpse():
    experiment.check_task_model(0.95)
    with pytest.raises(RuntimeError, match="TaskModelBudget.steps"):
        experiment.check_task_model(0.3)


def fake_log(correct_after_each_step, sides):
    """An EpisodeLog of 4 episodes of 2 glimpses whose beliefs are right where ``correct`` says."""
    labels = torch.tensor([0, 1, 2, 3])
    beliefs = torch.full((4, 3, 10), 0.05)
    for step, correct in enumerate(correct_after_each_step):
        guess = torch.where(torch.tensor(correct), labels, (labels + 1) % 10)
        beliefs[torch.arange(4), step, guess] = 0.55
    boxes = torch.zeros(4, 2, 3, dtype=torch.long)
    boxes[..., 2] = torch.tensor(sides)
    return EpisodeLog(boxes=boxes, beliefs=beliefs, labels=labels)


def test_summaries_average_over_seeds_and_report_the_spread():
    never, half, always = [False] * 4, [True, True, False, False], [True] * 4
    logs = {
        "agent": [fake_log([never, half, always], [32, 8]), fake_log([never, half, half], [16, 8])],
        "rule": [fake_log([never, never, half], [16, 16])],
    }
    table = experiment.summary_table(logs)
    assert table.loc["agent", "accuracy"] == pytest.approx(0.75)
    assert (table.loc["agent", "min"], table.loc["agent", "max"], table.loc["agent", "seeds"]) == (0.5, 1.0, 2)
    assert experiment.summary_table(logs, step=1).loc["agent", "accuracy"] == pytest.approx(0.5)
    assert experiment.accuracy_curves(logs)["agent"].shape == (2, 3)
    sides = experiment.sides_by_step(logs["agent"])
    assert sides.shape == (8, 2) and np.array_equal(sides.mean(axis=0), [24, 8])


def test_the_scale_pattern_names_what_every_seed_does():
    never = [False] * 4
    coarse_then_zoom = [fake_log([never] * 3, [32, 8]), fake_log([never] * 3, [30, 12])]
    wider_first = [fake_log([never] * 3, [32, 8]), fake_log([never] * 3, [18, 12])]
    mixed = [fake_log([never] * 3, [32, 8]), fake_log([never] * 3, [12, 18])]
    assert experiment.scale_pattern(coarse_then_zoom, 32) == "whole scene first"
    assert experiment.scale_pattern(wider_first, 32) == "wider first"
    assert experiment.scale_pattern(mixed, 32) == "no consistent pattern"
    with pytest.raises(ValueError, match="whole"):
        experiment.scale_pattern(mixed, 32, whole=1.5)
