"""Ops that move values around without arithmetic: their VJPs move g back."""
from __future__ import annotations

from .. import backend
from ..function import Function, get_array_module, unbroadcast


class Reshape(Function):
    """y = x viewed with a new shape (same elements, row-major order)
    ∂L/∂x = g reshaped back to x's shape"""

    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


class Permute(Function):
    """y = x with its axes reordered: y.shape[i] = x.shape[axes[i]]
    ∂L/∂x = g with the inverse permutation applied"""

    def forward(ctx, x, axes):
        ctx.axes = axes
        return x.transpose(axes)

    def backward(ctx, g):
        inverse = [0] * len(ctx.axes)
        for i, a in enumerate(ctx.axes):
            inverse[a] = i
        return (g.transpose(inverse),)


class BroadcastTo(Function):
    """y = x repeated along broadcast dims        ∂L/∂x = unbroadcast(g): the copies' sum"""

    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return get_array_module(x).broadcast_to(x, shape)

    def backward(ctx, g):
        return (unbroadcast(g, ctx.shape),)


def _has_int_array(index):
    """True when ``index`` holds an integer array: positions can repeat (a gather)."""
    parts = index if isinstance(index, tuple) else (index,)
    for p in parts:
        if isinstance(p, list) or (backend.is_array(p) and p.dtype.kind in "iu"):
            return True
    return False


class GetItem(Function):
    """y = x[index]   (slices, ints, None, Ellipsis, boolean masks, integer arrays)

    ∂L/∂x = zeros of x's shape with g added at ``index``: scattered for basic
    indexing, scatter-*added* for an integer-array gather, where one x element
    may appear in y several times.
    """

    def forward(ctx, x, index):
        ctx.index, ctx.shape, ctx.dtype = index, x.shape, x.dtype
        return x[index]

    def backward(ctx, g):
        xp = get_array_module(g)
        dx = xp.zeros(ctx.shape, dtype=ctx.dtype)
        if _has_int_array(ctx.index):
            backend.scatter_add(dx, ctx.index, g)
        else:
            dx[ctx.index] = g
        return (dx,)


class Concat(Function):
    """y = [x₀, x₁, …] joined along ``axis``      ∂L/∂xᵢ = the slice of g where xᵢ sits"""

    def forward(ctx, *xs, axis=0):
        xp = get_array_module(xs[0])
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in xs]
        return xp.concatenate(xs, axis=axis)

    def backward(ctx, g):
        out, start = [], 0
        index = [slice(None)] * g.ndim
        for n, need in zip(ctx.sizes, ctx.needs_input_grad):
            index[ctx.axis] = slice(start, start + n)
            out.append(g[tuple(index)] if need else None)
            start += n
        return tuple(out)


class Stack(Function):
    """y = [x₀, x₁, …] stacked along a new ``axis``    ∂L/∂xᵢ = g taken at position i of that axis"""

    def forward(ctx, *xs, axis=0):
        xp = get_array_module(xs[0])
        ctx.axis = axis
        return xp.stack(xs, axis=axis)

    def backward(ctx, g):
        xp = get_array_module(g)
        return tuple(xp.take(g, i, axis=ctx.axis) if need else None
                     for i, need in enumerate(ctx.needs_input_grad))


class Where(Function):
    """y = c ? a : b  (elementwise, broadcast)
    ∂L/∂a = g ⊙ c,  ∂L/∂b = g ⊙ (1 − c)   (each unbroadcast; c gets no gradient)"""

    def forward(ctx, cond, a, b):
        xp = get_array_module(cond)
        ctx.save_for_backward(cond)
        ctx.shapes = getattr(a, "shape", ()), getattr(b, "shape", ())
        return xp.where(cond, a, b)

    def backward(ctx, g):
        (cond,) = ctx.saved
        xp = get_array_module(g)
        _, na, nb = ctx.needs_input_grad
        zero = xp.zeros((), dtype=g.dtype)
        return (None,
                unbroadcast(xp.where(cond, g, zero), ctx.shapes[0]) if na else None,
                unbroadcast(xp.where(cond, zero, g), ctx.shapes[1]) if nb else None)


class MaskedFill(Function):
    """y = x with ``value`` wherever mask is true (mask broadcasts to x's shape)
    ∂L/∂x = g ⊙ (1 − mask): the filled positions no longer depend on x"""

    def forward(ctx, x, mask, value=0.0):
        xp = get_array_module(x)
        ctx.save_for_backward(mask)
        return xp.where(mask, xp.asarray(value, dtype=x.dtype), x)

    def backward(ctx, g):
        (mask,) = ctx.saved
        xp = get_array_module(g)
        return (xp.where(mask, xp.zeros((), dtype=g.dtype), g), None)


class ToDevice(Function):
    """y = x copied to another device        ∂L/∂x = g copied back"""

    def forward(ctx, x, device):
        ctx.device = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(ctx, g):
        return (backend.to_device(g, ctx.device),)


class AsType(Function):
    """y = x cast to another dtype           ∂L/∂x = g cast back to x's dtype"""

    def forward(ctx, x, dtype):
        ctx.dtype = x.dtype
        return x.astype(dtype)

    def backward(ctx, g):
        return (g.astype(ctx.dtype),)
