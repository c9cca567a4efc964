"""Learning-rate transfer: sweep the LR at several widths (or expert counts, or granularities), find each optimum.

The practical promise of muP is *tune small, train wide*: if the loss-vs-LR curves of all widths have their minimum
at the same η*, the LR found on the base model is the LR of the wide model. Under SP the minimum drifts (towards
smaller η as width grows) and the wide model trained at the small model's η* is worse than it could be, or
diverges.

The paper (arXiv 2508.09752, abstract and Figure 1) reports this for MoE transformers: under SP the optimum moves
with width; under simpleP and muP it stays. It also varies the number of experts (the optimum stays, by a
third-party summary of the paper) and the granularity (the optimum *shifts*: width is the only axis muP speaks
about, and granularity changes the expert matrices' shape at a fixed width).

One point of a sweep is :class:`SweepTask` (a model, an LR, a seed), trained by :func:`train_for_sweep` with the
course's loop (Adam, warmup then cosine) and scored by the validation loss on fixed windows. A run whose loss
overflows is *diverged* and scores ``inf``. :func:`optima` takes the seed-mean loss of each LR and returns the
argmin per curve; :func:`optimum_shift` says how far it moved, in grid steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from efflab.data.text import load_corpus
from efflab.maximal_update.model import ModelFamily
from efflab.maximal_update.parameterization import (
    Multipliers,
    check_family,
    check_parameterization,
    checked_multipliers,
    parameterize,
)
from efflab.runtime import seed_everything
from efflab.train import TrainConfig, fit, language_model_loss
from efflab.validation import check_int, check_positive, check_seed


@dataclass(frozen=True)
class SweepTask:
    """One training run of a sweep (picklable, for ``efflab.parallel.run_all``)."""

    family: ModelFamily
    width: int
    parameterization: str
    lr: float
    seed: int
    steps: int
    batch_size: int
    block_size: int
    multipliers: Multipliers = field(default_factory=Multipliers)
    warmup_steps: int = 0
    eval_batches: int = 4
    max_bytes: int = 400_000
    device: str = "cpu"
    # Which curve it belongs to (e.g. "width 64", "E=8"); not part of its identity, so a point two sweeps share
    # (muP at the fixed width with the family's E and G) is trained once.
    label: str = field(default="", compare=False)

    def __post_init__(self):
        check_family(self.family)
        self.family.check_width(self.width)
        check_parameterization(self.parameterization)
        check_positive("lr", self.lr)
        check_seed(self.seed)
        check_int("steps", self.steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("block_size", self.block_size, low=1, high=self.family.block_size)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps)
        check_int("eval_batches", self.eval_batches, low=1)
        checked_multipliers(self.multipliers)
        check_int("max_bytes", self.max_bytes, low=1)


def train_for_sweep(task: SweepTask) -> dict:
    """Train one sweep point; return its final validation loss (``inf`` if it diverged) and its loss curve."""
    seed_everything(task.seed)
    corpus = load_corpus(task.max_bytes)
    built = parameterize(task.family, task.width, task.parameterization, task.multipliers, seed=task.seed)
    generator = torch.Generator().manual_seed(task.seed)

    def next_batch():
        return corpus.get_batch("train", task.batch_size, task.block_size, generator=generator)

    def evaluate(model):
        # The same fixed windows for every run (seed 0), so losses are comparable across the whole grid.
        return language_model_loss(
            model, corpus, split="val", batches=task.eval_batches, batch_size=16, block_size=task.block_size
        )

    config = TrainConfig(steps=task.steps, lr=task.lr, warmup_steps=task.warmup_steps, grad_clip=None)
    try:
        history = fit(
            built.model,
            next_batch,
            config,
            param_groups=built.parameter_groups(),
            evaluate=evaluate,
            device=task.device,
            progress=False,
        )
    except FloatingPointError:
        return {"val_loss": math.inf, "diverged": True, "train_loss": []}
    loss = float(history["val_loss"].dropna().iloc[-1])
    diverged = not math.isfinite(loss)
    return {
        "val_loss": math.inf if diverged else loss,
        "diverged": diverged,
        "train_loss": [float(v) for v in history["loss"]],
    }


def sweep_table(tasks: list[SweepTask], results: list[dict], *, curve: str) -> pd.DataFrame:
    """Long table of a sweep: curve (the value of ``curve``: width, expansion or granularity), lr, seed, loss."""
    if curve not in ("width", "expansion", "granularity"):
        raise ValueError(f"curve={curve!r} is not allowed; expected 'width', 'expansion' or 'granularity'")
    rows = []
    for task, result in zip(tasks, results, strict=True):
        value = task.width if curve == "width" else getattr(task.family, curve)
        rows.append(
            dict(
                parameterization=task.parameterization,
                curve=int(value),
                lr=task.lr,
                log2_lr=math.log2(task.lr),
                seed=task.seed,
                val_loss=result["val_loss"],
                diverged=bool(result["diverged"]),
            )
        )
    return pd.DataFrame(rows)


def mean_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean, min and max loss per (parameterization, curve, lr); a diverged seed makes the mean inf."""
    grouped = table.groupby(["parameterization", "curve", "lr"], sort=True)["val_loss"]
    out = grouped.agg(["mean", "min", "max", "count"]).reset_index()
    out["log2_lr"] = np.log2(out["lr"])
    return out


