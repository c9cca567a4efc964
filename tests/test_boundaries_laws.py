"""Property tests at the boundaries of the scaling laws, their optima and fits, the language-model grids' budgets,
the byte corpus and sampling: any input gives a valid result or a ValueError that names the parameter, never
another exception (a crash from deep inside torch, NumPy or SciPy) and never a silent NaN."""

import dataclasses
import math
import re
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from efflab.data.text import ByteCorpus
from efflab.fine_grained_moe import plots as fine_grained_plots
from efflab.fine_grained_moe.experiment import GranularityBudget
from efflab.fine_grained_moe.law import (
    CHINCHILLA_FORM,
    FG_DENSE,
    FG_MOE,
    FineGrainedLaw,
    dense_flops_to_match,
    fg_compute_optimal,
    fg_optimal_for_granularity,
    fg_shape,
    fg_training_flops,
)
from efflab.first_steps.experiment import ByteLMBudget, temperature_table
from efflab.joint_moe import law as jl
from efflab.joint_moe import plots as joint_plots
from efflab.joint_moe.experiment import ExpertCountBudget
from efflab.joint_moe.law import JOINT, optimal_config
from efflab.law_fitting import LawForm, compare_with_paper, fit_law
from efflab.lm_grid import RunSpec, seed_spread
from efflab.models.gpt import GPTConfig, TinyLM, probabilities_from_logits

from boundaries import BLAME, PROPERTY, valid_or_named

# Here a message must also start a phrase about the name it blames ("lr=inf", "features['N'] contains").
valid_or_blamed = partial(valid_or_named, blame=BLAME)

BAD = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 0, True, None, "1"])


def sane(low: float, high: float):
    """Numbers in [low, high] (log-uniform-ish), mixed with bad ones: NaN, infinities, <= 0, bools, None."""
    return st.one_of(
        st.floats(low, high), st.integers(math.ceil(low), math.floor(high)) if high >= 1 else BAD, BAD
    )


SMALL_INTS = st.one_of(st.integers(-2, 12), st.floats(-1, 5), st.booleans(), st.none())  # grid sizes stay small


# ---------------------------------------------------------------------------------- the fine-grained law

COEFFICIENTS = ("a", "alpha", "b", "beta", "g", "gamma", "c")


@PROPERTY
@given(
    coefficients=st.fixed_dictionaries({name: sane(0.0, 5.0) for name in COEFFICIENTS}),
    params=sane(1e3, 1e15),
    tokens=sane(1e3, 1e15),
    granularity=sane(1.0, 256.0),
)
def test_fine_grained_law_gives_a_finite_loss_or_names_the_input(coefficients, params, tokens, granularity):
    law = valid_or_blamed(lambda: FineGrainedLaw(**coefficients), *COEFFICIENTS)
    if law is not None:
        loss = valid_or_blamed(lambda: law.loss(params, tokens, granularity), "params", "tokens", "granularity")
        if loss is not None:
            assert np.isfinite(loss) and loss >= law.c


@PROPERTY
@given(
    d_model=sane(1.0, 1e5),
    tokens=sane(1.0, 1e15),
    expansion=SMALL_INTS,
    granularity=sane(1.0, 64.0),
    n_blocks=st.one_of(st.none(), sane(0.5, 100.0)),
    router=sane(0.0, 20.0),
)
def test_shapes_and_flops_are_finite_and_positive(d_model, tokens, expansion, granularity, n_blocks, router):
    shape = valid_or_blamed(lambda: fg_shape(d_model, expansion), "d_model", "expansion")
    if shape is not None:
        assert all(np.isfinite(v) and v > 0 for v in shape.values())
    flops = valid_or_blamed(
        lambda: fg_training_flops(
            d_model, tokens, expansion, granularity, n_blocks=n_blocks, router_flops_factor=router
        ),
        "d_model",
        "tokens",
        "expansion",
        "granularity",
        "n_blocks",
        "router_flops_factor",
    )
    if flops is not None:
        assert np.isfinite(flops) and flops > 0


