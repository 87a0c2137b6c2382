"""What every minilm model shares: how it is called, what it returns, how its inputs are checked.

Every model — GPT, GPTClassifier, Bert, BertForMaskedLM, BertClassifier and each family
after them — is called the same way, as Hugging Face models are::

    out = model(input_ids, attention_mask=None, token_type_ids=None, labels=None)
    out.logits        (B, T, V) for a language model, (B, C) for a classifier
    out.loss          a scalar Tensor when labels are given, else None

    input_ids       (B, T) integer token ids
    attention_mask  (B, T) 1 for real tokens, 0 for padding (padded keys are never attended to)
    token_type_ids  (B, T) segment ids s_i of G2 (sentence A = 0, B = 1)
    labels          what the loss compares with: next-token targets, masked-LM targets or classes

This module holds the pieces that would otherwise be written once per model: the
output record, the checks on ids and masks (errors name the model, the argument, the
shape or the id at fault), masked-mean and other pooling, and the classification loss.
It imports only the layers below it (tensor, functional, nn).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Module
from ..tensor import Tensor

POOLINGS = ("cls", "mean", "last")


@dataclass
class ModelOutput:
    """What a model's forward returns.  Fields a model does not compute stay None.

    logits             (B, T, V) or (B, C): scores before the softmax
    loss               the mean loss over the labelled positions (a scalar Tensor), with labels
    last_hidden_state  (B, T, d): the body's final states (base models such as Bert)
    hidden_states      [H⁰, H¹, …, Hᴸ] with ``output_hidden_states=True`` (distillation compares them)
    encoder_last_hidden_state  (B, S, d): an encoder–decoder's encoder output (BART), what
                       cross-attention reads; pass it back as ``encoder_outputs`` to skip the encoder
    past_key_values    an encoder–decoder's decoder cache with ``use_cache=True``: per decoder layer
                       (k_self, v_self, k_cross, v_cross), each (B, H, ·, hs)
    """
    logits: Tensor | None = None
    loss: Tensor | None = None
    last_hidden_state: Tensor | None = None
    hidden_states: list | None = None
    encoder_last_hidden_state: Tensor | None = None
    past_key_values: tuple | None = None


class Model(Module):
    """The base of every model.  Besides the call above, a model tells the code around it what
    it is made of, so that PEFT, pruning and distillation need no model-specific branches:

    ``base_model``     the Transformer body (itself, or ``clf.gpt`` / ``clf.bert`` for a task model)
    ``layers()``       the body's Transformer layers, each declaring ``adapter_width`` and the
                       three adapter slots ``adapter_attn``, ``adapter_mlp``, ``adapter_output``
    ``fused_qkv``      names (suffixes) of Linear layers whose output columns are [q | k | v]
                       (GPT-2's ``c_attn``), so LoRA can adapt only the q or v block
    ``attention_shape(i)``  (heads, head size) of layer i: what Prefix-Tuning's keys must match
    ``head_patterns``  a task model's head parameters (kept trainable by PEFT, its modules_to_save)
    ``position_table`` (the learned E_pos Embedding's dotted name in the body, the config field that
                       bounds the input length): what ``extend_positions`` grows
    ``attention_path`` where a layer keeps its self-attention module (GPT's Block: "attn"), whose
                       ``pattern`` (a sparse attention pattern or None) ``set_attention_pattern`` sets
    """

    body = None                 # a task model's attribute holding its body ("gpt", "bert")
    head_patterns: tuple = ()
    position_table: tuple | None = None
    attention_path: str | None = None

    @property
    def base_model(self):
        return self if self.body is None else getattr(self, self.body)

    @property
    def fused_qkv(self) -> tuple:
        """A body with fused projections overrides this with a class attribute (GPT: ("c_attn",));
        a task model answers with its body's."""
        return () if self.body is None else self.base_model.fused_qkv

    def layers(self):
        return self.base_model.layers() if self.body is not None else []

    def attention_shape(self, layer: int):
        return self.base_model.attention_shape(layer)

    @property
    def device(self):
        return next(iter(self.base_model.parameters())).device


# ---- input checks ----------------------------------------------------------------------------

def as_ids(x, device: str, who: str, what: str = "input_ids", high: int | None = None,
           shape: tuple | None = None) -> Tensor:
    """Integer ids of shape (B, T) as a Tensor on ``device``; ``high``: every id in [0, high);
    ``shape``: the (B, T) they must match.  Anything else is an error that names it."""
    if not isinstance(x, Tensor):
        x = Tensor(backend.to_device(np.asarray(x), device))
    if x.dtype.kind not in "iu":
        raise TypeError(f"{who}: {what} must be integer ids, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{who}: {what} must have shape (batch, time), got {x.shape}")
    if shape is not None and x.shape != tuple(shape):
        raise ValueError(f"{who}: {what} of shape {x.shape} does not match input_ids {tuple(shape)}")
    if x.device != device:
        raise RuntimeError(f"{who}: {what} is on {x.device!r}, the model on {device!r}")
    if high is not None and x.data.size:
        lo, hi = int(x.data.min()), int(x.data.max())
        if lo < 0 or hi >= high:
            hint = " (was the input encoded with a different tokenizer?)" if what == "input_ids" else ""
            raise IndexError(f"{who}: {what} holds {lo if lo < 0 else hi}, outside [0, {high}){hint}")
    return x


def mask_array(mask, shape: tuple, device: str, who: str, what: str = "attention_mask"):
    """A (B, T) mask (Tensor, NumPy/CuPy array or list) as a device array, its shape checked."""
    m = mask.data if isinstance(mask, Tensor) else mask
    m = backend.to_device(m if backend.is_array(m) else np.asarray(m), device)
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{who}: {what} of shape {tuple(m.shape)} does not match input_ids {tuple(shape)}")
    return m


def key_padding_mask(attention_mask, shape: tuple, device: str, who: str):
    """attention_mask (1 = real token, 0 = padding) → the attention's key-padding mask,
    (B, T) bool with True at padding; None stays None (every position real)."""
    if attention_mask is None:
        return None
    return mask_array(attention_mask, shape, device, who) == 0


def real_positions(h: Tensor, attention_mask, who: str = "pool"):
    """(B, T) bool: True at real tokens (everywhere without a mask), for h of shape (B, T, d)."""
    B, T, _ = h.shape
    if attention_mask is None:
        return backend.get_array_module(h.data).ones((B, T), dtype=bool)
    return mask_array(attention_mask, (B, T), h.device, who) != 0


# ---- Hugging Face folders ----------------------------------------------------------------------

def read_hf_folder(path, config_from_hf, who: str, family: str):
    """(config_from_hf(the dict of config.json), the arrays of model.safetensors) of a Hugging Face
    folder; a missing file is named, with what the folder should hold."""
    import json
    import os

    from safetensors.numpy import load_file

    cfg_path, weights = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for p in (cfg_path, weights):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{who}: {p} not found (expected a Hugging Face {family} folder "
                                    "with config.json and model.safetensors)")
    with open(cfg_path, encoding="utf-8") as f:
        config = config_from_hf(json.load(f))
    return config, load_file(weights)


# ---- attention -----------------------------------------------------------------------------

def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask=None, prefix_kv=None,
              pattern=None) -> Tensor:
    """softmax(q kᵀ/√hs, masked) v per head, with Prefix-Tuning's keys and values (P1) in front:

        q, k, v (B, H, T, hs); prefix_kv = (P_k, P_v), each (B, H, m, hs), or None
        K = [P_k ; k], V = [P_v ; v]  (B, H, m + T, hs)  → (B, H, T, hs)

    Every query sees the m prefix positions (causal or not); key_padding_mask (B, T), True at
    padding, never hides them.  ``pattern``, an F.SparsePattern, limits which token keys each
    query sees (Longformer's window and global tokens, BigBird's blocks).  One fused op
    (F.scaled_dot_product_attention) for GPT and BERT."""
    n_prefix = 0
    if prefix_kv is not None:
        pk, pv = prefix_kv                                               # each (B, H, m, hs)
        if pk.shape[1] != q.shape[1]:
            raise ValueError(f"attention: prefix_kv has {pk.shape[1]} heads but this layer has {q.shape[1]}")
        k, v = F.concat([pk, k], axis=2), F.concat([pv, v], axis=2)     # (B, H, m + T, hs)
        n_prefix = pk.shape[2]
    return F.scaled_dot_product_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                                          n_prefix=n_prefix, pattern=pattern)   # (B, H, T, hs)


