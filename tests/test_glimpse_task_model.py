import pandas as pd
import pytest
import torch

from efflab.glimpse.scenes import SceneConfig, load_scenes
from efflab.glimpse.sensor import Sensor
from efflab.glimpse.task_model import (
    DIGIT_SIZE,
    GlimpseClassifier,
    TaskModelBudget,
    TaskModelConfig,
    beliefs,
    box_code,
    cached_task_model,
    digit_boxes,
    ideal_boxes,
    load_task_model,
    save_task_model,
    train_task_model,
    training_boxes,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GlimpseClassifier(TaskModelConfig()).eval()


def random_glimpses(n, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sensor = Sensor()
    readings = torch.rand(n, steps, 8, 8, generator=generator)
    boxes = torch.stack(
        [sensor.boxes(torch.rand(n, 3, generator=generator, dtype=torch.float64)) for _ in range(steps)], 1
    )
    return readings, boxes


def test_one_pass_gives_the_belief_after_every_prefix_of_glimpses(model):
    readings, boxes = random_glimpses(5, 4)
    with torch.no_grad():
        all_steps = model(readings, boxes)
        assert all_steps.shape == (5, 5, 10)
        for t in range(5):
            prefix = model(readings[:, :t], boxes[:, :t])
            assert torch.allclose(prefix[:, -1], all_steps[:, t], atol=1e-5)


def test_the_belief_before_any_glimpse_is_the_same_for_every_scene(model):
    readings, boxes = random_glimpses(6, 2)
    with torch.no_grad():
        prior = model(readings, boxes)[:, 0]
    assert torch.allclose(prior, prior[:1].expand_as(prior), atol=1e-6)


def test_the_belief_does_not_depend_on_the_order_of_the_glimpses(model):
    readings, boxes = random_glimpses(4, 3)
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        forward = model(readings, boxes)[:, -1]
        shuffled = model(readings[:, order], boxes[:, order])[:, -1]
    assert torch.allclose(forward, shuffled, atol=1e-5)


def test_box_code_tells_boxes_apart_and_rejects_bad_sizes():
    boxes = torch.tensor([[0, 0, 8], [0, 0, 16], [8, 0, 8]])
    code = box_code(boxes, 64, unit=8)
    assert code.shape == (3, 64)
    assert torch.cdist(code, code).triu(1)[torch.triu(torch.ones(3, 3), 1).bool()].min() > 0.1
    with pytest.raises(ValueError, match="dim"):
        box_code(boxes, 60, unit=8)


def test_training_glimpses_around_the_digit_contain_it():
    sensor = Sensor(canvas_size=32, glimpse_size=8)
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 32 - DIGIT_SIZE + 1, (500, 2), generator=generator)
    boxes = digit_boxes(positions, sensor, generator, max_side=16)
    top, left, side = boxes.unbind(1)
    assert ((top <= positions[:, 0]) & (positions[:, 0] + DIGIT_SIZE <= top + side)).all()
    assert ((left <= positions[:, 1]) & (positions[:, 1] + DIGIT_SIZE <= left + side)).all()
    assert (top + side <= 32).all() and (left + side <= 32).all()
    ideal = ideal_boxes(positions, sensor)
    assert torch.equal(ideal[:, :2], positions) and (ideal[:, 2] == DIGIT_SIZE).all()
    mixed = training_boxes(positions, sensor, generator, around_digit=0.0, whole_scene=1.0)
    assert (mixed == torch.tensor([0, 0, 32])).all()


def test_training_learns_to_read_a_well_placed_glimpse():
    config = SceneConfig(canvas_size=16, n_fragments=1, layouts=1)
    sensor = Sensor(canvas_size=16, glimpse_size=8)
    train = load_scenes("train", config)
    budget = TaskModelBudget(steps=200, batch_size=32, glimpses=1, around_digit=1.0, whole_scene=0.0)
    model, history = train_task_model(train, sensor, budget, progress=False)
    assert not any(p.requires_grad for p in model.parameters())
    test = load_scenes("test", config)
    boxes = ideal_boxes(test.positions, sensor)[:, None]
    accuracy = beliefs(model, sensor.read(test.x, boxes[:, 0])[:, None], boxes)[:, 1].argmax(-1) == test.y
    assert history.loss.tail(20).mean() < history.loss.head(20).mean()
    assert accuracy.float().mean() > 0.3  # chance is 0.1; a few hundred steps read framed digits


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"steps": 0}, "steps"),
        ({"glimpses": 0}, "glimpses"),
        ({"around_digit": 0.8, "whole_scene": 0.5}, "around_digit"),
        ({"whole_scene": 1.5}, "whole_scene"),
    ],
)
def test_bad_budgets_name_the_parameter(kwargs, parameter):
    defaults = {"steps": 10, "batch_size": 4, "glimpses": 2}
    with pytest.raises(ValueError, match=parameter):
        TaskModelBudget(**{**defaults, **kwargs})