def optima(table: pd.DataFrame) -> pd.DataFrame:
    """The argmin LR of every (parameterization, curve) on the seed-mean losses, and of every seed alone.

    Columns: parameterization, curve, best_lr, best_index (position in the LR grid), best_loss, seed_indices
    (each seed's own argmin, for the spread). A curve whose every LR diverged has best_index -1.
    """
    grid = sorted(table["lr"].unique())
    rows = []
    means = mean_curves(table)
    for (parameterization, curve), part in means.groupby(["parameterization", "curve"], sort=True):
        part = part.sort_values("lr")
        seeds = table[(table["parameterization"] == parameterization) & (table["curve"] == curve)]
        seed_indices = []
        for _, one in seeds.groupby("seed", sort=True):
            one = one.sort_values("lr")
            finite = np.isfinite(one["val_loss"].to_numpy())
            seed_indices.append(
                int(grid.index(one["lr"].to_numpy()[np.argmin(np.where(finite, one["val_loss"], np.inf))]))
                if finite.any()
                else -1
            )
        losses = part["mean"].to_numpy()
        if not np.isfinite(losses).any():
            rows.append(
                dict(
                    parameterization=parameterization,
                    curve=int(curve),
                    best_lr=math.nan,
                    best_index=-1,
                    best_loss=math.inf,
                    seed_indices=seed_indices,
                )
            )
            continue
        best = int(np.argmin(np.where(np.isfinite(losses), losses, np.inf)))
        best_lr = float(part["lr"].to_numpy()[best])
        rows.append(
            dict(
                parameterization=parameterization,
                curve=int(curve),
                best_lr=best_lr,
                best_index=grid.index(best_lr),
                best_loss=float(losses[best]),
                seed_indices=seed_indices,
            )
        )
    return pd.DataFrame(rows)


def optimum_shift(best_indices: list[int]) -> dict:
    """How the argmin moved along a sweep's curves (in their order): from first to last and its full range, in
    grid steps. Curves whose every LR diverged (index -1) are left out."""
    valid = [int(i) for i in best_indices if i >= 0]
    if not valid:
        return {"first_to_last": None, "range": None, "monotone_down": None}
    steps = np.diff(valid)
    return {
        "first_to_last": valid[-1] - valid[0],
        "range": max(valid) - min(valid),
        "monotone_down": bool(len(steps) > 0 and np.all(steps <= 0) and np.any(steps < 0)),
    }
