"""Knowledge fusion (minilm.models.knowledge): ERNIE's aggregator and dEA, KnowBERT's KAR, their insertion into
a Bert.  Gradient checks in float64, the equations recomputed by hand in NumPy, the properties each design
promises (tokens without entities, padding, the pseudo-inverse identity, the exact identity of an untrained
residual fusion), the dEA noise's proportions, LoRA through the wrappers, a short fine-tuning run with the
shared Trainer, and the same on the real all-MiniLM-L6-v2 (skipped without its wheel)."""
import numpy as np
import pytest
from scipy.special import erf

import minilm
import minilm.functional as F
from helpers import host, randomize, snapshot, tiny_bert, to_tensor
from minilm import peft
from minilm.finetune import finetune_config, train_classifier
from minilm.models import Bert, find_minilm_l6_v2
from minilm.models.knowledge import (EntityTable, ErnieDEAHead, ErnieEncoder, ErnieFusionLayer, KnowBertEncoder,
                                     KnowledgeAttentionRecontextualization, KnowledgeClassifier,
                                     align_to_first_token, dea_candidates, dea_noise, entity_slots)

TINY = dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=8, type_vocab_size=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
FAST = dict(full_limit=0)          # random directions vᵀJu and single entries: the full Jacobian is slow here
LEAN = dict(full_limit=0, n_directions=1, n_entries=2)   # whole models: one direction per parameter tensor
RNG = np.random.default_rng(0)
E_TABLE = RNG.standard_normal((7, 4))                                   # 7 entities, d_e = 4
IDS = np.array([[2, 5, 7, 1, 9, 3], [4, 4, 8, 10, 6, 0]])
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
ENTS = np.array([[-1, 3, -1, -1, 6, -1], [-1, -1, 1, -1, -1, -1]])   # per token; row 1 has one entity
SPANS = np.array([[[1, 2], [4, 4], [0, 0]], [[2, 3], [-1, -1], [-1, -1]]])   # (B, M, 2), padded (−1, −1)
CANDS = np.array([[[3, 0, -1], [6, 2, 5], [1, -1, -1]], [[1, 4, -1], [-1, -1, -1], [-1, -1, -1]]])
PRIORS = RNG.random((2, 3, 3))
GOLD = np.array([[0, 6, -1], [4, -1, -1]])


@pytest.fixture
def rng():
    """Each test draws its own numbers: a test's inputs do not depend on which tests ran before it."""
    return np.random.default_rng(1)


def tiny(**kw):
    return tiny_bert("cpu", seed=0, dtype=np.float64, **{**TINY, **kw}).eval()


def f64(a, requires_grad=False, device="cpu"):
    return to_tensor(np.asarray(a, dtype=np.float64), device, requires_grad=requires_grad)


def fusion_layer(residual, seed=1, d_w=8, d_e=4, d_h=6, heads=2, device="cpu"):
    """An ErnieFusionLayer in float64 with every parameter random (the residual form zero-initialises some)."""
    m = ErnieFusionLayer(d_w, d_e, d_h, heads_w=heads, heads_e=heads, residual=residual,
                         generator=minilm.Generator(seed)).double()
    randomize(m, seed=seed, scale=0.5)
    return m.to(device)


def kar_module(seed=1, table=E_TABLE, train_entities=False, **kw):
    m = KnowledgeAttentionRecontextualization(8, table, heads=2, span_heads=2, span_ffn=6, linker_hidden=5,
                                              train_entities=train_entities, generator=minilm.Generator(seed), **kw)
    m.double()
    randomize(m, seed=seed, scale=0.4)                     # W₂ no longer W₁⁺: every weight is checked
    return m


# ---- NumPy references ---------------------------------------------------------------------------

def np_gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_linear(lin, x):
    y = x @ host(lin.weight)
    return y if lin.bias is None else y + host(lin.bias)


def np_layer_norm(ln, x):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * host(ln.weight) + host(ln.bias)


def np_softmax(s, valid):
    """softmax over the valid entries of the last axis; all-invalid rows give zeros."""
    s = np.where(valid, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    e = np.where(valid, np.exp(s - np.where(np.isfinite(m), m, 0)), 0.0)
    z = e.sum(-1, keepdims=True)
    return np.where(z > 0, e / np.where(z > 0, z, 1), 0.0)


def np_mha(att, x, mem, hidden):
    """MH-ATT(x; mem) with keys hidden where ``hidden`` (B, S) is True."""
    B, T, d = x.shape
    H, hs = att.num_heads, att.head_size
    split = lambda t: t.reshape(B, -1, H, hs).transpose(0, 2, 1, 3)                   # (B, H, ·, hs)
    q, k, v = split(np_linear(att.q_proj, x)), split(np_linear(att.k_proj, mem)), split(np_linear(att.v_proj, mem))
    a = np_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs), ~hidden[:, None, None, :])
    return np_linear(att.out_proj, (a @ v).transpose(0, 2, 1, 3).reshape(B, T, d))


