"""Function: one differentiable op, its forward and its derivative side by side.

A Function subclass writes

    def forward(ctx, *arrays, **params) -> array       # y = f(x, ...)
    def backward(ctx, grad) -> tuple of arrays          # the vector-Jacobian product

``forward`` sees backend arrays (NumPy, CuPy or strict; use ``xp =
get_array_module(x)``), never Tensors.  ``backward`` receives g = ∂L/∂y and
returns ∂L/∂x = gᵀ ∂y/∂x for each positional input, in order, or None where an
input needs no gradient (``ctx.needs_input_grad[i]`` says which do).

``Function.apply(*inputs, **params)`` runs the forward and, when a gradient is
needed, records the instance as the node that made the output: the instance
*is* the context (``ctx``) that carries what backward needs.
"""
from __future__ import annotations

from .backend import device_of, get_array_module
# minilm/__init__ imports tensor first, and tensor defines these before it imports the ops.
from .tensor import Tensor, _state


class Function:
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(ctx, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    def save_for_backward(ctx, *arrays):
        ctx.saved = arrays

    def release(ctx):
        """Free what the forward saved (called after backward unless retain_graph)."""
        ctx.__dict__.clear()  # saved arrays, parents: the graph behind this node goes
        ctx.parents = ()
        ctx.freed = True

    @classmethod
    def apply(cls, *inputs, **params):
        ctx = cls.__new__(cls)
        ctx.freed = False
        ctx.saved = ()
        arrays, needs = [], []
        first = None
        for x in inputs:
            if isinstance(x, Tensor):
                if first is None:
                    first = x
                elif type(x.data) is not type(first.data) and x.device != first.device:
                    _device_error(cls, inputs, first, x)
                arrays.append(x.data)
                needs.append(x.requires_grad)
            else:
                arrays.append(x)
                needs.append(False)
        requires_grad = _state.grad_enabled and True in needs
        ctx.needs_input_grad = tuple(needs) if requires_grad else (False,) * len(needs)
        out = ctx.forward(*arrays, **params)
        if requires_grad:
            ctx.parents = inputs
            return Tensor._make(out, True, ctx)
        return Tensor._make(out, False, None)


def _device_error(cls, inputs, a, b):
    i, j = next(k for k, t in enumerate(inputs) if t is a), next(k for k, t in enumerate(inputs) if t is b)
    raise RuntimeError(
        f"{cls.__name__}: inputs are on different devices: input {i} (shape {a.shape}) is on "
        f"{a.device!r}, input {j} (shape {b.shape}) is on {b.device!r}; move one with .to(device) first")


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the VJP of broadcasting.

    If x of shape ``shape`` was broadcast to grad.shape, every copy of x[i]
    contributed to the loss, so ∂L/∂x[i] is the sum of g over those copies:
    sum over the leading dims that broadcasting added, and over each dim where
    x had size 1.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)  # drop the leading dims: (1, ..., 1, *shape) -> shape


__all__ = ["Function", "unbroadcast", "get_array_module", "device_of"]
