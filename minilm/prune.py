"""Pruning: take weights out of a trained GPT, by entry (unstructured) or by head and neuron (structured).

Unstructured magnitude pruning (Han et al. 2015).  A mask M ∈ {0, 1} of the
weight's shape is kept beside the weight, and the layer computes with their product:

    W = W_orig ⊙ M                         (the effective weight; ⊙ is the elementwise product)
    y = x W + b                            (minilm's row convention: W is (in, out))
    ∂L/∂W_orig = M ⊙ ∂L/∂W = M ⊙ (xᵀ g),   g = ∂L/∂y (summed over the tokens)

so a pruned entry (M = 0) contributes nothing and gets exactly zero gradient:
fine-tuning cannot bring it back.  (An optimizer may still move W_orig there —
AdamW's weight decay shrinks it — but W stays 0.)  The names follow
``torch.nn.utils.prune``: ``weight_orig`` and the buffer ``weight_mask``.
:func:`magnitude_prune` zeroes the entries of smallest |W|, in each layer
("layer") or over all targeted layers together ("global");
:func:`make_permanent` folds W_orig ⊙ M into a plain Linear again.  The matrices
keep their shape: a dense matmul of a matrix full of zeros costs what it did,
so unstructured pruning saves no time here (it would need sparse kernels).

``amount`` is the target sparsity of the scope: after ``magnitude_prune(model, a)``
a fraction ``a`` of the entries in each layer ("layer") or in all targeted
layers together ("global") is pruned, exactly round(a·n) of the n entries
(Python's round).  Pruning composes: entries already pruned stay pruned and
count towards the target, and only the round(a·n) − (already pruned) smallest
|W| among the remaining entries are added; a target at or below the current
sparsity prunes nothing.  (torch's ``amount`` is instead a fraction of the
entries *remaining*; the two agree on the first call, and torch's a' after a
sparsity s corresponds to this a = s + a'(1 − s).)

Structured pruning removes whole heads and MLP neurons and really slices the
matrices, so the pruned model is smaller and faster.  For a layer with h heads
of size hs, c_attn is (d, 3·h·hs) with the q, k and v blocks side by side and
head j owns

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

Which heads and neurons?  :func:`head_importance` / :func:`neuron_importance`:
  "norm"  s_j = √(Σ_{w ∈ S_j} w²) over the group's weights S_j (the columns and
          rows above; biases are not counted);
  "grad"  s_j = Σ_batches Σ_{w ∈ S_j} |w · ∂L/∂w|, the first-order Taylor
          estimate of the loss change when w is set to zero,
          L(w ← 0) − L ≈ −w ∂L/∂w (Molchanov et al. 2017), summed as absolute
          values over the group's weights and over the given batches.
The lowest-scoring groups over all layers go first (:func:`prune_heads_by_score`,
:func:`prune_neurons_by_score`), keeping at least ``min_per_layer`` (default 1)
in every layer so that no layer loses its whole attention or MLP unless asked
(a layer with none left does work: it adds only its c_proj bias).

Recovery.  :func:`finetune_pruned` fine-tunes a pruned model, all its parameters
or a LoRA merged back afterwards (on a masked layer the LoRA update is masked as
well, :class:`MaskedLoRALinear`, so merging keeps the zeros exactly);
:func:`iterative_prune` alternates pruning and fine-tuning in rounds up to a
final sparsity (gradual pruning, Zhu & Gupta 2017).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import sys
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .nn import Embedding, Linear, Module, Parameter
from .peft.lora import LoRALinear
from .tensor import Generator, Tensor

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")
METHODS = ("norm", "grad")

__all__ = [
    "PrunedLinear", "magnitude_prune", "sparsity", "make_permanent", "attach_masks", "pruned_layers",
    "head_importance", "neuron_importance", "prune_heads", "prune_neurons",
    "prune_heads_by_score", "prune_neurons_by_score", "structure", "MaskedLoRALinear", "finetune_pruned",
    "iterative_prune", "DEFAULT_TARGETS",
]


# ---- unstructured: the mask ------------------------------------------------------------------------
class PrunedLinear(Module):
    """A Linear with a 0/1 mask beside its weight: y = x (W_orig ⊙ M) + b.

    ``weight_orig`` and ``bias`` are the wrapped Linear's own Parameters (the same
    objects, as LoRALinear keeps them); ``weight_mask`` M is a buffer of the
    weight's shape and dtype (saved, moved with ``.to``, never trained).

    Gradients (g = ∂L/∂y, x the layer's input, tokens as rows):
        ∂L/∂W_orig = M ⊙ (xᵀ g),   ∂L/∂b = Σ_tokens g,   ∂L/∂x = g (W_orig ⊙ M)ᵀ
    so pruned entries (M = 0) get exactly zero gradient.
    """

    def __init__(self, base: Linear, mask=None):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"PrunedLinear wraps a minilm.nn.Linear, got {type(base).__name__} "
                            "(merge LoRA layers first: peft.merge_and_unload)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight_orig = base.weight                        # the base's own Parameter
        self.bias = base.bias
        w = base.weight
        xp = backend.get_array_module(w.data)
        if mask is None:
            m = xp.ones(w.shape, dtype=w.dtype)
        else:
            m = mask.data if isinstance(mask, Tensor) else mask
            if tuple(m.shape) != w.shape:
                raise ValueError(f"PrunedLinear: mask of shape {tuple(m.shape)} does not fit weight {w.shape}")
            m = backend.to_device(m if backend.is_array(m) else np.asarray(m), w.device).astype(w.dtype)
        self.register_buffer("weight_mask", Tensor(m))
        self._base = (base,)                                  # a tuple: hidden from the module tree

    @property
    def weight(self) -> Tensor:
        """The effective weight W_orig ⊙ M (differentiable in W_orig)."""
        return self.weight_orig * self.weight_mask

    def forward(self, x):
        return F.linear(x, self.weight_orig * self.weight_mask, self.bias)   # (..., in) -> (..., out)

    def base_layer(self) -> Linear:
        return self._base[0]

    def n_pruned(self) -> int:
        return int(self.weight_mask.numel() - float(self.weight_mask.data.sum()))

    def extra_repr(self):
        n = self.weight_mask.numel()
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"sparsity={self.n_pruned() / max(n, 1):.3f}")


def _matches(name: str, targets) -> bool:
    """A module name equal to a target, ending in ".<target>", or matching it as a glob."""
    return any(name == t or name.endswith("." + t) or fnmatch.fnmatchcase(name, t) for t in targets)


def _parent_of(model: Module, name: str):
    parent = model
    *path, attr = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    return parent, attr


def _embedding_weight_ids(model: Module):
    return {id(m.weight) for _, m in model.named_modules() if isinstance(m, Embedding)}


def _linear_layers(model: Module, targets, kinds=(Linear, PrunedLinear), what="magnitude_prune"):
    """(name, module) of the Linear / PrunedLinear modules whose names match ``targets``."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    found, lora = [], []
    for name, m in model.named_modules():
        if name and _matches(name, targets):
            if isinstance(m, kinds):
                found.append((name, m))
            elif isinstance(m, LoRALinear):
                lora.append(name)
    if lora:
        raise TypeError(f"{what}: {lora[:4]} are LoRA layers; merge them first (peft.merge_and_unload)")
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, kinds)]
        raise KeyError(f"{what}: no Linear layer matches targets={list(targets)}; the model's Linear layers "
                       f"include {linears[:8]}{' ...' if len(linears) > 8 else ''}")
    tied = _embedding_weight_ids(model)
    shared = [n for n, m in found if id(m.weight_orig if isinstance(m, PrunedLinear) else m.weight) in tied]
    if shared:
        raise ValueError(f"{what}: {shared} share their weight with an embedding (tied); the tied "
                         "embedding is never pruned")
    return found


