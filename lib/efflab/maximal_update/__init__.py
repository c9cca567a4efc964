"""μP for mixtures of experts (Małaśnicki, Ciebiera, Boruń, Pióro, Ludziejewski, Stefaniak, Krutul, Jaszczur,
Cygan, Adamczewski, Krajewski 2025, "μ-Parameterization for Mixture of Experts", arXiv 2508.09752).

The package is named for the idea, the maximal update parameterization, so that it never shadows microsoft's
``mup`` package, which the tests compare against. Where each part of the paper lives:

* the parameterization (the paper's derivation of μP for MoE: experts as hidden matrices, the router as a new,
  output-like layer; our router row is inferred, see the module) and the SP and simpleP baselines of its Figure 1:
  :mod:`~efflab.maximal_update.parameterization` (init, forward multipliers α_in, α_out, α_router and the
  attention scale, the optimizer's parameter groups and their LRs);
* the model family that is scaled (width, heads, experts and their widths growing together; E and G fixed):
  :mod:`~efflab.maximal_update.model`;
* the feature-learning claim "in both the router and experts", tested as a coordinate check (mean |activation|
  against width over the first steps): :mod:`~efflab.maximal_update.coordinate_check`;
* learning-rate transfer across width, number of experts and granularity (the paper's LR sweeps):
  :mod:`~efflab.maximal_update.transfer`;
* the notebook's budgets, the whole experiment, the paper-vs-run table and the findings:
  :mod:`~efflab.maximal_update.experiment`; its figures and playground: :mod:`~efflab.maximal_update.plots`.
"""
