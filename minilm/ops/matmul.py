"""Matrix product, batched, with NumPy's broadcasting of the batch dims.

Every product here is a sum over k (and the weight gradients a sum over all
rows), so float16 operands are multiplied in float32 and the result rounded
back (``upcast``/``downcast``, reduce.py), as PyTorch does; float32 and float64
compute as they are.  Operands must share one dtype (minilm.functional checks).
"""
from __future__ import annotations

import math

from ..function import Function, unbroadcast
from .reduce import downcast, upcast


class MatMul(Function):
    """Y = A B  (A: (..., n, k), B: (..., k, m), batch dims broadcast)

    ∂L/∂A = G Bᵀ      ∂L/∂B = Aᵀ G      (each summed back to its own batch shape)

    When B is a plain (k, m) matrix -- every Linear layer -- the batch dims of A
    are folded into its rows, so forward and ∂L/∂B are one large GEMM each
    instead of a loop of small ones.
    """

    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        dtype, a, b = a.dtype, upcast(a), upcast(b)
        if b.ndim == 2 and a.ndim > 2:
            k, m = b.shape
            y = (a.reshape(-1, k) @ b).reshape(a.shape[:-1] + (m,))   # (..., n, k) -> (N, k) -> (..., n, m)
            return downcast(y, dtype)
        return downcast(a @ b, dtype)

    def backward(ctx, g):
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        dtype, a, b, g = g.dtype, upcast(a), upcast(b), upcast(g)
        da = db = None
        if na:
            da = downcast(unbroadcast(g @ b.swapaxes(-1, -2), a.shape), dtype)
        if nb:
            if b.ndim == 2 and a.ndim > 2:
                db = a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])  # (k, N) @ (N, m)
            else:
                db = unbroadcast(a.swapaxes(-1, -2) @ g, b.shape)
            db = downcast(db, dtype)
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
        y = upcast(x).reshape(N, k) @ upcast(weight)                    # (N, k) @ (k, m) -> (N, m)
        if bias is not None:
            y += upcast(bias)
        return downcast(y.reshape(x.shape[:-1] + (m,)), x.dtype)        # (..., m)

    def backward(ctx, g):
        x, weight = ctx.saved
        nx, nw, nb = ctx.needs_input_grad
        k, m = weight.shape
        N = math.prod(g.shape[:-1])
        dtype, x, weight, g = g.dtype, upcast(x), upcast(weight), upcast(g)
        g2 = g.reshape(N, m)                                            # (N, m)
        dx = downcast((g2 @ weight.T).reshape(x.shape), dtype) if nx else None
        dw = downcast(x.reshape(N, k).T @ g2, dtype) if nw else None    # (k, N) @ (N, m)
        db = downcast(g2.sum(axis=0), dtype) if nb else None
        return dx, dw, db
