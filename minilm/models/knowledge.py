"""Knowledge fusion for an encoder (§2.1, knowledge-based context learning), written as the papers'
equations: ERNIE's knowledgeable encoder (Zhang et al. 2019, "ERNIE: Enhanced Language
Representation with Informative Entities", ERNIE-THU) and KnowBERT's Knowledge Attention and
Recontextualization (Peters et al. 2019, "Knowledge Enhanced Contextual Word Representations").

Both read a table of entity embeddings E ∈ R^{n_entities × d_e} (TransE vectors in both papers,
kept fixed by both: here a buffer unless ``train_entities=True``) and integer entity ids.  Rows
are tokens, as everywhere in minilm: H ∈ R^{T×d}, H W₁ with W₁ ∈ R^{d×d_e}.

ERNIE (§3.3–3.4).  Each token j is aligned to at most one entity (ERNIE aligns an entity to the
first token of its mention; ``align_to_first_token``).  The entity sequence {e_1 … e_m} of a text
is the aligned entities in order of appearance (``entity_slots``: one slot per aligned token, so an
entity mentioned twice has two slots, as in thunlp's code).  One aggregator (``ErnieFusionLayer``):

    {w̃_1 … w̃_n} = MH-ATT({w_1 … w_n}),  {ẽ_1 … ẽ_m} = MH-ATT({e_1 … e_m})      ERNIE eq. (3)
    token j aligned to entity k:
        h_j = σ(W̃_t w̃_j + W̃_e ẽ_k + b̃),  w_j = σ(W_t h_j + b_t),  e_k = σ(W_e h_j + b_e)   eq. (4)
    token j with no entity:
        h_j = σ(W̃_t w̃_j + b̃),  w_j = σ(W_t h_j + b_t)                                eq. (5)
    σ = GELU;  aggregators stack: {w⁽ⁱ⁾, e⁽ⁱ⁾} = Aggregator({w⁽ⁱ⁻¹⁾}, {e⁽ⁱ⁻¹⁾})        eq. (6)
    dEA:  p(e_j | w_j) = exp(linear(w_jᵒ) · e_j) / Σ_{k=1}^{m} exp(linear(w_jᵒ) · e_k)   eq. (7)

KnowBERT (§3.2–3.4).  Mentions are spans (start, end inclusive) of the tokens, each with up to
C candidate entities e_mk and their prior probabilities p_mk.  The KAR, inserted between two
layers of a pretrained encoder (``KnowledgeAttentionRecontextualization``):

    (1) H^proj = H W₁ + b₁                                           d → d_e
    (2) s_m = Σ_{t∈m} softmax_{t∈m}(w · h^proj_t) h^proj_t            self-attentive span pooling (Lee et al. 2017)
        S^e = TransformerBlock(S)                                     mention spans attend to mention spans
    (3) ψ_mk = MLP([p_mk, s^e_m · e_mk]),  ẽ_m = Σ_k softmax_k(ψ_m) e_mk        the entity linker
    (4) s'^e_m = s^e_m + ẽ_m
    (5) H'^proj = H^proj + MH-ATT(queries H^proj, keys/values S'^e)   word-to-entity-span attention
    (6) H' = H'^proj W₂ + b₂ + H,  W₂ = W₁⁺ (the pseudo-inverse), b₂ = −b₁ W₁⁺ at init
    L_EL = −log softmax(ψ_m)_gold, mean over mentions whose gold entity is among the candidates

Insertion into a pretrained Bert: ``ErnieEncoder`` and ``KnowBertEncoder`` run ``bert.embeddings`` and
``bert.encoder.layer[i]`` themselves, in order (Bert has no hook between layers; its own
``hidden_states`` is the same loop), and apply the fusion after layer ``after_layer``;
``KnowledgeClassifier`` is BertClassifier's head on either.  LoRA (``minilm.peft``) on the base works
through them: the fusion modules name their projections ``q_proj`` / ``k_proj`` / ``v_proj`` /
``out_proj``, so ``target_modules=["query", "value"]`` reaches only the Bert's.

Where this differs from the papers (and from their code), and why:

* ERNIE, how the outputs go back into the encoder.  ``residual=False`` is eqs. (3)–(5) exactly.
  ``residual=True`` (the default, for a pretrained base) adds skips around both halves,
  w̃ = w + MH-ATT(w), ẽ = e + MH-ATT(e), w_j ← w̃_j + σ(W_t h_j + b_t), e_k ← ẽ_k + σ(W_e h_j + b_e),
  and starts the attention output projections and W_t, b_t, W_e, b_e at zero.  As GELU(0) = 0, an
  untrained layer is then exactly the identity: the pretrained states pass through bit for bit and
  fine-tuning starts from the base model's function (as LoRA's B = 0).  No LayerNorm after the sum:
  BERT's states are already layer-normalised and a LayerNorm would break the exact identity.
  (thunlp's code instead builds each aggregator from a BERT layer — attention and FFN with BERT's
  residual + LayerNorm, the entity entering the FFN's hidden layer — and drops the outer σ.)
* ERNIE's dEA "linear" is one Linear d_w → d_e (thunlp's code: dense, GELU, LayerNorm); the
  softmax runs over the distinct gold entities of the text (eq. 7), not over the whole batch as
  thunlp's code does; the noise (``dea_noise``) draws its random entity from the whole table.
* KnowBERT step (5) is one multi-head attention with a residual; KnowBERT's span-attention layer
  is a whole Transformer layer (attention, LayerNorm, FFN, LayerNorm).  The LayerNorms of
  KnowBERT's code (on the projected spans, on the candidate embeddings, on s + ẽ, on the output)
  are not in the paper's equations and are left out, so (6)'s identity below holds exactly.
* KnowBERT's linker MLP is Linear(2, h) → ReLU → Linear(h, 1) (its code, h = 100) on the plain dot
  product of the paper (the code scales it by 1/√d_e).  The threshold δ of KnowBERT's code is
  optional (``threshold``): candidates with ψ < δ leave the softmax, and a mention left with no
  candidate gets ẽ = 0 (the code substitutes a learned null-entity embedding).
* W₁ starts with orthonormal columns (QR of a Gaussian draw), so W₁⁺ = W₁ᵀ is perfectly
  conditioned; KnowBERT draws N(0, 0.02²) entries, whose pseudo-inverse can be large.

What W₂ = W₁⁺ does.  P = W₁ W₁⁺ (d × d) is the orthogonal projector onto the d_e columns of W₁,
and (H W₁ + b₁) W₁⁺ − b₁ W₁⁺ = H P: going down to the entity space and back up is the identity on
the subspace the KAR reads and zero across it — the best a rank-d_e map can do.  So with nothing
to add (zero entity embeddings and a zero attention update) the KAR returns H' = H + H P: the
base's states plus their own component in the read subspace, never a rotation into unrelated
directions.  That is near the identity only in direction, not in size (the read subspace is
doubled; KnowBERT follows with a LayerNorm and pretrains with MLM to absorb it).  For fine-tuning on
a frozen base, ``w2_init="zero"`` (W₂ = 0, b₂ = 0) makes H' = H exactly at the start instead.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Dropout, LayerNorm, Linear, Module, ModuleList, Parameter
from ..nn import init
from ..tensor import Generator, Tensor, default_generator, no_grad
from .base import (Model, ModelOutput, as_ids, attention, classification_loss, key_padding_mask, pool)

NONE = -1                 # "no entity" / "padded" in entity-id, slot, span and candidate arrays
IGNORE = -100             # a label no loss counts (F.cross_entropy's ignore_index)


# ---- small helpers ----------------------------------------------------------------------------

def _host_ints(x, who: str, what: str, ndim: int) -> np.ndarray:
    """Integer ids (Tensor, device array, list) as a host int64 array of ``ndim`` axes."""
    a = x.data if isinstance(x, Tensor) else x
    a = backend.to_numpy(a) if backend.is_array(a) else np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{who}: {what} must be integer ids, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{who}: {what} must have {ndim} axes, got shape {a.shape}")
    return a.astype(np.int64)


def _floats(x, like: Tensor, who: str, what: str, shape: tuple) -> Tensor:
    """A float input (Tensor or array) as a constant Tensor on ``like``'s device with its dtype."""
    a = x.data if isinstance(x, Tensor) else x
    a = backend.to_numpy(a) if backend.is_array(a) else np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{who}: {what} must be numbers, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{who}: {what} of shape {a.shape} does not match {tuple(shape)}")
    return Tensor(backend.to_device(a.astype(like.dtype), like.device))


