"""BART: an encoder–decoder Transformer trained to restore corrupted text (§2.1, Lewis et al. 2020).

    encoder   H⁰ = LN_emb(s·E_token(x_i) + E_pos(i))                 x: the corrupted text, S tokens
              Hˡ = EncLayer(Hˡ⁻¹)       every token sees every real token (BERT's layer)
    decoder   G⁰ = LN_emb(s·E_token(y_t) + E_pos(t))                 y: the target shifted right
              Gˡ = DecLayer(Gˡ⁻¹, Hᴸ)   three sub-layers, each post-LN:
                  g = LN₁(x + SelfAttn(x))            causal: y_t sees y_≤t (GPT's attention)
                  c = LN₂(g + CrossAttn(g, Hᴸ))       queries from the decoder (T), keys and values
                                                      from the encoder's output (S), padded source
                                                      tokens hidden
                  out = LN₃(c + FFN(c)),  FFN(c) = GELU(c W1 + b1) W2 + b2
    head      P(y_t | y_<t, x) = softmax(Gᴸ_t E_tokenᵀ + b_final)     G1 with one embedding for both sides
    loss      −(1/N) Σ_t log P(y_t | y_<t, x)                        G4, conditioned on the source

s = √d with ``scale_embedding`` (1 in BART itself).  E_token is one matrix shared by the encoder,
the decoder and the LM head.  Every layer is post-LayerNorm, as BERT's (``bert.py``), and each side
has a LayerNorm on its embeddings.  Positions are learned, with Hugging Face's offset of 2
(``BartLearnedPositionalEmbedding``, a fairseq legacy): position i reads row i + 2 of a table of
max_position_embeddings + 2 rows, so rows 0 and 1 are never used.

Training: ``labels`` (B, T) are the target ids; the decoder reads them shifted one to the right
behind ``decoder_start_token_id`` (:func:`shift_tokens_right`: [y₁ … y_T] → [</s> y₁ … y_{T−1}],
−100 becoming pad), so position t predicts y_t from y_<t.  −100 marks a target that is not scored.

Parameter names are Hugging Face ``BartForConditionalGeneration``'s, so its state dict loads by name
(:func:`bart_state_from_hf`; d = d_model, m = ffn dim, V = vocab, P = max_position_embeddings)::

    model.shared.weight                                        (V, d)       E_token (also the LM head)
    model.encoder.embed_positions.weight                       (P + 2, d)   E_pos, offset 2
    model.encoder.layernorm_embedding.weight / .bias           (d,)
    model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.weight (d, d)       HF: (d, d)ᵀ
    model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.bias   (d,)
    model.encoder.layers.{i}.self_attn_layer_norm.weight / .bias
    model.encoder.layers.{i}.fc1.weight                        (d, m)       HF: (m, d)
    model.encoder.layers.{i}.fc2.weight                        (m, d)       HF: (d, m)
    model.encoder.layers.{i}.final_layer_norm.weight / .bias
    model.decoder.embed_positions.weight, layernorm_embedding  as the encoder's
    model.decoder.layers.{i}.self_attn.*, self_attn_layer_norm.*           causal self-attention
    model.decoder.layers.{i}.encoder_attn.{q,k,v,out}_proj.*   (d, d)       cross-attention, HF: ᵀ
    model.decoder.layers.{i}.encoder_attn_layer_norm.*, fc1, fc2, final_layer_norm   as the encoder's
    final_logits_bias                                          (1, V)       a buffer (not trained), as in HF

``minilm.nn.Linear`` computes x W + b with W of shape (in, out) (tokens are rows), PyTorch's
``nn.Linear`` x Wᵀ + b with W of shape (out, in), so every Linear weight is **transposed** on
loading; embeddings, LayerNorms, biases and final_logits_bias are copied as they are.  HF's state
dict also lists ``model.encoder.embed_tokens.weight``, ``model.decoder.embed_tokens.weight`` and
``lm_head.weight``: the same matrix as ``model.shared.weight`` (tied); loading checks that they are
and drops them.  A ``BartModel`` state dict (no ``model.`` prefix, no head) loads too.

Generation keeps a key/value cache per decoder layer (:meth:`Bart.forward` with ``use_cache``),
as Hugging Face's legacy tuples: ``past_key_values[l] = (k_self, v_self, k_cross, v_cross)``, each
(B, H, ·, hs).  Self-attention's keys and values grow by one position per step; cross-attention's
are computed once from Hᴸ (S positions) and reused.  The fused attention kernel takes both: T
queries against S ≠ T keys (cross-attention), and causal queries that are the last T of S keys
(a cached decoder step).  :func:`generate_seq2seq` decodes greedily or by beam search
(:func:`minilm.decoding.beam_search`).

Differences from Hugging Face, none of which changes an output in eval():
- ``attention_dropout`` is kept in the config but not applied (attention is one fused op without
  dropout on its probabilities, as in ``bert.py``); BART's own default is 0.  ``dropout`` (after
  the embedding LayerNorm and after each sub-layer's output projection) and
  ``activation_dropout`` (after the FFN's activation) are applied in train() as in HF.
- HF's token embedding has ``padding_idx = pad_token_id``: a pad token's lookup sends no
  gradient to that row.  Here it does; the gradients agree whenever pad tokens sit only where
  nothing reads them (padded source keys are hidden, padded targets are −100).
- LayerDrop (``encoder_layerdrop`` / ``decoder_layerdrop``) is not implemented; ``from_hf``
  refuses a config that uses it.
- Sparse attention patterns and ``extend_positions`` do not apply (``attention_path`` and
  ``position_table`` are None): BART has two position tables with an offset, and a cached
  decoder's queries are not token positions of a pattern.  Prefix-Tuning is not wired either
  (no ``prefix`` slot); LoRA and Adapters are.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..configs import check_fields, config_from_dict
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, StateDictError
from ..nn import init
from ..tensor import Generator, Tensor, arange, no_grad
from .base import Model, ModelOutput, as_ids, attention, key_padding_mask, read_hf_folder, token_loss

LN_EPS = 1e-5                   # PyTorch nn.LayerNorm's default, which BART's LayerNorms use
POSITION_OFFSET = 2             # HF BartLearnedPositionalEmbedding: position i is row i + 2
ACTIVATIONS = {"gelu": lambda x: F.gelu(x, approximate="none"),          # exact erf GELU, BART's
               "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
               "relu": F.relu}


# ---- configuration ------------------------------------------------------------------------------

@dataclass
class BartConfig:
    """The sizes and special ids; field names and defaults are Hugging Face's BartConfig (bart-large)."""
    vocab_size: int = 50265
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    max_position_embeddings: int = 1024     # the longest source and target; the tables have 2 more rows
    activation_function: str = "gelu"
    dropout: float = 0.1                     # on hidden states (see the module docstring)
    attention_dropout: float = 0.0           # kept for round trips; not applied (fused attention)
    activation_dropout: float = 0.0          # after the FFN's activation
    scale_embedding: bool = False            # multiply token embeddings by √d_model
    init_std: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2          # BART starts decoding from </s>

    def __post_init__(self):
        check_fields(self)
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                     "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BartConfig: {name} must be positive, got {getattr(self, name)}")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"BartConfig: d_model={self.d_model} is not divisible by {name}={getattr(self, name)}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"BartConfig: activation_function={self.activation_function!r}; "
                             f"supported: {sorted(ACTIVATIONS)}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"BartConfig: {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"BartConfig: {name}={getattr(self, name)} is outside [0, {self.vocab_size})")

    def head_size(self, side: str = "encoder") -> int:
        return self.d_model // getattr(self, f"{side}_attention_heads")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d, source=None):
        """From ``to_dict()``'s output; types and ranges are checked, errors name ``source``."""
        return config_from_dict(cls, d, source)

    @classmethod
    def from_hf(cls, hf: dict) -> "BartConfig":
        """A BartConfig from a Hugging Face BART ``config.json`` dict (or ``config.to_dict()``); other
        keys are ignored, but ones that would change the computation are refused with a clear error."""
        model_type = hf.get("model_type", "bart")
        if model_type != "bart":
            raise ValueError(f"BartConfig.from_hf: model_type={model_type!r}, expected 'bart' (mBART and "
                             "others put the LayerNorm before each sub-layer)")
        for name in ("encoder_layerdrop", "decoder_layerdrop"):
            if hf.get(name, 0.0):
                raise ValueError(f"BartConfig.from_hf: {name}={hf[name]}; LayerDrop is not implemented")
        for name in ("normalize_before", "add_final_layer_norm"):
            if hf.get(name, False):
                raise ValueError(f"BartConfig.from_hf: {name}=True is an mBART layout; minilm's BART is post-LN")
        if not hf.get("tie_word_embeddings", True):
            raise ValueError("BartConfig.from_hf: tie_word_embeddings=False; minilm's BART ties the LM head "
                             "to the shared embedding")
        d = cls()
        kw = {name: hf.get(name, getattr(d, name)) for name in d.to_dict()}
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            if isinstance(kw[name], (list, tuple)):
                raise ValueError(f"BartConfig.from_hf: {name}={kw[name]}; minilm's BART takes one id")
        return cls(**kw)


