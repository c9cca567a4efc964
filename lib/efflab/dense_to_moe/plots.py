"""Figures and the playground of notebook 09. Nothing here trains: every figure reads a finished result.

The playground answers each control from the precomputed sweeps (the tau grid of the experiment); only the
sentence box runs something live, one forward pass of the converted MiniLM on one sentence, well under a second.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from IPython.display import HTML
from plotly.subplots import make_subplots

from efflab.ui.plots import PALETTE, style_figure
from efflab.ui.widgets import dropdown, slider
from efflab.ui.widgets import playground as make_playground

CURVE_LABELS = {
    "dynamic_k": "D2DMoE, dynamic-k",
    "top_k": "norm router, static top-k",
    "moefication": "MoEfication (activation router, top-k)",
}
DEFAULT_SENTENCE = "The function returns a new list containing every item of the sequence in sorted order."


def _mean_curve(result, variant: str, curve: str):
    table = result.curve_table().query("variant == @variant and curve == @curve")
    grouped = table.groupby("value", sort=True)
    return grouped.relative_flops.mean(), grouped.accuracy.mean(), grouped.accuracy.min(), grouped.accuracy.max()


def cost_accuracy_figure(result, *, highlight: tuple[str, float] | None = None) -> go.Figure:
    """Accuracy against relative FLOPs (whole model), mean over seeds with the min-max range as error bars."""
    figure = go.Figure()
    main = result.main_variant
    relu_only = [v for v in result.variants() if v.startswith("lambda=0") and "," not in v and v == "lambda=0"]
    lines = [(main, "dynamic_k", "solid"), (main, "top_k", "solid")]
    lines += [(relu_only[0], "moefication", "solid")] if relu_only else []
    lines += [(v, "dynamic_k", "dot") for v in result.variants() if v != main]
    for index, (variant, curve, dash) in enumerate(lines):
        x, y, low, high = _mean_curve(result, variant, curve)
        name = CURVE_LABELS[curve] + ("" if variant == main else f" [{variant}]")
        if curve == "moefication":
            name = CURVE_LABELS[curve] + f" [{variant}]"
        figure.add_scatter(
            x=x.to_numpy(),
            y=y.to_numpy(),
            mode="lines+markers",
            name=name,
            line=dict(color=PALETTE[index % len(PALETTE)], dash=dash),
            error_y=dict(
                type="data",
                symmetric=False,
                array=(high - y).to_numpy(),
                arrayminus=(y - low).to_numpy(),
                thickness=1,
            ),
        )
    dense = np.mean(list(result.dense_accuracy.values()))
    figure.add_scatter(
        x=[1.0],
        y=[dense],
        mode="markers",
        name="dense GELU ViT",
        marker=dict(symbol="star", size=14, color="black"),
    )
    figure.add_hline(y=dense - 0.01, line=dict(dash="dash", color="grey"), annotation_text="dense - 1 point")
    if highlight is not None:
        curve, value = highlight
        variant = main if curve != "moefication" else relu_only[0]
        x, y, _, _ = _mean_curve(result, variant, curve)
        if value in x.index:
            figure.add_scatter(
                x=[x[value]],
                y=[y[value]],
                mode="markers",
                name="operating point",
                marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(width=3, color="black")),
            )
    figure = style_figure(
        figure, "ViT on digits: accuracy vs relative FLOPs", "FLOPs / dense FLOPs", "test accuracy"
    )
    figure.update_layout(
        height=460, legend=dict(orientation="v", y=0.02, yanchor="bottom", x=0.99, xanchor="right")
    )
    return figure


def zero_fraction_figure(result) -> go.Figure:
    """Fraction of exactly-zero FFN activations per layer: after the ReLU swap (before) and after fine-tuning."""
    table = result.zero_table().groupby(["variant", "layer"])[["before", "after"]].mean().reset_index()
    figure = go.Figure()
    first = table[table.variant == result.main_variant]
    figure.add_bar(
        x=[f"layer {layer}" for layer in first.layer],
        y=first.before,
        name="ReLU swap, before fine-tuning",
        marker_color="#bbbbbb",
    )
    for index, variant in enumerate(v for v in result.variants() if v.startswith("lambda") and "," not in v):
        rows = table[table.variant == variant]
        figure.add_bar(
            x=[f"layer {layer}" for layer in rows.layer],
            y=rows.after,
            name=f"after, {variant}",
            marker_color=PALETTE[index % len(PALETTE)],
        )
    figure.update_layout(barmode="group")
    return style_figure(figure, "Zero activations per FFN layer (mean over seeds)", "", "fraction exactly zero")


def k_histogram(result, curve: str, value, seed: int | None = None) -> go.Figure:
    """Per layer, the distribution of the number of experts a token ran (test images, first seed)."""
    entry = result.conversion(result.main_variant, seed)
    point = next(p for p in entry["curves"][curve] if p["value"] == value)
    k = point["k"].numpy()  # (layers, images, tokens)
    n_experts = entry["n_experts"]
    figure = go.Figure()
    bins = np.arange(n_experts + 1) + 1
    for layer in range(k.shape[0]):
        counts = np.bincount(k[layer].ravel(), minlength=n_experts + 1)[1:]
        figure.add_bar(
            x=bins[:-1],
            y=counts / counts.sum(),
            name=f"layer {layer + 1}",
            marker_color=PALETTE[layer % len(PALETTE)],
        )
    figure.update_layout(barmode="group")
    label = f"tau={value:g}" if curve == "dynamic_k" else f"k={value}"
    return style_figure(figure, f"Experts per token ({CURVE_LABELS[curve]}, {label})", "k", "fraction of tokens")


def patch_heatmap(result, curve: str, value, indices, seed: int | None = None) -> go.Figure:
    """Top: chosen test digits; bottom: experts executed per patch, summed over layers."""
    entry = result.conversion(result.main_variant, seed)
    point = next(p for p in entry["curves"][curve] if p["value"] == value)
    k = point["k"].numpy().astype(float).sum(0)  # (images, tokens)
    grid = int(round(np.sqrt(k.shape[1])))
    total = entry["n_experts"] * point["k"].shape[0]
    figure = make_subplots(
        rows=2,
        cols=len(indices),
        vertical_spacing=0.06,
        horizontal_spacing=0.02,
        subplot_titles=[f"label {int(result.test_labels[i])}" for i in indices],
    )
    for column, index in enumerate(indices, start=1):
        image = result.test_images[index, 0].numpy()
        figure.add_heatmap(z=image[::-1], colorscale="Greys", showscale=False, row=1, col=column)
        figure.add_heatmap(
            z=k[index].reshape(grid, grid)[::-1],
            zmin=0,
            zmax=total,
            colorscale="Viridis",
            showscale=column == len(indices),
            colorbar=dict(title="experts"),
            row=2,
            col=column,
        )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor="x")
    label = f"tau={value:g}" if curve == "dynamic_k" else f"k={value}"
    figure.update_layout(
        title=f"Executed experts per patch, all layers ({label}; max {total})",
        height=380,
        template="plotly_white",
        margin=dict(l=20, r=20, t=70, b=20),
    )
    return figure


def timing_figure(result) -> go.Figure:
    """Measured time against the FLOP ratio, both relative to the dense forward."""
    table = result.timing
    figure = go.Figure()
    labels = [f"tau={t:g}" for t in table[table.implementation == "gathered"].tau]
    figure.add_bar(
        x=labels, y=table[table.implementation == "gathered"].flop_ratio, name="FLOPs", marker_color="#bbbbbb"
    )
    for index, implementation in enumerate(("gathered", "masked")):
        rows = table[table.implementation == implementation]
        figure.add_bar(x=labels, y=rows.time_ratio, name=f"time, {implementation}", marker_color=PALETTE[index])
    figure.add_hline(y=1.0, line=dict(dash="dash", color="grey"))
    figure.update_layout(barmode="group")
    title = f"Wall-clock on {table.device.iloc[0]} vs FLOPs (relative to the dense forward)"
    return style_figure(figure, title, "", "ratio to dense")


def minilm_figure(result) -> go.Figure:
    """MiniLM: cosine similarity and neighbour agreement with the dense model against relative FFN FLOPs."""
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=["cosine similarity to dense", "nearest-neighbour agreement"]
    )
    index = 0
    for conversion, curves in result.minilm["curves"].items():
        for rule, points in curves.items():
            x = [p["relative_flops"] for p in points]
            for column, metric in enumerate(("cosine", "neighbour_agreement"), start=1):
                figure.add_scatter(
                    x=x,
                    y=[p[metric] for p in points],
                    mode="lines+markers",
                    name=f"{conversion}, {CURVE_LABELS[rule]}",
                    legendgroup=f"{conversion}{rule}",
                    showlegend=column == 1,
                    line=dict(color=PALETTE[index % len(PALETTE)]),
                    row=1,
                    col=column,
                )
            index += 1
    figure.add_hline(y=0.95, line=dict(dash="dash", color="grey"), row=1, col=1)
    figure.update_xaxes(title_text="FFN FLOPs / dense FFN FLOPs")
    figure.update_layout(
        template="plotly_white",
        height=420,
        title="all-MiniLM-L6-v2 with MoE-fied FFNs",
        legend=dict(orientation="h", y=-0.25),
        margin=dict(l=60, r=20, t=60, b=60),
    )
    return figure


def words_html(words: list[tuple[str, float]], n_experts: int, caption: str = "") -> HTML:
    """The words of a sentence on backgrounds that darken with the number of experts they used."""
    spans = []
    for word, k in words:
        share = min(max(k / n_experts, 0.0), 1.0)
        text_colour = "white" if share > 0.55 else "black"
        spans.append(
            f'<span title="{k:.1f} experts" style="background: rgba(31,119,180,{0.1 + 0.9 * share:.2f}); '
            f'color: {text_colour}; padding: 2px 4px; margin: 1px; border-radius: 3px">{html.escape(word)}</span>'
        )
    note = f"<div style='font-size: 85%; color: #555'>{html.escape(caption)}</div>" if caption else ""
    return HTML("<div style='line-height: 2.0'>" + " ".join(spans) + "</div>" + note)


def matched_k(points_dynamic: list[dict], points_top: list[dict], tau: float):
    """The static k whose cost is closest to dynamic-k's at ``tau``."""
    target = next(p["relative_flops"] for p in points_dynamic if p["value"] == tau)
    return min(points_top, key=lambda p: abs(p["relative_flops"] - target))["value"]


