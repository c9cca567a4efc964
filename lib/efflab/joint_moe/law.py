"""The joint MoE scaling law: dense models and mixtures of experts under one law, and how many experts to use
when compute, memory or inference is the budget.

Ludziejewski, Pióro, Krajewski et al. 2025, *Joint MoE Scaling Laws: Mixture of Experts Can Be Memory
Efficient*, arXiv 2502.05172.

**The law** (eq. 6) predicts the final loss from the active parameters N (those one token uses, embeddings
included), the training tokens D and the number of experts E, where E = 1 is the dense model:

    L(N, D, E) = a Ê^delta N^(alpha + gamma ln Ê)  +  b Ê^omega D^(beta + zeta ln Ê)  +  c

Ê is a saturating transform of E (eq. 4, taken from Clark et al. 2022, arXiv 2202.01169): Ê(1) = E_start and
Ê approaches E_max as experts are added, so each doubling of E is worth less than the last:

    1/Ê = 1 / (E - 1 + (1/E_start - 1/E_max)^-1)  +  1/E_max

The exponents carry their signs (alpha and beta are negative: the law is written with N^exponent). For a fixed
E the law is Chinchilla's form ``m N^mu + n D^nu + c`` (:meth:`JointLaw.for_experts`, the paper's Table 4), and
E moves all four numbers. With the published coefficients, more experts lower m (delta < 0: each active
parameter is worth more) and steepen the data exponent nu (zeta < 0: the model keeps profiting from data
longer), while raising n and flattening mu. So at a fixed compute budget, more experts call for a smaller active
model trained on more tokens.

**Counting** (appendix A). The experts are SwiGLU feed-forward networks of hidden size 3 d_model (9 d^2
parameters each), attention has 4 d^2, the shape rule is n_blocks = n_heads = d_model / 64, and the embedding and
unembedding (2 d_model V, V = 50,257 for GPT-2's vocabulary) are counted:

    N_active = 2 d V + 13 d^2 n_blocks,      N_total = 2 d V + (4 + 9E) d^2 n_blocks

Training costs 6 N_active D FLOPs, inference 2 N_active per token; attention scores and the router are ignored.

**Optimal configurations** (section 4), all in :func:`optimal_config`:

* *compute-optimal*: minimise L subject to 6 N D = F. For a fixed E it has Chinchilla's closed form
  (:meth:`PerExpertLaw.compute_optimal`);
* *memory-constrained*: also require the model to fit a memory budget: the weights, N_total values, plus
  optionally a KV cache of T tokens, 2 T n_blocks d_model values (keys and values of every block). Since the loss
  is unimodal in the model size at fixed compute, the constrained optimum is the compute optimum clipped to the
  largest model that fits;
* *inference-aware*: the budget also pays for serving D_inf tokens, 6 N D + 2 N D_inf = F. No closed form; a
  vectorised bisection on the derivative finds it.

Comparing the optima of E = 1, 2, 4 ... under one memory budget gives the paper's headline: when memory is
tight relative to compute, a model with *more* total parameters per byte of active compute, an MoE, can beat the
dense model that fills the same memory (Table 2).

**Learning rate** (eq. 8): the paper fits the best peak learning rate, which falls with the model size and with
the number of experts (:func:`peak_learning_rate`).

**Fitting**: :func:`joint_form` is the law as a :class:`efflab.law_fitting.LawForm`, for
:func:`efflab.law_fitting.fit_law` (Huber loss on log L, as the paper does), with E_start and E_max held fixed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from efflab.flops import D_MODEL_PER_BLOCK, FLOPS_PER_ACTIVE_PARAMETER
from efflab.law_fitting import LawForm, check_positive_array, softmax_terms
from efflab.validation import check_finite, check_int, check_positive

# ------------------------------------------------------------------------------------------------- the law


def _expert_counts(value, name: str = "experts") -> np.ndarray:
    array = np.asarray(value, dtype=float)
    bad = ~(array >= 1) | ~np.isfinite(array) | (array != np.round(array))
    if np.any(bad):
        raise ValueError(
            f"{name} contains {array[bad].flat[0]!r}; expected finite whole numbers >= 1 (1 is the dense model)"
        )
    return array


def _expert_grid(expert_counts) -> np.ndarray:
    """The numbers of experts to compare, as a float array: a non-empty sequence of whole numbers >= 1."""
    if np.ndim(expert_counts) != 1 or len(expert_counts) == 0:
        raise ValueError(
            f"expert_counts={expert_counts!r} is not allowed; expected at least one number of experts"
        )
    return _expert_counts(expert_counts, "expert_counts")


def _check_saturation(e_start, e_max) -> None:
    """E_start and E_max of eq. 4: finite, positive, and E_max > E_start (else Ê would not rise with E)."""
    check_positive("e_start", e_start)
    check_positive("e_max", e_max)
    if e_max <= e_start:
        raise ValueError(f"e_max={e_max!r} is not allowed with e_start={e_start!r}; expected e_max > e_start")


def effective_experts(experts, e_start: float, e_max: float) -> np.ndarray:
    """Ê (eq. 4): E_start for the dense model (E = 1), rising towards E_max as experts are added."""
    experts = _expert_counts(experts)
    _check_saturation(e_start, e_max)
    offset = 1.0 / (1.0 / e_start - 1.0 / e_max)
    return 1.0 / (1.0 / (experts - 1.0 + offset) + 1.0 / e_max)


@dataclass(frozen=True)
class PerExpertLaw:
    """The joint law at a fixed number of experts: ``m N^mu + n D^nu + c`` (Table 4), exponents negative.

    Fields are numbers or arrays (one entry per number of experts), broadcast against the inputs.
    """

    m: np.ndarray
    mu: np.ndarray
    n: np.ndarray
    nu: np.ndarray
    c: float

    def __post_init__(self):
        for name in ("m", "n", "c"):
            check_positive_array(name, getattr(self, name), allow_zero=True)
        for name in ("mu", "nu"):
            values = np.asarray(getattr(self, name), dtype=float)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{name}={values!r} is not allowed; expected finite exponents")

    def loss(self, active_params, tokens) -> np.ndarray:
        active_params, tokens = (
            check_positive_array("active_params", active_params),
            check_positive_array("tokens", tokens),
        )
        return self.m * active_params**self.mu + self.n * tokens**self.nu + self.c

    def _magnitudes(self) -> tuple[np.ndarray, np.ndarray]:
        if np.any(np.asarray(self.mu) >= 0) or np.any(np.asarray(self.nu) >= 0):
            raise ValueError(
                f"mu={self.mu!r}, nu={self.nu!r}: a compute optimum needs both exponents < 0 (a larger model and "
                "more data must both lower the loss)"
            )
        return -np.asarray(self.mu), -np.asarray(self.nu)

    def compute_optimal(self, flops) -> tuple[np.ndarray, np.ndarray]:
        """Chinchilla's closed form for ``F = 6 N D``. With the magnitudes |mu|, |nu| and
        ``G = (|mu| m / (|nu| n))^(1/(|mu|+|nu|))``: ``N = G (F/6)^(|nu|/(|mu|+|nu|))`` and ``D = (F/6) / N``.
        Returns (active parameters, tokens)."""
        flops = check_positive_array("flops", flops)
        mu, nu = self._magnitudes()
        balance = (mu * self.m / (nu * self.n)) ** (1.0 / (mu + nu))
        params_times_tokens = flops / FLOPS_PER_ACTIVE_PARAMETER
        active = balance * params_times_tokens ** (nu / (mu + nu))
        return active, params_times_tokens / active

    def optimal_loss(self, flops) -> np.ndarray:
        """The loss at the compute optimum, ``c + K (F/6)^-kappa`` with ``kappa = |mu| |nu| / (|mu| + |nu|)``."""
        return self.loss(*self.compute_optimal(flops))

    def flops_to_reach(self, loss) -> np.ndarray:
        """The budget whose compute optimum reaches ``loss``: the power law above, inverted (inf at or below c)."""
        loss = check_positive_array("loss", loss)
        mu, nu = self._magnitudes()
        kappa = mu * nu / (mu + nu)
        reducible_at_one = self.optimal_loss(float(FLOPS_PER_ACTIVE_PARAMETER)) - self.c  # K, at F/6 = 1
        with np.errstate(divide="ignore", invalid="ignore"):
            flops = FLOPS_PER_ACTIVE_PARAMETER * ((loss - self.c) / reducible_at_one) ** (-1.0 / kappa)
        return np.where(loss > self.c, flops, np.inf)


@dataclass(frozen=True)
class JointLaw:
    """``L(N, D, E) = a Ê^delta N^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c`` (eq. 6)."""

    a: float
    alpha: float
    delta: float
    gamma: float
    b: float
    beta: float
    omega: float
    zeta: float
    e_start: float
    e_max: float
    c: float
    source: str = field(default="", compare=False)

    def __post_init__(self):
        for name, value in self.coefficients.items():
            if name in ("a", "b", "c"):
                check_positive(name, value, allow_zero=True)
            else:
                check_finite(name, value)
        _check_saturation(self.e_start, self.e_max)

    def effective_experts(self, experts) -> np.ndarray:
        return effective_experts(experts, self.e_start, self.e_max)

    def for_experts(self, experts) -> PerExpertLaw:
        """The Chinchilla-form coefficients at ``experts`` (a number or an array): the paper's Table 4."""
        log_effective = np.log(self.effective_experts(experts))
        return PerExpertLaw(
            m=self.a * np.exp(self.delta * log_effective),
            mu=self.alpha + self.gamma * log_effective,
            n=self.b * np.exp(self.omega * log_effective),
            nu=self.beta + self.zeta * log_effective,
            c=self.c,
        )

    def loss(self, active_params, tokens, experts) -> np.ndarray:
        """Predicted loss (nats per token); numbers or arrays, broadcast together."""
        return self.for_experts(experts).loss(active_params, tokens)

    @property
    def coefficients(self) -> dict[str, float]:
        names = ("a", "alpha", "delta", "gamma", "b", "beta", "omega", "zeta", "e_start", "e_max", "c")
        return {name: getattr(self, name) for name in names}


