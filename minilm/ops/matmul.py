"""Matrix product, batched, with NumPy's broadcasting of the batch dims."""
from __future__ import annotations

import math

from ..function import Function, unbroadcast


class MatMul(Function):
    """Y = A B  (A: (..., n, k), B: (..., k, m), batch dims broadcast)

    ∂L/∂A = G Bᵀ      ∂L/∂B = Aᵀ G      (each summed back to its own batch shape)

    When B is a plain (k, m) matrix -- every Linear layer -- the batch dims of A
    are folded into its rows, so forward and ∂L/∂B are one large GEMM each
    instead of a loop of small ones.
    """

    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        if b.ndim == 2 and a.ndim > 2:
            k, m = b.shape
            return (a.reshape(-1, k) @ b).reshape(a.shape[:-1] + (m,))  # (..., n, k) -> (N, k) -> (..., n, m)
        return a @ b

    def backward(ctx, g):
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        da = db = None
        if na:
            da = unbroadcast(g @ b.swapaxes(-1, -2), a.shape)
        if nb:
            if b.ndim == 2 and a.ndim > 2:
                db = a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])  # (k, N) @ (N, m)
            else:
                db = unbroadcast(a.swapaxes(-1, -2) @ g, b.shape)
        return da, db


class Linear(Function):
    """y = x W + b  for x: (..., k), W: (k, m), b: (m,)  — a Linear layer in one node.

    ∂L/∂x = g Wᵀ      ∂L/∂W = xᵀ g      ∂L/∂b = Σ_rows g
    (rows: every position of every batch, flattened).  The bias is added into
    the product's buffer, so the layer makes one output array, not two.
    """

    def forward(ctx, x, weight, bias=None):
        k, m = weight.shape
        ctx.save_for_backward(x, weight)
        N = math.prod(x.shape[:-1])                                     # rows (also when k = 0: a pruned-away input)
        y = x.reshape(N, k) @ weight                                    # (N, k) @ (k, m) -> (N, m)
        if bias is not None:
            y += bias
        return y.reshape(x.shape[:-1] + (m,))                           # (..., m)

    def backward(ctx, g):
        x, weight = ctx.saved
        nx, nw, nb = ctx.needs_input_grad
        k, m = weight.shape
        N = math.prod(g.shape[:-1])
        g2 = g.reshape(N, m)                                            # (N, m)
        dx = (g2 @ weight.T).reshape(x.shape) if nx else None
        dw = x.reshape(N, k).T @ g2 if nw else None                     # (k, N) @ (N, m)
        db = g2.sum(axis=0) if nb else None
        return dx, dw, db