def _dev(a: np.ndarray, like: Tensor):
    return backend.to_device(a, like.device)


def _check_states(x: Tensor, d: int, who: str, what: str):
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != d:
        shape = x.shape if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who}: {what} must be a (batch, length, {d}) Tensor, got {shape}")


def masked_softmax(scores: Tensor, valid, axis: int = -1) -> Tensor:
    """softmax of ``scores`` over the entries where ``valid`` (a bool array broadcasting to the
    scores) is True; the others get exactly 0 and no gradient, and a row with no valid entry is all
    zeros (not a uniform average over padding)."""
    low = float(np.finfo(scores.dtype).min) / 4            # finite: an all-masked row stays NaN-free
    xp = backend.get_array_module(scores.data)
    valid = xp.broadcast_to(valid, scores.shape)
    p = F.softmax(F.masked_fill(scores, ~valid, low), axis=axis)
    return p * Tensor(valid.any(axis=axis, keepdims=True).astype(scores.dtype))


def _init_linear(m: Linear, generator, std: float = 0.02):
    """BERT's initialisation: weight ~ N(0, std²), bias 0."""
    init.normal_(m.weight, 0.0, std, generator)
    if m.bias is not None:
        init.zeros_(m.bias)


def _zero_linear(m: Linear):
    init.zeros_(m.weight)
    if m.bias is not None:
        init.zeros_(m.bias)


class EntityTable(Module):
    """The entity embeddings E (n_entities, d_e), frozen (a buffer) unless ``trainable`` (a Parameter).
    ``lookup(ids)``: the rows of E for integer ids of any shape, NONE (−1) giving a zero row."""

    def __init__(self, table, trainable: bool = False):
        super().__init__()
        t = table.data if isinstance(table, Tensor) else table
        t = backend.to_numpy(t) if backend.is_array(t) else np.asarray(t)
        if t.ndim != 2 or t.dtype.kind != "f" or t.shape[0] < 1:
            raise ValueError(f"EntityTable: entity embeddings must be a float (n_entities, d_e) array, got "
                             f"shape {t.shape} and dtype {t.dtype}")
        self.n_entities, self.dim = t.shape
        self.trainable = trainable
        if trainable:
            self.weight = Parameter(t.astype(np.float32))
        else:
            self.register_buffer("weight", Tensor(t.astype(np.float32)))

    def check_ids(self, ids: np.ndarray, who: str, what: str):
        bad = (ids < NONE) | (ids >= self.n_entities)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise IndexError(f"{who}: {what} holds {int(ids[where])} at {where}, outside [0, {self.n_entities}) "
                             f"(or {NONE} for none)")

    def lookup(self, ids: np.ndarray) -> Tensor:
        """E[ids] with zero rows where ids == NONE: (*ids.shape, d_e)."""
        w = self.weight
        rows = F.embedding(Tensor(_dev(np.where(ids < 0, 0, ids), w)), w)          # (*ids.shape, d_e)
        return rows * Tensor(_dev((ids >= 0)[..., None].astype(w.dtype), w))

    def extra_repr(self):
        return f"{self.n_entities}, {self.dim}, {'trainable' if self.trainable else 'frozen'}"


# ---- attention blocks ----------------------------------------------------------------------------

class MultiHeadAttention(Module):
    """MH-ATT(X, Y) = concat_h softmax(q_h k_hᵀ/√hs) v_h · W_o + b_o with q = X W_q + b_q,
    k = Y W_k + b_k, v = Y W_v + b_v; Y = X for self-attention.  Keys whose key_padding_mask is True
    are hidden, and a query that sees no key gets 0 before W_o (so out = b_o)."""

    def __init__(self, d: int, heads: int, generator=None):
        super().__init__()
        if heads < 1 or d % heads:
            raise ValueError(f"MultiHeadAttention: width {d} is not divisible by {heads} heads")
        self.d, self.num_heads, self.head_size = d, heads, d // heads
        self.q_proj = Linear(d, d, generator=generator)
        self.k_proj = Linear(d, d, generator=generator)
        self.v_proj = Linear(d, d, generator=generator)
        self.out_proj = Linear(d, d, generator=generator)
        for m in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            _init_linear(m, generator)

    def _heads(self, t):
        B, S, _ = t.shape
        return t.reshape(B, S, self.num_heads, self.head_size).permute(0, 2, 1, 3)   # (B, S, d) -> (B, H, S, hs)

    def forward(self, x, memory=None, key_padding_mask=None):
        """x (B, T, d) queries; memory (B, S, d) keys and values (default x); key_padding_mask (B, S)
        bool, True = hidden → (B, T, d)."""
        memory = x if memory is None else memory
        B, T, _ = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
        y = attention(q, k, v, causal=False, key_padding_mask=key_padding_mask)       # (B, H, T, hs)
        return self.out_proj(y.permute(0, 2, 1, 3).reshape(B, T, self.d))             # (B, H, T, hs) -> (B, T, d)

    def extra_repr(self):
        return f"d={self.d}, heads={self.num_heads}"


