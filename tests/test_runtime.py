import pytest
import torch

import efflab
from efflab.runtime import resolve_mode, seed_everything
from efflab.validation import check_choice, check_fraction, check_int, check_positive


def test_setup_quick_on_cpu_prints_one_line(capsys, monkeypatch):
    monkeypatch.delenv("EFFLAB_MODE", raising=False)
    run = efflab.setup("auto", "cpu", 3)
    assert run.mode == "quick" and run.quick
    assert run.device.type == "cpu" and run.seed == 3 and run.threads >= 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "mode=quick" in out


def test_environment_overrides_auto_but_not_explicit_mode(monkeypatch):
    monkeypatch.setenv("EFFLAB_MODE", "full")
    assert resolve_mode("auto", torch.device("cpu")) == "full"
    assert resolve_mode("quick", torch.device("cpu")) == "quick"
    monkeypatch.setenv("EFFLAB_MODE", "fast")
    with pytest.raises(ValueError, match="EFFLAB_MODE"):
        resolve_mode("auto", torch.device("cpu"))


def test_budget_follows_mode():
    quick = efflab.setup("quick", "cpu", 0, verbose=False)
    full = efflab.setup("full", "cpu", 0, verbose=False)
    assert quick.budget(quick=10, full=1000) == 10
    assert full.budget(quick=10, full=1000) == 1000


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "fast"}, "mode"),
        ({"device": "tpu"}, "device"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_setup_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        efflab.setup(**{"mode": "quick", "device": "cpu", "seed": 0, **kwargs}, verbose=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda"):
        efflab.setup("quick", "cuda", 0, verbose=False)


def test_same_seed_same_numbers():
    seed_everything(7)
    first = torch.randn(5)
    seed_everything(7)
    assert torch.equal(first, torch.randn(5))


def test_timer_measures_elapsed_time():
    with efflab.Timer() as timer:
        sum(range(10_000))
    assert timer.seconds > 0


def test_validators_accept_good_and_reject_bad_values():
    check_choice("x", "a", ("a", "b"))
    check_positive("x", 0, allow_zero=True)
    check_int("x", 3, low=1, high=3)
    check_fraction("x", 0.5)
    for call in (
        lambda: check_choice("regime", "c", ("a", "b")),
        lambda: check_positive("regime", 0),
        lambda: check_int("regime", 4, low=1, high=3),
        lambda: check_int("regime", 2.0),
        lambda: check_fraction("regime", 1.0),
        lambda: check_positive("regime", True),
    ):
        with pytest.raises(ValueError, match="regime=.*expected"):
            call()


def test_environment_table_lists_versions():
    table = efflab.runtime.environment_table()
    assert table.loc["torch", "version"] == torch.__version__.split("+")[0] or "+" in table.loc["torch", "version"]
    assert table.loc["numpy", "version"] != "not installed"


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with efflab.runtime.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with efflab.runtime.torch_threads(None):
        assert torch.get_num_threads() == before


def test_cuda_products_use_tensor_float_32_deterministically_and_cpu_products_stay_float32():
    import efflab.runtime  # noqa: F401  (the setting is made on import)

    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")
    a, b = torch.randn(64, 64, dtype=torch.float64), torch.randn(64, 64, dtype=torch.float64)
    assert torch.allclose((a.float() @ b.float()).double(), a @ b, atol=1e-4)
