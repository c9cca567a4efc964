import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efflab.data.digits import Split, batches, infinite_batches, load_digit_images, load_digits, split_indices

N_IMAGES = 1797


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def raw():
    return load_digit_images()


def numbered_split(n: int) -> Split:
    """A split whose sample i has label i, so batches reveal exactly which samples they hold."""
    return Split(x=torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1), y=torch.arange(n))


def test_raw_images_are_scaled_to_unit_range(raw):
    images, labels = raw
    assert images.shape == (N_IMAGES, 8, 8) and images.dtype == np.float32
    assert images.min() == 0 and images.max() == 1
    assert labels.dtype == np.int64 and set(labels) == set(range(10))


def test_raw_images_are_scikit_learns_digits(raw):
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images, labels = raw
    np.testing.assert_array_equal(images * 16, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)


def test_split_shapes_and_types(digits):
    for split in (digits.train, digits.val, digits.test):
        assert split.x.shape == (len(split), 1, 8, 8)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    assert len(digits.train) + len(digits.val) + len(digits.test) == N_IMAGES


def test_splits_are_disjoint_and_cover_every_image(digits, raw):
    # Every one of the 1797 images is distinct, and all splits share one normalisation, so a row's bytes
    # identify the image it came from.
    rows = {
        name: {row.tobytes() for row in split.x.flatten(1).numpy()}
        for name, split in (("train", digits.train), ("val", digits.val), ("test", digits.test))
    }
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert len(rows["train"] | rows["val"] | rows["test"]) == N_IMAGES


def test_split_indices_partition_the_dataset(raw):
    parts = split_indices(raw[1], seed=3)
    together = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(together), np.arange(N_IMAGES))


def test_tensors_match_the_raw_images_at_the_split_indices(digits, raw):
    images, labels = raw
    train = split_indices(labels, seed=0)["train"]
    expected = (images[train] - digits.mean) / digits.std
    assert torch.allclose(digits.train.x[:, 0], torch.from_numpy(expected))
    assert torch.equal(digits.train.y, torch.from_numpy(labels[train]))


@settings(deadline=None)
@given(
    val_fraction=st.floats(0.05, 0.4),
    test_fraction=st.floats(0.05, 0.4),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_class_is_split_in_the_requested_proportions(raw, val_fraction, test_fraction, seed):
    labels = raw[1]
    parts = split_indices(labels, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    class_sizes = np.bincount(labels)
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        per_class = np.bincount(labels[parts[name]], minlength=10)
        assert np.all(np.abs(per_class - fraction * class_sizes) <= 1)
    assert np.all(np.bincount(labels[parts["train"]], minlength=10) > 0)


def test_train_statistics_normalise_the_training_set(digits):
    assert abs(digits.train.x.mean().item()) < 1e-4
    assert abs(digits.train.x.std(unbiased=False).item() - 1) < 1e-4
    assert isinstance(digits.mean, float) and isinstance(digits.std, float)


def test_same_seed_gives_identical_tensors_and_another_seed_does_not(digits):
    again, other = load_digits(seed=0), load_digits(seed=1)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(digits, name).x, getattr(again, name).x)
        assert torch.equal(getattr(digits, name).y, getattr(again, name).y)
    assert not torch.equal(digits.test.y, other.test.y) or not torch.equal(digits.test.x, other.test.x)


def test_batches_cover_one_epoch_exactly_once():
    split = numbered_split(103)
    drawn = list(batches(split, 10, seed=0))
    assert [len(y) for _, y in drawn] == [10] * 10 + [3]
    assert torch.equal(torch.cat([y for _, y in drawn]).sort().values, torch.arange(103))
    assert all(torch.equal(x.flatten().long(), y) for x, y in drawn)


def test_drop_last_and_unshuffled_order():
    split = numbered_split(103)
    assert [len(y) for _, y in batches(split, 10, seed=0, drop_last=True)] == [10] * 10
    in_order = torch.cat([y for _, y in batches(split, 10, seed=0, shuffle=False)])
    assert torch.equal(in_order, torch.arange(103))


def test_batch_order_is_a_function_of_the_seed():
    split = numbered_split(64)

    def order(seed):
        return torch.cat([y for _, y in batches(split, 8, seed=seed)])

    assert torch.equal(order(5), order(5))
    assert not torch.equal(order(5), order(6))


def test_infinite_batches_reshuffle_every_epoch():
    split = numbered_split(20)
    stream = infinite_batches(split, 6, seed=0)
    epochs = [torch.cat([next(stream)[1] for _ in range(3)]) for _ in range(3)]  # 3 full batches per epoch
    for epoch in epochs:
        assert len(epoch) == 18 and len(set(epoch.tolist())) == 18
    assert not torch.equal(epochs[0], epochs[1])
    replay = infinite_batches(split, 6, seed=0)
    assert torch.equal(torch.cat([next(replay)[1] for _ in range(3)]), epochs[0])


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction"),
        ({"val_fraction": 0.001}, "val_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_split_settings_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        load_digits(**kwargs)


def test_bad_batching_settings_fail_at_the_call():
    split = numbered_split(10)
    with pytest.raises(ValueError, match="batch_size"):
        batches(split, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        batches(split, 2, seed=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        infinite_batches(split, 11, seed=0)
