"""Independent trainings side by side: the executor's local process pool against one run after another.

    python benchmarks/executor.py [--runs 16] [--steps 40] [--rounds 2] [--ray]

The workload is a 16-run grid of byte-level language models like the MoE notebooks' (four widths x four seeds,
a TinyLM of 2 layers trained for ``--steps`` steps on the course corpus), run through
:func:`efflab.parallel.run_all` with the in-process backend (one task at a time, the baseline) and with the local
process pool (one worker per free core). Both backends take turns, round after round, and the printed speed-up is
the ratio of median times in this run; tasks/s is printed beside it. With ``--ray`` a local Ray on the free cores
joins the comparison (its start-up is not timed). The results of the backends are checked to be identical.

Target: a speed-up of at least 0.8 x the number of free cores (1.6x on two cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from efflab.data.text import load_corpus
from efflab.models.gpt import GPTConfig, TinyLM
from efflab.parallel import free_cores, run_all
from efflab.runtime import seed_everything
from efflab.train import TrainConfig, fit

WIDTHS = (32, 48, 64, 96)


@dataclass(frozen=True)
class GridRun:
    width: int
    seed: int
    steps: int


def train(run: GridRun) -> float:
    """One grid point: a small LM trained for a few steps; returns its final training loss."""
    seed_everything(run.seed)
    corpus = load_corpus(max_bytes=200_000)
    model = TinyLM(GPTConfig(n_layer=2, n_head=2, d_model=run.width, block_size=64))
    generator = torch.Generator().manual_seed(run.seed)
    history = fit(
        model,
        lambda: corpus.get_batch("train", 16, 64, generator=generator),
        TrainConfig(steps=run.steps, lr=3e-3),
        progress=False,
    )
    return float(history["loss"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray", action="store_true")
    args = parser.parse_args()
    load_corpus(max_bytes=200_000)  # build the cached corpus once, outside the timings
    tasks = [GridRun(WIDTHS[i % len(WIDTHS)], i // len(WIDTHS), args.steps) for i in range(args.runs)]
    backends = ["inline", "processes"]
    if args.ray:
        import ray

        ray.init(num_cpus=free_cores(), include_dashboard=False, log_to_driver=False)
        backends.append("ray")
    seconds = {backend: [] for backend in backends}
    results = {}
    for _ in range(args.rounds):
        for backend in backends:
            start = time.perf_counter()
            results[backend] = run_all(train, tasks, backend=backend, progress=False)
            seconds[backend].append(time.perf_counter() - start)
    for backend in backends[1:]:
        assert results[backend] == results["inline"], f"{backend} gave other numbers than inline"
    base = statistics.median(seconds["inline"])
    print(f"{args.runs} runs x {args.steps} steps, {free_cores()} free cores, medians of {args.rounds} rounds")
    print(f"{'backend':>10} {'seconds':>9} {'tasks/s':>9} {'speed-up':>9}")
    for backend in backends:
        median = statistics.median(seconds[backend])
        print(f"{backend:>10} {median:9.2f} {args.runs / median:9.2f} {base / median:8.2f}x")


if __name__ == "__main__":
    main()
