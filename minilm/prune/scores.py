"""Which heads and neurons to remove: one importance score per group of weights.

For a group S_j of weights (a head's q, k, v columns of c_attn and its rows of c_proj;
a neuron's column of c_fc and row of the MLP's c_proj — :mod:`minilm.prune.structured`):

  "norm"  s_j = √(Σ_{w ∈ S_j} w²)  (biases are not counted);
  "grad"  s_j = Σ_batches Σ_{w ∈ S_j} |w · ∂L/∂w|, the first-order Taylor estimate of the
          loss change when w is set to zero, L(w ← 0) − L ≈ −w ∂L/∂w (Molchanov et al. 2017),
          summed as absolute values over the group's weights and over the given batches.

"grad" runs a forward and a backward of the model's own loss, ``model(x, labels=y).loss``,
on each batch (no optimizer step: nothing is trained) and leaves the model's gradients,
requires_grad flags and train/eval mode as they were.  GPT only, as structured pruning.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn import Module
from ..tensor import Tensor
from .structured import attention_matrices, gpt_body, head_columns, head_rows, mlp_matrices

METHODS = ("norm", "grad")

__all__ = ["head_importance", "neuron_importance", "METHODS"]


def _to_tensor(a, device):
    if isinstance(a, Tensor):
        return a.to(device) if a.device != device else a
    return Tensor(backend.to_device(np.asarray(a), device))


def _weight_grads(model: Module, params, batches):
    """Σ over batches of |w ⊙ ∂L_b/∂w| for each parameter in ``params`` (host float64 arrays);
    L_b = ``model(x, labels=y).loss`` on batch (x, y), in eval mode.  Only ``params`` take
    gradients; the model's requires_grad flags, .grad and mode are restored afterwards."""
    everything = list(model.parameters())
    saved = [(p, p.requires_grad, p._grad) for p in everything]
    was_training = model.training
    device = model.device
    totals = [np.zeros(p.shape, dtype=np.float64) for p in params]
    n = 0
    try:
        for p in everything:
            p.requires_grad, p._grad = False, None
        for p in params:
            p.requires_grad = True
        model.eval()
        for x, y in batches:
            loss = model(_to_tensor(x, device), labels=_to_tensor(y, device)).loss
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
    """For each layer, the two matrices ``pick(block, l)`` returns, as float64 host arrays of
    w² ("norm") or Σ_batches |w ⊙ ∂L/∂w| ("grad"): [(first, second) per layer]."""
    if method not in METHODS:
        raise ValueError(f"{what}: method must be one of {METHODS}, got {method!r}")
    blocks = list(gpt_body(model, what).layers())
    mats = [lin.weight for l, b in enumerate(blocks) for lin in pick(b, l)]
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
        "grad":  s_lj = Σ_batches ( Σ |c_attn ⊙ ∂L/∂c_attn|[:, cols_j]
                                  + Σ |c_proj ⊙ ∂L/∂c_proj|[rows_j, :] )

    cols_j: head j's q, k and v columns of c_attn; rows_j: its rows of c_proj (structured's docstring).
    ``batches``: (x, y) pairs for the model's own loss ``model(x, labels=y).loss`` (needed for "grad").
    """
    gpt = gpt_body(model, "head_importance")
    vals = _per_layer_values(model, method, batches, "head_importance", attention_matrices)
    out = []
    for l in range(len(vals)):
        h, hs = gpt.attention_shape(l)
        qkv, proj = vals[l]                                  # (d, 3·h·hs), (h·hs, d)
        groups = [[(qkv, (slice(None), head_columns(h, hs, [j]))), (proj, (head_rows(hs, [j]), slice(None)))]
                  for j in range(h)]
        s = _group_sums(groups)
        out.append(np.sqrt(s) if method == "norm" else s)
    return out


def neuron_importance(model: Module, method: str = "norm", batches=None) -> list:
    """One score per MLP neuron, per layer (layer l's array has length m_l).

        "norm":  s_li = √( Σ c_fc[:, i]² + Σ c_proj[i, :]² )
        "grad":  s_li = Σ_batches ( Σ |c_fc ⊙ ∂L/∂c_fc|[:, i] + Σ |c_proj ⊙ ∂L/∂c_proj|[i, :] )
    """
    vals = _per_layer_values(model, method, batches, "neuron_importance", mlp_matrices)
    out = []
    for fc, proj in vals:
        s = fc.sum(axis=0) + proj.sum(axis=1)                # column i of c_fc + row i of c_proj, (m_l,)
        out.append(np.sqrt(s) if method == "norm" else s)
    return out