# ---- pooling: (B, T, d) → (B, d) -------------------------------------------------------------

def masked_mean(h: Tensor, m) -> Tensor:
    """Σᵢ mᵢ hᵢ / max(Σᵢ mᵢ, 1e-9) for h (B, T, d) and a (B, T) bool mask m → (B, d); a row with
    no real position gives 0 (sentence-transformers' mean pooling).  The weights are constants,
    so ∂/∂hᵢ = mᵢ / Σⱼ mⱼ times the incoming gradient."""
    xp = backend.get_array_module(h.data)
    m = m.astype(h.dtype)
    w = m / xp.maximum(m.sum(axis=1, keepdims=True), 1e-9)              # (B, T), real rows sum to 1
    return (h * Tensor(w[:, :, None])).sum(axis=1)                       # (B, T, d) -> (B, d)


def pool(h: Tensor, attention_mask=None, mode: str = "mean") -> Tensor:
    """(B, T, d) → (B, d).  ``"cls"``: position 0 (BERT's [CLS]); ``"mean"``: the mean of the
    real positions (:func:`masked_mean`); ``"last"``: the last real position, which in a causal
    model is the only one that has seen the whole input (GPT2ForSequenceClassification's choice;
    either padding side works)."""
    if mode not in POOLINGS:
        raise ValueError(f"pool: mode must be one of {POOLINGS}, got {mode!r}")
    if h.ndim != 3:
        raise ValueError(f"pool: hidden states must be (batch, time, d), got {h.shape}")
    if mode == "cls":
        return h[:, 0]                                                   # (B, d)
    real = real_positions(h, attention_mask)                             # (B, T)
    if mode == "mean":
        return masked_mean(h, real)                                      # (B, d)
    xp = backend.get_array_module(h.data)
    T = h.shape[1]
    last = T - 1 - xp.argmax(real[:, ::-1], axis=1)                      # (B,): the last real position
    onehot = (xp.arange(T)[None, :] == last[:, None]).astype(h.dtype)    # (B, T)
    return (h * Tensor(onehot[:, :, None])).sum(axis=1)                  # (B, d)