def playground(result, *, sentence: str = DEFAULT_SENTENCE):
    """tau slider and rule dropdown over the precomputed sweeps; for MiniLM a sentence box, coloured per word.

    Under "top_k" the slider picks the static k whose FLOPs are closest to dynamic-k's at that tau, so the two
    rules are compared at (nearly) the same cost.
    """
    import ipywidgets as widgets

    from efflab.dense_to_moe.sentence_encoder import word_experts

    main = result.conversion(result.main_variant)
    indices = _example_indices(result)
    minilm_model = tokenizer = None
    if result.minilm is not None:
        from efflab.models.bert import MiniLMTokenizer

        name = list(result.minilm["models"])[-1]
        minilm_model = result.minilm["models"][name]
        tokenizer = MiniLMTokenizer(max_length=result.budget.minilm_max_length)
        minilm_curves = result.minilm["curves"][name]

    def render(tau, rule, text):
        if rule == "dynamic_k":
            value, status = tau, f"dynamic-k at tau={tau:g}"
        else:
            value = matched_k(main["curves"]["dynamic_k"], main["curves"]["top_k"], tau)
            status = f"static top-k with k={value}: the k closest in FLOPs to dynamic-k at tau={tau:g}"
        point = next(p for p in main["curves"][rule] if p["value"] == value)
        status += (
            f"; ViT (seed {main['seed']}): accuracy {point['accuracy']:.3f} "
            f"at {point['relative_flops']:.0%} of the FLOPs"
        )
        shown = [
            cost_accuracy_figure(result, highlight=(rule, value)),
            k_histogram(result, rule, value),
            patch_heatmap(result, rule, value, indices),
        ]
        if minilm_model is not None:
            if rule == "dynamic_k":
                minilm_value = min(minilm_curves["dynamic_k"], key=lambda p: abs(p["value"] - tau))["value"]
            else:
                minilm_value = matched_k(
                    minilm_curves["dynamic_k"],
                    minilm_curves["top_k"],
                    min(minilm_curves["dynamic_k"], key=lambda p: abs(p["value"] - tau))["value"],
                )
            text = text.strip() or DEFAULT_SENTENCE
            words = word_experts(minilm_model, tokenizer, text, rule, minilm_value)
            label = f"tau={minilm_value:g}" if rule == "dynamic_k" else f"k={minilm_value}"
            n_experts = result.budget.minilm_experts
            shown.append(
                words_html(
                    words,
                    n_experts,
                    f"MiniLM ({name}), {label}: mean experts per word over "
                    f"layers, out of {n_experts}; hover a word for its number",
                )
            )
            if rule == "dynamic_k" and minilm_value != tau:
                status += f"; MiniLM was swept on a coarser grid: showing its nearest tau, {minilm_value:g}"
        return shown, status

    controls = {
        "tau": slider("tau", list(result.budget.taus), value=0.9 if 0.9 in result.budget.taus else None),
        "rule": dropdown("rule", ["dynamic_k", "top_k"]),
        "text": widgets.Text(
            value=sentence, description="sentence", continuous_update=False, layout=widgets.Layout(width="640px")
        ),
    }
    return make_playground(render, **controls)


def _example_indices(result, count: int = 5) -> list[int]:
    """The first test image of ``count`` different digits."""
    labels = result.test_labels.tolist()
    chosen = []
    for digit in range(10):
        if digit in labels and len(chosen) < count:
            chosen.append(labels.index(digit))
    return chosen