class TransformerBlock(Module):
    """A post-LayerNorm Transformer encoder layer (BERT's; KnowBERT's span encoder is one):

        h = LN₁(x + MH-ATT(x)),  out = LN₂(h + GELU(h W₁ + b₁) W₂ + b₂)
    """

    def __init__(self, d: int, heads: int, ffn: int, generator=None, eps: float = 1e-12):
        super().__init__()
        self.attention = MultiHeadAttention(d, heads, generator)
        self.attention_norm = LayerNorm(d, eps=eps)
        self.ffn_in = Linear(d, ffn, generator=generator)
        self.ffn_out = Linear(ffn, d, generator=generator)
        self.ffn_norm = LayerNorm(d, eps=eps)
        _init_linear(self.ffn_in, generator)
        _init_linear(self.ffn_out, generator)

    def forward(self, x, key_padding_mask=None):
        """x (B, S, d), key_padding_mask (B, S) True = padding → (B, S, d)."""
        h = self.attention_norm(x + self.attention(x, key_padding_mask=key_padding_mask))
        return self.ffn_norm(h + self.ffn_out(F.gelu(self.ffn_in(h))))


# ---- ERNIE: alignments ---------------------------------------------------------------------------

def align_to_first_token(mention_spans, mention_entities, length: int) -> np.ndarray:
    """ERNIE's token–entity alignment: the entity of a mention sits on the first token of its span.
    mention_spans (B, M, 2) (start, end inclusive; start = −1 for a padded mention), mention_entities
    (B, M) ids (−1 none) → (B, length) entity id per token, −1 where none."""
    spans = _host_ints(mention_spans, "align_to_first_token", "mention_spans", 3)
    ents = _host_ints(mention_entities, "align_to_first_token", "mention_entities", 2)
    if spans.shape[:2] != ents.shape or spans.shape[2] != 2:
        raise ValueError(f"align_to_first_token: mention_spans {spans.shape} must be (B, M, 2) and "
                         f"mention_entities {ents.shape} (B, M)")
    out = np.full((spans.shape[0], length), NONE, dtype=np.int64)
    for b, m in zip(*np.nonzero((spans[..., 0] >= 0) & (ents >= 0))):
        start = spans[b, m, 0]
        if start >= length:
            raise IndexError(f"align_to_first_token: mention {m} of row {b} starts at {start}, beyond length {length}")
        if out[b, start] != NONE:
            raise ValueError(f"align_to_first_token: two mentions of row {b} start at token {start}")
        out[b, start] = ents[b, m]
    return out


def entity_slots(entity_ids) -> tuple[np.ndarray, np.ndarray]:
    """(slots, slot_entities) of per-token entity ids (B, T) (−1 = no entity):

        slots (B, T)          the entity-sequence index k of token j's entity, −1 where none
        slot_entities (B, M)  the entity id in slot k, −1 for padding; M = the most aligned tokens
                              of any row (at least 1, so that attention always has a key slot)

    Slots follow the order of the tokens, one per aligned token."""
    ids = _host_ints(entity_ids, "entity_slots", "entity_ids", 2)
    aligned = ids >= 0
    M = max(int(aligned.sum(axis=1).max(initial=0)), 1)
    slots = np.where(aligned, np.cumsum(aligned, axis=1) - 1, NONE)              # (B, T): k = rank among aligned
    slot_entities = np.full((ids.shape[0], M), NONE, dtype=np.int64)
    b, t = np.nonzero(aligned)
    slot_entities[b, slots[b, t]] = ids[b, t]
    return slots, slot_entities


# ---- ERNIE: the aggregator -----------------------------------------------------------------------

