"""Fused ops of neural networks: each is one node with a hand-derived VJP.

Composing them from exp/sum/div would give the same numbers but store more
arrays and walk more nodes; fusing them is also where numerical stability is
decided (subtract the max before exp).  float16 inputs compute in float32 and
round the result back (``upcast``/``downcast``, see reduce.py); what the
forward saves for the backward stays in the input's dtype, except the per-row
statistics (1/σ), which are small and stay in float32.
"""
from __future__ import annotations

from .. import backend
from ..function import Function, get_array_module
from .reduce import _normalize_axis, accumulation_dtype, downcast, upcast


def _stable_softmax(x, axis):
    xp = get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    e = xp.exp(x - xp.where(xp.isfinite(m), m, 0))
    return e / e.sum(axis=axis, keepdims=True)


class Softmax(Function):
    """yᵢ = e^{xᵢ − m} / Σⱼ e^{xⱼ − m}   (m = maxⱼ xⱼ: the same value, no overflow)

    ∂L/∂x = y ⊙ (g − Σⱼ gⱼ yⱼ)    (the Jacobian diag(y) − y yᵀ applied to g)
    """

    def forward(ctx, x, axis=-1):
        ctx.axis = axis
        y = downcast(_stable_softmax(upcast(x), axis), x.dtype)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved
        g, ya = upcast(g), upcast(y)
        return (downcast(ya * (g - (g * ya).sum(axis=ctx.axis, keepdims=True)), y.dtype),)


class LogSoftmax(Function):
    """yᵢ = xᵢ − log Σⱼ e^{xⱼ}  = (xᵢ − m) − log Σⱼ e^{xⱼ − m}

    ∂L/∂x = g − softmax(x) ⊙ Σⱼ gⱼ
    """

    def forward(ctx, x, axis=-1):
        xp = get_array_module(x)
        ctx.axis = axis
        xa = upcast(x)
        m = xa.max(axis=axis, keepdims=True)
        shifted = xa - xp.where(xp.isfinite(m), m, 0)
        y = downcast(shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True)), x.dtype)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved
        xp = get_array_module(y)
        g = upcast(g)
        return (downcast(g - xp.exp(upcast(y)) * g.sum(axis=ctx.axis, keepdims=True), y.dtype),)


class LayerNorm(Function):
    """Normalise over the last axis, then scale and shift (Ba et al. 2016).

        μ = mean(x),  σ = √(var(x) + ε),  x̂ = (x − μ)/σ,  y = x̂ ⊙ w + b

    With d the size of the last axis and ĝ = g ⊙ w:
        ∂L/∂x = (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)) / σ
        ∂L/∂w = Σ_rows g ⊙ x̂,      ∂L/∂b = Σ_rows g
    (the two means remove the directions that μ and σ cancel out of x).
    Evaluated in place where it can be, and with einsum for the products that
    are only summed, so no full-size temporary is made just to be reduced.
    """

    def forward(ctx, x, weight=None, bias=None, eps=1e-5):
        xp = get_array_module(x)
        d, dtype = x.shape[-1], x.dtype
        x = upcast(x)
        xhat = x - x.mean(axis=-1, keepdims=True)                  # x − μ
        var = xp.einsum("...i,...i->...", xhat, xhat)[..., None] / d  # (..., 1), no (x − μ)² array
        inv_sigma = 1.0 / xp.sqrt(var + eps)
        xhat *= inv_sigma                                           # x̂, in place
        saved = downcast(xhat, dtype)
        ctx.save_for_backward(saved, inv_sigma, weight)
        if weight is None and bias is None:
            return saved.copy()
        y = xhat * upcast(weight) if weight is not None else xhat.copy()
        if bias is not None:
            y += upcast(bias)
        return downcast(y, dtype)

    def backward(ctx, g):
        xp = get_array_module(g)
        xhat, inv_sigma, weight = ctx.saved
        nx, nw, nb = ctx.needs_input_grad
        d, dtype = g.shape[-1], g.dtype
        g, xhat = upcast(g), upcast(xhat)
        dx = dw = db = None
        if nx:
            gh = g * upcast(weight) if weight is not None else g.copy()    # ĝ
            proj = xp.einsum("...i,...i->...", gh, xhat)[..., None] / d   # mean(ĝ ⊙ x̂), (..., 1)
            gh -= gh.mean(axis=-1, keepdims=True)                   # ĝ − mean(ĝ)
            gh -= xhat * proj                                       # − x̂ ⊙ mean(ĝ ⊙ x̂)
            gh *= inv_sigma                                         # / σ
            dx = downcast(gh, dtype)
        if nw or nb:
            g2, x2 = g.reshape(-1, d), xhat.reshape(-1, d)         # (rows, d)
            if nw:
                dw = downcast(xp.einsum("ri,ri->i", g2, x2), dtype)  # Σ_rows g ⊙ x̂
            if nb:
                db = downcast(g2.sum(axis=0), dtype)
        return dx, dw, db