def shift_tokens_right(labels: np.ndarray, pad_token_id: int, decoder_start_token_id: int) -> np.ndarray:
    """The decoder's input for ``labels`` (B, T): [y₁ … y_T] → [start y₁ … y_{T−1}], −100 → pad."""
    out = np.empty_like(labels)
    out[:, 0] = decoder_start_token_id
    out[:, 1:] = labels[:, :-1]
    out[out == -100] = pad_token_id
    return out


# ---- the modules (Hugging Face's tree, minilm's shapes) -------------------------------------------

class BartLearnedPositionalEmbedding(Embedding):
    """E_pos with BART's offset: positions start … start + T − 1 read rows start + 2 …; the table has
    max_position_embeddings + 2 rows (HF's shape, so checkpoints load as they are)."""

    def __init__(self, max_positions: int, d: int, generator=None):
        super().__init__(max_positions + POSITION_OFFSET, d, generator=generator)
        self.max_positions = max_positions

    def forward(self, T: int, start: int = 0, who: str = "Bart"):
        if start + T > self.max_positions:
            raise ValueError(f"{who}: positions up to {start + T} exceed max_position_embeddings "
                             f"{self.max_positions}; truncate the input")
        pos = arange(start + POSITION_OFFSET, start + T + POSITION_OFFSET, device=self.weight.device)
        return F.embedding(pos, self.weight)                                  # (T, d)