# ---- alignments ---------------------------------------------------------------------------------

def test_alignments_and_slots():
    spans = np.array([[[1, 2], [4, 5], [-1, -1]]])
    assert align_to_first_token(spans, np.array([[3, 6, 2]]), 7).tolist() == [[-1, 3, -1, -1, 6, -1, -1]]
    slots, ents = entity_slots(ENTS)
    assert slots.tolist() == [[-1, 0, -1, -1, 1, -1], [-1, -1, 0, -1, -1, -1]]
    assert ents.tolist() == [[3, 6], [1, -1]]
    slots, ents = entity_slots(np.full((2, 3), -1))                                    # no entity at all
    assert (slots == -1).all() and ents.shape == (2, 1)
    with pytest.raises(ValueError, match="two mentions of row 0 start at token 1"):
        align_to_first_token(np.array([[[1, 2], [1, 1]]]), np.array([[3, 4]]), 5)


# ---- ERNIE ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("residual", [False, True])
def test_fusion_layer_gradcheck(residual, rng):
    m = fusion_layer(residual)
    slots, ents = entity_slots(ENTS)
    w = f64(rng.standard_normal((2, 6, 8)), True)
    e = f64(rng.standard_normal((2, 2, 4)) * (ents >= 0)[..., None], True)
    minilm.gradcheck_module(_Both(m, slots, to_tensor(MASK == 0, "cpu")), [w, e], **FAST)


def test_fusion_and_kar_on_every_device(device, rng):
    """Forward and backward on the device equal the CPU's (the host-side index work moves to the device)."""
    slots, _ = entity_slots(ENTS)
    w_np, e_np, H_np = rng.standard_normal((2, 6, 8)), rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 6, 8))
    results = {}
    for dev in ("cpu", device):
        layer, kar = fusion_layer(True, device=dev), kar_module().to(dev)
        w, e, H = f64(w_np, True, dev), f64(e_np, True, dev), f64(H_np, True, dev)
        w2, e2 = layer(w, e, slots, to_tensor(MASK == 0, dev))
        H2 = kar(H, SPANS, CANDS, PRIORS)
        ((w2 * w2).sum() + (e2 * e2).sum() + (H2 * H2).sum()).backward()
        results[dev] = [host(t) for t in (w2, e2, H2, w.grad, e.grad, H.grad, kar.linker_hidden.weight.grad)]
    for a, b in zip(results["cpu"], results[device]):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


class _Both(minilm.nn.Module):
    """(w, e) → [w'.ravel(), e'.ravel()] of a fusion layer with fixed slots and mask: one output to check."""

    def __init__(self, layer, slots, kpm):
        super().__init__()
        self.layer, self.slots, self.kpm = layer, slots, kpm

    def forward(self, w, e):
        w2, e2 = self.layer(w, e, self.slots, self.kpm)
        return F.concat([w2.reshape(-1), e2.reshape(-1)])


