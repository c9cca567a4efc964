import numpy as np
import pytest
import torch
from torch import nn

from efflab import results
from efflab.data.canvas import Canvases
from efflab.data.digits import load_digit_images, split_indices
from efflab.glimpse import agents, experiment, policies
from efflab.glimpse.env import Game, observation_space
from efflab.glimpse.experiment import NAME, GlimpseBudget
from efflab.glimpse.features import KeypointExtractor
from efflab.glimpse.policies import agent_policy, play
from efflab.glimpse.scenes import SceneConfig, load_scenes
from efflab.glimpse.task_model import TaskModelBudget, load_task_model, train_task_model
from efflab.parallel import run_all
from efflab.runtime import torch_threads


def test_keypoints_are_the_soft_arg_max_of_the_score_maps():
    space = observation_space(grid=5, glimpses=2)
    extractor = KeypointExtractor(space, grid=5, keypoints=2)

    class Bright(nn.Module):  # score maps that peak sharply where the memory is bright
        def forward(self, memory):
            return 60 * memory[:, :1].expand(-1, 2, -1, -1)

    extractor.scores = Bright()
    observation = torch.zeros(1, space.shape[0])
    observation[0, 1 * 5 + 3] = 1.0  # row 1, column 3 of channel 0
    observation[0, -3] = 1.0  # step 0 of 2
    features = extractor(observation)
    assert features.shape == (1, extractor.features_dim) == (1, 3 * 2 + 3)
    rows, cols = features[0, :2], features[0, 2:4]
    assert torch.allclose(rows, torch.tensor(-0.5), atol=1e-3)
    assert torch.allclose(cols, torch.tensor(0.5), atol=1e-3)
    assert torch.equal(features[0, -3:], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="grid"):
        KeypointExtractor(space, grid=6)


def tiny_game(glimpses=1):
    """A 16 px scene without clutter: with one glimpse, the best fixed box (the whole scene, at half resolution)
    beats a random box of random size by a wide margin, so a short SAC run can find it."""
    config = SceneConfig(canvas_size=16, n_fragments=0, layouts=2)
    game = Game(scenes=config, glimpse_size=8, glimpses=glimpses, observation_grid=4)
    budget = TaskModelBudget(steps=250, batch_size=64, glimpses=glimpses, around_digit=0.5, whole_scene=0.5)
    task_model, _ = train_task_model(load_scenes("train", config), game.sensor, budget, progress=False)
    return game, task_model, load_scenes("train", config), load_scenes("test", config)


def test_a_short_sac_run_beats_random_glimpses_on_held_out_scenes():
    with torch_threads(1):  # small batches: a second thread only adds hand-offs, on a busy machine many
        game, task_model, train, test = tiny_game()
    budget = agents.AgentBudget(
        steps=1600, n_envs=8, gradient_steps=4, batch_size=64, hidden=(64, 64), learning_starts=200, channels=8
    )
    gains = []
    for seed in (0, 1):
        with torch_threads(1):
            agent, log = agents.train_agent(train, task_model, game, budget, seed=seed)
        learned = policies.play(policies.agent_policy(agent), test, task_model, game).accuracy()[-1]
        random = policies.play(policies.random_policy(seed), test, task_model, game).accuracy()[-1]
        gains.append(learned - random)
        assert log.steps_per_second > 0
    # Each accuracy is a mean over n held-out scenes, so the difference of two has a standard error of at most
    # sqrt(2 * 0.25 / n) (about 0.026 for n = 728). A mean gain of three standard errors is not luck; measured
    # gains are about 0.2 (whole-scene glimpse 0.57 against random boxes 0.35) for every seed tried (0 to 7).
    assert np.mean(gains) > 3 * np.sqrt(0.5 / len(test))


SPOT = (4, 18)  # top-left corner of the digit in every scene of the zoom game


