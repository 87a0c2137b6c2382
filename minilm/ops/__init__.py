"""The differentiable ops, one family per file.

Each op is a :class:`minilm.function.Function`: ``forward`` computes on backend
arrays, ``backward`` returns the vector-Jacobian product, and the docstring
writes both as math.  Users call them through :mod:`minilm.functional`.
"""
