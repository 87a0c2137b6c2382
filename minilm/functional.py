"""The functional API: ``import minilm.functional as F``.

Every function here is differentiable (except where it says so) and checked
against central differences and against PyTorch in tests/.  Axis arguments
follow NumPy (``axis=``, ``keepdims=``).  These wrappers validate their inputs
-- so that a mistake is reported in the caller's terms (shapes, dtypes, ids)
-- and hand the arrays to the ops in :mod:`minilm.ops`.

Dtypes, as in PyTorch.  Elementwise ops with two or more operands (add, sub,
mul, div, pow, where, concat, stack) promote: the operand of the higher kind
(bool < integer < floating) gives its dtype, so int64 with float32 is float32,
never float64; within one kind the wider wins (float16 with float32 is
float32).  A 0-d tensor counts only when its kind is higher than every
dimensioned operand's, and a Python or NumPy scalar only when its kind is
higher than every tensor's -- then it gives that kind's default dtype (int64,
float32): float32 * 2.5 stays float32, float16 * np.float64(2) stays
float16, int64 * 2.5 is float32.  True division of integers gives float32.
Linear algebra (matmul, linear, attention) does not promote: operands of
different dtypes are refused, naming both.  float16 computes its sums in
float32 (see minilm.ops.reduce).
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from . import backend
from .tensor import Tensor, default_generator  # defined before tensor.py imports this module
from .ops.elementwise import GELU, Abs, Add, Div, Exp, Log, Mul, Neg, Pow, ReLU, Sigmoid, Sqrt, Sub, Tanh
from .ops.attention import _MASK_VALUE, ScaledDotProductAttention, blocked_positions
from .ops.patterns import SparsePattern  # F.SparsePattern: the value attention's pattern= takes (not an op)
from .ops.matmul import Linear, MatMul
from .ops.nn import CrossEntropy, Dropout, Embedding, LayerNorm, LogSoftmax, Softmax
from .ops.reduce import LogSumExp, Max, Mean, Sum, _normalize_axis
from .ops.shape import (AsType, BroadcastTo, Concat, GetItem, MaskedFill, Permute, Reshape, Stack,
                        ToDevice, Where)

__all__ = [
    "add", "sub", "mul", "div", "pow", "neg",
    "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "gelu",
    "softmax", "log_softmax", "logsumexp",
    "sum", "mean", "max", "var",
    "matmul", "linear",
    "reshape", "transpose", "permute", "swapaxes", "broadcast_to", "getitem",
    "concat", "stack", "split", "where", "masked_fill",
    "embedding", "dropout", "layer_norm", "cross_entropy",
    "scaled_dot_product_attention", "scaled_dot_product_attention_reference",
    "to_device", "astype",
]


def _shape_of(x):
    return tuple(getattr(x, "shape", ()))


# ---- dtype promotion (the rule is in the module docstring) ---------------------------

_KIND_RANK = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}
_SCALAR_DTYPE = (np.dtype(np.bool_), np.dtype(np.int64), np.dtype(np.float32), np.dtype(np.complex64))


def _is_scalar(x):
    return isinstance(x, (bool, int, float, complex, np.generic))


def _promote_group(dtypes):
    """One dtype for operands of equal standing: the highest kind's, the widest within that kind."""
    top = builtins.max(_KIND_RANK[d.kind] for d in dtypes)
    return np.result_type(*(d for d in dtypes if _KIND_RANK[d.kind] == top))


def _result_dtype(operands):
    """The dtype an elementwise op on ``operands`` (tensors, arrays, scalars) returns."""
    dims, zero_d, scalars = [], [], []
    for x in operands:
        if _is_scalar(x):
            scalars.append(_SCALAR_DTYPE[_KIND_RANK[np.asarray(x).dtype.kind]])
        elif hasattr(x, "dtype"):
            (dims if x.ndim else zero_d).append(np.dtype(x.dtype))
    dtype = None
    for group in (dims, zero_d, scalars):
        if group:
            d = _promote_group(group)
            if dtype is None or _KIND_RANK[d.kind] > _KIND_RANK[dtype.kind]:
                dtype = d
    return dtype


_PY_SCALAR_KIND = {bool: "b", int: "i", float: "f"}