class ErnieFusionLayer(Module):
    """One ERNIE aggregator (ERNIE eqs. (3)–(6)): token states w (B, T, d_w) and entity states
    e (B, M, d_e) → (w', e'), each the shape it came in.

        w̃ = MH-ATT(w) over the tokens (padded tokens hidden)                     eq. (3)
        ẽ = MH-ATT(e) over the entity slots of the text (padded slots hidden)     eq. (3)
        h_j = σ(W̃_t w̃_j + W̃_e ẽ_k + b̃)    token j aligned to slot k           eq. (4)
        h_j = σ(W̃_t w̃_j + b̃)              token j without entity               eq. (5)
        w'_j = σ(W_t h_j + b_t),  e'_k = σ(W_e h_j + b_e)  (j: the token of slot k)   σ = GELU

    Parameters: ``token_attention`` and ``entity_attention`` (MH-ATT), ``fuse_token`` (W̃_t, b̃:
    d_w → d_h), ``fuse_entity`` (W̃_e: d_e → d_h, no bias: b̃ is counted once), ``out_token``
    (W_t, b_t: d_h → d_w), ``out_entity`` (W_e, b_e: d_h → d_e).

    ``residual=True`` adds the skips w̃ = w + MH-ATT(w), ẽ = e + MH-ATT(e), w' = w̃ + σ(W_t h + b_t),
    e' = ẽ + σ(W_e h + b_e), and zero-initialises both attentions' W_o, b_o and W_t, b_t, W_e, b_e,
    so that an untrained layer is exactly the identity (see the module docstring).  Padded entity
    slots leave as zeros either way.

    Gradients: every step is an op of minilm.functional (linear, gelu, fused attention, gathers),
    whose VJPs are checked in tests/test_ops_grad.py; the layer's is checked as a whole in
    tests/test_knowledge_fusion.py.
    """

    def __init__(self, d_w: int, d_e: int, d_h: int | None = None, heads_w: int = 1, heads_e: int = 1,
                 residual: bool = True, generator: Generator | None = None):
        super().__init__()
        d_h = d_w if d_h is None else d_h
        self.d_w, self.d_e, self.d_h, self.residual = d_w, d_e, d_h, residual
        self.token_attention = MultiHeadAttention(d_w, heads_w, generator)       # w̃ = MH-ATT(w)
        self.entity_attention = MultiHeadAttention(d_e, heads_e, generator)      # ẽ = MH-ATT(e)
        self.fuse_token = Linear(d_w, d_h, generator=generator)                  # W̃_t, b̃
        self.fuse_entity = Linear(d_e, d_h, bias=False, generator=generator)     # W̃_e
        self.out_token = Linear(d_h, d_w, generator=generator)                   # W_t, b_t
        self.out_entity = Linear(d_h, d_e, generator=generator)                  # W_e, b_e
        for m in (self.fuse_token, self.fuse_entity, self.out_token, self.out_entity):
            _init_linear(m, generator)
        if residual:
            for m in (self.token_attention.out_proj, self.entity_attention.out_proj, self.out_token,
                      self.out_entity):
                _zero_linear(m)

    def check_slots(self, slots, B: int, T: int, M: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots (B, T), token_of_slot (B, M) with −1 for padded slots), checked: each slot in
        [−1, M) and used by at most one token of its row."""
        s = _host_ints(slots, "ErnieFusionLayer", "slots", 2)
        if s.shape != (B, T):
            raise ValueError(f"ErnieFusionLayer: slots of shape {s.shape} do not match the tokens' (B, T) = {(B, T)}")
        if s.size and (s.min() < NONE or s.max() >= M):
            raise IndexError(f"ErnieFusionLayer: slots hold {int(s.min() if s.min() < NONE else s.max())}, outside "
                             f"[{NONE}, {M}) for {M} entity slots")
        b, t = np.nonzero(s >= 0)
        flat = b * M + s[b, t]                                                       # (row, slot) as one number
        used, counts = np.unique(flat, return_counts=True)
        if (counts > 1).any():
            row, k = divmod(int(used[counts > 1][0]), M)
            raise ValueError(f"ErnieFusionLayer: slot {k} of row {row} is aligned to tokens "
                             f"{t[flat == row * M + k].tolist()}; each entity slot has one token")
        token_of_slot = np.full((B, M), NONE, dtype=np.int64)
        token_of_slot[b, s[b, t]] = t
        return s, token_of_slot

    def fusion(self, w_tilde: Tensor, e_tilde: Tensor, slots: np.ndarray) -> Tensor:
        """h (B, T, d_h) of eqs. (4)–(5) from w̃ (B, T, d_w), ẽ (B, M, d_e) and host slots (B, T)."""
        B, T, _ = w_tilde.shape
        M = e_tilde.shape[1]
        xp = backend.get_array_module(w_tilde.data)
        e0 = F.concat([e_tilde, Tensor(xp.zeros((B, 1, self.d_e), dtype=e_tilde.dtype))], axis=1)  # (B, M + 1, d_e)
        rows = _dev(np.arange(B)[:, None], w_tilde)                                  # (B, 1)
        cols = _dev(np.where(slots >= 0, slots, M), w_tilde)                         # (B, T): row M is zero
        e_tok = e0[rows, cols]                                                       # (B, T, d_e): ẽ_k at token j, or 0
        return F.gelu(self.fuse_token(w_tilde) + self.fuse_entity(e_tok))            # 0 W̃_e = 0: eq. (5) exactly

    def forward(self, w: Tensor, e: Tensor, slots, key_padding_mask=None, return_parts: bool = False):
        """w (B, T, d_w); e (B, M, d_e); slots (B, T) (``entity_slots``); key_padding_mask (B, T)
        bool, True at padded tokens → (w', e'), or (w', e', parts) with w̃, ẽ, h."""
        _check_states(w, self.d_w, "ErnieFusionLayer", "token states w")
        _check_states(e, self.d_e, "ErnieFusionLayer", "entity states e")
        B, T, _ = w.shape
        M = e.shape[1]
        if e.shape[0] != B:
            raise ValueError(f"ErnieFusionLayer: entity states of batch {e.shape[0]} for token states of batch {B}")
        slots, token_of_slot = self.check_slots(slots, B, T, M)
        slot_pad = _dev(token_of_slot < 0, w)                                        # (B, M), True = padded slot
        w_att = self.token_attention(w, key_padding_mask=key_padding_mask)           # (B, T, d_w)
        e_att = self.entity_attention(e, key_padding_mask=slot_pad)                  # (B, M, d_e)
        w_tilde, e_tilde = (w + w_att, e + e_att) if self.residual else (w_att, e_att)
        h = self.fusion(w_tilde, e_tilde, slots)                                     # (B, T, d_h)
        w_new = F.gelu(self.out_token(h))                                            # σ(W_t h_j + b_t)
        rows = _dev(np.arange(B)[:, None], w)
        h_slot = h[rows, _dev(np.maximum(token_of_slot, 0), w)]                      # (B, M, d_h): h_j of slot k's token
        e_new = F.gelu(self.out_entity(h_slot))                                      # σ(W_e h_j + b_e)
        if self.residual:
            w_new, e_new = w_tilde + w_new, e_tilde + e_new
        e_new = e_new * Tensor(_dev((token_of_slot >= 0)[..., None].astype(w.dtype), w))   # padded slots stay 0
        if return_parts:
            return w_new, e_new, {"w_tilde": w_tilde, "e_tilde": e_tilde, "h": h}
        return w_new, e_new

    def extra_repr(self):
        return f"d_w={self.d_w}, d_e={self.d_e}, d_h={self.d_h}, residual={self.residual}"


# ---- ERNIE: the denoising entity auto-encoder -------------------------------------------------------

def dea_noise(entity_ids, n_entities: int, seed=0, p_replace: float = 0.05, p_mask: float = 0.15):
    """ERNIE's dEA noise (§3.4) on per-token alignments (B, T) (−1 = no entity) → (noisy, labels):

        each alignment independently: with p_replace (5%) its entity becomes another entity drawn
        uniformly from the rest of the table; with p_mask (15%) it is masked (−1: the token reads no
        entity); otherwise (80%) it is kept.
        labels (B, T): the original entity at every aligned token (all are predicted), −100 elsewhere.

    ``seed``: an int or a numpy Generator.  Host NumPy arrays."""
    ids = _host_ints(entity_ids, "dea_noise", "entity_ids", 2)
    if not (0 <= p_replace and 0 <= p_mask and p_replace + p_mask <= 1):
        raise ValueError(f"dea_noise: need p_replace, p_mask ≥ 0 with sum ≤ 1, got {p_replace} and {p_mask}")
    if ids.size and ids.max() >= n_entities:
        raise IndexError(f"dea_noise: entity_ids hold {int(ids.max())}, outside [0, {n_entities})")
    if n_entities < 2 and p_replace > 0:
        raise ValueError("dea_noise: replacing an entity by another needs at least 2 entities")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    aligned = ids >= 0
    u = rng.random(ids.shape)                                                    # one draw per token
    other = rng.integers(0, max(n_entities - 1, 1), size=ids.shape)
    other = other + (other >= ids)                                               # uniform over the others
    noisy = ids.copy()
    replace = aligned & (u < p_replace)
    mask = aligned & (u >= p_replace) & (u < p_replace + p_mask)
    noisy[replace] = other[replace]
    noisy[mask] = NONE
    labels = np.where(aligned, ids, IGNORE)
    return noisy, labels


def dea_candidates(labels) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (B, C), targets (B, T)) of dEA labels (B, T) (entity ids, −100 where none): the
    distinct gold entities of each text (eq. (7)'s e_1 … e_m), padded with −1 (C ≥ 1), and each
    labelled token's index among its row's candidates (−100 elsewhere)."""
    lab = _host_ints(labels, "dea_candidates", "labels", 2)
    bad = (lab < 0) & (lab != IGNORE)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise IndexError(f"dea_candidates: labels hold {int(lab[where])} at {where}; use entity ids or {IGNORE}")
    per_row = [np.unique(row[row >= 0]) for row in lab]
    C = max(max((len(r) for r in per_row), default=0), 1)
    cand = np.full((lab.shape[0], C), NONE, dtype=np.int64)
    targets = np.full(lab.shape, IGNORE, dtype=np.int64)
    for b, r in enumerate(per_row):
        cand[b, :len(r)] = r
        on = lab[b] >= 0
        targets[b, on] = np.searchsorted(r, lab[b, on])                          # r is sorted
    return cand, targets