RANGES = st.one_of(
    st.tuples(sane(1.0, 1e3), sane(1e3, 1e7)),
    st.tuples(sane(1.0, 1e7), sane(1.0, 1e7)),
    st.sampled_from([(), (16.0,), (16.0, 1e6, 1e7), "ab", None]),
)


@PROPERTY
@given(flops=sane(1e15, 1e28), granularity=sane(1.0, 256.0), expansion=SMALL_INTS, d_model_range=RANGES)
def test_the_optimum_at_one_granularity_lies_in_its_range(flops, granularity, expansion, d_model_range):
    config = valid_or_blamed(
        lambda: fg_optimal_for_granularity(flops, granularity, expansion=expansion, d_model_range=d_model_range),
        "flops",
        "granularity",
        "expansion",
        "d_model_range",
    )
    if config is not None:
        low, high = d_model_range
        assert low * (1 - 1e-9) <= config.d_model <= high * (1 + 1e-9)
        assert all(math.isfinite(v) and v > 0 for v in (config.tokens, config.total_params, config.loss))


GRANULARITIES = st.one_of(
    st.lists(sane(1.0, 128.0), max_size=4).map(tuple), st.sampled_from([(), "ab", 4, None, np.array([1.0, 2.0])])
)


@PROPERTY
@given(flops=sane(1e15, 1e28), granularities=GRANULARITIES)
def test_the_compute_optimum_picks_one_of_the_granularities(flops, granularities):
    config = valid_or_blamed(
        lambda: fg_compute_optimal(flops, granularities=granularities), "flops", "granularities"
    )
    if config is not None:
        assert config.granularity in [float(g) for g in granularities]
        assert math.isfinite(config.loss) and config.loss > FG_MOE.c


@PROPERTY
@given(
    loss=sane(0.5, 6.0),
    bracket=st.one_of(st.tuples(sane(1e10, 1e16), sane(1e20, 1e30)), st.sampled_from([(1e20,), (1e30, 1e12)])),
)
def test_the_dense_budget_to_match_a_loss_is_positive(loss, bracket):
    flops = valid_or_blamed(lambda: dense_flops_to_match(loss, bracket=bracket), "loss", "bracket")
    if flops is not None:
        assert flops > 0 and not math.isnan(flops)  # inf: the loss is out of reach within the bracket


# ------------------------------------------------------------------------------------------- the joint law

JOINT_NAMES = tuple(JOINT.coefficients)
EXPONENTS = ("alpha", "delta", "gamma", "beta", "omega", "zeta")
JOINT_VALUES = {
    **{name: st.one_of(st.floats(-0.5, 0.5), BAD) for name in EXPONENTS},
    **{name: st.one_of(st.floats(-1.0, 100.0), BAD) for name in ("a", "b", "c")},
    "e_start": st.one_of(st.floats(0.5, 10.0), BAD),
    "e_max": st.one_of(st.floats(1.0, 400.0), BAD),
}


@PROPERTY
@given(
    changes=st.fixed_dictionaries({}, optional=JOINT_VALUES),
    active=sane(1e3, 1e12),
    tokens=sane(1e3, 1e13),
    experts=st.one_of(st.integers(1, 64), sane(1.0, 64.0)),
)
def test_joint_law_gives_a_finite_loss_or_names_the_input(changes, active, tokens, experts):
    law = valid_or_blamed(lambda: dataclasses.replace(JOINT, **changes), *JOINT_NAMES)
    if law is not None:
        loss = valid_or_blamed(lambda: law.loss(active, tokens, experts), "active_params", "tokens", "experts")
        if loss is not None:
            assert np.isfinite(loss)


