"""The experiment of notebook 06: byte-level language models, dense and with a few expert counts, at the same
active parameters, and the joint law's form fitted to their losses.

The joint law (:mod:`efflab.joint_moe.law`) was fitted on more than 280 GPU runs, 79M to 2.7B active
parameters, E from 1 to 32, up to 80B tokens. Here is the same experiment in miniature: TinyLMs of a few widths,
each trained dense and as an MoE with E experts for E in a small grid. Every expert is as wide as the dense FFN
(granularity 1) and each token goes to one of them, so at each width every model uses the same parameters per
token and the MoE holds E times the FFN parameters. All runs at a seed see the same batches. Validation loss is
measured every few steps, so each run gives several (N, D, E, loss) points.

Choices, and why:

* **Token-choice top-1 routing** (Switch), with the load-balancing loss (0.01) and router z-loss (0.001) of the
  paper. The paper trains with capacity factor 1 and evaluates without dropping tokens; we never drop tokens,
  which on a CPU is simpler and exactly dropless.
* **The course's MoE layer** (:mod:`efflab.models.moe`): GELU experts of width 4 d_model, like the dense FFN
  they replace. The paper's experts are SwiGLU of width 3 d_model; what matters for the comparison is that an
  expert and the dense FFN cost the same per token.
* **N is the active non-embedding count** (attention and one FFN per block). The paper counts embeddings, which
  is harmless with a 50k vocabulary and billion-parameter models; with 256 byte values and a few thousand
  parameters per block, the embedding and head would be a third of these tiny models and blur the size axis.
* **Training** reuses notebook 05's runner (:func:`efflab.lm_grid.train_specs`): a constant learning
  rate after a short warmup, so an intermediate evaluation stands in for a shorter run, and one CPU thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from efflab.data.text import ByteCorpus
from efflab.joint_moe.law import JOINT, JointLaw, joint_form
from efflab.law_fitting import LawFit, fit_law
from efflab.lm_grid import DENSE, GridResults, RunSpec, constant_learning_rate, train_specs
from efflab.models.gpt import GPTConfig
from efflab.runtime import Run
from efflab.train import TrainConfig
from efflab.validation import check_int

ROUTING = "token_choice"


@dataclass(frozen=True)
class ExpertCountBudget:
    """The grid and the length of every run; :meth:`for_run` picks quick or full from the mode.

    Every width is trained dense (E = 1) and with each of ``expert_counts`` experts (seed ``run.seed``). At
    ``spread_width`` the configurations in ``spread_experts`` (1 = dense) are repeated over ``n_seeds`` seeds.
    """

    widths: tuple[int, ...]
    expert_counts: tuple[int, ...]
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
    spread_experts: tuple[int, ...]
    n_seeds: int
    fit_from_step: int
    threads: int | None = None

    def __post_init__(self):
        for width in self.widths:
            check_int("widths", width, low=self.n_head)
        if not self.expert_counts:
            raise ValueError("expert_counts=() is not allowed; expected at least one number of experts >= 2")
        for experts in self.expert_counts:
            check_int("expert_counts", experts, low=2)
        if self.spread_width not in self.widths:
            raise ValueError(f"spread_width={self.spread_width!r} is not allowed; expected one of {self.widths}")
        for experts in self.spread_experts:
            if experts != 1 and experts not in self.expert_counts:
                raise ValueError(
                    f"spread_experts contains {experts!r}; expected 1 (dense) or one of {self.expert_counts}"
                )
        check_int("steps", self.steps, low=1)
        check_int("eval_every", self.eval_every, low=1, high=self.steps)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps)
        check_int("n_seeds", self.n_seeds, low=1)
        check_int("fit_from_step", self.fit_from_step, low=0, high=self.steps)

    @classmethod
    def quick(cls) -> ExpertCountBudget:
        """About a minute of training on one uncontended CPU core (a shared one may take half as long again).

        Widths span a factor of four (sixteen in active parameters), so that model size shows through the
        noise of such short runs. In trials, 2e-3 ordered the widths more clearly than 4e-3 and spread the seeds
        less, though the narrowest model would rather have the larger rate.
        """
        return cls(
            widths=(16, 32, 64), expert_counts=(2, 4, 8), n_layer=2, n_head=2, block_size=64, batch_size=32,
            steps=150, eval_every=25, eval_batches=4, lr=2e-3, warmup_steps=10, spread_width=32,
            spread_experts=(1, 8), n_seeds=3, fit_from_step=75, threads=1,
        )  # fmt: skip

    @classmethod
    def full(cls) -> ExpertCountBudget:
        """A larger grid for one GPU: wider and deeper models, up to 16 experts, longer runs (sized by estimate:
        a few milliseconds per step for models this small, about a minute and a half in all)."""
        return cls(
            widths=(64, 128, 192), expert_counts=(2, 4, 8, 16), n_layer=4, n_head=4, block_size=128,
            batch_size=64, steps=300, eval_every=30, eval_batches=8, lr=1e-3, warmup_steps=30, spread_width=128,
            spread_experts=(1, 8), n_seeds=3, fit_from_step=120,
        )  # fmt: skip

    @classmethod
    def for_run(cls, run: Run) -> ExpertCountBudget:
        return cls.quick() if run.quick else cls.full()

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def model_config(self, width: int) -> GPTConfig:
        return GPTConfig(block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, d_model=width)

    def train_config(self) -> TrainConfig:
        return constant_learning_rate(self.steps, self.lr, self.warmup_steps, self.eval_every)

    def specs(self, seed: int = 0) -> list[RunSpec]:
        """Every run, in training order: each width dense then with each expert count, then the extra seeds."""

        def spec(width: int, experts: int, run_seed: int) -> RunSpec:
            if experts == 1:
                return RunSpec(width, DENSE, run_seed)
            return RunSpec(width, 1, run_seed, ROUTING, expansion=experts)

        specs = [spec(width, experts, seed) for width in self.widths for experts in (1, *self.expert_counts)]
        specs += [
            spec(self.spread_width, experts, seed + offset)
            for offset in range(1, self.n_seeds)
            for experts in self.spread_experts
        ]
        return specs


def run_expert_count_experiment(
    run: Run, corpus: ByteCorpus, budget: ExpertCountBudget, *, progress: bool | None = None
) -> GridResults:
    """Train every run of ``budget.specs(run.seed)``; each row carries its number of experts in ``expansion``
    (1 for dense), its active non-embedding parameters in ``active_params`` and all of them in ``params``."""
    return train_specs(run, corpus, budget, budget.specs(run.seed), progress=progress, description="expert grid")


@dataclass(frozen=True)
class JointFit:
    """The joint form fitted to this run's losses, and the data it saw."""

    fit: LawFit
    n_points: int
    expert_counts: tuple[int, ...]

    @property
    def law(self) -> JointLaw:
        return self.fit.law