class BartAttention(Module):
    """Multi-head attention with separate projections: softmax(q kᵀ/√hs) v per head, then out_proj.

    q = x W_q + b_q from the queries' side (T positions); k, v from ``keys_values(states)``: the same
    x for self-attention, the encoder's output (S positions) for cross-attention.  Split so that a
    cache can keep k, v (:class:`BartDecoderLayer`)."""

    def __init__(self, d: int, heads: int, generator=None):
        super().__init__()
        self.num_heads, self.head_size = heads, d // heads
        self.k_proj = Linear(d, d, generator=generator)
        self.v_proj = Linear(d, d, generator=generator)
        self.q_proj = Linear(d, d, generator=generator)
        self.out_proj = Linear(d, d, generator=generator)

    def _heads(self, t):
        B, T, _ = t.shape
        return t.reshape(B, T, self.num_heads, self.head_size).permute(0, 2, 1, 3)   # (B, T, d) -> (B, H, T, hs)

    def keys_values(self, states):
        """(k, v), each (B, H, S, hs), of states (B, S, d)."""
        return self._heads(self.k_proj(states)), self._heads(self.v_proj(states))

    def forward(self, x, k, v, causal: bool, key_padding_mask=None):
        """x (B, T, d) against k, v (B, H, S, hs) → (B, T, d).  causal: the T queries are the last T of
        the S key positions (S = T without a cache); key_padding_mask (B, S), True = hidden key."""
        B, T, _ = x.shape
        y = attention(self._heads(self.q_proj(x)), k, v, causal=causal, key_padding_mask=key_padding_mask)
        return self.out_proj(y.permute(0, 2, 1, 3).reshape(B, T, -1))        # (B, H, T, hs) -> (B, T, d)

    def extra_repr(self):
        return f"heads={self.num_heads}, head_size={self.head_size}"


def _ffn(layer, h):
    """dropout(act_dropout(act(h W1 + b1)) W2 + b2): (B, T, d) -> (B, T, m) -> (B, T, d)."""
    return layer.dropout(layer.fc2(layer.activation_dropout(layer.act(layer.fc1(h)))))


class BartEncoderLayer(Module):
    """One post-LN encoder layer (BERT's):

        h   = LN₁(x + adapter_attn(dropout(SelfAttn(x))))
        out = adapter_output(LN₂(h + adapter_mlp(FFN(h))))

    The three adapter slots (A1–A2, :func:`minilm.peft.add_adapters`) sit where ``bert.py`` puts
    them: on each sub-layer's output before its residual sum and LayerNorm, and on the layer's output."""

    def __init__(self, config: BartConfig, generator=None):
        super().__init__()
        d = config.d_model
        self.adapter_width = d
        self.self_attn = BartAttention(d, config.encoder_attention_heads, generator)
        self.self_attn_layer_norm = LayerNorm(d, eps=LN_EPS)
        self.fc1 = Linear(d, config.encoder_ffn_dim, generator=generator)
        self.fc2 = Linear(config.encoder_ffn_dim, d, generator=generator)
        self.final_layer_norm = LayerNorm(d, eps=LN_EPS)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = Dropout(config.dropout)
        self.activation_dropout = Dropout(config.activation_dropout)
        self.adapter_attn = self.adapter_mlp = self.adapter_output = None

    def forward(self, x, key_padding_mask=None):
        k, v = self.self_attn.keys_values(x)
        a = self.dropout(self.self_attn(x, k, v, causal=False, key_padding_mask=key_padding_mask))
        if self.adapter_attn is not None:
            a = self.adapter_attn(a)
        h = self.self_attn_layer_norm(x + a)
        m = _ffn(self, h)
        if self.adapter_mlp is not None:
            m = self.adapter_mlp(m)
        out = self.final_layer_norm(h + m)
        if self.adapter_output is not None:
            out = self.adapter_output(out)                                   # A2 on the layer's output
        return out