JOINT = JointLaw(
    a=35.91,
    alpha=-0.1889,
    delta=-0.2285,
    gamma=0.0098,
    b=35.98,
    beta=-0.1775,
    omega=0.5529,
    zeta=-0.0259,
    e_start=2.0732,
    e_max=290.4521,
    c=1.3637,
    source="arXiv 2502.05172, Table 3",
)

JOINT_TABLE_4 = {
    1: (30.3640, -0.1817, 53.9838, -0.1965),
    2: (27.7982, -0.1780, 66.8401, -0.2065),
    4: (24.8462, -0.1731, 87.7022, -0.2192),
    8: (21.8330, -0.1676, 119.9126, -0.2338),
    16: (19.0159, -0.1617, 167.5073, -0.2494),
    32: (16.5424, -0.1557, 234.6726, -0.2652),
}
"""arXiv 2502.05172, Table 4: (m, mu, n, nu) of the law at each number of experts, as printed (c = 1.3637)."""

EXPERT_COUNTS = (1, 2, 4, 8, 16, 32)  # the paper's grid; E <= 32 is where it trusts the law

# ---------------------------------------------------------------------------------- counting and memory

GPT2_VOCAB = 50_257
SMALLEST_D_MODEL = float(D_MODEL_PER_BLOCK)  # one block of one head under the shape rule
INFERENCE_FLOPS_PER_ACTIVE_PARAMETER = 2  # forward pass only
BYTES_PER_VALUE = 2  # bf16 weights and KV cache, as in the paper's Table 2
GB = 1e9


