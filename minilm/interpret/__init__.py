"""Interpretability: reading what a trained model's heads do.

    from minilm import interpret
    probs = interpret.attention_probs(model, ids)              # [A per layer], each (B, H, T, T) (heads.py)
    with interpret.ablate_heads(model, [(1, 0)]):              # the model without head 0 of layer 1
        ...
    batch = interpret.repeated_segments(64, (4, 8), 20, rng=0, length=32, bos=None)   # induction.py
    interpret.loss_by_occurrence(model, batch)                 # {"first", "second", "ratio"}
    interpret.prefix_matching_scores(model, batch)             # (L, H)
    interpret.copying_score(model)                             # (L, H)

  heads.py      one head at a time: its attention weights (recomputed with the reference attention;
                the fused kernel keeps none), its OV circuit, and the model with heads ablated;
  induction.py  induction heads (Olsson et al. 2022): repeated random segments, the loss on a
                segment's first and second occurrence, prefix-matching and copying scores.

Nothing here trains; the experiments (experiments/induction_heads.py) and lessons train with
minilm.train.  This package imports only tensor, functional, backend and models.
"""
from .heads import ABLATIONS, ablate_heads, attention_probs, head_pairs, ov_circuit
from .induction import (Repeats, copying_score, loss_by_occurrence, prefix_matching_score, prefix_matching_scores,
                        previous_token_score, repeated_segments, token_nll)

__all__ = ["attention_probs", "ablate_heads", "ov_circuit", "head_pairs", "ABLATIONS", "Repeats", "repeated_segments",
           "prefix_matching_score", "prefix_matching_scores",
           "previous_token_score", "copying_score", "token_nll", "loss_by_occurrence"]
