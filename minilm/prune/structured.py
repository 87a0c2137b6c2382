"""Structured pruning: remove whole attention heads and MLP neurons by slicing the matrices.

The pruned model is really smaller and faster.  For a layer with h heads of size hs,
c_attn is (d, 3·h·hs) with the q, k and v blocks side by side and head j owns

    c_attn columns   q: j·hs … (j+1)·hs − 1,   k: h·hs + (same),   v: 2·h·hs + (same)
    c_proj rows      j·hs … (j+1)·hs − 1

(c_attn's bias entries go with its columns; c_proj's bias stays).  Since the
heads' outputs are concatenated before c_proj,

    y = [o_1 … o_h] W_proj + b = Σ_j o_j W_proj[rows_j] + b,

removing head j gives exactly the model in which head j's output o_j is zero.
Likewise an MLP neuron i owns column i of c_fc (and b_fc[i]) and row i of the
MLP's c_proj: y = GELU(x W_fc + b_fc) W_proj + b = Σ_i GELU(·)_i W_proj[i] + b.
:func:`prune_heads` / :func:`prune_neurons` record the per-layer counts in the
config (``GPTConfig.layer_heads`` / ``layer_mlp``), so ``save_checkpoint(path,
model, model.config.to_dict())`` reloads into ``GPT(GPTConfig.from_dict(...))``.
A layer may lose every head (c_attn (d, 0), c_proj (0, d)) or every neuron: it then
adds only its c_proj bias.

The lowest-scoring groups over all layers go first (:func:`prune_heads_by_score`,
:func:`prune_neurons_by_score`, scores from :mod:`minilm.prune.scores`), keeping at
least ``min_per_layer`` (default 1) in every layer unless asked otherwise.

GPT only: the pruned shapes are recorded in GPTConfig, so the model's body
(``model.base_model``) must be a minilm GPT; any other model is refused up front.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import backend
from ..models.gpt import GPT
from ..nn import Linear, Module, Parameter

__all__ = ["prune_heads", "prune_neurons", "prune_heads_by_score", "prune_neurons_by_score", "structure",
           "gpt_body"]


def gpt_body(model: Module, what: str) -> GPT:
    """The GPT body of ``model`` (``model.base_model``: the model itself or a GPTClassifier's gpt)."""
    body = getattr(model, "base_model", None)
    if not isinstance(body, GPT):
        found = type(body).__name__ if body is not None else "no base_model"
        raise TypeError(f"{what}: structured pruning records the pruned shapes in GPTConfig (layer_heads, "
                        f"layer_mlp), so it needs a GPT body; {type(model).__name__} has {found}")
    return body


def _plain(layer, name):
    if not isinstance(layer, Linear):
        raise TypeError(f"structured pruning needs plain Linear layers; {name} is a {type(layer).__name__} "
                        "(make_permanent / peft.merge_and_unload first)")
    return layer


def head_columns(h: int, hs: int, heads) -> np.ndarray:
    """c_attn columns of ``heads`` (a layer of h heads of size hs): their q columns, then k, then v."""
    heads = np.asarray(list(heads), dtype=np.int64)
    cols = [p * h * hs + (heads[:, None] * hs + np.arange(hs)).ravel() for p in range(3)]   # q, k, v blocks
    return np.concatenate(cols) if heads.size else np.zeros(0, np.int64)


def head_rows(hs: int, heads) -> np.ndarray:
    """c_proj rows of ``heads``: j·hs … (j+1)·hs − 1 for each j."""
    heads = np.asarray(list(heads), dtype=np.int64)
    return (heads[:, None] * hs + np.arange(hs)).ravel() if heads.size else np.zeros(0, np.int64)


def attention_matrices(block, l: int):
    """(c_attn, c_proj) of layer l's attention, refused unless both are plain Linear layers."""
    return _plain(block.attn.c_attn, f"layer {l} attn.c_attn"), _plain(block.attn.c_proj, f"layer {l} attn.c_proj")


def mlp_matrices(block, l: int):
    """(c_fc, c_proj) of layer l's MLP, refused unless both are plain Linear layers."""
    return _plain(block.mlp.c_fc, f"layer {l} mlp.c_fc"), _plain(block.mlp.c_proj, f"layer {l} mlp.c_proj")


def _check_plan(plan, sizes, what, unit):
    """{layer: [indices]} → {layer: sorted unique indices}; errors name the bad layer or index."""
    if not isinstance(plan, dict):
        raise TypeError(f"{what}: expected a dict {{layer: [{unit} indices]}}, got {type(plan).__name__}")
    out = {}
    L = len(sizes)
    for layer, idx in plan.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < L:
            raise IndexError(f"{what}: layer {layer!r} does not exist (the model has {L} layers, 0–{L - 1})")
        idx = [idx] if isinstance(idx, (int, np.integer)) else list(idx)
        n = sizes[int(layer)]
        bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n]
        if bad:
            have = f"0–{n - 1}" if n else "none left"
            raise IndexError(f"{what}: layer {int(layer)} has {n} {unit}s ({have}); {unit} {bad[0]!r} does not exist")
        if len(set(int(i) for i in idx)) != len(idx):
            raise ValueError(f"{what}: layer {int(layer)} lists a {unit} twice: {idx}")
        out[int(layer)] = sorted(int(i) for i in idx)
    return out