def joint_shape(d_model, experts=1, *, vocab: int = GPT2_VOCAB) -> dict[str, np.ndarray]:
    """The paper's model at width ``d_model`` (appendix A): blocks, embedding, active and total parameters.

    ``n_blocks = d_model / 64`` is kept continuous, as in the paper's optimisation.
    """
    d_model, experts = check_positive_array("d_model", d_model), _expert_counts(experts)
    check_int("vocab", vocab, low=1)
    n_blocks = d_model / D_MODEL_PER_BLOCK
    embedding = 2.0 * d_model * vocab
    active_non_embedding = 13.0 * d_model**2 * n_blocks  # attention 4 d^2 + one SwiGLU expert 9 d^2
    return {
        "n_blocks": n_blocks,
        "embedding_params": embedding,
        "active_non_embedding": active_non_embedding,
        "active_params": embedding + active_non_embedding,
        "total_params": embedding + (4.0 + 9.0 * experts) * d_model**2 * n_blocks,
    }


def kv_cache_values(d_model, kv_tokens) -> np.ndarray:
    """Values in a multi-head attention KV cache of ``kv_tokens`` tokens: a key and a value (d_model each) per
    block."""
    d_model, kv_tokens = (
        check_positive_array("d_model", d_model),
        check_positive_array("kv_tokens", kv_tokens, allow_zero=True),
    )
    return 2.0 * kv_tokens * (d_model / D_MODEL_PER_BLOCK) * d_model


