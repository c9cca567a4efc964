"""Stage 2 of D2DMoE: cut an FFN's d_ff neurons into E experts of equal size by clustering their weights.

Neuron i of a dense FFN is the triple (row i of W1, entry i of b1, column i of W2): it reads the token through
W1[i], and writes ``a_i W2[:, i]`` into the output. Any grouping of the neurons into experts gives the same
function when every expert runs, so the grouping is free to serve the router: neurons that fire for the same
tokens should share an expert, so that a token needs few experts. Neurons with similar input weights fire for
similar tokens, so the neurons are clustered by their L2-normalised W1 rows (the paper's section 3.2, after
MoEfication): u_i = W1[i] / ||W1[i]||.

**Balanced clusters.** Every expert must hold exactly s = d_ff / E neurons (equal experts keep the cost per expert
fixed and the layer a batched product). We solve the size constraint exactly rather than approximately:

1. a k-means codebook c_1..c_E of the u_i: E distinct rows drawn at random (seeded), then a few plain
   (unconstrained) Lloyd steps;
2. the *balanced assignment* for that codebook: each centroid is copied s times, giving a d_ff x d_ff cost matrix
   ``C[i, (e, j)] = ||u_i - c_e||^2``, and ``scipy.optimize.linear_sum_assignment`` finds the one-to-one
   matching of neurons to centroid slots with the least total distance; that is the best assignment with
   exactly s neurons per expert;
3. centroids become the means of their clusters, and steps 2-3 repeat for ``iterations`` rounds (the objective
   never increases: each step minimises it over one of the two unknowns).

Why this and not ``k_means_constrained`` (the authors' choice, a min-cost-flow solver): the same optimum of step 2,
no compiled dependency beyond SciPy, and an assignment that is exact by construction. A round costs about 0.3 s at
d_ff = 1536 on a laptop core (the Hungarian-type solver is cubic), which is why quick mode runs few rounds.

:func:`expert_permutation` turns the labels into the permutation that lists expert 0's neurons, then expert 1's,
and so on; :mod:`~efflab.dense_to_moe.moe_layer` permutes the weights with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from efflab.validation import check_int, check_seed


def check_expert_count(d_ff: int, n_experts, name: str = "n_experts") -> int:
    """The expert size d_ff / E; a ValueError naming ``name`` unless E is an integer in [1, d_ff] dividing d_ff."""
    check_int(name, n_experts, low=1, high=d_ff)
    if d_ff % n_experts:
        raise ValueError(
            f"{name}={n_experts!r} is not allowed; expected a divisor of the FFN width d_ff={d_ff} "
            "so that every expert gets the same number of neurons"
        )
    return d_ff // n_experts


def check_points(name: str, points: np.ndarray, width: int | None = None) -> None:
    """A finite float matrix (rows, width) with at least one row: normalised W1 rows or centroids."""
    ok = isinstance(points, np.ndarray) and points.ndim == 2 and len(points) > 0 and points.dtype.kind == "f"
    if not ok or (width is not None and points.shape[1] != width) or not np.isfinite(points).all():
        shape = points.shape if isinstance(points, np.ndarray) else type(points).__name__
        columns = "d_model" if width is None else width
        raise ValueError(f"{name} has shape {shape}; expected a finite float array (rows >= 1, {columns})")


def normalised_rows(weight: Tensor) -> np.ndarray:
    """u_i = W1[i] / ||W1[i]|| as float64 numpy (d_ff, d_model); an all-zero row stays zero."""
    rows = weight.detach().double().cpu()
    return (rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """||u_i - c_e||^2 for every pair, (points, centroids), through one matrix product."""
    squared = (points**2).sum(1)[:, None] - 2.0 * points @ centroids.T + (centroids**2).sum(1)[None, :]
    return np.maximum(squared, 0.0)


def balanced_assignment(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Labels (d_ff,) minimising sum_i ||u_i - c_label(i)||^2 subject to d_ff / E points per centroid."""
    check_points("points", points)
    check_points("centroids", centroids, points.shape[1])
    n_points, n_clusters = len(points), len(centroids)
    size = check_expert_count(n_points, n_clusters, "centroids")
    distances = squared_distances(points, centroids)  # (d_ff, E)
    slots = np.repeat(distances, size, axis=1)  # column e * size + j is slot j of centroid e
    rows, columns = linear_sum_assignment(slots)
    labels = np.empty(n_points, dtype=np.int64)
    labels[rows] = columns // size
    return labels


