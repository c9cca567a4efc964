import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from efflab.data.digits import load_digit_images, split_indices
from efflab.glimpse import experiment
from efflab.glimpse.env import Game
from efflab.glimpse.experiment import FIXED, FREE, GlimpseBudget, GlimpseResult, findings, paper_rows
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
    quick, full = GlimpseBudget.quick(), GlimpseBudget.full()
    assert quick.game == full.game  # a policy trained in full mode runs in a quick-mode notebook
    assert json.loads(json.dumps(quick.game.metadata())) == quick.game.metadata()
    assert full.agent.updates > quick.agent.updates and full.task_model.steps > quick.task_model.steps
    assert full.seeds >= 5 and full.fixed_scale_seeds == full.seeds  # the paper's claim, over seeds
    assert quick.game.pixel_fraction == pytest.approx(3 * 64 / 32**2)
    assert quick.fixed_game.fixed_side == quick.fixed_side and quick.game.fixed_side is None
    assert "GlimpseBudget(" in quick.describe() and "fixed_side=16" in quick.describe()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"seeds": 0}, "seeds"),
        ({"fixed_scale_seeds": 3}, "fixed_scale_seeds"),
        ({"fixed_side": 40}, "fixed_side"),
        ({"fixed_side": 4}, "fixed_side"),
        ({"test_layouts": 0}, "test_layouts"),
        ({"game": Game(fixed_side=16)}, "game"),
        ({"agent": "fast"}, "agent"),
    ],
)
def test_bad_budgets_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        GlimpseBudget(**kwargs)
    with pytest.raises(ValueError, match="n_fragments"):
        SceneConfig(n_fragments=-1)


def test_the_paper_pixel_share_is_the_classification_setting():
    assert experiment.paper_pixel_fraction() == pytest.approx(14 * 4 * 256 / 224**2)
    assert round(experiment.paper_pixel_fraction(), 3) == 0.286


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


class Sized(SimpleNamespace):
    def __len__(self):
        return 4


def fake_result(free, fixed):
    """A result whose agents are right on the first ``free[i]`` / ``fixed[i]`` of 4 episodes, per seed."""

    def log(right, sides=(32, 8)):
        return fake_log([[False] * 4, [False] * 4, [i < right for i in range(4)]], list(sides))

    logs = {"random": [log(1), log(1)], "grid": [log(2)], "centre first": [log(1)], "coarse view": [log(0)]}
    logs |= {"ideal": [log(4)], FREE: [log(n) for n in free], FIXED: [log(n, (16, 16)) for n in fixed]}
    history = pd.DataFrame({"step": [1], "loss": [1.0]})
    history.attrs.update(source="loaded from the cache", train_seconds=1.0)
    return GlimpseResult(
        budget=GlimpseBudget.quick(),
        test_scenes=Sized(),
        task_model=None,
        task_history=history,
        logs=logs,
        training={FREE: [], FIXED: []},
        seeds={FREE: tuple(range(len(free))), FIXED: tuple(range(len(fixed)))},
        first_agent=None,
        committed_policy=None,
        seconds={"task_model": 1.0, "agents": 2.0, "total": 3.0},
    )


def test_the_summary_pairs_free_and_fixed_scale_by_seed_and_is_plain_json():
    result = fake_result([4, 3], [2, 3])
    summary = result.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["free_minus_fixed_per_seed"] == pytest.approx([0.5, 0.0])
    assert summary["sac_accuracy"] == pytest.approx(0.875) and summary["fixed_scale_accuracy"] == pytest.approx(
        0.625
    )
    assert summary["best_fixed_rule"] == "grid" and summary["best_fixed_accuracy"] == pytest.approx(0.5)
    assert summary["sac_minus_random_per_seed"] == pytest.approx([0.75, 0.5])
    assert summary["scale_pattern"] == "whole scene first"


def test_the_table_handles_a_record_from_before_the_fixed_scale_agents():
    result = fake_result([4, 3], [2, 3])
    summary = result.summary()
    older = {
        k: v for k, v in summary.items() if not k.startswith(("fixed_scale", "free_minus", "best_fixed_rule"))
    }
    table = paper_rows(summary, older)
    full = table.columns[2]
    assert table.loc["accuracy (%), learned position, fixed scale", full] == "n/a"
    assert table.loc["free minus fixed scale (points)", full] == "n/a"
    assert table.loc["accuracy (%), learned position and scale", full] != "n/a"
    assert "28.6%" in table.loc["share of pixels sensed", "paper"]
    assert "unverified" in table.loc["accuracy (%), learned position, fixed scale", "paper"]
    assert (paper_rows(summary, None)[full] == "n/a").sum() >= 5


@pytest.mark.parametrize(
    ("free", "fixed", "phrase"),
    [
        ([4, 4, 4], [1, 1, 1], "Choosing the scale pays"),
        ([1, 1, 1], [4, 4, 4], "did not pay"),
        ([4, 1, 4], [1, 4, 1], "mixed"),
    ],
)
def test_findings_have_a_phrasing_for_each_outcome(free, fixed, phrase):
    result = fake_result(free, fixed)
    text = findings(result.summary())
    assert phrase in text
    assert "hint" not in text  # three seeds of each
