"""Unstructured magnitude pruning (Han et al. 2015): a 0/1 mask beside each weight.

A mask M ∈ {0, 1} of the weight's shape is kept beside the weight, and the layer
computes with their product:

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

Works on any model made of minilm Linear layers; imports only nn, tensor, functional and backend.
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Embedding, Linear, Module
from ..tensor import Tensor

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")

__all__ = ["PrunedLinear", "magnitude_prune", "sparsity", "make_permanent", "attach_masks", "pruned_layers",
           "linear_layers", "DEFAULT_TARGETS"]


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


def linear_layers(model: Module, targets=DEFAULT_TARGETS, kinds=(Linear, PrunedLinear), what="magnitude_prune"):
    """(name, module) of the Linear / PrunedLinear modules whose names match ``targets``.

    A matching layer that wraps a Linear some other way (a LoRA layer: it has ``base_layer()``)
    is an error, as is a target list that matches nothing or a weight tied to an embedding."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    found, wrapped = [], []
    for name, m in model.named_modules():
        if name and _matches(name, targets):
            if isinstance(m, kinds):
                found.append((name, m))
            elif callable(getattr(m, "base_layer", None)):
                wrapped.append(f"{name} ({type(m).__name__})")
    if wrapped:
        raise TypeError(f"{what}: {wrapped[:4]} wrap their Linear (LoRA layers?); merge them first "
                        "(peft.merge_and_unload)")
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
    layers = _wrap(model, linear_layers(model, targets))
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
            new = alive[start:start + size].reshape(m.weight_mask.shape)       # flat -> (in, out)
            new = new.astype(m.weight_mask.dtype)
            m.weight_mask.data = backend.to_device(new, m.weight_mask.device)
            start += size
    return sparsity(model, targets)


def sparsity(model: Module, targets=DEFAULT_TARGETS) -> dict:
    """Fraction of zero entries in the effective weights of the targeted Linear / PrunedLinear layers:

        {"layers": {name: zeros/n}, "zeros": Σ zeros, "n": Σ n, "total": Σ zeros / Σ n}
    """
    layers = linear_layers(model, targets, what="sparsity")
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