def pair_features(h: Tensor, token_type_ids, attention_mask=None) -> Tensor:
    """(B, T, d) → (B, 4d): the classification features of Sentence-BERT (Reimers & Gurevych 2019)
    taken inside one pass over ``[CLS] A [SEP] B [SEP]``:

        u = mean of the real positions of segment 0,  v = mean of those of segment 1
        features = [u, v, |u − v|, u ⊙ v]        (|x| written as relu(x) + relu(−x))

    u ⊙ v summed is u·v, the cosine similarity a sentence-embedding model was trained on, so a
    linear head on these features starts from what the pretrained model compares well.  A row
    whose segment is empty (truncated away) gets zeros for it."""
    if token_type_ids is None:
        raise ValueError("pair_features: pooling='pair' needs token_type_ids (0 for [CLS] A [SEP], 1 for B [SEP])")
    B, T, _ = h.shape
    seg = mask_array(token_type_ids, (B, T), h.device, "pair_features", "token_type_ids")   # (B, T)
    real = real_positions(h, attention_mask, "pair_features")
    u, v = (masked_mean(h, real & (seg == s)) for s in (0, 1))                            # (B, d) each
    diff = u - v
    return F.concat([u, v, F.relu(diff) + F.relu(-diff), u * v], axis=-1)                # (B, 4d)


# ---- losses ----------------------------------------------------------------------------------

