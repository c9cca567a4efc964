"""The first experiment of the course: a tiny byte-level language model, trained in about thirty seconds.

Notebook 00 uses it to show the course's moving parts on one small example: a budget that depends on the mode,
real data, a model with named parts, the shared training loop, a loss curve, and a widget that answers at once
because everything it shows was computed before the slider moved.

It keeps the course's experiment contract (``efflab.experiment``): :class:`ByteLMBudget`, :func:`run_experiment`,
:meth:`ByteLMResult.summary`, :func:`paper_rows` and :func:`findings`.

Two reference points put the loss in context. A model that knows nothing pays ``ln 256 = 5.55`` nats per byte
(uniform over byte values); one that only knows how often each byte occurs pays the unigram cross-entropy
(about 3 nats here: text and code use few distinct bytes). Anything lower has learned something about context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from efflab.data.text import ByteCorpus, load_corpus, unigram_loss
from efflab.experiment import Budget, committed_device, paper_table
from efflab.flops import count_parameters, gpt_training_flops_per_token
from efflab.models.gpt import GPTConfig, TinyLM, probabilities_from_logits
from efflab.runtime import Run
from efflab.train import TrainConfig, fit, language_model_loss
from efflab.validation import check_int, check_positive, check_seed

NAME = "00_start_here"
UNIFORM_LOSS = math.log(256)
TEMPERATURES = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 2.0)


@dataclass(frozen=True)
class ByteLMBudget(Budget):
    """Size of the model and length of the run; :meth:`for_run` picks quick or full from the mode."""

    d_model: int
    n_layer: int
    n_head: int
    block_size: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    eval_every: int
    eval_batches: int
    prompt: str = "def "
    temperatures: tuple[float, ...] = TEMPERATURES
    sample_length: int = 160

    def __post_init__(self):
        check_int("d_model", self.d_model, low=1)
        check_int("n_layer", self.n_layer, low=1)
        check_int("n_head", self.n_head, low=1)
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model={self.d_model!r} is not allowed; expected a multiple of n_head={self.n_head}"
            )
        check_int("block_size", self.block_size, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("steps", self.steps, low=1)
        check_positive("lr", self.lr)
        check_int("warmup_steps", self.warmup_steps, low=0, high=self.steps)
        check_int("eval_every", self.eval_every, low=1)
        check_int("eval_batches", self.eval_batches, low=1)
        if not isinstance(self.prompt, str) or not self.prompt:
            raise ValueError(f"prompt={self.prompt!r} is not allowed; expected a non-empty string")
        if not isinstance(self.temperatures, tuple) or not self.temperatures:
            raise ValueError(f"temperatures={self.temperatures!r} is not allowed; expected a non-empty tuple")
        for temperature in self.temperatures:
            check_positive("temperatures", temperature)
        check_int("sample_length", self.sample_length, low=1)

    @classmethod
    def quick(cls) -> ByteLMBudget:
        """About 25 s of training on two CPU cores."""
        model = {"d_model": 128, "n_layer": 4, "n_head": 4, "block_size": 128}
        return cls(**model, batch_size=32, steps=160, lr=3e-3, warmup_steps=10, eval_every=40, eval_batches=4)

    @classmethod
    def full(cls) -> ByteLMBudget:
        """About a minute on one large GPU."""
        model = {"d_model": 384, "n_layer": 6, "n_head": 6, "block_size": 256}
        return cls(**model, batch_size=64, steps=2000, lr=1e-3, warmup_steps=100, eval_every=200, eval_batches=16)

    def model_config(self) -> GPTConfig:
        return GPTConfig(
            block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            eval_every=self.eval_every,
            weight_decay=0.1,
        )


def train_byte_lm(run: Run, corpus: ByteCorpus, budget: ByteLMBudget) -> tuple[TinyLM, pd.DataFrame]:
    """Train a fresh TinyLM on random windows of the corpus; evaluate on fixed validation windows."""
    torch.manual_seed(run.seed)
    model = TinyLM(budget.model_config()).to(run.device)
    generator = torch.Generator().manual_seed(run.seed)

    def next_batch():
        return corpus.get_batch("train", budget.batch_size, budget.block_size, generator=generator)

    def evaluate(trained):
        return language_model_loss(
            trained, corpus, batches=budget.eval_batches, batch_size=budget.batch_size, seed=run.seed
        )

    history = fit(model, next_batch, budget.train_config(), evaluate=evaluate, description="byte LM")
    return model, history


@dataclass(frozen=True)
class TemperatureTable:
    """Precomputed answers for the temperature slider: next-byte distributions and one sample per temperature."""

    prompt: str
    temperatures: tuple[float, ...]
    probabilities: torch.Tensor  # (len(temperatures), 256)
    samples: tuple[str, ...]

    def at(self, temperature: float) -> tuple[torch.Tensor, str]:
        if temperature not in self.temperatures:
            raise ValueError(
                f"temperature={temperature!r} was not precomputed; expected one of {self.temperatures}"
            )
        index = self.temperatures.index(temperature)
        return self.probabilities[index], self.samples[index]


def temperature_table(
    model: TinyLM,
    corpus: ByteCorpus,
    prompt: str,
    temperatures: tuple[float, ...],
    *,
    sample_length: int = 160,
    seed: int = 0,
) -> TemperatureTable:
    """Next-byte distribution after ``prompt`` and a continuation of it, for every temperature.

    The prompt's logits are computed once; each distribution is a cheap function of them. The samples share one
    seed, so the temperature is the only thing that differs between them.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt={prompt!r} is not allowed; expected at least one character")
    check_int("sample_length", sample_length, low=1)
    if not isinstance(temperatures, tuple | list) or not temperatures:
        raise ValueError(f"temperatures={temperatures!r} is not allowed; expected a non-empty tuple")
    for temperature in temperatures:
        check_positive("temperatures", temperature)
    check_seed(seed)
    device = next(model.parameters()).device
    context = corpus.encode(prompt)[None, -model.config.block_size :].to(device)
    model.eval()
    with torch.no_grad():
        logits = model(context)[0, -1].cpu()
    distributions = torch.stack([probabilities_from_logits(logits, t) for t in temperatures])
    samples = []
    for temperature in temperatures:
        generator = torch.Generator(device=device).manual_seed(seed)
        tokens = model.generate(context, sample_length, temperature=temperature, generator=generator)
        samples.append(corpus.decode(tokens[0, context.shape[1] :].cpu()))
    return TemperatureTable(prompt, tuple(temperatures), distributions, tuple(samples))


