"""Fitting a scaling law to measured losses: a robust loss on log L, several starts, hand-written gradients.

Both MoE scaling notebooks fit a law of the Chinchilla family, ``L = c + sum_i a_i x_i^-alpha_i`` in some
form, to a grid of small training runs, the way Hoffmann et al. (2022) fit theirs: minimise the Huber loss
of ``log L_predicted - log L_measured`` with L-BFGS from many starting points and keep the best. A
:class:`LawForm` describes one law (its parameters in fit space, where coefficients are logarithms; its
features; ``log_loss`` with derivatives); :func:`fit_law` fits it and returns a :class:`LawFit`.
:func:`softmax_terms` is the numerically stable log-sum of terms every form is built from.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from efflab.validation import check_finite, check_int, check_positive, check_range, is_number


def check_interval(name: str, interval, *, positive: bool = False) -> None:
    """Raise a ValueError unless ``interval`` is a pair ``(low, high)`` of finite numbers with low < high (and
    low > 0 with ``positive``: a range searched in log space)."""
    ok = isinstance(interval, tuple | list) and len(interval) == 2
    ok = ok and all(is_number(v) and math.isfinite(v) for v in interval) and interval[0] < interval[1]
    if not (ok and (interval[0] > 0 or not positive)):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"{name}={interval!r} is not allowed; expected a pair (low, high) of {kind}, low < high")


def check_positive_array(name: str, value, *, allow_zero: bool = False) -> np.ndarray:
    """``value`` as a float array, or a ValueError naming the first entry that is not a finite number > 0
    (>= 0 with ``allow_zero``)."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not allowed; expected numbers or an array of numbers") from None
    bad = ~((array >= 0) if allow_zero else (array > 0)) | ~np.isfinite(array)
    if np.any(bad):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} contains {array[bad].flat[0]!r}; expected finite numbers {bound}")
    return array


