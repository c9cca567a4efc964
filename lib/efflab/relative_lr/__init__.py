"""Decoupled relative learning-rate schedules (Ludziejewski et al. 2025, arXiv 2507.03526), at toy scale.

The paper gives each component of a Transformer its own learning-rate schedule, as two numbers relative to one
tuned baseline: where the component's rate peaks (s_g) and where it ends (e_g), on a warmup-and-cosine shape
that all components share. Ten numbers for an MoE, found by a multiplicative local search on a small model,
make training up to 23 % faster and carry over to models up to 27x larger (abstract).

* Section 3, the components and their parameter names: :mod:`~efflab.relative_lr.groups` (``RULES``,
  :func:`~efflab.relative_lr.groups.partition`, first match wins, the rest at 1);
* Section 3, the schedule η_g(t) with its start and end multipliers, and the published presets:
  :mod:`~efflab.relative_lr.schedule` (:class:`~efflab.relative_lr.schedule.RelativeSchedule`, ``PAPER_MOE``,
  ``PAPER_DENSE``);
* Section 4, the coordinate-wise multiplicative local search (factors 0.2, 2/3, 3/2, 5):
  :mod:`~efflab.relative_lr.search` (:class:`~efflab.relative_lr.search.LocalSearch`);
* Figure 1's motivation (per-component update sizes) and the speed-up at equal steps:
  :mod:`~efflab.relative_lr.measures`;
* the notebook's study (η sweep, search on a proxy, comparison over seeds, ablation, transfer) and its
  paper-vs-run table and findings: :mod:`~efflab.relative_lr.experiment`;
* figures and the playground: :mod:`~efflab.relative_lr.plots`.

Where the notes had to fill a gap, the code says *inferred*: the speed-up's exact definition and the use of the
proxy's validation loss (the authors score the mean training loss of the last 100 steps).
"""
