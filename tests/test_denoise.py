"""BART's noising functions (minilm.data.denoise, Lewis et al. 2020 §2.2): their properties, their
statistics over many draws, seeding, protected ends and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilm.data import (denoising_pair, document_rotation, poisson_span_lengths, sentence_permutation,
                         text_infilling, token_deletion, token_masking)

BOS, EOS, MASK, STOP = 0, 2, 3, 4
FEW = settings(max_examples=40, deadline=None)


def doc(n):
    """<s> 10 11 … </s>: n distinct body ids, so every kept token can be traced back."""
    return np.array([BOS, *range(10, 10 + n), EOS], np.int64)


def sentences(body):
    """Split after each run of full stops (the definition the function documents)."""
    out, cur = [], []
    for i, t in enumerate(body):
        cur.append(int(t))
        if t == STOP and (i + 1 == len(body) or body[i + 1] != STOP):
            out.append(tuple(cur))
            cur = []
    return out + [tuple(cur)] if cur else out


def word_table(V=400, seed=0):
    return np.random.default_rng(seed).random(V) < 0.5


# ---- text infilling ---------------------------------------------------------------------------------

@FEW
@given(n=st.integers(0, 60), seed=st.integers(0, 2**31), ratio=st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0]),
       words=st.booleans())
def test_infilling_is_one_mask_per_span(n, seed, ratio, words):
    """Rebuilding the output from the returned spans (one [MASK] per span, ℓ = 0 inserts) gives it back;
    the spans are ordered, do not overlap, cover ⌈ratio·units⌉ units and leave the ends alone."""
    table = word_table(10 + n + 1) if words else None
    x = doc(n)
    y, spans = text_infilling(x, MASK, rng=seed, mask_ratio=ratio, word_start=table, return_spans=True)
    rebuilt, pos = [BOS], 1
    for start, width in spans:
        assert start >= pos, "spans overlap or are out of order"
        rebuilt += x[pos:start].tolist() + [MASK]
        pos = start + width
    rebuilt += x[pos:].tolist()
    assert y.tolist() == rebuilt and y.dtype == np.int64
    assert (y == MASK).sum() == len(spans) and y[0] == BOS and y[-1] == EOS
    if not words:
        assert sum(w for _, w in spans) == math.ceil(ratio * n - 1e-9)


def test_infilling_masks_30_percent_of_tokens_on_average():
    """Whole words: ⌈0.3·words⌉ words are masked, so ~30% of the tokens on average."""
    rng = np.random.default_rng(0)
    table = word_table(1000)
    fractions = []
    for _ in range(100):
        x = np.array([BOS, *rng.integers(10, 1000, 600), EOS])
        _, spans = text_infilling(x, MASK, rng=rng, word_start=table, return_spans=True)
        fractions.append(sum(w for _, w in spans) / 600)
    assert np.mean(fractions) == pytest.approx(0.3, abs=0.01)


def test_span_lengths_are_poisson_3():
    """All but the last length are Poisson(3) draws: mean 3, variance 3, P(0) = e⁻³; Σℓ = the budget."""
    lengths = poisson_span_lengths(np.random.default_rng(1), 60_000, 3.0)
    assert lengths.sum() == 60_000 and lengths[-1] >= 1
    body = lengths[:-1]
    assert body.mean() == pytest.approx(3.0, abs=0.05)
    assert body.var() == pytest.approx(3.0, abs=0.15)
    assert (body == 0).mean() == pytest.approx(math.exp(-3), abs=0.006)
    assert len(poisson_span_lengths(0, 0)) == 0


def test_infilled_spans_have_poisson_lengths_and_zero_length_spans_insert():
    """Over long documents the nonzero span widths average E[ℓ | ℓ > 0] = 3 / (1 − e⁻³) ≈ 3.16 (the
    last span of each, cut to the budget, pulls it down by ~1/300), and ~e⁻³ of the spans
    (cut last spans aside) are insertions: a [MASK] with no token missing."""
    rng = np.random.default_rng(2)
    widths, inserts, n_spans = [], 0, 0
    for _ in range(40):
        y, spans = text_infilling(doc(3000), MASK, rng=rng, return_spans=True)
        widths += [w for _, w in spans if w > 0]
        inserts += sum(w == 0 for _, w in spans)
        n_spans += len(spans)
    assert np.mean(widths) == pytest.approx(3 / (1 - math.exp(-3)), abs=0.08)
    assert inserts / n_spans == pytest.approx(math.exp(-3), abs=0.01)


# ---- token masking, deletion -----------------------------------------------------------------------

@FEW
@given(n=st.integers(0, 80), seed=st.integers(0, 2**31), p=st.sampled_from([0.0, 0.15, 0.5, 1.0]))
def test_masking_keeps_length_and_deletion_keeps_order(n, seed, p):
    x = doc(n)
    m = token_masking(x, MASK, rng=seed, p=p)
    budget = math.ceil(p * n - 1e-9)
    assert len(m) == len(x) and (m == MASK).sum() == budget
    assert ((m == x) | (m == MASK)).all() and m[0] == BOS and m[-1] == EOS
    d = token_deletion(x, rng=seed, p=p)
    assert len(d) == len(x) - budget and d[0] == BOS and d[-1] == EOS
    assert np.isin(d, x).all() and (np.diff(d[1:-1]) > 0).all()          # a subsequence, in order


def test_deletion_removes_p_of_the_tokens_uniformly():
    rng = np.random.default_rng(3)
    hits = np.zeros(40)
    for _ in range(2000):
        d = token_deletion(doc(40), rng=rng, p=0.15)
        assert len(d) == 42 - 6                                        # ⌈0.15 · 40⌉ = 6
        hits[np.setdiff1d(np.arange(10, 50), d) - 10] += 1
    assert (hits / 2000).mean() == pytest.approx(0.15) and np.allclose(hits / 2000, 0.15, atol=0.04)


# ---- sentence permutation, document rotation ------------------------------------------------------

def is_concatenation(seq, pieces):
    """Whether seq is the pieces (a multiset of tuples) concatenated in some order (backtracking)."""
    if not pieces:
        return not seq
    return any(seq[:len(p)] == p and is_concatenation(seq[len(p):], pieces[:i] + pieces[i + 1:])
               for i, p in enumerate(pieces) if p not in pieces[:i])       # equal pieces: try one


@FEW
@given(body=st.lists(st.sampled_from([STOP, 10, 11, 12, 13]), max_size=40), seed=st.integers(0, 2**31))
def test_permutation_keeps_the_multiset_of_sentences(body, seed):
    """The output is the input's sentences in some order.  (Re-splitting it gives them back only when
    the last sentence ends in a stop — an unterminated one moved forward runs into the next — and the
    first is not stops alone: moved behind another sentence, it joins that one's run of stops.)"""
    x = np.array([BOS, *body, EOS])
    y = sentence_permutation(x, STOP, rng=seed)
    assert len(y) == len(x) and y[0] == BOS and y[-1] == EOS
    assert is_concatenation(tuple(y[1:-1].tolist()), sentences(x[1:-1]))
    if not body or (body[-1] == STOP and body[0] != STOP):
        assert sorted(sentences(y[1:-1])) == sorted(sentences(x[1:-1]))