def pruned_layers(model: Module):
    """(name, PrunedLinear) of every masked layer."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PrunedLinear)]


def _wrap(model: Module, layers):
    """Put a PrunedLinear (mask of ones) around every plain Linear in ``layers``; returns the wrapped list."""
    out = []
    for name, m in layers:
        if isinstance(m, Linear):
            parent, attr = _parent_of(model, name)
            m = PrunedLinear(m)
            setattr(parent, attr, m)
        out.append((name, m))
    return out


def _select_smallest(scores: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k smallest scores among the alive entries (ties: the lower index first)."""
    idx = np.flatnonzero(alive)
    order = np.argsort(scores[idx], kind="stable")
    return idx[order[:k]]


def magnitude_prune(model: Module, amount: float, scope: str = "global", targets=DEFAULT_TARGETS) -> dict:
    """Prune the entries of smallest |W| so that a fraction ``amount`` of each layer ("layer") or of all
    targeted layers together ("global") is pruned; returns :func:`sparsity` of the targets.

        n_prune = round(amount · n) − (entries already pruned)      (nothing if ≤ 0)
        chosen  = the n_prune smallest |W_orig ⊙ M| among entries with M = 1;  M ← 0 there

    ``targets``: module names (equal, ending in ".<name>", or a glob) of Linear layers;
    the default is every attention and MLP matrix.  The tied token embedding is never
    pruned.  Plain Linears are wrapped in :class:`PrunedLinear` (same Parameter objects).
    Global scope compares raw magnitudes across layers (as torch's global_unstructured):
    layers with smaller weights (GPT-2's scaled c_proj) lose more.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"magnitude_prune: amount must be a fraction in [0, 1], got {amount!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"magnitude_prune: scope must be 'layer' or 'global', got {scope!r}")
    layers = _wrap(model, _linear_layers(model, targets))
    amount = float(amount)
    host = [(backend.to_numpy(m.weight_orig.data), backend.to_numpy(m.weight_mask.data)) for _, m in layers]
    if scope == "layer":
        groups = [[i] for i in range(len(layers))]
    else:
        groups = [list(range(len(layers)))]
    for group in groups:
        w = np.concatenate([np.abs(host[i][0].astype(np.float64)).ravel() for i in group])
        alive = np.concatenate([host[i][1].ravel() != 0 for i in group])
        n = w.size
        k = int(round(amount * n)) - int(n - alive.sum())
        if k <= 0:
            continue
        chosen = _select_smallest(w, alive, k)
        alive[chosen] = False
        start = 0
        for i in group:
            _, m = layers[i]
            size = m.weight_mask.numel()
            new = alive[start:start + size].reshape(m.weight_mask.shape).astype(m.weight_mask.dtype)
            m.weight_mask.data = backend.to_device(new, m.weight_mask.device)
            start += size
    return sparsity(model, targets)


def sparsity(model: Module, targets=DEFAULT_TARGETS) -> dict:
    """Fraction of zero entries in the effective weights of the targeted Linear / PrunedLinear layers:

        {"layers": {name: zeros/n}, "zeros": Σ zeros, "n": Σ n, "total": Σ zeros / Σ n}
    """
    layers = _linear_layers(model, targets, what="sparsity")
    out, zeros, n = OrderedDict(), 0, 0
    for name, m in layers:
        if isinstance(m, PrunedLinear):
            w = backend.to_numpy(m.weight_orig.data) * backend.to_numpy(m.weight_mask.data)
        else:
            w = backend.to_numpy(m.weight.data)
        z = int((w == 0).sum())
        out[name] = z / max(w.size, 1)
        zeros, n = zeros + z, n + w.size
    return {"layers": dict(out), "zeros": zeros, "n": n, "total": zeros / max(n, 1)}


def make_permanent(model: Module) -> Module:
    """Every PrunedLinear back to a plain Linear with weight W_orig ⊙ M (the same Parameter object, so
    the names are those before pruning: ``….c_attn.weight``); the outputs do not change."""
    for name, m in pruned_layers(model):
        base = m.base_layer()
        w = m.weight_orig
        w.data = w.data * m.weight_mask.data                  # pruned entries are exact zeros now
        base.weight, base.bias = w, m.bias
        base.in_features, base.out_features = w.shape
        parent, attr = _parent_of(model, name)
        setattr(parent, attr, base)
    return model


def attach_masks(model: Module, state) -> Module:
    """Wrap in PrunedLinear (mask of ones) every Linear that ``state`` (a state dict, or its keys) has a
    ``<name>.weight_mask`` for, so that a state saved with masks loads: ``attach_masks(model, ckpt.state);
    ckpt.load_into(model)``."""
    names = [k[:-len(".weight_mask")] for k in state if k.endswith(".weight_mask")]
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), (Linear, PrunedLinear))]
    if missing:
        raise KeyError(f"attach_masks: the state has masks for {missing}, which are not Linear layers of this model")
    _wrap(model, [(n, modules[n]) for n in names])
    return model


# ---- structured: heads and neurons ----------------------------------------------------------------
def _gpt(model):
    from .peft.core import gpt_of
    return gpt_of(model)


def _plain(layer, name):
    if not isinstance(layer, Linear):
        raise TypeError(f"structured pruning needs plain Linear layers; {name} is a {type(layer).__name__} "
                        "(make_permanent / peft.merge_and_unload first)")
    return layer


def _head_columns(h: int, hs: int, heads) -> np.ndarray:
    """c_attn columns of ``heads`` (a layer of h heads of size hs): their q columns, then k, then v."""
    heads = np.asarray(list(heads), dtype=np.int64)
    cols = [p * h * hs + (heads[:, None] * hs + np.arange(hs)).ravel() for p in range(3)]   # q, k, v blocks
    return np.concatenate(cols) if heads.size else np.zeros(0, np.int64)


def _head_rows(hs: int, heads) -> np.ndarray:
    """c_proj rows of ``heads``: j·hs … (j+1)·hs − 1 for each j."""
    heads = np.asarray(list(heads), dtype=np.int64)
    return (heads[:, None] * hs + np.arange(hs)).ravel() if heads.size else np.zeros(0, np.int64)


def _to_tensor(a, device):
    if isinstance(a, Tensor):
        return a.to(device) if a.device != device else a
    return Tensor(backend.to_device(np.asarray(a), device))


def _weight_grads(model: Module, params, batches):
    """Σ over batches of |w ⊙ ∂L_b/∂w| for each parameter in ``params`` (host arrays); the model's
    requires_grad flags and .grad are left as they were.  L_b = the model's loss on batch (x, y)."""
    gpt = _gpt(model)
    everything = list(model.parameters())
    saved = [(p, p.requires_grad, p._grad) for p in everything]
    was_training = gpt.training
    totals = [np.zeros(p.shape, dtype=np.float64) for p in params]
    n = 0
    try:
        for p in everything:
            p.requires_grad, p._grad = False, None
        for p in params:
            p.requires_grad = True
        model.eval()
        for x, y in batches:
            _, loss = model(_to_tensor(x, gpt.device), _to_tensor(y, gpt.device))
            loss.backward()
            for t, p in zip(totals, params):
                if p._grad is not None:
                    t += np.abs(backend.to_numpy(p.data).astype(np.float64) * backend.to_numpy(p._grad))
                p._grad = None
            n += 1
    finally:
        for p, rg, g in saved:
            p.requires_grad, p._grad = rg, g
        model.train(was_training)
    if n == 0:
        raise ValueError("importance 'grad' needs at least one (x, y) batch")
    return totals


