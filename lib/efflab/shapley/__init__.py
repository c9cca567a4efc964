"""Shapley-value channel pruning (Adamczewski, Li & Van Gool 2024, arXiv 2407.15875), notebook 02.

The paper's parts and where they live, all in :mod:`.values` unless named otherwise:

* the per-layer game (channels as players, accuracy after zeroing as the payoff) and its batched evaluation:
  :class:`.values.ChannelGame`;
* the Shapley value (eq. 1) and the two corners it unifies, leave-one-out and oracle pruning:
  :func:`.values.exact_shapley`, :func:`.values.leave_one_out`, :func:`.values.oracle_sets`;
* the approximations: partial Shapley in the removing and the adding direction, permutation sampling, weighted
  least squares (KernelSHAP) and the plain regression of the authors' code;
* the benchmark: the Oracle rank (:func:`.values.oracle_rank`; our construction, inferred) and the authors'
  accuracy of removal and of adding (:func:`.values.oracle_accuracy`);
* the study over layers, estimators, budgets and seeds, pruning one layer and the whole network (fine-tuning from
  :mod:`efflab.finetune`): :mod:`.experiment`;
* the figures and the playground: :mod:`.plots`.
"""
