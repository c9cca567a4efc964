import math

import pytest
import torch
from torch import nn

from efflab.runtime import seed_everything
from efflab.train import TrainConfig, classification_metrics, cross_entropy, fit, lr_factor


def blobs(n=256, seed=0):
    """Two Gaussian blobs: a problem a linear classifier solves in a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, 2, generator=generator) + 3.0 * (2 * y[:, None] - 1)
    return x, y


def batches_of(x, y, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        index = torch.randint(0, len(x), (size,), generator=generator)
        yield x[index], y[index]


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(step, config) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, config) == pytest.approx(0.1)
    assert lr_factor(55, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_fit_learns_and_reports_history():
    x, y = blobs()
    seed_everything(0)
    model = nn.Linear(2, 2)
    config = TrainConfig(steps=60, lr=0.05, eval_every=20)
    history = fit(
        model, batches_of(x, y), config, evaluate=lambda m: classification_metrics(m, x, y), progress=False
    )
    assert list(history.step) == list(range(1, 61))
    assert history.val_accuracy.notna().sum() == 3
    assert history.val_accuracy.iloc[-1] > 0.95
    assert history.loss.iloc[-10:].mean() < history.loss.iloc[:5].mean()
    assert history.seconds.is_monotonic_increasing


def test_same_seed_gives_the_same_trained_weights():
    x, y = blobs()

    def train():
        seed_everything(5)
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
        fit(model, batches_of(x, y, seed=5), TrainConfig(steps=20, lr=0.01), progress=False)
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(train(), train())


def test_param_groups_get_their_own_scaled_learning_rate():
    x, y = blobs()
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2))
    frozen = [p.clone() for p in model[0].parameters()]
    groups = [
        {"params": list(model[0].parameters()), "lr_scale": 0.0, "name": "first"},
        {"params": list(model[1].parameters()), "lr_scale": 1.0, "name": "second"},
    ]
    fit(model, batches_of(x, y), TrainConfig(steps=5, lr=0.1), param_groups=groups, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters(), strict=True))


def test_aux_loss_is_added_to_the_objective():
    class WithAux(nn.Linear):
        def forward(self, x):
            self.aux_loss = self.weight.pow(2).sum()
            return super().forward(x)

    x, y = blobs(8)
    model = WithAux(2, 2)
    plain = nn.functional.cross_entropy(model(x), y)
    assert cross_entropy(model, x, y).item() == pytest.approx((plain + model.aux_loss).item())


def test_a_function_can_supply_batches():
    x, y = blobs(64)
    history = fit(nn.Linear(2, 2), lambda: (x, y), TrainConfig(steps=3), progress=False)
    assert len(history) == 3


def test_diverging_loss_stops_with_a_clear_error():
    x, y = blobs(64)
    with pytest.raises(FloatingPointError, match="lower the lr"):
        fit(nn.Linear(2, 2), lambda: (x * float("inf"), y), TrainConfig(steps=3), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"warmup_steps": 11}, "warmup_steps"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"grad_clip": 0}, "grad_clip"),
    ],
)
def test_bad_configs_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{"steps": 10, **kwargs})


def test_classification_metrics_name_the_split_they_scored():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(50, 3), torch.randint(0, 4, (50,))
    default = classification_metrics(model, x, y, batch_size=7)
    test = classification_metrics(model, x, y, batch_size=7, prefix="test")
    assert set(default) == {"val_loss", "val_accuracy"} and set(test) == {"test_loss", "test_accuracy"}
    logits = model(x).detach()
    assert test["test_accuracy"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    assert test["test_loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert default["val_accuracy"] == test["test_accuracy"]
    with pytest.raises(ValueError, match="prefix='holdout'"):
        classification_metrics(model, x, y, prefix="holdout")