class BartDecoderLayer(Module):
    """One post-LN decoder layer: causal self-attention, cross-attention to the encoder, FFN:

        g   = LN₁(x + adapter_attn(dropout(SelfAttn(x))))           y_t sees y_≤t (and the cache)
        c   = LN₂(g + dropout(CrossAttn(g, Hᴸ)))                     every real source token
        out = adapter_output(LN₃(c + adapter_mlp(FFN(c))))

    The adapter slots are the encoder layer's; the cross-attention sub-layer has none (LoRA reaches
    it by name: ``encoder_attn.q_proj`` …).  ``past`` = (k_self, v_self, k_cross, v_cross) from the
    previous steps; the layer returns its output and the new four (self k, v grown by T positions)."""

    def __init__(self, config: BartConfig, generator=None):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.adapter_width = d
        self.self_attn = BartAttention(d, heads, generator)
        self.self_attn_layer_norm = LayerNorm(d, eps=LN_EPS)
        self.encoder_attn = BartAttention(d, heads, generator)
        self.encoder_attn_layer_norm = LayerNorm(d, eps=LN_EPS)
        self.fc1 = Linear(d, config.decoder_ffn_dim, generator=generator)
        self.fc2 = Linear(config.decoder_ffn_dim, d, generator=generator)
        self.final_layer_norm = LayerNorm(d, eps=LN_EPS)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = Dropout(config.dropout)
        self.activation_dropout = Dropout(config.activation_dropout)
        self.adapter_attn = self.adapter_mlp = self.adapter_output = None

    def forward(self, x, memory, memory_padding=None, self_padding=None, past=None):
        """x (B, T, d), memory = Hᴸ (B, S, d) → ((B, T, d), (k_self, v_self, k_cross, v_cross))."""
        k, v = self.self_attn.keys_values(x)                                 # (B, H, T, hs) each
        if past is not None:
            k, v = F.concat([past[0], k], axis=2), F.concat([past[1], v], axis=2)   # (B, H, P + T, hs)
        a = self.dropout(self.self_attn(x, k, v, causal=True, key_padding_mask=self_padding))
        if self.adapter_attn is not None:
            a = self.adapter_attn(a)
        g = self.self_attn_layer_norm(x + a)
        if past is not None:
            ck, cv = past[2], past[3]                                        # computed once from Hᴸ
        else:
            ck, cv = self.encoder_attn.keys_values(memory)                   # (B, H, S, hs) each
        c = self.dropout(self.encoder_attn(g, ck, cv, causal=False, key_padding_mask=memory_padding))
        c = self.encoder_attn_layer_norm(g + c)
        m = _ffn(self, c)
        if self.adapter_mlp is not None:
            m = self.adapter_mlp(m)
        out = self.final_layer_norm(c + m)
        if self.adapter_output is not None:
            out = self.adapter_output(out)
        return out, (k, v, ck, cv)


class BartEncoder(Module):
    """H⁰ = dropout(LN_emb(s·E_token(x) + E_pos)), then the layers.  The token embedding is the
    model's ``shared`` one, passed in (HF's ``encoder.embed_tokens`` is the same matrix)."""

    def __init__(self, config: BartConfig, generator=None):
        super().__init__()
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings, config.d_model,
                                                              generator)
        self.layers = ModuleList(BartEncoderLayer(config, generator) for _ in range(config.encoder_layers))
        self.layernorm_embedding = LayerNorm(config.d_model, eps=LN_EPS)
        self.dropout = Dropout(config.dropout)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0

    def forward(self, embed_tokens, ids, key_padding_mask=None):
        """ids (B, S) → Hᴸ (B, S, d)."""
        x = embed_tokens(ids) * self.embed_scale + self.embed_positions(ids.shape[1])   # (B, S, d) + (S, d)
        x = self.dropout(self.layernorm_embedding(x))
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return x


class BartDecoder(Module):
    """G⁰ = dropout(LN_emb(s·E_token(y) + E_pos(P …))), then the layers against Hᴸ; P = the cached length."""

    def __init__(self, config: BartConfig, generator=None):
        super().__init__()
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings, config.d_model,
                                                              generator)
        self.layers = ModuleList(BartDecoderLayer(config, generator) for _ in range(config.decoder_layers))
        self.layernorm_embedding = LayerNorm(config.d_model, eps=LN_EPS)
        self.dropout = Dropout(config.dropout)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0

    def forward(self, embed_tokens, ids, memory, memory_padding=None, self_padding=None, past_key_values=None):
        """ids (B, T) → (Gᴸ (B, T, d), one (k_self, v_self, k_cross, v_cross) per layer)."""
        P = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        x = embed_tokens(ids) * self.embed_scale + self.embed_positions(ids.shape[1], start=P)
        x = self.dropout(self.layernorm_embedding(x))
        presents = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, memory, memory_padding, self_padding,
                          None if past_key_values is None else past_key_values[i])
            presents.append(kv)
        return x, tuple(presents)


