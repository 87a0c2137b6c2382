"""Attention-only GPTs (GPTConfig(mlp=False)) and minilm.interpret: attention weights, head ablation,
repeated random segments, prefix-matching / previous-token / copying scores, loss by occurrence.

The induction circuit itself is checked on a GPT whose weights are written by hand (``induction_gpt``):
a previous-token head in layer 0 and an induction head in layer 1 that reads it (K-composition),
so every score has a known answer and nothing is trained."""
import numpy as np
import pytest

import minilm
from helpers import host, logits_of, randomize, tiny_gpt, to_tensor, token_ids
from minilm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minilm.generate import generate
from minilm.interpret import (Repeats, ablate_heads, attention_probs, copying_score, loss_by_occurrence,
                              ov_circuit, prefix_matching_score, prefix_matching_scores, previous_token_score,
                              repeated_segments, token_nll)
from minilm.models import GPT, GPTConfig
from minilm.prune import prune_heads

TINY = dict(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=8, mlp=False)


def tiny(device="cpu", seed=0, **kw):
    m = tiny_gpt(device, seed=seed, dtype=np.float64, **{**TINY, **kw})
    randomize(m, seed=seed + 1, scale=0.3)       # zero biases and unit LayerNorm gains would hide mistakes
    return m


# ---- the attention-only GPT ------------------------------------------------------------------------

def test_attention_only_config_round_trips_and_its_blocks_have_no_mlp():
    c = GPTConfig(**TINY)
    assert c.to_dict()["mlp"] is False and "mlp" not in GPTConfig().to_dict()   # the default dict is unchanged
    assert GPTConfig.from_dict(c.to_dict()) == c
    m = GPT(c)
    names = list(m.state_dict())
    assert not [n for n in names if ".mlp." in n or ".ln_2." in n]
    d, V, T, L = c.n_embd, c.vocab_size, c.block_size, c.n_layer
    assert m.num_parameters() == V * d + T * d + L * (2 * d + d * 3 * d + 3 * d + d * d + d) + 2 * d
    assert "attention-only" in repr(m)
    with pytest.raises(ValueError, match="mlp=False has no MLP"):
        GPTConfig(**{**TINY, "layer_mlp": [8, 8]})
    with pytest.raises(ValueError, match="mlp must be true or false"):
        GPTConfig(**{**TINY, "mlp": "no"})


def test_attention_only_gpt_gradcheck(device):
    m = tiny(device)
    x, y = token_ids((1, 4), 11, device), token_ids((1, 4), 11, device, seed=1)
    minilm.gradcheck_module(m, [x, None, None, y], fn=lambda out: out.loss)


def test_attention_only_checkpoint_round_trip(tmp_path):
    m = tiny()
    save_checkpoint(tmp_path / "ckpt", m, m.config.to_dict())
    ckpt = load_checkpoint(tmp_path / "ckpt")
    again = ckpt.load_into(GPT(GPTConfig.from_dict(ckpt.config)).double())
    assert again.config.mlp is False
    x = token_ids((2, 7), 11)
    np.testing.assert_array_equal(logits_of(again, x), logits_of(m, x))
    with pytest.raises(CheckpointError, match="mlp"):   # an MLP model does not take it
        ckpt.load_into(GPT(GPTConfig(**{**TINY, "mlp": True})).double())


def test_attention_only_generation_and_adapters():
    m = tiny()
    out = generate(m, np.array([[1, 2, 3]]), 4, greedy=True)
    assert out.shape == (1, 7)
    from minilm.peft import AdapterConfig, add_adapters
    add_adapters(m, AdapterConfig(r=2, placement="output"))
    assert m(token_ids((1, 4), 11)).logits.shape == (1, 4, 11)
    with pytest.raises(ValueError, match="no MLP to adapt"):
        add_adapters(tiny(), AdapterConfig(r=2, placement="pfeiffer"))(token_ids((1, 4), 11))


# ---- attention weights and ablation ------------------------------------------------------------------