def test_bad_model_configs_name_the_parameter():
    with pytest.raises(ValueError, match="d_model"):
        TaskModelConfig(d_model=36, n_heads=4)


def test_the_cache_returns_the_same_frozen_model(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_CACHE", str(tmp_path))
    config = SceneConfig(canvas_size=16, n_fragments=1, layouts=1)
    sensor, scenes = Sensor(canvas_size=16, glimpse_size=8), load_scenes("val", config)
    budget = TaskModelBudget(steps=3, batch_size=8, glimpses=1)
    first, history = cached_task_model(scenes, sensor, budget, scene_key={"split": "val"}, progress=False)
    again, cached_history = cached_task_model(scenes, sensor, budget, scene_key={"split": "val"}, progress=False)
    assert history.attrs["source"] == "trained now" and cached_history.attrs["source"] == "loaded from the cache"
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert not again.training and not any(p.requires_grad for p in again.parameters())
    assert list(cached_history.loss) == pytest.approx(list(history.loss))


def test_a_saved_task_model_loads_back_and_refuses_another_game(tmp_path, model):
    history = pd.DataFrame({"step": [1, 2], "loss": [2.3, 2.1]})
    history.attrs["train_seconds"] = 4.0
    metadata = {"glimpses": 3, "sensor": {"canvas_size": 32}}
    save_task_model(model, history, tmp_path, "tiny", metadata=metadata)
    loaded, loaded_history = load_task_model(tmp_path, "tiny", expected=metadata)
    readings, boxes = random_glimpses(4, 3)
    assert torch.equal(beliefs(model, readings, boxes), beliefs(loaded, readings, boxes))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert list(loaded_history.loss) == pytest.approx([2.3, 2.1]) and loaded_history.attrs["train_seconds"] == 4.0
    assert loaded_history.attrs["source"] == "read from the committed full-mode run"
    with pytest.raises(ValueError, match="glimpses"):
        load_task_model(tmp_path, "tiny", expected={**metadata, "glimpses": 4})
    assert load_task_model(tmp_path, "absent", expected=metadata) is None
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["tiny_task_model.json", "tiny_task_model.safetensors"]  # no temp files left behind


def test_a_damaged_saved_task_model_is_refused_with_its_path(tmp_path, model):
    history = pd.DataFrame({"step": [1], "loss": [2.3]})
    path = save_task_model(model, history, tmp_path, "tiny", metadata={})
    path.write_bytes(path.read_bytes()[:50])  # a truncated safetensors file
    with pytest.raises(ValueError, match="tiny_task_model.safetensors cannot be loaded"):
        load_task_model(tmp_path, "tiny", expected={})
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="metadata"):
        load_task_model(tmp_path, "tiny", expected={})
    with pytest.raises(ValueError, match="history"):
        save_task_model(model, history.drop(columns="loss"), tmp_path, "tiny", metadata={})
    with pytest.raises(ValueError, match="model of type"):
        save_task_model(object(), history, tmp_path, "tiny", metadata={})