def _nothing_to_promote(operands, true_division):
    """The common case, decided quickly: tensors of one dtype, and Python scalars of no higher kind."""
    dtype, kinds = None, ""
    for x in operands:
        if type(x) is Tensor:
            if dtype is None:
                dtype = x.data.dtype
            elif x.data.dtype != dtype:
                return False
        elif type(x) in _PY_SCALAR_KIND:
            kinds += _PY_SCALAR_KIND[type(x)]
        else:
            return False
    if dtype is None or (true_division and dtype.kind != "f"):
        return False
    return dtype.kind == "f" or "f" not in kinds and (dtype.kind != "b" or "i" not in kinds)


def _promote(operands, true_division=False):
    """``operands`` in the result dtype: tensors and arrays cast (differentiably), NumPy scalars made
    Python scalars (which NumPy never lets change an array's dtype); Python scalars as they are."""
    if _nothing_to_promote(operands, true_division):
        return operands
    dtype = _result_dtype(operands)
    if dtype is None:                        # nothing with a dtype (lists, say): NumPy decides
        return operands
    if true_division and dtype.kind in "biu":
        dtype = np.dtype(np.float32)
    out = []
    for x in operands:
        if isinstance(x, np.generic):
            x = x.item()
        elif isinstance(x, Tensor):
            x = x if x.dtype == dtype else astype(x, dtype)
        elif hasattr(x, "dtype") and x.dtype != dtype:
            x = x.astype(dtype)
        out.append(x)
    return out


def _same_dtype(name, **operands):
    """Refuse operands of a linear-algebra op whose dtypes differ (no silent promotion, as in PyTorch)."""
    given = {label: t for label, t in operands.items() if t is not None}
    if len({np.dtype(t.dtype) for t in given.values()}) > 1:
        what = ", ".join(f"{label} is {t.dtype} (shape {_shape_of(t)})" for label, t in given.items())
        raise TypeError(f"{name}: operands must share one dtype, got {what}; cast one with .astype(...) first")


def _binary(op, a, b, name):
    a, b = _promote((a, b), true_division=op is Div)
    try:
        return op.apply(a, b)
    except ValueError:
        sa, sb = _shape_of(a), _shape_of(b)
        try:
            np.broadcast_shapes(sa, sb)
        except ValueError:
            raise ValueError(f"{name}: shapes {sa} and {sb} do not broadcast "
                             "(trailing dimensions must be equal or 1)") from None
        raise


# ---- arithmetic -------------------------------------------------------------

def add(a, b):
    """a + b, broadcasting."""
    return _binary(Add, a, b, "add")


def sub(a, b):
    """a − b, broadcasting."""
    return _binary(Sub, a, b, "sub")


def mul(a, b):
    """a ⊙ b, broadcasting."""
    return _binary(Mul, a, b, "mul")


def div(a, b):
    """a / b, broadcasting."""
    return _binary(Div, a, b, "div")


def pow(a, b):
    """aᵇ, broadcasting (b may be a number or a tensor)."""
    return _binary(Pow, a, b, "pow")


def neg(x):
    return Neg.apply(x)


# ---- elementwise functions --------------------------------------------------

def exp(x):
    return Exp.apply(x)


def log(x):
    return Log.apply(x)


def sqrt(x):
    return Sqrt.apply(x)


def tanh(x):
    return Tanh.apply(x)


def sigmoid(x):
    return Sigmoid.apply(x)


def relu(x):
    return ReLU.apply(x)


def abs(x):
    """|x|, elementwise; its gradient at x = 0 is 0 (PyTorch's choice)."""
    return Abs.apply(x)


