import json

import numpy as np
import pytest
import torch

import efflab
from efflab import results


def test_record_writes_values_with_provenance(tmp_path):
    run = efflab.setup("quick", "cpu", 1, verbose=False)
    entry = results.record(
        "demo",
        {"acc": torch.tensor(0.5), "curve": np.arange(3), "bad": float("nan")},
        run=run,
        results_dir=tmp_path,
    )
    on_disk = json.loads((tmp_path / "demo.json").read_text())
    assert on_disk == entry
    assert on_disk["values"] == {"acc": 0.5, "curve": [0, 1, 2], "bad": None}
    prov = on_disk["provenance"]
    assert prov["mode"] == "quick" and prov["seed"] == 1 and prov["torch"] == torch.__version__
    assert prov["wall_seconds"] >= 0 and prov["date"].startswith("20")
    assert results.load("demo", results_dir=tmp_path) == entry


def test_record_without_a_folder_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    entry = results.record("demo", {"x": 1})
    assert entry["values"] == {"x": 1} and list(tmp_path.iterdir()) == []


def test_load_returns_none_when_missing(tmp_path):
    assert results.load("nothing_here", results_dir=tmp_path) is None


def test_load_reports_a_broken_file(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        results.load("broken", results_dir=tmp_path)


@pytest.mark.parametrize("name", ["../escape", "", ".hidden", "a/b", 3])
def test_bad_names_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match="name="):
        results.record(name, {}, results_dir=tmp_path)


def test_values_that_are_not_json_are_refused(tmp_path):
    with pytest.raises(ValueError, match="object"):
        results.record("demo", {"x": object()}, results_dir=tmp_path)


@pytest.mark.parametrize("path", sorted(results.COMMITTED_RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_committed_results_carry_their_provenance(path):
    entry = json.loads(path.read_text())
    assert entry["provenance"]["mode"] == "full"  # data/results/ holds full-mode runs only
    for key in ("device", "torch", "git_commit", "date"):
        assert entry["provenance"][key] and entry["runner"][key]  # written by run_notebooks, never by hand
