"""Masked-LM corruption (minilm.data.mlm.mask_tokens): BERT's 15% and 80/10/10, never specials or
padding, whole words, SpanBERT spans, ERNIE phrases, determinism.

Tolerances are binomial: a count k ~ Bin(n, p) has std σ = √(n p (1−p)), and every
rate here is checked within 5σ (a false failure about once in 1.7 million runs)."""
import numpy as np
import pytest

import minilm
from minilm.data import expected_span_length, find_phrases, mask_tokens, sample_span_lengths, word_starts

V, PAD, CLS, SEP, MASK_ID = 1000, 0, 1, 2, 3
SPECIAL = (PAD, CLS, SEP, MASK_ID)


def batch(B=200, T=64, seed=0):
    """[CLS] tokens [SEP] then padding, random lengths; ids of real tokens in [4, V)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, V, size=(B, T))
    lengths = rng.integers(T // 2, T + 1, size=B)
    am = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids[am == 0] = PAD
    ids[:, 0] = CLS
    ids[np.arange(B), lengths - 1] = SEP
    return ids, am


def within(k, n, p, sigmas=5.0):
    sd = np.sqrt(n * p * (1 - p))
    return abs(k - n * p) <= sigmas * sd, f"{k} of {n}: expected {n * p:.1f} ± {sigmas}·{sd:.1f}"


def real(ids, am):
    return (am == 1) & ~np.isin(ids, SPECIAL)


def test_rates_15_percent_and_80_10_10():
    ids, am = batch()
    inputs, labels = mask_tokens(ids, V, MASK_ID, SPECIAL, np.random.default_rng(1), attention_mask=am)
    cand = real(ids, am)
    chosen = labels != -100
    ok, msg = within(chosen.sum(), cand.sum(), 0.15)                  # n ≈ 9,100 → σ ≈ 34 tokens (0.4%)
    assert ok, msg
    n = chosen.sum()
    masked = inputs[chosen] == MASK_ID
    kept = inputs[chosen] == ids[chosen]
    randomised = ~masked & ~kept
    # a random replacement equals the original with probability 1/(V − 4): count it as "kept"
    p_same = 1.0 / (V - len(SPECIAL))
    for k, p in ((masked.sum(), 0.8), (randomised.sum(), 0.1 * (1 - p_same)), (kept.sum(), 0.1 + 0.1 * p_same)):
        ok, msg = within(k, n, p)                                     # n ≈ 1,370 → σ(80%) ≈ 15, σ(10%) ≈ 11
        assert ok, msg
    assert not np.isin(inputs[chosen][randomised], SPECIAL).any()     # random replacements are never special


@pytest.mark.parametrize("policy", ["token", "whole_word", "span", "phrases"])
def test_specials_and_padding_never_chosen_labels_elsewhere(policy):
    ids, am = batch(B=60, T=40, seed=2)
    rng = np.random.default_rng(3)
    kw = dict(attention_mask=am)
    if policy == "whole_word":
        kw["whole_word"] = rng.random(ids.shape) < 0.6
    elif policy == "span":
        kw["span"] = True
    elif policy == "phrases":
        kw["phrases"] = [ids[0, 3:6].tolist(), ids[1, 2:4].tolist()]
    inputs, labels = mask_tokens(ids, V, MASK_ID, SPECIAL, 4, prob=0.3, **kw)
    cand = real(ids, am)
    chosen = labels != -100
    assert chosen.any() and not (chosen & ~cand).any()                 # never a special or a pad
    np.testing.assert_array_equal(labels[chosen], ids[chosen])         # labels: the originals where chosen
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])       # everything else untouched
    assert labels.dtype == np.int64 and inputs.shape == ids.shape


def test_whole_word_masks_whole_words():
    pieces = [["[CLS]", "un", "##believ", "##able", "cat", "##s", "sat", "on", "the", "mat", "##s", "[SEP]"]] * 400
    ids = np.tile(np.arange(10, 22), (400, 1))
    ids[:, 0], ids[:, -1] = CLS, SEP
    starts = word_starts(pieces)
    assert starts[0].tolist() == [True, True, False, False, True, False, True, True, True, True, False, True]
    _, labels = mask_tokens(ids, V, MASK_ID, SPECIAL, 0, prob=0.3, whole_word=starts)
    chosen = labels != -100
    words = [(1, 4), (4, 6), (6, 7), (7, 8), (8, 9), (9, 11)]
    for s, e in words:                                                 # each word all in or all out
        part = chosen[:, s:e]
        assert np.all(part.all(axis=1) | ~part.any(axis=1))
    assert chosen[:, 1:4].all(axis=1).any()                            # the 3-piece word does get chosen
    assert np.all(chosen.sum(axis=1) <= 3)                             # budget round(0.3·10) = 3, never exceeded


def test_span_lengths_follow_truncated_geometric():
    n = 20000
    lengths = sample_span_lengths(np.random.default_rng(0), n)          # SpanBERT: Geo(0.2), at most 10
    assert lengths.min() >= 1 and lengths.max() <= 10
    assert abs(expected_span_length() - 3.797) < 1e-3                   # the paper's mean span length 3.8
    q = 0.8
    for k in (1, 2, 5, 10):
        p_k = 0.2 * q ** (k - 1) / (1 - q ** 10)
        ok, msg = within((lengths == k).sum(), n, p_k)
        assert ok, f"length {k}: {msg}"
    sd = lengths.std() / np.sqrt(n)
    assert abs(lengths.mean() - expected_span_length()) < 5 * sd


def test_span_masking_masks_runs_to_the_budget():
    ids, am = batch(B=100, T=128, seed=5)
    am[:] = 1
    ids = np.random.default_rng(6).integers(4, V, size=ids.shape)
    ids[:, 0], ids[:, -1] = CLS, SEP
    _, labels = mask_tokens(ids, V, MASK_ID, SPECIAL, 7, span=(0.2, 10))
    chosen = labels != -100
    n_cand = 126
    assert np.all(chosen.sum(axis=1) == round(0.15 * n_cand))          # the budget, exactly
    runs = []
    for row in chosen.astype(np.int8):
        d = np.diff(np.concatenate([[0], row, [0]]))
        runs += list(np.flatnonzero(d == -1) - np.flatnonzero(d == 1))
    # token-level masking gives runs of mean ≈ 1/(1 − 0.15) ≈ 1.2; spans of mean 3.8 (cut by the budget,
    # sometimes adjacent) give far longer ones
    assert np.mean(runs) > 2.5
    _, plain = mask_tokens(ids, V, MASK_ID, SPECIAL, 7)
    assert (plain != -100).sum(axis=1).std() > 0                       # plain masking: Bernoulli, not a budget


def test_span_decision_is_per_span_and_spans_respect_words():
    ids = np.tile(np.arange(10, 50), (300, 1))
    starts = np.zeros(ids.shape, bool)
    starts[:, ::2] = True                                              # words of two pieces
    inputs, labels = mask_tokens(ids, V, MASK_ID, (), 1, prob=0.2, whole_word=starts, span=(0.5, 3))
    chosen = labels != -100
    assert np.all(chosen[:, ::2] == chosen[:, 1::2])                   # whole words only
    # a word inside one span shares its span's draw: its two pieces are both [MASK] or both not
    both = chosen[:, ::2]
    m0, m1 = inputs[:, ::2] == MASK_ID, inputs[:, 1::2] == MASK_ID
    assert np.all(m0[both] == m1[both])


def test_phrase_masking_masks_phrases_as_units():
    rng = np.random.default_rng(0)
    phrase_a, phrase_b = [500, 501, 502], [600, 601]
    ids = rng.integers(4, 400, size=(300, 40))
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[:, 5:8] = phrase_a
    ids[:, 20:22] = phrase_b
    ids[:, 30:33] = phrase_a
    ids[:, 37], ids[:, 38] = 600, SEP                                  # 600 then [SEP]: not phrase_b
    assert find_phrases(ids[0], [phrase_a, phrase_b], ~np.isin(ids[0], SPECIAL)) == [(5, 8), (20, 22), (30, 33)]
    assert find_phrases([600, 601], [phrase_b], allowed=[True, False]) == []     # only on real tokens
    assert find_phrases([500, 501, 502], [[500, 501], phrase_a]) == [(0, 3)]     # the longest match wins
    inputs, labels = mask_tokens(ids, V, MASK_ID, SPECIAL, 1, prob=0.25, phrases=[phrase_a, phrase_b])
    chosen = labels != -100
    # budget round(0.25·37) = 9 ≥ 3 + 2 + 3: every phrase is masked, whole, before anything else
    assert chosen[:, 5:8].all() and chosen[:, 20:22].all() and chosen[:, 30:33].all()
    assert np.all(chosen.sum(axis=1) == 9)
    for s, e in ((5, 8), (20, 22), (30, 33)):                         # one 80/10/10 draw per phrase
        seg_in = inputs[:, s:e]
        all_mask = (seg_in == MASK_ID).all(axis=1)
        all_kept = (seg_in == ids[:, s:e]).all(axis=1)
        all_random = (seg_in != MASK_ID).all(axis=1) & ~all_kept
        assert np.all(all_mask | all_kept | all_random)
        assert all_mask.mean() > 0.6
    # a small budget takes whole phrases only: round(0.1·37) = 4 fits one of them, never a part
    _, labels = mask_tokens(ids, V, MASK_ID, SPECIAL, 2, prob=0.1, phrases=[phrase_a, phrase_b])
    chosen = labels != -100
    for s, e in ((5, 8), (20, 22), (30, 33)):
        part = chosen[:, s:e]
        assert np.all(part.all(axis=1) | ~part.any(axis=1))


def test_deterministic_by_seed_and_inputs_unchanged():
    ids, am = batch(B=20, T=32, seed=9)
    copy = ids.copy()
    for kw in ({}, {"span": True}, {"whole_word": ids % 3 != 0}):
        a = mask_tokens(ids, V, MASK_ID, SPECIAL, 42, attention_mask=am, **kw)
        b = mask_tokens(ids, V, MASK_ID, SPECIAL, np.random.default_rng(42), attention_mask=am, **kw)
        c = mask_tokens(ids, V, MASK_ID, SPECIAL, 43, attention_mask=am, **kw)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(ids, copy)


def test_inputs_of_other_kinds_and_errors():
    seq = [CLS, 10, 11, 12, 13, SEP]
    inputs, labels = mask_tokens(seq, V, MASK_ID, SPECIAL, 0, prob=1.0)
    assert inputs.shape == (6,) and (labels[1:5] != -100).all() and labels[0] == labels[5] == -100
    t_in, t_lab = mask_tokens(minilm.tensor([seq]), V, MASK_ID, SPECIAL, 0, prob=1.0)
    np.testing.assert_array_equal(t_lab[0], labels)
    _, none = mask_tokens([seq], V, MASK_ID, SPECIAL, 0, prob=0.0)
    assert (none == -100).all()
    with pytest.raises(ValueError, match="mask_frac"):
        mask_tokens([seq], V, MASK_ID, SPECIAL, 0, mask_frac=0.95, random_frac=0.1)
    with pytest.raises(ValueError, match="attention_mask"):
        mask_tokens([seq], V, MASK_ID, SPECIAL, 0, attention_mask=[[1, 1]])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        mask_tokens([[5, 1000]], V, MASK_ID, SPECIAL, 0)
    with pytest.raises(TypeError, match="integer"):
        mask_tokens([[0.5]], V, MASK_ID, SPECIAL, 0)
