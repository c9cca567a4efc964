"""Notebook 03's experiment: projected compression against hard pruning, at equal training tokens.

1. **Two base models.** One byte-level TinyLM configuration pretrained twice on the course corpus, a short and a
   long run (the "low" and "high" quality bases); both are cached (:func:`efflab.cache.cached`).
2. **Targets.** Each keep fraction (the paper's 50 / 35 / 20 % tags) becomes ``(d', f')`` by counting
   non-embedding parameters (:func:`target_for_keep`), with ``f'/d' = f/d``.
3. **Four methods per (base, keep fraction)**, all from the same activation-importance indices:
   hard prune without retraining; hard prune + retrain every parameter; projected compression (base frozen,
   projections, ``A`` and gains trained, then merged); the target shape trained from scratch. The three trained
   methods get the same number of steps and tokens, at each of the budget's token budgets, over several seeds.
   Prune + retrain and PC each take their own learning rate from a small grid (chosen on the high-quality base,
   the middle keep fraction, the smallest budget, the first seed); from-scratch uses the pretraining rate.
4. **The other importances** (magnitude, random) are run for the high-quality base at the smallest budget, first
   seed, so the playground can compare them.
5. **MiniLM.** :mod:`.sentence_encoder` compresses a real pretrained encoder (all-MiniLM-L6-v2).

Every independent training goes through :func:`efflab.parallel.run_all`, on the run's device; so does the work
done in the notebook's own process (the activation importance, once per base; the unretrained pruned models'
evaluations; MiniLM's states and scoring), whose results are kept on the CPU.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from efflab.cache import cached
from efflab.data.text import load_corpus
from efflab.experiment import Budget, committed_device, paper_table, seeds_for, spread
from efflab.flops import gpt_parameter_count
from efflab.models.gpt import GPTConfig, TinyLM
from efflab.parallel import gpu_share_for, run_all, task_progress
from efflab.projected_compression import cost
from efflab.projected_compression.hard_pruning import hard_prune
from efflab.projected_compression.importance import IMPORTANCES, Selection, Target, importance_for, select
from efflab.projected_compression.projection import ProjectedLM, merge
from efflab.projected_compression.sentence_encoder import EncoderBudget, EncoderResult, run_encoder_study
from efflab.runtime import Run, seed_everything
from efflab.train import TrainConfig, fit, language_model_loss, run_evaluation
from efflab.validation import check_choice, check_fraction, check_int, check_positive

NAME = "03_projected_compression"
METHODS = ("pruned, no retrain", "pruned + retrain", "projected compression", "from scratch")
TRAINED = ("pruned + retrain", "projected compression", "from scratch")
QUALITIES = ("low", "high")  # short and long pretraining


@dataclass(frozen=True)
class CompressionBudget(Budget):
    """Sizes and budgets of the byte-LM study (and of the MiniLM study, ``encoder``)."""

    d_model: int = 48
    d_ff: int = 192
    n_layer: int = 2
    n_head: int = 4
    block_size: int = 32
    batch_size: int = 8
    corpus_bytes: int = 400_000
    pretrain_steps: tuple[int, int] = (100, 600)  # low, high quality
    pretrain_lr: float = 3e-3
    keep_fractions: tuple[float, ...] = (0.5, 0.35, 0.2)
    token_budgets: tuple[int, ...] = (40, 120)  # training steps per method; tokens = steps * batch * block
    seeds: int = 2
    retrain_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    projection_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    weight_decay: float = 0.1
    calibration_batches: int = 8
    eval_batches: int = 2
    eval_batch_size: int = 16
    evals_per_run: int = 4
    encoder: EncoderBudget = field(default_factory=EncoderBudget.quick)

    def __post_init__(self):
        for name in ("d_model", "d_ff", "n_layer", "n_head", "block_size", "batch_size", "corpus_bytes", "seeds"):
            check_int(name, getattr(self, name), low=1)
        for name in ("calibration_batches", "eval_batches", "eval_batch_size", "evals_per_run"):
            check_int(name, getattr(self, name), low=1)
        GPTConfig(block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model)
        for name in ("pretrain_steps", "keep_fractions", "token_budgets", "retrain_lrs", "projection_lrs"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"{name}={values!r} is not allowed; expected a non-empty tuple")
        for steps in self.pretrain_steps:
            check_int("pretrain_steps", steps, low=1)
        if len(self.pretrain_steps) != 2 or self.pretrain_steps[0] >= self.pretrain_steps[1]:
            raise ValueError(
                f"pretrain_steps={self.pretrain_steps!r} is not allowed; expected (short, long) with short < long"
            )
        for steps in self.token_budgets:
            check_int("token_budgets", steps, low=1)
        if list(self.token_budgets) != sorted(set(self.token_budgets)):
            raise ValueError(f"token_budgets={self.token_budgets!r} is not allowed; expected increasing steps")
        for keep in self.keep_fractions:
            check_fraction("keep_fractions", keep)
            target_for_keep(self.config, keep)  # checks that d_model leaves a smaller multiple of n_head
        check_positive("pretrain_lr", self.pretrain_lr)
        for name in ("retrain_lrs", "projection_lrs"):
            for lr in getattr(self, name):
                check_positive(name, lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not isinstance(self.encoder, EncoderBudget):
            raise ValueError(f"encoder={self.encoder!r} is not allowed; expected an EncoderBudget")

    @classmethod
    def quick(cls) -> CompressionBudget:
        return cls()

    @classmethod
    def full(cls) -> CompressionBudget:
        return cls(
            d_model=256,
            d_ff=1024,
            n_layer=4,
            n_head=8,
            block_size=128,
            batch_size=32,
            corpus_bytes=4_000_000,
            pretrain_steps=(400, 3000),
            pretrain_lr=2e-3,
            token_budgets=(250, 500, 1000),
            seeds=3,
            retrain_lrs=(3e-4, 1e-3, 3e-3),
            projection_lrs=(1e-4, 3e-4, 1e-3),
            calibration_batches=32,
            eval_batches=16,
            eval_batch_size=32,
            evals_per_run=8,
            encoder=EncoderBudget.full(),
        )

    @property
    def config(self) -> GPTConfig:
        return GPTConfig(
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            d_ff=self.d_ff,
        )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size


def target_for_keep(config: GPTConfig, keep: float) -> Target:
    """``(d', f')`` whose non-embedding parameter count is nearest ``keep`` times the base's.

    ``d'`` runs over the multiples of the head count below ``d``; ``f' = round(f d'/d)`` keeps the FFN ratio.
    """
    check_fraction("keep", keep)
    full = gpt_parameter_count(config, include_embedding=False)
    best, best_error = None, float("inf")
    for width in range(config.n_head, config.d_model, config.n_head):
        d_ff = max(1, round(config.d_ff * width / config.d_model))
        small = dataclasses.replace(config, d_model=width, d_ff=d_ff)
        error = abs(gpt_parameter_count(small, include_embedding=False) / full - keep)
        if error < best_error:
            best, best_error = Target(width, d_ff), error
    if best is None:
        raise ValueError(f"d_model={config.d_model} leaves no smaller multiple of n_head={config.n_head}")
    return best


# ---- independent tasks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainTask:
    config: GPTConfig
    steps: int
    lr: float
    batch_size: int
    corpus_bytes: int
    seed: int
    eval_batches: int
    eval_batch_size: int
    device: str = "cpu"


def _evaluate(corpus, sizes) -> callable:
    """The validation loss on fixed windows, sized by ``sizes.eval_batches`` and ``sizes.eval_batch_size`` (a task
    or the budget)."""
    return lambda model: language_model_loss(
        model, corpus, batches=sizes.eval_batches, batch_size=sizes.eval_batch_size, seed=12345
    )


def _train_base(task: PretrainTask) -> dict:
    started = time.process_time()
    seed_everything(task.seed)
    corpus = load_corpus(task.corpus_bytes)
    model = TinyLM(task.config).to(task.device)
    generator = torch.Generator().manual_seed(task.seed)
    config = TrainConfig(
        steps=task.steps, lr=task.lr, warmup_steps=min(50, task.steps // 10), eval_every=max(1, task.steps // 4)
    )
    with task_progress(task.steps, f"pretrain {task.steps} steps") as bar:
        evaluate = _evaluate(corpus, task)

        def batches():
            bar.update()
            return corpus.get_batch("train", task.batch_size, task.config.block_size, generator=generator)

        history = fit(model, batches, config, evaluate=evaluate, progress=False)
    return {
        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "val_loss": torch.tensor(history["val_loss"].dropna().to_numpy()),
        "val_step": torch.tensor(history.loc[history["val_loss"].notna(), "step"].to_numpy()),
        "cpu_seconds": torch.tensor(time.process_time() - started),
    }


def pretrain_base(task: PretrainTask) -> dict:
    """One base model, pretrained (or loaded from the cache): its state dict and validation curve."""
    key = {**dataclasses.asdict(task), "config": dataclasses.asdict(task.config), "format": 1}
    return cached("pc_base_lm", key, lambda: _train_base(task))


@dataclass(frozen=True)
class CompressionTask:
    """One training run: ``method`` on the base ``base_state`` compressed to ``target`` with ``selection``."""

    method: str
    quality: str
    keep: float
    importance: str
    steps: int
    lr: float
    seed: int
    config: GPTConfig
    target: Target
    selection: dict
    base_state: dict
    batch_size: int
    corpus_bytes: int
    weight_decay: float
    eval_batches: int
    eval_batch_size: int
    evals_per_run: int
    keep_projection: bool = False
    device: str = "cpu"


def _selection(lists: dict) -> Selection:
    return Selection(
        d=torch.tensor(lists["d"]),
        qk=tuple(torch.tensor(t) for t in lists["qk"]),
        vo=tuple(torch.tensor(t) for t in lists["vo"]),
        ffn=tuple(torch.tensor(t) for t in lists["ffn"]),
    )


def build_model(task: CompressionTask):
    """The model a method trains: the pruned TinyLM, the ProjectedLM, or a fresh TinyLM of the target shape."""
    check_choice("method", task.method, TRAINED)
    base = TinyLM(task.config)
    base.load_state_dict(task.base_state)
    base.to(task.device)
    if task.method == "from scratch":
        return TinyLM(task.target.config_for(task.config)).to(task.device)
    selection = _selection(task.selection)
    if task.method == "pruned + retrain":
        return hard_prune(base, selection, task.target)
    return ProjectedLM(base, selection, task.target)


def train_compressed(task: CompressionTask, report=None) -> dict:
    """Train one method for ``task.steps`` steps; validation loss at ``evals_per_run`` points (and at step 0).

    ``report(fraction, message)``, when given, is called at every evaluation (the playground's button).
    """
    started = time.process_time()
    seed_everything(task.seed)
    corpus = load_corpus(task.corpus_bytes)
    model = build_model(task)
    trainable = [p for p in model.parameters() if p.requires_grad]
    evaluate = _evaluate(corpus, task)
    generator = torch.Generator().manual_seed(10_000 + task.seed)
    config = TrainConfig(
        steps=task.steps,
        lr=task.lr,
        weight_decay=task.weight_decay,
        warmup_steps=max(1, task.steps // 20),
        eval_every=max(1, task.steps // task.evals_per_run),
    )
    start_loss = run_evaluation(model, evaluate)["val_loss"]
    label = f"{task.method} {task.quality} keep={task.keep:g} lr={task.lr:g}"
    with task_progress(task.steps, label) as bar:

        def batches():
            bar.update()
            return corpus.get_batch("train", task.batch_size, task.config.block_size, generator=generator)

        def evaluate_and_report(m):
            metrics = evaluate(m)
            if report is not None:
                done = len(history_rows) + 1
                report(done / task.evals_per_run, f"{label}: val loss {metrics['val_loss']:.3f}")
            history_rows.append(metrics)
            return metrics

        history_rows: list = []
        history = fit(
            model,
            batches,
            config,
            param_groups=[{"params": trainable}],
            evaluate=evaluate_and_report,
            progress=False,
        )
    evals = history.loc[history["val_loss"].notna(), ["step", "val_loss"]]
    outcome = {
        "steps": [0, *evals["step"].tolist()],
        "val_loss": [start_loss, *evals["val_loss"].tolist()],
        "final_loss": float(evals["val_loss"].iloc[-1]),
        "train_loss": history["loss"].tolist(),
    }
    if task.method == "projected compression":
        merged = merge(model)
        x, _ = corpus.get_batch("val", 4, task.config.block_size, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            x = x.to(task.device)
            outcome["merge_error"] = float((merged(x) - model(x)).abs().max())
        outcome["merged_parameters"] = sum(p.numel() for p in merged.parameters())
        if task.keep_projection:
            up = model.matrices["blocks__0__ffn__up__weight"][0]
            outcome["p_in"] = up.p_in.detach().cpu().clone()
    outcome["cpu_seconds"] = time.process_time() - started
    return outcome


# ---- the whole experiment -------------------------------------------------------------------------------------


@dataclass
class CompressionResult:
    """Everything the figures and the summary need."""

    budget: CompressionBudget
    base_curves: dict  # quality -> (steps, val losses)
    base_loss: dict  # quality -> final val loss
    targets: dict  # keep -> Target
    lrs: dict  # method -> chosen lr
    lr_search: pd.DataFrame
    runs: pd.DataFrame  # one row per trained or evaluated run
    curves: dict  # (quality, keep, importance, method, steps, seed) -> (tokens, val losses)
    heatmap: dict  # the trained P_in of one PC run and which channels it kept
    flops: dict  # keep -> method -> FLOPs per step
    flops_curve: dict  # keep -> (tokens per step, overhead ratio)
    merge_error: float
    parameter_match: bool
    encoder: EncoderResult | None
    task_cpu_seconds: float = 0.0  # processor time spent inside the independent tasks (their sum)
    device: str = "cpu"  # where the study ran; a live run trains there too and finds the same cached bases

    def final_losses(self, quality: str, keep: float, method: str, steps: int, importance="activation"):
        rows = self.runs[
            (self.runs.quality == quality)
            & (self.runs.keep == keep)
            & (self.runs.method == method)
            & (self.runs.importance == importance)
            & ((self.runs.steps == steps) | (self.runs.method == "pruned, no retrain"))
        ]
        return rows.sort_values("seed")["final_loss"].tolist()

    def summary(self) -> dict:
        budget = self.budget
        final = {}
        gaps = {}
        for quality in QUALITIES:
            final[quality], gaps[quality] = {}, {}
            for keep in budget.keep_fractions:
                key = f"{keep:g}"
                final[quality][key] = {
                    method: self.final_losses(quality, keep, method, budget.token_budgets[-1])
                    for method in METHODS
                }
                gaps[quality][key] = {}
                for steps in budget.token_budgets:
                    pc = self.final_losses(quality, keep, "projected compression", steps)
                    pruned = self.final_losses(quality, keep, "pruned + retrain", steps)
                    gaps[quality][key][str(steps * budget.tokens_per_step)] = [
                        a - b for a, b in zip(pc, pruned, strict=True)
                    ]
        tokens = [steps * budget.tokens_per_step for steps in budget.token_budgets]
        values = {
            "base_loss": dict(self.base_loss),
            "targets": {f"{k:g}": [t.d_model, t.d_ff] for k, t in self.targets.items()},
            "tokens": tokens,
            "lrs": dict(self.lrs),
            "final_loss": final,
            "gap_pc_minus_pruned": gaps,
            "merge_error": self.merge_error,
            "parameter_match": self.parameter_match,
            "flops_per_step": {f"{k:g}": v for k, v in self.flops.items()},
            "breakeven_tokens_10pct": {
                f"{k:g}": cost.breakeven_tokens(budget.config, t, 0.1) for k, t in self.targets.items()
            },
        }
        if self.encoder is not None:
            values["minilm"] = self.encoder.summary()
        return values


def _selection_for(base: TinyLM, kind: str, target: Target, calibration, seed: int) -> Selection:
    importance = importance_for(kind, base, calibration=calibration, seed=seed)
    return select(importance, base.config, target)


def channel_selections(bases: dict, targets: dict, calibration, seed: int) -> dict:
    """``(quality, keep, importance) -> Selection`` for every base (quality -> TinyLM), target (keep -> Target)
    and importance.

    Each importance is computed once per base, on the base's device (the scores come back on the CPU), and
    serves every keep fraction: it depends only on the base, the calibration batches and the seed.
    """
    selections = {}
    for quality, base in bases.items():
        for kind in IMPORTANCES:
            importance = importance_for(kind, base, calibration=calibration, seed=seed)
            for keep, target in targets.items():
                selections[quality, keep, kind] = select(importance, base.config, target)
    return selections


def run_experiment(run: Run, budget: CompressionBudget) -> CompressionResult:
    """Pretrain the two bases, compress them every way, train the methods, and run the MiniLM study.

    All of it runs on the run's device; the bases' states, the selections and the results are on the CPU.
    """
    if not isinstance(budget, CompressionBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a CompressionBudget")
    config = budget.config
    device = run.device.type
    share = gpu_share_for(device)
    corpus = load_corpus(budget.corpus_bytes)
    seeds = seeds_for(run.seed, budget.seeds)
    common = dict(eval_batches=budget.eval_batches, eval_batch_size=budget.eval_batch_size)
    pretrain_tasks = [
        PretrainTask(
            config,
            steps,
            budget.pretrain_lr,
            budget.batch_size,
            budget.corpus_bytes,
            run.seed,
            **common,
            device=device,
        )
        for steps in budget.pretrain_steps
    ]
    pretrained = run_all(pretrain_base, pretrain_tasks, description="pretrain bases", gpu_share=share)
    bases, states, base_curves, base_loss = {}, {}, {}, {}  # bases on the device, their states on the CPU
    for quality, outcome in zip(QUALITIES, pretrained, strict=True):
        model = TinyLM(config)
        model.load_state_dict(outcome["state"])
        bases[quality], states[quality] = model.to(device), outcome["state"]
        base_curves[quality] = (outcome["val_step"].tolist(), outcome["val_loss"].tolist())
        base_loss[quality] = float(outcome["val_loss"][-1])

    calibration_generator = torch.Generator().manual_seed(run.seed + 999)
    calibration = [
        corpus.get_batch("train", budget.batch_size, budget.block_size, generator=calibration_generator)[0]
        for _ in range(budget.calibration_batches)
    ]
    targets = {keep: target_for_keep(config, keep) for keep in budget.keep_fractions}
    selections = channel_selections(bases, targets, calibration, run.seed)

    def task(method, quality, keep, kind, steps, lr, seed, keep_projection=False):
        return CompressionTask(
            method=method,
            quality=quality,
            keep=keep,
            importance=kind,
            steps=steps,
            lr=lr,
            seed=seed,
            config=config,
            target=targets[keep],
            selection=selections[(quality, keep, kind)].to_lists(),
            base_state=states[quality],
            batch_size=budget.batch_size,
            corpus_bytes=budget.corpus_bytes,
            weight_decay=budget.weight_decay,
            evals_per_run=budget.evals_per_run,
            keep_projection=keep_projection,
            device=device,
            **common,
        )

    # 1. each method's learning rate, on one setting
    middle_keep = budget.keep_fractions[len(budget.keep_fractions) // 2]
    search = [("pruned + retrain", lr) for lr in budget.retrain_lrs]
    search += [("projected compression", lr) for lr in budget.projection_lrs]
    search_tasks = [
        task(m, "high", middle_keep, "activation", budget.token_budgets[0], lr, seeds[0]) for m, lr in search
    ]
    search_out = run_all(train_compressed, search_tasks, description="learning-rate grid", gpu_share=share)
    lr_search = pd.DataFrame(
        [
            {"method": m, "lr": lr, "final_loss": o["final_loss"]}
            for (m, lr), o in zip(search, search_out, strict=True)
        ]
    )
    lrs = {m: float(lr_search[lr_search.method == m].sort_values("final_loss").iloc[0]["lr"]) for m in TRAINED[:2]}
    lrs["from scratch"] = budget.pretrain_lr

    # 2. the main grid: every method, quality, keep fraction, budget and seed; plus the other importances
    main = [
        task(m, q, k, "activation", s, lrs[m], seed, keep_projection=(q == "high" and k == middle_keep))
        for q in QUALITIES
        for k in budget.keep_fractions
        for m in TRAINED[:2]
        for s in budget.token_budgets
        for seed in seeds
    ]
    # from scratch does not depend on the base: one set of runs, reported under both qualities
    main += [
        task("from scratch", "high", k, "activation", s, lrs["from scratch"], seed)
        for k in budget.keep_fractions
        for s in budget.token_budgets
        for seed in seeds
    ]
    main += [
        task(m, "high", k, kind, budget.token_budgets[0], lrs[m], seeds[0])
        for kind in IMPORTANCES
        if kind != "activation"
        for k in budget.keep_fractions
        for m in TRAINED[:2]
    ]
    outcomes = run_all(train_compressed, main, description="compression runs", gpu_share=share)

    rows, curves = [], {}
    heatmap, merge_errors, parameter_match = {}, [], True
    for t, outcome in zip(main, outcomes, strict=True):
        qualities = QUALITIES if t.method == "from scratch" else (t.quality,)
        tokens = [s * budget.tokens_per_step for s in outcome["steps"]]
        for quality in qualities:
            rows.append(
                dict(
                    quality=quality,
                    keep=t.keep,
                    importance=t.importance,
                    method=t.method,
                    steps=t.steps,
                    tokens=t.steps * budget.tokens_per_step,
                    seed=t.seed,
                    lr=t.lr,
                    final_loss=outcome["final_loss"],
                )
            )
            curves[(quality, t.keep, t.importance, t.method, t.steps, t.seed)] = (tokens, outcome["val_loss"])
        if t.method == "projected compression":
            merge_errors.append(outcome["merge_error"])
            pruned_count = sum(p.numel() for p in TinyLM(t.target.config_for(config)).parameters())
            parameter_match &= outcome["merged_parameters"] == pruned_count
            if "p_in" in outcome and t.steps == budget.token_budgets[-1] and t.seed == seeds[0]:
                heatmap = {"p_in": outcome["p_in"], "kept": selections[("high", t.keep, "activation")].d.tolist()}
    # hard prune without retraining: evaluated here (on the run's device, without gradients), no training
    evaluate = _evaluate(corpus, budget)
    for quality in QUALITIES:
        for keep in budget.keep_fractions:
            for kind in IMPORTANCES:
                pruned = hard_prune(bases[quality], selections[(quality, keep, kind)], targets[keep])
                loss = run_evaluation(pruned, evaluate)["val_loss"]
                for seed in seeds:
                    rows.append(
                        dict(
                            quality=quality,
                            keep=keep,
                            importance=kind,
                            method="pruned, no retrain",
                            steps=0,
                            tokens=0,
                            seed=seed,
                            lr=0.0,
                            final_loss=loss,
                        )
                    )
    flops = {
        keep: cost.flops_per_step(config, target, budget.batch_size, budget.block_size)
        for keep, target in targets.items()
    }
    token_grid = np.unique(np.geomspace(budget.block_size, budget.block_size * 2**16, 40).astype(int))
    flops_curve = {}
    for keep, target in targets.items():
        projection = cost.projection_flops_per_step(config, target)
        per_token = cost.model_flops_per_step(target.config_for(config), 1) / budget.block_size
        flops_curve[keep] = (token_grid.tolist(), (projection / (per_token * token_grid)).tolist())
    encoder = run_encoder_study(run, budget.encoder) if budget.encoder.enabled else None
    task_cpu = sum(float(o["cpu_seconds"]) for o in [*pretrained, *search_out, *outcomes])
    if encoder is not None:
        task_cpu += sum(o["cpu_seconds"] for runs in encoder.runs.values() for o in runs)
    return CompressionResult(
        budget=budget,
        base_curves=base_curves,
        base_loss=base_loss,
        targets=targets,
        lrs=lrs,
        lr_search=lr_search,
        runs=pd.DataFrame(rows),
        curves=curves,
        heatmap=heatmap,
        flops=flops,
        flops_curve=flops_curve,
        merge_error=max(merge_errors) if merge_errors else float("nan"),
        parameter_match=bool(parameter_match),
        encoder=encoder,
        task_cpu_seconds=task_cpu,
        device=device,
    )


def live_task(result: CompressionResult, method: str, quality: str, keep: float, importance: str, steps: int):
    """The task the playground's button runs: one more configuration, next seed after the precomputed ones.

    It trains on the run's device, and asks for its base with exactly the run's pretraining task (device
    included), so the cache hands back the base the study used instead of pretraining a new one.
    """
    check_choice("method", method, TRAINED)
    check_choice("quality", quality, QUALITIES)
    check_choice("importance", importance, IMPORTANCES)
    check_int("steps", steps, low=1)
    budget = result.budget
    config = budget.config
    target = target_for_keep(config, keep)
    base_task = PretrainTask(
        config,
        budget.pretrain_steps[QUALITIES.index(quality)],
        budget.pretrain_lr,
        budget.batch_size,
        budget.corpus_bytes,
        int(result.runs.seed.min()),
        budget.eval_batches,
        budget.eval_batch_size,
        device=result.device,
    )
    state = pretrain_base(base_task)["state"]
    base = TinyLM(config)
    base.load_state_dict(state)
    corpus = load_corpus(budget.corpus_bytes)
    generator = torch.Generator().manual_seed(base_task.seed + 999)
    calibration = [
        corpus.get_batch("train", budget.batch_size, budget.block_size, generator=generator)[0]
        for _ in range(budget.calibration_batches)
    ]
    selection = _selection_for(base, importance, target, calibration, base_task.seed)
    return CompressionTask(
        method=method,
        quality=quality,
        keep=keep,
        importance=importance,
        steps=steps,
        lr=result.lrs[method],
        seed=int(result.runs.seed.max()) + 1,
        config=config,
        target=target,
        selection=selection.to_lists(),
        base_state=state,
        batch_size=budget.batch_size,
        corpus_bytes=budget.corpus_bytes,
        weight_decay=budget.weight_decay,
        eval_batches=budget.eval_batches,
        eval_batch_size=budget.eval_batch_size,
        evals_per_run=budget.evals_per_run,
        device=result.device,
    )


# ---- paper vs this run, findings ------------------------------------------------------------------------------


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _minilm_text(values: dict | None) -> str:
    """Mean held-out cosine to the original embeddings, PC vs prune + retrain, of one summary's MiniLM study."""
    if values is None or "minilm" not in values:
        return "n/a"
    cosine = values["minilm"]["cosine"]
    return f"{_mean(cosine['projected compression']):.3f} vs {_mean(cosine['pruned + retrain']):.3f}"


def paper_rows(summary: dict, committed: dict | None = None) -> pd.DataFrame:
    """The paper's claims (abstract level; its numeric tables were not available) beside this run."""

    def gap_text(values: dict | None, quality: str) -> str:
        if values is None:
            return "n/a"
        last = str(values["tokens"][-1])
        gaps = [g for keep in values["gap_pc_minus_pruned"][quality].values() for g in keep[last]]
        return f"{spread(gaps)} nats (all keep fractions, {last} tokens)"

    def growth_text(values: dict | None, quality: str) -> str:
        if values is None:
            return "n/a"
        parts = []
        for tokens in values["tokens"]:
            gaps = [g for keep in values["gap_pc_minus_pruned"][quality].values() for g in keep[str(tokens)]]
            parts.append(f"{tokens}: {_mean(gaps):+.3f}")
        return "; ".join(parts)

    rows = []
    for quality, label in (("high", "longer-pretrained"), ("low", "shorter-pretrained")):
        rows.append(
            dict(
                quantity=f"PC minus prune+retrain, eval loss, {label} base",
                paper="negative (PC better) on higher-quality bases [abstract]; no number verified",
                this_run=gap_text(summary, quality),
                full_run=gap_text(committed, quality),
                note="equal training tokens; negative means projected compression wins",
            )
        )
        rows.append(
            dict(
                quantity=f"gap by training tokens, {label} base",
                paper="margin 'scales well with the number of tokens' [abstract]",
                this_run=growth_text(summary, quality),
                full_run=growth_text(committed, quality),
                note="mean PC minus prune+retrain at each token budget",
            )
        )
    keep = next(iter(summary["flops_per_step"]))
    step = summary["flops_per_step"][keep]
    rows.append(
        dict(
            quantity=f"training FLOPs per step, PC / pruned (keep {keep}, this batch)",
            paper="per-token compute matches the compressed model [abstract]",
            this_run=f"{step['projected compression'] / step['pruned + retrain']:.2f}x",
            note=f"projection products are per step; overhead below 10% from "
            f"{summary['breakeven_tokens_10pct'][keep]} tokens per step",
        )
    )
    if "minilm" in summary or "minilm" in (committed or {}):
        rows.append(
            dict(
                quantity="MiniLM FFN compression: cosine to original embeddings, PC vs prune+retrain",
                paper="not in the paper (it compresses decoder LMs)",
                this_run=_minilm_text(summary),
                full_run=_minilm_text(committed),
                note="held-out sentences, equal distillation steps",
            )
        )
    return paper_table(rows, full_run_on=committed_device(NAME))


def _verdict(gaps: list[float]) -> str:
    """ "better" when every difference is below zero, "worse" when every one is above, else "mixed": a direction
    is claimed only when no seed contradicts it."""
    if all(g < 0 for g in gaps):
        return "better"
    if all(g > 0 for g in gaps):
        return "worse"
    return "mixed"


def _mean_range(values: list[float]) -> str:
    """``mean [min, max]`` over seeds, or the single value when they all agree (no retraining has no seed)."""
    if not values:
        return "n/a"
    if min(values) == max(values):
        return f"{values[0]:.3f}"
    return f"{_mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def final_loss_table(summary: dict) -> str:
    """The final eval loss of the four methods for each base and keep fraction, as a Markdown table."""
    tokens = summary["tokens"][-1]
    lines = [
        "| base (its own loss) | keep | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for quality, label in (("high", "longer-pretrained"), ("low", "shorter-pretrained")):
        for keep, losses in summary["final_loss"][quality].items():
            cells = " | ".join(_mean_range(losses[method]) for method in METHODS)
            lines.append(f"| {label} ({summary['base_loss'][quality]:.3f}) | {keep} | {cells} |")
    caption = (
        f"Final eval loss after {tokens} training tokens, mean [min, max] over seeds (one number if they agree):"
    )
    return caption + "\n\n" + "\n".join(lines)


def _better_base_line(gaps: dict, last: str) -> str:
    """Is PC's margin larger on the longer-pretrained base? Compared per keep fraction and seed, at ``last``
    tokens; a direction is stated only when every pair agrees."""
    differences = [
        high - low
        for keep, per_tokens in gaps["high"].items()
        for high, low in zip(per_tokens[last], gaps["low"][keep][last], strict=True)
    ]
    means = (
        f"mean gap {_mean([g for v in gaps['high'].values() for g in v[last]]):+.3f} on the better base vs "
        f"{_mean([g for v in gaps['low'].values() for g in v[last]]):+.3f}"
    )
    verdict = _verdict(differences)
    if verdict == "better":
        return (
            f"- PC's margin is larger on the better base at every keep fraction and seed ({means}), the direction "
            "the abstract's 'on higher quality models' suggests."
        )
    if verdict == "worse":
        return (
            f"- PC's margin is smaller on the better base at every keep fraction and seed ({means}), against the "
            "abstract's 'on higher quality models'."
        )
    ahead = sum(d < 0 for d in differences)
    return (
        f"- The seeds disagree on whether PC's margin is larger on the better base (it is in {ahead} of "
        f"{len(differences)} keep-fraction and seed pairs; {means}), so this run does not settle the abstract's "
        "'on higher quality models'."
    )


def _minilm_line(minilm: dict) -> str:
    """The MiniLM sentence: which method keeps the embeddings closer, stated per seed."""
    pc = minilm["cosine"]["projected compression"]
    pruned = minilm["cosine"]["pruned + retrain"]
    verdict = _verdict([b - a for a, b in zip(pc, pruned, strict=True)])  # below zero where PC is higher
    if len(pc) == 1:
        order = {"better": "PC higher", "worse": "PC lower", "mixed": "a tie"}[verdict] + ", on one seed only"
    else:
        order = {
            "better": "PC higher on every seed",
            "worse": "PC lower on every seed",
            "mixed": "the seeds disagree on which is higher",
        }[verdict]
    return (
        f"- **MiniLM** (FFN width {minilm['d_ff']} -> {minilm['target_d_ff']}, {minilm['steps']} steps): "
        f"cosine to the original embeddings {spread(pc)} for PC vs {spread(pruned)} for prune + retrain "
        f"({order}); nearest-neighbour agreement {spread(minilm['neighbours']['projected compression'])} "
        f"vs {spread(minilm['neighbours']['pruned + retrain'])} (no retraining: cosine "
        f"{_mean(minilm['cosine']['pruned, no retrain']):.3f})."
    )


def findings(summary: dict) -> str:
    """What this run found, in sentences computed from the summary, closed by the table of final losses."""
    tokens = summary["tokens"]
    last = str(tokens[-1])
    lines = []
    for quality, label in (("high", "longer-pretrained"), ("low", "shorter-pretrained")):
        per_keep = summary["gap_pc_minus_pruned"][quality]
        verdicts = {keep: _verdict(v[last]) for keep, v in per_keep.items()}
        parts = ", ".join(f"keep {keep}: {spread(v[last])} ({verdicts[keep]})" for keep, v in per_keep.items())
        wins = sum(v == "better" for v in verdicts.values())
        losses = sum(v == "worse" for v in verdicts.values())
        if wins == len(verdicts):
            verdict = "projected compression beats hard prune + retrain at every keep fraction, on every seed"
        elif losses == len(verdicts):
            verdict = "hard prune + retrain beats projected compression at every keep fraction, on every seed"
        else:
            verdict = (
                f"the comparison is mixed: PC wins on every seed at {wins}, loses on every seed at {losses} of "
                f"{len(verdicts)} keep fractions"
            )
        lines.append(
            f"- **{label.capitalize()} base** (its eval loss {summary['base_loss'][quality]:.3f}): at {last} "
            f"training tokens {verdict}. Gap PC minus prune+retrain: {parts}."
        )
        if len(tokens) > 1:
            means = [_mean([g for v in per_keep.values() for g in v[str(t)]]) for t in tokens]
            # per seed and keep fraction: did the gap move in PC's favour from the smallest to the largest budget?
            moves = [b - a for v in per_keep.values() for a, b in zip(v[str(tokens[0])], v[last], strict=True)]
            if all(m < 0 for m in moves):
                trend = (
                    "moves in PC's favour as the token budget grows (on every seed and keep fraction), "
                    "as the paper reports"
                )
            elif all(m > 0 for m in moves):
                trend = (
                    "moves against PC as the token budget grows (on every seed and keep fraction), "
                    "unlike the paper's report"
                )
            else:
                trend = "shows no consistent trend with the token budget across seeds and keep fractions"
            lines.append(
                f"  The gap {trend} (mean: "
                + ", ".join(f"{t} tokens: {m:+.3f}" for t, m in zip(tokens, means, strict=True))
                + ")."
            )
    lines.append(_better_base_line(summary["gap_pc_minus_pruned"], last))
    if "minilm" in summary:
        lines.append(_minilm_line(summary["minilm"]))
    return "\n".join(lines) + "\n\n" + final_loss_table(summary)