def gelu(x, approximate: str = "none"):
    """GELU: exact x·Φ(x) with approximate="none" (PyTorch's default, BERT's),
    GPT-2's tanh form with approximate="tanh"."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' (exact erf) or 'tanh', got {approximate!r}")
    return GELU.apply(x, approximate=approximate)


# ---- softmax family -----------------------------------------------------------

def _one_axis(x, axis, name):
    if not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name}: axis must be one int, got {axis!r}")
    return _normalize_axis(int(axis), x.ndim)[0]


def softmax(x, axis: int = -1):
    """exp(x − max) / Σ exp(x − max) along ``axis``."""
    return Softmax.apply(x, axis=_one_axis(x, axis, "softmax"))


def log_softmax(x, axis: int = -1):
    """x − logsumexp(x) along ``axis`` (stable)."""
    return LogSoftmax.apply(x, axis=_one_axis(x, axis, "log_softmax"))


def logsumexp(x, axis=-1, keepdims: bool = False):
    """log Σ exp(x) along ``axis`` (stable)."""
    return LogSumExp.apply(x, axis=axis, keepdims=keepdims)


# ---- reductions -----------------------------------------------------------------

def sum(x, axis=None, keepdims: bool = False):
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims: bool = False):
    """Σx / n, n the number of elements reduced."""
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims: bool = False):
    """The largest value along ``axis`` (ties share the gradient)."""
    return Max.apply(x, axis=axis, keepdims=keepdims)


def var(x, axis=None, keepdims: bool = False, ddof: int = 0):
    """mean((x − mean(x))²) · n / (n − ddof): NumPy's ``var`` (ddof=0, the biased form)."""
    if x.dtype == np.float16:                # (x − mean)² overflows float16 past |x − mean| = 256
        return astype(var(astype(x, np.float32), axis, keepdims, ddof), np.float16)
    axes = _normalize_axis(axis, x.ndim)
    n = math.prod(x.shape[a] for a in axes)
    centred = sub(x, mean(x, axis=axes, keepdims=True))
    return mul(Sum.apply(mul(centred, centred), axis=axes, keepdims=keepdims), 1.0 / (n - ddof))


# ---- matmul ---------------------------------------------------------------------

def matmul(a, b):
    """a @ b: matrix product over the last two axes, batch axes broadcast; 1-D
    operands are treated as a row (left) or a column (right), as in NumPy."""
    sa, sb = _shape_of(a), _shape_of(b)
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"matmul: both operands need at least one dimension, got shapes {sa} and {sb}")
    _same_dtype("matmul", a=a, b=b)
    if sa[-1] != (sb[-2] if len(sb) > 1 else sb[0]):
        raise ValueError(f"matmul: shapes {sa} and {sb} do not line up: a has {sa[-1]} columns, "
                         f"b has {sb[-2] if len(sb) > 1 else sb[0]} rows")
    if len(sa) > 2 and len(sb) > 2:
        try:
            np.broadcast_shapes(sa[:-2], sb[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of shapes {sa} and {sb} do not broadcast") from None
    if len(sa) == 1 and len(sb) == 1:  # a dot product: (1, k) @ (k, 1) -> ()
        return reshape(MatMul.apply(reshape(a, (1,) + sa), reshape(b, sb + (1,))), ())
    if len(sa) == 1:                    # (k,) @ (..., k, m) -> (..., m)
        return reshape(MatMul.apply(reshape(a, (1,) + sa), b), sb[:-2] + sb[-1:])
    if len(sb) == 1:                    # (..., n, k) @ (k,) -> (..., n)
        return reshape(MatMul.apply(a, reshape(b, sb + (1,))), sa[:-1])
    return MatMul.apply(a, b)


def linear(x, weight, bias=None):
    """x W + b with W of shape (in, out) (the row convention) and b of shape (out,)."""
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be (in, out), got shape {weight.shape}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"linear: input of shape {x.shape} does not fit weight of shape {weight.shape} "
                         f"(its last axis must be {weight.shape[0]})")
    if bias is not None and bias.shape != weight.shape[1:]:
        raise ValueError(f"linear: bias of shape {bias.shape} does not fit weight of shape {weight.shape}")
    _same_dtype("linear", input=x, weight=weight, bias=bias)
    return Linear.apply(x, weight, bias)


# ---- shapes -----------------------------------------------------------------------

def reshape(x, shape):
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    try:
        return Reshape.apply(x, shape=shape)
    except ValueError:
        raise ValueError(f"reshape: cannot view a tensor of shape {x.shape} ({x.numel()} elements) "
                         f"as shape {shape}") from None


def permute(x, axes):
    axes = tuple(int(a) % builtins.max(x.ndim, 1) for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"permute: {axes} is not a permutation of the {x.ndim} axes of shape {x.shape}")
    return Permute.apply(x, axes=axes)


def transpose(x, axes=None):
    """Reverse the axes (axes=None), or reorder them as ``axes`` (NumPy's transpose)."""
    return permute(x, tuple(reversed(range(x.ndim))) if axes is None else axes)


def swapaxes(x, axis1: int, axis2: int):
    axes = list(range(x.ndim))
    a1, a2 = _one_axis(x, axis1, "swapaxes"), _one_axis(x, axis2, "swapaxes")
    axes[a1], axes[a2] = axes[a2], axes[a1]
    return Permute.apply(x, axes=tuple(axes))


def broadcast_to(x, shape):
    shape = tuple(int(n) for n in shape)
    try:
        if np.broadcast_shapes(x.shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"broadcast_to: shape {x.shape} cannot be broadcast to {shape}") from None
    return BroadcastTo.apply(x, shape=shape)


def _index_part(p, xp):
    if isinstance(p, Tensor):
        return p.data
    if isinstance(p, list):
        return xp.asarray(np.asarray(p))
    if isinstance(p, np.ndarray) and xp is not np:
        return xp.asarray(p)
    return p


def getitem(x, index):
    """x[index]: slices, ints, None, ..., boolean masks and integer arrays (a gather)."""
    xp = backend.get_array_module(x.data)
    if isinstance(index, tuple):
        index = tuple(_index_part(p, xp) for p in index)
    else:
        index = _index_part(index, xp)
    try:
        return GetItem.apply(x, index=index)
    except IndexError as e:
        raise IndexError(f"getitem: {e} (tensor of shape {x.shape})") from None


def _check_same_shapes(xs, axis, name):
    if len(xs) == 0:
        raise ValueError(f"{name}: needs at least one tensor")
    first = xs[0].shape
    for i, x in enumerate(xs):
        other = x.shape
        if len(other) != len(first) or any(m != n for k, (m, n) in enumerate(zip(first, other)) if k != axis):
            what = "equal shapes" if axis is None else f"equal shapes except on axis {axis}"
            raise ValueError(f"{name}: needs {what}; tensor 0 has shape {first}, tensor {i} has shape {other}")


def concat(tensors, axis: int = 0):
    """Join tensors along an existing axis."""
    tensors = list(tensors)
    if len(tensors) == 0:
        raise ValueError("concat: needs at least one tensor")
    ax = _one_axis(tensors[0], axis, "concat")
    _check_same_shapes(tensors, ax, "concat")
    return Concat.apply(*_promote(tensors), axis=ax)


def stack(tensors, axis: int = 0):
    """Join equally shaped tensors along a new axis."""
    tensors = list(tensors)
    _check_same_shapes(tensors, None, "stack")
    ndim = tensors[0].ndim + 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"stack: axis {axis} is out of range for {ndim}-d output")
    return Stack.apply(*_promote(tensors), axis=axis % ndim)


