"""A task head on a pretrained model (§3.1 step 4): sequence classification.

    h = pool(H^L)            H^L: the last layer's states (B, T, d) after ln_f
    logits = h W + b         W ∈ R^{d×C}, one column per class
    loss = CE(y, softmax(logits))

Pooling: ``"mean"`` averages the real (unpadded) positions; ``"last"`` takes the
last real position, which in a causal model is the only one that has seen the
whole passage (GPT-2's GPT2ForSequenceClassification does this).  The head is
called ``score``, as in transformers, and is always trained by minilm.peft.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Linear, Module, init
from ..tensor import Generator, Tensor


def classification_loss(logits, labels, n_classes: int, who: str):
    """CE(y, softmax(logits)) averaged over the batch, or None without labels; labels (B,) are checked
    (shape, range) first, so a bad label names itself instead of indexing out of bounds."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        labels = Tensor(backend.to_device(np.asarray(labels), logits.device))
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"{who}: labels of shape {labels.shape} do not match a batch of {logits.shape[0]}")
    lo, hi = int(labels.data.min()), int(labels.data.max())
    if lo < 0 or hi >= n_classes:
        raise IndexError(f"{who}: label {lo if lo < 0 else hi} outside [0, {n_classes})")
    return F.cross_entropy(logits, labels)


class GPTClassifier(Module):
    """``logits, loss = clf(idx, labels)``: a GPT body and a linear head over pooled states."""

    head_patterns = ("score.*",)      # minilm.peft keeps these trainable (PEFT's modules_to_save)

    def __init__(self, gpt, n_classes: int, pooling: str = "mean", generator: Generator | None = None):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"GPTClassifier: pooling must be 'mean' or 'last', got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"GPTClassifier: need at least 2 classes, got {n_classes}")
        self.gpt, self.n_classes, self.pooling = gpt, n_classes, pooling
        d = gpt.config.n_embd
        self.score = Linear(d, n_classes, generator=generator)
        init.normal_(self.score.weight, 0.0, 0.02, generator)
        init.zeros_(self.score.bias)
        w = gpt.transformer.wte.weight
        self.score.to(w.device, w.dtype)

    def pool(self, H, attention_mask=None):
        """(B, T, d) → (B, d): mean over real positions, or the last real position."""
        B, T, d = H.shape
        xp = backend.get_array_module(H.data)
        if attention_mask is None:
            mask = xp.ones((B, T), dtype=H.dtype)
        else:
            mask = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
            mask = backend.to_device(mask if backend.is_array(mask) else np.asarray(mask), H.device)
            mask = (mask != 0).astype(H.dtype)                               # (B, T), 1 = real token
        if self.pooling == "mean":
            w = mask / xp.maximum(mask.sum(axis=1, keepdims=True), 1)        # (B, T), rows sum to 1
            return (H * Tensor(w[:, :, None])).sum(axis=1)                   # (B, d)
        last = (T - 1 - xp.argmax(mask[:, ::-1], axis=1)).astype(np.int64)   # the last real token (any padding side)
        onehot = (xp.arange(T)[None, :] == last[:, None]).astype(H.dtype)    # (B, T)
        return (H * Tensor(onehot[:, :, None])).sum(axis=1)                  # (B, d)

    def forward(self, idx, labels=None, attention_mask=None, segments=None):
        H = self.gpt.hidden_states(idx, segments=segments, attention_mask=attention_mask)   # (B, T, d)
        logits = self.score(self.pool(H, attention_mask))                    # (B, C)
        return logits, classification_loss(logits, labels, self.n_classes, "GPTClassifier")

    def extra_repr(self):
        return f"classes={self.n_classes}, pooling={self.pooling!r}"