def inference_memory(
    d_model, experts=1, *, kv_tokens=0, bytes_per_value: float = BYTES_PER_VALUE, vocab: int = GPT2_VOCAB
) -> np.ndarray:
    """Bytes to serve the model: every parameter (all experts) plus the KV cache, at ``bytes_per_value`` each."""
    check_positive("bytes_per_value", bytes_per_value)
    total = joint_shape(d_model, experts, vocab=vocab)["total_params"]
    return bytes_per_value * (total + kv_cache_values(d_model, kv_tokens))


def _increasing_root(function: Callable[[np.ndarray], np.ndarray], low, high, iterations: int = 64):
    """Where an increasing function of x crosses zero, for arrays of brackets [low, high] (bisection in log x)."""
    log_low, log_high = np.log(low), np.log(high)
    for _ in range(iterations):
        middle = 0.5 * (log_low + log_high)
        below = function(np.exp(middle)) < 0
        log_low, log_high = np.where(below, middle, log_low), np.where(below, log_high, middle)
    return np.exp(0.5 * (log_low + log_high))


WIDTHS = (1e-3, 1e8)  # the widths width_for_active_params searches


def _outside_widths(active_params: np.ndarray, vocab: int) -> tuple[np.ndarray, str]:
    """Where an active-parameter count needs a width outside :data:`WIDTHS`, and the allowed counts in words."""
    low, high = (float(joint_shape(width, vocab=vocab)["active_params"]) for width in WIDTHS)
    allowed = f"from {low:.3g} to {high:.3g} active parameters (d_model from {WIDTHS[0]:g} to {WIDTHS[1]:g})"
    return (active_params < low) | (active_params > high), allowed


def width_for_active_params(active_params, *, vocab: int = GPT2_VOCAB) -> np.ndarray:
    """The d_model whose model has ``active_params`` active parameters (the counting above, inverted)."""
    active_params = check_positive_array("active_params", active_params)
    outside, allowed = _outside_widths(active_params, vocab)
    if np.any(outside):
        raise ValueError(f"active_params contains {float(active_params[outside].flat[0])!r}; expected {allowed}")
    return _increasing_root(
        lambda d: joint_shape(d, vocab=vocab)["active_params"] - active_params,
        np.full(active_params.shape, WIDTHS[0]),
        np.full(active_params.shape, WIDTHS[1]),
    )


# ------------------------------------------------------------------------------------ optimal configurations


@dataclass(frozen=True)
class JointConfig:
    """Configurations chosen by the law: arrays broadcast over the inputs (0-d for scalar inputs).

    ``memory_bound`` marks where the memory budget, not compute, set the model size; ``fits`` where any model
    fits the budget at all (elsewhere the loss is inf).
    """

    flops: np.ndarray
    experts: np.ndarray
    d_model: np.ndarray
    n_blocks: np.ndarray
    active_params: np.ndarray
    total_params: np.ndarray
    tokens: np.ndarray
    inference_tokens: np.ndarray
    memory_bytes: np.ndarray
    loss: np.ndarray
    memory_bound: np.ndarray
    fits: np.ndarray

    def as_frame(self) -> pd.DataFrame:
        columns = np.broadcast_arrays(*(np.asarray(value) for value in self.__dict__.values()))
        return pd.DataFrame({name: column.ravel() for name, column in zip(self.__dict__, columns, strict=True)})


def _inference_aware_params(per_expert: PerExpertLaw, flops, inference_tokens) -> np.ndarray:
    """The N minimising ``m N^mu + n D^nu`` with ``D = F/(6N) - D_inf/3``: the loss is convex in log N, so its
    derivative crosses zero once, between a 1-parameter model and the one that spends F on inference alone."""
    flops, inference_tokens = np.broadcast_arrays(flops, inference_tokens)

    def slope(active):  # d loss / d ln N
        tokens = flops / (FLOPS_PER_ACTIVE_PARAMETER * active) - inference_tokens / 3.0
        return per_expert.mu * per_expert.m * active**per_expert.mu - per_expert.nu * per_expert.n * tokens ** (
            per_expert.nu - 1.0
        ) * flops / (FLOPS_PER_ACTIVE_PARAMETER * active)

    largest = flops / (FLOPS_PER_ACTIVE_PARAMETER + INFERENCE_FLOPS_PER_ACTIVE_PARAMETER * inference_tokens)
    with np.errstate(over="ignore", invalid="ignore"):
        return _increasing_root(slope, np.ones_like(largest), largest * (1 - 1e-12))


