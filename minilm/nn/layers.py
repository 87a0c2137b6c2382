"""Layers: Linear, Embedding, LayerNorm, Dropout, GELU."""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..tensor import Generator, default_generator
from . import init
from .module import Module, Parameter


def _empty(*shape):
    return np.zeros(shape, dtype=np.float32)


class Linear(Module):
    """y = x W + b with W of shape (in_features, out_features): the row convention.

    Tokens are rows (x: (..., in)), as in the document's H W₁ and as GPT-2's
    Conv1D stores its weights, so GPT-2 checkpoints load without transposes.
    (PyTorch's nn.Linear stores Wᵀ, shape (out, in).)  Initialised U[−1/√in, 1/√in].

    ``in_features = 0`` is allowed (a layer whose every input was pruned away): W is (0, out),
    x W is zeros, so y = b; its bias starts at 0.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 generator: Generator | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Linear: sizes must be non-negative, got ({in_features}, {out_features})")
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = init.uniform_(Parameter(_empty(in_features, out_features)), -bound, bound, generator)
        self.bias = init.uniform_(Parameter(_empty(out_features)), -bound, bound, generator) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)   # (..., in) -> (..., out)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: row ids[i] of W (num_embeddings, embedding_dim).  Initialised N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, generator: Generator | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = init.normal_(Parameter(_empty(num_embeddings, embedding_dim)), 0.0, 1.0, generator)

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """(x − μ)/√(σ² + ε) ⊙ weight + bias over the last axis; weight 1, bias 0 at start."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim, dtype=np.float32))
        self.bias = Parameter(np.zeros(dim, dtype=np.float32)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability p while training; identity in eval()."""

    def __init__(self, p: float = 0.1, generator: Generator | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.generator or default_generator)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    """x·Φ(x) (approximate="none") or GPT-2's tanh form (approximate="tanh")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"
