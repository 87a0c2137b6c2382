"""Greedy and beam-search decoding for any model that gives log P(next token | prefix) row by row.

The model is a function, so the search knows nothing of tensors or caches:

    step(last_tokens, state) -> (log_probs, state)
        last_tokens  (N,) int   the token each row has just appended (at first: the start token)
        log_probs    (N, V)     log P(y_t = v | y_<t) for each row, float
        state                   whatever the model keeps (a key/value cache, encoder outputs …)
    reorder(state, beam_idx) -> state
        beam_idx     (N,) int   new row i continues old row beam_idx[i]: select the cache rows

Rows are batch-major: N = B·K, row b·K + k is beam k of batch item b.

Beam search (Eq. D1–D4), the semantics of Hugging Face transformers 5.x ``_beam_search``
(``generation/utils.py``, read for version 5.24; it is the vectorised rewrite of 4.50):

    s_k = 0 for k = 0,  −∞ for k > 0          only beam 0 is live at first, so beams differ  (D1)
    for t = 1 … T (T = max_new_tokens; t = tokens generated once this step is taken):
        a[k, v] = s_k + log P(v | y_k)                                   K·V candidates per item
        C = the 2K best (k, v) by a                                      (D2)
        a candidate is *done* if v = eos or t = T
        finished ← the K best of finished ∪ {y_k v : (k, v) ∈ first K of C, done}, each scored
            score(y) = Σ log P / |y|^α      |y| = t, the generated tokens incl. eos, start excluded  (D3)
        running ← the K best not-done candidates of C; reorder(state, their source rows)
        an item stops taking finished hypotheses when
            early_stopping=True:    it holds K of them
            early_stopping=False:   it holds K and  s_best / t^α ≤ min finished score          (D4)
            early_stopping="never": it holds K and  s_best / L^α ≤ min finished score,
                                    L = T if α > 0 else t   (the best length a running beam could reach)
    stop at t = T, or when no item takes finished hypotheses any more, or when every candidate is done.
    Answer: the best finished hypothesis per item, eos included if generated.

α = ``length_penalty``: α > 0 favours longer outputs (the sum of log-probabilities is divided by
a growing length), α < 0 shorter ones, α = 0 compares raw sums.  |y| in D3 counts the generated
tokens including eos (transformers ≥ 4.38 divides by ``cur_len + 1 − decoder_prompt_len``; older
versions divided by the length of the hypothesis *with* the start token and *without* eos, the
same number for a one-token decoder prompt).  K = 1 is greedy decoding (:func:`greedy_search`).

One deliberate difference: transformers marks dead beams and finished candidates with −1e9, which
can let those placeholders into the finished list when V < 2K or every candidate is −∞; here they
are −∞ and a hypothesis with a score of −∞ is never kept.  Where no placeholder is chosen (V ≥ 2K,
finite log-probabilities) the two searches agree; tests/test_decoding.py checks it against
transformers' own ``generate``.
"""
from __future__ import annotations

import numbers

import numpy as np


def _check_int(name, value, low):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _start_ids(start_ids) -> np.ndarray:
    start = np.asarray(start_ids)
    if start.dtype.kind not in "iu" or start.ndim != 1 or start.size == 0:
        raise ValueError(f"start_ids must be a non-empty 1-D integer array (B,), "
                         f"got shape {start.shape} dtype {start.dtype}")
    return start.astype(np.int64)


def _log_probs(out, n_rows, t):
    logp = np.asarray(out, dtype=np.float64)
    if logp.ndim != 2 or logp.shape[0] != n_rows:
        raise ValueError(f"step must return log-probabilities of shape (N={n_rows}, V), got {logp.shape}")
    if np.isnan(logp).any() or np.isposinf(logp).any():
        raise FloatingPointError(f"step returned NaN or +inf log-probabilities at step {t}")
    return logp


