"""GPT: a decoder-only Transformer language model (§4.1, Eqs. G1–G4).

    H⁰ = E_token(x) + E_pos(i) (+ E_seg(s))             G2
    Hˡ = Block(Hˡ⁻¹),  l = 1..L                         G3
         Block: H + Attn(LN(H)), then H + MLP(LN(H))    (pre-LayerNorm, as GPT-2)
    P(x_t | x_<t) = softmax(h_{t−1} E_tokenᵀ)            G1: the head is the token embedding (tied)
    L(θ) = −(1/N) Σ_t log P(x_t | x_<t)                 G4: minimised, the mean negative log-likelihood

Parameter names and shapes are Hugging Face GPT-2's (``transformer.h.0.attn.
c_attn.weight`` of shape (d, 3d), rows = inputs), so GPT-2 checkpoints in
safetensors load directly (:func:`load_gpt2`).

Structurally pruned models (:mod:`minilm.prune`).  ``GPTConfig.layer_heads`` (heads
kept in each layer, each still of the original size hs = d / n_head) and
``GPTConfig.layer_mlp`` (hidden width of each layer's MLP) describe a GPT whose
layers are narrower than the config's n_head and 4d: layer l then has

    c_attn (d, 3·h_l·hs)   c_proj (h_l·hs, d)   c_fc (d, m_l)   mlp.c_proj (m_l, d)

with the same parameter names; a count of 0 is a layer with no heads (or no
neurons), whose zero-width matrices add only c_proj's bias.  Both default to
None, which is the ordinary GPT (n_head heads and 4d everywhere).  The config round-trips through ``to_dict``/``from_dict``
(JSON lists), so a checkpoint of a pruned model reloads into
``GPT(GPTConfig.from_dict(ckpt.config))``.

Attention-only models (Olsson et al. 2022, "In-context Learning and Induction Heads").
``GPTConfig(mlp=False)`` builds blocks with no MLP sub-layer and no ln_2:

    Block: H + Attn(LN(H))                              (G3 with one residual branch)

so every path from the input to the logits goes through embeddings, attention heads and
the tied head only, the model :mod:`minilm.interpret` takes apart.  The state dict has no
``mlp.*`` or ``ln_2.*`` keys; every other name, PEFT method (but adapters in the MLP slot,
Houlsby's and Pfeiffer's placements: there is no MLP to adapt), checkpointing and generation
work as for the ordinary GPT.  ``to_dict`` writes ``mlp`` only when it is False.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from ..configs import check_fields, config_from_dict
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleDict, ModuleList
from ..nn import init
from ..tensor import Generator, arange
from .base import (Model, ModelOutput, as_ids, attention, check_pattern, key_padding_mask, read_hf_folder,
                   set_attention_pattern, token_loss)


@dataclass
class GPTConfig:
    vocab_size: int = 65          # nanoGPT's tiny-Shakespeare characters; `minilm pretrain` sets the tokenizer's
    block_size: int = 64          # the longest context the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True             # biases in Linear and LayerNorm layers
    n_segments: int = 0           # > 0 adds a segment embedding E_seg (G2; BERT-style)
    layer_norm_epsilon: float = 1e-5
    layer_heads: list | None = None   # structured pruning: heads kept per layer (each of size n_embd // n_head)
    layer_mlp: list | None = None     # structured pruning: MLP hidden width per layer (default 4·n_embd)
    attention_pattern: dict | None = None   # F.SparsePattern's fields (window, global_tokens, …); None: dense
    mlp: bool = True              # False: attention-only blocks, no MLP sub-layer and no ln_2 (Olsson et al. 2022)

    def __post_init__(self):
        self.attention_pattern = check_pattern(self.attention_pattern, "GPTConfig")
        check_fields(self)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig: {name} must be positive, got {getattr(self, name)}")
        for name, most in (("layer_heads", self.n_head), ("layer_mlp", None)):
            value = getattr(self, name)
            if value is None:
                continue
            value = list(value)
            if len(value) != self.n_layer or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                     for v in value):
                raise ValueError(f"GPTConfig: {name} must list one integer per layer ({self.n_layer}), got {value}")
            bad = [v for v in value if v < 0 or (most is not None and v > most)]
            if bad:
                limit = f"between 0 and n_head={most}" if most is not None else "non-negative"
                raise ValueError(f"GPTConfig: {name} entries must be {limit}, got {value}")
            setattr(self, name, [int(v) for v in value])   # a list, as JSON gives it back
        if not self.mlp and self.layer_mlp is not None:
            raise ValueError(f"GPTConfig: layer_mlp={self.layer_mlp} sets MLP widths, but mlp=False has no MLP")

    @property
    def head_size(self) -> int:
        """hs = n_embd // n_head: every head's size, in pruned layers too."""
        return self.n_embd // self.n_head

    def heads(self, layer: int) -> int:
        """Heads in ``layer``: layer_heads[layer], or n_head."""
        return self.n_head if self.layer_heads is None else self.layer_heads[layer]

    def mlp_width(self, layer: int) -> int:
        """Hidden width of ``layer``'s MLP: layer_mlp[layer], or 4·n_embd."""
        return 4 * self.n_embd if self.layer_mlp is None else self.layer_mlp[layer]

    @property
    def pruned(self) -> bool:
        return self.layer_heads is not None or self.layer_mlp is not None

    def to_dict(self):
        """The fields as a JSON-able dict; layer_heads / layer_mlp / attention_pattern only when set,
        and mlp only when False, so a dense unpruned config with MLPs gives the same dict (and the
        same cache keys) as before they existed."""
        d = asdict(self)
        for name in ("layer_heads", "layer_mlp", "attention_pattern"):
            if d[name] is None:
                del d[name]
        if d["mlp"]:
            del d["mlp"]
        return d

    @classmethod
    def from_dict(cls, d, source=None):
        """From ``to_dict()``'s output (e.g. a checkpoint's config); types and ranges are checked
        and an error names ``source``, the file it came from."""
        return config_from_dict(cls, d, source)


