"""Reductions over axes.  Their VJPs broadcast g back over the reduced axes.

float16 reduces in float32, as PyTorch does: a float16 sum overflows past 65504,
and past 2048 adding 1 no longer changes it.  Every op that sums (here, the
fused ops in nn.py, matmul, attention) computes on ``upcast(x)`` and hands back
``downcast(y, x.dtype)``, forward and backward alike; for every other dtype both
are the identity, so float32 and float64 compute exactly as they always did.
"""
from __future__ import annotations

import math

import numpy as np

from ..function import Function, get_array_module


def accumulation_dtype(dtype):
    """The dtype a reduction over ``dtype`` accumulates in: float32 for float16, ``dtype`` itself otherwise."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def upcast(x):
    """x in its accumulation dtype: a float32 copy of a float16 array, x itself (no copy) otherwise."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def downcast(y, dtype):
    """A result computed in ``accumulation_dtype(dtype)`` back in ``dtype`` (the identity unless float16)."""
    return y.astype(dtype) if dtype == np.float16 and y.dtype != dtype else y


def _normalize_axis(axis, ndim):
    """axis (None, int or tuple; negative allowed) -> a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis}")
    return tuple(sorted(out))


def _expand(g, shape, axes, keepdims):
    """Undo a reduction's shape: put the reduced axes back (size 1) so g broadcasts to shape."""
    if not keepdims:
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))  # (.., 1, ..)
    return g


class Sum(Function):
    """y = Σ_{i ∈ axes} x_i          ∂L/∂x = g broadcast over the summed axes"""

    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = _normalize_axis(axis, x.ndim)
        ctx.shape, ctx.keepdims = x.shape, keepdims
        return downcast(upcast(x).sum(axis=ctx.axes, keepdims=keepdims), x.dtype)

    def backward(ctx, g):
        xp = get_array_module(g)
        return (xp.broadcast_to(_expand(g, ctx.shape, ctx.axes, ctx.keepdims), ctx.shape),)


class Mean(Function):
    """y = (1/n) Σ_{i ∈ axes} x_i   (n elements reduced)      ∂L/∂x = g / n broadcast over the axes

    One op rather than sum then scale, so that a float16 mean divides before it
    rounds back to float16: the mean of values near 1000 is representable even
    where their sum (past 65504) is not.
    """

    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = _normalize_axis(axis, x.ndim)
        ctx.shape, ctx.keepdims = x.shape, keepdims
        ctx.scale = 1.0 / math.prod(x.shape[a] for a in ctx.axes)
        return downcast(upcast(x).sum(axis=ctx.axes, keepdims=keepdims) * ctx.scale, x.dtype)

    def backward(ctx, g):
        xp = get_array_module(g)
        return (xp.broadcast_to(_expand(g * ctx.scale, ctx.shape, ctx.axes, ctx.keepdims), ctx.shape),)


class Max(Function):
    """y = max_{i ∈ axes} x_i

    ∂L/∂x_i = g ⊙ [x_i = y] / (number of maxima): ties share the gradient
    equally, which is the subgradient PyTorch's ``amax`` uses too.
    """

    def forward(ctx, x, axis=None, keepdims=False):
        if x.size == 0:
            raise ValueError(f"max() of an empty tensor of shape {x.shape}")
        axes = _normalize_axis(axis, x.ndim)
        y = x.max(axis=axes, keepdims=True)
        mask = x == y
        ctx.save_for_backward(mask)
        ctx.axes, ctx.shape, ctx.keepdims = axes, x.shape, keepdims
        return y if keepdims else y.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))

    def backward(ctx, g):
        (mask,) = ctx.saved
        count = mask.sum(axis=ctx.axes, keepdims=True)
        return (mask * (_expand(g, ctx.shape, ctx.axes, ctx.keepdims) / count),)


class LogSumExp(Function):
    """y = log Σ_i e^{x_i} = m + log Σ_i e^{x_i − m},  m = max_i x_i  (stable)

    ∂L/∂x_i = g ⊙ e^{x_i − y} = g ⊙ softmax(x)_i
    """

    def forward(ctx, x, axis=-1, keepdims=False):
        xp = get_array_module(x)
        axes = _normalize_axis(axis, x.ndim)
        xa = upcast(x)
        m = xa.max(axis=axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)  # a row of -inf stays -inf, not nan
        y = downcast(m + xp.log(xp.exp(xa - m).sum(axis=axes, keepdims=True)), x.dtype)
        ctx.save_for_backward(x, y)
        ctx.axes, ctx.shape, ctx.keepdims = axes, x.shape, keepdims
        return y if keepdims else y.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))

    def backward(ctx, g):
        x, y = ctx.saved
        xp = get_array_module(x)
        dx = _expand(upcast(g), ctx.shape, ctx.axes, ctx.keepdims) * xp.exp(upcast(x) - upcast(y))
        return (downcast(dx, x.dtype),)