@PROPERTY
@given(
    flops=sane(1.0, 1e50),
    experts=sane(1.0, 64.0),
    memory_bytes=st.one_of(st.none(), sane(1e6, 1e13)),
    kv_tokens=sane(0.0, 1e5),
    inference_tokens=st.one_of(st.just(0.0), sane(1.0, 1e25)),
)
def test_optimal_configurations_are_consistent(flops, experts, memory_bytes, kv_tokens, inference_tokens):
    config = valid_or_blamed(
        lambda: optimal_config(
            flops,
            experts,
            memory_bytes=memory_bytes,
            kv_tokens=kv_tokens,
            inference_tokens=inference_tokens,
        ),
        "flops",
        "experts",
        "memory_bytes",
        "kv_tokens",
        "inference_tokens",
    )
    if config is not None:
        assert np.all(config.tokens > 0) and np.all(np.isfinite(config.tokens))
        np.testing.assert_allclose(
            jl.joint_shape(config.d_model)["active_params"], config.active_params, rtol=1e-6
        )
        assert np.all(np.where(config.fits, np.isfinite(config.loss), config.loss == math.inf))
        if memory_bytes is not None:
            assert np.all(~config.fits | (config.memory_bytes <= float(memory_bytes) * (1 + 1e-6)))


@PROPERTY
@given(experts=SMALL_INTS, e_start=sane(0.5, 10.0), e_max=sane(1.0, 500.0))
def test_effective_experts_rise_from_e_start_towards_e_max(experts, e_start, e_max):
    value = valid_or_blamed(lambda: jl.effective_experts(experts, e_start, e_max), "experts", "e_start", "e_max")
    if value is not None:
        assert np.isfinite(value) and e_start * (1 - 1e-9) <= value <= e_max


@PROPERTY
@given(flops=sane(1e10, 1e30), experts=st.one_of(st.integers(-1, 64), BAD))
def test_compute_savings_are_finite_and_positive(flops, experts):
    saving = valid_or_blamed(lambda: jl.compute_saving(flops, experts), "flops", "experts")
    if saving is not None:
        assert np.isfinite(saving) and saving > 0


# ----------------------------------------------------------------------------------------------- the fits

N = np.array([1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7, 1e6, 8e6])
D = np.array([1e8, 4e8, 2e8, 1e9, 4e8, 2e9, 2e9, 1e8])
LOSSES = FG_DENSE.loss(N, D) * np.exp(0.003 * np.sin(np.arange(8)))
FIT_NAMES = ("a", "alpha", "b", "beta", "c")


@PROPERTY
@given(
    n_starts=st.one_of(st.integers(-1, 2), BAD),
    seed=st.one_of(st.integers(-2, 2**40), BAD),
    huber_delta=sane(1e-4, 1.0),
    tolerance=st.one_of(st.floats(1e-12, 1e-4), BAD),
    fixed=st.dictionaries(st.sampled_from([*FIT_NAMES, "g"]), st.one_of(st.floats(-1.0, 4.0), BAD), max_size=2),
    start=st.one_of(
        st.none(),
        st.dictionaries(st.sampled_from(FIT_NAMES), st.one_of(st.floats(0.01, 2.0), BAD), max_size=5),
    ),
)
def test_fit_options_give_a_finite_fit_or_name_the_option(n_starts, seed, huber_delta, tolerance, fixed, start):
    fit = valid_or_blamed(
        lambda: fit_law(
            CHINCHILLA_FORM,
            {"N": N, "D": D},
            LOSSES,
            n_starts=n_starts,
            seed=seed,
            huber_delta=huber_delta,
            tolerance=tolerance,
            fixed=fixed,
            starts=() if start is None else [start],
        ),
        "n_starts",
        "seed",
        "huber_delta",
        "tolerance",
        "fixed",
        "starts",
    )
    if fit is not None:
        assert all(math.isfinite(v) for v in fit.coefficients.values())
        assert math.isfinite(fit.objective) and math.isfinite(fit.rmse_log)
        for name, value in fixed.items():
            assert fit.coefficients[name] == pytest.approx(value)


