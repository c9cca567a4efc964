import numpy as np
import pytest
import torch

from efflab.data.canvas import load_canvases, make_canvases, paste_max
from efflab.data.digits import load_digit_images, load_digits


@pytest.fixture(scope="module")
def sample():
    images, labels = load_digit_images()
    return torch.from_numpy(images[:200]), torch.from_numpy(labels[:200])


def digit_crops(canvases, size: int = 8) -> torch.Tensor:
    """The size x size window of every canvas at its recorded position (a plain loop: this is the reference)."""
    return torch.stack(
        [
            canvas[0, row : row + size, col : col + size]
            for canvas, (row, col) in zip(canvases.x, canvases.positions, strict=True)
        ]
    )


def outside_digit(canvases, size: int = 8) -> torch.Tensor:
    """Each canvas with its digit's window set to zero."""
    cleared = canvases.x[:, 0].clone()
    for canvas, (row, col) in zip(cleared, canvases.positions, strict=True):
        canvas[row : row + size, col : col + size] = 0
    return cleared


def test_shapes_types_and_range(sample):
    images, labels = sample
    canvases = make_canvases(images, labels, canvas_size=24, n_fragments=5, fragment_size=3, seed=1)
    assert canvases.x.shape == (200, 1, 24, 24) and canvases.x.dtype == torch.float32
    assert canvases.y.dtype == torch.int64 and torch.equal(canvases.y, labels)
    assert canvases.positions.shape == (200, 2) and canvases.positions.dtype == torch.int64
    assert canvases.x.min() >= 0 and canvases.x.max() <= 1
    assert canvases.positions.min() >= 0 and canvases.positions.max() <= 24 - 8
    assert len(canvases) == 200


def test_without_clutter_the_digit_is_the_only_ink(sample):
    images, labels = sample
    canvases = make_canvases(images, labels, canvas_size=20, n_fragments=0, seed=0)
    assert torch.equal(digit_crops(canvases), images)
    assert torch.count_nonzero(outside_digit(canvases)) == 0


def test_clutter_adds_ink_but_never_erases_the_digit(sample):
    images, labels = sample
    clean = make_canvases(images, labels, n_fragments=0, seed=4)
    cluttered = make_canvases(images, labels, n_fragments=6, fragment_size=4, seed=4)
    assert torch.equal(clean.positions, cluttered.positions)
    assert torch.all(cluttered.x >= clean.x)
    assert torch.all(digit_crops(cluttered) >= images)
    canvases_with_clutter = (outside_digit(cluttered).flatten(1) > 0).any(dim=1)
    assert canvases_with_clutter.float().mean() > 0.9


def test_fragments_are_squares_cut_from_other_images():
    # Image i is a flat square of its own brightness, so every pixel tells which image it came from.
    n_images, fragment_size = 30, 3
    brightness = torch.linspace(0.1, 1.0, n_images)
    images = brightness[:, None, None].expand(n_images, 8, 8)
    canvases = make_canvases(
        images, torch.zeros(n_images, dtype=torch.int64), n_fragments=1, fragment_size=fragment_size, seed=2
    )
    assert not torch.any(outside_digit(canvases) == brightness[:, None, None])  # never the digit's own image
    visible = 0
    for canvas, own in zip(canvases.x[:, 0], brightness, strict=True):
        foreign = (canvas != 0) & (canvas != own)
        if not foreign.any():  # a dim fragment can hide entirely under a brighter digit
            continue
        visible += 1
        assert len(canvas[foreign].unique()) == 1
        rows, cols = foreign.nonzero(as_tuple=True)
        assert rows.max() - rows.min() < fragment_size and cols.max() - cols.min() < fragment_size
    assert visible > n_images // 2


def test_paste_max_matches_a_loop(sample):
    generator = torch.Generator().manual_seed(0)
    canvases = torch.rand(6, 10, 10, generator=generator)
    patches = torch.rand(6, 3, 3, 4, generator=generator)
    corners = torch.stack(
        [torch.randint(0, 8, (6, 3), generator=generator), torch.randint(0, 7, (6, 3), generator=generator)],
        dim=-1,
    )
    expected = canvases.clone()
    for n in range(6):
        for k in range(3):
            row, col = corners[n, k]
            window = expected[n, row : row + 3, col : col + 4]
            window.copy_(torch.maximum(window, patches[n, k]))
    before = canvases.clone()
    assert torch.equal(paste_max(canvases, patches, corners), expected)
    assert torch.equal(canvases, before)


def test_paste_max_rejects_patches_that_do_not_fit():
    with pytest.raises(ValueError, match="top_left"):
        paste_max(torch.zeros(1, 10, 10), torch.ones(1, 1, 3, 3), torch.tensor([[[0, 8]]]))


def test_same_seed_same_canvases_other_seed_other_canvases(sample):
    images, labels = sample
    first, again = make_canvases(images, labels, seed=9), make_canvases(images, labels, seed=9)
    other = make_canvases(images, labels, seed=10)
    assert torch.equal(first.x, again.x) and torch.equal(first.positions, again.positions)
    assert not torch.equal(first.positions, other.positions)


def test_numpy_input_and_a_canvas_the_size_of_a_digit(sample):
    images, labels = sample
    canvases = make_canvases(images.numpy(), labels.numpy(), canvas_size=8, n_fragments=0)
    assert torch.count_nonzero(canvases.positions) == 0
    assert torch.equal(canvases.x[:, 0], images)


def test_load_canvases_uses_the_digits_split():
    digits = load_digits(seed=0)
    val = load_canvases("val", n_fragments=0, seed=0)
    test = load_canvases("test", n_fragments=0, seed=0)
    assert torch.equal(val.y, digits.val.y) and torch.equal(test.y, digits.test.y)
    normalised = (digit_crops(val) - digits.mean) / digits.std
    assert torch.allclose(normalised, digits.val.x[:, 0], atol=1e-5)
    n = min(len(val), len(test))
    assert not torch.equal(val.positions[:n], test.positions[:n])


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"canvas_size": 7}, "canvas_size"),
        ({"fragment_size": 0}, "fragment_size"),
        ({"fragment_size": 9}, "fragment_size"),
        ({"n_fragments": -1}, "n_fragments"),
        ({"seed": 2**32}, "seed"),
    ],
)
def test_bad_settings_name_the_parameter(sample, kwargs, parameter):
    images, labels = sample
    with pytest.raises(ValueError, match=parameter):
        make_canvases(images, labels, **kwargs)


def test_bad_inputs_are_rejected(sample):
    images, labels = sample
    with pytest.raises(ValueError, match="labels"):
        make_canvases(images, labels[:-1])
    with pytest.raises(ValueError, match="images"):
        make_canvases(images * 16, labels)
    with pytest.raises(ValueError, match="images"):
        make_canvases(np.zeros((5, 8, 6), dtype=np.float32), labels[:5])
    with pytest.raises(ValueError, match="split"):
        load_canvases("training")