def optimal_config(
    flops,
    experts,
    *,
    memory_bytes=None,
    kv_tokens=0,
    inference_tokens=0,
    bytes_per_value: float = BYTES_PER_VALUE,
    law: JointLaw = JOINT,
    vocab: int = GPT2_VOCAB,
) -> JointConfig:
    """The law's best model for a training budget ``flops`` with ``experts`` experts (section 4).

    * Defaults: the compute optimum, in closed form.
    * ``inference_tokens``: the budget also serves that many tokens, ``6 N D + 2 N D_inf = F``.
    * ``memory_bytes``: the model (all experts, plus ``kv_tokens`` of KV cache, at ``bytes_per_value``) must
      fit; the optimum is then the unconstrained one clipped to the largest model that fits.

    All numeric arguments broadcast together, e.g. ``flops[:, None, None]`` against ``memory_bytes[None, :,
    None]`` and ``experts[None, None, :]`` for a heatmap. Raises a ValueError when no model fits anywhere.
    """
    flops, experts = check_positive_array("flops", flops), _expert_counts(experts)
    inference_tokens = check_positive_array("inference_tokens", inference_tokens, allow_zero=True)
    check_positive_array("kv_tokens", kv_tokens, allow_zero=True)
    check_positive("bytes_per_value", bytes_per_value)
    check_int("vocab", vocab, low=1)
    _check_law(law)
    # The inference-aware optimum is searched from a one-parameter model up: that model must leave some budget.
    too_many = np.broadcast_to(
        (inference_tokens > 0)
        & (inference_tokens >= (flops - FLOPS_PER_ACTIVE_PARAMETER) / INFERENCE_FLOPS_PER_ACTIVE_PARAMETER),
        np.broadcast_shapes(flops.shape, inference_tokens.shape),
    )
    if np.any(too_many):
        first = np.flatnonzero(too_many)[0]
        tokens, budget = (float(np.broadcast_to(v, too_many.shape).flat[first]) for v in (inference_tokens, flops))
        raise ValueError(
            f"inference_tokens={tokens!r} is not allowed with flops={budget!r}: serving them costs the whole "
            f"budget even for a one-parameter model; expected inference_tokens < (flops - 6) / 2"
        )
    per_expert = law.for_experts(experts)
    if np.all(inference_tokens == 0):
        active = per_expert.compute_optimal(flops)[0]
    else:
        active = _inference_aware_params(per_expert, flops, inference_tokens)
    outside, allowed = _outside_widths(active, vocab)
    if np.any(outside):
        budget = float(np.broadcast_to(flops, outside.shape)[outside].flat[0])
        raise ValueError(
            f"flops contains {budget!r}, whose optimal model has {active[outside].flat[0]:.3g} active parameters; "
            f"expected budgets whose optimum has {allowed}"
        )
    shape = np.broadcast_shapes(
        flops.shape, experts.shape, inference_tokens.shape, np.shape(memory_bytes), np.shape(kv_tokens)
    )
    active = np.broadcast_to(active, shape)
    fits = np.ones(shape, dtype=bool)
    memory_bound = np.zeros(shape, dtype=bool)
    if memory_bytes is not None:
        memory_bytes = check_positive_array("memory_bytes", memory_bytes)

        def memory(d):
            return inference_memory(d, experts, kv_tokens=kv_tokens, bytes_per_value=bytes_per_value, vocab=vocab)

        smallest = np.broadcast_to(memory(SMALLEST_D_MODEL), shape)
        fits = np.broadcast_to(memory_bytes >= smallest, shape)
        if not fits.any():
            raise ValueError(
                f"memory_bytes={_short(memory_bytes)} is smaller than any model: the smallest (d_model = "
                f"{SMALLEST_D_MODEL:g}, one block) needs {smallest.min():.3g} bytes with these experts and cache"
            )
        widest = _increasing_root(
            lambda d: memory(d) - memory_bytes, np.full(shape, SMALLEST_D_MODEL), np.full(shape, 1e7)
        )
        largest_active = joint_shape(widest, vocab=vocab)["active_params"]
        memory_bound = fits & (largest_active < active)
        active = np.where(memory_bound, largest_active, active)
    d_model = width_for_active_params(active, vocab=vocab)
    model = joint_shape(d_model, experts, vocab=vocab)
    tokens = flops / (FLOPS_PER_ACTIVE_PARAMETER * active) - inference_tokens / 3.0
    loss = np.where(fits, per_expert.loss(active, tokens), np.inf)
    return JointConfig(
        flops=np.broadcast_to(flops, shape),
        experts=np.broadcast_to(experts, shape),
        d_model=d_model,
        n_blocks=model["n_blocks"],
        active_params=active,
        total_params=np.broadcast_to(model["total_params"], shape),
        tokens=tokens,
        inference_tokens=np.broadcast_to(inference_tokens, shape),
        memory_bytes=inference_memory(
            d_model, experts, kv_tokens=kv_tokens, bytes_per_value=bytes_per_value, vocab=vocab
        ),
        loss=loss,
        memory_bound=memory_bound,
        fits=fits,
    )