def _sliced(p: Parameter, index) -> Parameter:
    """A new, smaller Parameter: p's entries at ``index`` (host index arrays are moved to p's device)."""
    dev = p.device
    index = tuple(backend.to_device(i, dev) if isinstance(i, np.ndarray) else i for i in index)
    return Parameter(p.data[index].copy(), requires_grad=p.requires_grad)


def _slice_linear(layer: Linear, rows=None, cols=None):
    """Keep ``rows`` of the weight (inputs) and ``cols`` of the weight and bias (outputs)."""
    r = slice(None) if rows is None else rows
    c = slice(None) if cols is None else cols
    layer.weight = _sliced(layer.weight, (r, c))
    if layer.bias is not None and cols is not None:
        layer.bias = _sliced(layer.bias, (c,))
    layer.in_features, layer.out_features = layer.weight.shape


def _heads(gpt: GPT) -> list:
    return [gpt.attention_shape(l)[0] for l in range(len(gpt.layers()))]


def _widths(gpt: GPT) -> list:
    return [b.mlp.hidden for b in gpt.layers()]


def prune_heads(model: Module, heads: dict) -> Module:
    """Remove attention heads: ``heads`` = {layer: [head indices]} (indices of the layer's current heads).

    In layer l with h heads of size hs, c_attn (d, 3·h·hs) loses head j's q, k and v columns
    (j·hs…, h·hs + j·hs…, 2h·hs + j·hs…, hs each) and bias entries; c_proj (h·hs, d) loses rows
    j·hs … (j+1)·hs − 1 (its bias stays).  New, smaller Parameters replace the old ones;
    ``config.layer_heads`` records the heads left (a new config object).  Equivalent to
    zeroing those heads' outputs (module docstring).  Every head of a layer may go.
    """
    gpt = gpt_body(model, "prune_heads")
    blocks = list(gpt.layers())
    plan = _check_plan(heads, _heads(gpt), "prune_heads", "head")
    for l, drop in plan.items():
        if not drop:
            continue
        h, hs = gpt.attention_shape(l)
        c_attn, c_proj = attention_matrices(blocks[l], l)
        dropped = set(drop)
        keep = [j for j in range(h) if j not in dropped]
        _slice_linear(c_attn, cols=head_columns(h, hs, keep))    # (d, 3·h·hs) -> (d, 3·h'·hs)
        _slice_linear(c_proj, rows=head_rows(hs, keep))          # (h·hs, d) -> (h'·hs, d)
        blocks[l].attn.n_head = len(keep)
    if any(plan.values()):
        gpt.config = dataclasses.replace(gpt.config, layer_heads=[b.attn.n_head for b in blocks])
    return model


