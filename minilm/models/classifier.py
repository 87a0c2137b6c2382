"""A task head on a pretrained GPT (§3.1 step 4): sequence classification.

    h = pool(H^L)            H^L: the last layer's states (B, T, d) after ln_f
    logits = h W + b         W ∈ R^{d×C}, one column per class
    loss = CE(y, softmax(logits))

Pooling (:func:`minilm.models.base.pool`): ``"mean"`` averages the real (unpadded)
positions; ``"last"`` takes the last real position, which in a causal model is the
only one that has seen the whole passage (GPT2ForSequenceClassification does this).
The head is called ``score``, as in transformers, and is always trained by minilm.peft.
"""
from __future__ import annotations

from ..nn import Linear, init
from ..tensor import Generator
from .base import Model, ModelOutput, classification_loss, pool


class GPTClassifier(Model):
    """``out = clf(input_ids, attention_mask, labels=y)``: a GPT body and a linear head over pooled states."""

    body = "gpt"
    head_patterns = ("score.*",)      # minilm.peft keeps these trainable (PEFT's modules_to_save)

    def __init__(self, gpt, n_classes: int, pooling: str = "mean", generator: Generator | None = None):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"GPTClassifier: pooling must be 'mean' or 'last', got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"GPTClassifier: need at least 2 classes, got {n_classes}")
        self.gpt, self.n_classes, self.pooling = gpt, n_classes, pooling
        self.config = gpt.config
        d = gpt.config.n_embd
        self.score = Linear(d, n_classes, generator=generator)
        init.normal_(self.score.weight, 0.0, 0.02, generator)
        init.zeros_(self.score.bias)
        w = gpt.transformer.wte.weight
        self.score.to(w.device, w.dtype)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *,
                output_hidden_states=False) -> ModelOutput:
        states = self.gpt.hidden_states(input_ids, attention_mask, token_type_ids, all_layers=output_hidden_states)
        layers, H = states if output_hidden_states else (None, states)         # H: (B, T, d)
        logits = self.score(pool(H, attention_mask, self.pooling))             # (B, d) -> (B, C)
        return ModelOutput(logits=logits, loss=classification_loss(logits, labels, self.n_classes, "GPTClassifier"),
                           hidden_states=layers)

    def extra_repr(self):
        return f"classes={self.n_classes}, pooling={self.pooling!r}"
