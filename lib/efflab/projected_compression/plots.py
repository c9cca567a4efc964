"""Figures and the playground of notebook 03; they draw a :class:`CompressionResult`, they never train (except the
playground's button, which runs one more configuration through the experiment's own task function)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.projected_compression.experiment import (
    METHODS,
    QUALITIES,
    TRAINED,
    CompressionResult,
    live_task,
    train_compressed,
)
from efflab.projected_compression.importance import IMPORTANCES
from efflab.ui.plots import PALETTE, style_figure
from efflab.ui.widgets import dropdown, slider
from efflab.ui.widgets import playground as make_playground

COLOURS = {method: PALETTE[i] for i, method in enumerate(METHODS)}
QUALITY_LABELS = {"low": "short pretraining", "high": "long pretraining"}


def _curves(result: CompressionResult, quality, keep, importance, method, steps) -> list:
    return [
        value
        for (q, k, imp, m, s, _seed), value in sorted(result.curves.items(), key=lambda item: item[0][5])
        if (q, k, imp, m, s) == (quality, keep, importance, method, steps)
    ]


def loss_vs_tokens(
    result: CompressionResult,
    quality: str = "high",
    keep: float | None = None,
    importance: str = "activation",
    steps: int | None = None,
) -> go.Figure:
    """Eval loss against training tokens for the three trained methods (mean line, min-max band over seeds), and
    the pruned model without retraining as a dashed line."""
    budget = result.budget
    keep = budget.keep_fractions[0] if keep is None else keep
    steps = budget.token_budgets[-1] if steps is None else steps
    figure = go.Figure()
    for method in TRAINED:
        curves = _curves(result, quality, keep, importance, method, steps)
        if not curves:
            continue
        x = curves[0][0]
        values = np.array([c[1] for c in curves])
        colour = COLOURS[method]
        if len(values) > 1:
            figure.add_scatter(
                x=list(x) + list(x)[::-1],
                y=list(values.max(0)) + list(values.min(0))[::-1],
                fill="toself",
                fillcolor=colour,
                opacity=0.2,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
            )
        figure.add_scatter(x=x, y=values.mean(0), name=f"{method} (n={len(values)})", line=dict(color=colour))
    no_retrain = result.final_losses(quality, keep, "pruned, no retrain", 0, importance)
    if no_retrain:
        figure.add_hline(
            y=no_retrain[0],
            line=dict(color=COLOURS["pruned, no retrain"], dash="dash"),
            annotation_text="pruned, no retrain",
        )
    figure.add_hline(
        y=result.base_loss[quality], line=dict(color="#444", dash="dot"), annotation_text="base model"
    )
    target = result.targets[keep]
    title = (
        f"Eval loss vs training tokens: {QUALITY_LABELS[quality]} base, keep {keep:g} "
        f"(d'={target.d_model}, f'={target.d_ff}), {importance} importance"
    )
    return style_figure(figure, title, "training tokens", "eval loss (nats per byte)")


def final_loss_by_keep(result: CompressionResult, steps: int | None = None) -> go.Figure:
    """Final eval loss of each method by keep fraction, one panel per base quality (mean and std over seeds)."""
    budget = result.budget
    steps = budget.token_budgets[-1] if steps is None else steps
    figure = make_subplots(rows=1, cols=2, subplot_titles=[QUALITY_LABELS[q] + " base" for q in QUALITIES])
    for col, quality in enumerate(QUALITIES, start=1):
        for method in METHODS:
            means, stds = [], []
            for keep in budget.keep_fractions:
                values = result.final_losses(quality, keep, method, steps)
                means.append(np.mean(values))
                stds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
            figure.add_scatter(
                x=[f"{k:g}" for k in budget.keep_fractions],
                y=means,
                error_y=dict(type="data", array=stds),
                name=method,
                legendgroup=method,
                showlegend=col == 1,
                line=dict(color=COLOURS[method]),
                row=1,
                col=col,
            )
    tokens = steps * budget.tokens_per_step
    style_figure(
        figure, f"Final eval loss by keep fraction ({tokens} training tokens)", "keep fraction", "eval loss"
    )
    figure.update_xaxes(title_text="keep fraction")
    return figure


def gap_vs_tokens(result: CompressionResult) -> go.Figure:
    """PC minus prune+retrain final loss at each token budget (below zero: PC wins), per base and keep fraction."""
    summary = result.summary()
    figure = go.Figure()
    index = 0
    for quality in QUALITIES:
        for keep, per_tokens in summary["gap_pc_minus_pruned"][quality].items():
            tokens = [int(t) for t in per_tokens]
            values = [np.mean(v) for v in per_tokens.values()]
            errors = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_tokens.values()]
            figure.add_scatter(
                x=tokens,
                y=values,
                error_y=dict(type="data", array=errors),
                name=f"{QUALITY_LABELS[quality]}, keep {keep}",
                line=dict(color=PALETTE[index % len(PALETTE)], dash="solid" if quality == "high" else "dash"),
            )
            index += 1
    figure.add_hline(y=0.0, line=dict(color="#444", dash="dot"))
    figure.update_xaxes(type="log")
    return style_figure(
        figure, "PC minus prune+retrain (below 0: PC better)", "training tokens", "loss difference"
    )


def projection_heatmap(result: CompressionResult) -> go.Figure:
    """|P_in| of layer 0's FFN up-projection after PC training: rows are the base's residual channels (kept ones
    first, then the pruned ones), columns the kept channels. At the start it is the identity on the kept block and
    zero below it; what appears below the line is what each kept channel learned to draw from pruned channels."""
    if not result.heatmap:
        raise ValueError("this result holds no trained projection; run the experiment with a PC run to keep")
    p_in = np.asarray(result.heatmap["p_in"].abs())
    kept = result.heatmap["kept"]
    pruned = [c for c in range(p_in.shape[0]) if c not in set(kept)]
    ordered = p_in[kept + pruned]
    labels = [f"kept {c}" for c in kept] + [f"pruned {c}" for c in pruned]
    figure = go.Figure(
        go.Heatmap(z=ordered, y=labels, x=[f"{j}" for j in range(p_in.shape[1])], colorscale="Viridis")
    )
    figure.add_hline(y=len(kept) - 0.5, line=dict(color="white", width=2))
    figure.update_yaxes(autorange="reversed", showticklabels=False)
    share = float(ordered[len(kept) :].sum() / ordered.sum())
    style_figure(
        figure,
        f"Trained P_in of layer 0 FFN up: kept rows above the line, pruned below ({share:.1%} of |P_in| mass)",
        "kept channel j of the compressed model",
        "base residual channel",
    )
    figure.update_layout(height=460)
    return figure


def flops_figure(result: CompressionResult) -> go.Figure:
    """Left: training FLOPs per step of each method at this run's batch. Right: the projection overhead
    (projection FLOPs / compressed-model FLOPs) against tokens per step; it falls like 1 / tokens."""
    budget = result.budget
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=["FLOPs per training step (this batch)", "PC overhead vs tokens per step"]
    )
    methods = ["base model", "pruned + retrain", "from scratch", "projected compression"]
    for index, keep in enumerate(budget.keep_fractions):
        flops = result.flops[keep]
        figure.add_bar(
            x=methods,
            y=[flops[m] for m in methods],
            name=f"keep {keep:g}",
            marker_color=PALETTE[index],
            legendgroup=str(keep),
            row=1,
            col=1,
        )
        tokens, ratio = result.flops_curve[keep]
        figure.add_scatter(
            x=tokens,
            y=ratio,
            name=f"keep {keep:g}",
            line=dict(color=PALETTE[index]),
            legendgroup=str(keep),
            showlegend=False,
            row=1,
            col=2,
        )
    figure.add_hline(y=0.1, line=dict(color="#444", dash="dot"), annotation_text="10%", row=1, col=2)
    figure.add_vline(x=budget.tokens_per_step, line=dict(color="#999", dash="dash"), row=1, col=2)
    figure.update_xaxes(type="log", title_text="tokens per step", row=1, col=2)
    figure.update_yaxes(type="log", row=1, col=2)
    figure.update_yaxes(type="log", row=1, col=1)
    return style_figure(figure, "Training compute per step", "", "FLOPs / ratio")


def minilm_figure(result: CompressionResult) -> go.Figure:
    """MiniLM: cosine to the original embeddings and nearest-neighbour agreement on held-out sentences."""
    if result.encoder is None:
        raise ValueError("this result has no MiniLM study (budget.encoder.enabled=False)")
    summary = result.encoder.summary()
    methods = ["pruned, no retrain", "pruned + retrain", "projected compression"]
    figure = make_subplots(rows=1, cols=2, subplot_titles=["cosine to original", "nearest-neighbour agreement"])
    for col, key in enumerate(("cosine", "neighbours"), start=1):
        values = summary[key]
        figure.add_bar(
            x=methods,
            y=[np.mean(values[m]) for m in methods],
            error_y=dict(
                type="data", array=[np.std(values[m], ddof=1) if len(values[m]) > 1 else 0 for m in methods]
            ),
            marker_color=[COLOURS[m] for m in methods],
            showlegend=False,
            row=1,
            col=col,
        )
    title = (
        f"all-MiniLM-L6-v2, FFN {summary['d_ff']} -> {summary['target_d_ff']} in layers {summary['layers']}, "
        f"{summary['steps']} distillation steps (held-out sentences)"
    )
    return style_figure(figure, title, "", "")


def lr_grid_table(result: CompressionResult) -> pd.DataFrame:
    """The learning-rate grid each method chose its rate from."""
    return result.lr_search.pivot(index="lr", columns="method", values="final_loss")


# ---- playground -----------------------------------------------------------------------------------------------


def _bars(result: CompressionResult, quality, keep, importance, steps) -> go.Figure:
    names, means, errors = [], [], []
    for method in METHODS:
        values = result.final_losses(quality, keep, method, steps, importance)
        if values:
            names.append(f"{method} (n={len(values)})")
            means.append(float(np.mean(values)))
            errors.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
    figure = go.Figure(
        go.Bar(
            x=names, y=means, error_y=dict(type="data", array=errors), marker_color=[COLOURS[m] for m in METHODS]
        )
    )
    figure.update_yaxes(range=[min(means) - 0.1, max(means) + 0.05])
    return style_figure(
        figure, f"Final eval loss after {steps * result.budget.tokens_per_step} tokens", "", "loss"
    )


def _available(result: CompressionResult, quality, keep, importance, steps) -> bool:
    runs = result.runs
    return bool(
        len(
            runs[
                (runs.quality == quality)
                & (runs.keep == keep)
                & (runs.importance == importance)
                & (runs.steps == steps)
                & (runs.method == "projected compression")
            ]
        )
    )


def playground(result: CompressionResult):
    """Keep fraction, importance, base quality and token budget over the precomputed runs; the button trains
    prune + retrain and PC once more (the next seed) at the shown setting, live."""
    budget = result.budget
    tokens = [s * budget.tokens_per_step for s in budget.token_budgets]

    def render(keep, importance, quality, tokens_per_run):
        steps = tokens_per_run // budget.tokens_per_step
        status = f"{QUALITY_LABELS[quality]} base, keep {keep:g}, {importance} importance, {tokens_per_run} tokens"
        if not _available(result, quality, keep, importance, steps):
            status = (
                f"{importance} importance was precomputed only for the long-pretraining base at "
                f"{tokens[0]} tokens; showing activation importance (press the button to train this one)"
            )
            importance = "activation"
        figures = [
            loss_vs_tokens(result, quality, keep, importance, steps),
            _bars(result, quality, keep, importance, steps),
        ]
        return figures, status

    def action(values, report):
        steps = values["tokens_per_run"] // budget.tokens_per_step
        messages = []
        for index, method in enumerate(("pruned + retrain", "projected compression")):
            task = live_task(result, method, values["quality"], values["keep"], values["importance"], steps)

            def relay(fraction, message, index=index):
                report((index + fraction) / 2, message)

            outcome = train_compressed(task, report=relay)
            add_run(result, task, outcome)
            messages.append(f"{method}: {outcome['final_loss']:.3f}")
        return "trained one more seed: " + "; ".join(messages)

    return make_playground(
        render,
        action=action,
        action_label="Train PC and prune+retrain once more",
        keep=slider("keep fraction", list(budget.keep_fractions)),
        importance=dropdown("importance", list(IMPORTANCES)),
        quality=dropdown("base", list(QUALITIES), value="high"),
        tokens_per_run=slider("training tokens", tokens, value=tokens[-1]),
    )


def add_run(result: CompressionResult, task, outcome: dict) -> None:
    """Add one live run to the result's tables, so the playground shows it."""
    budget = result.budget
    row = dict(
        quality=task.quality,
        keep=task.keep,
        importance=task.importance,
        method=task.method,
        steps=task.steps,
        tokens=task.steps * budget.tokens_per_step,
        seed=task.seed,
        lr=task.lr,
        final_loss=outcome["final_loss"],
    )
    result.runs = pd.concat([result.runs, pd.DataFrame([row])], ignore_index=True)
    tokens = [s * budget.tokens_per_step for s in outcome["steps"]]
    key = (task.quality, task.keep, task.importance, task.method, task.steps, task.seed)
    result.curves[key] = (tokens, outcome["val_loss"])
