"""Training regimes of early-exit networks (arXiv 2407.14320), notebook 04.

- :mod:`.exits`: exit heads, the disjoint, joint and mixed regimes, exit rules and cost accounting.
- :mod:`.experiment`: the study over regimes and seeds, its quick and full budgets.
- :mod:`.plots`: the figures and the playground.
"""