@PROPERTY
@given(
    column=st.lists(st.one_of(st.floats(1e3, 1e12), BAD.filter(lambda v: v != "1")), min_size=1, max_size=8),
    losses=st.lists(st.one_of(st.floats(0.5, 5.0), BAD.filter(lambda v: v != "1")), min_size=1, max_size=8),
)
def test_fit_data_gives_a_finite_fit_or_names_the_data(column, losses):
    fit = valid_or_blamed(
        lambda: fit_law(CHINCHILLA_FORM, {"N": column, "D": column[::-1]}, losses, n_starts=1),
        "features",
        "losses",
        "runs",
    )
    if fit is not None:
        assert math.isfinite(fit.rmse_log)


@PROPERTY
@given(low=sane(-2.0, 2.0), high=sane(-2.0, 2.0), paper=sane(-1.0, 1.0), factor=sane(0.5, 10.0))
def test_comparison_with_the_paper_is_one_of_four_verdicts(low, high, paper, factor):
    verdict = valid_or_blamed(
        lambda: compare_with_paper(low, high, paper, factor=factor), "low", "high", "paper", "factor"
    )
    if verdict is not None:
        assert verdict in {"undetermined", "opposite sign", "same sign and order", "same sign, different size"}


# ------------------------------------------------------------------------------------------------ sampling

MODEL = TinyLM(GPTConfig(n_layer=1, n_head=1, d_model=8, block_size=8)).eval()


@PROPERTY
@given(
    shape=st.sampled_from([(5,), (2, 5), (1, 1), (0,), (2, 0), ()]),
    poison=st.sampled_from([None, math.nan, math.inf, -math.inf, "row"]),
    temperature=st.one_of(st.floats(1e-3, 1e3), BAD),
    top_k=st.one_of(st.none(), SMALL_INTS),
)
def test_probabilities_from_logits_are_a_distribution_or_name_the_knob(shape, poison, temperature, top_k):
    logits = torch.randn(shape)
    if poison == "row" and logits.numel():
        logits.fill_(-math.inf)
    elif poison is not None and logits.numel():
        logits.view(-1)[0] = poison
    probabilities = valid_or_blamed(
        lambda: probabilities_from_logits(logits, temperature, top_k=top_k), "logits", "temperature", "top_k"
    )
    if probabilities is not None:
        assert probabilities.shape == logits.shape and torch.isfinite(probabilities).all()
        assert (probabilities >= 0).all() and torch.allclose(probabilities.sum(-1), torch.ones(shape[:-1]))
        if top_k is not None:
            assert ((probabilities > 0).sum(-1) <= top_k).all()


@PROPERTY
@given(
    length=st.integers(0, 3),
    max_new=st.one_of(st.integers(-1, 4), BAD),
    temperature=st.one_of(st.floats(1e-3, 1e3), BAD),
    top_k=st.one_of(st.none(), st.integers(-1, 300)),
)
def test_generation_appends_byte_ids_or_names_the_knob(length, max_new, temperature, top_k):
    prompt = torch.zeros(1, length, dtype=torch.long)
    out = valid_or_blamed(
        lambda: MODEL.generate(prompt, max_new, temperature=temperature, top_k=top_k),
        "idx",
        "max_new_tokens",
        "temperature",
        "top_k",
    )
    if out is not None:
        assert out.shape == (1, length + max_new) and int(out.min()) >= 0 and int(out.max()) < 256


# ------------------------------------------------------------------------------------ budgets and the corpus

FIELD_VALUES = st.one_of(st.integers(-2, 600), st.floats(-1.0, 2.0), BAD, st.sampled_from([(), (8,), (24, 16)]))


def _fields(budget) -> list[str]:
    return [field.name for field in dataclasses.fields(budget)]