@pytest.mark.parametrize("residual", [False, True])
def test_fusion_equations_by_hand(residual, rng):
    m = fusion_layer(residual)
    slots, ents = entity_slots(ENTS)
    w_np, e_np = rng.standard_normal((2, 6, 8)), rng.standard_normal((2, 2, 4))
    kpm = MASK == 0
    w2, e2, parts = m(f64(w_np), f64(e_np), slots, to_tensor(kpm, "cpu"), return_parts=True)
    # eq. (3): the two multi-head self-attentions (padded tokens / entity slots hidden as keys)
    slot_pad = ents < 0
    wt = np_mha(m.token_attention, w_np, w_np, kpm) + (w_np if residual else 0)
    et = np_mha(m.entity_attention, e_np, e_np, slot_pad) + (e_np if residual else 0)
    np.testing.assert_allclose(host(parts["w_tilde"]), wt, rtol=0, atol=1e-12)
    np.testing.assert_allclose(host(parts["e_tilde"]), et, rtol=0, atol=1e-12)
    # eqs. (4)–(5), token by token
    Wt, bt_, We = host(m.fuse_token.weight), host(m.fuse_token.bias), host(m.fuse_entity.weight)
    W_t, b_t, W_e, b_e = (host(m.out_token.weight), host(m.out_token.bias), host(m.out_entity.weight),
                          host(m.out_entity.bias))
    h = np.zeros((2, 6, 6))
    w_out = np.zeros_like(w_np)
    e_out = np.zeros_like(e_np)
    for b in range(2):
        for j in range(6):
            k = slots[b, j]
            pre = wt[b, j] @ Wt + (et[b, k] @ We if k >= 0 else 0.0) + bt_
            h[b, j] = np_gelu(pre)                                               # h_j
            w_out[b, j] = np_gelu(h[b, j] @ W_t + b_t) + (wt[b, j] if residual else 0)        # w_j
            if k >= 0:
                e_out[b, k] = np_gelu(h[b, j] @ W_e + b_e) + (et[b, k] if residual else 0)    # e_k
    np.testing.assert_allclose(host(parts["h"]), h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(host(w2), w_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(host(e2), e_out, rtol=0, atol=1e-12)                   # padded slot: 0
    assert (host(e2)[1, 1] == 0).all()


def test_tokens_without_entity_get_eq5_exactly(rng):
    m = fusion_layer(residual=False)
    slots, _ = entity_slots(ENTS)
    w, e = f64(rng.standard_normal((2, 6, 8))), f64(rng.standard_normal((2, 2, 4)))
    _, _, parts = m(w, e, slots, return_parts=True)
    alone = host(F.gelu(m.fuse_token(parts["w_tilde"])))                          # σ(W̃_t w̃_j + b̃), no entity term
    none = slots < 0
    assert np.array_equal(host(parts["h"])[none], alone[none])                      # bit for bit
    assert not np.allclose(host(parts["h"])[~none], alone[~none])                  # the aligned ones do read ẽ_k
    # and they do not depend on the entities at all
    _, _, parts2 = m(w, f64(rng.standard_normal((2, 2, 4))), slots, return_parts=True)
    assert np.array_equal(host(parts2["h"])[none], host(parts["h"])[none])


def test_dea_noise_keeps_the_proportions():
    ids = np.where(np.random.default_rng(3).random((400, 500)) < 0.5, np.random.default_rng(4).integers(0, 50, (400, 500)), -1)
    noisy, labels = dea_noise(ids, 50, seed=7)
    aligned = ids >= 0
    n = aligned.sum()
    replaced = aligned & (noisy >= 0) & (noisy != ids)
    masked = aligned & (noisy == -1)
    kept = aligned & (noisy == ids)
    assert abs(replaced.sum() / n - 0.05) < 0.003 and abs(masked.sum() / n - 0.15) < 0.004
    assert abs(kept.sum() / n - 0.80) < 0.005 and replaced.sum() + masked.sum() + kept.sum() == n
    assert (noisy[~aligned] == -1).all() and (labels[~aligned] == -100).all() and (labels[aligned] == ids[aligned]).all()
    assert noisy.max() < 50
    a, b = dea_noise(ids, 50, seed=7), dea_noise(ids, 50, seed=8)
    assert np.array_equal(a[0], noisy) and not np.array_equal(b[0], noisy)          # seeded
    with pytest.raises(IndexError, match=r"outside \[0, 50\)"):
        dea_noise(ids + 1, 50)


def test_dea_loss_by_hand_and_gradcheck(rng):
    head = ErnieDEAHead(8, 4, minilm.Generator(3)).double()
    randomize(head, seed=3)
    table = EntityTable(E_TABLE, trainable=True).double()
    labels = np.array([[-100, 3, -100, 3, 6, -100], [-100, -100, 1, -100, -100, -100]])
    w_np = rng.standard_normal((2, 6, 8))
    loss = head(f64(w_np), labels, table)
    cand, targets = dea_candidates(labels)
    assert cand.tolist() == [[3, 6], [1, -1]] and targets[0].tolist() == [-100, 0, -100, 0, 1, -100]
    q = np_linear(head.linear, w_np)                                                # linear(w_j)
    E = host(table.weight)                                                          # stored float32, then .double()
    nll = []
    for b in range(2):
        for j in range(6):
            if labels[b, j] >= 0:
                ks = cand[b][cand[b] >= 0]
                s = np.array([q[b, j] @ E[k] for k in ks])                       # eq. (7) over the text's entities
                nll.append(-(s[list(ks).index(labels[b, j])] - np.log(np.exp(s).sum())))
    assert abs(loss.item() - np.mean(nll)) < 1e-12
    minilm.gradcheck_module(_DEA(head, table, labels), [f64(w_np, True)], **FAST)
    assert head(f64(w_np), np.full((2, 6), -100), table).item() == 0.0               # nothing aligned: 0


class _DEA(minilm.nn.Module):
    def __init__(self, head, table, labels):
        super().__init__()
        self.head, self.table, self.labels = head, table, labels

    def forward(self, w):
        return self.head(w, self.labels, self.table)


def test_untrained_residual_ernie_is_the_bert_bit_for_bit():
    bert = tiny()
    ref = host(bert(minilm.tensor(IDS), minilm.tensor(MASK)).last_hidden_state)
    for after in (0, None):
        layers = [ErnieFusionLayer(8, 4, 6, 2, 2, residual=True, generator=minilm.Generator(i)) for i in range(2)]
        enc = ErnieEncoder(bert, layers, E_TABLE, after_layer=after)
        out = enc(minilm.tensor(IDS), minilm.tensor(MASK), entity_ids=ENTS, output_hidden_states=True)
        assert np.array_equal(host(out.last_hidden_state), ref)
        assert len(out.hidden_states) == TINY["num_hidden_layers"] + 2                # the fused states inserted


def test_ernie_encoder_runs_bert_and_the_stacked_aggregators_in_order():
    """Embeddings, layer 0, the two aggregators (entity states passed from one to the next, eq. (6)), layer 1:
    the encoder's loop is that and nothing else."""
    bert = tiny()
    layers = [fusion_layer(False, seed=s) for s in (1, 2)]
    enc = ErnieEncoder(bert, layers, E_TABLE, after_layer=0)
    got = enc(minilm.tensor(IDS), minilm.tensor(MASK), entity_ids=ENTS).last_hidden_state
    kpm = to_tensor(MASK == 0, "cpu")
    slots, slot_entities = entity_slots(ENTS)
    x = bert.encoder.layer[0](bert.embeddings(minilm.tensor(IDS)), kpm)
    e = enc.entities.lookup(slot_entities)
    for layer in layers:
        x, e = layer(x, e, slots, kpm)
    assert np.array_equal(host(got), host(bert.encoder.layer[1](x, kpm)))


# ---- KnowBERT -------------------------------------------------------------------------------------

def test_kar_gradcheck_wrt_h_and_every_weight(rng):
    m = kar_module(train_entities=True)                                              # E too: all of (3)'s inputs
    H = f64(rng.standard_normal((2, 6, 8)), True)
    minilm.gradcheck_module(_KAR(m), [H], **FAST)
    assert {"down_proj.weight", "linker_hidden.weight", "linker_out.weight", "word_to_span.q_proj.weight",
            "span_encoder.attention.k_proj.weight", "span_score.weight", "up_proj.weight",
            "entities.weight"} <= {n for n, p in m.named_parameters() if p.requires_grad}


class _KAR(minilm.nn.Module):
    def __init__(self, kar, spans=SPANS, cands=CANDS, priors=PRIORS):
        super().__init__()
        self.kar, self.spans, self.cands, self.priors = kar, spans, cands, priors

    def forward(self, H):
        return self.kar(H, self.spans, self.cands, self.priors)


def test_kar_steps_by_hand(rng):
    m = kar_module()
    H_np = rng.standard_normal((2, 6, 8))
    out, parts = m(f64(H_np), SPANS, CANDS, PRIORS, return_parts=True)
    B, M, C = 2, 3, 3
    padded = SPANS[..., 0] < 0
    Hp = np_linear(m.down_proj, H_np)                                                # (1)
    S = np.zeros((B, M, 4))
    for b in range(B):
        for k in range(M):
            if not padded[b, k]:
                s, e = SPANS[b, k]
                a = Hp[b, s:e + 1] @ host(m.span_score.weight)[:, 0]                  # w · h_t over the span
                a = np.exp(a - a.max())
                S[b, k] = (a / a.sum()) @ Hp[b, s:e + 1]                             # (2) s_m
    blk = m.span_encoder
    h1 = np_layer_norm(blk.attention_norm, S + np_mha(blk.attention, S, S, padded))
    S_e = np_layer_norm(blk.ffn_norm, h1 + np_linear(blk.ffn_out, np_gelu(np_linear(blk.ffn_in, h1))))
    E = host(m.entities.weight)                                                     # E_TABLE, stored float32
    Ec = np.where((CANDS >= 0)[..., None], E[np.maximum(CANDS, 0)], 0.0)             # (B, M, C, d_e)
    psi = np.zeros((B, M, C))
    for b in range(B):
        for k in range(M):
            for c in range(C):                                                       # (3) ψ = MLP([p, s·e])
                x = np.array([PRIORS[b, k, c], S_e[b, k] @ Ec[b, k, c]])
                psi[b, k, c] = np_linear(m.linker_out, np.maximum(np_linear(m.linker_hidden, x), 0))[0]
    valid = (CANDS >= 0) & ~padded[..., None]
    wts = np_softmax(psi, valid)
    e_tilde = (wts[..., None] * Ec).sum(2)
    S_prime = S_e + e_tilde                                                          # (4)
    Hp_prime = Hp + np_mha(m.word_to_span, Hp, S_prime, padded)                      # (5)
    H_new = np_linear(m.up_proj, Hp_prime) + H_np                                    # (6)
    for name, ref in (("H_proj", Hp), ("S", S), ("S_e", S_e), ("psi", psi), ("psi_weights", wts),
                      ("e_tilde", e_tilde), ("S_prime", S_prime), ("H_proj_prime", Hp_prime)):
        got = host(parts[name])
        if name in ("S_e", "S_prime"):                                               # padded mentions: never read
            got, ref = got[~padded], ref[~padded]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(host(out), H_new, rtol=0, atol=1e-12)


def test_padded_mentions_and_candidates_change_nothing(rng):
    m = kar_module()
    H = f64(rng.standard_normal((2, 6, 8)))
    base = host(m(H, SPANS, CANDS, PRIORS))
    spans = np.concatenate([SPANS, np.full((2, 1, 2), -1)], axis=1)                   # one more padded mention …
    cands = np.concatenate([CANDS, rng.integers(0, 7, (2, 1, 3))], axis=1)           # … with real-looking candidates
    cands = np.concatenate([cands, np.full((2, 4, 1), -1)], axis=2)                  # and a padded candidate column
    priors = np.concatenate([np.concatenate([PRIORS, rng.random((2, 1, 3))], 1), rng.random((2, 4, 1))], 2)
    np.testing.assert_allclose(host(m(H, spans, cands, priors)), base, rtol=0, atol=1e-12)
    none = host(m(H, np.full((2, 1, 2), -1), np.full((2, 1, 1), -1), np.zeros((2, 1, 1))))   # no mention at all
    np.testing.assert_array_equal(host(m(H, np.zeros((2, 0, 2), int), np.zeros((2, 0, 3), int), np.zeros((2, 0, 3)))),
                                  none)


def test_pseudo_inverse_identity_with_zero_entity_embeddings(rng):
    """W₂ = W₁⁺, b₂ = −b₁ W₁⁺ and E = 0: ẽ = 0 whatever the linker scores, and with a zero attention update
    (W_o = 0, b_o = 0) the KAR returns H' = H + H P, P = W₁ W₁⁺ the orthogonal projector on W₁'s columns."""
    m = kar_module(table=np.zeros((7, 4)))
    m.down_proj.weight.data = rng.standard_normal((8, 4))                           # any full-rank W₁, not orthonormal
    m.down_proj.bias.data = rng.standard_normal(4)
    m.init_w2_pinv()
    H_np = rng.standard_normal((2, 6, 8))
    out, parts = m(f64(H_np), SPANS, CANDS, PRIORS, return_parts=True)
    assert np.abs(host(parts["e_tilde"])).max() == 0
    other = m(f64(H_np), SPANS, CANDS, rng.random((2, 3, 3)))                        # other priors: the same H'
    randomize(m, seed=9, only="linker")                                              # another linker: the same H'
    np.testing.assert_allclose(host(m(f64(H_np), SPANS, CANDS, PRIORS)), host(out), rtol=0, atol=1e-12)
    np.testing.assert_allclose(host(other), host(out), rtol=0, atol=1e-12)
    W1 = host(m.down_proj.weight)
    P = W1 @ np.linalg.pinv(W1)
    np.testing.assert_allclose(P, P.T, atol=1e-12)
    np.testing.assert_allclose(P @ P, P, atol=1e-12)
    assert round(np.trace(P)) == 4                                                   # rank d_e
    for t in (m.word_to_span.out_proj.weight, m.word_to_span.out_proj.bias):
        t.data = t.data * 0
    np.testing.assert_allclose(host(m(f64(H_np), SPANS, CANDS, PRIORS)), H_np + H_np @ P, rtol=0, atol=1e-12)


def test_kar_default_init_is_orthonormal_and_zero_init_is_identity():
    m = KnowledgeAttentionRecontextualization(8, E_TABLE, generator=minilm.Generator(0))
    W1 = host(m.down_proj.weight).astype(np.float64)
    np.testing.assert_allclose(W1.T @ W1, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(host(m.up_proj.weight), W1.T, atol=1e-6)             # W₁⁺ = W₁ᵀ
    bert = tiny()
    ref = host(bert(minilm.tensor(IDS), minilm.tensor(MASK)).last_hidden_state)
    kar = KnowledgeAttentionRecontextualization(8, E_TABLE, w2_init="zero", generator=minilm.Generator(0))
    enc = KnowBertEncoder(bert, kar, after_layer=0)
    out = enc(minilm.tensor(IDS), minilm.tensor(MASK), mention_spans=SPANS, candidates=CANDS, priors=PRIORS)
    assert np.array_equal(host(out.last_hidden_state), ref)


def test_threshold_and_entity_linking_loss(rng):
    m = kar_module()
    H = f64(rng.standard_normal((2, 6, 8)))
    valid = (CANDS >= 0) & (SPANS[..., :1] >= 0)
    psi = host(m(H, SPANS, CANDS, PRIORS, return_parts=True)[1]["psi"])             # ψ does not depend on δ
    m.threshold = delta = np.median(psi[valid])                                      # about half the candidates
    _, parts = m(H, SPANS, CANDS, PRIORS, return_parts=True)
    keep = valid & (psi >= delta)
    assert keep.any() and (valid & ~keep).any() and (valid.any(-1) & ~keep.any(-1)).any()
    np.testing.assert_allclose(host(parts["psi_weights"]), np_softmax(psi, keep), rtol=0, atol=1e-12)
    assert (host(parts["e_tilde"])[~keep.any(-1)] == 0).all()                        # no candidate left: ẽ = 0
    m.threshold = 1e9                                                                # every candidate below δ
    _, parts = m(H, SPANS, CANDS, PRIORS, return_parts=True)
    assert (host(parts["e_tilde"]) == 0).all()
    # L_EL: −log softmax(ψ)_gold over the valid candidates; mentions without gold among them skipped
    loss = m.entity_linking_loss(parts["psi"], CANDS, GOLD)
    psi = host(parts["psi"])
    terms = []
    for b in range(2):
        for k in range(3):
            ok = CANDS[b, k] >= 0
            if GOLD[b, k] >= 0 and GOLD[b, k] in CANDS[b, k][ok]:
                s = psi[b, k][ok]
                terms.append(np.log(np.exp(s).sum()) - s[list(CANDS[b, k][ok]).index(GOLD[b, k])])
    assert len(terms) == 3 and abs(loss.item() - np.mean(terms)) < 1e-12
    assert m.entity_linking_loss(parts["psi"], CANDS, np.full((2, 3), -1)).item() == 0.0


def test_errors_name_the_bad_input(rng):
    m = kar_module()
    H = f64(rng.standard_normal((2, 6, 8)))
    with pytest.raises(IndexError, match=r"candidates holds 7 at \(0, 0, 0\), outside \[0, 7\)"):
        m(H, SPANS, np.where(np.arange(3) == 0, 7, CANDS), PRIORS)
    with pytest.raises(IndexError, match=r"mention 0 of row 0 spans tokens \(1, 6\)"):
        m(H, np.where(SPANS == 2, 6, SPANS), CANDS, PRIORS)
    with pytest.raises(ValueError, match=r"priors of shape \(2, 3\) does not match \(2, 3, 3\)"):
        m(H, SPANS, CANDS, PRIORS[..., 0])
    with pytest.raises(ValueError, match=r"H must be a \(batch, length, 8\) Tensor, got \(2, 6, 5\)"):
        m(f64(np.zeros((2, 6, 5))), SPANS, CANDS, PRIORS)
    with pytest.raises(ValueError, match="covers padding"):
        m(H, np.array([[[1, 2]], [[4, 5]]]), CANDS[:, :1], PRIORS[:, :1], attention_mask=MASK)
    with pytest.raises(ValueError, match="d_e = 9 exceeds the encoder's d = 8"):
        KnowledgeAttentionRecontextualization(8, np.zeros((3, 9)))
    layer = fusion_layer(True)
    with pytest.raises(ValueError, match=r"slots of shape \(2, 5\) do not match the tokens' \(B, T\) = \(2, 6\)"):
        layer(f64(np.zeros((2, 6, 8))), f64(np.zeros((2, 2, 4))), np.full((2, 5), -1))
    with pytest.raises(IndexError, match=r"slots hold 2, outside \[-1, 2\)"):
        layer(f64(np.zeros((2, 6, 8))), f64(np.zeros((2, 2, 4))), np.full((2, 6), 2))
    with pytest.raises(ValueError, match="each entity slot has one token"):
        layer(f64(np.zeros((2, 6, 8))), f64(np.zeros((2, 2, 4))), np.array([[0, 0, -1, -1, -1, -1]] * 2))
    bert = tiny()
    with pytest.raises(ValueError, match=r"after_layer=2 is outside \[0, 2\)"):
        KnowBertEncoder(bert, kar_module(), after_layer=2)
    enc = ErnieEncoder(bert, [fusion_layer(True)], E_TABLE)
    with pytest.raises(IndexError, match=r"entity_ids holds 9 at \(0, 0\), outside \[0, 7\)"):
        enc(minilm.tensor(IDS), entity_ids=np.where(np.arange(6) == 0, 9, ENTS))
    with pytest.raises(ValueError, match=r"entity_ids of shape \(2, 5\) do not match input_ids \(2, 6\)"):
        enc(minilm.tensor(IDS), entity_ids=ENTS[:, :5])
    with pytest.raises(ValueError, match="align entity 2 to token 5 of row 1, which attention_mask marks as padding"):
        enc(minilm.tensor(IDS), minilm.tensor(MASK), entity_ids=np.where(np.arange(6) == 5, 2, ENTS))
    with pytest.raises(ValueError, match="fusion layer 0 has d_w=8, d_e=4; the Bert has d=8 and the entity table d_e=3"):
        ErnieEncoder(bert, [fusion_layer(True)], np.zeros((5, 3)))


# ---- the wrappers on a tiny Bert ------------------------------------------------------------------

def _base_partly_trainable(bert):
    """Freeze the Bert but for one matrix of each sub-layer in every layer: gradients must reach the base
    on both sides of the fusion (the rest of BertLayer is checked in test_bert.py), at a fraction of the cost."""
    bert.freeze()
    bert.unfreeze(["encoder.layer.*.attention.self.value.weight", "encoder.layer.*.output.dense.weight"])
    return bert


class _Call(minilm.nn.Module):
    """module(*args, **kwargs) on fixed inputs, then ``fn`` of its output: one Tensor to gradient-check."""

    def __init__(self, module, fn, *args, **kwargs):
        super().__init__()
        self.module, self.fn, self.args, self.kwargs = module, fn, args, kwargs

    def forward(self):
        return self.fn(self.module(*self.args, **self.kwargs))


def test_wrappers_gradcheck_on_a_tiny_bert():
    """Whole models, base partly trainable: a KnowBERT classifier's loss (task CE + L_EL, the KAR after layer 0,
    so the gradient crosses both Bert layers) and an ERNIE encoder's dEA loss (the aggregator after layer 0)."""
    ids, mask = minilm.tensor(IDS), minilm.tensor(MASK)
    loss = lambda out: out.loss
    clf = KnowledgeClassifier(KnowBertEncoder(_base_partly_trainable(tiny()), kar_module(), after_layer=0), 3,
                              pooling="mean", generator=minilm.Generator(0))
    randomize(clf, seed=2, only="classifier")
    minilm.gradcheck_module(_Call(clf, loss, ids, mask, labels=minilm.tensor([0, 2]), mention_spans=SPANS,
                                  candidates=CANDS, priors=PRIORS, gold_entities=GOLD), **LEAN)
    er = ErnieEncoder(_base_partly_trainable(tiny()), [fusion_layer(True)], E_TABLE, after_layer=0)
    randomize(er.dea, seed=3)
    noisy, labels = dea_noise(ENTS, 7, seed=0)
    minilm.gradcheck_module(_Call(er, loss, ids, mask, entity_ids=noisy, entity_labels=labels), **LEAN)


def test_lora_reaches_the_base_query_value_inside_both_wrappers():
    for enc in (KnowBertEncoder(tiny(), kar_module(), after_layer=0),
                ErnieEncoder(tiny(), [fusion_layer(True)], E_TABLE, after_layer=0)):
        clf = KnowledgeClassifier(enc, 2, generator=minilm.Generator(0))
        peft.add(clf, peft.LoRAConfig(r=2, alpha=4, target_modules=["query", "value"]))
        lora = sorted(n for n, _ in peft.lora_layers(clf))
        assert lora == sorted(f"encoder.bert.encoder.layer.{i}.attention.self.{t}" for i in range(2)
                              for t in ("query", "value"))
        trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
        fusion = {n for n, _ in clf.named_parameters() if n.startswith(("encoder.kar.", "encoder.fusion.", "encoder.dea."))}
        assert fusion and fusion <= trainable and {"classifier.weight", "classifier.bias"} <= trainable
        assert all(".lora_" in n or n in fusion or n.startswith("classifier.") for n in trainable)
        knowledge = (dict(mention_spans=SPANS, candidates=CANDS, priors=PRIORS) if isinstance(enc, KnowBertEncoder)
                     else dict(entity_ids=ENTS))
        clf(minilm.tensor(IDS), minilm.tensor(MASK), labels=minilm.tensor([0, 1]), **knowledge).loss.backward()
        assert clf.encoder.bert.encoder.layer[0].attention.self.query.lora_A.grad is not None


def _entity_task(n=48, seed=0):
    """One mention per text, two candidates; the class is whether the more probable candidate (the prior's
    argmax, the one the linker should pick) is among entities 0–2: knowledge the tokens do not carry."""
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 11, size=(n, 6))
    spans = np.tile(np.array([[[2, 3]]]), (n, 1, 1))
    cands = np.stack([rng.choice(7, 2, replace=False) for _ in range(n)])[:, None, :]    # (n, 1, 2)
    priors = rng.dirichlet(np.ones(2) * 0.3, size=(n, 1))                              # (n, 1, 2), peaked
    y = (cands[np.arange(n), 0, priors[:, 0].argmax(-1)] < 3).astype(np.int64)
    return X, spans, cands, priors, y


def test_knowbert_classifier_trains_with_the_trainer_base_frozen():
    bert = tiny_bert("cpu", seed=0, **TINY)                                          # float32, as trained
    kar = KnowledgeAttentionRecontextualization(8, E_TABLE, heads=2, linker_hidden=8, generator=minilm.Generator(1))
    clf = KnowledgeClassifier(KnowBertEncoder(bert, kar, after_layer=0), 2, pooling="mean",
                              generator=minilm.Generator(2)).freeze_base()
    base = snapshot(clf.encoder.bert)
    kar_before = snapshot(clf.encoder.kar)
    X, spans, cands, priors, y = _entity_task()
    config = finetune_config(max_steps=80, batch_size=16, learning_rate=3e-2, warmup_steps=5)
    run = train_classifier(clf, X, y, config, mention_spans=spans, candidates=cands, priors=priors)
    assert np.mean(run["loss"][-10:]) < np.mean(run["loss"][:10]) - 0.2, run["loss"]
    after = snapshot(clf.encoder.bert)
    assert all(np.array_equal(v, after[k]) for k, v in base.items())                # the base, bit for bit
    assert any(not np.array_equal(v, snapshot(clf.encoder.kar)[k]) for k, v in kar_before.items())
    assert np.array_equal(host(clf.encoder.kar.entities.weight), E_TABLE.astype(np.float32))   # E frozen too


# ---- all-MiniLM-L6-v2 --------------------------------------------------------------------------------

def test_fusion_on_all_minilm_l6_v2():
    try:
        folder = find_minilm_l6_v2()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    bert = Bert.from_pretrained(folder)
    ids, mask = minilm.tensor(np.array([[101, 2198, 2001, 1037, 3836, 102]])), minilm.tensor(np.ones((1, 6), np.int64))
    ref = bert(ids, mask, output_hidden_states=True)
    table = np.random.default_rng(0).standard_normal((5, 16))
    spans, cands, priors = np.array([[[1, 1]]]), np.array([[[0, 3]]]), np.array([[[0.7, 0.3]]])
    zero = KnowBertEncoder(bert, KnowledgeAttentionRecontextualization(384, table, w2_init="zero"), after_layer=3)
    assert np.array_equal(host(zero(ids, mask, mention_spans=spans, candidates=cands, priors=priors).last_hidden_state),
                          host(ref.last_hidden_state))
    # the pseudo-inverse identity on the real states after layer 3 (zero entities, zero attention update)
    kar = KnowledgeAttentionRecontextualization(384, np.zeros((5, 16)), generator=minilm.Generator(0))
    kar.word_to_span.out_proj.weight.data *= 0
    kar.word_to_span.out_proj.bias.data *= 0
    out = KnowBertEncoder(bert, kar, after_layer=3)(ids, mask, mention_spans=spans, candidates=cands, priors=priors,
                                                    output_hidden_states=True)
    H, H_new = host(out.hidden_states[4]).astype(np.float64), host(out.hidden_states[5]).astype(np.float64)
    W1 = host(kar.down_proj.weight).astype(np.float64)
    np.testing.assert_allclose(H_new, H + H @ W1 @ np.linalg.pinv(W1), atol=1e-4)
    ernie = ErnieEncoder(bert, [ErnieFusionLayer(384, 16, heads_w=12, heads_e=2)], table)
    got = ernie(ids, mask, entity_ids=np.array([[-1, 2, -1, -1, 4, -1]])).last_hidden_state
    assert np.array_equal(host(got), host(ref.last_hidden_state))                  # untrained residual: identity
