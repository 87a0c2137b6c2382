"""One table of every public op in minilm.functional: how to draw its inputs,
how to call it in minilm, and how to call the same thing in PyTorch.

tests/test_ops_grad.py gradient-checks every row on every device;
tests/test_ops_torch.py compares every row with PyTorch, forward and backward.
A row draws its inputs with hypothesis (shapes, axes, options) and a NumPy
generator seeded by hypothesis (values), keeping values off kinks and out of
domains where an op is not differentiable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import hypothesis.strategies as st
import numpy as np
from hypothesis.extra import numpy as hnp

import minilm
import minilm.functional as F


@dataclass
class Case:
    arrays: list            # host arrays, one per positional input
    diff: list              # which of them are differentiable (float64, requires_grad)
    kwargs: dict = field(default_factory=dict)


@dataclass
class Spec:
    id: str
    op: str                                  # the name in F.__all__ this row covers
    draw: Callable                           # draw(data) -> Case
    fn: Callable                             # fn(*tensors, **kwargs) -> Tensor
    torch: Callable | None = None            # torch_fn(*torch tensors, **kwargs) -> torch tensor
    needs_device: bool = False               # kwargs get device=<the test's device>


def call_kwargs(spec, case, device):
    """The keyword arguments of one drawn case (plus the device for rows that need it)."""
    return dict(case.kwargs, **({"device": device} if spec.needs_device else {}))


# ---- drawing ------------------------------------------------------------------

def rng_of(data):
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def shape(data, min_dims=0, max_dims=3, min_side=1, max_side=4):
    return data.draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                                      max_side=max_side), label="shape")


def bshapes(data, n=2, max_dims=3):
    return data.draw(hnp.mutually_broadcastable_shapes(num_shapes=n, max_dims=max_dims, max_side=4),
                     label="broadcast shapes").input_shapes


def normal(rng, s):
    return rng.standard_normal(s)


def positive(rng, s):
    return np.abs(rng.standard_normal(s)) + 0.5


def off_kink(rng, s):
    """Values at least 0.1 away from 0 (relu's kink)."""
    z = rng.standard_normal(s)
    return np.where(z < 0, -1.0, 1.0) * (np.abs(z) + 0.1)


def distinct(rng, s):
    """Values at least 0.1 apart, so a max has one winner that ε cannot change."""
    n = int(np.prod(s))
    return (rng.permutation(n) * 0.1 - 0.05 * n + 0.01 * rng.random(n)).reshape(s)


def axis_arg(data, ndim):
    """None, one axis (maybe negative) or a tuple of axes."""
    kind = data.draw(st.sampled_from(["none", "int", "tuple"]), label="axis kind")
    if kind == "none" or ndim == 0:
        return None
    if kind == "int":
        return data.draw(st.integers(-ndim, ndim - 1), label="axis")
    return tuple(sorted(data.draw(st.sets(st.integers(0, ndim - 1), min_size=1), label="axes")))


def dims(axis, ndim):
    """A minilm axis argument as PyTorch's dim tuple."""
    if axis is None:
        return tuple(range(ndim))
    return (axis % ndim,) if isinstance(axis, int) else tuple(axis)


def _torch():
    import torch
    return torch


def tF():
    return _torch().nn.functional


# ---- rows -----------------------------------------------------------------------------

def unary(name, values=normal, torch_name=None):
    def draw(data):
        return Case([values(rng_of(data), shape(data))], [True])
    return Spec(name, name, draw, getattr(F, name),
                lambda x: getattr(_torch(), torch_name or name)(x))


def binary(name, torch_op, b_values=normal):
    def draw(data):
        rng = rng_of(data)
        sa, sb = bshapes(data)
        return Case([normal(rng, sa), b_values(rng, sb)], [True, True])
    return Spec(name, name, draw, getattr(F, name), torch_op)


def _draw_pow_scalar(data):
    rng = rng_of(data)
    e = data.draw(st.sampled_from([2, 3, -1, 0.5, 1.5, -2.5]), label="exponent")
    return Case([positive(rng, shape(data))], [True], {"e": e})


def _draw_pow_tensor(data):
    rng = rng_of(data)
    sa, sb = bshapes(data)
    return Case([positive(rng, sa), normal(rng, sb)], [True, True])


def _draw_axis_op(values, min_dims=0, keepdims=True):
    def draw(data):
        rng = rng_of(data)
        s = shape(data, min_dims=min_dims)
        kw = {"axis": axis_arg(data, len(s))}
        if keepdims:
            kw["keepdims"] = data.draw(st.booleans(), label="keepdims")
        return Case([values(rng, s)], [True], kw)
    return draw


def _draw_one_axis(data):
    rng = rng_of(data)
    s = shape(data, min_dims=1)
    return Case([normal(rng, s) * 3], [True], {"axis": data.draw(st.integers(-len(s), len(s) - 1), label="axis")})


def _draw_var(data):
    case = _draw_axis_op(normal)(data)
    s = case.arrays[0].shape
    n = int(np.prod([s[a] for a in dims(case.kwargs["axis"], len(s))]))
    case.kwargs["ddof"] = data.draw(st.sampled_from([0, 1]), label="ddof") if n > 1 else 0
    return case


def _draw_matmul(data):
    rng = rng_of(data)
    kind = data.draw(st.sampled_from(["batched", "vector-left", "vector-right", "weight", "dot"]), label="kind")
    n, k, m = (data.draw(st.integers(1, 4), label=c) for c in "nkm")
    if kind == "dot":
        sa, sb = (k,), (k,)
    elif kind == "vector-left":
        sa, sb = (k,), shape(data, 0, 1) + (k, m)
    elif kind == "vector-right":
        sa, sb = shape(data, 0, 1) + (n, k), (k,)
    elif kind == "weight":  # a Linear layer: (B, T, k) @ (k, m)
        sa, sb = shape(data, 1, 2) + (n, k), (k, m)
    else:
        ba, bb = bshapes(data, max_dims=2)
        sa, sb = ba + (n, k), bb + (k, m)
    return Case([normal(rng, sa), normal(rng, sb)], [True, True])


def _draw_linear(data):
    rng = rng_of(data)
    lead = shape(data, 1, 3)
    k, m = data.draw(st.integers(1, 4), label="in"), data.draw(st.integers(1, 4), label="out")
    arrays = [normal(rng, lead + (k,)), normal(rng, (k, m))]
    if data.draw(st.booleans(), label="bias"):
        arrays.append(normal(rng, (m,)))
    return Case(arrays, [True] * len(arrays))


def _draw_reshape(data):
    rng = rng_of(data)
    s = shape(data)
    size = int(np.prod(s))
    new = data.draw(st.sampled_from([(-1,), (size, 1), tuple(reversed(s)), (1,) + s, (1, -1)]), label="new shape")
    return Case([normal(rng, s)], [True], {"shape": new})


def _draw_permute(data):
    rng = rng_of(data)
    s = shape(data)
    return Case([normal(rng, s)], [True], {"axes": tuple(data.draw(st.permutations(range(len(s))), label="axes"))})


def _draw_swapaxes(data):
    rng = rng_of(data)
    s = shape(data, min_dims=1)
    a1, a2 = (data.draw(st.integers(-len(s), len(s) - 1), label="axis") for _ in range(2))
    return Case([normal(rng, s)], [True], {"axis1": a1, "axis2": a2})


def _draw_broadcast_to(data):
    rng = rng_of(data)
    target = shape(data, min_dims=1)
    keep = data.draw(st.integers(0, len(target)), label="kept dims")
    s = tuple(1 if data.draw(st.booleans(), label="squash") else n for n in target[len(target) - keep:])
    return Case([normal(rng, s)], [True], {"shape": target})


def _draw_getitem(data):
    rng = rng_of(data)
    s = shape(data, min_dims=1)
    kind = data.draw(st.sampled_from(["basic", "gather", "mask", "mixed"]), label="index kind")
    if kind == "basic":
        parts = []
        for n in s:
            c = data.draw(st.sampled_from(["int", "slice", "all"]), label="part")
            if c == "int":
                parts.append(data.draw(st.integers(-n, n - 1), label="i"))
            elif c == "slice":
                lo = data.draw(st.integers(0, n - 1), label="lo")
                parts.append(slice(lo, data.draw(st.integers(lo + 1, n), label="hi"),
                                   data.draw(st.integers(1, 2), label="step")))
            else:
                parts.append(slice(None))
        if data.draw(st.booleans(), label="newaxis"):
            parts.insert(0, None)
        index = tuple(parts)
    elif kind == "gather":  # repeated rows: the backward must scatter-*add*
        index = rng.integers(0, s[0], size=data.draw(st.integers(1, 6), label="k"))
    elif kind == "mask":
        index = rng.random(s) < 0.5
    else:
        index = (Ellipsis, rng.integers(0, s[-1], size=data.draw(st.integers(1, 5), label="k")))
    return Case([normal(rng, s)], [True], {"index": index})


def _torch_index(index):
    torch = _torch()
    conv = (lambda p: torch.from_numpy(p) if isinstance(p, np.ndarray) else p)
    return tuple(conv(p) for p in index) if isinstance(index, tuple) else conv(index)


def _draw_join(new_axis):
    def draw(data):
        rng = rng_of(data)
        s = shape(data, min_dims=0 if new_axis else 1)
        n = data.draw(st.integers(1, 3), label="n tensors")
        if new_axis:
            axis = data.draw(st.integers(-len(s) - 1, len(s)), label="axis")
            arrays = [normal(rng, s) for _ in range(n)]
        else:
            axis = data.draw(st.integers(-len(s), len(s) - 1), label="axis")
            arrays = []
            for _ in range(n):
                t = list(s)
                t[axis] = data.draw(st.integers(1, 3), label="size on axis")
                arrays.append(normal(rng, tuple(t)))
        return Case(arrays, [True] * n, {"axis": axis})
    return draw


def _draw_split(data):
    rng = rng_of(data)
    s = list(shape(data, min_dims=1))
    axis = data.draw(st.integers(-len(s), len(s) - 1), label="axis")
    if data.draw(st.booleans(), label="equal parts"):
        parts = data.draw(st.integers(1, 3), label="parts")
        s[axis] = parts * data.draw(st.integers(1, 2), label="part size")
        sections = parts
    else:
        sections = sorted(data.draw(st.lists(st.integers(0, s[axis]), max_size=3), label="cuts"))
    return Case([normal(rng, tuple(s))], [True], {"sections": sections, "axis": axis})


def _split_fn(x, sections, axis):
    parts = F.split(x, sections, axis=axis)
    return F.concat([p * (i + 1.0) for i, p in enumerate(parts)], axis=axis)  # weights tell the parts apart


def _split_torch(x, sections, axis):
    torch = _torch()
    if isinstance(sections, int):
        parts = torch.tensor_split(x, sections, dim=axis)
    else:
        parts = torch.tensor_split(x, sections, dim=axis)
    return torch.cat([p * (i + 1.0) for i, p in enumerate(parts)], dim=axis)


def _draw_where(data):
    rng = rng_of(data)
    sc, sa, sb = bshapes(data, n=3)
    return Case([rng.random(sc) < 0.5, normal(rng, sa), normal(rng, sb)], [False, True, True])


def _draw_masked_fill(data):
    rng = rng_of(data)
    s = shape(data)
    keep = data.draw(st.integers(0, len(s)), label="mask dims")
    ms = tuple(1 if data.draw(st.booleans(), label="squash") else n for n in s[len(s) - keep:])
    return Case([normal(rng, s), rng.random(ms) < 0.5], [True, False],
                {"value": data.draw(st.sampled_from([0.0, -1e9, 2.5]), label="value")})


def _draw_embedding(data):
    rng = rng_of(data)
    V, d = data.draw(st.integers(1, 6), label="V"), data.draw(st.integers(1, 4), label="d")
    ids = rng.integers(0, V, size=shape(data, 0, 2))
    return Case([ids, normal(rng, (V, d))], [False, True])


def _draw_dropout(data):
    rng = rng_of(data)
    return Case([normal(rng, shape(data))], [True],
                {"p": data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]), label="p"),
                 "seed": data.draw(st.integers(0, 1000), label="dropout seed")})


