"""Property tests at the boundaries of the image packages (early exits, the glimpse agent, the digit and canvas
data, the CNN): any input gives a valid result or a ValueError that names the parameter, never another exception
and never a silently wrong number; then one targeted test per bad input that used to slip through."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from efflab.data.canvas import Canvases, make_canvases
from efflab.data.digits import Split, split_indices
from efflab.early_exit.exits import (
    accuracy_at_budgets,
    accuracy_within_budget,
    attach_to_cnn,
    choose_exits,
    cost_accuracy_curve,
    evaluate_threshold,
    exit_mask,
    head_accuracies,
    numerical_rank,
)
from efflab.early_exit.experiment import EarlyExitBudget, TrainingTask
from efflab.glimpse.agents import AgentBudget
from efflab.glimpse.env import Episodes, Game, GlimpseEnv, GlimpseVecEnv
from efflab.glimpse.experiment import GlimpseBudget, check_task_model, scale_pattern, standard_error
from efflab.glimpse.policies import play, random_policy
from efflab.glimpse.scenes import SceneConfig
from efflab.glimpse.sensor import Sensor
from efflab.glimpse.task_model import (
    GlimpseClassifier,
    TaskModelBudget,
    TaskModelConfig,
    box_code,
    freeze,
    ideal_boxes,
    training_boxes,
)
from efflab.models.cnn import CNN, CNNConfig

from boundaries import NUMBERS, POISON, PROPERTY, SMALL_INTS, valid_or_named

COORDINATES = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([math.nan, math.inf, 0.0, 1.0]))
FRACTIONS = st.one_of(COORDINATES, st.none())
RULES = st.sampled_from(["confidence", "entropy", "margin"])

SIZE = 16  # the glimpse game of these tests: 16 px canvases, 8 px readings
IMAGES = torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(0))
SCENES = make_canvases(IMAGES, torch.arange(6), canvas_size=SIZE, n_fragments=1, seed=0)
GAME = Game(scenes=SceneConfig(canvas_size=SIZE, layouts=1), glimpse_size=8, glimpses=2, observation_grid=4)
torch.manual_seed(0)
TASK_MODEL = freeze(GlimpseClassifier(TaskModelConfig(glimpse_size=8, d_model=16, n_heads=2, channels=(4, 4))))


def random_exit_logits(exits: int, samples: int, classes: int, seed: int, poison=None) -> torch.Tensor:
    logits = 4 * torch.randn(exits, samples, classes, generator=torch.Generator().manual_seed(seed))
    if poison is not None:
        logits[0, 0, 0] = poison
    return logits


# ---------------------------------------------------------------------------------------------------------------
# Early exits: the exit rule, its cost and its accuracy


@PROPERTY
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5)),
    threshold=NUMBERS,
    rule=RULES,
    seed=st.integers(0, 1000),
    poison=POISON,
)
def test_exit_rules_pick_a_real_exit_or_name_the_threshold(shape, threshold, rule, seed, poison):
    logits = random_exit_logits(*shape, seed, poison)
    mask = valid_or_named(lambda: exit_mask(logits[0], threshold, rule), "threshold", "rule")
    if mask is not None:
        assert mask.dtype == torch.bool and mask.shape == (shape[1],)
    exits = valid_or_named(lambda: choose_exits(logits, threshold, rule), "threshold", "rule", "exit_logits")
    if exits is not None:
        assert poison is None and exits.shape == (shape[1],)
        assert ((exits >= 0) & (exits < shape[0])).all()
        assert math.isnan(float(threshold)) is False and float(threshold) >= 0


@PROPERTY
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(2, 4)),
    threshold=st.one_of(st.floats(0, 1), NUMBERS),
    costs=st.lists(st.one_of(st.floats(0, 100), NUMBERS), min_size=1, max_size=4),
    backbone_flops=st.one_of(st.none(), NUMBERS),
    labels_shape=st.sampled_from(["right", "column", "short"]),
    label_high=st.integers(1, 12),
    float_labels=st.booleans(),
    seed=st.integers(0, 1000),
    poison=POISON,
)
def test_evaluating_a_threshold_gives_a_real_operating_point(
    shape, threshold, costs, backbone_flops, labels_shape, label_high, float_labels, seed, poison
):
    exits, samples, classes = shape
    logits = random_exit_logits(exits, samples, classes, seed, poison)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, label_high, (samples,), generator=generator)
    labels = {"right": labels, "column": labels[:, None], "short": labels[:-1]}[labels_shape]
    labels = labels.float() if float_labels else labels
    names = ("threshold", "exit_logits", "labels", "costs", "backbone_flops")
    outcome = valid_or_named(
        lambda: evaluate_threshold(logits, labels, costs, threshold, backbone_flops=backbone_flops), *names
    )
    if outcome is not None:
        assert poison is None and labels_shape == "right" and not float_labels and label_high <= classes
        assert 0 <= outcome.accuracy <= 1 and outcome.histogram.sum() == samples
        assert math.isfinite(outcome.expected_flops) and outcome.expected_flops >= 0
        assert math.isfinite(outcome.relative_cost) and outcome.relative_cost >= 0
        right = (outcome.predictions == labels).float().mean()
        assert outcome.accuracy == pytest.approx(float(right))


@PROPERTY
@given(budgets=st.lists(NUMBERS, max_size=4), fractions=st.lists(NUMBERS, max_size=4))
def test_accuracy_within_budgets_is_a_curve_value_or_names_the_budgets(budgets, fractions):
    curve = pd.DataFrame({"relative_cost": [0.2, 0.5, 1.0], "accuracy": [0.3, 0.6, 0.9]})
    values = valid_or_named(lambda: accuracy_within_budget(curve, budgets), "budgets")
    if values is not None:
        assert values.shape == (len(budgets),)
        for budget, value in zip(budgets, values, strict=True):
            assert np.isnan(value) if budget < 0.2 else value in (0.3, 0.6, 0.9)
    table = valid_or_named(lambda: accuracy_at_budgets(curve, fractions), "fractions")
    if table is not None:
        assert len(table) == len(set(f"{round(100 * f)}%" for f in fractions))


# ---------------------------------------------------------------------------------------------------------------
# The glimpse sensor


@PROPERTY
@given(
    canvas_size=SMALL_INTS,
    glimpse_size=SMALL_INTS,
    min_side=st.one_of(st.none(), SMALL_INTS),
    max_side=st.one_of(st.none(), SMALL_INTS),
    box=st.tuples(st.integers(-4, 40), st.integers(-4, 40), st.integers(-2, 40)),
    where=st.tuples(COORDINATES, COORDINATES, COORDINATES),
)
def test_the_sensor_reads_only_boxes_on_the_canvas(canvas_size, glimpse_size, min_side, max_side, box, where):
    names = ("canvas_size", "glimpse_size", "min_side", "max_side")
    sensor = valid_or_named(lambda: Sensor(canvas_size, glimpse_size, min_side, max_side), *names)
    if sensor is None:
        return
    size, glimpse = sensor.canvas_size, sensor.glimpse_size
    canvases = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(size))
    boxes = torch.tensor([box])
    reading = valid_or_named(lambda: sensor.read(canvases, boxes), "boxes")
    top, left, side = box
    inside = side >= 1 and 0 <= top <= size - side and 0 <= left <= size - side
    assert (reading is not None) == inside
    if reading is not None:
        assert reading.shape == (1, glimpse, glimpse) and torch.isfinite(reading).all()
        assert reading.min() >= 0 and reading.max() <= 1 + 1e-6
        memory = sensor.paint(sensor.empty_memory(1), reading, boxes)
        assert torch.isfinite(memory).all() and memory[:, 1].max() == pytest.approx(glimpse / side)
    placed = valid_or_named(lambda: sensor.boxes(torch.tensor([where], dtype=torch.float64)), "where")
    if placed is not None:
        top, left, side = placed[0].tolist()
        assert sensor.min_side <= side <= sensor.max_side and 0 <= top <= size - side and 0 <= left <= size - side


@PROPERTY
@given(positions=st.tuples(st.integers(-3, 12), st.integers(-3, 12)), around=FRACTIONS, whole=FRACTIONS)
def test_task_model_boxes_hold_the_digit_or_name_the_input(positions, around, whole):
    sensor, corners = Sensor(SIZE, 8), torch.tensor([positions])
    generator = torch.Generator().manual_seed(0)
    boxes = valid_or_named(
        lambda: training_boxes(corners, sensor, generator, around_digit=around, whole_scene=whole),
        "positions",
        "around_digit",
        "whole_scene",
    )
    if boxes is not None:
        assert min(positions) >= 0 and max(positions) <= SIZE - 8
        sensor.check_boxes(boxes)
        ideal = ideal_boxes(corners, sensor)
        top, left, side = ideal[0].tolist()
        assert top <= positions[0] and left <= positions[1] and positions[0] + 8 <= top + side


# ---------------------------------------------------------------------------------------------------------------
# Budgets and configs


@PROPERTY
@given(
    total_steps=SMALL_INTS,
    main_share=FRACTIONS,
    backbone_lr=NUMBERS,
    rank_rtol=NUMBERS,
    threshold=NUMBERS,
    canvas_size=SMALL_INTS,
    min_lr_ratio=FRACTIONS,
)
def test_early_exit_budgets_hold_only_sensible_values(
    total_steps, main_share, backbone_lr, rank_rtol, threshold, canvas_size, min_lr_ratio
):
    fields = dict(
        total_steps=total_steps,
        main_share=main_share,
        backbone_lr=backbone_lr,
        rank_rtol=rank_rtol,
        timing_thresholds=(threshold,),
        canvas_size=canvas_size,
        min_lr_ratio=min_lr_ratio,
    )
    budget = valid_or_named(lambda: EarlyExitBudget(**fields), *fields)
    if budget is not None:
        assert isinstance(budget.total_steps, int) and budget.total_steps >= 2
        assert 0 < budget.main_share < 1 and 0 <= budget.min_lr_ratio <= 1
        assert math.isfinite(budget.backbone_lr) and budget.backbone_lr > 0
        assert math.isfinite(budget.rank_rtol) and budget.rank_rtol > 0
        assert math.isfinite(threshold) and threshold >= 0
        schedule = budget.schedule()
        assert schedule.backbone_steps + schedule.exit_steps == budget.total_steps


@PROPERTY
@given(
    steps=SMALL_INTS,
    gamma=FRACTIONS,
    learning_rate=NUMBERS,
    temperature=NUMBERS,
    learning_starts=SMALL_INTS,
    lr=NUMBERS,
    around_digit=FRACTIONS,
    glimpses=SMALL_INTS,
)
def test_glimpse_budgets_hold_only_sensible_values(
    steps, gamma, learning_rate, temperature, learning_starts, lr, around_digit, glimpses
):
    agent_fields = dict(
        steps=steps,
        gamma=gamma,
        learning_rate=learning_rate,
        initial_temperature=temperature,
        learning_starts=learning_starts,
    )
    agent = valid_or_named(lambda: AgentBudget(**agent_fields), *agent_fields)
    if agent is not None:
        assert 0 <= agent.gamma <= 1 and 0 <= agent.learning_starts <= agent.steps
        assert math.isfinite(agent.learning_rate) and agent.learning_rate > 0
        assert math.isfinite(agent.initial_temperature) and agent.initial_temperature > 0
    task_fields = dict(steps=16, batch_size=4, glimpses=glimpses, lr=lr, around_digit=around_digit)
    task = valid_or_named(lambda: TaskModelBudget(**task_fields), *task_fields)
    if task is not None:
        assert math.isfinite(task.lr) and task.lr > 0 and 0 <= task.around_digit <= 1 - task.whole_scene
    if agent is not None and task is not None:
        budget = valid_or_named(lambda: GlimpseBudget(task_model=task, agent=agent, seeds=2), "seeds")
        assert budget is not None and budget.fixed_game.fixed_side == budget.fixed_side


@PROPERTY
@given(widths=st.lists(SMALL_INTS, max_size=3), image_size=SMALL_INTS, mutate=st.booleans())
def test_a_cnn_is_built_only_from_a_sensible_config(widths, image_size, mutate):
    config = CNNConfig(widths=(2,), hidden=4)
    if mutate:  # a CNNConfig is mutable: the CNN must not trust what it was built with
        config.widths, config.image_size = tuple(widths), image_size
        model = valid_or_named(lambda: CNN(config), "widths", "image_size")
    else:
        config = valid_or_named(
            lambda: CNNConfig(widths=tuple(widths), image_size=image_size, hidden=4), "widths", "image_size"
        )
        model = None if config is None else valid_or_named(lambda: CNN(config), "widths", "image_size")
    if model is not None:
        assert all(isinstance(w, int) and w >= 1 for w in widths) and widths
        size = model.config.image_size
        assert model(torch.zeros(1, 1, size, size)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------------------------
# Data and the environments


@PROPERTY
@given(labels=st.lists(st.one_of(st.integers(-6, 45), st.floats(-1, 12)), min_size=3, max_size=3), poison=POISON)
def test_canvases_hold_only_pixels_in_range_and_real_digit_labels(labels, poison):
    images = IMAGES[:3].clone()
    if poison is not None:
        images[1, 2, 3] = poison
    canvases = valid_or_named(
        lambda: make_canvases(images, np.asarray(labels), canvas_size=12), "images", "labels"
    )
    if canvases is not None:
        assert poison is None and all(isinstance(y, int) and 0 <= y < 10 for y in labels)
        assert canvases.y.tolist() == labels and torch.isfinite(canvases.x).all()


@PROPERTY
@given(seed=st.one_of(st.integers(-10, 2**33), st.floats(-1, 10), st.none(), st.booleans()))
def test_environment_seeds_are_checked_before_gymnasium_sees_them(seed):
    env = GlimpseEnv(SCENES, TASK_MODEL, GAME)
    reset = valid_or_named(lambda: env.reset(seed=seed), "seed")
    if reset is not None:
        assert seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32)
        assert env.observation_space.contains(reset[0])
    vec = GlimpseVecEnv(SCENES, TASK_MODEL, GAME, n_envs=2)
    if valid_or_named(lambda: vec.seed(seed), "seed") is not None:
        assert vec.reset().shape == (2, *vec.observation_space.shape)


# ---------------------------------------------------------------------------------------------------------------
# The bad inputs that used to pass or crash, one by one

LOGITS = random_exit_logits(3, 5, 4, seed=0)
LABELS = torch.tensor([0, 1, 2, 3, 0])


@pytest.mark.parametrize("rule", ["confidence", "entropy"])
@pytest.mark.parametrize("threshold", [math.nan, -1.0, None, True])
def test_exit_mask_and_choose_exits_refuse_the_same_thresholds(rule, threshold):
    with pytest.raises(ValueError, match="threshold"):
        exit_mask(LOGITS[0], threshold, rule)
    with pytest.raises(ValueError, match="threshold"):
        choose_exits(LOGITS, threshold, rule)


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        (dict(labels=LABELS[:, None]), "labels"),  # broadcast to a 5 x 5 comparison before
        (dict(labels=LABELS.float()), "labels"),
        (dict(labels=torch.tensor([0, 1, 2, 3, 9])), "labels"),
        (dict(labels=torch.tensor([0, 1, 2, 3, -1])), "labels"),
        (dict(labels=LABELS[:4]), "labels"),
        (dict(costs=[1, 2, 0]), "costs"),  # divided by zero before
        (dict(backbone_flops=0), "backbone_flops"),  # divided by zero before
        (dict(backbone_flops=math.inf), "backbone_flops"),
        (dict(costs=[1, math.nan, 3]), "costs"),
        (dict(costs=[1, -2, 3]), "costs"),
        (dict(costs=[1, 2]), "costs"),
        (dict(exit_logits=LOGITS[0]), "exit_logits"),  # crashed inside torch.bincount before
        (dict(exit_logits=LOGITS.clone().index_fill_(1, torch.tensor([0]), math.nan)), "exit_logits"),
    ],
)
def test_evaluate_threshold_refuses_bad_labels_costs_and_logits(arguments, parameter):
    values = {"exit_logits": LOGITS, "labels": LABELS, "costs": [1, 2, 3], "threshold": 0.5, **arguments}
    backbone = values.pop("backbone_flops", None)
    with pytest.raises(ValueError, match=parameter):
        evaluate_threshold(*values.values(), backbone_flops=backbone)


def test_an_evaluation_with_right_labels_reports_the_true_accuracy():
    outcome = evaluate_threshold(LOGITS, LABELS, [1, 2, 3], 0.5)
    predictions = LOGITS.argmax(-1)[outcome.exits, torch.arange(5)]
    assert outcome.accuracy == pytest.approx(float((predictions == LABELS).float().mean()))


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        (lambda: cost_accuracy_curve(LOGITS, LABELS, [1, 2, 3], []), "thresholds"),
        (lambda: cost_accuracy_curve(LOGITS, LABELS, [1, 2, 3], [0.5, None]), "threshold"),
        (
            lambda: accuracy_within_budget(pd.DataFrame({"relative_cost": [1.0], "accuracy": [1.0]}), [math.nan]),
            "budgets",
        ),
        (
            lambda: accuracy_at_budgets(pd.DataFrame({"relative_cost": [1.0], "accuracy": [1.0]}), [math.inf]),
            "fractions",
        ),
        (lambda: numerical_rank(torch.full((5, 3), math.nan)), "activations"),
        (lambda: attach_to_cnn(torch.nn.Linear(2, 2)), "cnn"),
        (lambda: TrainingTask(EarlyExitBudget(), 0, None, 0.0), "share"),
        (lambda: EarlyExitBudget(timing_thresholds=0.5), "timing_thresholds"),
        (lambda: EarlyExitBudget(timing_thresholds=(math.nan,)), "timing_thresholds"),
    ],
)
def test_early_exit_helpers_name_the_bad_input(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()


def test_head_accuracies_refuse_labels_that_would_broadcast():
    network = attach_to_cnn(CNN(CNNConfig(widths=(2, 2), hidden=4)))
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="y"):
        head_accuracies(network, x, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="y"):
        head_accuracies(network, x, torch.full((4,), 10))
    assert len(head_accuracies(network, x, torch.zeros(4, dtype=torch.long))) == 1


@pytest.mark.parametrize("accuracy", [math.nan, 1.5, -0.1, None])
def test_the_task_model_gate_refuses_what_is_not_an_accuracy(accuracy):
    with pytest.raises(ValueError, match="accuracy"):
        check_task_model(accuracy)


def test_the_task_model_gate_still_stops_a_weak_model():
    with pytest.raises(RuntimeError, match="accuracy 0.500"):
        check_task_model(0.5)
    check_task_model(0.9)


def zero_width_config() -> CNNConfig:
    config = CNNConfig()
    config.widths = (0,)
    return config


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        (lambda: AgentBudget(steps=2000, gamma=1.5), "gamma"),
        (lambda: AgentBudget(steps=2000, gamma=math.nan), "gamma"),
        (lambda: TaskModelBudget(steps=10, batch_size=4, glimpses=2, lr=-1), "lr"),
        (lambda: TaskModelBudget(steps=10, batch_size=4, glimpses=2, lr=math.nan), "lr"),
        (lambda: TaskModelBudget(steps=10, batch_size=4, glimpses=2, around_digit=0.8, whole_scene=0.4), "around"),
        (lambda: GlimpseClassifier(TaskModelConfig(channels=(0, 32))), "channels"),
        (lambda: TaskModelConfig(channels=(8, 8, 8)), "channels"),
        (lambda: box_code(torch.zeros(2, 3), 16, unit=0.0), "unit"),
        (lambda: CNN(zero_width_config()), "widths"),
        (lambda: CNNConfig(widths=None), "widths"),
        (lambda: CNN(CNNConfig())(torch.zeros(2, 3, 8, 8)), "images"),
        (lambda: GlimpseBudget(seeds=0), "seeds"),
        (lambda: EarlyExitBudget(rank_rtol=math.inf), "rank_rtol"),
        (lambda: replace(EarlyExitBudget(), main_share=math.nan), "main_share"),
    ],
)
def test_budgets_and_configs_name_the_bad_field(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()


NAN_IMAGES = IMAGES[:3].clone().index_fill_(1, torch.tensor([0]), math.nan)


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        (lambda: make_canvases(NAN_IMAGES, [0, 1, 2], canvas_size=12), "images"),
        (lambda: make_canvases(IMAGES[:3], [0.5, 1, 2], canvas_size=12), "labels"),
        (lambda: make_canvases(IMAGES[:3], [42, 1, 2], canvas_size=12), "labels"),
        (lambda: make_canvases(IMAGES[:3], [-5, 1, 2], canvas_size=12), "labels"),
        (lambda: Canvases(SCENES.x, SCENES.y + 40, SCENES.positions), "y"),
        (lambda: Canvases(SCENES.x * math.nan, SCENES.y, SCENES.positions), "x"),
        (lambda: Canvases(SCENES.x, SCENES.y, SCENES.positions + SIZE), "positions"),
        (lambda: Split(torch.zeros(3, 1, 8, 8), torch.tensor([0.5, 1.0, 2.0])), "y"),
        (lambda: Split(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1])), "y"),
        (lambda: split_indices(np.array([0.5, 1.5] * 20)), "labels"),
        (lambda: split_indices(np.array([-5, 1] * 20)), "labels"),
    ],
)
def test_data_refuses_nan_pixels_and_labels_that_are_not_classes(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()


CANVASES = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("boxes", "canvases"),
    [
        ([[14, 14, 4]], CANVASES),  # read a partial box before
        ([[0, 0, 0]], CANVASES),  # read NaN before
        ([[-2, 0, 8]], CANVASES),
        ([[0, 0, SIZE + 1]], CANVASES),
        ([[0.0, 0.0, 8.0]], CANVASES),
        ([[0, 0, 8], [0, 0, 8]], CANVASES),
        ([[0, 0, 8]], torch.rand(1, 1, 12, 12)),
        ([[0, 0, 8]], CANVASES * math.nan),
    ],
)
def test_the_sensor_refuses_boxes_off_the_canvas_and_bad_canvases(boxes, canvases):
    sensor = Sensor(SIZE, 4)
    with pytest.raises(ValueError, match="boxes|canvases"):
        sensor.read(canvases, torch.tensor(boxes))


def test_the_sensor_checks_boxes_wherever_they_come_from():
    sensor, outside = Sensor(SIZE, 4), torch.tensor([[14, 14, 4]])
    with pytest.raises(ValueError, match="boxes"):
        sensor.paint(sensor.empty_memory(1), torch.zeros(1, 4, 4), outside)
    with pytest.raises(ValueError, match="boxes"):
        sensor.remember(CANVASES, outside[:, None])
    with pytest.raises(ValueError, match="boxes"):
        sensor.where_for(outside)
    with pytest.raises(ValueError, match="positions"):
        ideal_boxes(torch.tensor([[SIZE - 4, 0]]), Sensor(SIZE, 8))


@pytest.mark.parametrize("seed", [-1, 1.5, True, 2**32])
def test_both_environments_check_the_seed_first(seed):
    with pytest.raises(ValueError, match="seed"):
        GlimpseEnv(SCENES, TASK_MODEL, GAME).reset(seed=seed)
    with pytest.raises(ValueError, match="seed"):
        GlimpseVecEnv(SCENES, TASK_MODEL, GAME, n_envs=2).seed(seed)


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        (lambda: GlimpseEnv(SCENES, TASK_MODEL, GAME).reset(options=[0]), "options"),
        (lambda: Episodes(SCENES.x, torch.tensor([0, 1, 2, 3, 4, 42]), TASK_MODEL, GAME), "labels"),
        (lambda: Episodes(SCENES.x, SCENES.y, "model", GAME), "task_model"),
        (lambda: Episodes(SCENES.x, SCENES.y, TASK_MODEL, GAME).take(torch.full((1, 3), 0.5)), "where"),
        (lambda: Episodes(SCENES.x, SCENES.y, TASK_MODEL, GAME).act(np.zeros((2, 3))), "actions"),
        (lambda: play(random_policy(), SCENES, TASK_MODEL, GAME, chunk=0), "chunk"),
        (lambda: play(random_policy(), SCENES.x, TASK_MODEL, GAME), "scenes"),
        (lambda: scale_pattern([], SIZE), "logs"),  # said "whole scene first" before
        (lambda: standard_error(0), "test_scenes"),  # divided by zero before
    ],
)
def test_glimpse_helpers_name_the_bad_input(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()