def _check_law(law) -> None:
    if not isinstance(law, JointLaw):
        raise ValueError(f"law={law!r} is not allowed; expected a JointLaw")


def _short(value) -> str:
    array = np.asarray(value)
    return repr(float(array)) if array.ndim == 0 else f"array of {array.size} budgets"


def configs_by_experts(flops: float, *, expert_counts: Sequence[int] = EXPERT_COUNTS, **options) -> pd.DataFrame:
    """One row per number of experts: the law's best configuration at one budget (``options`` as for
    :func:`optimal_config`), with a column marking the best. Numbers of experts whose smallest model does not
    fit the memory budget get loss inf."""
    check_positive("flops", flops)
    table = optimal_config(flops, _expert_grid(expert_counts), **options).as_frame()
    table["experts"] = table.experts.astype(int)
    table = table.set_index("experts")
    table["best"] = table.index == table.loss.idxmin()
    return table


def optimal_experts(
    flops, memory_bytes, *, expert_counts: Sequence[int] = EXPERT_COUNTS, **options
) -> tuple[np.ndarray, np.ndarray]:
    """The best number of experts and its loss on a grid of compute budgets x memory budgets.

    Returns two (len(flops), len(memory_bytes)) arrays; NaN and inf where no model fits. ``options`` as for
    :func:`optimal_config`. Vectorised: a 30 x 30 grid over six expert counts takes milliseconds.
    """
    flops, memory_bytes = np.atleast_1d(flops), np.atleast_1d(memory_bytes)
    if flops.ndim != 1 or memory_bytes.ndim != 1:
        raise ValueError(
            f"flops has shape {flops.shape} and memory_bytes {memory_bytes.shape}; expected numbers or 1-D arrays"
        )
    experts = _expert_grid(expert_counts)
    configs = optimal_config(
        flops[:, None, None], experts[None, None, :], memory_bytes=memory_bytes[None, :, None], **options
    )
    best = np.argmin(configs.loss, axis=-1)
    loss = np.take_along_axis(configs.loss, best[..., None], axis=-1)[..., 0]
    return np.where(np.isfinite(loss), experts[best], np.nan), loss


def compute_saving(flops, experts, *, law: JointLaw = JOINT) -> np.ndarray:
    """How many times more compute a compute-optimal dense model needs to match a compute-optimal model with
    ``experts`` experts trained with ``flops`` (the paper's Fig. 2b); both sides are closed forms."""
    _check_law(law)
    moe_loss = law.for_experts(experts).optimal_loss(flops)
    return law.for_experts(1).flops_to_reach(moe_loss) / np.asarray(flops, dtype=float)


# ------------------------------------------------------------------------------------------- learning rate

LEARNING_RATE_RULE = {"intercept": 8.39, "params_slope": 0.81, "experts_slope": 0.25}
"""Eq. 8: ``ln LR = 8.39 - 0.81 ln N - 0.25 ln E``, with N the active non-embedding parameters."""


def peak_learning_rate(active_non_embedding, experts) -> np.ndarray:
    """The paper's fitted peak learning rate (eq. 8): smaller for larger models, and for more experts.

    The paper's text counts N without embeddings; its released training code includes the embedding and head,
    so pass whichever count your runs use and say which.
    """
    active_non_embedding, experts = (
        check_positive_array("active_non_embedding", active_non_embedding),
        _expert_counts(experts),
    )
    rule = LEARNING_RATE_RULE
    return np.exp(
        rule["intercept"]
        - rule["params_slope"] * np.log(active_non_embedding)
        - rule["experts_slope"] * np.log(experts)
    )


