"""Scaling laws for mixtures of experts: the published laws, their compute-optimal configurations, and fitting.

A scaling law predicts the final training loss L of a model from how big it is (N parameters) and how long it
trains (D tokens). Fitted on many small runs, it says how to spend a compute budget on a large one.

**The fine-grained MoE law** (Krajewski, Ludziejewski et al. 2024, arXiv 2402.07871, eq. 9) adds the
granularity G (see :mod:`efflab.models.moe`) to Chinchilla's form (Hoffmann et al. 2022, arXiv 2203.15556):

    L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta

N is the number of non-embedding parameters of the whole model (all experts; routing excluded) at a fixed
expansion rate E (64 in the paper), D the training tokens. Only the model-size term depends on G: finer experts
make each parameter more useful, with diminishing returns, down to ``a`` (an infinitely granular MoE still
does not beat a dense model with the same total parameters). With g = 0 the law is Chinchilla's dense form.

**Cost** (eq. 10 and appendix E). Training FLOPs count the active parameters (6 per parameter per token) plus
the router, whose cost grows with the number of experts E * G:

    F = (12 d_model^2 c_f + d_model E G c_r) D n_blocks,   c_f = 6, c_r = 14

12 d_model^2 per block is attention (4 d^2) plus the active part of the FFN (8 d^2, d_ff = 4 d); attention
scores and embeddings are not counted. The paper ties the shape to one number, d_model = 64 n_blocks, so the
total parameters are N = (8E + 4) d_model^2 n_blocks.

**Compute-optimal configuration** (section 6): for a budget F, choose d_model, D and G to minimise L subject to
F. For a fixed G, F fixes D once d_model is chosen, so it is a one-dimensional search (a bounded Brent search
over log d_model, :func:`fg_optimal_for_granularity`); then take the best G of a grid
(:func:`fg_compute_optimal`). :data:`FG_TABLE_2` holds the paper's published optima, which the tests reproduce.

**Fitting** (:func:`fit_law`). A law's form is a :class:`LawForm`: named parameters, the features it reads
(``N``, ``D``, ``G`` ...) and a function predicting log L. The fit minimises a Huber loss on log L, which a
few bad runs cannot dominate, by L-BFGS from several seeded starting points (the best one wins), with
coefficients fitted as logarithms; the method of Chinchilla's "approach 3". The joint MoE law of notebook 06
(arXiv 2502.05172) is another :class:`LawForm`, in :mod:`efflab.joint_moe.law`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from efflab.flops import D_MODEL_PER_BLOCK, FLOPS_PER_ACTIVE_PARAMETER
from efflab.law_fitting import LawForm, check_interval, check_positive_array, softmax_terms
from efflab.validation import check_int, check_positive

# ------------------------------------------------------------------------------------------------- the laws


@dataclass(frozen=True)
class FineGrainedLaw:
    """``L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta`` (arXiv 2402.07871, eq. 9).

    With ``g = 0`` it is the dense Chinchilla form ``c + a / N^alpha + b / D^beta``.
    """

    a: float
    alpha: float
    b: float
    beta: float
    g: float = 0.0
    gamma: float = 0.0
    c: float = 0.0
    source: str = field(default="", compare=False)

    def __post_init__(self):
        for name, value in self.coefficients.items():
            check_positive(name, value, allow_zero=True)

    def loss(self, params, tokens, granularity=1.0):
        """Predicted loss (nats per token); numbers or NumPy arrays, broadcast together."""
        params, tokens, granularity = (
            check_positive_array(name, value)
            for name, value in (("params", params), ("tokens", tokens), ("granularity", granularity))
        )
        model_term = (self.g / granularity**self.gamma + self.a) / params**self.alpha
        return self.c + model_term + self.b / tokens**self.beta

    @property
    def coefficients(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in ("a", "alpha", "b", "beta", "g", "gamma", "c")}


FG_MOE = FineGrainedLaw(
    a=18.1,
    alpha=0.115,
    b=30.8,
    beta=0.147,
    g=2.1,
    gamma=0.58,
    c=0.47,
    source="arXiv 2402.07871, Table 1 (MoE, E = 64)",
)
FG_DENSE = FineGrainedLaw(
    a=16.3, alpha=0.126, b=26.7, beta=0.127, c=0.47, source="arXiv 2402.07871, Table 1 (dense)"
)
FG_MOE_HOLDOUT = FineGrainedLaw(
    a=17.6,
    alpha=0.114,
    b=26.7,
    beta=0.140,
    g=2.07,
    gamma=0.570,
    c=0.472,
    source="arXiv 2402.07871, Table 5 (fit without the 20% lowest-loss runs)",
)
FG_MOE_E16 = FineGrainedLaw(
    a=19.64,
    alpha=0.124,
    b=57.07,
    beta=0.169,
    g=1.18,
    gamma=0.986,
    c=0.472,
    source="arXiv 2402.07871, Table 8 (E = 16)",
)
FG_LAWS = {
    "MoE, E=64 (Table 1)": FG_MOE,
    "MoE, hold-out fit (Table 5)": FG_MOE_HOLDOUT,
    "MoE, E=16 (Table 8)": FG_MOE_E16,
    "dense (Table 1)": FG_DENSE,
}

# ---------------------------------------------------------------------------------------- shapes and FLOPs

ROUTER_FLOPS_FACTOR = 14  # c_r: router projection 6, dispatch and combine 4 forward + 4 backward


def fg_shape(d_model, expansion: int = 64) -> dict[str, np.ndarray]:
    """The paper's model family at width ``d_model``: blocks, total and active non-embedding parameters.

    ``n_blocks = d_model / 64`` (kept continuous, as in the paper's optimisation), total parameters
    ``(8 E + 4) d_model^2 n_blocks`` (attention 4 d^2, E dense-sized FFNs of 8 d^2 each; routing excluded),
    active parameters ``12 d_model^2 n_blocks``. For E = 1 this is the dense model.
    """
    d_model = check_positive_array("d_model", d_model)
    check_int("expansion", expansion, low=1)
    n_blocks = d_model / D_MODEL_PER_BLOCK
    return {
        "n_blocks": n_blocks,
        "total_params": (8 * expansion + 4) * d_model**2 * n_blocks,
        "active_params": 12 * d_model**2 * n_blocks,
    }


def fg_training_flops(
    d_model,
    tokens,
    expansion: int = 64,
    granularity=1,
    *,
    n_blocks=None,
    flops_per_parameter: float = FLOPS_PER_ACTIVE_PARAMETER,
    router_flops_factor: float = ROUTER_FLOPS_FACTOR,
):
    """Training FLOPs of the fine-grained MoE (eq. 10): ``(12 d^2 c_f + d E G c_r) D n_blocks``.

    ``n_blocks`` defaults to the shape rule d_model / 64. ``router_flops_factor=0`` gives the dense cost
    ``6 N_active D``, the accounting of Kaplan et al. and Chinchilla.
    """
    d_model, tokens, granularity = (
        check_positive_array(name, value)
        for name, value in (("d_model", d_model), ("tokens", tokens), ("granularity", granularity))
    )
    check_int("expansion", expansion, low=1)
    check_positive("flops_per_parameter", flops_per_parameter)
    check_positive("router_flops_factor", router_flops_factor, allow_zero=True)
    n_blocks = d_model / D_MODEL_PER_BLOCK if n_blocks is None else check_positive_array("n_blocks", n_blocks)
    per_token_per_block = 12 * d_model**2 * flops_per_parameter + d_model * expansion * granularity * (
        router_flops_factor
    )
    return per_token_per_block * tokens * n_blocks


def router_flops_share(d_model, expansion: int = 64, granularity=1, **kwargs):
    """Fraction of training FLOPs spent on routing: grows with E * G, shrinks with d_model (FG Fig. 5)."""
    total = fg_training_flops(d_model, 1.0, expansion, granularity, **kwargs)
    without = fg_training_flops(d_model, 1.0, expansion, granularity, router_flops_factor=0.0)
    return 1.0 - without / total


# ------------------------------------------------------------------------------------- compute-optimal runs


@dataclass(frozen=True)
class OptimalConfig:
    """A compute-optimal configuration of the paper's model family for one budget."""

    flops: float
    granularity: float
    expansion: int
    d_model: float
    n_blocks: float
    active_params: float
    total_params: float
    tokens: float
    loss: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _loss_at_width(log_d_model, flops, granularity, law, expansion, router_flops_factor):
    d_model = math.exp(log_d_model)
    shape = fg_shape(d_model, expansion)
    per_token = fg_training_flops(d_model, 1.0, expansion, granularity, router_flops_factor=router_flops_factor)
    tokens = flops / float(per_token)
    params = float(shape["total_params"])
    return float(law.loss(params, tokens, granularity)), shape, tokens


def fg_optimal_for_granularity(
    flops: float,
    granularity: float,
    *,
    law: FineGrainedLaw = FG_MOE,
    expansion: int = 64,
    router_flops_factor: float = ROUTER_FLOPS_FACTOR,
    d_model_range: tuple[float, float] = (16.0, 1e6),
) -> OptimalConfig:
    """The best d_model (and so N and D) for a budget at one granularity: Brent's method over log d_model."""
    check_positive("flops", flops)
    check_positive("granularity", granularity)
    _check_law(law)
    check_int("expansion", expansion, low=1)
    check_positive("router_flops_factor", router_flops_factor, allow_zero=True)
    check_interval("d_model_range", d_model_range, positive=True)
    arguments = (flops, granularity, law, expansion, router_flops_factor)
    result = optimize.minimize_scalar(
        lambda log_d: _loss_at_width(log_d, *arguments)[0],
        bounds=tuple(math.log(v) for v in d_model_range),
        method="bounded",
        options={"xatol": 1e-7},
    )
    loss, shape, tokens = _loss_at_width(result.x, *arguments)
    return OptimalConfig(
        flops=float(flops),
        granularity=float(granularity),
        expansion=expansion,
        d_model=math.exp(result.x),
        n_blocks=float(shape["n_blocks"]),
        active_params=float(shape["active_params"]),
        total_params=float(shape["total_params"]),
        tokens=tokens,
        loss=loss,
    )


def _check_law(law) -> None:
    if not isinstance(law, FineGrainedLaw):
        raise ValueError(f"law={law!r} is not allowed; expected a FineGrainedLaw")


DEFAULT_GRANULARITIES = (1, 2, 4, 8, 16, 32, 64, 128)


def fg_compute_optimal(
    flops: float,
    *,
    law: FineGrainedLaw = FG_MOE,
    expansion: int = 64,
    granularities: Sequence[float] = DEFAULT_GRANULARITIES,
    router_flops_factor: float = ROUTER_FLOPS_FACTOR,
) -> OptimalConfig:
    """The compute-optimal configuration over a grid of granularities (the paper uses powers of two)."""
    if not isinstance(granularities, tuple | list) or not granularities:
        raise ValueError(f"granularities={granularities!r} is not allowed; expected at least one granularity")
    for granularity in granularities:
        check_positive("granularities", granularity)
    candidates = [
        fg_optimal_for_granularity(flops, g, law=law, expansion=expansion, router_flops_factor=router_flops_factor)
        for g in granularities
    ]
    return min(candidates, key=lambda config: config.loss)


def dense_compute_optimal(flops: float, *, law: FineGrainedLaw = FG_DENSE) -> OptimalConfig:
    """The compute-optimal dense model of the same family (E = 1, no router): F = 6 N D."""
    return fg_optimal_for_granularity(flops, 1.0, law=law, expansion=1, router_flops_factor=0.0)


def dense_flops_to_match(loss: float, *, law: FineGrainedLaw = FG_DENSE, bracket=(1e12, 1e34)) -> float:
    """The budget a compute-optimal dense model needs to reach ``loss`` (bisection in log F).

    Dividing by an MoE's budget gives its compute saving, one of the paper's headline numbers.
    """
    check_positive("loss", loss)
    _check_law(law)
    check_interval("bracket", bracket, positive=True)
    low, high = (math.log(v) for v in bracket)
    if dense_compute_optimal(math.exp(high), law=law).loss > loss:
        return math.inf
    for _ in range(200):
        middle = 0.5 * (low + high)
        if dense_compute_optimal(math.exp(middle), law=law).loss > loss:
            low = middle
        else:
            high = middle
        if high - low < 1e-9:
            break
    return math.exp(high)


@dataclass(frozen=True)
class PublishedOptimum:
    """One row of the paper's Table 2: an MoE with E = 64 experts-worth of parameters per FFN."""

    label: str
    active_params: float
    tokens: float
    granularity: int
    flops: float
    loss: float


FG_TABLE_2 = (
    PublishedOptimum("64 x 100M", 100e6, 4.37e9, 8, 2.95e18, 3.133),
    PublishedOptimum("64 x 1B", 1e9, 28.94e9, 16, 1.93e20, 2.491),
    PublishedOptimum("64 x 3B", 3e9, 72.90e9, 16, 1.41e21, 2.245),
    PublishedOptimum("64 x 7B", 7e9, 137.60e9, 32, 6.46e21, 2.076),
    PublishedOptimum("64 x 70B", 70e9, 941.07e9, 32, 4.16e23, 1.694),
    PublishedOptimum("64 x 300B", 300e9, 2.96e12, 64, 5.69e24, 1.503),
    PublishedOptimum("64 x 1T", 1e12, 7.94e12, 64, 4.97e25, 1.367),
)
"""arXiv 2402.07871, Table 2: compute-optimal configurations from the law of Table 1."""


# -------------------------------------------------------------------------------------------------- fitting


def _fine_grained_log_loss(theta, features):
    """log of c + (a + g G^-gamma) N^-alpha + b D^-beta and its derivatives, from log coefficients."""
    log_n, log_d, log_g = np.log(features["N"]), np.log(features["D"]), np.log(features["G"])
    inner, (share_a, share_g) = softmax_terms(
        np.full_like(log_n, theta["log_a"]), theta["log_g"] - theta["gamma"] * log_g
    )
    model = inner - theta["alpha"] * log_n
    data = theta["log_b"] - theta["beta"] * log_d
    log_loss, (w_c, w_model, w_data) = softmax_terms(np.full_like(log_n, theta["log_c"]), model, data)
    gradient = {
        "log_a": w_model * share_a,
        "alpha": -w_model * log_n,
        "log_b": w_data,
        "beta": -w_data * log_d,
        "log_g": w_model * share_g,
        "gamma": -w_model * share_g * log_g,
        "log_c": w_c,
    }
    return log_loss, gradient


def _chinchilla_log_loss(theta, features):
    """log of c + a N^-alpha + b D^-beta and its derivatives, from log coefficients."""
    log_n, log_d = np.log(features["N"]), np.log(features["D"])
    model = theta["log_a"] - theta["alpha"] * log_n
    data = theta["log_b"] - theta["beta"] * log_d
    log_loss, (w_c, w_model, w_data) = softmax_terms(np.full_like(log_n, theta["log_c"]), model, data)
    gradient = {
        "log_a": w_model,
        "alpha": -w_model * log_n,
        "log_b": w_data,
        "beta": -w_data * log_d,
        "log_c": w_c,
    }
    return log_loss, gradient


_EXPONENT_BOUNDS = (0.0, 3.0)
_LOG_BOUNDS = (-12.0, 20.0)

FINE_GRAINED_FORM = LawForm(
    name="fine-grained MoE",
    parameters=("log_a", "alpha", "log_b", "beta", "log_g", "gamma", "log_c"),
    features=("N", "D", "G"),
    log_loss=_fine_grained_log_loss,
    start_ranges={
        "log_a": (0.0, 6.0),
        "alpha": (0.05, 0.6),
        "log_b": (0.0, 6.0),
        "beta": (0.05, 0.6),
        "log_g": (-2.0, 4.0),
        "gamma": (0.1, 1.5),
        "log_c": (-2.0, 1.0),
    },
    bounds={
        "log_a": _LOG_BOUNDS,
        "alpha": _EXPONENT_BOUNDS,
        "log_b": _LOG_BOUNDS,
        "beta": _EXPONENT_BOUNDS,
        "log_g": _LOG_BOUNDS,
        "gamma": _EXPONENT_BOUNDS,
        "log_c": (-12.0, 3.0),
    },
    to_law=lambda p: FineGrainedLaw(**p, source="fit"),
)

CHINCHILLA_FORM = LawForm(
    name="Chinchilla (dense)",
    parameters=("log_a", "alpha", "log_b", "beta", "log_c"),
    features=("N", "D"),
    log_loss=_chinchilla_log_loss,
    start_ranges={
        "log_a": (0.0, 6.0),
        "alpha": (0.05, 0.6),
        "log_b": (0.0, 6.0),
        "beta": (0.05, 0.6),
        "log_c": (-2.0, 1.0),
    },
    bounds={
        "log_a": _LOG_BOUNDS,
        "alpha": _EXPONENT_BOUNDS,
        "log_b": _LOG_BOUNDS,
        "beta": _EXPONENT_BOUNDS,
        "log_c": (-12.0, 3.0),
    },
    to_law=lambda p: FineGrainedLaw(**p, source="fit"),
)