def test_attention_probs_are_the_weights_the_fused_kernel_applies():
    m = tiny(vocab_size=11)
    x = token_ids((2, 6), 11)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])       # row 1: a padded first key
    probs = attention_probs(m, x, attention_mask=mask)
    layers, _ = m.hidden_states(x, mask, all_layers=True)
    for l, (A, block) in enumerate(zip(probs, m.layers())):
        assert A.shape == (2, 2, 6, 6)
        assert np.allclose(np.triu(A, 1), 0) and np.allclose(A[1, :, 1:, 0], 0)   # no future, no padding
        rows = A.sum(-1)
        assert np.allclose(rows[0], 1) and np.allclose(rows[1, :, 1:], 1)
        h = block.ln_1(layers[l])
        v = host(minilm.functional.split(block.attn.c_attn(h), 3, axis=2)[2]).reshape(2, 6, 2, 4).transpose(0, 2, 1, 3)
        y = (A @ v).transpose(0, 2, 1, 3).reshape(2, 6, 8)               # A v, heads joined: (B, T, H·hs)
        ours = y @ host(block.attn.c_proj.weight) + host(block.attn.c_proj.bias)
        kernel = host(block.attn(h, key_padding_mask=np.asarray(mask) == 0))
        np.testing.assert_allclose(ours[0], kernel[0], atol=1e-10)
        np.testing.assert_allclose(ours[1, 1:], kernel[1, 1:], atol=1e-10)   # the fully padded query row aside


def test_zero_ablation_equals_zeroed_projection_rows_and_pruning(device):
    m = tiny(device)
    x = token_ids((2, 7), 11, device)
    before = logits_of(m, x)
    with ablate_heads(m, [(1, 0), (0, 1)]) as same:
        assert same is m
        ablated = logits_of(m, x)
    np.testing.assert_array_equal(logits_of(m, x), before)            # restored on exit
    assert "forward" not in vars(m.layers()[1].attn.c_proj)
    zeroed = tiny(device)
    for l, j in [(1, 0), (0, 1)]:
        w = zeroed.layers()[l].attn.c_proj.weight
        w.data[j * 4:(j + 1) * 4] = 0                                    # head j's rows of W_O (hs = 4)
    np.testing.assert_allclose(ablated, logits_of(zeroed, x), atol=1e-12)
    pruned = prune_heads(tiny(device), {1: [0], 0: [1]})
    np.testing.assert_allclose(ablated, logits_of(pruned, x), atol=1e-12)
    assert np.abs(ablated - before).max() > 1e-3


def test_mean_ablation_nests_and_gradients_skip_the_ablated_head():
    m = tiny()
    x = token_ids((3, 7), 11)
    before = logits_of(m, x)
    proj = m.layers()[1].attn.c_proj
    seen = {}
    inner = proj.forward

    def spy(y):
        seen["y"] = host(y).copy()
        return inner(y)
    proj.forward = spy
    try:
        with ablate_heads(m, {1: 1}, mode="mean"):
            with ablate_heads(m, [(0, 0)]):
                assert not np.allclose(logits_of(m, x), before)
            assert "forward" in vars(proj)
        y = seen["y"]                                                   # what c_proj saw: head 1 is its mean
        assert np.allclose(y[..., 4:], y[..., 4:].reshape(-1, 4).mean(0))
        assert proj.forward is spy                                      # the earlier patch is back
    finally:
        del proj.forward
    with ablate_heads(m, [(1, 1)]):
        m(x, labels=token_ids((3, 7), 11, seed=2)).loss.backward()
    g = host(m.layers()[1].attn.c_attn.weight.grad)                     # (d, 3·H·hs): head 1's q, k, v columns
    assert np.abs(g[:, [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]]).max() == 0
    assert np.abs(g[:, :4]).max() > 0


@pytest.mark.parametrize("heads, match", [([(2, 0)], "layer 2 does not exist"), ([(0, 2)], "head 2 does not exist"),
                                          ([(0,)], "integer pairs"), ([(0, True)], "integer pairs")])
def test_ablation_names_the_bad_head(heads, match):
    with pytest.raises((IndexError, TypeError), match=match):
        with ablate_heads(tiny(), heads):
            pass