def test_permutation_shuffles():
    x = np.array([BOS, 10, STOP, 11, STOP, 12, STOP, STOP, 13, EOS])     # four sentences, one ends "..", one with no stop
    seen = {tuple(sentence_permutation(x, [STOP], rng=s)[1:-1]) for s in range(200)}
    assert len(seen) == math.factorial(4)


@FEW
@given(n=st.integers(0, 30), seed=st.integers(0, 2**31), words=st.booleans())
def test_rotation_is_a_roll(n, seed, words):
    x = doc(n)
    table = word_table(10 + n + 1, seed=seed % 7) if words else None
    y = document_rotation(x, rng=seed, word_start=table)
    assert y[0] == BOS and y[-1] == EOS and len(y) == len(x)
    ks = [k for k in range(max(n, 1)) if np.array_equal(np.roll(x[1:-1], -k), y[1:-1])]
    assert ks
    if words and n:
        assert table[y[1]] or y[1] == x[1]                              # it begins at a word start


def test_rotation_start_is_uniform():
    counts = np.bincount([document_rotation(doc(5), rng=s)[1] - 10 for s in range(3000)], minlength=5)
    assert np.allclose(counts / 3000, 0.2, atol=0.03)


# ---- seeds, ends, composition --------------------------------------------------------------------

