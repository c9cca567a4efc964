"""Scaling laws for fine-grained mixtures of experts (Krajewski et al. 2024, arXiv 2402.07871), notebook 05.

- :mod:`.law`: the law L(N, D, G) (Eq. 6), its FLOP accounting with the router (Eq. 10), compute optima.
- :mod:`.experiment`: the grid of dense and MoE byte LMs at several granularities (through
  :mod:`efflab.lm_grid`), the fits (:mod:`efflab.law_fitting`).
- :mod:`.plots`: the figures and the playground.
"""
