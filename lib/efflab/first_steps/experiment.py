"""The first experiment of the course: a tiny byte-level language model, trained in about thirty seconds.

Notebook 00 uses it to show the course's moving parts on one small example: a budget that depends on the mode,
real data, a model with named parts, the shared training loop, a loss curve, and a widget that answers at once
because everything it shows was computed before the slider moved.

Two reference points put the loss in context. A model that knows nothing pays ``ln 256 = 5.55`` nats per byte
(uniform over byte values); one that only knows how often each byte occurs pays the unigram cross-entropy
(about 3 nats here: text and code use few distinct bytes). Anything lower has learned something about context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from efflab.data.text import ByteCorpus
from efflab.models.gpt import GPTConfig, TinyLM, probabilities_from_logits
from efflab.runtime import Run
from efflab.train import TrainConfig, fit, language_model_loss
from efflab.validation import check_int, check_positive

UNIFORM_LOSS = math.log(256)


@dataclass(frozen=True)
class ByteLMBudget:
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

    @classmethod
    def quick(cls) -> ByteLMBudget:
        """About 25 s of training on two CPU cores."""
        return cls(
            d_model=128, n_layer=4, n_head=4, block_size=128, batch_size=32,
            steps=160, lr=3e-3, warmup_steps=10, eval_every=40, eval_batches=4,
        )  # fmt: skip

    @classmethod
    def full(cls) -> ByteLMBudget:
        """About a minute on one large GPU."""
        return cls(
            d_model=384, n_layer=6, n_head=6, block_size=256, batch_size=64,
            steps=2000, lr=1e-3, warmup_steps=100, eval_every=200, eval_batches=16,
        )  # fmt: skip

    @classmethod
    def for_run(cls, run: Run) -> ByteLMBudget:
        return cls.quick() if run.quick else cls.full()

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
    if not prompt:
        raise ValueError("prompt='' is not allowed; expected at least one character")
    check_int("sample_length", sample_length, low=1)
    for temperature in temperatures:
        check_positive("temperature", temperature)
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