def split(x, indices_or_sections, axis: int = 0):
    """NumPy's split: an int n gives n equal parts; a list gives the cut points."""
    ax = _one_axis(x, axis, "split")
    size = x.shape[ax]
    if isinstance(indices_or_sections, (int, np.integer)):
        n = int(indices_or_sections)
        if n <= 0 or size % n:
            raise ValueError(f"split: axis {ax} of shape {x.shape} (size {size}) cannot be split into {n} equal parts")
        cuts = [size // n * i for i in range(1, n)]
    else:
        cuts = [int(c) for c in indices_or_sections]
    bounds = [0] + cuts + [size]
    index = [slice(None)] * x.ndim
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index[ax] = slice(lo, hi)
        parts.append(GetItem.apply(x, index=tuple(index)))
    return parts


def _bool_array(mask, like, name):
    arr = mask.data if isinstance(mask, Tensor) else mask
    if not backend.is_array(arr):
        arr = backend.xp_for(like.device).asarray(np.asarray(arr))
    if arr.dtype != np.bool_:
        raise TypeError(f"{name}: the condition/mask must be boolean, got dtype {arr.dtype}")
    if backend.device_of(arr) != like.device:
        raise RuntimeError(f"{name}: the mask is on {backend.device_of(arr)!r}, the tensor on {like.device!r}")
    return arr


def where(cond, a, b):
    """cond ? a : b elementwise, broadcasting (cond gets no gradient)."""
    like = a if isinstance(a, Tensor) else b
    if not isinstance(like, Tensor):
        raise TypeError("where: a or b must be a Tensor")
    c = _bool_array(cond, like, "where")
    shapes = [tuple(c.shape), _shape_of(a), _shape_of(b)]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"where: shapes {shapes[0]} (cond), {shapes[1]} (a) and {shapes[2]} (b) "
                         "do not broadcast") from None
    return Where.apply(c, *_promote((a, b)))