@PROPERTY
@given(budget=st.sampled_from([GranularityBudget.quick(), ExpertCountBudget.quick()]), data=st.data())
def test_grid_budget_fields_are_checked(budget, data):
    name = data.draw(st.sampled_from(_fields(budget)))
    value = data.draw(FIELD_VALUES)
    # a change may break a rule between fields (spread_width must be one of widths): the message names one of them
    changed = valid_or_blamed(lambda: dataclasses.replace(budget, **{name: value}), *_fields(budget))
    if changed is not None:
        specs = changed.specs(0)
        assert specs and all(isinstance(spec, RunSpec) for spec in specs)
        assert changed.steps_per_run() > changed.steps and changed.tokens_per_step > 0
        assert all(
            math.isfinite(changed.learning_rate(spec)) and changed.learning_rate(spec) > 0 for spec in specs
        )


@PROPERTY
@given(data=st.data())
def test_byte_lm_budget_fields_are_checked(data):
    budget = ByteLMBudget.quick()
    name = data.draw(st.sampled_from(_fields(budget)))
    value = data.draw(st.one_of(FIELD_VALUES, st.sampled_from(["", "def ", (0.5, 1.0), (math.inf,)])))
    changed = valid_or_blamed(lambda: dataclasses.replace(budget, **{name: value}), *_fields(budget))
    if changed is not None:
        assert changed.model_config().d_model == changed.d_model and changed.train_config().steps == changed.steps


@PROPERTY
@given(
    width=SMALL_INTS,
    granularity=SMALL_INTS,
    seed=st.one_of(st.integers(-1, 2**33), BAD),
    routing=st.sampled_from(["token_choice", "expert_choice", "", None]),
    expansion=st.one_of(st.none(), SMALL_INTS),
)
def test_run_specs_are_checked(width, granularity, seed, routing, expansion):
    valid_or_blamed(
        lambda: RunSpec(width, granularity, seed, routing, expansion),
        "width",
        "granularity",
        "seed",
        "routing",
        "expansion",
    )


@PROPERTY
@given(
    n_train=st.integers(0, 40),
    n_val=st.integers(0, 5),
    split=st.sampled_from(["train", "val", "test"]),
    batch_size=SMALL_INTS,
    block_size=SMALL_INTS,
)
def test_corpus_batches_have_their_shape_or_name_the_setting(n_train, n_val, split, batch_size, block_size):
    corpus = valid_or_blamed(
        lambda: ByteCorpus(torch.arange(n_train, dtype=torch.uint8), torch.arange(n_val, dtype=torch.uint8)),
        "train",
        "val",
    )
    if corpus is not None:
        batch = valid_or_blamed(
            lambda: corpus.get_batch(split, batch_size, block_size, generator=torch.Generator()),
            "split",
            "batch_size",
            "block_size",
        )
        if batch is not None:
            x, y = batch
            assert x.shape == y.shape == (batch_size, block_size) and torch.equal(x[:, 1:], y[:, :-1])


@PROPERTY
@given(tokens=st.one_of(st.lists(st.integers(-2, 300), max_size=6), st.sampled_from(["ab", 5, None])))
def test_decoding_takes_byte_ids_only(tokens):
    text = valid_or_blamed(lambda: ByteCorpus.decode(tokens), "tokens")
    if text is not None:
        assert isinstance(text, str)


# --------------------------------------------------------------------------------- the known bad inputs


def _tiny_corpus():
    data = torch.tensor(list(b"def add(a, b):\n    return a + b\n" * 4), dtype=torch.uint8)
    return ByteCorpus(train=data[:100], val=data[100:])