def _init_bart(module: Module, std: float, generator):
    """HF's initialisation: N(0, init_std) for Linear and embedding weights, zero biases, LayerNorm 1 / 0."""
    for _, m in module.named_modules():
        if isinstance(m, (Linear, Embedding)):
            init.normal_(m.weight, 0.0, std, generator)
            if isinstance(m, Linear) and m.bias is not None:
                init.zeros_(m.bias)


class Bart(Model):
    """The encoder–decoder body: ``bart(input_ids, attention_mask, decoder_input_ids, …)``.

    input_ids               (B, S) source ids, S ≤ max_position_embeddings
    attention_mask          (B, S) 1 for real source tokens, 0 for padding (hidden from the encoder's
                            self-attention and from every cross-attention)
    decoder_input_ids       (B, T) the decoder's input; default ``shift_tokens_right(input_ids)``
                            (HF's denoising default)
    decoder_attention_mask  (B, P + T) 1 for real decoder tokens (P: the cached length); default all real
    past_key_values         the cache of the previous steps (one 4-tuple per decoder layer) or None
    use_cache               return the cache (``out.past_key_values``) for the next step
    encoder_outputs         Hᴸ already computed (``encode``): a Tensor (B, S, d) or a ModelOutput

    Returns ModelOutput(last_hidden_state = Gᴸ (B, T, d), encoder_last_hidden_state = Hᴸ,
    past_key_values).  ``layers()`` lists the encoder's layers, then the decoder's.

    The arguments are in Hugging Face's order: unlike GPT and BERT, the third is decoder_input_ids
    (BART has no segments); the shared training loop passes them by name (``model(**batch)``).
    """

    position_table = None    # two tables with an offset of 2: extend_positions does not apply
    attention_path = None    # no sparse patterns (a cached decoder's queries are not pattern positions)

    def __init__(self, config: BartConfig, generator: Generator | None = None):
        super().__init__()
        self.config = config
        self.shared = Embedding(config.vocab_size, config.d_model, generator=generator)   # E_token
        self.encoder = BartEncoder(config, generator)
        self.decoder = BartDecoder(config, generator)
        _init_bart(self, config.init_std, generator)
        self.shared.weight.data[config.pad_token_id] = 0                  # HF's padding_idx row starts at 0

    @property
    def device(self):
        return self.shared.weight.device

    def layers(self):
        """The encoder layers, then the decoder layers, each with three adapter slots."""
        return list(self.encoder.layers) + list(self.decoder.layers)

    def attention_shape(self, layer: int):
        """(heads, head size) of ``layer`` (encoder layers first, as ``layers()`` lists them)."""
        side = "encoder" if layer < self.config.encoder_layers else "decoder"
        return getattr(self.config, f"{side}_attention_heads"), self.config.head_size(side)

    def encode(self, input_ids, attention_mask=None) -> Tensor:
        """Hᴸ (B, S, d): the encoder's output for the source ``input_ids`` (B, S)."""
        ids = as_ids(input_ids, self.device, "Bart", "input_ids", high=self.config.vocab_size)
        kpm = key_padding_mask(attention_mask, ids.shape, self.device, "Bart")
        return self.encoder(self.shared, ids, kpm)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                past_key_values=None, use_cache: bool = False, encoder_outputs=None) -> ModelOutput:
        c = self.config
        who = type(self).__name__
        src = None
        if input_ids is not None:
            src = as_ids(input_ids, self.device, who, "input_ids", high=c.vocab_size)
        if encoder_outputs is None:
            if src is None:
                raise ValueError(f"{who}: give input_ids (B, S) or encoder_outputs")
            memory = self.encode(src, attention_mask)
        else:
            memory = _encoder_states(encoder_outputs, who)
            if src is not None and memory.shape[:2] != src.shape:
                raise ValueError(f"{who}: encoder_outputs of shape {memory.shape} do not match input_ids {src.shape}")
        B, S, d = memory.shape
        if d != c.d_model:
            raise ValueError(f"{who}: encoder_outputs have width {d}, the model d_model={c.d_model}")
        memory_padding = key_padding_mask(attention_mask, (B, S), self.device, who)
        if decoder_input_ids is None:
            if src is None:
                raise ValueError(f"{who}: without input_ids give decoder_input_ids (B, T)")
            decoder_input_ids = shift_tokens_right(backend.to_numpy(src.data), c.pad_token_id,
                                                   c.decoder_start_token_id)
        dec = as_ids(decoder_input_ids, self.device, who, "decoder_input_ids", high=c.vocab_size)
        if dec.shape[0] != B:
            raise ValueError(f"{who}: decoder_input_ids of shape {dec.shape} have batch {dec.shape[0]}, "
                             f"the source {B} (input_ids / encoder_outputs of shape {memory.shape[:2]})")
        P = _check_past(past_key_values, c, B, S, who)
        self_padding = None
        if decoder_attention_mask is not None:
            m = decoder_attention_mask.data if isinstance(decoder_attention_mask, Tensor) else decoder_attention_mask
            m = backend.to_device(m if backend.is_array(m) else np.asarray(m), self.device)
            if tuple(m.shape) != (B, P + dec.shape[1]):
                raise ValueError(f"{who}: decoder_attention_mask of shape {tuple(m.shape)} must be (B, P + T) = "
                                 f"{(B, P + dec.shape[1])} (P = {P} cached positions, T = {dec.shape[1]} new)")
            self_padding = m == 0
        h, presents = self.decoder(self.shared, dec, memory, memory_padding, self_padding, past_key_values)
        return ModelOutput(last_hidden_state=h, encoder_last_hidden_state=memory,
                           past_key_values=presents if use_cache else None)

    def extra_repr(self):
        c = self.config
        return (f"vocab={c.vocab_size}, d={c.d_model}, layers={c.encoder_layers}+{c.decoder_layers}, "
                f"heads={c.encoder_attention_heads}/{c.decoder_attention_heads}, "
                f"ffn={c.encoder_ffn_dim}/{c.decoder_ffn_dim}, positions={c.max_position_embeddings}")


