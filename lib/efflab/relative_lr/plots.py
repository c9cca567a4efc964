"""Figures and the playground of notebook 08 (relative learning-rate schedules).

Every figure reads a finished :class:`~efflab.relative_lr.experiment.Result` (or its summary) and draws; nothing
here trains, except the playground's button, which asks :func:`~efflab.relative_lr.experiment.live_run` for one
more run.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from efflab.relative_lr.experiment import LABELS, PRESETS, Result, live_run
from efflab.relative_lr.groups import GROUPS
from efflab.ui.plots import PALETTE, TEMPLATE, band_plot, style_figure
from efflab.ui.widgets import Playground, dropdown, log_slider

GROUP_COLOURS = {group: PALETTE[i] for i, group in enumerate(GROUPS)}
PRESET_COLOURS = {"uniform": PALETTE[7], "paper": PALETTE[0], "found": PALETTE[1], "live": PALETTE[3]}
MULTIPLIER_RANGE = (0.01, 100.0)  # two factor-5 steps either way of 1


def _finish(figure: go.Figure, title: str, height: int = 380) -> go.Figure:
    figure.update_layout(
        title=title,
        template=TEMPLATE,
        height=height,
        margin=dict(l=60, r=20, t=60, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=1.0, xanchor="right"),
    )
    return figure


def schedule_figure(schedule, groups, *, title: str, reference=None) -> go.Figure:
    """η_g(t) of each group (log scale); ``reference`` (the uniform schedule) as a dashed grey line."""
    figure = go.Figure()
    steps = np.arange(schedule.steps)
    if reference is not None:
        figure.add_scatter(
            x=steps, y=reference.curve("attention"), name="uniform", line=dict(color=PALETTE[7], dash="dash")
        )
    for group in groups:
        figure.add_scatter(x=steps, y=schedule.curve(group), name=group, line=dict(color=GROUP_COLOURS[group]))
    figure.update_yaxes(type="log")
    return style_figure(figure, title, "step", "learning rate")


def lr_curves(result: Result, architecture: str) -> go.Figure:
    """Per-group learning rates of the paper's and the found preset, side by side, over the uniform one."""
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("paper's preset", "found by the search"), shared_yaxes=True
    )
    steps = np.arange(result.budget.steps)
    uniform = result.schedules[(architecture, "uniform")]
    for col, preset in enumerate(("paper", "found"), start=1):
        schedule = result.schedules[(architecture, preset)]
        figure.add_scatter(
            x=steps,
            y=uniform.curve("attention"),
            name="uniform",
            line=dict(color=PALETTE[7], dash="dash"),
            showlegend=col == 1,
            row=1,
            col=col,
        )
        for group in result.groups(architecture):
            figure.add_scatter(
                x=steps,
                y=schedule.curve(group),
                name=group,
                line=dict(color=GROUP_COLOURS[group]),
                showlegend=col == 1,
                row=1,
                col=col,
            )
    figure.update_yaxes(type="log", title_text="learning rate", row=1, col=1)
    figure.update_yaxes(type="log", row=1, col=2)
    figure.update_xaxes(title_text="step")
    return _finish(figure, f"Per-group learning rates, {LABELS[architecture]} (η = {uniform.base_lr:g})")


def sweep_figure(result: Result) -> go.Figure:
    """Final validation loss of the uniform schedule against η, per architecture; the chosen η marked."""
    figure = go.Figure()
    for index, arch in enumerate(result.architectures):
        losses = result.sweep[arch]
        rates = sorted(losses)
        colour = PALETTE[index]
        figure.add_scatter(x=rates, y=[losses[r] for r in rates], name=LABELS[arch], line=dict(color=colour))
        best = result.base_lr[arch]
        figure.add_scatter(
            x=[best],
            y=[losses[best]],
            mode="markers",
            marker=dict(size=12, symbol="star", color=colour),
            name=f"{LABELS[arch]}: η* = {best:g}",
        )
    figure.update_xaxes(type="log")
    return style_figure(figure, "Tuning the uniform baseline", "base learning rate η", "final validation loss")


def loss_curves(result: Result, architecture: str) -> go.Figure:
    """Validation loss against step for the three schedules: mean over seeds with the min-max band."""
    steps, bands = result.loss_bands(architecture)
    return band_plot(
        steps,
        {preset: bands[preset] for preset in PRESETS},
        title=f"Validation loss at equal steps, {LABELS[architecture]}",
        x_title="step",
        y_title="validation loss (nats per byte)",
    )


