import contextlib

import pytest
import torch

from efflab.cache import CACHE_FORMAT, atomic_save, cached, config_key, describe


def test_cached_builds_once_then_loads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(5)}

    first = cached("thing", {"n": 5}, build, directory=tmp_path)
    second = cached("thing", {"n": 5}, build, directory=tmp_path)
    assert len(calls) == 1 and torch.equal(first["x"], second["x"])


def test_a_corrupt_entry_is_rebuilt_not_trusted(tmp_path):
    cached("thing", {"n": 3}, lambda: torch.ones(3), directory=tmp_path)
    (path,) = tmp_path.glob("thing-*.pt")
    path.write_bytes(b"not a torch file")
    value = cached("thing", {"n": 3}, lambda: torch.full((3,), 2.0), directory=tmp_path)
    assert torch.equal(value, torch.full((3,), 2.0))
    assert torch.equal(torch.load(path, weights_only=True)["value"], value)


def test_different_configs_get_different_keys():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    atomic_save(torch.zeros(2), tmp_path / "sub" / "x.pt")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save(torch.zeros(2), path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with contextlib.suppress(RuntimeError):
        atomic_save(Unpicklable(), path)
    assert torch.equal(torch.load(path, weights_only=True), torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def entry_path(tmp_path, name="thing"):
    (path,) = tmp_path.glob(f"{name}-*.pt")
    return path


@pytest.mark.parametrize(
    "foreign",
    [
        "a string",
        [1, 2, 3],
        {"other": "keys"},
        torch.zeros(0),
        {"format": CACHE_FORMAT + 1, "name": "thing", "key": "?", "schema": "int", "value": 3},
    ],
    ids=["string", "list", "other-dict", "empty-tensor", "other-format"],
)
def test_an_entry_of_the_wrong_kind_is_rebuilt(tmp_path, foreign):
    good = {"x": torch.arange(4), "n": 4}
    cached("thing", {"n": 4}, lambda: good, directory=tmp_path)
    torch.save(foreign, entry_path(tmp_path))
    rebuilt = cached("thing", {"n": 4}, lambda: {"x": torch.arange(4) * 2, "n": 4}, directory=tmp_path)
    assert torch.equal(rebuilt["x"], torch.arange(4) * 2)


def test_an_entry_whose_value_does_not_match_its_description_is_rebuilt(tmp_path):
    cached("thing", {"n": 4}, lambda: {"x": torch.arange(4)}, directory=tmp_path)
    path = entry_path(tmp_path)
    entry = torch.load(path, weights_only=True)
    entry["value"]["x"] = entry["value"]["x"][:2].float()  # truncated, and of another dtype
    torch.save(entry, path)
    assert torch.equal(
        cached("thing", {"n": 4}, lambda: {"x": torch.arange(4)}, directory=tmp_path)["x"], torch.arange(4)
    )


def test_the_callers_check_can_refuse_an_entry(tmp_path):
    cached("thing", {}, lambda: torch.tensor([float("nan")]), directory=tmp_path)
    value = cached(
        "thing", {}, lambda: torch.ones(1), directory=tmp_path, check=lambda v: bool(torch.isfinite(v).all())
    )
    assert torch.equal(value, torch.ones(1))


def test_describe_names_what_it_cannot_store():
    assert describe({"a": torch.zeros(2, 3, dtype=torch.uint8)}) == [
        "dict",
        {"a": ["tensor", "torch.uint8", [2, 3]]},
    ]
    with pytest.raises(ValueError, match="set"):
        describe({1, 2})


@pytest.mark.parametrize("name", ["../../x", "a/b", "", ".hidden", 3])
def test_names_stay_inside_the_cache_folder(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        cached(name, {}, lambda: 1, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_directory_string_is_refused(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        cached("thing", {}, lambda: 1, directory="")
    with pytest.raises(ValueError, match="config"):
        cached("thing", [1], lambda: 1, directory=tmp_path)