class CausalSelfAttention(Module):
    """Multi-head self-attention where token t sees tokens ≤ t.

    q, k, v = H W_qkv (one fused (d, 3d) matrix, GPT-2's c_attn), split into
    n_head heads of size d/n_head, attention per head, heads joined, then c_proj.

    ``n_head`` (default config.n_head) heads of size hs = config.n_embd // config.n_head:
    a head-pruned layer keeps the original head size and has fewer heads, so c_attn is
    (d, 3·n_head·hs) and c_proj (n_head·hs, d).  With no head left both are zero-width
    and the layer adds only c_proj's bias.
    """

    def __init__(self, config: GPTConfig, generator=None, n_head: int | None = None):
        super().__init__()
        d = config.n_embd
        self.n_head = config.n_head if n_head is None else int(n_head)
        self.head_size = config.head_size                          # hs, unchanged by pruning
        inner = self.n_head * self.head_size                       # h·hs (= d when unpruned)
        self.c_attn = Linear(d, 3 * inner, bias=config.bias, generator=generator)
        self.c_proj = Linear(inner, d, bias=config.bias, generator=generator)
        self.resid_dropout = Dropout(config.dropout)
        self.pattern = None             # an F.SparsePattern (set_attention_pattern), None: dense

    def forward(self, x, prefix_kv=None, key_padding_mask=None):
        """x (B, T, C) -> (B, T, C).  prefix_kv: P1's (keys, values), each (B, H, m, hs), put in
        front of this layer's keys and values; key_padding_mask (B, T), True where x is padding."""
        B, T, C = x.shape
        H, hs = self.n_head, self.head_size
        if prefix_kv is not None and prefix_kv[0].shape[1] != H:
            raise ValueError(f"CausalSelfAttention: prefix_kv has {prefix_kv[0].shape[1]} heads but this layer has "
                             f"{H} (a head-pruned layer); Prefix-Tuning needs the layer's own head count")
        qkv = self.c_attn(x)                                       # (B, T, 3·H·hs)
        q, k, v = F.split(qkv, 3, axis=2)                          # 3 × (B, T, H·hs)
        q = q.reshape(B, T, H, hs).permute(0, 2, 1, 3)             # (B, H, T, hs)
        k = k.reshape(B, T, H, hs).permute(0, 2, 1, 3)             # (B, H, T, hs)
        v = v.reshape(B, T, H, hs).permute(0, 2, 1, 3)             # (B, H, T, hs)
        y = attention(q, k, v, causal=True, key_padding_mask=key_padding_mask, prefix_kv=prefix_kv,
                      pattern=self.pattern)                        # P1's prefix in front: (B, H, T, hs)
        y = y.permute(0, 2, 1, 3).reshape(B, T, H * hs)            # (B, T, H, hs) -> (B, T, H·hs)
        return self.resid_dropout(self.c_proj(y))                  # (B, T, H·hs) -> (B, T, C)

    def extra_repr(self):
        return f"heads={self.n_head}, head_size={self.head_size}"


