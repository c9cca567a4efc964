"""Shapley-value channel pruning (arXiv 2407.15875), notebook 02.

- :mod:`.values`: the channel game, exact Shapley values and their approximations, oracle sets.
- :mod:`.experiment`: the study over layers, estimators and budgets; fine-tuning from :mod:`efflab.finetune`.
- :mod:`.plots`: the figures and the playground.
"""