def _group_sums(groups):
    """For each group (a list of (array, index) pairs): the sum of array[index] over its pairs."""
    return np.array([sum(float(a[idx].sum()) for a, idx in g) for g in groups], dtype=np.float64)


def _per_layer_values(model, method, batches, what, pick):
    """For each layer, the two matrices ``pick(layer, block)`` returns, as float64 host arrays of
    w² ("norm") or Σ_batches |w ⊙ ∂L/∂w| ("grad"): [(first, second) per layer]."""
    if method not in METHODS:
        raise ValueError(f"{what}: method must be one of {METHODS}, got {method!r}")
    blocks = list(_gpt(model).transformer.h)
    mats = [w for l, b in enumerate(blocks) for w in pick(l, b)]
    if method == "norm":
        vals = [backend.to_numpy(w.data).astype(np.float64) ** 2 for w in mats]
    else:
        if batches is None:
            raise ValueError(f"{what}: method 'grad' needs batches=[(x, y), ...]")
        vals = _weight_grads(model, mats, batches)
    return [(vals[2 * l], vals[2 * l + 1]) for l in range(len(blocks))]


def head_importance(model: Module, method: str = "norm", batches=None) -> list:
    """One score per head, per layer (a list of arrays, layer l's of length h_l).

        "norm":  s_lj = √( Σ c_attn[:, cols_j]² + Σ c_proj[rows_j, :]² )
        "grad":  s_lj = Σ_batches ( Σ |c_attn ⊙ ∂L/∂c_attn|[:, cols_j] + Σ |c_proj ⊙ ∂L/∂c_proj|[rows_j, :] )

    cols_j: head j's q, k and v columns of c_attn; rows_j: its rows of c_proj (module docstring).
    ``batches``: (x, y) pairs, the model's own loss (needed for "grad").
    """
    gpt = _gpt(model)
    vals = _per_layer_values(model, method, batches, "head_importance", lambda l, b: (
        _plain(b.attn.c_attn, f"layer {l} attn.c_attn").weight, _plain(b.attn.c_proj, f"layer {l} attn.c_proj").weight))
    blocks = list(gpt.transformer.h)
    out = []
    hs = gpt.config.head_size
    for l, b in enumerate(blocks):
        h = b.attn.n_head
        qkv, proj = vals[l]
        groups = [[(qkv, (slice(None), _head_columns(h, hs, [j]))), (proj, (_head_rows(hs, [j]), slice(None)))]
                  for j in range(h)]
        s = _group_sums(groups)
        out.append(np.sqrt(s) if method == "norm" else s)
    return out


