"""Masked-LM inputs (§3.1 step 3): choose ~15% of the tokens, hide them, keep the originals as labels.

§3.1 step 3 of the course describes pretraining as masking 15% of the tokens and
predicting them.  That is BERT's masked language model (Devlin et al. 2019), the
objective of an *encoder* that sees both sides of every position
(``minilm.models.bert``) — not GPT's causal LM (G4), which predicts every next
token and needs no masking.  BERT's recipe, which ``mask_tokens`` implements:

1. choose a fraction ``prob`` = 15% of the real tokens (never [CLS], [SEP], [PAD]
   or other ``special_ids``, never padding);
2. of the chosen tokens, replace 80% (``mask_frac``) by [MASK], 10%
   (``random_frac``) by a random token, and leave 10% unchanged;
3. labels hold the original id at the chosen positions and −100 everywhere else,
   so ``F.cross_entropy(logits, labels)`` (ignore_index=−100) scores only those.

Why not always [MASK]: [MASK] never occurs at fine-tuning time; the 10% random and
10% unchanged tokens make the model keep a good representation of *every* input
token, since it cannot tell which ones it will be asked about.

Choosing (``prob``).  Plain token masking chooses each real token independently
with probability ``prob`` (dynamic masking as in RoBERTa / Hugging Face's
``DataCollatorForLanguageModeling``): on average 15%.  The unit policies below fill
a budget per sequence instead, n = max(1, round(prob · real tokens)) as BERT's
``create_pretraining_data.py`` does, because their units have different sizes.

Unit policies:

* ``whole_word`` — a boolean array like ``ids``, True where a token starts a word
  (WordPiece: pieces not starting with "##", :func:`word_starts`).  Words are
  chosen whole, in random order, while they fit in the budget (BERT's whole-word
  masking).  The 80/10/10 draw is still made per token, as BERT does.
* ``span`` — SpanBERT (Joshi et al. 2020): repeatedly draw a span length
  ℓ ~ Geometric(p) truncated at ``max_len`` (SpanBERT: p = 0.2, max 10, mean 3.8),
  a random start, and mask ℓ contiguous units (words if ``whole_word`` is given, else
  tokens) until the budget is spent; a span that would overlap a chosen one is
  redrawn, one that would overshoot is cut to the budget.  ``span=True`` means
  (0.2, 10); or pass ``(p, max_len)`` or ``{"p": …, "max_len": …}``.  The 80/10/10
  draw is made per span (all [MASK], all random, or all kept), as SpanBERT does.
* ``phrases`` — ERNIE's entity/phrase-level masking (Sun et al. 2019) as a span
  policy: ``phrases`` is a list of token-id sequences (known entities or phrases).
  Their occurrences in the input (found left to right, longest first, never
  overlapping, made of real tokens only) are masked as units first, in random order
  while they fit the budget; then the rest of the budget is filled with random
  units (tokens or words, or spans with ``span``), among which a phrase left over
  is still one unit — a phrase is masked whole or not at all.  80/10/10 per phrase.

All randomness comes from ``rng`` (a ``numpy.random.Generator`` or a seed), so the
same seed gives the same masks.
"""
from __future__ import annotations

import numpy as np

from .. import backend

IGNORE_INDEX = -100
SPAN_DEFAULT = (0.2, 10)     # SpanBERT's geometric p and maximum span length


def word_starts(pieces) -> np.ndarray:
    """True where a WordPiece piece starts a word (it does not begin with "##"), for a list of
    pieces or a nested list / array of them (e.g. tokenizer.convert_ids_to_tokens per row)."""
    arr = np.asarray(pieces, dtype=object)
    return np.vectorize(lambda p: not str(p).startswith("##"), otypes=[bool])(arr) if arr.size else \
        np.zeros(arr.shape, bool)