@dataclass
class ByteLMResult:
    """What notebook 00 shows: the corpus, the trained model, its history, the reference losses and the
    precomputed temperature table."""

    budget: ByteLMBudget
    corpus: ByteCorpus
    model: TinyLM
    history: pd.DataFrame
    unigram_loss: float
    table: TemperatureTable

    def summary(self) -> dict:
        final = self.history.dropna(subset=["val_loss"]).iloc[-1]
        return {
            "final_train_loss": float(self.history.loss.iloc[-1]),
            "final_val_loss": float(final.val_loss),
            "unigram_val_loss": float(self.unigram_loss),
            "uniform_loss": UNIFORM_LOSS,
            "parameters": count_parameters(self.model),
            "training_flops_per_token": float(gpt_training_flops_per_token(self.model.config)),
            "train_seconds": float(self.history.seconds.iloc[-1]),
            "steps": self.budget.steps,
            "train_bytes": len(self.corpus.train),
            "val_bytes": len(self.corpus.val),
            "peak_probability_coldest": float(self.table.probabilities[0].max()),
            "peak_probability_hottest": float(self.table.probabilities[-1].max()),
        }


def run_experiment(run: Run, budget: ByteLMBudget, corpus: ByteCorpus | None = None) -> ByteLMResult:
    """Load the byte corpus (cached), train the model, and precompute the temperature table."""
    if not isinstance(budget, ByteLMBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a ByteLMBudget")
    corpus = load_corpus() if corpus is None else corpus
    model, history = train_byte_lm(run, corpus, budget)
    table = temperature_table(
        model, corpus, budget.prompt, budget.temperatures, sample_length=budget.sample_length, seed=run.seed
    )
    return ByteLMResult(budget, corpus, model, history, unigram_loss(corpus), table)


def paper_rows(summary: dict, committed: dict | None) -> pd.DataFrame:
    """This notebook reproduces no paper: its "paper" column holds the two reference points, exact by hand."""
    full = (committed or {}).get("final_val_loss")
    rows = [
        {
            "quantity": "validation loss vs uniform (nats/byte)",
            "paper": round(UNIFORM_LOSS, 3),
            "this_run": round(summary["final_val_loss"], 3),
            "full_run": None if full is None else round(full, 3),
            "note": "uniform: ln 256, exact",
        },
        {
            "quantity": "validation loss vs unigram (nats/byte)",
            "paper": round(summary["unigram_val_loss"], 3),
            "this_run": round(summary["final_val_loss"], 3),
            "full_run": None if full is None else round(full, 3),
            "note": "unigram: byte counts of the training split",
        },
    ]
    return paper_table(rows, full_run_on=committed_device(NAME))


def findings(summary: dict) -> str:
    """Where this run's validation loss lies against the two reference points, in sentences."""
    loss, unigram = summary["final_val_loss"], summary["unigram_val_loss"]
    if loss < unigram:
        verdict = (
            f"**The model uses context.** Its validation loss, {loss:.3f} nats per byte, is "
            f"{unigram - loss:.3f} below the unigram model's {unigram:.3f}: it reads the bytes before."
        )
    elif loss < UNIFORM_LOSS:
        verdict = (
            f"**The model has learned byte frequencies, not yet context.** Its validation loss, {loss:.3f}, is "
            f"below uniform ({UNIFORM_LOSS:.3f}) but not below the unigram model's {unigram:.3f}: train longer."
        )
    else:
        verdict = (
            f"**The model has not learned.** Its validation loss, {loss:.3f}, is no better than guessing "
            f"uniformly ({UNIFORM_LOSS:.3f}): something is wrong with the run."
        )
    cold, hot = summary["peak_probability_coldest"], summary["peak_probability_hottest"]
    return (
        f"{verdict}\n\nIn {summary['train_seconds']:.0f} s of training ({summary['steps']} steps, "
        f"{summary['parameters']:,} parameters), the most likely next byte after the prompt gets probability "
        f"{cold:.2f} at the coldest temperature and {hot:.2f} at the hottest."
    )