TINY_FORM = dict(
    name="line",
    parameters=("log_a",),
    features=("N",),
    log_loss=lambda theta, features: (np.full(len(features["N"]), theta["log_a"]), {"log_a": 1.0}),
    start_ranges={"log_a": (0.0, 1.0)},
    bounds={"log_a": (-1.0, 2.0)},
    to_law=dict,
)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        # laws, their optima and fits: no infinity, no NaN, ranges that make sense
        (lambda: fg_compute_optimal(math.inf), "flops"),
        (lambda: fg_compute_optimal(math.nan), "flops"),
        (lambda: fg_compute_optimal(1e20, granularities=(0,)), "granularities"),
        (lambda: fg_optimal_for_granularity(1e20, math.inf), "granularity"),
        (lambda: fg_optimal_for_granularity(1e20, 4, d_model_range=(0, 10)), "d_model_range"),
        (lambda: fg_optimal_for_granularity(1e20, 4, d_model_range=(100.0, 10.0)), "d_model_range"),
        (lambda: fg_optimal_for_granularity(1e20, 4, d_model_range=(16.0, math.inf)), "d_model_range"),
        (lambda: fg_optimal_for_granularity(1e20, 4, law=JOINT), "law"),
        (lambda: dense_flops_to_match(2.0, bracket=(0, 1e30)), "bracket"),
        (lambda: dense_flops_to_match(math.inf), "loss"),
        (lambda: FG_MOE.loss(math.inf, 1e9), "params"),
        (lambda: FineGrainedLaw(a=math.nan, alpha=0.1, b=1.0, beta=0.1), "a"),
        (lambda: fg_shape(math.inf), "d_model"),
        (lambda: fg_training_flops(64, 1e9, n_blocks=-1), "n_blocks"),
        (lambda: optimal_config(1e20, 4, inference_tokens=1e30), "inference_tokens"),
        (lambda: optimal_config(1e20, math.inf), "experts"),
        (lambda: optimal_config(1.0, 4), "flops"),
        (lambda: optimal_config(1e300, 4), "flops"),
        (lambda: optimal_config(1e20, 4, kv_tokens=-1), "kv_tokens"),
        (lambda: jl.width_for_active_params(1e30), "active_params"),
        (lambda: jl.effective_experts(4, math.nan, 10.0), "e_start"),
        (lambda: jl.effective_experts(4, 10.0, 2.0), "e_max"),
        (lambda: dataclasses.replace(JOINT, alpha=math.inf), "alpha"),
        (lambda: dataclasses.replace(JOINT, e_max=1.0), "e_max"),
        (lambda: jl.configs_by_experts(1e20, expert_counts=(0, 2)), "expert_counts"),
        (lambda: jl.printed_value(""), "text"),
        (lambda: jl.printed_value("xB"), "text"),
        (lambda: jl.reproduce_table_1(tolerance=math.nan), "tolerance"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N, "D": D}, LOSSES, huber_delta=math.inf), "huber_delta"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N, "D": D}, LOSSES, tolerance=math.nan), "tolerance"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N, "D": D}, LOSSES, seed=-1), "seed"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N * math.inf, "D": D}, LOSSES), "features"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N.reshape(2, 4), "D": D.reshape(2, 4)}, LOSSES), "features"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N, "D": D}, LOSSES, fixed={"alpha": math.inf}), "fixed"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N, "D": D}, LOSSES, fixed={"alpha": -1.0}), "fixed"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N, "D": D}, LOSSES, starts=[{"alpha": 0.3}]), "starts"),
        (lambda: fit_law(CHINCHILLA_FORM, {"N": N, "D": D}, LOSSES, starts=[{"a": math.nan}]), "starts"),
        (lambda: compare_with_paper(0.1, 0.3, 0.2, factor=0), "factor"),
        (lambda: compare_with_paper(math.nan, 0.3, 0.2), "low"),
        (lambda: LawForm(**{**TINY_FORM, "bounds": {}}), "bounds"),
        (lambda: LawForm(**{**TINY_FORM, "start_ranges": {"log_a": (1.0, 0.0)}}), "start_ranges"),
        # sampling: a finite temperature > 0, top_k in [1, vocab], lengths whole numbers
        (lambda: probabilities_from_logits(torch.zeros(4), math.inf), "temperature"),
        (lambda: probabilities_from_logits(torch.zeros(4), math.nan), "temperature"),
        (lambda: probabilities_from_logits(torch.zeros(4), 1.0, top_k=5), "top_k"),
        (lambda: probabilities_from_logits(torch.zeros(4), 1.0, top_k=0), "top_k"),
        (lambda: probabilities_from_logits(torch.tensor([math.nan, 0.0]), 1.0), "logits"),
        (lambda: probabilities_from_logits(torch.zeros(2, 0), 1.0), "logits"),
        (lambda: MODEL.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=math.inf), "temperature"),
        (lambda: MODEL.generate(torch.zeros(1, 2, dtype=torch.long), 0, temperature=math.inf), "temperature"),
        (lambda: MODEL.generate(torch.zeros(1, 2, dtype=torch.long), 2, top_k=300), "top_k"),
        (lambda: MODEL.generate(torch.zeros(1, 2, dtype=torch.long), 1.5), "max_new_tokens"),
        (lambda: MODEL.generate(torch.zeros(1, 0, dtype=torch.long), 1), "idx"),
        (lambda: MODEL.next_token_probabilities(torch.zeros(3, dtype=torch.long)), "idx"),
        (lambda: temperature_table(MODEL, _tiny_corpus(), "x", ()), "temperatures"),
        (lambda: temperature_table(MODEL, _tiny_corpus(), "x", (1.0,), sample_length=0), "sample_length"),
        (lambda: temperature_table(MODEL, _tiny_corpus(), None, (1.0,)), "prompt"),
        # budgets: every field, and an explicit 0 is rejected, never replaced by a default
        (lambda: dataclasses.replace(ByteLMBudget.quick(), block_size=0), "block_size"),
        (lambda: dataclasses.replace(ByteLMBudget.quick(), lr=math.inf), "lr"),
        (lambda: dataclasses.replace(ByteLMBudget.quick(), n_head=0), "n_head"),
        (lambda: dataclasses.replace(ByteLMBudget.quick(), sample_length=1.5), "sample_length"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), n_head=0), "n_head"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), block_size=0), "block_size"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), batch_size=0), "batch_size"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), lr=math.inf), "lr"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), n_layer=0), "n_layer"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), lr_rule=0), "lr_rule"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), spread_experts=(1.5,)), "spread_experts"),
        (lambda: dataclasses.replace(ExpertCountBudget.quick(), widths=None), "widths"),
        (lambda: dataclasses.replace(GranularityBudget.quick(), expansion=1), "expansion"),
        (
            lambda: dataclasses.replace(GranularityBudget.quick(), spread_granularities=(True,)),
            "spread_granularities",
        ),
        (lambda: dataclasses.replace(GranularityBudget.quick(), bootstrap=0), "bootstrap"),
        (lambda: dataclasses.replace(GranularityBudget.quick(), workers=0), "workers"),
        (lambda: RunSpec(16, -1, 0), "granularity"),
        (lambda: RunSpec(16, 1, 0, expansion=0), "expansion"),
        (lambda: seed_spread(None, phase=""), "phase"),
        # plots: the knobs a figure indexes by
        (lambda: joint_plots.explorer_figure(1e21, 24, 0), "experts"),
        (lambda: joint_plots.loss_vs_experts(1e21, 24, selected=3), "selected"),
        (lambda: fine_grained_plots.granularity_diagram(4, (-1,)), "granularities"),
        # the corpus: sizes and splits
        (
            lambda: ByteCorpus(train=torch.arange(10, dtype=torch.uint8), val=torch.zeros(0, dtype=torch.uint8)),
            "val",
        ),
        (lambda: ByteCorpus(train=torch.arange(10), val=torch.arange(10, dtype=torch.uint8)), "train"),
        (lambda: ByteCorpus.decode([300]), "tokens"),
        (lambda: ByteCorpus.decode(torch.zeros(2, 2, dtype=torch.long)), "tokens"),
        (lambda: ByteCorpus.encode(None), "text"),
    ],
)
def test_known_bad_inputs_raise_value_errors_naming_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"\b{re.escape(name)}{BLAME}"):
        call()
