"""The relative schedule: uniform when every multiplier is 1 (bitwise), the right end points, clear errors."""

import math

import pytest
import torch

from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import moe_ffn
from efflab.relative_lr.schedule import PAPER_DENSE, PAPER_MOE, RelativeSchedule, relative_schedule
from efflab.train import fit, lr_factor

ALL_ONES = {group: (1.0, 1.0) for group in ("embedding", "attention", "router", "experts", "ffn", "head")}


def tiny_moe():
    torch.manual_seed(0)
    return TinyLM(GPTConfig(block_size=16, n_layer=2, n_head=2, d_model=16), moe_ffn(expansion=4, granularity=1))


def batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return lambda: (torch.randint(0, 256, (4, 16), generator=generator),) * 2


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_all_ones_repeat_the_uniform_sequence_bitwise(warmup):
    schedule = relative_schedule(3e-3, 40, warmup_steps=warmup, final_fraction=0.0444, multipliers=ALL_ONES)
    config = schedule.train_config()
    uniform = [config.lr * 1.0 * lr_factor(step, config) for step in range(45)]
    for group in (*ALL_ONES, "other"):
        assert [schedule.lr(group, step) for step in range(45)] == uniform


def test_all_ones_train_bitwise_like_the_uniform_loop():
    schedule = relative_schedule(3e-3, 6, warmup_steps=2, final_fraction=0.1, multipliers=ALL_ONES)
    plain, grouped = tiny_moe(), tiny_moe()
    first = fit(plain, batches(), schedule.train_config(), progress=False)
    second = fit(
        grouped, batches(), schedule.train_config(), param_groups=schedule.param_groups(grouped), progress=False
    )
    assert first["loss"].tolist() == second["loss"].tolist()
    for (name, a), (_, b) in zip(plain.state_dict().items(), grouped.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_optimiser_really_uses_each_groups_rate():
    schedule = relative_schedule(1e-2, 10, warmup_steps=2, final_fraction=0.1, multipliers=PAPER_MOE.multipliers)
    model = tiny_moe()
    seen = []

    def loss(m, x, y):  # the loss of step t is computed after fit set the step's learning rates
        seen.append({g["name"]: g["lr"] for g in optimizer_of[0].param_groups})
        return torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten())

    optimizer_of = []
    original = torch.optim.AdamW.__init__

    def capture(self, *args, **kwargs):
        original(self, *args, **kwargs)
        optimizer_of.append(self)

    torch.optim.AdamW.__init__ = capture
    try:
        fit(
            model,
            batches(),
            schedule.train_config(),
            param_groups=schedule.param_groups(model),
            loss_fn=loss,
            progress=False,
        )
    finally:
        torch.optim.AdamW.__init__ = original
    for step, rates in enumerate(seen):
        for group, rate in rates.items():
            assert rate == schedule.lr(group, step)
    assert seen[2]["embedding"] == pytest.approx(1e-2 * 5.0)


@pytest.mark.parametrize("preset", [PAPER_MOE, PAPER_DENSE])
def test_peak_right_after_warmup_and_end_at_the_last_step(preset):
    eta, steps, warmup, f = 2e-3, 50, 5, preset.final_fraction
    schedule = relative_schedule(eta, steps, warmup_steps=warmup, final_fraction=f, multipliers=preset.multipliers)
    for group, (start, end) in preset.multipliers.items():
        assert schedule.lr(group, warmup) == pytest.approx(eta * start, rel=1e-12)
        assert schedule.lr(group, warmup - 1) == pytest.approx(eta * start, rel=1e-12)  # warmup's last step
        assert schedule.lr(group, 0) == pytest.approx(eta * start / warmup, rel=1e-12)
        # The cosine ends at t = T (as train.lr_factor and the authors' scheduler do) and stays there.
        assert schedule.lr(group, steps) == pytest.approx(eta * f * end, rel=1e-12)
        assert schedule.lr(group, steps + 10) == schedule.lr(group, steps)
        assert schedule.final_lr(group) == pytest.approx(eta * f * end, rel=1e-12)
        # The last update is one cosine step above the end value.
        gap = (eta * start - eta * f * end) * 0.5 * (1 - math.cos(math.pi / (steps - warmup)))
        assert schedule.lr(group, steps - 1) == pytest.approx(eta * f * end + gap, rel=1e-9)
        curve = schedule.curve(group)
        if start >= f * end:
            assert (curve[warmup + 1 :] <= curve[warmup:-1] + 1e-15).all()


def test_groups_not_listed_and_norms_follow_the_uniform_schedule():
    schedule = relative_schedule(1e-3, 20, warmup_steps=2, final_fraction=0.1, multipliers={"head": (2.0, 0.5)})
    uniform = schedule.uniform()
    for step in range(20):
        assert schedule.lr("other", step) == uniform.lr("attention", step)
        assert schedule.lr("embedding", step) == uniform.lr("embedding", step)
    assert schedule.reset("head") == uniform


@pytest.mark.parametrize(
    ("multipliers", "name"),
    [
        ({"embeding": (1.0, 1.0)}, "group"),
        ({"other": (2.0, 1.0)}, "group"),
        ({"head": (0.0, 1.0)}, "start multiplier of head"),
        ({"head": (1.0, -0.5)}, "end multiplier of head"),
        ({"head": (float("nan"), 1.0)}, "start multiplier of head"),
        ({"head": (1.0, float("inf"))}, "end multiplier of head"),
        ({"head": (1.0,)}, "multipliers"),
    ],
)
def test_bad_groups_and_multipliers_raise(multipliers, name):
    with pytest.raises(ValueError, match=name):
        relative_schedule(1e-3, 20, warmup_steps=2, final_fraction=0.1, multipliers=multipliers)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"warmup_steps": 20}, "warmup_steps"),
        ({"warmup_steps": 25}, "warmup_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"base_lr": 0.0}, "base_lr"),
        ({"base_lr": float("nan")}, "base_lr"),
        ({"final_fraction": 0.0}, "final_fraction"),
        ({"final_fraction": 1.5}, "final_fraction"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_schedule_settings_raise(kwargs, name):
    settings = {"base_lr": 1e-3, "steps": 20, "warmup_steps": 2, "final_fraction": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        RelativeSchedule(**settings)


def test_bad_step_and_group_queries_raise():
    schedule = relative_schedule(1e-3, 20, warmup_steps=2, final_fraction=0.1)
    with pytest.raises(ValueError, match="step"):
        schedule.lr("head", -1)
    with pytest.raises(ValueError, match="group"):
        schedule.lr("heads", 3)
