"""Elementwise ops.  Binary ops broadcast; their VJPs unbroadcast.

Notation: g = ∂L/∂y is the incoming gradient, of y's shape; ⊙ is the
elementwise product; every result ∂L/∂x is summed back to x's shape
(`unbroadcast`) when x was broadcast.  That sum is the only reduction here,
so it is the only place float16 is lifted to float32 (see reduce.py).  The
operands arrive with their dtypes already promoted (minilm.functional).
"""
from __future__ import annotations

import math

from .. import strict
from ..backend import device_of
from ..function import Function, get_array_module
from ..function import unbroadcast as _unbroadcast
from .reduce import downcast, upcast


def _shape(x):
    return getattr(x, "shape", ())


def unbroadcast(g, shape):
    """``minilm.function.unbroadcast``, summing float16 in float32."""
    if tuple(g.shape) == tuple(shape):
        return g
    return downcast(_unbroadcast(upcast(g), shape), g.dtype)


class Add(Function):
    """y = a + b        ∂L/∂a = g,  ∂L/∂b = g"""

    def forward(ctx, a, b):
        ctx.shapes = _shape(a), _shape(b)
        return a + b

    def backward(ctx, g):
        sa, sb = ctx.shapes
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g, sa) if na else None,
                unbroadcast(g, sb) if nb else None)


class Sub(Function):
    """y = a − b        ∂L/∂a = g,  ∂L/∂b = −g"""

    def forward(ctx, a, b):
        ctx.shapes = _shape(a), _shape(b)
        return a - b

    def backward(ctx, g):
        sa, sb = ctx.shapes
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g, sa) if na else None,
                unbroadcast(-g, sb) if nb else None)


class Mul(Function):
    """y = a ⊙ b        ∂L/∂a = g ⊙ b,  ∂L/∂b = g ⊙ a"""

    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    def backward(ctx, g):
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g * b, _shape(a)) if na else None,
                unbroadcast(g * a, _shape(b)) if nb else None)


class Div(Function):
    """y = a / b        ∂L/∂a = g / b,  ∂L/∂b = −g ⊙ a / b² = −g ⊙ y / b"""

    def forward(ctx, a, b):
        y = a / b
        ctx.save_for_backward(a, b, y)
        return y

    def backward(ctx, g):
        a, b, y = ctx.saved
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g / b, _shape(a)) if na else None,
                unbroadcast(-g * y / b, _shape(b)) if nb else None)


class Pow(Function):
    """y = aᵇ           ∂L/∂a = g ⊙ b aᵇ⁻¹,  ∂L/∂b = g ⊙ aᵇ ln a  (a > 0 where b needs grad)"""

    def forward(ctx, a, b):
        y = a ** b
        ctx.save_for_backward(a, b, y)
        return y

    def backward(ctx, g):
        a, b, y = ctx.saved
        na, nb = ctx.needs_input_grad
        da = db = None
        if na:
            da = unbroadcast(g * b * a ** (b - 1), _shape(a))
        if nb:
            xp = get_array_module(y)
            db = unbroadcast(g * y * xp.log(a), _shape(b))
        return da, db


class Neg(Function):
    """y = −x           ∂L/∂x = −g"""

    def forward(ctx, x):
        return -x

    def backward(ctx, g):
        return (-g,)


class Exp(Function):
    """y = eˣ            ∂L/∂x = g ⊙ y"""

    def forward(ctx, x):
        y = get_array_module(x).exp(x)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved
        return (g * y,)


class Log(Function):
    """y = ln x          ∂L/∂x = g / x"""

    def forward(ctx, x):
        ctx.save_for_backward(x)
        return get_array_module(x).log(x)

    def backward(ctx, g):
        (x,) = ctx.saved
        return (g / x,)


class Sqrt(Function):
    """y = √x            ∂L/∂x = g / (2y)"""

    def forward(ctx, x):
        y = get_array_module(x).sqrt(x)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved
        return (g / (2 * y),)


class Tanh(Function):
    """y = tanh x        ∂L/∂x = g ⊙ (1 − y²)"""

    def forward(ctx, x):
        y = get_array_module(x).tanh(x)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved
        return (g * (1 - y * y),)


class Sigmoid(Function):
    """y = σ(x) = 1 / (1 + e⁻ˣ)      ∂L/∂x = g ⊙ y (1 − y)

    Computed as ½(1 + tanh(x/2)), which never overflows.
    """

    def forward(ctx, x):
        xp = get_array_module(x)
        y = 0.5 * (1 + xp.tanh(0.5 * x))
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved
        return (g * y * (1 - y),)


