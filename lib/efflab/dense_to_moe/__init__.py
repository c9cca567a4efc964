"""D2DMoE: dense to dynamic-k mixture-of-experts (Szatkowski, Wójcik, Piórczyński, Scardapane; arXiv 2310.04361).

A trained dense transformer already computes like a mixture of experts: for any one token, most FFN neurons
contribute little. The paper turns that into saved compute in five steps, one module each:

* section 3.1, activation sparsity: the ReLU swap and the squared Hoyer penalty H(a) = ||a||_1^2 / ||a||_2^2,
  ramped in during fine-tuning: :mod:`~efflab.dense_to_moe.sparsity`;
* section 3.2, expert split: balanced clustering of the neurons' normalised input weights into E experts of equal
  size (an exact balanced assignment, ``scipy.optimize.linear_sum_assignment``, on a k-means codebook):
  :mod:`~efflab.dense_to_moe.clustering`; the layer built from it, a permutation of the dense FFN, with a masked
  and a gathered (only selected experts run) implementation: :mod:`~efflab.dense_to_moe.moe_layer`; converting
  a whole model: :mod:`~efflab.dense_to_moe.conversion`;
* section 3.3, routers regressing each expert's output norm ||E_e(x)||_2 (MSE, backbone frozen), and the
  MoEfication baseline's activation-share router: :mod:`~efflab.dense_to_moe.routers`;
* section 3.3, dynamic-k expert selection g_e >= (1 - tau) max_j g_j, and static top-k:
  :mod:`~efflab.dense_to_moe.selection`;
* section 4 (evaluation), cost per token (everything outside the experts, routers included, plus executed
  token-expert pairs): :mod:`~efflab.dense_to_moe.cost`; sweeps: :mod:`~efflab.dense_to_moe.evaluation`;
  wall-clock: :mod:`~efflab.dense_to_moe.timing`;
* the NLP experiments, here on a pretrained sentence encoder (all-MiniLM-L6-v2) with embedding distillation:
  :mod:`~efflab.dense_to_moe.sentence_encoder`;
* notebook 09's experiment (budgets, seeds, paper table, findings): :mod:`~efflab.dense_to_moe.experiment`;
  its figures and playground: :mod:`~efflab.dense_to_moe.plots`.

Not reproduced: converting the attention projections into MLPs (the paper's optional step 0), the Triton kernels.
"""
