"""Scaled dot-product attention as one fused op.

    S = q kᵀ · scale              (B, H, T, S)   scores
    S[blocked] = −∞                               causal future, padding keys, outside a sparse pattern
    P = softmax(S)  = exp(S − lse),  lse = log Σ_s exp(S)   (per query row)
    O = P v                        (B, H, T, Dv)

Backward, with D = rowsum(dO ⊙ O):
    dV = Pᵀ dO        dP = dO vᵀ        dS = P ⊙ (dP − D)
    dq = dS k · scale                  dk = dSᵀ q · scale

Only O and lse are saved; the backward recomputes P from them.  On "cpu" both
passes run in minilm.kernels.attention_cpu: a Numba flash kernel that streams
key blocks with an online softmax and never holds the T×S matrix.  On "cuda"
(and on "strict", which tests that code path without a GPU) they are composed
from the array module's batched matmuls.  The readable definition, made of
ordinary differentiable ops, is F.scaled_dot_product_attention_reference.

A sparse ``pattern`` (minilm.ops.patterns.SparsePattern: sliding window, global
tokens, random blocks -- Longformer, BigBird) blocks every key it does not show.
The CPU kernel then visits only the key blocks the pattern marks, so the cost is
linear in T; the composed path masks the full T×S scores with the pattern's dense
mask (``SparsePattern.visible``), as the reference does.  The random blocks are
drawn once in the forward and kept for the backward.

float16 q, k, v are lifted to float32 at the op's door (``upcast``, reduce.py):
the kernel and the composed path then run in float32 -- scores, the row max,
lse and every gradient accumulate there -- and O, dq, dk, dv are rounded back
to float16.  The arrays saved for the backward are those float32 copies.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..function import Function, device_of, get_array_module
from .reduce import downcast, upcast

_MASK_VALUE = -1e30  # finite, so that a fully masked row never produces NaN
_causal_cache: dict = {}
_pattern_cache: dict = {}


def blocked_positions(xp, device, B, T, S, causal, n_prefix, key_padding_mask, pattern=None, n_heads=1):
    """Boolean (B|1, H|1, T, S): True where query t may NOT attend to key s (None: nothing blocked).

    Keys are [n_prefix prefix positions | S − n_prefix token positions].  The
    prefix is visible to every query.  With ``causal``, the T queries are the
    last T token positions, and query t sees token keys up to its own position.
    A ``pattern`` (SparsePattern) also blocks the token keys it does not show
    (per head when it has random blocks: the H axis is then n_heads).
    """
    blocked = None
    if pattern is not None:
        key = (pattern, T, S, n_prefix, bool(causal), n_heads, device)
        blocked = _pattern_cache.get(key)
        if blocked is None:
            hidden = ~pattern.visible(T, S, n_prefix, causal, n_heads)       # (H|1, T, S), host
            blocked = backend.to_device(hidden[None], device)              # (1, H|1, T, S)
            if len(_pattern_cache) > 16:
                _pattern_cache.clear()
            _pattern_cache[key] = blocked
        causal = False                                                     # the pattern's mask includes it
    S_tok = S - n_prefix
    if causal:
        key = (T, S, n_prefix, device)
        blocked = _causal_cache.get(key)
        if blocked is None:
            i = xp.arange(T)[:, None]                         # query positions  (T, 1)
            j = xp.arange(S_tok)[None, :]                     # token key positions (1, S_tok)
            future = j > i + (S_tok - T)                      # (T, S_tok)
            prefix = xp.zeros((T, n_prefix), dtype=bool)      # (T, n_prefix): always visible
            blocked = xp.concatenate([prefix, future], axis=1)[None, None]  # (1, 1, T, S)
            if len(_causal_cache) > 64:
                _causal_cache.clear()
            _causal_cache[key] = blocked
    if key_padding_mask is not None:
        pad = xp.concatenate([xp.zeros((B, n_prefix), dtype=bool), key_padding_mask], axis=1)  # (B, S)
        pad = pad[:, None, None, :]                           # (B, 1, 1, S)
        blocked = pad if blocked is None else blocked | pad
    return blocked


class ScaledDotProductAttention(Function):
    """O = softmax(q kᵀ · scale, masked) v, saving only O and the row log-sum-exp (see module docstring)."""

    def forward(ctx, q, k, v, causal=False, key_padding=None, scale=1.0, n_prefix=0, pattern=None):
        xp = get_array_module(q)
        ctx.causal, ctx.key_padding, ctx.scale, ctx.n_prefix = causal, key_padding, scale, n_prefix
        ctx.pattern, ctx.sparse = pattern, None
        B, H, T, D = q.shape
        S, Dv = k.shape[2], v.shape[3]
        ctx.empty = B * H * T == 0       # no heads (a head-pruned layer) or no queries: nothing to attend
        if ctx.empty:
            ctx.shapes = (q.shape, k.shape, v.shape)
            return xp.zeros((B, H, T, Dv), dtype=q.dtype)                  # (B, H, T, Dv), empty
        dtype, q, k, v = q.dtype, upcast(q), upcast(k), upcast(v)        # float16 -> float32
        if xp is np:
            from ..kernels import attention_cpu as kernel
            q3, k3, v3 = (np.ascontiguousarray(a).reshape(B * H, a.shape[2], a.shape[3]) for a in (q, k, v))  # (BH, ·, ·)
            if pattern is not None:  # drawn once: the backward sees the same random blocks
                ctx.sparse = pattern.kernel_args(T, S, n_prefix, causal, H)
            o, lse = kernel.forward(q3, k3, v3, scale, causal, n_prefix, key_padding, H, ctx.sparse)
            ctx.save_for_backward(q3, k3, v3, o, lse)
            return downcast(o.reshape(B, H, T, Dv), dtype)
        p, lse = _probabilities(xp, q, k, ctx)                             # P (B, H, T, S), lse (B, H, T, 1)
        o = p @ v                                                          # (B, H, T, Dv)
        ctx.save_for_backward(q, k, v, o, lse)
        return downcast(o, dtype)

    def backward(ctx, do):
        xp = get_array_module(do)
        if ctx.empty:                                                      # an empty output has zero gradient
            return tuple(xp.zeros(shape, dtype=do.dtype) for shape in ctx.shapes)
        dtype, do = do.dtype, upcast(do)
        return tuple(downcast(grad, dtype) for grad in ctx._backward(xp, do))

    def _backward(ctx, xp, do):
        """(dq, dk, dv) in the dtype the forward computed in."""
        if xp is np:
            from ..kernels import attention_cpu as kernel
            q3, k3, v3, o, lse = ctx.saved
            B, H, T, Dv = do.shape
            dq, dk, dv = kernel.backward(q3, k3, v3, o, lse, np.ascontiguousarray(do).reshape(B * H, T, Dv),
                                         ctx.scale, ctx.causal, ctx.n_prefix, ctx.key_padding, H, ctx.sparse)
            S, D = k3.shape[1], q3.shape[2]
            return dq.reshape(B, H, T, D), dk.reshape(B, H, S, D), dv.reshape(B, H, S, Dv)
        q, k, v, o, lse = ctx.saved
        p, _ = _probabilities(xp, q, k, ctx, lse)                          # P = exp(S − lse), recomputed
        dv = p.swapaxes(-1, -2) @ do                                       # Pᵀ dO
        dp = do @ v.swapaxes(-1, -2)                                       # dO vᵀ
        d = (do * o).sum(axis=-1, keepdims=True)                           # D = rowsum(dO ⊙ O)
        ds = p * (dp - d)                                                  # dS = P ⊙ (dP − D)
        dq = (ds @ k) * ctx.scale
        dk = (ds.swapaxes(-1, -2) @ q) * ctx.scale
        return dq, dk, dv


def _probabilities(xp, q, k, ctx, lse=None):
    """P = exp(S − lse) for the masked scaled scores S (computing lse unless given).

    A row that sees no key gets P = 0 (its lse is kept finite, so nothing is NaN).
    """
    B, H, T, _ = q.shape
    S = k.shape[2]
    scores = (q @ k.swapaxes(-1, -2)) * ctx.scale                          # (B, H, T, S)
    blocked = blocked_positions(xp, device_of(q), B, T, S, ctx.causal, ctx.n_prefix, ctx.key_padding,
                                ctx.pattern, H)
    if blocked is not None:
        scores = xp.where(blocked, xp.asarray(_MASK_VALUE, dtype=scores.dtype), scores)
    if lse is None:
        m = scores.max(axis=-1, keepdims=True)
        lse = m + xp.log(xp.exp(scores - m).sum(axis=-1, keepdims=True))  # (B, H, T, 1)
    p = xp.exp(scores - lse)
    if ctx.key_padding is not None or ctx.pattern is not None:              # rows with no visible key
        p *= ~blocked.all(axis=-1, keepdims=True)
    return p, lse
