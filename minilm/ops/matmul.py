"""Matrix product, batched, with NumPy's broadcasting of the batch dims."""
from __future__ import annotations

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