@dataclass(frozen=True)
class ExpertSplit:
    """The clustering of one FFN: ``labels[i]`` is neuron i's expert, ``permutation`` lists neurons by expert."""

    labels: np.ndarray
    permutation: np.ndarray
    n_experts: int
    objective: float  # mean squared distance of a normalised row to its centroid

    @property
    def expert_size(self) -> int:
        return len(self.labels) // self.n_experts


def expert_permutation(labels: np.ndarray, n_experts: int) -> np.ndarray:
    """Neuron indices sorted by expert (stable: within an expert, by index); a ValueError if sizes differ."""
    labels = np.asarray(labels)
    size = check_expert_count(len(labels), n_experts)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= n_experts:
        raise ValueError(
            f"labels={labels!r:.80} is not allowed; expected integer expert indices in [0, {n_experts})"
        )
    counts = np.bincount(labels, minlength=n_experts)
    if len(counts) != n_experts or (counts != size).any():
        raise ValueError(f"labels give experts of sizes {counts.tolist()}; expected {n_experts} experts of {size}")
    return np.argsort(labels, kind="stable")


def lloyd_codebook(points: np.ndarray, n_clusters: int, steps: int, seed: int) -> np.ndarray:
    """An unconstrained k-means codebook: random distinct points, then ``steps`` Lloyd steps (an emptied
    cluster keeps its previous centroid)."""
    check_points("points", points)
    check_int("n_clusters", n_clusters, low=1, high=len(points))
    check_int("steps", steps, low=0)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    centroids = points[rng.choice(len(points), n_clusters, replace=False)].copy()
    for _ in range(steps):
        labels = squared_distances(points, centroids).argmin(1)
        for e in np.unique(labels):
            centroids[e] = points[labels == e].mean(0)
    return centroids


def split_neurons(
    up_weight: Tensor, n_experts: int, *, iterations: int = 3, codebook_steps: int = 10, seed: int = 0
) -> ExpertSplit:
    """Balanced k-means of the FFN's normalised W1 rows ``up_weight`` (d_ff, d_model) into ``n_experts``:
    a Lloyd codebook of ``codebook_steps`` steps, then ``iterations`` balanced rounds."""
    if not isinstance(up_weight, Tensor) or up_weight.dim() != 2 or not up_weight.is_floating_point():
        shape = tuple(up_weight.shape) if isinstance(up_weight, Tensor) else type(up_weight).__name__
        raise ValueError(f"up_weight has shape {shape}; expected a floating tensor (d_ff, d_model)")
    if not torch.isfinite(up_weight).all():
        raise ValueError("up_weight contains NaN or infinity; expected finite FFN weights")
    d_ff = up_weight.shape[0]
    check_expert_count(d_ff, n_experts)
    check_int("iterations", iterations, low=1)
    check_int("codebook_steps", codebook_steps, low=0)
    check_seed(seed)
    points = normalised_rows(up_weight)
    if n_experts == 1:
        labels = np.zeros(d_ff, dtype=np.int64)
        centroids = points.mean(0, keepdims=True)
    elif n_experts == d_ff:
        labels = np.arange(d_ff)
        centroids = points
    else:
        centroids = lloyd_codebook(points, n_experts, codebook_steps, seed)
        for _ in range(iterations):
            labels = balanced_assignment(points, centroids)
            centroids = np.stack([points[labels == e].mean(0) for e in range(n_experts)])
    objective = float(((points - centroids[labels]) ** 2).sum(-1).mean())
    return ExpertSplit(labels, expert_permutation(labels, n_experts), n_experts, objective)


def as_index(permutation: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(permutation), dtype=torch.long)