class ErnieDEAHead(Module):
    """dEA (ERNIE eq. (7)): p(e_j | w_j) = softmax_k(linear(w_jᵒ) · e_k) over the distinct entities of
    the text; the loss is the mean −log p(gold | w_j) over the aligned tokens (−100 labels ignored).
    ``linear``: d_w → d_e.

        scores[b, j, k] = (w_j W + b) · E[cand_bk]     (B, T, C), padded candidates masked out
    """

    def __init__(self, d_w: int, d_e: int, generator: Generator | None = None):
        super().__init__()
        self.linear = Linear(d_w, d_e, generator=generator)
        _init_linear(self.linear, generator)

    def scores(self, w_out: Tensor, candidates: np.ndarray, table: EntityTable) -> Tensor:
        """linear(w) · e_k for the candidates (B, C): (B, T, C), padded candidates at a large negative."""
        q = self.linear(w_out)                                                       # (B, T, d_e)
        e = table.lookup(candidates)                                                 # (B, C, d_e)
        s = q @ e.swapaxes(1, 2)                                                     # (B, T, d_e) (B, d_e, C) -> (B, T, C)
        return F.masked_fill(s, _dev((candidates < 0)[:, None, :], w_out), float(np.finfo(s.dtype).min) / 4)

    def forward(self, w_out: Tensor, labels, table: EntityTable) -> Tensor:
        _check_states(w_out, self.linear.in_features, "ErnieDEAHead", "token states")
        lab = _host_ints(labels, "ErnieDEAHead", "entity labels", 2)
        if lab.shape != w_out.shape[:2]:
            raise ValueError(f"ErnieDEAHead: entity labels of shape {lab.shape} do not match the tokens {w_out.shape[:2]}")
        table.check_ids(np.where(lab == IGNORE, NONE, lab), "ErnieDEAHead", "entity labels")
        cand, targets = dea_candidates(lab)
        s = self.scores(w_out, cand, table)                                          # (B, T, C)
        if not (targets != IGNORE).any():
            return (s * 0.0).sum()                                                   # nothing to predict: 0, still a graph
        return F.cross_entropy(s, Tensor(_dev(targets, w_out)), ignore_index=IGNORE)


# ---- KnowBERT: the KAR ---------------------------------------------------------------------------

def _orthonormal_columns(d: int, k: int, generator) -> np.ndarray:
    """A (d, k) matrix with orthonormal columns (k ≤ d): Q of a QR of a Gaussian draw, signs fixed."""
    g = (generator or default_generator).on("cpu").normal((d, k), np.float64)
    q, r = np.linalg.qr(np.asarray(g, dtype=np.float64))
    return q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))