def masked_fill(x, mask, value: float):
    """x with ``value`` where ``mask`` is true; mask broadcasts to x's shape."""
    m = _bool_array(mask, x, "masked_fill")
    try:
        ok = np.broadcast_shapes(tuple(m.shape), x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"masked_fill: mask of shape {tuple(m.shape)} does not broadcast to the tensor's shape {x.shape}")
    return MaskedFill.apply(x, m, value=value)


# ---- neural-network functions -----------------------------------------------------------

def _int_ids(ids, name, what):
    arr = ids.data if isinstance(ids, Tensor) else ids
    if not backend.is_array(arr):
        arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: {what} must be integer ids, got dtype {arr.dtype}")
    return arr


def _bad_ids(arr, ok):
    """A short, host-side description of the ids where ``ok`` is false."""
    bad = backend.to_numpy(~ok).nonzero()
    values = backend.to_numpy(arr)[bad]
    where = list(zip(*bad))[:5]
    return f"{values[:5].tolist()} at {[tuple(int(i) for i in w) for w in where]}" + (
        f" and {len(values) - 5} more" if len(values) > 5 else "")


def embedding(ids, weight):
    """weight[ids]: the rows of ``weight`` (V, d) for integer ``ids`` of any shape."""
    arr = _int_ids(ids, "embedding", "ids")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be (vocab, dim), got shape {weight.shape}")
    if backend.device_of(arr) != weight.device:
        raise RuntimeError(f"embedding: ids are on {backend.device_of(arr)!r}, weight on {weight.device!r}")
    V = weight.shape[0]
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= V):
        raise IndexError(f"embedding: ids must be in [0, {V}); found {_bad_ids(arr, (arr >= 0) & (arr < V))}")
    return Embedding.apply(ids, weight)


def dropout(x, p: float = 0.5, training: bool = True, generator=None):
    """Zero each element with probability p, scale the rest by 1/(1 − p); identity when not training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    rng = (generator or default_generator).on(x.device)
    return Dropout.apply(x, p=float(p), rng=rng)


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5):
    """Normalise over the last axis, then x̂ ⊙ weight + bias (weight, bias of shape (d,))."""
    d = x.shape[-1:]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != d:
            raise ValueError(f"layer_norm: {name} has shape {t.shape}, expected {d} "
                             f"(the last axis of the input of shape {x.shape})")
    return LayerNorm.apply(x, weight, bias, eps=eps)


def cross_entropy(logits, targets, ignore_index: int = -100, reduction: str = "mean"):
    """−log softmax(logits)[target], classes on the last axis, averaged over the
    targets that are not ``ignore_index`` (reduction "mean"), summed ("sum"), or
    per position ("none").  logits (..., C) with targets (...) of integer ids.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    t = _int_ids(targets, "cross_entropy", "targets")
    if logits.ndim == 0 or tuple(t.shape) != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: logits of shape {logits.shape} need targets of shape "
                         f"{logits.shape[:-1]} (classes on the last axis); got targets of shape {tuple(t.shape)}")
    if backend.device_of(t) != logits.device:
        raise RuntimeError(f"cross_entropy: targets are on {backend.device_of(t)!r}, logits on {logits.device!r}")
    C = logits.shape[-1]
    ok = ((t >= 0) & (t < C)) | (t == ignore_index)
    if not bool(ok.all()):
        raise IndexError(f"cross_entropy: targets must be class ids in [0, {C}) or ignore_index={ignore_index}; "
                         f"found {_bad_ids(t, ok)}")
    return CrossEntropy.apply(logits, t, ignore_index=ignore_index, reduction=reduction)


# ---- devices and dtypes ----------------------------------------------------------------------

def to_device(x, device: str):
    return ToDevice.apply(x, device=backend.check_device(device))


def astype(x, dtype):
    return AsType.apply(x, dtype=np.dtype(dtype))


# ---- attention ---------------------------------------------------------------------------------

