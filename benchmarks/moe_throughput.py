"""Training throughput of the MoE layer's execution paths against a dense FFN with the same active parameters.

    python benchmarks/moe_throughput.py [--tokens 4096] [--d-model 256] [--rounds 3] [--threads 1]
                                        [--experts 8 32 64] [--granularities 1 4] [--slow 2.0]

For each expansion rate E and granularity G the layer has E * G experts of width d_ff / G and routes every token
to top_k = 2 * G of them ("top-2" at G = 1, kept at the same active parameters as G grows), so one token always
uses the parameters of a dense FFN of width 2 * d_ff: that dense FFN is the baseline. One step is forward plus
backward on a batch of tokens, token-choice routing, no capacity limit.

Columns, each as tokens/s relative to the dense FFN:

* ``default``: what ``implementation="auto"`` runs here (``efflab.models.moe.default_path``: on a CPU the loop up
  to 128 experts, or up to 8 when d_model is at most 64, the grouped product beyond; on a GPU the grouped product);
* ``padded``: one batched product over a (n_experts, busiest expert's count, d_model) tensor;
* ``grouped``: the grouped path with its own choice of kernel (``torch._grouped_mm`` where it works here);
* ``slices``: the grouped path with the fallback kernel (a loop over each expert's contiguous rows), what a
  torch without a working ``torch._grouped_mm`` runs;
* ``loop``: the reference, a plain loop over experts (the library's, which takes the experts' matrices with
  ``up.unbind(0)``);
* ``loop+unbind``: a copy of that loop defined here, kept as a check that the library's loop is the fast one
  (indexing ``up[e]`` instead made the backward pass build one all-experts-sized gradient per expert: 0.18x
  dense at 32 experts where unbinding gives 0.86x).

Machines differ and shared CPUs are noisy, so the script prints *ratios* measured in the same run: the paths and
the baseline are timed in alternation, round after round, and each ratio is of medians. It runs on one thread by
default: with two threads on a busy machine, waiting for the second one can swamp everything else.

Targets: the default path at least 0.7x the dense FFN's tokens/s at E = 8 top-2, and never slower than the
loop (where the rule picks the loop, the ratio is 1 up to noise).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from efflab.models.moe import MoEConfig, MoEFeedForward, grouped_mm_available

COLUMNS = ("default", "padded", "grouped", "slices", "loop", "loop+unbind")


class DenseFFN(nn.Module):
    """The dense baseline: ``down(GELU(up(x)))`` without biases, as the experts are."""

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.up = nn.Linear(d_model, width, bias=False)
        self.down = nn.Linear(width, d_model, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class UnbindLoopMoE(MoEFeedForward):
    """The reference loop, with each expert's matrices taken by ``unbind`` rather than by indexing."""

    def _run_loop(self, tokens, routing):
        out = tokens.new_zeros(tokens.shape)
        ups, downs = self.up.unbind(0), self.down.unbind(0)
        for e in range(self.config.n_experts):
            mine = routing.expert_index == e
            rows = routing.token_index[mine]
            hidden = self.activation(tokens[rows] @ ups[e])
            out.index_add_(0, rows, (hidden @ downs[e]) * routing.gates[mine].unsqueeze(1))
        return out


def step(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    loss = (module(x) * upstream).sum()
    aux = getattr(module, "aux_loss", None)
    (loss + aux if aux is not None else loss).backward()


def compare(modules: dict[str, nn.Module], x, upstream, rounds: int, slow: float) -> dict[str, float]:
    """Median seconds per step of each module, timed in alternation after one warm-up step each.

    A module whose warm-up step took more than ``slow`` seconds is not run again: its warm-up time stands as its
    measurement (the one-off costs are small next to such a step, and its ratio is far from 1 either way).
    """
    seconds = {name: [] for name in modules}
    for name, module in modules.items():
        start = time.perf_counter()
        step(module, x, upstream)
        elapsed = time.perf_counter() - start
        if elapsed > slow:
            seconds[name].append(elapsed)
    for _ in range(rounds):
        for name, module in modules.items():
            if len(seconds[name]) == 1 and seconds[name][0] > slow:
                continue
            start = time.perf_counter()
            step(module, x, upstream)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def moe(d_model, d_ff, expansion, granularity, implementation, *, layer=MoEFeedForward, **options):
    config = MoEConfig(
        d_model=d_model,
        d_ff=d_ff,
        expansion=expansion,
        granularity=granularity,
        top_k=2 * granularity,
        implementation=implementation,
        **options,
    )
    return layer(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32, 64], help="expansion rates E")
    parser.add_argument("--granularities", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 keeps torch's own choice (default: 1)"
    )
    parser.add_argument("--slow", type=float, default=2.0, help="a step slower than this (s) is measured once")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d_model, d_ff, tokens = args.d_model, 4 * args.d_model, args.tokens
    x = torch.randn(tokens, d_model)
    upstream = torch.randn(tokens, d_model)
    kernel = "torch._grouped_mm" if grouped_mm_available(x.device, x.dtype, d_model, d_ff) else "slice loop"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {tokens} tokens, d_model={d_model}, "
        f"d_ff={d_ff}; grouped kernel: {kernel}; forward+backward, median of {args.rounds} rounds"
    )
    print(f"{'E':>3} {'G':>3} {'experts':>7} {'top_k':>5} | {'dense tok/s':>11} |", end="")
    print("".join(f"{name:>13}" for name in COLUMNS), f"| {'default/loop':>12}")
    headline = {}
    dense = DenseFFN(d_model, 2 * d_ff)
    for expansion in args.experts:
        for granularity in args.granularities:
            shape = (d_model, d_ff, expansion, granularity)
            modules = {
                "dense": dense,
                "default": moe(*shape, "auto"),
                "padded": moe(*shape, "padded"),
                "grouped": moe(*shape, "grouped"),
                "slices": moe(*shape, "grouped", grouped_kernel="segments"),
                "loop": moe(*shape, "loop"),
                "loop+unbind": moe(*shape, "loop", layer=UnbindLoopMoE),
            }
            seconds = compare(modules, x, upstream, args.rounds, args.slow)
            relative = {name: seconds["dense"] / seconds[name] for name in COLUMNS}  # tokens/s over dense's
            over_loop = seconds["loop"] / seconds["default"]
            over_unbind = seconds["loop+unbind"] / seconds["default"]
            headline[(expansion, granularity)] = (relative["default"], over_loop, over_unbind)
            print(
                f"{expansion:>3} {granularity:>3} {expansion * granularity:>7} {2 * granularity:>5} | "
                f"{tokens / seconds['dense']:>11,.0f} |"
                + "".join(f"{relative[name]:>13.2f}" for name in COLUMNS)
                + f" | {over_loop:>12.2f}",
                flush=True,
            )
    print()
    if (8, 1) in headline:
        print(f"default vs dense at E=8 top-2: {headline[(8, 1)][0]:.2f}x (target >= 0.7x)")
    many = [value for (e, g), value in headline.items() if e * g >= 32]
    if many:
        low, high = min(v[1] for v in many), max(v[1] for v in many)
        print(f"default vs loop with >= 32 experts: {low:.2f}x to {high:.2f}x (target >= 1x, up to noise)")
        low, high = min(v[2] for v in many), max(v[2] for v in many)
        print(f"default vs loop+unbind with >= 32 experts: {low:.2f}x to {high:.2f}x")


if __name__ == "__main__":
    main()
