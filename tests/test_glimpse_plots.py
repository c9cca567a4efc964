import numpy as np
import plotly.graph_objects as go
import pytest

from efflab.glimpse import plots as glimpse_plots
from efflab.glimpse.env import Game
from efflab.glimpse.policies import grid_policy, ideal_policy, play
from efflab.glimpse.scenes import SceneConfig
from efflab.glimpse.sensor import Sensor
from efflab.ui.widgets import dropdown, explorer, slider

SENSOR = Sensor(canvas_size=24, glimpse_size=8)


@pytest.fixture(scope="module")
def played(scenes, task_model):
    policies = {"grid": grid_policy(), "ideal": ideal_policy()}
    game = Game(scenes=SceneConfig(canvas_size=24, layouts=1), glimpses=2, observation_grid=6)
    return scenes, {name: play(policy, scenes, task_model, game) for name, policy in policies.items()}


def test_the_scene_shows_one_numbered_rectangle_per_glimpse():
    figure = glimpse_plots.scene_with_glimpses(np.zeros((24, 24)), [[0, 0, 24], [4, 6, 8]], title="t")
    shapes = figure.layout.shapes
    assert len(shapes) == 2 and [shape.label.text for shape in shapes] == ["1", "2"]
    assert (shapes[1].x0, shapes[1].x1, shapes[1].y0, shapes[1].y1) == (5.5, 13.5, 3.5, 11.5)  # pixel edges


def test_readings_are_drawn_side_by_side():
    figure = glimpse_plots.glimpse_readings(
        np.random.default_rng(0).uniform(size=(3, 8, 8)), ["a", "b", "c"], title="t"
    )
    assert [type(trace) for trace in figure.data] == [go.Heatmap] * 3


def test_an_episode_step_leaves_unseen_pixels_blank_and_marks_the_true_class(played):
    scenes, logs = played
    figure = glimpse_plots.logged_episode(logs["grid"], scenes, SENSOR, index=3, glimpses=2, name="grid")
    scene, memory, belief = figure.data
    unseen = np.isnan(np.asarray(memory.z, dtype=float))
    assert unseen[12:, :].all() and not unseen[:12, :].any()  # two quadrants seen: the top half
    assert np.array_equal(np.asarray(scene.z), scenes.x[3, 0].numpy())
    label = int(scenes.y[3])
    assert belief.marker.color[label] != belief.marker.color[(label + 1) % 10]
    assert np.allclose(sum(belief.y), 1, atol=1e-5)
    assert len(figure.layout.shapes) == 2


def test_the_episode_stepper_redraws_when_a_control_changes(played):
    scenes, logs = played

    def render(policy, glimpses, scene):
        log = logs[policy]
        return glimpse_plots.logged_episode(log, scenes, SENSOR, index=scene, glimpses=glimpses, name=policy)

    controls = {"policy": dropdown("policy", list(logs)), "glimpses": slider("glimpses", [0, 1, 2])}
    stepper = explorer(render, scene=slider("scene", [0, 1]), **controls)
    assert len(stepper.last.layout.shapes) == 0  # no glimpse yet
    stepper.controls["glimpses"].value = 2
    assert len(stepper.last.layout.shapes) == 2
    stepper.controls["policy"].value = "ideal"
    assert stepper.last.layout.shapes[1].x1 - stepper.last.layout.shapes[1].x0 == 8  # the sharp box
    assert stepper.renders == 3


def test_accuracy_and_side_plots_carry_every_series():
    curves = {"a": np.array([[0.1, 0.5, 0.6], [0.1, 0.4, 0.7]]), "b": np.array([[0.1, 0.2, 0.3]])}
    figure = glimpse_plots.accuracy_by_glimpse(curves, title="t")
    assert len(figure.data) == 4  # a band and a mean line per series
    sides = {"agent": np.array([[32, 12], [32, 10]]), "random": np.array([[20, 9], [11, 30]])}
    figure = glimpse_plots.side_by_step(sides, 32, title="t")
    assert [trace.name for trace in figure.data] == ["agent", "random"]
    assert list(figure.data[0].x) == [1, 2, 1, 2]


def test_every_playground_control_changes_what_is_shown(played):
    from types import SimpleNamespace

    scenes, logs = played
    game = Game(scenes=SceneConfig(canvas_size=24, layouts=1), glimpses=2, observation_grid=6)
    result = SimpleNamespace(logs={name: [log] for name, log in logs.items()}, test_scenes=scenes, game=game)
    playground = glimpse_plots.playground(result, scenes=5)
    episode, bars = playground.last
    assert len(episode.layout.shapes) == 2 and list(bars.data[0].x) == ["grid", "ideal"]
    seen = {playground.status.value}

    def shown():
        episode, bars = playground.last
        return (
            episode.layout.title.text,
            len(episode.layout.shapes),
            tuple(bars.data[0].y),
            playground.status.value,
        )

    before = shown()
    for name, value in (("glimpses_taken", 1), ("policy", "ideal"), ("scene", 3)):
        playground.controls[name].value = value
        after = shown()
        assert after != before, name  # each control visibly answers
        before = after
        seen.add(playground.status.value)
    assert len(seen) == 4 and playground.renders == 4
    assert "ideal, scene 3" in playground.status.value