class MLP(Module):
    """H ↦ GELU(H W_fc + b_fc) W_proj + b_proj with a 4× wider hidden layer (GPT-2's tanh GELU).

    ``hidden`` (default 4·d) sets the width: a neuron-pruned layer is narrower, c_fc (d, m)
    and c_proj (m, d).  With m = 0 both are zero-width and the layer adds only c_proj's bias.
    """

    def __init__(self, config: GPTConfig, generator=None, hidden: int | None = None):
        super().__init__()
        d = config.n_embd
        self.hidden = 4 * d if hidden is None else int(hidden)
        self.c_fc = Linear(d, self.hidden, bias=config.bias, generator=generator)
        self.c_proj = Linear(self.hidden, d, bias=config.bias, generator=generator)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))   # (B,T,d)->(B,T,m)->(B,T,d)

    def extra_repr(self):
        return f"hidden={self.hidden}"


class Block(Module):
    """One Transformer layer of G3: Hˡ = Block(Hˡ⁻¹), pre-LayerNorm, two residual branches.

    Three empty slots take Adapters (A1–A2, each ``H + W2 σ(H W1 + b1) + b2``;
    :func:`minilm.peft.add_adapters` fills them): ``adapter_attn`` and
    ``adapter_mlp`` on the two sub-layers' outputs, inside the residual
    (Houlsby; Pfeiffer uses only the second), and ``adapter_output`` on the
    block's output, as §3.2 of the course describes.

    With ``config.mlp = False`` the block is attention-only, H + Attn(LN(H)): ``ln_2`` and
    ``mlp`` are None, and an adapter put in the ``adapter_mlp`` slot is refused at the first call.
    """

    def __init__(self, config: GPTConfig, generator=None, layer: int = 0):
        super().__init__()
        self.adapter_width = config.n_embd                # d: what an adapter in a slot maps (d → r → d)
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, generator, n_head=config.heads(layer))
        if config.mlp:
            self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
            self.mlp = MLP(config, generator, hidden=config.mlp_width(layer))
        else:
            self.ln_2 = self.mlp = None                   # attention-only: no MLP sub-layer, no parameters for it
        self.adapter_attn = self.adapter_mlp = self.adapter_output = None

    def forward(self, x, prefix_kv=None, key_padding_mask=None):
        a = self.attn(self.ln_1(x), prefix_kv, key_padding_mask)
        if self.adapter_attn is not None:
            a = self.adapter_attn(a)                      # Houlsby: A1–A2 on the attention output
        x = x + a
        if self.mlp is not None:
            m = self.mlp(self.ln_2(x))
            if self.adapter_mlp is not None:
                m = self.adapter_mlp(m)                   # Houlsby / Pfeiffer: A1–A2 on the MLP output
            x = x + m
        elif self.adapter_mlp is not None:
            raise ValueError("Block: an adapter sits in the adapter_mlp slot, but this attention-only block "
                             "(GPTConfig.mlp=False) has no MLP to adapt; use the 'output' placement")
        if self.adapter_output is not None:
            x = self.adapter_output(x)                    # §3.2: Hˡ_output = Hˡ + Hˡ_adapter (A2)
        return x


