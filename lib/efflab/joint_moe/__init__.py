"""Joint MoE scaling laws: compute- and memory-optimal expert counts (arXiv 2502.05172), notebook 06.

- :mod:`.law`: the joint law L(N_act, D, E), compute- and memory-constrained optima.
- :mod:`.experiment`: the grid over expert counts (through :mod:`efflab.lm_grid`), the fit.
- :mod:`.plots`: the figures and the playground.
"""
