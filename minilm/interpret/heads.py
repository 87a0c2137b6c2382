"""Looking at one attention head of a GPT: its attention pattern, its OV circuit, and the model without it.

A GPT layer with h heads of size hs computes, for head j (Elhage et al. 2021's notation, tokens as rows):

    x̂ = LN₁(x)                                    (B, T, d)   the block's input, ln_1
    q_j = x̂ W_Q^j,  k_j = x̂ W_K^j,  v_j = x̂ W_V^j (B, T, hs)  columns of c_attn: [q | k | v], head j at j·hs
    A^j = softmax(q_j k_jᵀ / √hs, causal)          (B, T, T)   the attention pattern (the QK circuit)
    y_j = A^j v_j                                  (B, T, hs)
    Attn(x) = Σ_j y_j W_O^j + b_O                  (B, T, d)   W_O^j: rows j·hs … (j+1)·hs − 1 of c_proj

so the layer's output is a sum over heads, and a head can be read (``attention_probs``,
``ov_circuit``) or removed (``ablate_heads``) on its own.

``attention_probs`` — the fused kernel never stores A (it recomputes it in the backward pass),
so the weights are recomputed here from the model's own q and k with the reference attention
(``F.scaled_dot_product_attention_reference``, the composed ops the kernel is tested against),
given the identity as values: A · I = A.  The causal mask, padding and a sparse pattern are
applied exactly as in the forward pass.

``ablate_heads`` — a context manager under which chosen heads' y_j are replaced before W_O:
by zeros ("zero": exactly the model with W_O^j's rows zeroed, or with the head pruned away) or by
their mean over the batch and positions of the current input ("mean", a constant: no gradient
flows through it).  It patches the ``forward`` of the layer's c_proj instance; the kernel, the
parameters and their names are untouched, and everything is restored on exit.

``ov_circuit`` — the head's token-to-logit map through the direct path, V × V:
"if head j attends to token a, by how much does it raise the logit of token b".

This module imports only tensor, functional, backend and models (it trains nothing).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .. import backend
from .. import functional as F
from ..models.base import key_padding_mask
from ..models.gpt import GPT
from ..tensor import Tensor, no_grad

ABLATIONS = ("zero", "mean")

__all__ = ["attention_probs", "ablate_heads", "ov_circuit", "head_ov", "direct_path", "head_pairs", "gpt_of",
           "ABLATIONS"]


def gpt_of(model, who: str) -> GPT:
    """The GPT body of ``model`` (itself, or a GPTClassifier's ``gpt``)."""
    body = getattr(model, "base_model", None)
    if not isinstance(body, GPT):
        found = type(body).__name__ if body is not None else "no base_model"
        raise TypeError(f"{who}: needs a GPT body (per-head reading follows GPT's c_attn / c_proj layout); "
                        f"{type(model).__name__} has {found}")
    return body


def head_pairs(model, heads, who: str = "ablate_heads") -> dict:
    """{layer: sorted head indices} from an iterable of (layer, head) pairs or a {layer: [heads]} dict,
    each checked against the model's layers and each layer's (possibly pruned) head count."""
    gpt = gpt_of(model, who)
    L = gpt.config.n_layer
    pairs = ([(l, j) for l, js in heads.items() for j in ([js] if isinstance(js, (int, np.integer)) else js)]
             if isinstance(heads, dict) else list(heads))
    out = {}
    for pair in pairs:
        if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in pair):
            raise TypeError(f"{who}: heads are (layer, head) integer pairs, got {pair!r}")
        l, j = int(pair[0]), int(pair[1])
        if not 0 <= l < L:
            raise IndexError(f"{who}: layer {l} does not exist (the model has {L} layers, 0–{L - 1})")
        h = gpt.attention_shape(l)[0]
        if not 0 <= j < h:
            raise IndexError(f"{who}: layer {l} has {h} heads (0–{h - 1}); head {j} does not exist")
        out.setdefault(l, set()).add(j)
    return {l: sorted(js) for l, js in sorted(out.items())}


def _queries_keys(attn, x):
    """The attention's q and k for its input x̂ = LN₁(x), as CausalSelfAttention.forward splits them."""
    B, T, _ = x.shape
    H, hs = attn.n_head, attn.head_size
    q, k, _ = F.split(attn.c_attn(x), 3, axis=2)                    # 3 × (B, T, H·hs)
    q = q.reshape(B, T, H, hs).permute(0, 2, 1, 3)                  # (B, H, T, hs)
    k = k.reshape(B, T, H, hs).permute(0, 2, 1, 3)                  # (B, H, T, hs)
    return q, k


@no_grad()
def attention_probs(model, input_ids, attention_mask=None) -> list:
    """Every layer's attention weights on ``input_ids`` (B, T): a list of L host arrays (B, H_l, T, T),
    A[b, j, t, s] the weight query t of head j puts on key s (rows sum to 1; future and padded keys 0).

    Recomputed from the model's q and k with the reference attention and the identity as values
    (module docstring); eval mode is the caller's business (dropout does not touch A).  A model
    with an active Prefix-Tuning prefix is refused: its keys are not tokens of the input."""
    gpt = gpt_of(model, "attention_probs")
    if gpt.prefix is not None and gpt.prefix.active:
        raise ValueError("attention_probs: the model has an active Prefix-Tuning prefix; its weights on the "
                         "prefix keys are not token positions (switch the prefix off first)")
    layers, _ = gpt.hidden_states(input_ids, attention_mask, all_layers=True)   # [H⁰, …, Hᴸ]
    B, T = layers[0].shape[:2]
    kpm = key_padding_mask(attention_mask, (B, T), gpt.device, "attention_probs")
    xp = backend.get_array_module(layers[0].data)
    out = []
    for l, block in enumerate(gpt.layers()):
        attn = block.attn
        q, k = _queries_keys(attn, block.ln_1(layers[l]))           # (B, H, T, hs) each
        eye = xp.broadcast_to(xp.eye(T, dtype=q.dtype), (B, attn.n_head, T, T))
        A = F.scaled_dot_product_attention_reference(q, k, Tensor(xp.ascontiguousarray(eye)), causal=True,
                                                      key_padding_mask=kpm, pattern=attn.pattern)   # A · I = A
        out.append(backend.to_numpy(A.data).astype(np.float64))     # (B, H, T, T)
    return out


