import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from efflab.glimpse.env import Episodes, GlimpseEnv, GlimpseVecEnv, actions_from_where, where_from_actions
from efflab.glimpse.sensor import Sensor

SENSOR = Sensor(canvas_size=24, glimpse_size=8)


def make_env(scenes, task_model, budget=3):
    return GlimpseEnv(scenes, SENSOR, task_model, budget=budget, observation_grid=6)


def test_the_environment_passes_gymnasium_and_stable_baselines3_checkers(scenes, task_model):
    env = make_env(scenes, task_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    assert not [str(w.message) for w in caught if "action space" in str(w.message).lower()]
    assert not [str(w.message) for w in caught if "observation" in str(w.message).lower()]


def test_rewards_over_an_episode_add_up_to_the_final_minus_the_initial_score(scenes, task_model):
    env = make_env(scenes, task_model, budget=4)
    _, info = env.reset(seed=3)
    first_score, total, terminated, steps = info["score"], 0.0, False, 0
    env.action_space.seed(3)
    while not terminated:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total, steps = total + reward, steps + 1
        assert not truncated
    assert steps == 4
    assert total == pytest.approx(info["score"] - first_score, abs=1e-5)


def test_the_same_seed_gives_the_same_episode(scenes, task_model):
    def episode(seed):
        env = make_env(scenes, task_model)
        observation, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        trace = [observation]
        for _ in range(3):
            observation, reward, *_ = env.step(env.action_space.sample())
            trace += [observation, np.array([reward])]
        return np.concatenate(trace)

    assert np.array_equal(episode(5), episode(5))
    assert not np.array_equal(episode(5), episode(6))


def test_reset_can_choose_the_scene_and_the_episode_ends_after_the_budget(scenes, task_model):
    env = make_env(scenes, task_model, budget=2)
    env.reset(options={"index": 7})
    assert torch.equal(env.episodes.canvases[0], scenes.x[7])
    env.step(np.zeros(3, dtype=np.float32))
    *_, terminated, _, info = env.step(np.ones(3, dtype=np.float32))
    assert terminated and info["box"] == [0, 0, 24]
    with pytest.raises(RuntimeError, match="over"):
        env.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="index"):
        env.reset(options={"index": len(scenes)})


def test_actions_outside_the_space_are_refused(scenes, task_model):
    env = make_env(scenes, task_model)
    env.reset(seed=0)
    for bad in ([0.0, 1.5, 0.0], [np.nan, 0.0, 0.0], [-1.01, 0.0, 0.0]):
        with pytest.raises(ValueError, match=r"\[-1, 1\]"):
            env.step(np.array(bad, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4, dtype=np.float32))


@pytest.mark.parametrize("budget", [0, -1, 2.5, "3", 65])
def test_bad_budgets_are_refused(scenes, task_model, budget):
    with pytest.raises(ValueError, match="budget"):
        make_env(scenes, task_model, budget=budget)
    with pytest.raises(ValueError, match="budget"):
        GlimpseVecEnv(scenes, SENSOR, task_model, budget=budget)


def test_scenes_that_do_not_fit_the_sensor_are_refused(scenes, task_model):
    with pytest.raises(ValueError, match="scenes"):
        GlimpseEnv(scenes, Sensor(canvas_size=32), task_model)


def test_actions_and_coordinates_map_both_ways():
    where = torch.rand(100, 3, dtype=torch.float64)
    assert torch.allclose(where_from_actions(actions_from_where(where)), where, atol=1e-6)


def test_the_batched_environment_plays_the_same_game_as_the_single_one(scenes, task_model):
    vec = GlimpseVecEnv(scenes, SENSOR, task_model, n_envs=5, budget=2, observation_grid=6, seed=1)
    observations = vec.reset()
    canvases, labels = vec.episodes.canvases.clone(), vec.episodes.labels.clone()
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 5, 3)).astype(np.float32)
    single = Episodes(canvases, labels, SENSOR, task_model, budget=2)
    assert np.array_equal(observations, single.observation(6))
    _, rewards, dones, _ = vec.step(actions[0])
    assert np.allclose(rewards, single.take(where_from_actions(actions[0])).numpy()) and not dones.any()
    after_last, rewards, dones, infos = vec.step(actions[1])
    assert np.allclose(rewards, single.take(where_from_actions(actions[1])).numpy()) and dones.all()
    terminal = np.stack([info["terminal_observation"] for info in infos])
    assert np.array_equal(terminal, single.observation(6))
    assert np.array_equal(after_last, vec.episodes.observation(6)) and vec.episodes.step == 0  # restarted


def test_seeding_the_batched_environment_repeats_its_scenes(scenes, task_model):
    vec = GlimpseVecEnv(scenes, SENSOR, task_model, n_envs=4, budget=1, observation_grid=6)
    vec.seed(11)
    first = vec.reset()
    vec.seed(11)
    assert np.array_equal(vec.reset(), first)
