"""How the course works, on a tiny byte-level language model (notebook 00).

- :mod:`.experiment`: the budgets of the tiny LM, its training and the sampling-temperature table.
"""