class KnowledgeAttentionRecontextualization(Module):
    """KnowBERT's KAR (§3.2–3.3): H (B, T, d) → H' (B, T, d), steps (1)–(6) of the module docstring.

        mention_spans (B, M, 2)  (start, end) inclusive token positions; (−1, −1) = a padded mention
        candidates    (B, M, C)  candidate entity ids e_mk; −1 = a padded candidate
        priors        (B, M, C)  p_mk, the prior probability of each candidate (any numbers)

    Parameters: ``down_proj`` (W₁, b₁: d → d_e), ``span_score`` (w: d_e → 1, Lee et al.'s α_t),
    ``span_encoder`` (a TransformerBlock over the mentions), ``linker_hidden`` / ``linker_out`` (the
    MLP 2 → h → 1 with ReLU), ``word_to_span`` (MH-ATT, queries H^proj, keys/values S'^e),
    ``up_proj`` (W₂, b₂: d_e → d).  ``entities``: the EntityTable E (frozen unless train_entities).

    Padded mentions are hidden as keys in both attentions and pool no tokens; padded candidates
    leave the linker's softmax.  Tokens may attend to every mention of their text (KnowBERT's
    choice), padded tokens included (their outputs are meaningless, as in BERT).

    ``threshold`` δ (None: off): candidates with ψ_mk < δ are left out of the softmax of (3); a
    mention with none left gets ẽ_m = 0.  ``w2_init``: "pinv" (W₂ = W₁⁺, b₂ = −b₁ W₁⁺; KnowBERT)
    or "zero" (W₂ = 0, b₂ = 0: the KAR starts as the identity).  ``init_w2_pinv()`` redoes the
    first after W₁ changed (KnowBERT re-initialises W₂ after loading a checkpoint).

    Gradients: every step is a checked op of minilm.functional; the thresholded softmax's mask is
    a constant (it changes only where ψ crosses δ).
    """

    def __init__(self, d: int, entity_embeddings, heads: int = 1, span_heads: int = 1, span_ffn: int | None = None,
                 linker_hidden: int = 100, threshold: float | None = None, w2_init: str = "pinv",
                 train_entities: bool = False, generator: Generator | None = None):
        super().__init__()
        self.entities = entity_embeddings if isinstance(entity_embeddings, EntityTable) else \
            EntityTable(entity_embeddings, trainable=train_entities)
        d_e = self.entities.dim
        if d_e > d:
            raise ValueError(f"KnowledgeAttentionRecontextualization: the entity width d_e = {d_e} exceeds the "
                             f"encoder's d = {d}; W₁ (d → d_e) must project down for W₁⁺ to invert it")
        if w2_init not in ("pinv", "zero"):
            raise ValueError(f"KnowledgeAttentionRecontextualization: w2_init must be 'pinv' or 'zero', got {w2_init!r}")
        self.d, self.d_e, self.threshold, self.w2_init = d, d_e, threshold, w2_init
        self.down_proj = Linear(d, d_e, generator=generator)                         # W₁, b₁        (1)
        self.span_score = Linear(d_e, 1, bias=False, generator=generator)            # w             (2)
        self.span_encoder = TransformerBlock(d_e, span_heads, span_ffn or 4 * d_e, generator)   # (2)
        self.linker_hidden = Linear(2, linker_hidden, generator=generator)           # MLP layer 1   (3)
        self.linker_out = Linear(linker_hidden, 1, generator=generator)              # MLP layer 2   (3)
        self.word_to_span = MultiHeadAttention(d_e, heads, generator)                # (5)
        self.up_proj = Linear(d_e, d, generator=generator)                           # W₂, b₂        (6)
        self.down_proj.weight.data = _orthonormal_columns(d, d_e, generator).astype(np.float32)
        init.zeros_(self.down_proj.bias)
        for m in (self.span_score, self.linker_hidden, self.linker_out):
            _init_linear(m, generator)
        if w2_init == "pinv":
            self.init_w2_pinv()
        else:
            _zero_linear(self.up_proj)

    @no_grad()
    def init_w2_pinv(self):
        """W₂ = W₁⁺ (d_e, d), b₂ = −b₁ W₁⁺, so that (H W₁ + b₁) W₂ + b₂ = H W₁ W₁⁺ = H P (computed in float64)."""
        W1 = backend.to_numpy(self.down_proj.weight.data).astype(np.float64)        # (d, d_e)
        b1 = backend.to_numpy(self.down_proj.bias.data).astype(np.float64)          # (d_e,)
        W2 = np.linalg.pinv(W1)                                                      # (d_e, d)
        w, b = self.up_proj.weight, self.up_proj.bias
        w.data = backend.to_device(W2.astype(w.dtype), w.device)
        b.data = backend.to_device((-b1 @ W2).astype(b.dtype), b.device)
        return self

    # -- inputs ----------------------------------------------------------------------------------
    def check_mentions(self, mention_spans, candidates, T: int, attention_mask=None, who: str = "KAR"):
        """Host arrays (spans (B, M, 2), candidates (B, M, C), padded (B, M), valid (B, M, C)), checked."""
        spans = _host_ints(mention_spans, who, "mention_spans", 3)
        cand = _host_ints(candidates, who, "candidates", 3)
        if spans.shape[2] != 2 or cand.shape[:2] != spans.shape[:2]:
            raise ValueError(f"{who}: mention_spans {spans.shape} must be (B, M, 2) and candidates {cand.shape} "
                             "(B, M, C) with the same B and M")
        padded = spans[..., 0] < 0                                                   # (B, M)
        start, end = spans[..., 0], spans[..., 1]
        bad = ~padded & ((end < start) | (end >= T))
        if bad.any():
            b, m = (int(i) for i in np.argwhere(bad)[0])
            raise IndexError(f"{who}: mention {m} of row {b} spans tokens ({start[b, m]}, {end[b, m]}); a span is "
                             f"(start, end) with 0 ≤ start ≤ end < {T}, or (−1, −1) for padding")
        if attention_mask is not None:
            real = backend.to_numpy(attention_mask) != 0 if backend.is_array(attention_mask) else \
                np.asarray(attention_mask) != 0                                       # (B, T)
            for b, m in zip(*np.nonzero(~padded)):
                if not real[b, start[b, m]:end[b, m] + 1].all():
                    raise ValueError(f"{who}: mention {m} of row {b} ({start[b, m]}, {end[b, m]}) covers padding")
        self.entities.check_ids(cand, who, "candidates")
        valid = (cand >= 0) & ~padded[..., None]                                    # (B, M, C)
        return spans, cand, padded, valid

    # -- the steps -------------------------------------------------------------------------------
    def forward(self, H: Tensor, mention_spans, candidates, priors, attention_mask=None, return_parts: bool = False):
        """H (B, T, d) → H' (B, T, d), or (H', parts) with every intermediate of steps (1)–(6)
        (H_proj, alpha, S, S_e, psi, psi_weights, e_tilde, S_prime, H_proj_prime).
        ``attention_mask`` (B, T), if given, is only checked against the spans."""
        who = "KnowledgeAttentionRecontextualization"
        _check_states(H, self.d, who, "H")
        B, T, _ = H.shape
        spans, cand, padded, valid = self.check_mentions(mention_spans, candidates, T, attention_mask, who)
        if spans.shape[0] != B:
            raise ValueError(f"{who}: mention_spans have batch {spans.shape[0]}, H has {B}")
        M, C = cand.shape[1], cand.shape[2]
        p = _floats(priors, H, who, "priors", (B, M, C))                            # (B, M, C)
        if M == 0 or C == 0:                 # nothing to link: one padded mention with one padded candidate
            M, C = max(M, 1), max(C, 1)
            spans, cand = np.full((B, M, 2), NONE), np.full((B, M, C), NONE)
            padded, valid = np.ones((B, M), bool), np.zeros((B, M, C), bool)
            p = Tensor(backend.xp_for(H.device).zeros((B, M, C), dtype=H.dtype))
        # (1) H^proj = H W₁ + b₁
        Hp = self.down_proj(H)                                                       # (B, T, d_e)
        # (2) s_m = Σ_t α_mt h^proj_t, α_m = softmax over the span of w · h^proj_t
        t = np.arange(T)
        in_span = (t >= spans[..., :1]) & (t <= spans[..., 1:]) & ~padded[..., None]   # (B, M, T)
        a = self.span_score(Hp).reshape(B, 1, T)                                     # (B, T, 1) -> (B, 1, T)
        alpha = masked_softmax(F.broadcast_to(a, (B, M, T)), _dev(in_span, H))       # (B, M, T)
        S = alpha @ Hp                                                               # (B, M, T) (B, T, d_e) -> (B, M, d_e)
        #     S^e = TransformerBlock(S): mention spans attend to mention spans
        S_e = self.span_encoder(S, key_padding_mask=_dev(padded, H))                 # (B, M, d_e)
        # (3) ψ_mk = MLP([p_mk, s^e_m · e_mk]);  ẽ_m = Σ_k softmax_k(ψ_m) e_mk
        E_c = self.entities.lookup(cand)                                             # (B, M, C, d_e)
        dot = (S_e.reshape(B, M, 1, self.d_e) * E_c).sum(axis=-1)                    # (B, M, 1, d_e) -> (B, M, C)
        x = F.stack([p, dot], axis=-1)                                               # (B, M, C, 2)
        psi = self.linker_out(F.relu(self.linker_hidden(x))).reshape(B, M, C)        # (B, M, C, 1) -> (B, M, C)
        keep = valid if self.threshold is None else valid & (backend.to_numpy(psi.data) >= self.threshold)
        psi_w = masked_softmax(psi, _dev(keep, H))                                   # (B, M, C)
        e_tilde = (psi_w.reshape(B, M, C, 1) * E_c).sum(axis=2)                      # (B, M, C, d_e) -> (B, M, d_e)
        # (4) s'^e_m = s^e_m + ẽ_m
        S_prime = S_e + e_tilde                                                      # (B, M, d_e)
        # (5) H'^proj = H^proj + MH-ATT(H^proj; S'^e), padded mentions hidden
        Hp_prime = Hp + self.word_to_span(Hp, S_prime, key_padding_mask=_dev(padded, H))   # (B, T, d_e)
        # (6) H' = H'^proj W₂ + b₂ + H
        H_new = self.up_proj(Hp_prime) + H                                           # (B, T, d)
        if return_parts:
            return H_new, {"H_proj": Hp, "alpha": alpha, "S": S, "S_e": S_e, "psi": psi, "psi_weights": psi_w,
                           "e_tilde": e_tilde, "S_prime": S_prime, "H_proj_prime": Hp_prime,
                           "valid": valid, "candidates": cand}
        return H_new

    def entity_linking_loss(self, psi: Tensor, candidates, gold_entities) -> Tensor:
        """L_EL = mean over mentions m with a gold entity among their valid candidates of
        −log softmax_k(ψ_m)_gold (the softmax over the valid candidates, no threshold; KnowBERT
        §3.4).  gold_entities (B, M): entity ids, −1 for none.  0 when no mention counts."""
        who = "KnowledgeAttentionRecontextualization"
        cand = _host_ints(candidates, who, "candidates", 3)
        gold = _host_ints(gold_entities, who, "gold_entities", 2)
        if gold.shape != cand.shape[:2] or psi.shape != cand.shape:
            raise ValueError(f"{who}: gold_entities {gold.shape} must be (B, M) of candidates {cand.shape} "
                             f"and ψ {psi.shape}")
        hit = (cand == gold[..., None]) & (cand >= 0) & (gold[..., None] >= 0)      # (B, M, C)
        targets = np.where(hit.any(axis=-1), hit.argmax(axis=-1), IGNORE)           # (B, M): first match
        scores = F.masked_fill(psi, _dev(cand < 0, psi), float(np.finfo(psi.dtype).min) / 4)
        if not (targets != IGNORE).any():
            return (psi * 0.0).sum()
        return F.cross_entropy(scores, Tensor(_dev(targets, psi)), ignore_index=IGNORE)

    def extra_repr(self):
        return (f"d={self.d}, d_e={self.d_e}, threshold={self.threshold}, w2_init={self.w2_init!r}")