def fit_joint_law(
    results: GridResults,
    *,
    n_starts: int = 12,
    seed: int = 0,
    e_start: float = JOINT.e_start,
    e_max: float = JOINT.e_max,
) -> JointFit:
    """Fit the joint form (eq. 6) to every evaluation from ``fit_from_step`` on: N = active non-embedding
    parameters, D = tokens seen, E = number of experts (1 = dense).

    E_start and E_max stay at the paper's values: three or four expert counts cannot pin down where the benefit
    of more experts saturates.
    """
    points = law_points(results)
    fit = fit_law(joint_form(e_start, e_max), points, points["loss"], n_starts=n_starts, seed=seed)
    return JointFit(fit, len(points["loss"]), tuple(int(e) for e in np.unique(points["E"])))


def law_points(results: GridResults) -> dict[str, np.ndarray]:
    """The evaluations the law is fitted to (from ``fit_from_step`` on) as arrays: N (active non-embedding
    parameters), D (tokens seen), E (experts, 1 = dense) and the validation loss."""
    curves = results.curves[results.curves.step >= results.budget.fit_from_step]
    return {
        "N": curves.active_params.to_numpy(float),
        "D": curves.tokens.to_numpy(float),
        "E": curves.expansion.to_numpy(float),
        "loss": curves.val_loss.to_numpy(float),
    }
