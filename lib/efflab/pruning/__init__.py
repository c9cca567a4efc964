"""One-shot vs iterative pruning (Janusz et al. 2025, arXiv 2508.13836), notebook 01.

- :mod:`.pruners`: the schedules (one-shot, constant, geometric, hybrid), scores, unstructured and structured
  pruners with their sparsity counters, and one whole pruning run (fine-tuning comes from :mod:`efflab.finetune`).
- :mod:`.experiment`: the sweep over regimes, ratios and criteria, its quick and full budgets, crossovers.
- :mod:`.plots`: the figures and the playground.
"""