# ------------------------------------------------------------------------------------------ published tables


_SUFFIXES = {"M": 1e6, "B": 1e9, "T": 1e12}


def printed_value(text: str) -> tuple[float, float]:
    """A number as a table prints it ("1.5B", "990M") and half a unit of its last digit: the rounding it hides."""
    if not isinstance(text, str) or not re.fullmatch(r"\d+(\.\d+)?[MBT]", text):
        raise ValueError(f"text={text!r} is not allowed; expected digits followed by one of {tuple(_SUFFIXES)}")
    digits, suffix = text[:-1], text[-1]
    decimals = len(digits.partition(".")[2])
    return float(digits) * _SUFFIXES[suffix], 0.5 * 10.0**-decimals * _SUFFIXES[suffix]


@dataclass(frozen=True)
class PublishedOptimum:
    """A row of the paper's Table 1: the compute optimum for one budget and number of experts, as printed."""

    flops: float
    experts: int
    active_printed: str
    tokens_printed: str

    @property
    def active_params(self) -> float:
        return printed_value(self.active_printed)[0]

    @property
    def tokens(self) -> float:
        return printed_value(self.tokens_printed)[0]


_TABLE_1_ACTIVE = {
    1e20: ("1.7B", "1.5B", "1.2B", "990M", "810M", "669M"),
    1e21: ("5.7B", "5B", "4.4B", "3.8B", "3.3B", "2.85B"),
    1e22: ("18.8B", "17.4B", "15.8B", "14.4B", "13.2B", "12.2B"),
}
_TABLE_1_TOKENS = {
    1e20: ("9.7B", "11.4B", "13.9B", "17B", "20.7B", "24.9B"),
    1e21: ("29.3B", "33B", "38B", "44.3B", "51.2B", "58.4B"),
    1e22: ("88.6B", "96B", "105.4B", "115.8B", "126.5B", "136.9B"),
}
JOINT_TABLE_1 = tuple(
    PublishedOptimum(flops, experts, active, tokens)
    for flops in _TABLE_1_ACTIVE
    for experts, active, tokens in zip(EXPERT_COUNTS, _TABLE_1_ACTIVE[flops], _TABLE_1_TOKENS[flops], strict=True)
)
"""arXiv 2502.05172, Table 1: compute-optimal active parameters and tokens, as printed."""


@dataclass(frozen=True)
class PublishedExpertChoice:
    """A cell of the paper's Table 2: the best number of experts for a compute and a memory budget.

    ``at_least`` marks the cells printed as ">= 32": the largest E the paper considers still wins.
    """

    flops: float
    memory_gb: float
    experts: int
    at_least: bool = False


TABLE_2_KV_TOKENS = 16_384  # the paper's setting: a 16k-token KV cache, bf16 weights and cache
JOINT_TABLE_2 = tuple(
    PublishedExpertChoice(flops, memory, experts, at_least=experts == 32)
    for flops, row in ((1e21, (16, 32, 32)), (1e22, (4, 16, 32)), (1e23, (1, 8, 32)), (1e24, (1, 1, 16)))
    for memory, experts in zip((24, 80, 640), row, strict=True)
)
"""arXiv 2502.05172, Table 2: the memory budgets are an RTX 4090 (24 GB), an H100 (80 GB) and 8 H100s (640 GB)."""


def reproduce_table_1(*, law: JointLaw = JOINT, tolerance: float = 0.02) -> pd.DataFrame:
    """Table 1 recomputed by the closed form, beside the printed values, with relative differences.

    A number agrees when it is within ``tolerance`` of the printed one or rounds to it (the table prints two or
    three significant figures: "1.5B" stands for anything from 1.45B to 1.55B).
    """
    _check_law(law)
    check_positive("tolerance", tolerance, allow_zero=True)
    rows = []
    for row in JOINT_TABLE_1:
        ours = dict(
            zip(("active", "tokens"), law.for_experts(row.experts).compute_optimal(row.flops), strict=True)
        )
        result = {"flops": row.flops, "experts": row.experts}
        for name, printed in (("active", row.active_printed), ("tokens", row.tokens_printed)):
            value, rounding = printed_value(printed)
            mine = float(ours[name])
            result[f"{name} (paper)"] = printed
            result[f"{name} (ours)"] = mine
            result[f"{name} difference"] = mine / value - 1
            result[f"{name} agrees"] = abs(mine - value) <= max(tolerance * value, rounding)
        rows.append(result)
    return pd.DataFrame(rows)