def sample_span_lengths(rng, n: int, p: float = SPAN_DEFAULT[0], max_len: int = SPAN_DEFAULT[1]) -> np.ndarray:
    """n span lengths ℓ ~ Geometric(p) on {1, …, max_len}, truncated (renormalised) at max_len:

        P(ℓ = k) = p (1−p)^(k−1) / (1 − (1−p)^max_len),   k = 1 … max_len

    SpanBERT's ℓ ~ Geo(0.2) "clipped" at 10, whose mean is 3.8 (:func:`expected_span_length`).
    Drawn by inverting the CDF: ℓ = ⌈log(1 − u (1 − (1−p)^max_len)) / log(1−p)⌉, u ~ U(0, 1)."""
    rng = _rng(rng)
    if not 0.0 < p <= 1.0 or int(max_len) < 1:
        raise ValueError(f"sample_span_lengths: need 0 < p ≤ 1 and max_len ≥ 1, got p={p}, max_len={max_len}")
    if p == 1.0:
        return np.ones(n, np.int64)
    q = 1.0 - p
    u = rng.random(n)
    k = np.ceil(np.log1p(-u * (1.0 - q ** max_len)) / np.log(q))
    return np.clip(k, 1, max_len).astype(np.int64)


def expected_span_length(p: float = SPAN_DEFAULT[0], max_len: int = SPAN_DEFAULT[1]) -> float:
    """E[ℓ] of :func:`sample_span_lengths`: Σₖ k p (1−p)^(k−1) / (1 − (1−p)^max_len), k ≤ max_len
    (3.797 for SpanBERT's p = 0.2, max_len = 10)."""
    q = 1.0 - p
    ks = np.arange(1, int(max_len) + 1)
    return float((ks * p * q ** (ks - 1)).sum() / (1.0 - q ** max_len))


def find_phrases(seq, phrases, allowed=None):
    """Non-overlapping occurrences of ``phrases`` (token-id sequences) in ``seq``, scanning left to
    right and taking the longest phrase that matches at each position; an occurrence must lie
    on ``allowed`` positions only (real, non-special tokens).  Returns a list of (start, end)."""
    seq = np.asarray(seq)
    n = len(seq)
    allowed = np.ones(n, bool) if allowed is None else np.asarray(allowed, bool)
    by_first = {}
    for ph in phrases:
        ph = tuple(int(t) for t in ph)
        if not ph:
            raise ValueError("find_phrases: an empty phrase")
        by_first.setdefault(ph[0], set()).add(ph)
    cands = {k: sorted(v, key=len, reverse=True) for k, v in by_first.items()}
    out, i = [], 0
    while i < n:
        hit = None
        for ph in cands.get(int(seq[i]), ()):
            j = i + len(ph)
            if j <= n and allowed[i:j].all() and tuple(int(t) for t in seq[i:j]) == ph:
                hit = (i, j)
                break
        if hit:
            out.append(hit)
            i = hit[1]
        else:
            i += 1
    return out


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"mask_tokens: rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def _host(x, name, dtype=None):
    if x is None:
        return None
    if hasattr(x, "data") and backend.is_array(getattr(x, "data")):     # a minilm Tensor
        x = x.data
    arr = backend.to_numpy(x) if backend.is_array(x) else np.asarray(x)
    return arr if dtype is None else arr.astype(dtype)


def _span_args(span):
    if span is True:
        return SPAN_DEFAULT
    if isinstance(span, dict):
        unknown = set(span) - {"p", "max_len"}
        if unknown:
            raise ValueError(f"mask_tokens: unknown span options {sorted(unknown)} (use p, max_len)")
        p, max_len = span.get("p", SPAN_DEFAULT[0]), span.get("max_len", SPAN_DEFAULT[1])
    else:
        p, max_len = span
    if not 0.0 < p <= 1.0 or int(max_len) < 1:
        raise ValueError(f"mask_tokens: span needs 0 < p ≤ 1 and max_len ≥ 1, got p={p}, max_len={max_len}")
    return float(p), int(max_len)


def _units(cand_row, starts_row):
    """The candidate positions of one sequence grouped into units: [array of positions], contiguous.
    Without word starts every candidate is its own unit; with them a word is a start and the
    non-start pieces after it, cut wherever a non-candidate (special, padding) intervenes."""
    pos = np.flatnonzero(cand_row)
    if starts_row is None:
        return [pos[i:i + 1] for i in range(len(pos))]
    units, cur = [], []
    for p in pos:
        if cur and (starts_row[p] or p != cur[-1] + 1):
            units.append(np.array(cur))
            cur = []
        cur.append(p)
    if cur:
        units.append(np.array(cur))
    return units