def test_ablation_refuses_an_unknown_mode_and_a_model_without_gpt_body():
    with pytest.raises(ValueError, match="mode must be one of"):
        with ablate_heads(tiny(), [(0, 0)], mode="resample"):
            pass
    with pytest.raises(TypeError, match="needs a GPT body"):
        attention_probs(minilm.models.Bert(minilm.models.BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1,
                                                                    num_attention_heads=2, intermediate_size=8)),
                        token_ids((1, 3), 11))


# ---- repeated segments --------------------------------------------------------------------------------

def test_repeated_segments_layout():
    b = repeated_segments(64, (3, 7), 20, rng=0, length=30, bos=0)
    B, L = b.tokens.shape
    assert (B, L) == (64, 30) and b.tokens.dtype == np.int64 and (b.tokens[:, 0] == 0).all()
    assert (b.tokens[:, 1:] != 0).all() and b.tokens.max() < 20
    n = b.first.sum(1)
    assert (n == b.second.sum(1)).all() and n.min() >= 3 and n.max() <= 7 and len(set(n)) > 1
    rows, t = np.nonzero(b.second)
    src = b.source[rows, t]
    assert (b.tokens[rows, t] == b.tokens[rows, src]).all() and b.first[rows, src].all() and (src < t).all()
    assert (b.source[~b.second] == -1).all()
    for r in range(B):
        seg = b.tokens[r, b.first[r]]
        assert len(set(seg)) == len(seg)                                 # distinct: the earlier copy is unique
        pos = np.nonzero(b.first[r])[0]
        assert (np.diff(pos) == 1).all() and (np.diff(np.nonzero(b.second[r])[0]) == 1).all()
    x, y = b.pair()
    assert (x == b.tokens[:, :-1]).all() and (y == b.tokens[:, 1:]).all()