def speedup_bars(summary: dict) -> go.Figure:
    """Speed-up over uniform (mean ± std over seeds) per preset and architecture; the paper's 23 % as a line."""
    figure = go.Figure()
    archs = list(summary["architectures"])
    for preset in ("paper", "found"):
        values = [summary["architectures"][a]["speedup"][preset] for a in archs]
        figure.add_bar(
            x=[LABELS[a] for a in archs],
            y=[float(np.mean(v)) for v in values],
            error_y=dict(type="data", array=[float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]),
            name=f"{preset} preset",
            marker_color=PRESET_COLOURS[preset],
        )
    figure.add_hline(y=23, line_dash="dot", annotation_text="paper: up to 23 % (MoE)", line_color=PALETTE[3])
    figure.add_hline(y=0, line_color="black", line_width=1)
    figure.update_layout(barmode="group")
    return style_figure(figure, "Steps saved to reach the uniform run's final loss", "", "speed-up (%)")


def update_sizes(result: Result, architecture: str) -> go.Figure:
    """Relative update size ||ΔW||/||W|| per group over training (first seed): uniform solid, paper dashed."""
    figure = go.Figure()
    seed = result.seeds[0]
    for preset, dash in (("uniform", "solid"), ("paper", "dash")):
        updates = result.runs[(architecture, preset, seed)]["updates"]
        if updates is None:
            continue
        for group in result.groups(architecture):
            figure.add_scatter(
                x=updates["steps"],
                y=updates["sizes"][group],
                name=f"{group} ({preset})",
                line=dict(color=GROUP_COLOURS[group], dash=dash),
                legendgroup=group,
            )
    figure.update_yaxes(type="log")
    return style_figure(
        figure, f"Relative update size per group, {LABELS[architecture]}", "step", "||ΔW|| / ||W|| of one step"
    )


def ablation_bars(summary: dict, architecture: str) -> go.Figure:
    """Speed-up of the paper's preset, and of it with one group at a time reset to uniform."""
    values = summary["architectures"][architecture]
    names = ["full preset", *[f"{g} reset" for g in values["ablation"]]]
    series = [values["ablation_reference"], *values["ablation"].values()]
    figure = go.Figure(
        go.Bar(
            x=names,
            y=[float(np.mean(v)) for v in series],
            error_y=dict(type="data", array=[float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in series]),
            marker_color=[PALETTE[0]] + [GROUP_COLOURS[g] for g in values["ablation"]],
        )
    )
    figure.add_hline(y=0, line_color="black", line_width=1)
    return style_figure(
        figure, f"Ablation: one group back to uniform, {LABELS[architecture]}", "", "speed-up over uniform (%)"
    )


def search_trace(result: Result) -> go.Figure:
    """Every proxy run of the search (dots) and the incumbent's loss (line), per architecture."""
    figure = go.Figure()
    for index, arch in enumerate(result.architectures):
        trials = result.searches[arch].trials
        colour = PALETTE[index]
        losses = [t.loss if math.isfinite(t.loss) else None for t in trials]
        labels = [
            "start" if t.knob is None else f"{t.knob} x {t.factor:.3g}" + (" (kept)" if t.accepted else "")
            for t in trials
        ]
        figure.add_scatter(
            x=list(range(len(trials))),
            y=losses,
            mode="markers",
            name=f"{LABELS[arch]} trials",
            marker=dict(color=colour, size=6, opacity=0.6),
            text=labels,
            hovertemplate="%{text}: %{y:.4f}<extra></extra>",
        )
        best, incumbent = math.inf, []
        for trial in trials:
            best = min(best, trial.loss)
            incumbent.append(best if math.isfinite(best) else None)
        figure.add_scatter(
            x=list(range(len(trials))), y=incumbent, name=f"{LABELS[arch]} incumbent", line=dict(color=colour)
        )
    return style_figure(figure, "Local search on the proxy", "evaluation", "proxy validation loss")


def transfer_bars(summary: dict) -> go.Figure | None:
    """Speed-ups on the larger model (full mode), beside the proxy-size ones; None without a transfer study."""
    transfer = summary.get("transfer")
    if not transfer:
        return None
    figure = go.Figure()
    archs = list(transfer["architectures"])
    for preset in ("paper", "found"):
        for size, source in (
            ("proxy size", summary["architectures"]),
            ("larger model", transfer["architectures"]),
        ):
            values = [source[a]["speedup"][preset] for a in archs]
            figure.add_bar(
                x=[LABELS[a] for a in archs],
                y=[float(np.mean(v)) for v in values],
                name=f"{preset}, {size}",
                marker_color=PRESET_COLOURS[preset],
                opacity=1.0 if size == "larger model" else 0.5,
            )
    ratio = min(v["size_ratio"] for v in transfer["architectures"].values())
    figure.update_layout(barmode="group")
    return style_figure(figure, f"Reusing the multipliers on a model {ratio:.0f}x larger", "", "speed-up (%)")


# ---------------------------------------------------------------------------------------------- playground