# ---- insertion into a pretrained Bert -----------------------------------------------------------------

def _run_bert(bert, input_ids, attention_mask, token_type_ids, after_layer: int, fuse, who: str):
    """Bert's forward (G2, G3), with ``fuse(x, key_padding_mask)`` applied to the states after
    layer ``after_layer``: (last states, [H⁰, H¹, …, H^{k+1}, fused, …, Hᴸ]).  The same loop as
    Bert.hidden_states (input checks, key-padding mask, a Prefix-Tuning encoder's keys and values), written
    out because Bert has no hook between its layers."""
    c = bert.config
    ids = as_ids(input_ids, bert.device, who, "input_ids", high=c.vocab_size)
    B, T = ids.shape
    seg = None
    if token_type_ids is not None:
        seg = as_ids(token_type_ids, bert.device, who, "token_type_ids", high=c.type_vocab_size, shape=(B, T))
    kpm = key_padding_mask(attention_mask, (B, T), bert.device, who)                # (B, T), True = padding
    prefix_kv = bert.prefix(B) if bert.prefix is not None and bert.prefix.active else None   # P1
    x = bert.embeddings(ids, seg)                                                    # G2: H⁰ (B, T, d)
    states = [x]
    for i, layer in enumerate(bert.encoder.layer):
        x = layer(x, kpm, None if prefix_kv is None else prefix_kv[i])              # G3: Hⁱ⁺¹
        states.append(x)
        if i == after_layer:
            x = fuse(x, kpm)
            states.append(x)
    return x, states


def _check_after_layer(after_layer, bert, who: str) -> int:
    L = bert.config.num_hidden_layers
    if after_layer is None:
        return L - 1
    if not isinstance(after_layer, (int, np.integer)) or isinstance(after_layer, bool) or not 0 <= after_layer < L:
        raise ValueError(f"{who}: after_layer={after_layer!r} is outside [0, {L}) (the Bert has {L} layers; "
                         f"{L - 1} or None puts the fusion on top)")
    return int(after_layer)


class _FusedEncoder(Model):
    """What ErnieEncoder and KnowBertEncoder share: the Bert as ``bert`` (the body PEFT adapts), the
    layer the fusion follows, and the glob patterns of the fusion's own parameters."""

    body = "bert"
    fusion_patterns: tuple = ()

    def _place(self, bert):
        """Put the fusion modules (and the entity table) on the Bert's device, in its dtype."""
        w = bert.embeddings.word_embeddings.weight
        for name, m in self.named_children():
            if name != "bert":
                m.to(w.device, w.dtype)


class ErnieEncoder(_FusedEncoder):
    """A Bert with ERNIE aggregators after layer ``after_layer`` (None: on top, ERNIE's K-Encoder over
    a T-Encoder).  ``out = enc(input_ids, attention_mask, token_type_ids, entity_ids=…, entity_labels=…)``:

        entity_ids     (B, T) the entity aligned to each token (−1 none; ``align_to_first_token``)
        entity_labels  (B, T) dEA targets (``dea_noise``'s labels): out.loss = the dEA loss on Hᴸ
        out.last_hidden_state  (B, T, d)

    The fusion layers run in order, each passing its entity states to the next (eq. (6)); the entity
    states start as E[entity] of the frozen table.  ``output_hidden_states=True``: [H⁰, …, H^{k+1}, fused,
    …, Hᴸ], L + 2 states, the fused ones inserted after layer k = after_layer's output.  Parameters: ``bert``, ``fusion`` (a ModuleList of
    ErnieFusionLayer), ``entities`` (EntityTable), ``dea`` (ErnieDEAHead, or None with dea=False).
    """

    fusion_patterns = ("fusion.*", "dea.*", "entities.*")

    def __init__(self, bert, fusion_layers, entity_embeddings, after_layer: int | None = None, dea: bool = True,
                 train_entities: bool = False, generator: Generator | None = None):
        super().__init__()
        who = "ErnieEncoder"
        self.bert = bert
        self.config = bert.config
        self.after_layer = _check_after_layer(after_layer, bert, who)
        layers = [fusion_layers] if isinstance(fusion_layers, ErnieFusionLayer) else list(fusion_layers)
        if not layers:
            raise ValueError(f"{who}: needs at least one ErnieFusionLayer")
        self.entities = entity_embeddings if isinstance(entity_embeddings, EntityTable) else \
            EntityTable(entity_embeddings, trainable=train_entities)
        for i, layer in enumerate(layers):
            if layer.d_w != bert.config.hidden_size or layer.d_e != self.entities.dim:
                raise ValueError(f"{who}: fusion layer {i} has d_w={layer.d_w}, d_e={layer.d_e}; the Bert has "
                                 f"d={bert.config.hidden_size} and the entity table d_e={self.entities.dim}")
        self.fusion = ModuleList(layers)
        self.dea = ErnieDEAHead(bert.config.hidden_size, self.entities.dim, generator) if dea else None
        self._place(bert)

    def forward_states(self, input_ids, attention_mask=None, token_type_ids=None, entity_ids=None):
        """([H⁰, …], last states, final entity states)."""
        who = "ErnieEncoder"
        final = {}

        def fuse(x, kpm):
            B, T, _ = x.shape
            ents = np.full((B, T), NONE, dtype=np.int64) if entity_ids is None else \
                _host_ints(entity_ids, who, "entity_ids", 2)
            if ents.shape != (B, T):
                raise ValueError(f"{who}: entity_ids of shape {ents.shape} do not match input_ids {(B, T)}")
            self.entities.check_ids(ents, who, "entity_ids")
            if kpm is not None and (ents[backend.to_numpy(kpm)] >= 0).any():
                b, t = (int(i) for i in np.argwhere((ents >= 0) & backend.to_numpy(kpm))[0])
                raise ValueError(f"{who}: entity_ids align entity {ents[b, t]} to token {t} of row {b}, which "
                                 "attention_mask marks as padding")
            slots, slot_entities = entity_slots(ents)
            e = self.entities.lookup(slot_entities)                                  # e⁽⁰⁾ (B, M, d_e)
            for layer in self.fusion:
                x, e = layer(x, e, slots, kpm)                                       # eq. (6)
            final["e"] = e
            return x

        h, states = _run_bert(self.bert, input_ids, attention_mask, token_type_ids, self.after_layer, fuse, who)
        return states, h, final.get("e")

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *, entity_ids=None,
                entity_labels=None, output_hidden_states=False) -> ModelOutput:
        if labels is not None:
            raise ValueError("ErnieEncoder: the encoder has no task head for labels; use KnowledgeClassifier "
                             "(entity_labels= gives the dEA loss)")
        states, h, _ = self.forward_states(input_ids, attention_mask, token_type_ids, entity_ids)
        loss = None
        if entity_labels is not None:
            if self.dea is None:
                raise ValueError("ErnieEncoder: entity_labels given but the encoder was built with dea=False")
            loss = self.dea(h, entity_labels, self.entities)
        return ModelOutput(last_hidden_state=h, loss=loss, hidden_states=states if output_hidden_states else None)

    def extra_repr(self):
        return f"after_layer={self.after_layer}, aggregators={len(self.fusion)}"