def _fill_units(rng, units, free, budget, chosen_groups, as_unit=None):
    """Choose whole units in random order while they fit in the budget; returns the budget left.
    ``as_unit[i]``: unit i takes one 80/10/10 draw (a phrase) rather than one per token."""
    for u in rng.permutation(len(units)):
        if budget <= 0:
            break
        pos = units[u]
        if len(pos) <= budget and free[pos].all():
            free[pos] = False
            chosen_groups.append((pos, bool(as_unit[u]) if as_unit is not None else False))
            budget -= len(pos)
    return budget


def _fill_spans(rng, units, free_units, free, budget, chosen_groups, p, max_len, max_tries=1000):
    """SpanBERT: spans of ℓ ~ Geo(p) ≤ max_len consecutive units at random starts until the budget is spent."""
    n = len(units)
    tries = 0
    while budget > 0 and free_units.any() and tries < max_tries:
        tries += 1
        length = int(min(sample_span_lengths(rng, 1, p, max_len)[0], n))
        start = int(rng.integers(0, n - length + 1))
        idx = np.arange(start, start + length)
        for j in range(1, len(idx)):                     # a span never jumps over a special token
            if units[idx[j]][0] != units[idx[j - 1]][-1] + 1:
                idx = idx[:j]
                break
        if not free_units[idx].all():
            continue                                     # overlaps a chosen unit or phrase: draw again
        pos = np.concatenate([units[i] for i in idx])
        if len(pos) > budget:                            # overshoots: cut to the budget (whole units)
            keep, total = [], 0
            for i in idx:
                if total + len(units[i]) > budget:
                    break
                keep.append(i)
                total += len(units[i])
            if not keep:
                continue
            idx = np.array(keep)
            pos = np.concatenate([units[i] for i in idx])
        free_units[idx] = False
        free[pos] = False
        chosen_groups.append((pos, True))
        budget -= len(pos)
    return budget