def spot_scenes(split: str) -> Canvases:
    """Clutter-free 32 px scenes with the digit always at ``SPOT``, off centre: read whole (four pixels to one),
    an 8 px digit is a blur; a glimpse of half the scene or less reads it at two pixels to one or better."""
    images, labels = load_digit_images()
    chosen = split_indices(labels, seed=0)[split]
    x = torch.zeros(len(chosen), 1, 32, 32)
    x[:, 0, SPOT[0] : SPOT[0] + 8, SPOT[1] : SPOT[1] + 8] = torch.as_tensor(images[chosen])
    positions = torch.tensor(SPOT).expand(len(chosen), 2).clone()
    return Canvases(x=x, y=torch.as_tensor(labels[chosen]).long(), positions=positions)


def test_a_short_sac_run_learns_a_zoomed_glimpse_that_pays_off():
    game = Game(scenes=SceneConfig(canvas_size=32, n_fragments=0, layouts=1), glimpses=2, observation_grid=4)
    train, test = spot_scenes("train"), spot_scenes("test")
    budget = TaskModelBudget(steps=300, batch_size=128, glimpses=2, around_digit=0.6, whole_scene=0.4)
    with torch_threads(1):
        task_model, _ = train_task_model(train, game.sensor, budget, progress=False)
    coarse = policies.play(policies.coarse_view_policy(), test, task_model, game)
    budget = agents.AgentBudget(
        steps=1000, n_envs=8, gradient_steps=4, batch_size=64, hidden=(64, 64), learning_starts=200, channels=8
    )
    gains, sides = [], []
    for seed in (0, 1):
        with torch_threads(1):
            agent, _ = agents.train_agent(train, task_model, game, budget, seed=seed)
        learned = policies.play(policies.agent_policy(agent), test, task_model, game)
        gains.append(learned.accuracy()[-1] - coarse.accuracy()[-1])
        sides.append(learned.mean_side()[-1])
    # Two whole-scene glimpses read the blurred digit (about 0.5 on n = 364 held-out scenes); a box of half the
    # scene reads it (about 0.8). Measured gains were 0.31 to 0.35 for seeds 0 and 1, more than eight standard
    # errors of a difference of two accuracies, sqrt(2 * 0.25 / n) = 0.037; three is the bar.
    assert np.mean(gains) > 3 * np.sqrt(0.5 / len(test))
    assert max(sides) < 24  # the second glimpse zooms: smaller than three quarters of the scene


def tiny_budget(**overrides):
    settings = {"steps": 64, "n_envs": 8, "gradient_steps": 1, "batch_size": 16, "hidden": (16,)}
    return agents.AgentBudget(**{**settings, "learning_starts": 32, **overrides})


GAME = Game(scenes=SceneConfig(canvas_size=24, layouts=1), glimpses=2, observation_grid=6)


def test_the_same_seed_gives_the_same_agent_on_every_backend(scenes, task_model):
    def task(seed, game=GAME):
        return agents.agent_task(scenes, task_model, game, tiny_budget(), seed)

    here = run_all(agents.train_agent_task, [task(3)], backend="inline", progress=False)
    there = run_all(agents.train_agent_task, [task(3), task(4)], backend="processes", workers=2, progress=False)
    fixed = run_all(agents.train_agent_task, [task(3, GAME.with_fixed_side(12))], backend="inline", progress=False)
    assert [outcome.seed for outcome in there] == [3, 4] and there[0].game == GAME
    trained = [outcome.agent() for outcome in here + there + fixed]
    observations = np.random.default_rng(0).uniform(0, 1, (5, trained[0].observation_space.shape[0]))
    actions = [agent.predict(observations.astype(np.float32), deterministic=True)[0] for agent in trained]
    assert np.allclose(actions[0], actions[1], atol=1e-5)  # seed 3, here and in a worker: the same agent
    assert not np.allclose(actions[1], actions[2])  # another seed, another agent
    assert not np.allclose(actions[0], actions[3])  # a fixed scale changes the rewards, so the agent