def _dropout_fn(x, p, seed, device):
    return F.dropout(x, p, training=True, generator=minilm.Generator(seed))


def _dropout_torch(x, p, seed, device):
    # PyTorch's own dropout draws a different mask; reproduce minilm's mask and
    # check the same math: y = x ⊙ m / (1 − p).
    ones = minilm.ones(x.shape, dtype=minilm.float64, device=device)
    scale = F.dropout(ones, p, training=True, generator=minilm.Generator(seed)).numpy()
    keep = _torch().from_numpy(np.asarray(scale != 0))
    return x * keep / (1 - p) if p < 1 else x * 0.0


def _draw_layer_norm(data):
    rng = rng_of(data)
    s = shape(data, min_dims=1)
    affine = data.draw(st.booleans(), label="affine")
    arrays = [normal(rng, s) * 2 + 1]
    if affine:
        arrays += [normal(rng, s[-1:]), normal(rng, s[-1:])]
    return Case(arrays, [True] * len(arrays), {"eps": data.draw(st.sampled_from([1e-5, 1e-2]), label="eps")})


def _draw_cross_entropy(data):
    rng = rng_of(data)
    lead = shape(data, 0, 2)
    C = data.draw(st.integers(1, 5), label="classes")
    ignore = data.draw(st.sampled_from([-100, 0]), label="ignore_index")
    t = rng.integers(0, C, size=lead)
    t = np.where(rng.random(lead) < 0.3, ignore, t)
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    if reduction == "mean" and not (t != ignore).any():
        t = np.full(lead, C - 1 if ignore != C - 1 else 0)
        if ignore == t.flat[0]:
            reduction = "sum"
    return Case([normal(rng, lead + (C,)) * 2, t], [True, False], {"ignore_index": ignore, "reduction": reduction})


