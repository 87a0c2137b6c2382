"""LoRA on an unstructured-pruned layer (Eq. L1 with a mask): the update is masked as well.

A pruned layer computes with W0 = W_orig ⊙ M (:mod:`minilm.prune.masks`).  A plain LoRA's
dense update (α/r) A B would put values on the pruned entries, and re-masking after the
merge would cut them off again, untrained for.  Masking the update keeps every weight the
model ever uses at zero where M = 0, so the merged weight is exactly the trained one.
"""
from __future__ import annotations

from .. import backend
from .. import functional as F
from ..nn import Linear
from ..tensor import Generator, Tensor
from .lora import LoRALinear

__all__ = ["MaskedLoRALinear"]


class MaskedLoRALinear(LoRALinear):
    """LoRA on an unstructured-pruned layer, with the update masked too:

        y = x W0 + b + dropout(x) ((α/r) A B ⊙ M),      W0 = W_orig ⊙ M (zeros where M = 0)

    so the effective weight W0 + (α/r) A B ⊙ M keeps the pruned entries at zero during
    training, and ∂L/∂(A B) = (α/r) M ⊙ (uᵀ g) (u = dropout(x)).  ``merge()`` adds the masked
    update, so the merged weight is exactly the weight that was trained: re-masking it after
    merging changes nothing.  (A plain LoRA's dense A B would put values on pruned entries,
    which re-masking after the merge would then cut off, untrained for.)

    ``base``: the plain Linear (its weight already W_orig ⊙ M, e.g. after
    ``prune.make_permanent``); ``mask``: M, an array or Tensor of the weight's shape.
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