NOISERS = {
    "token_masking": lambda x, r, **k: token_masking(x, MASK, rng=r, **k),
    "token_deletion": lambda x, r, **k: token_deletion(x, rng=r, **k),
    "text_infilling": lambda x, r, **k: text_infilling(x, MASK, rng=r, **k),
    "sentence_permutation": lambda x, r, **k: sentence_permutation(x, STOP, rng=r, **k),
    "document_rotation": lambda x, r, **k: document_rotation(x, rng=r, **k),
}


@pytest.mark.parametrize("kind", list(NOISERS))
def test_same_seed_same_output_and_ends_kept(kind):
    x = doc(60)
    x[5:-1:7] = STOP
    f = NOISERS[kind]
    assert np.array_equal(f(x, 7), f(x, 7))
    assert np.array_equal(f(x, 7), f(x, np.random.default_rng(7)))
    assert len({tuple(f(x, s)) for s in range(10)}) > 1
    outs = [f(x, s) for s in range(50)]
    assert all(y[0] == BOS and y[-1] == EOS for y in outs)
    loose = [f(x, s, keep_ends=False) for s in range(50)]
    assert any(y[0] != BOS or y[-1] != EOS or len(y) != len(x) for y in loose)
    for short in ([], [BOS], [BOS, EOS]):                               # nothing to noise between the ends
        y = f(np.array(short, np.int64), 0)
        assert y.tolist() == short and y.dtype == np.int64


def test_denoising_pair_composes_in_the_papers_order():
    x = doc(50)
    x[4:-1:9] = STOP
    source, target = denoising_pair(x, rng=11, mask_id=MASK, end_ids=[STOP])
    rng = np.random.default_rng(11)
    expected = text_infilling(sentence_permutation(x, [STOP], rng=rng), MASK, rng=rng)
    assert np.array_equal(source, expected) and np.array_equal(target, x)
    every, _ = denoising_pair(x, list(NOISERS), rng=0, mask_id=MASK, end_ids=STOP)
    assert every[0] == BOS and every[-1] == EOS and (every == MASK).any() and len(every) < len(x)


def test_bad_input_is_refused():
    x = doc(10)
    for p in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="p must be"):
            token_masking(x, MASK, rng=0, p=p)
    with pytest.raises(ValueError, match="mask_ratio"):
        text_infilling(x, MASK, rng=0, mask_ratio=2)
    with pytest.raises(TypeError, match="integer token ids, got dtype float64"):
        token_deletion(x.astype(float), rng=0)
    with pytest.raises(ValueError, match=r"1-D array \(T,\), got shape \(2, 12\)"):
        document_rotation(np.stack([x, x]), rng=0)
    with pytest.raises(TypeError, match="rng"):
        token_masking(x, MASK, rng="seed")
    with pytest.raises(TypeError, match="mask_id"):
        text_infilling(x, 3.0, rng=0)
    with pytest.raises(TypeError, match="end_ids"):
        sentence_permutation(x, [], rng=0)
    with pytest.raises(ValueError, match="word_start"):
        text_infilling(x, MASK, rng=0, word_start=np.ones(5, bool))
    with pytest.raises(ValueError, match="poisson_lambda"):
        text_infilling(x, MASK, rng=0, poisson_lambda=0)
    with pytest.raises(ValueError, match="unknown noise"):
        denoising_pair(x, ["shuffle"], rng=0)
    with pytest.raises(ValueError, match="mask_id"):
        denoising_pair(x, ["text_infilling"], rng=0)
    with pytest.raises(ValueError, match="end_ids"):
        denoising_pair(x, ["sentence_permutation"], rng=0)
    assert denoising_pair([], rng=0, mask_id=MASK, end_ids=STOP)[0].tolist() == []