def classification_loss(logits: Tensor, labels, n_classes: int, who: str):
    """CE(y, softmax(logits)) averaged over the batch, or None without labels; labels (B,) are checked
    (shape, range) first, so a bad label names itself instead of indexing out of bounds."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        labels = Tensor(backend.to_device(np.asarray(labels), logits.device))
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{who}: labels must be integer classes, got dtype {labels.dtype}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"{who}: labels of shape {labels.shape} do not match a batch of {logits.shape[0]}")
    lo, hi = int(labels.data.min()), int(labels.data.max())
    if lo < 0 or hi >= n_classes:
        raise IndexError(f"{who}: label {lo if lo < 0 else hi} outside [0, {n_classes})")
    return F.cross_entropy(logits, labels)


def token_loss(logits: Tensor, labels, who: str, ignore_index: int = -100):
    """Mean CE over the positions whose label is not ``ignore_index``: a causal LM's next-token
    targets (G4) or a masked LM's masked positions; labels (B, T) must match logits (B, T, V)
    (F.cross_entropy names an id outside the vocabulary)."""
    if labels is None:
        return None
    labels = labels if isinstance(labels, Tensor) else Tensor(backend.to_device(np.asarray(labels), logits.device))
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"{who}: labels of shape {labels.shape} do not match input_ids {logits.shape[:2]}")
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


# ---- longer inputs than the pretrained positions -----------------------------------------------

def extend_positions(model: Model, new_max: int) -> Model:
    """Grow the learned position table E_pos (G2) from P rows to ``new_max`` by copying, as
    Longformer does to read 4,096 tokens with RoBERTa's 512 positions (Beltagy et al. 2020, §5):

        E'_pos[i] = E_pos[i mod P]        i = 0 … new_max − 1

    The first P rows are the pretrained ones, so inputs of up to P tokens give exactly the
    outputs they gave before; every later block of P positions starts as a copy, which keeps
    the local structure attention learned (position i − 1 is still "just before" i) and
    is a much better start than random rows.  The config's length bound (GPT's block_size,
    BERT's max_position_embeddings) becomes ``new_max``, so the model saves and reloads at
    its new size.  In place; returns ``model``.  Build optimizers after calling it.
    """
    body = model.base_model
    if body.position_table is None:
        raise TypeError(f"extend_positions: {type(body).__name__} declares no learned position table")
    name, field = body.position_table
    table = _submodule(body, name)
    P = table.num_embeddings
    if not isinstance(new_max, (int, np.integer)) or isinstance(new_max, bool) or new_max < P:
        raise ValueError(f"extend_positions: new_max must be an integer ≥ the current {P} positions, "
                         f"got {new_max!r}")
    xp = backend.get_array_module(table.weight.data)
    rows = xp.arange(new_max) % P                                   # i mod P, (new_max,)
    table.weight.data = table.weight.data[rows].copy()              # (new_max, d): copies of E_pos
    table.weight._grad = None
    table.num_embeddings = int(new_max)
    setattr(body.config, field, int(new_max))
    return model


def _submodule(module: Module, dotted: str) -> Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


# ---- document-level attention (§2.1) ------------------------------------------------------------

def layer_patterns(pattern: dict | None, n_layer: int) -> list:
    """The F.SparsePattern of each layer from a config's ``attention_pattern`` dict (None: dense
    everywhere).  Layer l draws its random blocks with seed + l, so layers differ, as in BigBird."""
    if pattern is None:
        return [None] * n_layer
    base = F.SparsePattern(**pattern)
    return [base.with_seed(base.seed + layer) for layer in range(n_layer)]


def check_pattern(pattern, who: str) -> dict | None:
    """A config's ``attention_pattern``: None, or a dict of F.SparsePattern's fields (checked by building it);
    a SparsePattern is stored as its dict, so the config stays JSON."""
    if pattern is None:
        return None
    if isinstance(pattern, F.SparsePattern):
        pattern = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(pattern).items()}
    if not isinstance(pattern, dict):
        raise TypeError(f"{who}: attention_pattern must be None, a SparsePattern or its dict, got "
                        f"{type(pattern).__name__}")
    try:
        F.SparsePattern(**pattern)
    except TypeError as e:
        raise ValueError(f"{who}: attention_pattern {pattern}: {e}") from None
    return pattern


def set_attention_pattern(model: Model, pattern) -> Model:
    """Give every self-attention layer of ``model``'s body a sparse pattern (an F.SparsePattern,
    its dict, or None for dense), and record it in the config so the model saves and reloads with
    it.  With extend_positions this turns a pretrained encoder into a Longformer-style one."""
    body = model.base_model
    if body.attention_path is None:
        raise TypeError(f"set_attention_pattern: {type(body).__name__} does not say where its attention is")
    body.config.attention_pattern = check_pattern(pattern, type(body.config).__name__)
    layers = list(body.layers())
    for layer, p in zip(layers, layer_patterns(body.config.attention_pattern, len(layers))):
        _submodule(layer, body.attention_path).pattern = p
    return model


def to_longformer(model: Model, max_positions: int = 2048, window: int = 256, global_tokens=(0,)) -> Model:
    """Longformer's conversion of a pretrained model (Beltagy et al. 2020, §5): the position table
    copied out to ``max_positions`` (``extend_positions``), then a sliding window of ``window``
    tokens in every layer with ``global_tokens`` (an encoder's [CLS] at 0) seeing and seen by
    all.  Cost per layer O(T · (window + globals)) instead of O(T²).  Up to window // 2 + 1
    tokens every query still sees every key, so short inputs give what the dense model gave
    (to rounding).  In place; returns ``model``."""
    extend_positions(model, max_positions)
    return set_attention_pattern(model, F.SparsePattern.sliding(window, global_tokens))
