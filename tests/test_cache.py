import contextlib

import torch

from efflab.cache import atomic_save, cached, config_key


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
    assert torch.equal(torch.load(path, weights_only=True), value)


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
