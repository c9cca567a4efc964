"""Wall-clock measurements that survive a shared, noisy machine.

Two habits make a timing on a laptop or a shared runner mean something:

* **Interleave, then take medians.** The things compared take turns within every round (A, B, C, A, B, C, ...),
  so a burst of load from another process slows all of them alike; the median over rounds ignores the bursts
  that remain. :func:`interleaved_times` does this, waiting for a GPU before reading the clock (CUDA runs
  asynchronously, and without the wait one would time the kernel launch only).
* **Divide by a fixed workload.** Machines differ by 2x and more, so a time budget in seconds means little.
  :func:`cpu_unit_seconds` times one *CPU unit*: 60 training steps of a 4-layer, width-128 causal Transformer on
  random bytes (batch 16 x 128, two threads, the best of three thirds). A notebook's time divided by the unit
  measured beside it is comparable across machines; that is how the course's speed budgets are stated.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from efflab.runtime import torch_threads
from efflab.validation import check_int


def interleaved_times(
    works: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 1, cuda: bool = False
) -> dict[str, list[float]]:
    """Seconds of each work per round, the works taking turns in every round, after ``warmup`` untimed rounds."""
    check_int("repeats", repeats, low=1)
    check_int("warmup", warmup, low=0)
    if not isinstance(works, Mapping) or not works or not all(callable(work) for work in works.values()):
        raise ValueError(f"works={works!r:.80} is not allowed; expected a non-empty mapping of names to callables")
    if cuda and not torch.cuda.is_available():
        raise ValueError("cuda=True is not allowed here: torch sees no CUDA GPU to wait for")
    wait = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        for work in works.values():
            work()
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            wait()
            start = time.perf_counter()
            work()
            wait()
            times[name].append(time.perf_counter() - start)
    return times


def median_times(works: Mapping[str, Callable[[], object]], **options) -> dict[str, float]:
    """The median of :func:`interleaved_times` for each work."""
    return {name: statistics.median(values) for name, values in interleaved_times(works, **options).items()}


def cpu_unit_seconds(steps: int = 60) -> float:
    """Seconds of one CPU unit on this machine (see the module docstring); about 7 s on a fast 2-core machine.

    The unit is 60 steps; fewer (a multiple of 3) time that fraction of it, which is how its test stays short.
    """
    check_int("steps", steps, low=3)
    if steps % 3:
        raise ValueError(f"steps={steps!r} is not allowed; expected a multiple of 3 (the best of three thirds)")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    width, layers, vocabulary, sequence, batch = 128, 4, 256, 128, 16
    block = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
    embed = nn.Embedding(vocabulary, width)
    encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
    head = nn.Linear(width, vocabulary)
    parameters = [*embed.parameters(), *encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, 1e-3)
    mask = nn.Transformer.generate_square_subsequent_mask(sequence)
    tokens = torch.randint(0, vocabulary, (batch, sequence + 1))
    best = float("inf")
    with torch_threads(2):
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(steps // 3):
                hidden = encoder(embed(tokens[:, :-1]), mask=mask, is_causal=True)
                loss = nn.functional.cross_entropy(head(hidden).flatten(0, 1), tokens[:, 1:].flatten())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            best = min(best, time.perf_counter() - start)
    torch.random.set_rng_state(generator_state)
    return best * 3
