import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from efflab.glimpse.sensor import RESOLUTION, SEEN, Sensor


def reference_read(canvases, boxes, glimpse_size):
    """One crop and one area resize per sample: the slow, obvious version of Sensor.read."""
    crops = [
        F.interpolate(canvas[None, :, top : top + side, left : left + side], glimpse_size, mode="area")[0, 0]
        for canvas, (top, left, side) in zip(canvases, boxes.tolist(), strict=True)
    ]
    return torch.stack(crops)


def test_a_glimpse_of_the_whole_scene_is_the_downsampled_canvas():
    sensor = Sensor(canvas_size=40, glimpse_size=8)
    canvases = torch.rand(6, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    where = torch.rand(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    where[:, 2] = 1.0  # z = 1: the largest side; y and x must not matter then
    boxes = sensor.boxes(where)
    assert torch.equal(boxes, torch.tensor([[0, 0, 40]]).expand(6, 3))
    assert torch.equal(sensor.whole_scene(6), boxes)
    expected = F.interpolate(canvases, 8, mode="area")[:, 0]
    assert torch.allclose(sensor.read(canvases, boxes), expected, atol=1e-6)


def test_reading_matches_one_crop_and_resize_per_sample():
    sensor = Sensor(canvas_size=32, glimpse_size=8)
    generator = torch.Generator().manual_seed(2)
    canvases = torch.rand(50, 1, 32, 32, generator=generator)
    boxes = sensor.boxes(torch.rand(50, 3, generator=generator, dtype=torch.float64))
    assert len(boxes[:, 2].unique()) > 10  # many different scales, most not a multiple of the reading size
    assert torch.allclose(sensor.read(canvases, boxes), reference_read(canvases, boxes, 8), atol=1e-6)


def test_smallest_glimpse_is_a_native_resolution_crop_and_corners_reach_the_edges():
    sensor = Sensor(canvas_size=32, glimpse_size=8)
    boxes = sensor.boxes(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.5]]))
    assert boxes.tolist() == [[0, 0, 8], [24, 24, 8], [12, 0, 20]]
    canvases = torch.rand(3, 1, 32, 32)
    assert torch.equal(sensor.read(canvases, boxes)[1], canvases[1, 0, 24:, 24:])


@settings(deadline=None)
@given(
    canvas_size=st.integers(8, 64),
    glimpse_size=st.integers(1, 8),
    where=st.lists(st.floats(0, 1), min_size=3, max_size=3),
)
def test_boxes_stay_inside_the_canvas_and_keep_the_side_in_range(canvas_size, glimpse_size, where):
    sensor = Sensor(canvas_size=canvas_size, glimpse_size=glimpse_size)
    top, left, side = sensor.boxes(torch.tensor([where])).tolist()[0]
    assert sensor.min_side <= side <= sensor.max_side
    assert 0 <= top <= canvas_size - side and 0 <= left <= canvas_size - side


def test_where_for_gives_back_the_box():
    sensor = Sensor(canvas_size=36, glimpse_size=6, min_side=9, max_side=30)
    boxes = sensor.boxes(torch.rand(500, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    assert torch.equal(sensor.boxes(sensor.where_for(boxes)), boxes)


def test_memory_keeps_the_sharpest_view_and_leaves_unseen_pixels_empty():
    sensor = Sensor(canvas_size=32, glimpse_size=8)
    canvases = torch.rand(1, 1, 32, 32)
    fine = torch.tensor([[4, 4, 8]])
    coarse = torch.tensor([[0, 0, 16]])
    memory = sensor.empty_memory(1)
    memory = sensor.paint(memory, sensor.read(canvases, fine), fine)
    after_fine = memory.clone()
    memory = sensor.paint(memory, sensor.read(canvases, coarse), coarse)
    assert torch.equal(memory[0, :, 4:12, 4:12], after_fine[0, :, 4:12, 4:12])  # the coarse look did not overwrite
    assert torch.equal(memory[0, SEEN, 4:12, 4:12], canvases[0, 0, 4:12, 4:12])  # native crop painted back exactly
    assert (memory[0, RESOLUTION] >= after_fine[0, RESOLUTION]).all()
    assert torch.count_nonzero(memory[0, :, 16:, :]) == 0 and torch.count_nonzero(memory[0, :, :, 16:]) == 0
    assert set(memory[0, RESOLUTION].unique().tolist()) == {0.0, 0.5, 1.0}


def test_painting_the_whole_scene_is_the_nearest_neighbour_upsampled_reading():
    sensor = Sensor(canvas_size=32, glimpse_size=8)
    canvases = torch.rand(3, 1, 32, 32)
    whole = torch.tensor([[0, 0, 32]]).expand(3, 3)
    readings = sensor.read(canvases, whole)
    memory = sensor.paint(sensor.empty_memory(3), readings, whole)
    assert torch.equal(memory[:, SEEN], F.interpolate(readings[:, None], 32, mode="nearest")[:, 0])
    assert (memory[:, RESOLUTION] == 0.25).all()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"glimpse_size": 0}, "glimpse_size"),
        ({"canvas_size": 4, "glimpse_size": 8}, "canvas_size"),
        ({"min_side": 4}, "min_side"),
        ({"max_side": 40}, "max_side"),
    ],
)
def test_bad_sensor_settings_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        Sensor(**kwargs)


def test_coordinates_outside_the_unit_cube_are_refused():
    sensor = Sensor()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sensor.boxes(torch.tensor([[0.5, 1.2, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sensor.boxes(torch.tensor([[float("nan"), 0.5, 0.5]]))
    with pytest.raises(ValueError, match="shape"):
        sensor.boxes(torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="inside the canvas"):
        sensor.where_for(torch.tensor([[30, 0, 8]]))


def test_remember_paints_the_glimpses_in_order():
    sensor = Sensor(canvas_size=16, glimpse_size=4)
    canvases = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    boxes = torch.tensor([[[0, 0, 16], [4, 4, 4]], [[8, 8, 8], [0, 0, 16]]])
    memory = sensor.empty_memory(2)
    for step in range(2):
        memory = sensor.paint(memory, sensor.read(canvases, boxes[:, step]), boxes[:, step])
    assert torch.equal(sensor.remember(canvases, boxes), memory)
    assert torch.equal(sensor.remember(canvases, boxes[:, :0]), sensor.empty_memory(2))