def _top(a, k):
    """Column indices of the k largest entries of each row of a (B, M), best first; ties: lower index first."""
    k = min(k, a.shape[1])
    part = np.argpartition(-a, k - 1, axis=1)[:, :k] if k < a.shape[1] else np.tile(np.arange(k), (len(a), 1))
    order = np.lexsort((part, -np.take_along_axis(a, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def greedy_search(step, start_ids, *, max_new_tokens: int, eos_id: int | None, state=None,
                  min_new_tokens: int = 0) -> list[list[int]]:
    """y_t = argmax_v log P(v | y_<t) until eos or ``max_new_tokens``; one list per item, eos included.

    eos is forbidden (log P = −∞) while fewer than ``min_new_tokens`` tokens have been generated,
    as transformers' MinNewTokensLengthLogitsProcessor does.  Finished rows keep being fed to
    ``step`` (their token is ignored) so that the batch stays rectangular.
    """
    start = _start_ids(start_ids)
    _check_int("max_new_tokens", max_new_tokens, 0)
    _check_int("min_new_tokens", min_new_tokens, 0)
    out = [[] for _ in start]
    done = np.zeros(len(start), bool)
    tokens = start
    for t in range(1, max_new_tokens + 1):
        logp, state = step(tokens, state)
        logp = _log_probs(logp, len(start), t)
        if eos_id is not None and t <= min_new_tokens:
            logp[:, eos_id] = -np.inf
        tokens = logp.argmax(axis=1)
        for b in np.flatnonzero(~done):
            out[b].append(int(tokens[b]))
        if eos_id is not None:
            done |= tokens == eos_id
        if done.all():
            break
    return out


def beam_search(step, start_ids, *, num_beams: int, max_new_tokens: int, eos_id: int | None,
                pad_id: int | None = None, length_penalty: float = 1.0, early_stopping=True,
                reorder=None, state=None, min_new_tokens: int = 0, return_scores: bool = False,
                as_array: bool = False):
    """Beam search (Eq. D1–D4 of the module docstring) over ``step``; the best hypothesis per item.

    start_ids        (B,) int: the decoder start token of each item; it is fed first, not returned
    num_beams        K; K = 1 gives greedy decoding
    max_new_tokens   T: at most T tokens are generated; beams still running at T are scored as they are
    eos_id           the end-of-sequence id (None: every hypothesis runs to T)
    pad_id           fills the short rows when ``as_array`` (required then)
    length_penalty   α of D3: score = Σ log P / |y|^α
    early_stopping   True, False or "never" (D4)
    reorder          reorder(state, beam_idx (N,)) -> state after every step; None if the state
                     needs no reordering (it is the same for every beam of an item, or None)
    state            the model's initial state, passed to the first ``step``
    min_new_tokens   eos is forbidden (log P = −∞) until this many tokens are generated
    Returns a list of B lists of ids (eos included if generated); with ``return_scores`` the pair
    (sequences, scores (B,) float64, the D3 score of each); with ``as_array`` the sequences are one
    (B, max length) int64 array padded with ``pad_id``.
    """
    start = _start_ids(start_ids)
    _check_int("num_beams", num_beams, 1)
    _check_int("max_new_tokens", max_new_tokens, 0)
    _check_int("min_new_tokens", min_new_tokens, 0)
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if as_array and pad_id is None:
        raise ValueError("as_array=True needs a pad_id to fill the short rows")
    B, K = len(start), num_beams
    alpha = float(length_penalty)

    running = np.zeros((B, K, 0), np.int64)                   # (B, K, t) generated tokens of each beam
    scores = np.full((B, K), -np.inf)                          # s_k: summed log-probabilities   (D1)
    scores[:, 0] = 0.0
    finished = [[] for _ in range(B)]                          # per item: [(D3 score, tokens)], best first
    accepting = np.ones(B, bool)                               # still takes finished hypotheses (D4)
    tokens = np.repeat(start, K)                               # (N,)
    for t in range(1, max_new_tokens + 1):
        logp, state = step(tokens, state)
        logp = _log_probs(logp, B * K, t)
        V = logp.shape[1]
        if eos_id is not None and t <= min_new_tokens:
            logp[:, eos_id] = -np.inf
        a = (scores[:, :, None] + logp.reshape(B, K, V)).reshape(B, K * V)     # (B, K·V)
        top = _top(a, 2 * K)                                                  # (B, 2K)      (D2)
        top_scores = np.take_along_axis(a, top, axis=1)
        src, tok = top // V, top % V                                          # beam k, token v
        cand = np.concatenate([np.take_along_axis(running, src[:, :, None], axis=1), tok[:, :, None]],
                              axis=2)                                         # (B, 2K, t)
        done = np.full(tok.shape, t == max_new_tokens) | (tok == eos_id if eos_id is not None else False)

        for b in np.flatnonzero(accepting):                                   # D3
            new = [(float(top_scores[b, j]) / t ** alpha, cand[b, j].tolist())
                   for j in range(K) if done[b, j] and np.isfinite(top_scores[b, j])]
            if new:
                finished[b] = sorted(finished[b] + new, key=lambda h: -h[0])[:K]

        live = np.where(done, -np.inf, top_scores)
        keep = _top(live, K)                                                  # (B, K) the best not done
        scores = np.take_along_axis(live, keep, axis=1)
        running = np.take_along_axis(cand, keep[:, :, None], axis=1)
        beam_idx = np.take_along_axis(src, keep, axis=1) + K * np.arange(B)[:, None]   # (B, K) old rows

        full = np.array([len(f) == K for f in finished])
        if early_stopping is True:
            accepting &= ~full
        else:                                                                 # D4
            best_len = max_new_tokens if early_stopping == "never" and alpha > 0 else t
            worst = np.array([f[-1][0] if f else -np.inf for f in finished])
            accepting &= ~(full & (scores[:, 0] / best_len ** alpha <= worst))
        if not accepting.any() or done.all() or t == max_new_tokens:
            break
        if reorder is not None:
            state = reorder(state, beam_idx.reshape(B * K))
        tokens = running[:, :, -1].reshape(B * K)

    seqs = [f[0][1] if f else [] for f in finished]
    best = np.array([f[0][0] if f else (0.0 if max_new_tokens == 0 else -np.inf) for f in finished])
    if as_array:
        arr = np.full((B, max((len(s) for s in seqs), default=0)), pad_id, np.int64)
        for b, s in enumerate(seqs):
            arr[b, :len(s)] = s
        seqs = arr
    return (seqs, best) if return_scores else seqs