class ReLU(Function):
    """y = max(x, 0)     ∂L/∂x = g ⊙ [x > 0]   (0 at the kink x = 0, as PyTorch)"""

    def forward(ctx, x):
        xp = get_array_module(x)
        y = xp.maximum(x, 0)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved
        return (g * (y > 0),)


class Abs(Function):
    """y = |x|           ∂L/∂x = g ⊙ sign(x)   (sign(0) = 0: the subgradient 0 at the kink, as PyTorch)"""

    def forward(ctx, x):
        ctx.save_for_backward(x)
        return get_array_module(x).abs(x)

    def backward(ctx, g):
        (x,) = ctx.saved
        return (g * get_array_module(x).sign(x),)


def erf(x):
    """The error function, elementwise, on any device: erf(x) = 2/√π ∫₀ˣ exp(−t²) dt.

    NumPy and CuPy do not spell it the same, so the device picks the implementation:
    "cuda" cupyx.scipy.special.erf; "cpu" the Numba kernel minilm.kernels.special.erf
    (imported, and compiled, on the first call); "strict" that kernel on the unwrapped
    array, rewrapped.  float16 is evaluated in float32 and rounded back (the kernels
    have float32 and float64 loops).  A plain array function, not an op: no gradient.
    """
    device = device_of(x)
    if device == "strict":
        return strict.wrap(erf(strict.unwrap(x, "erf")))
    xa = upcast(x)                               # float16 is computed in float32 and rounded back
    if device == "cuda":
        import cupyx.scipy.special
        return downcast(cupyx.scipy.special.erf(xa), x.dtype)
    from ..kernels import special                # Numba: loaded on first use, not on import minilm
    return downcast(special.erf(xa), x.dtype)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GELU(Function):
    """Gaussian error linear unit, exact or with GPT-2's tanh approximation.

    exact:  y = x Φ(x),  Φ(x) = ½(1 + erf(x/√2))
            ∂L/∂x = g ⊙ (Φ(x) + x φ(x)),  φ(x) = e^{−x²/2} / √(2π)
    tanh:   y = ½ x (1 + t),  t = tanh(u),  u = √(2/π) (x + 0.044715 x³)
            ∂L/∂x = g ⊙ ½ (1 + t + x (1 − t²) √(2/π) (1 + 3·0.044715 x²))

    GELU runs on the widest activation of a Transformer (B, T, 4d), so the
    code evaluates these formulas in place, in a few buffers: every fresh
    temporary of that size costs a pass over memory plus its page faults.
    """

    def forward(ctx, x, approximate="none"):
        xp = get_array_module(x)
        ctx.approximate, ctx.shape = approximate, x.shape
        x = x.reshape(x.shape or (1,))           # 0-d -> (1,): in-place math needs an array
        if approximate == "tanh":
            u = x * x
            u *= 0.044715
            u += 1
            u *= x
            u *= _SQRT_2_OVER_PI                 # u = √(2/π) (x + 0.044715 x³)
            t = xp.tanh(u, out=u)                # t = tanh(u), reusing u's buffer
            ctx.save_for_backward(x, t)
            y = t + 1
        else:
            cdf = erf(x * _INV_SQRT_2)
            cdf += 1
            cdf *= 0.5                           # Φ(x)
            ctx.save_for_backward(x, cdf)
            y = cdf.copy()
        y *= x
        if approximate == "tanh":
            y *= 0.5                             # y = ½ x (1 + t)
        return y.reshape(ctx.shape)              # or x Φ(x)

    def backward(ctx, g):
        x, saved = ctx.saved
        xp = get_array_module(x)
        if ctx.approximate == "tanh":
            t = saved
            du = x * x
            du *= 3 * 0.044715 * _SQRT_2_OVER_PI
            du += _SQRT_2_OVER_PI                # du/dx = √(2/π) (1 + 3·0.044715 x²)
            dx = t * t
            xp.subtract(1, dx, out=dx)           # 1 − t²
            dx *= x
            dx *= du
            dx += t
            dx += 1
            dx *= 0.5                            # ½ (1 + t + x (1 − t²) du/dx)
        else:
            dx = x * x
            dx *= -0.5
            dx = xp.exp(dx, out=dx)
            dx *= x
            dx *= _INV_SQRT_2PI                  # x φ(x)
            dx += saved                          # Φ(x) + x φ(x)
        dx *= g.reshape(dx.shape)
        return (dx.reshape(ctx.shape),)