def mask_tokens(ids, vocab_size: int, mask_id: int, special_ids=(), rng=None, prob: float = 0.15,
                mask_frac: float = 0.8, random_frac: float = 0.1, attention_mask=None, whole_word=None,
                span=None, phrases=None):
    """BERT's masked-LM corruption: ``inputs, labels = mask_tokens(ids, V, mask_id, special_ids, rng)``.

    ids             (B, T) or (T,) integer token ids (NumPy array, list or minilm Tensor)
    vocab_size      V: random replacements are drawn uniformly from [0, V) minus special_ids and mask_id
    mask_id         the [MASK] token id
    special_ids     ids never chosen ([CLS], [SEP], [PAD], [MASK], [UNK] …)
    rng             numpy.random.Generator or int seed
    prob            fraction of real tokens chosen (15%)
    mask_frac       of the chosen: replaced by [MASK] (80%)
    random_frac     of the chosen: replaced by a random token (10%); the rest (10%) kept
    attention_mask  (like ids) 1 = real token, 0 = padding (never chosen)
    whole_word      (like ids) bool, True where a token starts a word: mask whole words
    span            True, (p, max_len) or {"p", "max_len"}: SpanBERT span masking
    phrases         list of token-id sequences: ERNIE phrase/entity masking first
    Returns (inputs, labels), int64 NumPy arrays shaped like ids: inputs with the chosen
    tokens corrupted, labels = the original id where chosen and −100 elsewhere.
    See the module docstring for the policies.
    """
    rng = _rng(rng)
    arr = _host(ids, "ids")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"mask_tokens: ids must be integer token ids, got dtype {arr.dtype}")
    squeeze = arr.ndim == 1
    if arr.ndim not in (1, 2):
        raise ValueError(f"mask_tokens: ids must be (batch, time) or (time,), got shape {arr.shape}")
    x = arr.reshape(1, -1) if squeeze else arr
    x = x.astype(np.int64)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mask_tokens: prob must be in [0, 1], got {prob}")
    if mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1.0 + 1e-12:
        raise ValueError(f"mask_tokens: need mask_frac, random_frac ≥ 0 with mask_frac + random_frac ≤ 1, "
                         f"got {mask_frac} and {random_frac}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_tokens: mask_id={mask_id} is outside the vocabulary [0, {vocab_size})")
    if x.size and (x.min() < 0 or x.max() >= vocab_size):
        raise ValueError(f"mask_tokens: ids must be in [0, {vocab_size}); found {x.min() if x.min() < 0 else x.max()}")

    def like_ids(a, name, dtype):
        a = _host(a, name, dtype)
        if a is None:
            return None
        a = a.reshape(1, -1) if squeeze and a.ndim == 1 else a
        if a.shape != x.shape:
            raise ValueError(f"mask_tokens: {name} of shape {a.shape} does not match ids {x.shape}")
        return a

    am = like_ids(attention_mask, "attention_mask", None)
    starts = like_ids(whole_word, "whole_word", bool)
    special = np.asarray(sorted({int(s) for s in special_ids}), dtype=np.int64)
    cand = ~np.isin(x, special)                                   # (B, T): may be chosen
    if am is not None:
        cand &= am != 0
    span_args = _span_args(span) if span is not None and span is not False else None

    chosen = np.zeros(x.shape, bool)
    group = np.full(x.shape, -1, np.int64)                        # which 80/10/10 draw a chosen token follows
    plain = starts is None and span_args is None and not phrases
    if plain:                                                     # independent Bernoulli(prob) per token
        chosen = cand & (rng.random(x.shape) < prob)
        group[chosen] = np.arange(int(chosen.sum()))
    else:
        n_groups = 0
        for b in range(x.shape[0]):
            n_cand = int(cand[b].sum())
            if n_cand == 0 or prob == 0.0:
                continue
            budget = max(1, int(round(prob * n_cand)))
            free = cand[b].copy()
            groups = []                                            # (positions, drawn as one unit?)
            in_phrase = np.zeros(x.shape[1], bool)
            rest = []                                              # phrase occurrences not taken in the first pass
            if phrases:
                occ = [np.arange(s, e) for s, e in find_phrases(x[b], phrases, cand[b])]
                for o in occ:
                    in_phrase[o] = True
                budget = _fill_units(rng, occ, free, budget, groups, [True] * len(occ))   # ERNIE: phrases first
                rest = [o for o in occ if free[o].all()]
            # the rest of the budget: words / tokens outside every phrase, and the phrases left over,
            # still as whole units (a phrase is never partly masked)
            base = [u for u in _units(cand[b], None if starts is None else starts[b]) if not in_phrase[u].any()]
            units = sorted(base + rest, key=lambda u: int(u[0]))
            is_phrase = [bool(in_phrase[u[0]]) for u in units]
            if span_args is not None:
                free_units = np.ones(len(units), bool)
                _fill_spans(rng, units, free_units, free, budget, groups, *span_args)
            else:
                _fill_units(rng, units, free, budget, groups, is_phrase)
            for pos, as_unit in groups:
                chosen[b, pos] = True
                if as_unit:
                    group[b, pos] = n_groups
                    n_groups += 1
                else:                                              # per-token draw (BERT's whole-word masking)
                    group[b, pos] = n_groups + np.arange(len(pos))
                    n_groups += len(pos)
        group[~chosen] = -1

    labels = np.where(chosen, x, IGNORE_INDEX).astype(np.int64)
    inputs = x.copy()
    n_draws = int(group.max()) + 1 if chosen.any() else 0
    u = rng.random(n_draws)                                       # one uniform per unit
    decision = u[group[chosen]]                                   # (n_chosen,)
    to_mask = decision < mask_frac
    to_random = (decision >= mask_frac) & (decision < mask_frac + random_frac)
    pos = np.nonzero(chosen)
    vals = inputs[pos]
    vals[to_mask] = mask_id
    if to_random.any():
        pool = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.append(special, mask_id))
        if pool.size == 0:
            raise ValueError("mask_tokens: every id is special; no random replacement is possible")
        vals[to_random] = rng.choice(pool, size=int(to_random.sum()))
    inputs[pos] = vals
    if squeeze:
        return inputs[0], labels[0]
    return inputs, labels