def prune_neurons(model: Module, neurons: dict) -> Module:
    """Remove MLP neurons: ``neurons`` = {layer: [neuron indices]} (of the layer's current neurons).

    Neuron i of layer l: column i of c_fc (d, m) and its bias entry, row i of the MLP's
    c_proj (m, d).  ``config.layer_mlp`` records the widths left.  Equivalent to zeroing
    those neurons' outputs.
    """
    gpt = gpt_body(model, "prune_neurons")
    blocks = list(gpt.layers())
    plan = _check_plan(neurons, _widths(gpt), "prune_neurons", "neuron")
    for l, drop in plan.items():
        if not drop:
            continue
        mlp = blocks[l].mlp
        c_fc, c_proj = mlp_matrices(blocks[l], l)
        dropped = set(drop)
        keep = np.array([i for i in range(mlp.hidden) if i not in dropped], dtype=np.int64)
        _slice_linear(c_fc, cols=keep)                           # (d, m) -> (d, m')
        _slice_linear(c_proj, rows=keep)                         # (m, d) -> (m', d)
        mlp.hidden = int(keep.size)
    if any(plan.values()):
        gpt.config = dataclasses.replace(gpt.config, layer_mlp=[b.mlp.hidden for b in blocks])
    return model


def _choose_lowest(scores, sizes, amount, min_per_layer, what, unit):
    """{layer: [indices]} of the ``amount`` lowest scores over all layers, leaving ≥ min_per_layer per layer."""
    scores = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    if [len(s) for s in scores] != list(sizes):
        raise ValueError(f"{what}: scores have lengths {[len(s) for s in scores]} but the layers have "
                         f"{list(sizes)} {unit}s (scores from before an earlier pruning?)")
    total = sum(sizes)
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: amount must be a count (int) or a fraction (float), got {amount!r}")
    if isinstance(amount, (float, np.floating)):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"{what}: a fractional amount must be in [0, 1], got {amount}")
        n = int(round(amount * total))
    else:
        n = int(amount)
    removable = sum(max(0, s - min_per_layer) for s in sizes)
    if not 0 <= n <= removable:
        raise ValueError(f"{what}: cannot remove {n} of {total} {unit}s keeping at least {min_per_layer} per "
                         f"layer (at most {removable} can go)")
    order = sorted(((float(s[j]), l, j) for l, s in enumerate(scores) for j in range(len(s))))
    left, plan, taken = list(sizes), {}, 0
    for _, l, j in order:
        if taken == n:
            break
        if left[l] > min_per_layer:
            plan.setdefault(l, []).append(j)
            left[l] -= 1
            taken += 1
    return plan


def prune_heads_by_score(model: Module, amount, scores, min_per_layer: int = 1) -> dict:
    """Remove the lowest-scoring heads over all layers; returns the {layer: [heads]} removed.

    amount: a count (int) or a fraction of the heads the model has now (float, rounded);
    scores: :func:`~minilm.prune.scores.head_importance`'s list.  Each layer keeps at least
    ``min_per_layer`` heads (ties: lower layer, then lower head, goes first).
    """
    sizes = _heads(gpt_body(model, "prune_heads_by_score"))
    plan = _choose_lowest(scores, sizes, amount, min_per_layer, "prune_heads_by_score", "head")
    prune_heads(model, plan)
    return plan


def prune_neurons_by_score(model: Module, amount, scores, min_per_layer: int = 1) -> dict:
    """Remove the lowest-scoring MLP neurons over all layers (as :func:`prune_heads_by_score`)."""
    sizes = _widths(gpt_body(model, "prune_neurons_by_score"))
    plan = _choose_lowest(scores, sizes, amount, min_per_layer, "prune_neurons_by_score", "neuron")
    prune_neurons(model, plan)
    return plan


def structure(model: Module) -> dict:
    """Heads and MLP widths per layer, and the fractions removed relative to the unpruned config:

        heads_removed = 1 − Σ_l h_l / (L·n_head),   neurons_removed = 1 − Σ_l m_l / (L·4·d)
    """
    gpt = gpt_body(model, "structure")
    c = gpt.config
    heads, mlp = _heads(gpt), _widths(gpt)
    return {"heads": heads, "mlp": mlp,
            "heads_removed": 1 - sum(heads) / (c.n_layer * c.n_head),
            "neurons_removed": 1 - sum(mlp) / (c.n_layer * 4 * c.n_embd),
            "parameters": gpt.num_parameters()}