class Dropout(Function):
    """y = x ⊙ m / (1 − p),  mᵢ ~ Bernoulli(1 − p)     ∂L/∂x = g ⊙ m / (1 − p)

    Dividing by 1 − p keeps E[y] = x, so nothing changes at evaluation time.
    """

    def forward(ctx, x, p, rng):
        keep = rng.uniform(x.shape, x.dtype) >= p
        scale = keep * (1.0 / (1.0 - p)) if p < 1 else keep * 0.0
        scale = scale.astype(x.dtype)
        ctx.save_for_backward(scale)
        return x * scale

    def backward(ctx, g):
        (scale,) = ctx.saved
        return (g * scale,)


class Embedding(Function):
    """y[..., :] = W[ids[...], :]      (a row lookup: one-hot(ids) @ W without the one-hot)

    ∂L/∂W = Σ over positions with ids = v of g  -- a scatter-add into row v;
    ids get no gradient.
    """

    def forward(ctx, ids, weight):
        ctx.save_for_backward(ids)
        ctx.wshape, ctx.wdtype = weight.shape, weight.dtype
        return weight[ids]  # (*ids.shape, d)

    def backward(ctx, g):
        (ids,) = ctx.saved
        xp = get_array_module(g)
        dW = xp.zeros(ctx.wshape, dtype=accumulation_dtype(ctx.wdtype))  # float16 rows add up in float32
        d = ctx.wshape[1]
        backend.scatter_add(dW, ids.reshape(-1), upcast(g).reshape(-1, d))  # (N,) ids, (N, d) rows
        return (None, downcast(dW, ctx.wdtype))


class CrossEntropy(Function):
    """Mean (or sum) negative log-likelihood of integer targets under softmax(logits).

    For one row z with target t:   ℓ = −log softmax(z)_t = logsumexp(z) − z_t
        ∂ℓ/∂z = softmax(z) − onehot(t)
    Rows whose target is ``ignore_index`` contribute nothing; with reduction
    "mean" the sum is divided by the number of the other rows, n.  So
        ∂L/∂z = g ⊙ (softmax(z) − onehot(t)) / n   on counted rows, 0 elsewhere.
    """

    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        xp = get_array_module(logits)
        C, dtype = logits.shape[-1], logits.dtype
        z = upcast(logits.reshape(-1, C))               # (..., C) -> (N, C)
        t = targets.reshape(-1)                         # (...)    -> (N,)
        valid = t != ignore_index
        t_safe = xp.where(valid, t, 0)
        m = z.max(axis=-1, keepdims=True)
        shifted = z - m
        lse = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
        logp = shifted - lse                            # (N, C) log-softmax
        rows = xp.arange(z.shape[0])
        nll = -logp[rows, t_safe] * valid               # (N,)
        ctx.save_for_backward(downcast(logp, dtype), t_safe, valid)
        ctx.shape, ctx.reduction = logits.shape, reduction
        if reduction == "none":
            return downcast(nll.reshape(targets.shape), dtype)
        if reduction == "sum":
            return downcast(nll.sum(), dtype)
        count = valid.sum().astype(z.dtype)             # float32 for float16: a count past 2048 is exact
        ctx.count = xp.maximum(count, 1)
        # every target ignored: 0/0 = nan, as in PyTorch (without NumPy's warning)
        return xp.where(count > 0, nll.sum() / ctx.count, xp.nan).astype(dtype)

    def backward(ctx, g):
        logp, t_safe, valid = ctx.saved
        xp = get_array_module(logp)
        g = upcast(g)
        dz = xp.exp(upcast(logp))                        # softmax, (N, C)
        rows = xp.arange(dz.shape[0])
        dz[rows, t_safe] -= 1
        if ctx.reduction == "none":
            w = g.reshape(-1) * valid                    # (...) -> (N,)
        elif ctx.reduction == "sum":
            w = g * valid
        else:
            w = g * valid / ctx.count
        dz *= w.astype(dz.dtype)[:, None]
        return (downcast(dz.reshape(ctx.shape), logp.dtype), None)