def _encoder_states(encoder_outputs, who) -> Tensor:
    """Hᴸ from what ``encoder_outputs`` may be: a Tensor, a ModelOutput, or HF's tuple (Hᴸ, …)."""
    h = encoder_outputs
    if isinstance(h, ModelOutput):
        h = h.encoder_last_hidden_state if h.encoder_last_hidden_state is not None else h.last_hidden_state
    elif isinstance(h, (tuple, list)):
        h = h[0]
    if not isinstance(h, Tensor) or h.ndim != 3:
        raise ValueError(f"{who}: encoder_outputs must be the encoder's states (B, S, d), got "
                         f"{getattr(h, 'shape', type(h).__name__)}")
    return h


def _check_past(past, c: BartConfig, B: int, S: int, who: str) -> int:
    """The cached length P of ``past_key_values`` (0 for None), its structure checked."""
    if past is None:
        return 0
    if len(past) != c.decoder_layers or any(len(p) != 4 for p in past):
        raise ValueError(f"{who}: past_key_values must hold one (k_self, v_self, k_cross, v_cross) per decoder "
                         f"layer ({c.decoder_layers}), got {len(past)} entries")
    H, hs = c.decoder_attention_heads, c.head_size("decoder")
    P = past[0][0].shape[2]
    for l, (k, v, ck, cv) in enumerate(past):
        want = [(B, H, P, hs), (B, H, P, hs), (B, H, S, hs), (B, H, S, hs)]
        got = [tuple(t.shape) for t in (k, v, ck, cv)]
        if got != want:
            raise ValueError(f"{who}: past_key_values[{l}] has shapes {got}, expected {want} "
                             "(batch, heads, cached length / source length, head size)")
    return P