def _attention_args(q, k, v, causal, key_padding_mask, scale, n_prefix, name, pattern=None):
    for label, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"{name}: {label} must be (B, H, T, D), got shape {t.shape}")
    _same_dtype(name, q=q, k=k, v=v)
    B, H, T, D = q.shape
    S = k.shape[2]
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H) or k.shape[3] != D or v.shape[2] != S:
        raise ValueError(f"{name}: shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape} "
                         "(need q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv))")
    if not 0 <= n_prefix <= S:
        raise ValueError(f"{name}: n_prefix={n_prefix} with {S} keys")
    if causal and T > S - n_prefix:
        raise ValueError(f"{name}: causal attention with {T} queries needs at least {T} token keys, "
                         f"got {S - n_prefix}")
    kpm = None
    if key_padding_mask is not None:
        kpm = _bool_array(key_padding_mask, q, name)
        if tuple(kpm.shape) != (B, S - n_prefix):
            raise ValueError(f"{name}: key_padding_mask must be (B, S − n_prefix) = {(B, S - n_prefix)}, got {tuple(kpm.shape)}")
    if pattern is not None:
        if not isinstance(pattern, SparsePattern):
            raise TypeError(f"{name}: pattern must be a SparsePattern or None, got {type(pattern).__name__}")
        if T > S - n_prefix:
            raise ValueError(f"{name}: with a sparse pattern the {T} queries are token positions, so they need "
                             f"at least {T} token keys, got S − n_prefix = {S - n_prefix}")
        pattern.check(S - n_prefix, name)
    return kpm, (1.0 / math.sqrt(D) if scale is None else float(scale))


def scaled_dot_product_attention(q, k, v, causal: bool = False, key_padding_mask=None, scale=None,
                                 n_prefix: int = 0, pattern: SparsePattern | None = None):
    """softmax(q kᵀ · scale + mask) v on (B, H, T, D) queries and (B, H, S, D) keys/values.

    causal            query t sees keys up to its own position (queries are the
                      last T positions when S > T, as in generation with a cache)
    key_padding_mask  bool (B, S − n_prefix), True = a padding key nobody attends to
    n_prefix          the first n_prefix keys/values are a prefix every query sees (P1)
    scale             1/√D by default
    pattern           a SparsePattern (sliding window, global tokens, random blocks:
                      Longformer, BigBird) over the token positions, on top of all the above;
                      None = dense
    A query that can see no key at all gets zeros, not NaN.  One fused op: a
    Numba flash kernel on "cpu" (with a pattern it computes only the key blocks
    the pattern shows, so its cost is linear in T); see
    scaled_dot_product_attention_reference for the same thing written as ordinary ops.
    """
    kpm, scale = _attention_args(q, k, v, causal, key_padding_mask, scale, n_prefix, "scaled_dot_product_attention",
                                 pattern)
    return ScaledDotProductAttention.apply(q, k, v, causal=bool(causal), key_padding=kpm, scale=scale,
                                           n_prefix=int(n_prefix), pattern=pattern)


def scaled_dot_product_attention_reference(q, k, v, causal: bool = False, key_padding_mask=None, scale=None,
                                           n_prefix: int = 0, pattern: SparsePattern | None = None):
    """The readable definition of attention, composed of differentiable ops (the tests' oracle):

        scores = q kᵀ / √D                      (B, H, T, S)
        scores[blocked] = −∞                    causal future, padded keys, keys the pattern
                                                hides (pattern.visible: its dense mask)
        A = softmax(scores, axis=−1)
        out = A v                               (B, H, T, Dv)
    """
    kpm, scale = _attention_args(q, k, v, causal, key_padding_mask, scale, n_prefix,
                                 "scaled_dot_product_attention_reference", pattern)
    B, H, T, _ = q.shape
    xp = backend.get_array_module(q.data)
    scores = mul(matmul(q, swapaxes(k, -1, -2)), scale)                     # (B, H, T, S)
    blocked = blocked_positions(xp, q.device, B, T, k.shape[2], causal, n_prefix, kpm, pattern, H)
    if blocked is not None:
        scores = MaskedFill.apply(scores, blocked, value=_MASK_VALUE)
    attn = softmax(scores, axis=-1)
    if kpm is not None or pattern is not None:  # rows with no visible key: zeros instead of a uniform average
        visible = ~blocked.all(axis=-1, keepdims=True)                     # (B, 1, T, 1)
        attn = mul(attn, visible.astype(attn.dtype))
    return matmul(attn, v)                                                  # (B, H, T, Dv)
