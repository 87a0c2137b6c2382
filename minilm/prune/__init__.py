"""Pruning: take weights out of a trained model, by entry (unstructured) or by head and neuron (structured).

    from minilm import prune
    prune.magnitude_prune(model, 0.5, "global")               # masks beside the weights (masks.py)
    scores = prune.head_importance(model, "grad", batches)     # |w·∂L/∂w| per head (scores.py)
    prune.prune_heads_by_score(model, 2, scores)               # slices c_attn / c_proj (structured.py)

One idea per module, none of them trains:

  masks.py       W = W_orig ⊙ M beside each Linear (PrunedLinear), magnitude pruning per layer
                 or global, sparsity, make_permanent, attach_masks — any model of minilm Linears;
  structured.py  removing heads and MLP neurons by slicing the matrices; the pruned shapes are
                 recorded in GPTConfig.layer_heads / layer_mlp (GPT bodies only);
  scores.py      head and neuron importance: weight norm or the first-order Taylor |w·∂L/∂w|.

Recovery after pruning (fine-tuning, masked LoRA, gradual pruning in rounds) is training and
lives above: :func:`minilm.finetune.finetune_pruned`, :func:`minilm.finetune.iterative_prune`,
:class:`minilm.peft.MaskedLoRALinear`.  This package imports only nn, tensor, functional, backend and models.
"""
from .masks import (DEFAULT_TARGETS, PrunedLinear, attach_masks, linear_layers, magnitude_prune, make_permanent,
                    pruned_layers, sparsity)
from .scores import METHODS, head_importance, neuron_importance
from .structured import (gpt_body, prune_heads, prune_heads_by_score, prune_neurons, prune_neurons_by_score,
                         structure)

__all__ = [
    "PrunedLinear", "magnitude_prune", "sparsity", "make_permanent", "attach_masks", "pruned_layers",
    "linear_layers", "head_importance", "neuron_importance", "METHODS", "prune_heads", "prune_neurons",
    "prune_heads_by_score", "prune_neurons_by_score", "structure", "gpt_body", "DEFAULT_TARGETS",
]