class KnowBertEncoder(_FusedEncoder):
    """A Bert with a KAR between layer ``after_layer`` and the next (KnowBERT §3.1: "the entire KAR is
    inserted between two layers in the middle of a pretrained model").
    ``out = enc(input_ids, attention_mask, token_type_ids, mention_spans=…, candidates=…, priors=…,
    gold_entities=…)``: out.last_hidden_state (B, T, d); out.loss = L_EL when gold_entities (B, M) are
    given.  Without mention_spans every text has one padded mention (nothing to link).
    ``output_hidden_states=True``: L + 2 states, H' inserted after layer k = after_layer's output H^{k+1}.
    Parameters: ``bert`` and ``kar``.
    """

    fusion_patterns = ("kar.*",)

    def __init__(self, bert, kar: KnowledgeAttentionRecontextualization, after_layer: int | None = None):
        super().__init__()
        who = "KnowBertEncoder"
        self.bert = bert
        self.config = bert.config
        self.after_layer = _check_after_layer(after_layer, bert, who)
        if kar.d != bert.config.hidden_size:
            raise ValueError(f"{who}: the KAR has d={kar.d}, the Bert hidden_size={bert.config.hidden_size}")
        self.kar = kar
        self._place(bert)

    def forward_states(self, input_ids, attention_mask=None, token_type_ids=None, mention_spans=None,
                       candidates=None, priors=None):
        """([H⁰, …], last states, the KAR's parts)."""
        who = "KnowBertEncoder"
        parts = {}

        def fuse(x, kpm):
            B = x.shape[0]
            spans, cand, pri = mention_spans, candidates, priors
            if spans is None:
                if cand is not None or pri is not None:
                    raise ValueError(f"{who}: candidates and priors need mention_spans")
                spans, cand = np.full((B, 1, 2), NONE), np.full((B, 1, 1), NONE)
                pri = np.zeros((B, 1, 1))
            elif cand is None or pri is None:
                raise ValueError(f"{who}: mention_spans need candidates and priors (B, M, C)")
            mask = None if attention_mask is None else \
                (attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
            out, p = self.kar(x, spans, cand, pri, attention_mask=mask, return_parts=True)
            parts.update(p)
            return out

        h, states = _run_bert(self.bert, input_ids, attention_mask, token_type_ids, self.after_layer, fuse, who)
        return states, h, parts

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *, mention_spans=None,
                candidates=None, priors=None, gold_entities=None, output_hidden_states=False) -> ModelOutput:
        if labels is not None:
            raise ValueError("KnowBertEncoder: the encoder has no task head for labels; use KnowledgeClassifier "
                             "(gold_entities= gives the entity-linking loss)")
        states, h, parts = self.forward_states(input_ids, attention_mask, token_type_ids, mention_spans,
                                               candidates, priors)
        loss = None
        if gold_entities is not None:
            loss = self.kar.entity_linking_loss(parts["psi"], parts["candidates"], gold_entities)
        return ModelOutput(last_hidden_state=h, loss=loss, hidden_states=states if output_hidden_states else None)

    def extra_repr(self):
        return f"after_layer={self.after_layer}"


class KnowledgeClassifier(Model):
    """BertClassifier's head on an ErnieEncoder or a KnowBertEncoder:
    ``out = clf(input_ids, attention_mask, token_type_ids, labels, **knowledge)``

        h = pool(Hᴸ)  ("cls": h_[CLS]; "mean": the mean of the real tokens)
        logits = dropout(h) W + b                                       (B, C)
        loss = CE(labels, softmax(logits)) [+ the encoder's auxiliary loss: L_EL with gold_entities,
               dEA with entity_labels]

    ``knowledge``: the encoder's keyword inputs (entity_ids / mention_spans, candidates, priors, …), so
    the shared Trainer fine-tunes it with ``model(**batch).loss``.  ``head_patterns`` hold the head
    and the fusion parameters: ``peft.add(clf, LoRAConfig(target_modules=["query", "value"]))`` trains
    LoRA on the base with them, ``freeze_base()`` freezes the Bert and nothing else.
    """

    body = "encoder"

    def __init__(self, encoder: _FusedEncoder, n_classes: int, pooling: str = "cls",
                 generator: Generator | None = None):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"KnowledgeClassifier: pooling must be 'cls' or 'mean', got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"KnowledgeClassifier: need at least 2 classes, got {n_classes}")
        self.encoder, self.n_classes, self.pooling = encoder, n_classes, pooling
        self.config = encoder.config
        self.dropout = Dropout(encoder.config.hidden_dropout_prob)
        self.classifier = Linear(encoder.config.hidden_size, n_classes, generator=generator)
        init.normal_(self.classifier.weight, 0.0, 0.02, generator)
        init.zeros_(self.classifier.bias)
        w = encoder.bert.embeddings.word_embeddings.weight
        self.classifier.to(w.device, w.dtype)
        self.head_patterns = ("classifier.*",) + tuple("encoder." + p for p in encoder.fusion_patterns)

    @property
    def base_model(self):
        """The Transformer body PEFT adapts and prefixes: the encoder's Bert."""
        return self.encoder.base_model

    def freeze_base(self):
        """Freeze the Bert (KnowBERT freezes BERT while training the KAR): the fusion and the head train."""
        self.encoder.bert.freeze()
        return self

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, *,
                output_hidden_states=False, **knowledge) -> ModelOutput:
        out = self.encoder(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states,
                           **knowledge)
        h = pool(out.last_hidden_state, attention_mask, self.pooling)                # (B, d)
        logits = self.classifier(self.dropout(h))                                    # (B, C)
        loss = classification_loss(logits, labels, self.n_classes, "KnowledgeClassifier")
        if out.loss is not None:
            loss = out.loss if loss is None else loss + out.loss
        return ModelOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)

    def extra_repr(self):
        return f"classes={self.n_classes}, pooling={self.pooling!r}"