class SchedulePlayground(Playground):
    """A playground whose preset and architecture controls set the multiplier sliders."""

    def __init__(self, result: Result, render, controls, action):
        self.result = result
        self._holding = False
        super().__init__(render, controls, action=action, action_label="Train this schedule")

    def apply_preset(self) -> None:
        """Put the chosen preset's multipliers (and the architecture's tuned η) into the sliders."""
        arch, preset = self.controls["architecture"].value, self.controls["preset"].value
        multipliers = self.result.multipliers(arch, preset)
        self._holding = True
        try:
            self.controls["base_lr"].value = self.result.schedules[(arch, preset)].base_lr
            for group in GROUPS:
                start, end = multipliers.get(group, (1.0, 1.0))
                self.controls[f"{group}_start"].value = start
                self.controls[f"{group}_end"].value = end
        finally:
            self._holding = False

    def _on_change(self, change) -> None:
        if self._holding:
            return
        if change.owner in (self.controls["architecture"], self.controls["preset"]):
            self.apply_preset()
        self.refresh()


def _close(a: float, b: float) -> bool:
    return abs(math.log(a) - math.log(b)) < 1e-6


def playground(result: Result) -> SchedulePlayground:
    """Sliders for s_g, e_g and η; presets; the schedule drawn at once; a button trains it and compares."""
    live: dict = {}
    rates = list(result.base_lr.values())
    low, high = MULTIPLIER_RANGE

    def settings(values):
        multipliers = {
            g: (values[f"{g}_start"], values[f"{g}_end"])
            for g in GROUPS
            if not (_close(values[f"{g}_start"], 1.0) and _close(values[f"{g}_end"], 1.0))
        }
        uniform = result.schedules[(values["architecture"], "uniform")]
        return replace(uniform, base_lr=values["base_lr"]).with_multipliers(multipliers)

    def matching_preset(arch, schedule):
        for preset in PRESETS:
            stored = result.schedules[(arch, preset)]
            same = _close(stored.base_lr, schedule.base_lr) and all(
                _close(a, b)
                for g in GROUPS
                for a, b in zip(stored.multiplier(g), schedule.multiplier(g), strict=True)
            )
            if same:
                return preset
        return None

    def render(architecture, preset, base_lr, **multipliers):
        values = {"architecture": architecture, "base_lr": base_lr, **multipliers}
        schedule = settings(values)
        groups = result.groups(architecture)
        uniform = result.schedules[(architecture, "uniform")]
        lr_figure = schedule_figure(
            schedule, groups, title=f"The schedule you set ({LABELS[architecture]})", reference=uniform
        )
        seed = result.seeds[0]
        stored = result.runs[(architecture, "uniform", seed)]
        loss_figure = go.Figure()
        loss_figure.add_scatter(
            x=stored["eval_steps"], y=stored["val_loss"], name="uniform (stored)", line=dict(color=PALETTE[7])
        )
        match = matching_preset(architecture, schedule)
        notes = []
        if match not in (None, "uniform"):
            run = result.runs[(architecture, match, seed)]
            loss_figure.add_scatter(
                x=run["eval_steps"],
                y=run["val_loss"],
                name=f"{match} (stored)",
                line=dict(color=PRESET_COLOURS[match]),
            )
            notes.append(f"these settings are the {match} preset: its stored run (seed {seed}) is drawn")
        if schedule in live:
            run = live[schedule]
            loss_figure.add_scatter(
                x=run["eval_steps"], y=run["val_loss"], name="your run", line=dict(color=PRESET_COLOURS["live"])
            )
            notes.append(f"your run of these settings: speed-up {run['speedup']:+.1f} % over uniform")
        elif match is None:
            notes.append("custom settings: press the button to train them and compare with the stored uniform run")
        unused = [g for g in GROUPS if g not in groups and schedule.multiplier(g) != (1.0, 1.0)]
        if unused:
            notes.append(f"{', '.join(unused)}: no such parameters in the {LABELS[architecture]} model, no effect")
        ends = ", ".join(f"{g} {schedule.peak_lr(g):.2g} → {schedule.final_lr(g):.2g}" for g in groups)
        notes.append(f"peak → end: {ends}")
        style_figure(loss_figure, "Validation loss", "step", "validation loss")
        return [lr_figure, loss_figure], "; ".join(notes)

    def action(values, report):
        schedule = settings(values)
        outcome = live_run(result, values["architecture"], schedule.as_dict(), schedule.base_lr, report)
        live[schedule] = outcome
        return f"trained in {outcome['seconds']:.1f} s: speed-up {outcome['speedup']:+.1f} % over uniform"

    controls = {
        "architecture": dropdown("architecture", result.architectures, value=result.architectures[-1]),
        "preset": dropdown("preset", PRESETS, value="paper"),
        "base_lr": log_slider(
            "base_lr", low=min(rates) / 10, high=max(rates) * 10, value=rates[-1], description="η"
        ),
    }
    for group in GROUPS:
        controls[f"{group}_start"] = log_slider(
            f"{group}_start", low=low, high=high, value=1.0, description=f"s {group}"
        )
        controls[f"{group}_end"] = log_slider(
            f"{group}_end", low=low, high=high, value=1.0, description=f"e {group}"
        )
    built = SchedulePlayground(result, render, controls, action)
    built.apply_preset()
    built.refresh()
    return built