def neuron_importance(model: Module, method: str = "norm", batches=None) -> list:
    """One score per MLP neuron, per layer (layer l's array has length m_l).

        "norm":  s_li = √( Σ c_fc[:, i]² + Σ c_proj[i, :]² )
        "grad":  s_li = Σ_batches ( Σ |c_fc ⊙ ∂L/∂c_fc|[:, i] + Σ |c_proj ⊙ ∂L/∂c_proj|[i, :] )
    """
    vals = _per_layer_values(model, method, batches, "neuron_importance", lambda l, b: (
        _plain(b.mlp.c_fc, f"layer {l} mlp.c_fc").weight, _plain(b.mlp.c_proj, f"layer {l} mlp.c_proj").weight))
    out = []
    for fc, proj in vals:
        s = fc.sum(axis=0) + proj.sum(axis=1)                # column i of c_fc + row i of c_proj, (m_l,)
        out.append(np.sqrt(s) if method == "norm" else s)
    return out


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


def prune_heads(model: Module, heads: dict) -> Module:
    """Remove attention heads: ``heads`` = {layer: [head indices]} (indices of the layer's current heads).

    In layer l with h heads of size hs, c_attn (d, 3·h·hs) loses head j's q, k and v columns
    (j·hs…, h·hs + j·hs…, 2h·hs + j·hs…, hs each) and bias entries; c_proj (h·hs, d) loses rows
    j·hs … (j+1)·hs − 1 (its bias stays).  New, smaller Parameters replace the old ones;
    ``config.layer_heads`` records the heads left (a new config object).  Equivalent to
    zeroing those heads' outputs (module docstring).  Every head of a layer may go.
    """
    gpt = _gpt(model)
    blocks = list(gpt.transformer.h)
    plan = _check_plan(heads, [b.attn.n_head for b in blocks], "prune_heads", "head")
    hs = gpt.config.head_size
    for l, drop in plan.items():
        if not drop:
            continue
        attn = blocks[l].attn
        c_attn, c_proj = _plain(attn.c_attn, f"layer {l} attn.c_attn"), _plain(attn.c_proj, f"layer {l} attn.c_proj")
        h, dropped = attn.n_head, set(drop)
        keep = [j for j in range(h) if j not in dropped]
        _slice_linear(c_attn, cols=_head_columns(h, hs, keep))   # (d, 3·h·hs) -> (d, 3·h'·hs)
        _slice_linear(c_proj, rows=_head_rows(hs, keep))         # (h·hs, d) -> (h'·hs, d)
        attn.n_head = len(keep)
    if any(plan.values()):
        gpt.config = dataclasses.replace(gpt.config, layer_heads=[b.attn.n_head for b in blocks])
    return model