class GPT(Model):
    """A causal language model: ``out = model(input_ids, labels=targets)``, out.logits, out.loss.

    input_ids (B, T), T ≤ block_size.  labels (B, T): the token that follows each position,
    i.e. the input shifted left by one, as a ``RandomBatches`` (x, y) pair gives them
    (nanoGPT's targets: the model does not shift them; Hugging Face's GPT-2 takes labels equal
    to input_ids and shifts inside).  −100 marks a position without a target.  logits
    (B, T, vocab) score the next token at every position; loss is the mean negative
    log-likelihood of the labels (G4), None without labels.
    """

    fused_qkv = ("c_attn",)           # GPT-2's c_attn: one (d, 3d) matrix, columns [q | k | v]
    position_table = ("transformer.wpe", "block_size")   # E_pos, grown by extend_positions
    attention_path = "attn"                               # Block.attn: its pattern (set_attention_pattern)

    def __init__(self, config: GPTConfig, generator: Generator | None = None):
        super().__init__()
        self.config = config
        c = config
        self.transformer = ModuleDict(dict(
            wte=Embedding(c.vocab_size, c.n_embd, generator=generator),      # E_token (also the head, G1)
            wpe=Embedding(c.block_size, c.n_embd, generator=generator),      # E_pos
            drop=Dropout(c.dropout),
            h=ModuleList(Block(c, generator, layer=i) for i in range(c.n_layer)),
            ln_f=LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias),
        ))
        if c.n_segments:
            self.transformer.wse = Embedding(c.n_segments, c.n_embd, generator=generator)  # E_seg
        self.prefix = None          # a Prefix-Tuning encoder (P1) goes here: minilm.peft.add_prefix
        self._init_weights(generator)
        set_attention_pattern(self, c.attention_pattern)

    def _init_weights(self, generator):
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and each residual
        projection scaled by 1/√(2L) so the residual stream's variance does not grow with depth."""
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.config.n_layer), generator)
            elif name.endswith(".weight") and p.ndim == 2:
                init.normal_(p, 0.0, 0.02, generator)
            elif name.endswith(".bias"):
                init.zeros_(p)

    @property
    def device(self):
        return self.transformer.wte.weight.device

    def layers(self):
        """The Transformer blocks (G3), each with three adapter slots."""
        return self.transformer.h

    def attention_shape(self, layer: int):
        """(heads, head size) of ``layer``'s attention: what a prefix's keys must have (P1)."""
        return self.config.heads(layer), self.config.head_size

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None, prefix_kv=None, all_layers=False):
        """The last layer's states after ln_f, (B, T, d): Eqs. G2–G3.  With ``all_layers=True``,
        a list [H⁰, H¹, …, Hᴸ] (the embeddings, then each block's output, before ln_f) and the
        final ln_f(Hᴸ) as a pair (list, final) — what distillation's hidden-state terms compare.

        attention_mask: (B, T), 1 for real tokens and 0 for padding; padded keys are
        never attended to (prefix keys always are).  token_type_ids: (B, T) segment ids,
        required when the config has segments (n_segments > 0), refused otherwise.
        prefix_kv: per-layer (keys, values) for Prefix-Tuning (P1), each (B, H, m, hs);
        without it, a Prefix-Tuning encoder attached as ``self.prefix`` supplies them.
        """
        c = self.config
        idx = as_ids(input_ids, self.device, "GPT", "input_ids", high=c.vocab_size)
        B, T = idx.shape
        if T > c.block_size:
            raise ValueError(f"GPT: sequence length {T} exceeds block_size {c.block_size}; "
                             f"crop the input to its last {c.block_size} tokens")
        kpm = key_padding_mask(attention_mask, (B, T), self.device, "GPT")   # (B, T), True = padding
        tr = self.transformer
        pos = arange(T, device=idx.device)
        x = tr.wte(idx) + tr.wpe(pos)                     # G2: E_token(x_i) + E_pos(i), (B, T, d)
        if c.n_segments:
            if token_type_ids is None:
                raise ValueError("GPT: this model has segment embeddings; pass token_type_ids of shape (B, T)")
            x = x + tr.wse(as_ids(token_type_ids, self.device, "GPT", "token_type_ids", high=c.n_segments,
                                  shape=(B, T)))          # + E_seg(s_i)
        elif token_type_ids is not None:
            raise ValueError("GPT: token_type_ids given, but this model has no segment embeddings "
                             "(GPTConfig.n_segments = 0)")
        x = tr.drop(x)
        if prefix_kv is None and self.prefix is not None and self.prefix.active:
            prefix_kv = self.prefix(B)                    # P1: m learned keys/values per layer
        if prefix_kv is not None and len(prefix_kv) != c.n_layer:
            raise ValueError(f"GPT: prefix_kv has {len(prefix_kv)} layers, the model {c.n_layer}")
        layers = [x]
        for i, block in enumerate(tr.h):                  # G3: Hˡ = Transformer(Hˡ⁻¹)
            x = block(x, None if prefix_kv is None else prefix_kv[i], kpm)
            layers.append(x)
        return (layers, tr.ln_f(x)) if all_layers else tr.ln_f(x)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *, prefix_kv=None,
                output_hidden_states=False) -> ModelOutput:
        """logits (B, T, V) and, with labels, their mean NLL (G4).  See :meth:`hidden_states`."""
        states = self.hidden_states(input_ids, attention_mask, token_type_ids, prefix_kv,
                                    all_layers=output_hidden_states)
        layers, x = states if output_hidden_states else (None, states)
        logits = x @ self.transformer.wte.weight.T        # G1: h · E_tokenᵀ, (B, T, V)
        loss = token_loss(logits, labels, "GPT")          # G4: mean −log P(x_t | x_<t)
        return ModelOutput(logits=logits, loss=loss, hidden_states=layers)

    def extra_repr(self):
        c = self.config
        pruned = ""
        if c.layer_heads is not None:
            pruned += f", heads per layer={c.layer_heads}"
        if c.layer_mlp is not None:
            pruned += f", MLP widths={c.layer_mlp}"
        if not c.mlp:
            pruned += ", attention-only"
        return (f"vocab={c.vocab_size}, block={c.block_size}, layers={c.n_layer}, heads={c.n_head}, "
                f"d={c.n_embd}{pruned}")


# ---- GPT-2 checkpoints -------------------------------------------------------------------------

def gpt2_config_from_hf(hf: dict) -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT-2 ``config.json`` dict."""
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 config uses activation {hf['activation_function']!r}; minilm's GPT uses the tanh GELU")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True,
                     layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))


def gpt2_state_from_hf(tensors: dict) -> dict:
    """Hugging Face GPT-2 arrays → minilm names (drop the causal-mask buffers and the tied lm_head)."""
    out = {}
    for key, value in tensors.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) and np.ndim(value) != 1:
            continue                                           # old causal-mask buffers
        if key == "lm_head.weight":
            continue                                           # tied to transformer.wte.weight
        name = key if key.startswith("transformer.") else "transformer." + key
        out[name] = value
    return out


def load_gpt2(path: str) -> GPT:
    """A GPT holding a Hugging Face GPT-2 checkpoint: a folder with config.json and model.safetensors."""
    config, tensors = read_hf_folder(path, gpt2_config_from_hf, "load_gpt2", "GPT-2")
    model = GPT(config, generator=Generator(0))
    model.load_state_dict(gpt2_state_from_hf(tensors), cast=True)  # a float16 export casts up
    return model