@contextmanager
def ablate_heads(model, heads, mode: str = "zero"):
    """``with ablate_heads(model, [(1, 0), (1, 3)]):`` the model without those heads' outputs.

    heads: (layer, head) pairs or {layer: [heads]}.  In each named layer the heads' outputs y_j
    (B, T, hs), just before the output projection W_O, become

        "zero"   0                    Attn(x) = Σ_{i ∉ S} y_i W_O^i + b_O  (the bias stays)
        "mean"   mean_{b,t} y_j[b, t]  a constant vector per head, from the current input

    "zero" equals zeroing the heads' rows of c_proj.weight, or removing them (prune_heads).
    Gradients flow through the kept heads only.  Contexts nest; on exit each patched c_proj
    gets back what it had."""
    if mode not in ABLATIONS:
        raise ValueError(f"ablate_heads: mode must be one of {ABLATIONS}, got {mode!r}")
    gpt = gpt_of(model, "ablate_heads")
    plan = head_pairs(model, heads)
    blocks = list(gpt.layers())
    patched = []
    try:
        for l, drop in plan.items():
            attn = blocks[l].attn
            H, hs = attn.n_head, attn.head_size
            keep = np.ones(H * hs)
            for j in drop:
                keep[j * hs:(j + 1) * hs] = 0.0                    # (H·hs,): 0 on the ablated heads' slices
            proj = attn.c_proj
            patched.append((proj, vars(proj).get("forward")))
            object.__setattr__(proj, "forward", _ablated_forward(proj.forward, keep, mode))
        yield model
    finally:
        for proj, before in reversed(patched):
            if before is None:
                del vars(proj)["forward"]
            else:
                object.__setattr__(proj, "forward", before)


def _ablated_forward(inner, keep: np.ndarray, mode: str):
    """c_proj's forward with y (B, T, H·hs) ⊙ keep (+ the ablated slices' mean, for "mean") as input."""
    def forward(y):
        xp = backend.get_array_module(y.data)
        k = backend.to_device(keep.astype(y.dtype), y.device)      # (H·hs,)
        kept = y * Tensor(k)                                        # the ablated heads' slices zeroed
        if mode == "mean":
            mean = y.data.reshape(-1, y.shape[-1]).mean(axis=0)     # (H·hs,), over batch and positions
            kept = kept + Tensor(xp.ascontiguousarray(mean * (1 - k)))
        return inner(kept)
    return forward


@no_grad()
def ov_circuit(model, layer: int, head: int) -> np.ndarray:
    """The head's OV circuit through the direct path, a (V, V) host array (float64):

        M = Ê W_V^j W_O^j Û,   Ê = E C diag(γ₁),   Û = C diag(γ_f) Eᵀ

    E (V, d) the token embedding (also the tied head, G1), C = I − 11ᵀ/d LayerNorm's centring,
    γ₁ and γ_f the gains of the layer's ln_1 and of ln_f.  Row a, column b: how much attending
    to a token a raises the logit of b, by the path embedding → this head → unembedding.
    LayerNorm's 1/σ (a positive number per position) and every bias are left out, and so is
    what earlier layers add to the residual stream (the value of a later-layer head reads it too)."""
    gpt = gpt_of(model, "ov_circuit")
    (l, [j]), = head_pairs(model, [(layer, head)], "ov_circuit").items()
    W_V, W_O = head_ov(gpt, l, j)
    E_in, U = direct_path(gpt, l)
    return E_in @ W_V @ W_O @ U                                     # (V, d)(d, hs)(hs, d)(d, V)


def head_ov(gpt: GPT, l: int, j: int):
    """(W_V^j (d, hs), W_O^j (hs, d)) of head j in layer l, float64 host arrays."""
    attn = gpt.layers()[l].attn
    H, hs = attn.n_head, attn.head_size
    w_qkv = backend.to_numpy(attn.c_attn.weight.data).astype(np.float64)     # (d, 3·H·hs): [q | k | v]
    w_o = backend.to_numpy(attn.c_proj.weight.data).astype(np.float64)       # (H·hs, d)
    v0 = 2 * H * hs + j * hs
    return w_qkv[:, v0:v0 + hs], w_o[j * hs:(j + 1) * hs]


def direct_path(gpt: GPT, l: int):
    """(Ê (V, d), Û (d, V)): the embedding as layer l's ln_1 sees it, the unembedding after ln_f (linear parts)."""
    E = backend.to_numpy(gpt.transformer.wte.weight.data).astype(np.float64)   # (V, d)
    d = E.shape[1]
    C = np.eye(d) - 1.0 / d                                                     # centring, (d, d)
    g1 = backend.to_numpy(gpt.layers()[l].ln_1.weight.data).astype(np.float64)
    gf = backend.to_numpy(gpt.transformer.ln_f.weight.data).astype(np.float64)
    return E @ C * g1, (C * gf) @ E.T                                           # E C diag(γ₁); C diag(γ_f) Eᵀ