class BartForConditionalGeneration(Model):
    """``out = bart(input_ids, attention_mask, decoder_input_ids=…, labels=…)``: out.logits, out.loss.

    logits (B, T, V) = Gᴸ E_tokenᵀ + final_logits_bias: the next target token at every decoder
    position.  ``labels`` (B, T): the target ids (−100: not scored); without decoder_input_ids
    the decoder reads ``shift_tokens_right(labels)``.  loss: the mean cross-entropy over the scored
    positions (G4).  Besides: encoder_last_hidden_state, and past_key_values with ``use_cache``.
    """

    body = "model"

    def __init__(self, config: BartConfig, generator: Generator | None = None, model: Bart | None = None):
        super().__init__()
        self.model = Bart(config, generator) if model is None else model
        self.config = self.model.config
        w = self.model.shared.weight
        self.register_buffer("final_logits_bias",
                             Tensor(backend.to_device(np.zeros((1, self.config.vocab_size), dtype=w.dtype), w.device)))

    @property
    def lm_head_weight(self):
        """The LM head's matrix (V, d): the shared token embedding itself (tied)."""
        return self.model.shared.weight

    def encode(self, input_ids, attention_mask=None) -> Tensor:
        return self.model.encode(input_ids, attention_mask)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None, past_key_values=None, use_cache: bool = False, encoder_outputs=None) -> ModelOutput:
        c = self.config
        if labels is not None:
            labels = _check_labels(labels, c.vocab_size, decoder_input_ids)
            if decoder_input_ids is None:
                decoder_input_ids = shift_tokens_right(labels, c.pad_token_id, c.decoder_start_token_id)
        out = self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                         past_key_values=past_key_values, use_cache=use_cache, encoder_outputs=encoder_outputs)
        logits = out.last_hidden_state @ self.lm_head_weight.T + self.final_logits_bias   # (B, T, V)
        if labels is not None:
            labels = Tensor(backend.to_device(labels, logits.device))
        out.logits = logits
        out.loss = token_loss(logits, labels, "BartForConditionalGeneration")
        return out

    def extra_repr(self):
        return "lm_head tied to model.shared.weight, + final_logits_bias"

    # ---- Hugging Face weights ----------------------------------------------------------------
    @classmethod
    def from_hf_state_dict(cls, config, tensors: dict, dtype=None) -> "BartForConditionalGeneration":
        """A model holding a Hugging Face BART state dict (name → array; torch tensors convert with
        np.asarray).  ``config``: a BartConfig or HF's config dict.  ``dtype``: float32 by default."""
        config = config if isinstance(config, BartConfig) else BartConfig.from_hf(config)
        model = cls(config, generator=Generator(0))
        if dtype is not None:
            model.to(dtype=dtype)
        try:
            model.load_state_dict(bart_state_from_hf(model, tensors), strict=True, cast=True)
        except StateDictError as e:
            raise StateDictError(f"{cls.__name__}.from_hf_state_dict: the state dict does not fit this BART.\n{e}") \
                from None
        return model.eval()

    @classmethod
    def from_pretrained(cls, path: str) -> "BartForConditionalGeneration":
        """A Hugging Face BART folder (config.json and model.safetensors) as a minilm model."""
        config, tensors = read_hf_folder(path, BartConfig.from_hf, f"{cls.__name__}.from_pretrained", "BART")
        return cls.from_hf_state_dict(config, tensors)


def _check_labels(labels, vocab: int, decoder_input_ids) -> np.ndarray:
    """labels as a host int64 (B, T) array, every entry an id in [0, V) or −100."""
    lab = backend.to_numpy(labels.data if isinstance(labels, Tensor) else np.asarray(labels))
    if lab.dtype.kind not in "iu":
        raise TypeError(f"BartForConditionalGeneration: labels must be integer ids, got dtype {lab.dtype}")
    if lab.ndim != 2:
        raise ValueError(f"BartForConditionalGeneration: labels must have shape (batch, time), got {lab.shape}")
    if decoder_input_ids is not None:
        shape = tuple(getattr(decoder_input_ids, "shape", np.shape(decoder_input_ids)))
        if shape != lab.shape:
            raise ValueError(f"BartForConditionalGeneration: labels of shape {lab.shape} do not match "
                             f"decoder_input_ids {shape}")
    bad = (lab != -100) & ((lab < 0) | (lab >= vocab))
    if bad.any():
        raise IndexError(f"BartForConditionalGeneration: labels hold {int(lab[bad][0])}, outside [0, {vocab}) "
                         "(−100 marks a position that is not scored)")
    return lab.astype(np.int64)


def bart_state_from_hf(model: BartForConditionalGeneration, tensors: dict) -> dict:
    """Hugging Face BART arrays → a minilm state dict for ``model``: names kept (a ``BartModel``'s get
    ``model.`` in front), every minilm Linear's weight transposed from (out, in) to (in, out), the tied
    copies of the shared embedding checked and dropped, a missing final_logits_bias set to zeros."""
    tensors = {k: np.asarray(v) for k, v in tensors.items() if not k.endswith(".version")}
    if not any(k.startswith("model.") for k in tensors):
        tensors = {("model." + k if k != "final_logits_bias" else k): v for k, v in tensors.items()}
    shared = tensors.get("model.shared.weight")
    if shared is None:
        raise StateDictError("bart_state_from_hf: the state dict has no model.shared.weight (the token embedding)")
    for tied in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        copy = tensors.pop(tied, None)
        if copy is not None and not np.array_equal(copy, shared):
            raise ValueError(f"bart_state_from_hf: {tied} differs from model.shared.weight; minilm's BART "
                             "shares one token embedding between the encoder, the decoder and the LM head")
    tensors.setdefault("final_logits_bias", np.zeros((1, shared.shape[0]), dtype=shared.dtype))
    linears = {n + ".weight" for n, m in model.named_modules() if isinstance(m, Linear)}
    return {k: (np.ascontiguousarray(v.T) if k in linears else v) for k, v in tensors.items()}


# ---- generation --------------------------------------------------------------------------------