@dataclass(frozen=True)
class LawForm:
    """A law's functional form, for :func:`fit_law`.

    ``log_loss(theta, features)`` returns the predicted log L at every run and its partial derivatives with
    respect to each parameter (a dict of arrays), from the parameters in *fit space* (coefficients as
    logarithms, named ``log_a`` ...) and the feature columns (NumPy arrays). The derivatives are written out by
    hand: a fit evaluates the form thousands of times, and NumPy on a few hundred runs takes microseconds.
    ``start_ranges`` are the fit-space intervals the starting points are drawn from, ``bounds`` what the
    optimiser may explore, and ``to_law`` turns natural coefficients into a law object.
    """

    name: str
    parameters: tuple[str, ...]
    features: tuple[str, ...]
    log_loss: Callable[[Mapping[str, float], Mapping[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]
    start_ranges: Mapping[str, tuple[float, float]]
    bounds: Mapping[str, tuple[float, float]]
    to_law: Callable[[Mapping[str, float]], object]

    def __post_init__(self):
        for field_name in ("parameters", "features"):
            if not getattr(self, field_name):
                raise ValueError(f"{field_name}=() is not allowed; expected at least one name")
        for table in ("start_ranges", "bounds"):
            intervals = getattr(self, table)
            missing = set(self.parameters) - set(intervals)
            if missing:
                raise ValueError(f"{table} lacks {sorted(missing)}; expected an interval for every parameter")
            for name in self.parameters:
                check_interval(f"{table}[{name!r}]", intervals[name])

    @staticmethod
    def natural_name(parameter: str) -> str:
        return parameter.removeprefix("log_")

    def to_natural(self, theta: Mapping[str, float]) -> dict[str, float]:
        return {
            self.natural_name(name): math.exp(value) if name.startswith("log_") else value
            for name, value in theta.items()
        }

    def to_fit_space(self, natural: Mapping[str, float], name: str = "fixed") -> dict[str, float]:
        """Natural coefficients (a mapping the caller passed as ``name``) in fit space."""
        result = {}
        for key, value in natural.items():
            fit_name = next((p for p in self.parameters if self.natural_name(p) == key), None)
            if fit_name is None:
                raise ValueError(
                    f"{name} contains {key!r}, which is not a parameter of the {self.name} law; expected one of "
                    f"{tuple(self.natural_name(p) for p in self.parameters)}"
                )
            if fit_name.startswith("log_"):
                check_positive(f"{name}[{key!r}]", value)
                value = math.log(value)
            check_finite(f"{name}[{key!r}]", value)
            result[fit_name] = float(value)
        return result


def softmax_terms(*terms: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(sum_i exp(term_i)) and the weights exp(term_i - that), the derivative of the log-sum by each term."""
    if not terms:
        raise ValueError("terms=() is not allowed; expected at least one array of terms")
    stacked = np.stack(np.broadcast_arrays(*terms))
    top = stacked.max(axis=0)
    total = top + np.log(np.exp(stacked - top).sum(axis=0))
    return total, list(np.exp(stacked - total))


@dataclass(frozen=True)
class LawFit:
    """The result of :func:`fit_law`: the coefficients, the law, and how well it fits."""

    form: LawForm
    coefficients: dict[str, float]
    law: object
    objective: float
    rmse_log: float
    n_points: int
    n_starts: int
    fixed: dict[str, float]

    def predict(self, features: Mapping[str, Sequence[float]]) -> np.ndarray:
        """The fitted law's loss at new feature values."""
        theta = self.form.to_fit_space(self.coefficients)
        return np.exp(self.form.log_loss(theta, _feature_columns(self.form, features))[0])


def _feature_columns(form: LawForm, features: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    missing = set(form.features) - set(features)
    if missing:
        raise ValueError(f"features lacks {sorted(missing)}; the {form.name} law reads {form.features}")
    columns = {
        name: np.atleast_1d(check_positive_array(f"features[{name!r}]", features[name])) for name in form.features
    }
    for name, column in columns.items():
        if column.ndim != 1:
            raise ValueError(f"features[{name!r}] has shape {column.shape}; expected one value per run (1-D)")
    lengths = {len(column) for column in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"features have different lengths {sorted(lengths)}; expected one value per run")
    return columns


def huber(residual: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber's loss of each residual and its derivative: squared up to ``delta``, linear beyond, so a few bad
    runs pull on the fit only linearly."""
    check_positive("delta", delta)
    absolute = np.abs(residual)
    value = np.where(absolute <= delta, 0.5 * residual**2, delta * (absolute - 0.5 * delta))
    return value, np.clip(residual, -delta, delta)


def fit_law(
    form: LawForm,
    features: Mapping[str, Sequence[float]],
    losses: Sequence[float],
    *,
    n_starts: int = 24,
    seed: int = 0,
    huber_delta: float = 1e-3,
    fixed: Mapping[str, float] | None = None,
    starts: Sequence[Mapping[str, float]] = (),
    tolerance: float = 1e-15,
) -> LawFit:
    """Fit ``form`` to measured ``losses`` (one per run, > 0) at ``features`` (e.g. ``{"N": ..., "D": ...}``).

    Minimises the mean Huber loss of log L with L-BFGS-B from ``n_starts`` starting points drawn uniformly
    (seeded) from the form's start ranges; the best end point wins. ``fixed`` pins some coefficients in natural
    units, e.g. ``{"c": 0.47}``, when the data cannot pin them (too few sizes, or a floor out of reach).
    ``starts`` are extra starting points in natural units (a previous fit's coefficients: a bootstrap refit
    starts from the full fit), tried before the random ones; ``tolerance`` is L-BFGS's relative stopping
    tolerance on the objective.
    """
    check_int("n_starts", n_starts, low=0 if starts else 1)
    check_int("seed", seed, low=0)
    check_positive("huber_delta", huber_delta)
    check_positive("tolerance", tolerance)
    columns = _feature_columns(form, features)
    observed = np.atleast_1d(np.asarray(losses, dtype=float))
    n_points = len(next(iter(columns.values())))
    if observed.shape != (n_points,):
        raise ValueError(f"losses has shape {observed.shape}; expected ({n_points},), one per run")
    if not np.all(np.isfinite(observed) & (observed > 0)):
        raise ValueError("losses contains values that are not finite and > 0; expected positive losses")
    fixed_theta = form.to_fit_space({} if fixed is None else fixed)
    for name, value in fixed_theta.items():
        low, high = form.bounds[name]
        if not low <= value <= high:
            natural = form.natural_name(name)
            span = [form.to_natural({name: bound})[natural] for bound in (low, high)]
            raise ValueError(
                f"fixed[{natural!r}]={fixed[natural]!r} is not allowed; expected a value within the "
                f"{form.name} law's bounds, [{span[0]:.3g}, {span[1]:.3g}]"
            )
    free = [name for name in form.parameters if name not in fixed_theta]
    if n_points < len(free):
        raise ValueError(f"{n_points} runs cannot fit {len(free)} free coefficients; expected at least as many")
    target = np.log(observed)
    # Scaled so that a residual of one huber_delta costs about 1: L-BFGS's stopping tolerances are absolute,
    # and the raw mean of tiny squared log-residuals would look converged at any starting point.
    scale = 1.0 / (0.5 * huber_delta**2 * n_points)

    def objective(vector: np.ndarray):
        theta = {**fixed_theta, **dict(zip(free, vector, strict=True))}
        prediction, gradient = form.log_loss(theta, columns)
        value, slope = huber(prediction - target, huber_delta)
        return scale * value.sum(), scale * np.array([slope @ gradient[name] for name in free])

    generator = np.random.default_rng(seed)
    bounds = [form.bounds[name] for name in free]
    given = []
    for index, start in enumerate(starts):
        known = {k: v for k, v in start.items() if form.natural_name(k) in _natural(form)}
        theta = form.to_fit_space(known, f"starts[{index}]")
        missing = [form.natural_name(name) for name in free if name not in theta]
        if missing:
            raise ValueError(f"starts[{index}] lacks {missing}; expected a value for every free coefficient")
        given.append(np.clip([theta[name] for name in free], *np.array(bounds).T))
    with _single_threaded_blas():
        best = _best_of_starts(objective, free, form, bounds, n_starts, generator, given, tolerance)
    theta = {**fixed_theta, **dict(zip(free, (float(v) for v in best.x), strict=True))}
    coefficients = form.to_natural({name: theta[name] for name in form.parameters})
    residual = form.log_loss(theta, columns)[0] - target
    return LawFit(
        form=form,
        coefficients=coefficients,
        law=form.to_law(coefficients),
        objective=float(best.fun),
        rmse_log=float(np.sqrt(np.mean(residual**2))),
        n_points=n_points,
        n_starts=n_starts,
        fixed=form.to_natural(fixed_theta),
    )


def _natural(form: LawForm) -> set[str]:
    return {form.natural_name(p) for p in form.parameters}


def _best_of_starts(objective, free, form, bounds, n_starts, generator, given=(), tolerance=1e-15):
    best = None
    randoms = (np.array([generator.uniform(*form.start_ranges[name]) for name in free]) for _ in range(n_starts))
    for start in (*given, *randoms):
        result = optimize.minimize(
            objective,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 5000, "ftol": tolerance, "gtol": 1e-10},
        )
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    return best


def _single_threaded_blas():
    """L-BFGS-B's tiny linear algebra runs through BLAS; on a busy machine BLAS worker threads waiting for cores
    make each iteration a thousand times slower than the arithmetic, so the fit uses one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, run as is
        return contextlib.nullcontext()
    return threadpool_limits(1)


# ------------------------------------------------------------------------------------- how sure is a fit


def at_bounds(fit: LawFit, *, margin: float = 1e-3) -> list[str]:
    """The coefficients (natural names) that the optimiser left on an edge of the form's bounds (within
    ``margin`` of the bound's width): there the data did not pin them, the box did. Fixed ones are not listed."""
    check_range("margin", margin, low=0.0, high=0.5)
    theta = fit.form.to_fit_space({k: v for k, v in fit.coefficients.items() if k not in fit.fixed})
    flagged = []
    for name, value in theta.items():
        low, high = fit.form.bounds[name]
        if min(value - low, high - value) <= margin * (high - low):
            flagged.append(fit.form.natural_name(name))
    return flagged


@dataclass(frozen=True)
class FitUncertainty:
    """A fit and its bootstrap: every coefficient's refits over resampled groups of points.

    ``samples[name]`` holds one value per resample; :meth:`interval` is a central percentile interval.
    ``flagged`` names the coefficients the full fit left at a bound.
    """

    fit: LawFit
    samples: dict[str, np.ndarray]
    n_groups: int
    flagged: tuple[str, ...]

    def interval(self, name: str, level: float = 0.9) -> tuple[float, float]:
        if name not in self.samples:
            raise ValueError(f"name={name!r} is not allowed; expected one of {tuple(self.samples)}")
        check_range("level", level, low=0.0, high=1.0, low_open=True)
        values = self.samples[name]
        tail = 50.0 * (1.0 - level)
        return float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))

    @property
    def degenerate(self) -> bool:
        """True when the full fit left a coefficient at a bound (the box, not the data, set it)."""
        return bool(self.flagged)

    def describe(self, name: str, digits: int = 3) -> str:
        """``0.12 [0.05, 0.31]`` (the 90 % bootstrap interval), with "at a bound" where the fit sits on one."""
        check_int("digits", digits, low=1)
        low, high = self.interval(name)
        flag = " (at a bound)" if name in self.flagged else ""
        return f"{self.fit.coefficients[name]:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]{flag}"


def bootstrap_fit(
    form: LawForm,
    features: Mapping[str, Sequence[float]],
    losses: Sequence[float],
    groups: Sequence,
    *,
    resamples: int = 20,
    n_starts: int = 8,
    seed: int = 0,
    fixed: Mapping[str, float] | None = None,
) -> FitUncertainty:
    """Fit ``form`` (``n_starts`` random starts), then refit it ``resamples`` times to groups drawn with
    replacement: ``groups`` names each point's group (its run), since points of one run share its noise. Each
    refit starts from the full fit and one random point, with a looser tolerance (it only needs to land in the
    same basin). The spread of the refits is the uncertainty the grid leaves in each coefficient."""
    check_int("resamples", resamples, low=2)
    check_int("seed", seed, low=0)
    columns = _feature_columns(form, features)
    observed = np.asarray(losses, dtype=float)
    labels = np.asarray(list(groups))
    if labels.shape != observed.shape:
        raise ValueError(f"groups has shape {labels.shape}; expected {observed.shape}, one group per point")
    full = fit_law(form, columns, observed, n_starts=n_starts, seed=seed, fixed=fixed)
    unique = np.unique(labels)
    members = [np.flatnonzero(labels == value) for value in unique]
    generator = np.random.default_rng(seed + 1)
    samples: dict[str, list[float]] = {name: [] for name in full.coefficients}
    for round_ in range(resamples):
        chosen = np.concatenate([members[i] for i in generator.integers(0, len(unique), len(unique))])
        try:
            refit = fit_law(
                form,
                {name: column[chosen] for name, column in columns.items()},
                observed[chosen],
                n_starts=1,
                seed=seed + 2 + round_,
                fixed=fixed,
                starts=[full.coefficients],
                tolerance=1e-10,
            )
        except ValueError:  # a resample with fewer points than free coefficients
            continue
        for name, value in refit.coefficients.items():
            samples[name].append(value)
    arrays = {name: np.asarray(values) for name, values in samples.items()}
    if min(len(values) for values in arrays.values()) < 2:
        raise ValueError(f"only {min(map(len, arrays.values()))} of {resamples} resamples could be fitted")
    return FitUncertainty(full, arrays, len(unique), tuple(at_bounds(full)))


def compare_with_paper(low: float, high: float, paper: float, *, factor: float = 3.0) -> str:
    """How an interval [low, high] stands against the paper's value: ``"undetermined"`` (it spans zero),
    ``"opposite sign"``, ``"same sign and order"`` (it overlaps [paper / factor, paper * factor]) or
    ``"same sign, different size"``."""
    for name, value in (("low", low), ("high", high), ("paper", paper)):
        check_finite(name, value)
    if low > high:
        raise ValueError(f"low={low!r} is not allowed with high={high!r}; expected low <= high")
    check_range("factor", factor, low=1.0, high=math.inf)
    if low <= 0.0 <= high:
        return "undetermined"
    if (low > 0) != (paper > 0):
        return "opposite sign"
    small, large = sorted((abs(low), abs(high)))
    if large >= abs(paper) / factor and small <= abs(paper) * factor:
        return "same sign and order"
    return "same sign, different size"