def _cross_entropy_torch(z, t, ignore_index, reduction):
    C = z.shape[-1]
    out = tF().cross_entropy(z.reshape(-1, C), t.reshape(-1), ignore_index=ignore_index, reduction=reduction)
    return out.reshape(t.shape) if reduction == "none" else out


def _draw_plain(data):
    return Case([normal(rng_of(data), shape(data))], [True])


def _to_device_fn(x, device):
    other = "cpu" if device != "cpu" else "strict"
    return F.to_device(F.to_device(x, other) * 2.0, device)


def _sum_torch(x, axis, keepdims):
    d = dims(axis, x.ndim)
    return x.sum(dim=d, keepdim=keepdims) if d else x.clone()


def _draw_attention(data):
    rng = rng_of(data)
    B, H = data.draw(st.integers(1, 2), label="B"), data.draw(st.integers(1, 2), label="H")
    T, D = data.draw(st.integers(1, 4), label="T"), data.draw(st.integers(1, 3), label="D")
    causal = data.draw(st.booleans(), label="causal")
    n_prefix = data.draw(st.integers(0, 2), label="n_prefix")
    S_tok = T + (data.draw(st.integers(0, 2), label="extra keys") if causal else data.draw(st.integers(-T + 1, 2)))
    S = n_prefix + S_tok
    arrays = [normal(rng, (B, H, T, D)), normal(rng, (B, H, S, D)), normal(rng, (B, H, S, D))]
    diff = [True, True, True]
    kw = {"causal": causal, "n_prefix": n_prefix}
    if data.draw(st.booleans(), label="padding"):
        pad = rng.random((B, S_tok)) < 0.4
        pad[:, 0] = False          # every row keeps a visible key, so PyTorch gives no NaN
        arrays.append(pad)
        diff.append(False)
    return Case(arrays, diff, kw)


