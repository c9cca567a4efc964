"""One-shot vs iterative pruning (Janusz et al. 2025, arXiv 2508.13836), notebook 01.

The paper's parts and where they live:

* the regimes (its formal definitions: one-shot, iterative constant and geometric, hybrid): the schedules of
  :mod:`.pruners`, section 1 of its docstring;
* patience-based pruning, which the paper advocates: a fine-tuning rule combined with any schedule
  (``patience`` of :func:`.pruners.prune_and_finetune`, the phases of :mod:`efflab.finetune`);
* criteria and granularity (global / layer-wise magnitude over weights and biases, random; structured L1 / L2
  channel norms): the pruners and their sparsity counters in :mod:`.pruners`;
* the benchmark at matched fine-tuning budgets, the equal-epochs twins of patience runs and the budget study:
  :mod:`.experiment` (budgets, tasks, summary, the paper beside the run, findings);
* the figures and the playground: :mod:`.plots`.
"""
