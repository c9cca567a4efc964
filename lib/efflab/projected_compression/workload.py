"""The work of a budget of notebook 03, for the full-mode plan (:mod:`efflab.workload`)."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from efflab.models.bert import BertConfig, Layer, MiniLM
from efflab.models.gpt import TinyLM
from efflab.projected_compression.experiment import (
    QUALITIES,
    TRAINED,
    CompressionBudget,
    CompressionTask,
    build_model,
    target_for_keep,
)
from efflab.projected_compression.importance import IMPORTANCES, activation_importance, random_importance, select
from efflab.projected_compression.sentence_encoder import (
    METHODS,
    EncoderBudget,
    EncoderTop,
    compressed_top,
    score,
)
from efflab.train import TrainConfig
from efflab.workload import Work, forward_step, training_step


def _evaluations(steps: int, every: int) -> int:
    """How often ``fit`` evaluates a run of ``steps`` steps: every ``every`` steps and after the last."""
    return steps // every + (steps % every != 0)


def workload(budget: CompressionBudget) -> list[Work]:
    """The two bases' pretraining and evaluations; the activation importance (once per base) and the unretrained
    pruned models' evaluations, one at a time in the notebook's process, on the run's device; the learning-rate
    grid and the main grid (every method, keep fraction and token budget, plus the other importances), each run
    with its evaluations; and the MiniLM study.

    A compression run is evaluated once before its first step and then as ``fit`` does. The merge check of each
    projected run (two forward passes of 4 windows) is left out.
    """
    if not isinstance(budget, CompressionBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a CompressionBudget")
    config = budget.config

    def windows(batch_size):
        x = torch.randint(0, 256, (batch_size, budget.block_size))
        return lambda: (x, torch.roll(x, -1, 1))

    train_batch, eval_batch = windows(budget.batch_size), windows(budget.eval_batch_size)
    base = TinyLM(config)
    works = []
    for quality, steps in zip(QUALITIES, budget.pretrain_steps, strict=True):
        schedule = TrainConfig(steps, budget.pretrain_lr, warmup_steps=min(50, steps // 10))
        model = TinyLM(config)
        works += [
            Work(
                f"pretraining, {quality}-quality base",
                1,
                steps,
                training_step(model, train_batch, config=schedule),
                pool="pretraining",
            ),
            Work(
                f"pretraining evaluations, {quality}-quality base",
                1,
                _evaluations(steps, max(1, steps // 4)) * budget.eval_batches,
                forward_step(model, lambda: eval_batch()[:1]),
                trains=False,
                pool="pretraining",
            ),
        ]
    calibration = train_batch()[0]
    works.append(
        Work(
            "activation importance on the calibration batches (once per base, one at a time)",
            len(QUALITIES),
            budget.calibration_batches,
            lambda: activation_importance(base, [calibration]),
            side_by_side=1,
            trains=False,
        )
    )
    models = {}

    def model_for(method, keep):
        if (method, keep) not in models:
            target = target_for_keep(config, keep)
            task = CompressionTask(
                method=method,
                quality="high",
                keep=keep,
                importance="random",
                steps=1,
                lr=budget.pretrain_lr,
                seed=0,
                config=config,
                target=target,
                selection=select(random_importance(base, 0), config, target).to_lists(),
                base_state=base.state_dict(),
                batch_size=budget.batch_size,
                corpus_bytes=budget.corpus_bytes,
                weight_decay=budget.weight_decay,
                eval_batches=budget.eval_batches,
                eval_batch_size=budget.eval_batch_size,
                evals_per_run=budget.evals_per_run,
            )
            model = build_model(task)
            schedule = TrainConfig(1, task.lr, weight_decay=task.weight_decay)
            trainable = [{"params": [p for p in model.parameters() if p.requires_grad]}]
            models[method, keep] = (
                model,
                training_step(model, train_batch, config=schedule, param_groups=trainable),
            )
        return models[method, keep]

    for keep in budget.keep_fractions:  # pruned, no retrain: the models are those "pruned + retrain" starts from
        works.append(
            Work(
                f"unretrained pruned models' evaluations, keep {keep:g} (one at a time)",
                len(QUALITIES) * len(IMPORTANCES),
                budget.eval_batches,
                forward_step(model_for("pruned + retrain", keep)[0], lambda: eval_batch()[:1]),
                side_by_side=1,
                trains=False,
            )
        )

    def grid(name, runs: Counter):
        """Training and evaluation items of one ``run_all`` call; ``runs``: (method, keep, steps) -> runs."""
        items = []
        for (method, keep, steps), count in runs.items():
            model, step = model_for(method, keep)
            what = f"{name}: {method}, keep {keep:g}"
            checks = 1 + _evaluations(steps, max(1, steps // budget.evals_per_run))
            items += [
                Work(what, count, steps, step, pool=name),
                Work(
                    f"{what}, evaluations",
                    count,
                    checks * budget.eval_batches,
                    forward_step(model, lambda: eval_batch()[:1]),
                    trains=False,
                    pool=name,
                ),
            ]
        return items

    middle_keep = budget.keep_fractions[len(budget.keep_fractions) // 2]
    first_budget = budget.token_budgets[0]
    search = Counter({("pruned + retrain", middle_keep, first_budget): len(budget.retrain_lrs)})
    search["projected compression", middle_keep, first_budget] += len(budget.projection_lrs)
    works += grid("learning-rate grid", search)
    main = Counter()
    for keep in budget.keep_fractions:
        for method in TRAINED:
            bases = 1 if method == "from scratch" else len(QUALITIES)  # from scratch does not depend on the base
            for steps in budget.token_budgets:
                main[method, keep, steps] += bases * budget.seeds
            if method != "from scratch":
                main[method, keep, first_budget] += len(IMPORTANCES) - 1  # the other importances, first seed
    works += grid("main grid", main)
    if budget.encoder.enabled:
        works += encoder_workload(budget.encoder)
    return works


def encoder_workload(budget: EncoderBudget) -> list[Work]:
    """The MiniLM study: the cached teacher states and FFN importance, and at the end the scoring of the
    uncompressed and the unretrained tops, in the notebook's process on the run's device; each method's
    distillation runs and their held-out scoring.

    Every sentence is taken at ``max_length`` tokens: the tokenizer pads a split to its longest sentence, at most
    that long, so these are upper bounds. The states are prepared over each split at once; they are counted
    here in chunks of ``batch_size`` sentences (the same FLOPs, more operations than one pass launches).
    """
    if not isinstance(budget, EncoderBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected an EncoderBudget")
    first, bert = budget.layers[0], BertConfig()
    teacher = MiniLM(bert).eval()
    uncompressed = EncoderTop(nn.ModuleList(Layer(bert) for _ in range(first, bert.n_layer)))
    data = {
        "top_state": uncompressed.state_dict(),
        "scores": {str(layer): torch.rand(bert.d_ff) for layer in budget.layers},
    }

    def split(count):
        return {
            "states": torch.randn(count, budget.max_length, bert.d_model),
            "mask": torch.ones(count, budget.max_length, dtype=torch.long),
            "teacher": F.normalize(torch.randn(count, bert.d_model), dim=-1),
        }

    chunk, heldout = split(budget.batch_size), split(budget.heldout_sentences)
    ids = torch.randint(0, bert.vocab_size, (budget.batch_size, budget.max_length))

    @torch.no_grad()
    def teacher_pass(importance: bool):
        """What preparing the states does to a chunk of sentences: the whole encoder, then (for the training
        sentences) the compressed layers again, scoring each FFN's up-projection."""
        mask = chunk["mask"]
        states = teacher.embeddings(ids)
        for layer in teacher.layers[:first]:
            states = layer(states, mask)
        EncoderTop(teacher.layers[first:])(states, mask)
        for layer in teacher.layers[first:] if importance else ():
            u = layer.attention_norm(states + layer.attention(states, mask))
            (layer.ffn.up(u).abs() * mask[..., None]).sum((0, 1))
            states = layer.ffn_norm(u + layer.ffn(u))

    def distillation_step(top):
        parameters = [p for p in top.parameters() if p.requires_grad]
        # on a GPU AdamW defaults to its multi-tensor (foreach) form; on a CPU it would loop over the parameters
        optimizer = torch.optim.AdamW(parameters, lr=budget.retrain_lr, weight_decay=0.0, foreach=True)

        def step() -> float:
            top.train()
            rows = torch.randint(0, budget.batch_size, (budget.batch_size,))
            student = top(chunk["states"][rows], chunk["mask"][rows])
            loss = 1.0 - (student * chunk["teacher"][rows]).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            return loss.item()

        return step

    tops = {method: compressed_top(data, budget, method) for method in (*METHODS, "pruned, no retrain")}
    train_chunks = math.ceil(budget.train_sentences / budget.batch_size)
    heldout_chunks = math.ceil(budget.heldout_sentences / budget.batch_size)
    works = [
        Work(
            "MiniLM: teacher states and FFN importance, training sentences",
            1,
            train_chunks,
            lambda: teacher_pass(True),
            trains=False,
        ),
        Work(
            "MiniLM: teacher states, held-out sentences",
            1,
            heldout_chunks,
            lambda: teacher_pass(False),
            trains=False,
        ),
    ]
    works += [
        Work(
            f"MiniLM distillation: {method}",
            budget.seeds,
            budget.steps,
            distillation_step(tops[method]),
            pool="MiniLM distillation",
        )
        for method in METHODS
    ]
    return works + [
        # a merged projected top has the pruned top's shape, and is scored once more
        Work(
            "MiniLM held-out scoring: pruned and merged tops",
            2 * budget.seeds,
            1,
            lambda: score(tops["pruned + retrain"], heldout),
            trains=False,
            pool="MiniLM distillation",
        ),
        Work(
            "MiniLM held-out scoring: projected tops, before the merge",
            budget.seeds,
            2,
            lambda: score(tops["projected compression"], heldout),
            trains=False,
            pool="MiniLM distillation",
        ),
        Work(
            "MiniLM held-out scoring: the unretrained and the uncompressed top",
            1,
            1,
            lambda: (score(tops["pruned, no retrain"], heldout), score(uncompressed, heldout)),
            trains=False,
        ),
    ]
