"""Projected compression (Stefaniak et al. 2025, arXiv 2506.22255): shrink a trained Transformer by training
projections of its frozen weights, then merging them into an ordinary smaller model.

The paper's pieces, in the order a compression run uses them (method details follow the authors' public code;
the paper body was not available, see the notebook):

* the importance scores and the top-k choice of kept channels for the residual width ``d`` and each FFN's width
  ``f`` (activation "Minitron-style", magnitude, random): :mod:`~efflab.projected_compression.importance`;
* where each compressed tensor comes from (which side of which matrix is projected):
  :mod:`~efflab.projected_compression.layout`;
* the baseline, hard pruning by slicing (then retraining all parameters):
  :mod:`~efflab.projected_compression.hard_pruning`;
* the method, ``W' = P_out W P_in + A`` with the base frozen, selection-initialised projections and ``A = 0``,
  trained on the language-model loss and merged into a plain TinyLM:
  :mod:`~efflab.projected_compression.projection`;
* the cost claim, per-token compute of the compressed model plus per-step projection products:
  :mod:`~efflab.projected_compression.cost`;
* a real pretrained model, all-MiniLM-L6-v2's FFN width compressed under sentence-embedding distillation:
  :mod:`~efflab.projected_compression.sentence_encoder`;
* the notebook's study (two base qualities, keep fractions, four methods, token budgets, seeds) and its
  paper-vs-run table and findings: :mod:`~efflab.projected_compression.experiment`; figures and the playground:
  :mod:`~efflab.projected_compression.plots`.
"""