def reproduce_table_2(
    *,
    law: JointLaw = JOINT,
    expert_counts: Sequence[int] = EXPERT_COUNTS,
    kv_tokens: int = TABLE_2_KV_TOKENS,
    bytes_per_value: float = BYTES_PER_VALUE,
) -> pd.DataFrame:
    """Table 2 recomputed: for each cell, our best E, whether it matches (a ">= 32" cell matches 32), and how much
    worse the law says the published E is than ours (``loss gap``: 0 when they match). A gap of a few thousandths
    means the cell lies where the law is nearly flat in E."""
    rows = []
    for cell in JOINT_TABLE_2:
        table = configs_by_experts(
            cell.flops,
            expert_counts=expert_counts,
            memory_bytes=cell.memory_gb * GB,
            kv_tokens=kv_tokens,
            bytes_per_value=bytes_per_value,
            law=law,
        )
        ours = int(table.loss.idxmin())
        matches = ours >= cell.experts if cell.at_least else ours == cell.experts
        rows.append(
            {
                "flops": cell.flops,
                "memory (GB)": cell.memory_gb,
                "experts (paper)": f">={cell.experts}" if cell.at_least else str(cell.experts),
                "experts (ours)": ours,
                "match": matches,
                "within one doubling": abs(math.log2(ours / cell.experts)) <= 1 or (cell.at_least and matches),
                "loss gap": float(table.loss[cell.experts] - table.loss.min()),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- fitting

_EXPONENT_BOUNDS = (-3.0, 0.0)
_INTERACTION_BOUNDS = (-1.0, 1.0)
_EXPERT_POWER_BOUNDS = (-5.0, 5.0)
_LOG_BOUNDS = (-12.0, 20.0)


def joint_form(e_start: float = JOINT.e_start, e_max: float = JOINT.e_max) -> LawForm:
    """The joint law as a :class:`~efflab.law_fitting.LawForm` over features N (active parameters), D and E.

    ``e_start`` and ``e_max`` stay fixed: a handful of expert counts cannot pin down the saturation of Ê. The
    fit runs in log space (a, b, c as logarithms), as the paper's appendix B describes.
    """
    _check_saturation(e_start, e_max)

    def log_loss(theta, features):
        log_n, log_d = np.log(features["N"]), np.log(features["D"])
        log_e = np.log(effective_experts(features["E"], e_start, e_max))
        model = theta["log_a"] + theta["delta"] * log_e + (theta["alpha"] + theta["gamma"] * log_e) * log_n
        data = theta["log_b"] + theta["omega"] * log_e + (theta["beta"] + theta["zeta"] * log_e) * log_d
        total, (w_c, w_model, w_data) = softmax_terms(np.full_like(log_n, theta["log_c"]), model, data)
        gradient = {
            "log_a": w_model,
            "alpha": w_model * log_n,
            "delta": w_model * log_e,
            "gamma": w_model * log_e * log_n,
            "log_b": w_data,
            "beta": w_data * log_d,
            "omega": w_data * log_e,
            "zeta": w_data * log_e * log_d,
            "log_c": w_c,
        }
        return total, gradient

    return LawForm(
        name="joint MoE",
        parameters=("log_a", "alpha", "delta", "gamma", "log_b", "beta", "omega", "zeta", "log_c"),
        features=("N", "D", "E"),
        log_loss=log_loss,
        start_ranges={
            "log_a": (0.0, 6.0),
            "alpha": (-0.6, -0.05),
            "delta": (-0.5, 0.5),
            "gamma": (-0.05, 0.05),
            "log_b": (0.0, 6.0),
            "beta": (-0.6, -0.05),
            "omega": (-0.5, 0.5),
            "zeta": (-0.05, 0.05),
            "log_c": (-2.0, 1.0),
        },
        bounds={
            "log_a": _LOG_BOUNDS,
            "alpha": _EXPONENT_BOUNDS,
            "delta": _EXPERT_POWER_BOUNDS,
            "gamma": _INTERACTION_BOUNDS,
            "log_b": _LOG_BOUNDS,
            "beta": _EXPONENT_BOUNDS,
            "omega": _EXPERT_POWER_BOUNDS,
            "zeta": _INTERACTION_BOUNDS,
            "log_c": (-12.0, 3.0),
        },
        to_law=lambda p: JointLaw(**p, e_start=e_start, e_max=e_max, source="fit"),
    )