def decoder_step(model: BartForConditionalGeneration, memory: Tensor, attention_mask=None):
    """The ``step`` and ``reorder`` functions of :mod:`minilm.decoding` for ``model`` on encoder states
    ``memory`` (N, S, d) with source mask ``attention_mask`` (N, S):

        step(last_tokens (N,), cache) -> (log P(· | y_≤t, x) (N, V) float64, cache)   one cached decoder step
        reorder(cache, beam_idx (N,)) -> the cache rows beam_idx (row i continues old row beam_idx[i])

    The state is the decoder's key/value cache (None before the first step)."""
    device = model.device
    mask = None if attention_mask is None else backend.to_device(np.asarray(attention_mask), device)
    rows = [memory, mask]                                                    # reordered with the cache

    def step(last_tokens, cache):
        ids = Tensor(backend.to_device(np.asarray(last_tokens, dtype=np.int64)[:, None], device))   # (N, 1)
        out = model(None, rows[1], ids, past_key_values=cache, use_cache=True, encoder_outputs=rows[0])
        z = backend.to_numpy(out.logits.data[:, -1, :]).astype(np.float64)                         # (N, V)
        if not np.isfinite(z).all():
            raise FloatingPointError("generate_seq2seq: the model's logits are not finite (NaN/inf weights or "
                                     "a diverged model)")
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True)), out.past_key_values

    def reorder(cache, beam_idx):
        idx = backend.to_device(np.asarray(beam_idx, dtype=np.int64), device)
        rows[0] = Tensor(rows[0].data[idx])
        if rows[1] is not None:
            rows[1] = rows[1][idx]
        return tuple(tuple(Tensor(t.data[idx]) for t in layer) for layer in cache)

    return step, reorder


def generate_seq2seq(model: BartForConditionalGeneration, input_ids, attention_mask=None, max_new_tokens: int = 20,
                     num_beams: int = 1, length_penalty: float = 1.0, early_stopping=True) -> Tensor:
    """Decode a target for each source row: (B, 1 + L) int64 ids, the decoder start token first (as
    Hugging Face's ``generate`` returns them), rows that ended early filled with pad.

    num_beams = 1: greedy, y_t = argmax log P(y_t | y_<t, x), a row stopping at eos.
    num_beams > 1: beam search (:func:`minilm.decoding.beam_search`: ``length_penalty`` α divides a
    hypothesis' summed log-probability by |y|^α; ``early_stopping`` True / False / "never").
    The encoder runs once; the decoder runs one token per step on its key/value cache.  No token is
    forced (Hugging Face's BART config forces eos at max_length via forced_eos_token_id; set it to
    None there to compare)."""
    c = model.config
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"generate_seq2seq: num_beams must be an integer ≥ 1, got {num_beams!r}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"generate_seq2seq: max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}")
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            ids = as_ids(input_ids, model.device, "generate_seq2seq", "input_ids", high=c.vocab_size)
            B = ids.shape[0]
            mask = None
            if attention_mask is not None:
                m = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
                mask = backend.to_numpy(m if backend.is_array(m) else np.asarray(m))
                if mask.shape != ids.shape:
                    raise ValueError(f"generate_seq2seq: attention_mask of shape {mask.shape} does not match "
                                     f"input_ids {ids.shape}")
            memory = model.encode(ids, mask)                                  # (B, S, d), once
            start = np.full(B, c.decoder_start_token_id, dtype=np.int64)
            if num_beams == 1:
                step, _ = decoder_step(model, memory, mask)
                seqs = _greedy(step, start, max_new_tokens, c.eos_token_id)
            else:
                from ..decoding import beam_search

                rep = np.repeat(np.arange(B), num_beams)                     # batch-major rows b·K + k
                step, reorder = decoder_step(model, Tensor(memory.data[backend.to_device(rep, model.device)]),
                                             None if mask is None else mask[rep])
                seqs = beam_search(step, start, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                   eos_id=c.eos_token_id, pad_id=c.pad_token_id, length_penalty=length_penalty,
                                   early_stopping=early_stopping, reorder=reorder)
    finally:
        model.train(was_training)
    out = np.full((B, 1 + max((len(s) for s in seqs), default=0)), c.pad_token_id, dtype=np.int64)
    out[:, 0] = start
    for b, s in enumerate(seqs):
        out[b, 1:1 + len(s)] = s
    return Tensor(out)


def _greedy(step, start: np.ndarray, max_new_tokens: int, eos_id: int) -> list:
    """y_t = argmax_v log P(v | y_<t, x) per row until eos (kept) or max_new_tokens; ended rows still step
    (the batch stays rectangular) but take nothing more."""
    seqs = [[] for _ in start]
    done = np.zeros(len(start), dtype=bool)
    tokens, cache = start, None
    for _ in range(max_new_tokens):
        logp, cache = step(tokens, cache)
        tokens = logp.argmax(axis=1)
        for b in np.flatnonzero(~done):
            seqs[b].append(int(tokens[b]))
        done |= tokens == eos_id
        if done.all():
            break
    return seqs