def _attention_fn(q, k, v, *pad, causal, n_prefix, fn=None):
    return (fn or F.scaled_dot_product_attention)(q, k, v, causal=causal, n_prefix=n_prefix,
                                                  key_padding_mask=pad[0] if pad else None)


def _attention_torch(q, k, v, *pad, causal, n_prefix):
    """PyTorch's sdpa with the mask written out independently: True = may attend."""
    T, S = q.shape[2], k.shape[2]
    S_tok = S - n_prefix
    t = np.arange(T)[:, None]
    s = np.arange(S)[None, :]
    allowed = (s < n_prefix) | ((not causal) | (s - n_prefix <= t + S_tok - T))   # (T, S)
    allowed = np.broadcast_to(allowed, (q.shape[0], 1, T, S)).copy()
    if pad:
        p = pad[0].numpy()
        allowed &= ~np.concatenate([np.zeros((p.shape[0], n_prefix), bool), p], axis=1)[:, None, None, :]
    return tF().scaled_dot_product_attention(q, k, v, attn_mask=_torch().from_numpy(allowed))


SPECS = [
    binary("add", lambda a, b: a + b),
    binary("sub", lambda a, b: a - b),
    binary("mul", lambda a, b: a * b),
    binary("div", lambda a, b: a / b, b_values=lambda rng, s: off_kink(rng, s) * 2),
    Spec("pow_scalar", "pow", _draw_pow_scalar, lambda x, e: F.pow(x, e), lambda x, e: x ** e),
    Spec("pow_tensor", "pow", _draw_pow_tensor, F.pow, lambda a, b: a ** b),
    unary("neg", torch_name="neg"),
    unary("exp"),
    unary("log", values=positive),
    unary("sqrt", values=positive),
    unary("tanh"),
    unary("sigmoid"),
    unary("relu", values=off_kink),
    unary("abs", values=off_kink),
    Spec("gelu_exact", "gelu", _draw_plain, lambda x: F.gelu(x), lambda x: tF().gelu(x)),
    Spec("gelu_tanh", "gelu", _draw_plain, lambda x: F.gelu(x, approximate="tanh"),
         lambda x: tF().gelu(x, approximate="tanh")),
    Spec("softmax", "softmax", _draw_one_axis, F.softmax, lambda x, axis: _torch().softmax(x, dim=axis)),
    Spec("log_softmax", "log_softmax", _draw_one_axis, F.log_softmax,
         lambda x, axis: _torch().log_softmax(x, dim=axis)),
    Spec("logsumexp", "logsumexp", _draw_axis_op(normal, min_dims=1), F.logsumexp,
         lambda x, axis, keepdims: _torch().logsumexp(x, dim=dims(axis, x.ndim), keepdim=keepdims)),
    Spec("sum", "sum", _draw_axis_op(normal), F.sum, _sum_torch),
    Spec("mean", "mean", _draw_axis_op(normal), F.mean,
         lambda x, axis, keepdims: x.mean(dim=dims(axis, x.ndim), keepdim=keepdims) if x.ndim else x.clone()),
    Spec("max", "max", _draw_axis_op(distinct), F.max,
         lambda x, axis, keepdims: _torch().amax(x, dim=dims(axis, x.ndim), keepdim=keepdims) if x.ndim else x.clone()),
    Spec("var", "var", _draw_var, F.var,
         lambda x, axis, keepdims, ddof: _torch().var(x, dim=dims(axis, x.ndim), correction=ddof, keepdim=keepdims)
         if x.ndim else x * 0.0),
    Spec("matmul", "matmul", _draw_matmul, F.matmul, lambda a, b: _torch().matmul(a, b)),
    Spec("linear", "linear", _draw_linear, F.linear, lambda x, w, *b: x @ w + (b[0] if b else 0)),
    Spec("reshape", "reshape", _draw_reshape, F.reshape, lambda x, shape: x.reshape(shape)),
    Spec("transpose", "transpose", _draw_plain, F.transpose, lambda x: x.permute(tuple(reversed(range(x.ndim))))),
    Spec("permute", "permute", _draw_permute, F.permute, lambda x, axes: x.permute(tuple(axes))),
    Spec("swapaxes", "swapaxes", _draw_swapaxes, F.swapaxes, lambda x, axis1, axis2: x.transpose(axis1, axis2)),
    Spec("broadcast_to", "broadcast_to", _draw_broadcast_to, F.broadcast_to,
         lambda x, shape: _torch().broadcast_to(x, shape)),
    Spec("getitem", "getitem", _draw_getitem, F.getitem, lambda x, index: x[_torch_index(index)]),
    Spec("concat", "concat", _draw_join(False), lambda *xs, axis: F.concat(xs, axis=axis),
         lambda *xs, axis: _torch().cat(xs, dim=axis)),
    Spec("stack", "stack", _draw_join(True), lambda *xs, axis: F.stack(xs, axis=axis),
         lambda *xs, axis: _torch().stack(xs, dim=axis)),
    Spec("split", "split", _draw_split, _split_fn, _split_torch),
    Spec("where", "where", _draw_where, F.where, lambda c, a, b: _torch().where(c, a, b)),
    Spec("masked_fill", "masked_fill", _draw_masked_fill, F.masked_fill,
         lambda x, m, value: x.masked_fill(m, value)),
    Spec("embedding", "embedding", _draw_embedding, F.embedding, lambda ids, w: tF().embedding(ids, w)),
    Spec("dropout", "dropout", _draw_dropout, _dropout_fn, _dropout_torch, needs_device=True),
    Spec("layer_norm", "layer_norm", _draw_layer_norm,
         lambda x, *wb, eps: F.layer_norm(x, *wb, eps=eps),
         lambda x, *wb, eps: tF().layer_norm(x, x.shape[-1:], *wb, eps=eps)),
    Spec("cross_entropy", "cross_entropy", _draw_cross_entropy, F.cross_entropy, _cross_entropy_torch),
    Spec("attention", "scaled_dot_product_attention", _draw_attention, _attention_fn, _attention_torch),
    Spec("attention_reference", "scaled_dot_product_attention_reference", _draw_attention,
         lambda *a, **kw: _attention_fn(*a, **kw, fn=F.scaled_dot_product_attention_reference), _attention_torch),
    Spec("to_device", "to_device", _draw_plain, _to_device_fn, lambda x, device: x * 2.0, needs_device=True),
    Spec("astype", "astype", _draw_plain, lambda x: F.astype(x, minilm.float64), lambda x: x.to(_torch().float64)),
]
