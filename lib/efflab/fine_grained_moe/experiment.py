"""The experiment of notebook 05: byte-level language models, dense and MoE at several granularities and sizes.

The fine-grained scaling law (:mod:`efflab.fine_grained_moe.law`) was fitted on more than a hundred GPU runs
of 3M to 85M-parameter models. Here we run its experiment in miniature: TinyLMs of a few widths, each once with the
dense FFN and once with an MoE at each granularity G (the same expansion rate E, so the same total parameters,
and the same active parameters at every G), all on the same batches. Validation loss is measured every few
steps, so each run gives several (N, D, loss) points, and the law's form is fitted to them.

Choices, and why:

* **Expert-choice routing** with the output LayerNorm, as in the paper. Sequences compete at each
  position, so no token's routing depends on later tokens of its own sequence.
* **Constant learning rate** after a short warmup, so that an intermediate loss is a fair stand-in for a run
  that stopped there (a cosine schedule would make the early points look worse than short runs really are).
  The paper fits final losses of separate runs with their own schedules; we cannot afford separate runs.
* **N** is the paper's: all non-embedding parameters of the blocks, experts included, router and norms not
  (:func:`law_parameters`); the head is left out, as the paper leaves out the unembedding.
* **One CPU thread** in quick mode: these models are so small that a second thread buys little, and on a shared
  machine waiting for it can make every small matrix product ten times slower.

What is noisy at this scale (MoE vs dense, one G vs another) is repeated over seeds and shown with its spread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import torch

from efflab.data.text import ByteCorpus
from efflab.fine_grained_moe.law import CHINCHILLA_FORM, FINE_GRAINED_FORM
from efflab.law_fitting import LawFit, fit_law
from efflab.lm_grid import DENSE, GridResults, RunSpec, constant_learning_rate, train_specs
from efflab.models.gpt import GPTConfig
from efflab.models.moe import MoEConfig, MoEFeedForward
from efflab.runtime import Run, Timer, torch_threads
from efflab.train import TrainConfig
from efflab.validation import check_choice, check_int


@dataclass(frozen=True)
class GranularityBudget:
    """The grid and the length of every run; :meth:`for_run` picks quick or full from the mode.

    Every width is trained dense and as an MoE at every granularity (seed ``run.seed``). At ``spread_width``,
    the configurations in ``spread_granularities`` (0 = dense) are repeated with ``n_seeds`` seeds, and one
    token-choice MoE at the largest granularity is added to compare how the two routings balance their load.
    """

    widths: tuple[int, ...]
    granularities: tuple[int, ...]
    expansion: int
    n_layer: int
    n_head: int
    block_size: int
    batch_size: int
    steps: int
    eval_every: int
    eval_batches: int
    lr: float
    warmup_steps: int
    spread_width: int
    spread_granularities: tuple[int, ...]
    n_seeds: int
    fit_from_step: int
    threads: int | None = None
    routing: str = "expert_choice"

    def __post_init__(self):
        for width in self.widths:
            check_int("widths", width, low=self.n_head)
        for granularity in self.granularities:
            check_int("granularities", granularity, low=1)
        if self.spread_width not in self.widths:
            raise ValueError(f"spread_width={self.spread_width!r} is not allowed; expected one of {self.widths}")
        for granularity in self.spread_granularities:
            if granularity != DENSE and granularity not in self.granularities:
                raise ValueError(
                    f"spread_granularities contains {granularity!r}; expected 0 (dense) or one of "
                    f"{self.granularities}"
                )
        check_int("steps", self.steps, low=1)
        check_int("eval_every", self.eval_every, low=1, high=self.steps)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps)
        check_int("n_seeds", self.n_seeds, low=1)
        check_int("fit_from_step", self.fit_from_step, low=0, high=self.steps)
        check_choice("routing", self.routing, ("token_choice", "expert_choice"))

    @classmethod
    def quick(cls) -> GranularityBudget:
        """About 70 s of training on one uncontended CPU core (a shared one may take twice as long)."""
        return cls(
            widths=(32, 48, 64), granularities=(1, 2, 4), expansion=8, n_layer=2, n_head=2,
            block_size=64, batch_size=32, steps=100, eval_every=20, eval_batches=4, lr=4e-3, warmup_steps=10,
            spread_width=48, spread_granularities=(DENSE, 1, 4), n_seeds=3, fit_from_step=40, threads=1,
        )  # fmt: skip

    @classmethod
    def full(cls) -> GranularityBudget:
        """A larger grid for one GPU: wider and deeper models, G up to 8, longer runs (sized by estimate: a
        few milliseconds per step for models this small, about a minute in all)."""
        return cls(
            widths=(64, 128, 192), granularities=(1, 2, 4, 8), expansion=8, n_layer=4, n_head=4,
            block_size=128, batch_size=64, steps=300, eval_every=30, eval_batches=8, lr=2e-3, warmup_steps=30,
            spread_width=128, spread_granularities=(DENSE, 1, 8), n_seeds=3, fit_from_step=90,
        )  # fmt: skip

    @classmethod
    def for_run(cls, run: Run) -> GranularityBudget:
        return cls.quick() if run.quick else cls.full()

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def model_config(self, width: int) -> GPTConfig:
        return GPTConfig(block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, d_model=width)

    def train_config(self) -> TrainConfig:
        return constant_learning_rate(self.steps, self.lr, self.warmup_steps, self.eval_every)

    def specs(self, seed: int = 0) -> list[RunSpec]:
        """Every run of the experiment, in the order they are trained."""
        specs = [
            RunSpec(width, granularity, seed, self.routing)
            for width in self.widths
            for granularity in (DENSE, *self.granularities)
        ]
        specs += [
            RunSpec(self.spread_width, granularity, seed + offset, self.routing)
            for offset in range(1, self.n_seeds)
            for granularity in self.spread_granularities
        ]
        other = "token_choice" if self.routing == "expert_choice" else "expert_choice"
        specs.append(RunSpec(self.spread_width, max(self.granularities), seed, other))
        return specs


def execution_path_check(
    config: MoEConfig, batch: tuple[int, int] = (8, 32), *, seed: int = 0, threads: int | None = 1
) -> pd.DataFrame:
    """Run one layer's weights through every execution path on the same batch: the largest difference from the
    loop (the reference) in the output and in every gradient, and the time of one forward and backward pass
    (after a warm-up pass).

    The time is a single measurement on whatever else the machine is doing: read it as an order of magnitude;
    ``benchmarks/moe_throughput.py`` measures properly.
    """
    torch.manual_seed(seed)
    layer = MoEFeedForward(config)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, config.d_model, generator=generator)
    upstream = torch.randn(*batch, config.d_model, generator=generator)
    measured = {}
    with torch_threads(threads):
        for path in ("loop", "padded", "grouped"):
            measured[path] = _one_path(config, layer, path, x, upstream)
    reference_out, reference_gradients, _ = measured["loop"]
    rows = []
    for path, (out, gradients, seconds) in measured.items():
        rows.append(
            {
                "path": path,
                "max |output - loop|": float((out - reference_out).abs().max()),
                "max |gradient - loop|": max(
                    float((g - r).abs().max()) for g, r in zip(gradients, reference_gradients, strict=True)
                ),
                "milliseconds (one step)": 1000 * seconds,
            }
        )
    return pd.DataFrame(rows).set_index("path")


def _one_path(config, layer, path, x, upstream):
    copy = MoEFeedForward(replace(config, implementation=path, top_k=config.top_k))
    copy.load_state_dict(layer.state_dict())
    for _pass in ("warm-up", "timed"):  # the first pass pays for one-off work (allocations, kernel checks)
        copy.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        with Timer() as timer:
            out = copy(inputs)
            ((out * upstream).sum() + copy.aux_loss).backward()
    gradients = [inputs.grad] + [p.grad for p in copy.parameters()]
    return out.detach(), gradients, timer.seconds


def run_granularity_experiment(
    run: Run, corpus: ByteCorpus, budget: GranularityBudget, *, progress: bool | None = None
) -> GridResults:
    """Train every run of ``budget.specs(run.seed)`` with a progress bar over runs, and collect the results."""
    return train_specs(
        run, corpus, budget, budget.specs(run.seed), progress=progress, description="granularity grid"
    )


@dataclass(frozen=True)
class ExperimentFits:
    """The law's form fitted to this run's losses: MoE (fine-grained form) and dense (Chinchilla form)."""

    moe: LawFit
    dense: LawFit
    n_moe_points: int
    n_dense_points: int


def fit_laws(results: GridResults, *, n_starts: int = 12, seed: int = 0) -> ExperimentFits:
    """Fit the fine-grained form to the MoE runs and Chinchilla's to the dense runs (evaluations from
    ``fit_from_step`` on; the first steps are too far from the law's regime)."""
    curves = results.curves[results.curves.step >= results.budget.fit_from_step]
    moe = curves[curves.routing == results.budget.routing]
    dense = curves[curves.routing == "dense"]
    moe_fit = fit_law(
        FINE_GRAINED_FORM,
        {"N": moe.params, "D": moe.tokens, "G": moe.granularity},
        moe.val_loss,
        n_starts=n_starts,
        seed=seed,
    )
    dense_fit = fit_law(
        CHINCHILLA_FORM, {"N": dense.params, "D": dense.tokens}, dense.val_loss, n_starts=n_starts, seed=seed
    )
    return ExperimentFits(moe_fit, dense_fit, len(moe), len(dense))