def test_a_saved_agent_loads_back_and_refuses_another_game(tmp_path, scenes, task_model):
    agent, _ = agents.train_agent(scenes, task_model, GAME, tiny_budget())
    metadata = GAME.metadata()
    agents.save_agent(agent, tmp_path, "tiny", metadata=metadata)
    loaded, info = agents.load_agent(tmp_path, "tiny", expected=metadata)
    observations = np.random.default_rng(0).uniform(0, 1, (5, agent.observation_space.shape[0])).astype(np.float32)
    before, after = (a.predict(observations, deterministic=True)[0] for a in (agent, loaded))
    assert np.allclose(before, after)
    assert info["metadata"] == metadata and "torch" in info["provenance"]
    with pytest.raises(ValueError, match="glimpses"):
        agents.load_agent(tmp_path, "tiny", expected={**metadata, "glimpses": 3})
    assert agents.load_agent(tmp_path, "absent", expected=metadata) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_policy.json", "tiny_policy.zip"]  # no temp files


def test_a_damaged_saved_agent_is_refused_with_its_path(tmp_path, scenes, task_model):
    agent, _ = agents.train_agent(scenes, task_model, GAME, tiny_budget())
    metadata = GAME.metadata()
    path = agents.save_agent(agent, tmp_path, "tiny", metadata=metadata)
    path.write_bytes(path.read_bytes()[:100])  # a truncated zip
    with pytest.raises(ValueError, match="tiny_policy.zip cannot be loaded"):
        agents.load_agent(tmp_path, "tiny", expected=metadata)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="metadata"):
        agents.load_agent(tmp_path, "tiny", expected=metadata)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"steps": 0}, "steps"),
        ({"n_envs": 0}, "n_envs"),
        ({"learning_starts": 3000}, "learning_starts"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"initial_temperature": 0}, "initial_temperature"),
        ({"hidden": ()}, "hidden"),
        ({"gamma": 1.5}, "gamma"),
        ({"batch_size": 2.5}, "batch_size"),
    ],
)
def test_bad_agent_budgets_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        agents.AgentBudget(**{"steps": 2000, **kwargs})


def test_a_committed_full_mode_policy_plays_the_current_game():
    game = GlimpseBudget.quick().game
    assert game == GlimpseBudget.full().game  # a policy trained in full mode runs in a quick-mode notebook
    committed = agents.load_agent(results.COMMITTED_RESULTS, "10_adaglimpse", expected=game.metadata())
    if committed is None:
        pytest.skip("no full-mode policy is committed under data/results/")
    agent, info = committed  # load_agent has already refused a policy trained for another game
    assert agent.observation_space == observation_space(game.observation_grid, game.glimpses)
    assert info["provenance"]["mode"] == "full" and info["provenance"]["git_commit"]


def test_the_committed_task_model_is_the_one_the_committed_policy_was_trained_with():
    """Quick mode trains its agents on the committed task model: with it, the committed policy must score on the
    full-mode held-out scenes exactly what the committed record says it scored in the run that trained both."""
    budget = GlimpseBudget.full()
    game = budget.game
    committed = agents.load_agent(results.COMMITTED_RESULTS, NAME, expected=game.metadata())
    model = load_task_model(results.COMMITTED_RESULTS, NAME, expected=game.metadata())
    record = results.load(NAME)
    if committed is None or model is None or record is None:
        pytest.skip("no full-mode policy, task model and record are committed under data/results/")
    task_model, history = model
    assert len(history) == TaskModelBudget.full().steps
    scenes = experiment.test_scenes(game, budget.test_layouts, record["provenance"]["seed"])
    log = play(agent_policy(committed[0]), scenes, task_model, game)
    assert float(log.accuracy()[-1]) == pytest.approx(record["values"]["committed_policy_accuracy"], abs=1e-6)