def prune_neurons(model: Module, neurons: dict) -> Module:
    """Remove MLP neurons: ``neurons`` = {layer: [neuron indices]} (of the layer's current neurons).

    Neuron i of layer l: column i of c_fc (d, m) and its bias entry, row i of the MLP's
    c_proj (m, d).  ``config.layer_mlp`` records the widths left.  Equivalent to zeroing
    those neurons' outputs.
    """
    gpt = _gpt(model)
    blocks = list(gpt.transformer.h)
    plan = _check_plan(neurons, [b.mlp.hidden for b in blocks], "prune_neurons", "neuron")
    for l, drop in plan.items():
        if not drop:
            continue
        mlp = blocks[l].mlp
        c_fc, c_proj = _plain(mlp.c_fc, f"layer {l} mlp.c_fc"), _plain(mlp.c_proj, f"layer {l} mlp.c_proj")
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
    scores: :func:`head_importance`'s list.  Each layer keeps at least ``min_per_layer``
    heads (ties: lower layer, then lower head, goes first).
    """
    gpt = _gpt(model)
    sizes = [b.attn.n_head for b in gpt.transformer.h]
    plan = _choose_lowest(scores, sizes, amount, min_per_layer, "prune_heads_by_score", "head")
    prune_heads(model, plan)
    return plan


def prune_neurons_by_score(model: Module, amount, scores, min_per_layer: int = 1) -> dict:
    """Remove the lowest-scoring MLP neurons over all layers (as :func:`prune_heads_by_score`)."""
    gpt = _gpt(model)
    sizes = [b.mlp.hidden for b in gpt.transformer.h]
    plan = _choose_lowest(scores, sizes, amount, min_per_layer, "prune_neurons_by_score", "neuron")
    prune_neurons(model, plan)
    return plan


def structure(model: Module) -> dict:
    """Heads and MLP widths per layer, and the fractions removed relative to the unpruned config."""
    gpt = _gpt(model)
    c = gpt.config
    heads = [b.attn.n_head for b in gpt.transformer.h]
    mlp = [b.mlp.hidden for b in gpt.transformer.h]
    return {"heads": heads, "mlp": mlp,
            "heads_removed": 1 - sum(heads) / (c.n_layer * c.n_head),
            "neurons_removed": 1 - sum(mlp) / (c.n_layer * 4 * c.n_embd),
            "parameters": gpt.num_parameters()}


# ---- LoRA on a masked layer -------------------------------------------------------------------------
class MaskedLoRALinear(LoRALinear):
    """LoRA on an unstructured-pruned layer, with the update masked too:

        y = x W0 + b + dropout(x) ((α/r) A B ⊙ M),      W0 = W_orig ⊙ M (zeros where M = 0)

    so the effective weight W0 + (α/r) A B ⊙ M keeps the pruned entries at zero during
    training, and ∂L/∂(A B) = (α/r) M ⊙ (uᵀ g) (u = dropout(x)).  ``merge()`` adds the masked
    update, so the merged weight is exactly the weight that was trained: re-masking it after
    merging changes nothing.  (A plain LoRA's dense A B would put values on pruned entries,
    which re-masking after the merge would then cut off, untrained for.)
    """

    def __init__(self, base: Linear, mask, r: int, alpha: float, dropout: float = 0.0,
                 init_method: str = "kaiming", generator: Generator | None = None):
        super().__init__(base, r, alpha, dropout, init_method, None, generator)
        m = mask.data if isinstance(mask, Tensor) else mask
        if tuple(m.shape) != base.weight.shape:
            raise ValueError(f"MaskedLoRALinear: mask of shape {tuple(m.shape)} does not fit weight {base.weight.shape}")
        self.register_buffer("weight_mask", Tensor(backend.to_device(m, base.weight.device).astype(base.weight.dtype)))

    def delta_weight(self):
        return super().delta_weight() * self.weight_mask          # (α/r) A B ⊙ M, (in, out)

    def forward(self, x):
        h = F.linear(x, self.weight, self.bias)                   # x W0 + b, (..., out)
        if self.merged or not self.active:
            return h
        u = F.dropout(x, self.dropout_p, self.training) if self.dropout_p else x
        return h + F.linear(u, self.delta_weight())               # + u ((α/r) A B ⊙ M)


# ---- iterative pruning with recovery -----------------------------------------------------------------
def finetune_pruned(model, ids, method: str = "full", finetune=None, lora=None, stream=None):
    """Recovery fine-tuning of a pruned GPT on random blocks of ``ids`` (minilm.finetune.train_lm);
    returns train_lm's result (None for 0 steps).

      "full": every parameter trains; masked entries stay zero (their gradient is M ⊙ … = 0).
      "lora": ``lora`` (a peft.LoRAConfig; default r=8, α=16 on c_attn, c_proj, c_fc, whole matrices)
              is added, trained and merged back (peft.merge_and_unload), so the result is a plain
              pruned model again.  A masked layer gets a MaskedLoRALinear (its update ⊙ M), is made
              permanent for the run and re-wrapped in PrunedLinear with the same mask afterwards; the
              merged weight is then exactly the trained one, and re-masking it changes nothing.
    ``finetune``: a FinetuneConfig (default: 100 steps, batch 8, lr 5e-4 full / 2e-3 LoRA).
    """
    from . import peft
    from .finetune import FinetuneConfig, train_lm
    if method not in ("full", "lora"):
        raise ValueError(f"finetune_pruned: method must be 'full' or 'lora', got {method!r}")
    gpt = _gpt(model)
    fc = finetune or FinetuneConfig(steps=100, batch_size=8, lr=5e-4 if method == "full" else 2e-3,
                                    log_every=50, warmup=10)
    lora_cfg = lora or peft.LoRAConfig(r=8, alpha=16, target_modules=DEFAULT_TARGETS, seed=fc.seed)
    if fc.steps <= 0:
        return None
    if method == "full":
        for p in gpt.parameters():
            p.requires_grad = True
        return train_lm(gpt, ids, fc, stream=stream)
    masks = {n: m.weight_mask.data for n, m in pruned_layers(gpt)}
    make_permanent(gpt)
    names = [n for n, m in _linear_layers(gpt, lora_cfg.target_modules, kinds=(Linear,), what="finetune_pruned")
             if m.weight.numel() > 0]
    cfg = dataclasses.replace(lora_cfg, target_modules=tuple(names), parts=None)
    if masks:
        gen = Generator(cfg.seed)
        for n in names:
            if n in masks:
                parent, attr = _parent_of(gpt, n)
                setattr(parent, attr, MaskedLoRALinear(getattr(parent, attr), masks[n], cfg.r, cfg.alpha,
                                                       cfg.dropout, cfg.init, gen))
        plain = tuple(n for n in names if n not in masks)
        if plain:
            peft.add(gpt, dataclasses.replace(cfg, target_modules=plain))
        else:
            peft.freeze_base(gpt)
    else:
        peft.add(gpt, cfg)
    res = train_lm(gpt, ids, fc, stream=stream)
    peft.merge_and_unload(gpt)
    if masks:
        modules = dict(gpt.named_modules())
        _wrap(gpt, [(n, modules[n]) for n in masks])
        for n, m in pruned_layers(gpt):
            m.weight_mask.data = masks[n]
            m.weight_orig.data = m.weight_orig.data * masks[n]   # re-mask (already exact zeros there)
    return res


def iterative_prune(model, ids, final_sparsity: float, steps: int, finetune_steps: int, method: str = "full",
                    kind: str = "unstructured", score: str = "grad", finetune=None, lora=None, val_ids=None,
                    score_batches: int = 4, batch_size: int = 8, min_per_layer: int = 1, max_val_blocks=None,
                    seed: int = 0, stream=None) -> list:
    """Prune → fine-tune, ``steps`` times, to ``final_sparsity`` (Zhu & Gupta's gradual pruning, linear schedule).

    Round i = 1 … steps prunes up to s_i = final_sparsity · i / steps, of
      "unstructured": the targeted weights' entries (global magnitude pruning, :func:`magnitude_prune`);
      "heads":        the unpruned model's n_layer·n_head heads   (lowest ``score`` first);
      "neurons":      the unpruned model's n_layer·4·n_embd MLP neurons;
    then fine-tunes ``finetune_steps`` steps on random blocks of ``ids`` (minilm.finetune.train_lm):
      "full": every parameter (masked entries stay zero: their gradient is zero);
      "lora": a LoRA (``lora``, a peft.LoRAConfig; default r=8 on c_attn, c_proj, c_fc) merged into the
              weights after each round; on masked layers its update is masked as well.
    ``score``: "grad" (|w·∂L/∂w| on ``score_batches`` random batches of ``ids``) or "norm".
    Returns one dict per round (sparsity reached, last training losses, val loss if ``val_ids``).
    """
    from . import peft
    from .data.batches import RandomBatches
    from .finetune import FinetuneConfig, lm_loss
    if kind not in ("unstructured", "heads", "neurons"):
        raise ValueError(f"iterative_prune: kind must be 'unstructured', 'heads' or 'neurons', got {kind!r}")
    if method not in ("full", "lora"):
        raise ValueError(f"iterative_prune: method must be 'full' or 'lora', got {method!r}")
    if not 0.0 <= final_sparsity <= 1.0 or steps < 1:
        raise ValueError(f"iterative_prune: need 0 ≤ final_sparsity ≤ 1 and steps ≥ 1, got {final_sparsity}, {steps}")
    gpt = _gpt(model)
    c = gpt.config
    ids = np.asarray(ids, dtype=np.int64)
    lora = lora or peft.LoRAConfig(r=8, alpha=16, target_modules=DEFAULT_TARGETS, seed=seed)
    base_fc = finetune or FinetuneConfig(batch_size=batch_size, lr=5e-4 if method == "full" else 2e-3,
                                         log_every=max(1, finetune_steps // 2), warmup=min(10, finetune_steps))
    history = []
    for i in range(1, steps + 1):
        target = final_sparsity * i / steps
        if kind == "unstructured":
            magnitude_prune(gpt, target, "global")
            reached = sparsity(gpt)["total"]
        else:
            heads = kind == "heads"
            orig = c.n_layer * (c.n_head if heads else 4 * c.n_embd)
            now = sum(b.attn.n_head if heads else b.mlp.hidden for b in gpt.transformer.h)
            n = int(round(target * orig)) - (orig - now)
            if n > 0:
                batches = None
                if score == "grad":
                    rb = RandomBatches(ids, c.block_size, batch_size, seed=seed + 1000 * i)
                    batches = [rb() for _ in range(score_batches)]
                if heads:
                    prune_heads_by_score(gpt, n, head_importance(gpt, score, batches), min_per_layer)
                else:
                    prune_neurons_by_score(gpt, n, neuron_importance(gpt, score, batches), min_per_layer)
            st = structure(gpt)
            reached = st["heads_removed" if heads else "neurons_removed"]
        fc = dataclasses.replace(base_fc, steps=finetune_steps, seed=seed + i)
        row = {"round": i, "target": target, "sparsity": reached}
        if val_ids is not None:
            row["val_loss_pruned"] = lm_loss(gpt, val_ids, max_blocks=max_val_blocks)
        res = finetune_pruned(gpt, ids, method, fc, lora, stream)
        if res is not None:
            row["train_loss"] = float(np.mean(res["loss"][-10:]))
        if val_ids is not None:
            row["val_loss"] = lm_loss(gpt, val_ids, max_blocks=max_val_blocks)
        print(f"iterative_prune [{kind}, {method}] round {i}/{steps}: sparsity {reached:.3f}"
              + (f", val loss {row['val_loss_pruned']:.4f} → {row['val_loss']:.4f} after fine-tuning"
                 if val_ids is not None else ""), file=stream or sys.stdout, flush=True)
        history.append(row)
    gpt.eval()
    return history