def test_repeated_segments_default_is_olsson_layout_and_copies_fill():
    b = repeated_segments(4, 5, 9, rng=1, bos=0)                         # [BOS] s1..s5 s1..s5
    assert b.tokens.shape == (4, 11)
    np.testing.assert_array_equal(b.tokens[:, 1:6], b.tokens[:, 6:])
    np.testing.assert_array_equal(b.copy[0], [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    f = repeated_segments(8, (3, 4), 9, rng=2, length=13, copies=None)   # as many copies as fit: 13 // n
    assert set(f.copy.max(1)) <= {3, 4} and (f.copy.max(1) == 13 // f.first.sum(1)).all()
    rows, t = np.nonzero(f.copy == 3)
    assert (f.copy[rows, f.source[rows, t]] == 2).all()                  # a third copy points at the second
    same = [repeated_segments(3, 4, 9, rng=5, length=12).tokens for _ in range(2)]   # seeded: the same rows
    np.testing.assert_array_equal(*same)


def test_targets_are_the_predictable_tokens_of_each_copy():
    b = Repeats(tokens=np.arange(12)[None], copy=np.array([[0, 1, 1, 1, 0, 2, 2, 2, 3, 3, 3, 0]]),
                source=np.full((1, 12), -1))
    assert np.nonzero(b.targets("first")[0])[0].tolist() == [1, 2]       # t → t + 1 inside copy 1
    assert np.nonzero(b.targets("second")[0])[0].tolist() == [5, 6, 8, 9]   # not 7 → 8: across copies
    with pytest.raises(ValueError, match="'first' or 'second'"):
        b.targets("third")


@pytest.mark.parametrize("kw, match", [(dict(seg_len=1), "seg_len must be"), (dict(seg_len=(5, 3)), "seg_len must be"),
                                       (dict(seg_len=9, vocab=10, bos=0), "distinct tokens"),
                                       (dict(length=7), "cannot hold"), (dict(copies=1), "copies must be")])
def test_repeated_segments_errors(kw, match):
    args = {"batch": 2, "seg_len": 4, "vocab": 10, "rng": 0, **kw}
    with pytest.raises(ValueError, match=match):
        repeated_segments(**args)


# ---- scores on known attention patterns ----------------------------------------------------------------

def test_prefix_matching_score_of_hand_made_patterns():
    b = repeated_segments(5, (3, 6), 12, rng=3, length=16, bos=0)
    B, T = 5, 15
    causal = np.tril(np.ones((T, T)))
    A = np.zeros((B, 3, T, T))
    A[:, 1] = causal / causal.sum(1, keepdims=True)                      # head 1: uniform over the past
    A[:, 2, :, 0] = 1                                                    # head 2: everything on BOS
    A[:, 0] = A[:, 2]
    rows, t = np.nonzero(b.second[:, :T])
    A[rows, 0, t] = 0
    A[rows, 0, t, b.source[rows, t] + 1] = 1                             # head 0: the token after the earlier copy
    score = prefix_matching_score(A, b)
    assert score[0] == pytest.approx(1) and score[2] == 0
    assert score[1] == pytest.approx(np.mean(1 / (t + 1)))
    assert prefix_matching_score([A, A[:, ::-1]], b).shape == (2, 3)
    prev = previous_token_score(A)
    assert prev[2] == pytest.approx(1 / (T - 1))                         # only query 1 puts its weight on 0
    shifted = np.zeros((1, 1, T, T))
    shifted[0, 0, np.arange(1, T), np.arange(T - 1)] = 1
    assert previous_token_score(shifted)[0] == 1
    with pytest.raises(ValueError, match=r"must be \(B, H, T, T\)"):
        prefix_matching_score(A[:, :, :3], b)


def test_loss_by_occurrence_averages_exactly_the_predictable_positions():
    m = tiny()
    b = repeated_segments(6, (2, 4), 11, rng=4, length=12)
    nll = token_nll(m, b.tokens)
    assert nll.shape == (6, 11)
    with minilm.no_grad():
        full = m(to_tensor(b.input_ids.copy(), "cpu"), labels=to_tensor(b.labels.copy(), "cpu")).loss.item()
    assert nll.mean() == pytest.approx(full)
    first, second = [], []
    for r in range(6):                                                   # the targets s_2 … s_n, by hand
        for c, out in ((1, first), (2, second)):
            pos = np.nonzero(b.copy[r] == c)[0]
            out.extend(nll[r, pos[:-1]])
    got = loss_by_occurrence(m, b)
    assert got["first"] == pytest.approx(np.mean(first)) and got["second"] == pytest.approx(np.mean(second))
    assert got["ratio"] == pytest.approx(got["second"] / got["first"])


# ---- a hand-written induction circuit ------------------------------------------------------------------

V, T, D, HS = 16, 24, 64, 32          # tokens (0 = BOS), positions, width, head size (2 heads)
TOK, PREV, POS = 0, 16, 32            # residual subspaces: the token, the previous token, the position


def induction_gpt(n_layer=2):
    """A 2-layer attention-only GPT written by hand (head 1 of each layer is switched off):

    layer 0, head 0  previous-token head: position p attends to p − 1 (QK on the position one-hots)
                     and writes that token's one-hot into the PREV subspace (OV: TOK → PREV);
    layer 1, head 0  induction head: query "my token is a" matches keys "my previous token was a"
                     (QK: TOK → PREV, K-composition with layer 0), falling back on BOS; it copies
                     the key's own token into TOK (OV: TOK → TOK), raising that token's logit (G1).
    """
    m = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=n_layer, n_head=2, n_embd=D, mlp=False))
    for _, p in m.named_parameters():
        p.data[...] = 0
    for b in m.layers():
        b.ln_1.weight.data[:] = 1
    m.transformer.ln_f.weight.data[:] = 3                                 # sharper logits
    tr = m.transformer
    tr.wte.weight.data[np.arange(V), TOK + np.arange(V)] = 1             # one-hot tokens, also the unembedding
    tr.wpe.weight.data[np.arange(T), POS + np.arange(T)] = 1             # one-hot positions
    q, k, v = 0, D, 2 * D                                                # c_attn's [q | k | v] column blocks
    w0 = m.layers()[0].attn.c_attn.weight.data
    p = np.arange(1, T)
    w0[POS + p, q + p - 1] = 5                                           # query p looks for key p − 1
    w0[POS + np.arange(T), k + np.arange(T)] = 1
    w0[TOK + np.arange(V), v + np.arange(V)] = 1
    m.layers()[0].attn.c_proj.weight.data[np.arange(V), PREV + np.arange(V)] = 0.2   # → PREV subspace
    if n_layer > 1:
        w1 = m.layers()[1].attn.c_attn.weight.data
        w1[TOK + np.arange(V), q + np.arange(V)] = 5                     # query: my token
        w1[PREV + np.arange(V), k + np.arange(V)] = 1                    # key: my previous token
        w1[POS + 0, k + V] = 1                                           # BOS's key, and every query's bias for it
        m.layers()[1].attn.c_attn.bias.data[q + V] = 10
        w1[TOK + np.arange(V), v + np.arange(V)] = 1
        m.layers()[1].attn.c_proj.weight.data[np.arange(V), TOK + np.arange(V)] = 3   # copy: → TOK
    return m


def test_hand_written_induction_circuit_scores():
    m = induction_gpt()
    b = repeated_segments(16, 11, V, rng=5, bos=0)                       # [BOS] s1..s11 s1..s11: 23 tokens
    probs = attention_probs(m, b.input_ids.copy())
    prev, pm = previous_token_score(probs), prefix_matching_score(probs, b)
    assert prev[0, 0] > 0.99 and prev[1, 0] < 0.5
    assert pm[1, 0] > 0.99 and pm[0, 0] < 0.2 and np.array_equal(pm, prefix_matching_scores(m, b))
    cs = copying_score(m)
    assert cs[1, 0] > 0.9                                                # OV: TOK → TOK, a copying head
    M = ov_circuit(m, 1, 0)
    assert M.shape == (V, V) and (np.diag(M) > M.max(1) - 1e-9).all()    # each token raises its own logit most
    loss = loss_by_occurrence(m, b)
    assert loss["second"] < 0.05 * loss["first"], loss                   # in-context: the second copy is known
    for head in [(1, 0), (0, 0)]:                                        # the induction head or its K-partner
        with ablate_heads(m, [head]):
            gone = loss_by_occurrence(m, b)
        assert gone["ratio"] > 0.9, (head, gone)
    with ablate_heads(m, [(0, 1), (1, 1)]):                              # the idle heads: nothing changes
        assert loss_by_occurrence(m, b)["second"] == pytest.approx(loss["second"], rel=1e-5)


def test_one_layer_control_cannot_do_it():
    m = induction_gpt(n_layer=1)
    loss = loss_by_occurrence(m, repeated_segments(16, 11, V, rng=5, bos=0))
    assert loss["ratio"] > 0.9


def test_fixed_layout_lets_one_layer_solve_repeats_by_position():
    """Trained (200 steps, ~2 s) on Olsson's fixed layout [BOS] s₁…s₄ s₁…s₄, one attention-only layer
    already predicts the second copy: a head attends n − 1 = 3 positions back, which the prefix-matching
    score cannot tell from an induction head.  Why the experiment varies n and the fillers (see
    repeated_segments); the induction head itself is left to experiments/induction_heads.py (it takes
    thousands of steps)."""
    from minilm.train import TrainConfig, Trainer
    m = tiny_gpt(seed=0, vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=32, mlp=False)
    rng = np.random.default_rng(0)
    Trainer(m, TrainConfig(max_steps=200, batch_size=32, learning_rate=1e-2, warmup_steps=20, weight_decay=0.0,
                           eval_interval=0, seed=0),
            lambda: repeated_segments(32, 4, 12, rng, bos=0).pair(), quiet=True).fit()
    b = repeated_segments(128, 4, 12, rng=1, bos=0)
    loss = loss_by_occurrence(m, b)
    assert loss["ratio"] < 0.8, loss
    probs = attention_probs(m, b.input_ids.copy())
    t = np.arange(5, 8)
    offset = probs[0][:, :, t, t - 3].mean(axis=(0, 2))                 # (H,): weight n − 1 = 3 back
    assert offset.max() > 0.8 and prefix_matching_score(probs, b).max() > 0.8
