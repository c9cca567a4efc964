import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from efflab.glimpse.env import Episodes, Game, GlimpseEnv, GlimpseVecEnv, actions_from_where, where_from_actions
from efflab.glimpse.scenes import SceneConfig

SCENES = SceneConfig(canvas_size=24, layouts=1)


def game(glimpses=3, **overrides):
    return Game(scenes=SCENES, glimpses=glimpses, observation_grid=6, **overrides)


def make_env(scenes, task_model, glimpses=3):
    return GlimpseEnv(scenes, task_model, game(glimpses))


def test_the_environment_passes_gymnasium_and_stable_baselines3_checkers(scenes, task_model):
    env = make_env(scenes, task_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    assert not [str(w.message) for w in caught if "action space" in str(w.message).lower()]
    assert not [str(w.message) for w in caught if "observation" in str(w.message).lower()]


def test_rewards_over_an_episode_add_up_to_the_final_minus_the_initial_score(scenes, task_model):
    env = make_env(scenes, task_model, glimpses=4)
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


def test_reset_can_choose_the_scene_and_the_episode_ends_after_its_glimpses(scenes, task_model):
    env = make_env(scenes, task_model, glimpses=2)
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


@pytest.mark.parametrize("glimpses", [0, -1, 2.5, "3", 65])
def test_bad_numbers_of_glimpses_are_refused(glimpses):
    with pytest.raises(ValueError, match="glimpses"):
        game(glimpses)


@pytest.mark.parametrize(
    ("overrides", "parameter"),
    [
        ({"observation_grid": 25}, "observation_grid"),
        ({"fixed_side": 7}, "fixed_side"),
        ({"scenes": 24}, "scenes"),
    ],
)
def test_bad_games_name_the_parameter(overrides, parameter):
    with pytest.raises(ValueError, match=parameter):
        Game(**{"scenes": SCENES, **overrides})


def test_scenes_that_do_not_fit_the_game_are_refused(scenes, task_model):
    with pytest.raises(ValueError, match="scenes"):
        GlimpseEnv(scenes, task_model, Game())
    with pytest.raises(ValueError, match="game"):
        GlimpseVecEnv(scenes, task_model, "game")


def test_a_fixed_scale_game_overrides_the_scale_and_keeps_the_position(scenes, task_model):
    actions = np.random.default_rng(1).uniform(-1, 1, (50, 3))
    free, fixed = game(), game(fixed_side=12)
    free_boxes, fixed_boxes = free.sensor.boxes(free.where(actions)), fixed.sensor.boxes(fixed.where(actions))
    assert (fixed_boxes[:, 2] == 12).all() and len(set(free_boxes[:, 2].tolist())) > 1
    assert torch.equal(fixed.where(actions)[:, :2], free.where(actions)[:, :2])  # only z is overwritten
    assert fixed.metadata()["fixed_side"] == 12 and free.metadata()["fixed_side"] is None


def test_actions_and_coordinates_map_both_ways():
    where = torch.rand(100, 3, dtype=torch.float64)
    assert torch.allclose(where_from_actions(actions_from_where(where)), where, atol=1e-6)


def test_the_batched_environment_plays_the_same_game_as_the_single_one(scenes, task_model):
    vec = GlimpseVecEnv(scenes, task_model, game(2), n_envs=5, seed=1)
    observations = vec.reset()
    canvases, labels = vec.episodes.canvases.clone(), vec.episodes.labels.clone()
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 5, 3)).astype(np.float32)
    single = Episodes(canvases, labels, task_model, game(2))
    assert np.array_equal(observations, single.observation())
    _, rewards, dones, _ = vec.step(actions[0])
    assert np.allclose(rewards, single.take(where_from_actions(actions[0])).numpy()) and not dones.any()
    after_last, rewards, dones, infos = vec.step(actions[1])
    assert np.allclose(rewards, single.take(where_from_actions(actions[1])).numpy()) and dones.all()
    terminal = np.stack([info["terminal_observation"] for info in infos])
    assert np.array_equal(terminal, single.observation())
    assert np.array_equal(after_last, vec.episodes.observation()) and vec.episodes.step == 0  # restarted


def test_seeding_the_batched_environment_repeats_its_scenes(scenes, task_model):
    vec = GlimpseVecEnv(scenes, task_model, game(1), n_envs=4)
    vec.seed(11)
    first = vec.reset()
    vec.seed(11)
    assert np.array_equal(vec.reset(), first)
