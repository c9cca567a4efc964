import numpy as np
import pytest
import torch

from efflab.glimpse import policies
from efflab.glimpse.env import Episodes, Game
from efflab.glimpse.scenes import SceneConfig


def game(glimpses):
    return Game(scenes=SceneConfig(canvas_size=24, layouts=1), glimpses=glimpses, observation_grid=6)


def first_boxes(policy, scenes, task_model, steps=1):
    episodes = Episodes(scenes.x, scenes.y, task_model, game(steps), positions=scenes.positions)
    boxes = []
    for _ in range(steps):
        actions = policy(episodes)
        assert actions.shape == (len(scenes), 3) and np.abs(actions).max() <= 1
        episodes.act(actions)
        boxes.append(episodes.boxes[:, episodes.step - 1])
    return boxes


def test_scripted_baselines_take_the_boxes_they_promise(scenes, task_model):
    grid = first_boxes(policies.grid_policy(), scenes, task_model, steps=4)
    assert [boxes[0].tolist() for boxes in grid] == [[0, 0, 12], [0, 12, 12], [12, 0, 12], [12, 12, 12]]
    centre = first_boxes(policies.centre_first_policy(), scenes, task_model, steps=2)
    assert centre[0][0].tolist() == [6, 6, 12] and centre[1][0].tolist() == [0, 0, 12]
    (coarse,) = first_boxes(policies.coarse_view_policy(), scenes, task_model)
    assert (coarse == torch.tensor([0, 0, 24])).all()
    whole, sharp = first_boxes(policies.ideal_policy(), scenes, task_model, steps=2)
    assert (whole == torch.tensor([0, 0, 24])).all()
    assert torch.equal(sharp[:, :2], scenes.positions) and (sharp[:, 2] == 8).all()


def test_random_glimpses_are_seeded(scenes, task_model):
    def boxes(seed):
        return first_boxes(policies.random_policy(seed), scenes, task_model)[0]

    assert torch.equal(boxes(1), boxes(1)) and not torch.equal(boxes(1), boxes(2))


def test_the_ideal_policy_needs_positions(scenes, task_model):
    episodes = Episodes(scenes.x, scenes.y, task_model, game(2))
    with pytest.raises(ValueError, match="positions"):
        policies.ideal_policy()(episodes)


def test_play_logs_every_step_and_policies_share_the_prior(scenes, task_model):
    logs = {
        name: policies.play(make(), scenes, task_model, game(3), chunk=100)
        for name, make in policies.BASELINES.items()
    }
    for log in logs.values():
        assert log.boxes.shape == (len(scenes), 3, 3) and log.beliefs.shape == (len(scenes), 4, 10)
        assert log.accuracy().shape == (4,) and log.mean_side().shape == (3,)
    priors = {float(log.accuracy()[0]) for log in logs.values()}
    assert len(priors) == 1
    whole = policies.play(policies.coarse_view_policy(), scenes, task_model, game(3), chunk=len(scenes))
    assert torch.equal(whole.beliefs, logs["coarse view"].beliefs)  # chunking does not change the result
