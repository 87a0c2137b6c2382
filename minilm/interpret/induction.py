"""Induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads"): the data, the scores.

An induction head completes a pattern seen before in the context: at a token a whose earlier
occurrence was followed by b (… a b … a → b), it attends to that b (prefix matching) and raises
b's logit (copying).  It needs two heads in series: a previous-token head in an earlier layer
writes "the token before me was a" into the position of b; the induction head's query a matches
that key (K-composition).  So a 2-layer attention-only model can form one, a 1-layer cannot.

The data (Olsson's "repeated random tokens"): random tokens with a random segment s₁ … s_n
written twice, ``repeated_segments``.  At the second copy every token s_{i+1} (i ≥ 1) is
predictable from the first copy; at the first copy nothing is.  Scores:

  loss_by_occurrence       mean next-token loss (G4) on the copies' predictable targets:
                           first copy  ℓ₁ = mean −log p(s_{i+1} | …, s_i)   in copy 1, i = 1 … n−1
                           second copy ℓ₂ = the same in copy 2
                           ℓ₂ ≪ ℓ₁ is in-context learning of the segment; ℓ₂ ≈ ℓ₁ is none.
  prefix_matching_score    per head: mean over the queries t of the second copy of A[t, t′ + 1],
                           t′ the position of t's token in the first copy (Olsson's prefix matching)
  copying_score            per head: Olsson's eigenvalue score of the OV circuit,
                           Σλ / Σ|λ| over the eigenvalues λ of M = Ê W_V W_O Û (``heads.ov_circuit``):
                           +1 when M only copies (every λ > 0), −1 when it only suppresses

The sequences the model reads are ``batch.input_ids`` (tokens[:, :-1]) and its targets
``batch.labels`` (tokens[:, 1:]): position t predicts token t + 1, as RandomBatches' (x, y).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from ..tensor import Tensor, no_grad
from .heads import attention_probs, direct_path, gpt_of, head_ov

__all__ = ["Repeats", "repeated_segments", "prefix_matching_score", "prefix_matching_scores", "previous_token_score",
           "copying_score",
           "token_nll", "loss_by_occurrence"]


@dataclass
class Repeats:
    """A batch of sequences with one segment written two or more times.

    tokens  (B, L) int64   the sequences; the model reads tokens[:, :-1] and predicts tokens[:, 1:]
    copy    (B, L) int64   which copy of the segment a position holds: 1, 2, …; 0 for a filler (or BOS)
    source  (B, L) int64   at a position of copy c ≥ 2, the position of the same token in copy c − 1; −1 elsewhere
    """
    tokens: np.ndarray
    copy: np.ndarray
    source: np.ndarray

    @property
    def first(self) -> np.ndarray:
        """(B, L) bool: the positions of the segment's first occurrence."""
        return self.copy == 1

    @property
    def second(self) -> np.ndarray:
        """(B, L) bool: the positions of its later occurrences (the second, with copies=2)."""
        return self.copy >= 2

    @property
    def input_ids(self) -> np.ndarray:
        return self.tokens[:, :-1]                                    # (B, L − 1)

    @property
    def labels(self) -> np.ndarray:
        return self.tokens[:, 1:]                                     # (B, L − 1)

    def pair(self):
        """(input_ids, labels), the batch a Trainer takes."""
        return np.ascontiguousarray(self.input_ids), np.ascontiguousarray(self.labels)

    def targets(self, which: str) -> np.ndarray:
        """(B, L − 1) bool: input positions t whose token and next token (the target) lie in the same
        copy, the first ("first") or a later one ("second"): the targets s₂ … s_n, each predicted from
        the token before it in its copy."""
        if which not in ("first", "second"):
            raise ValueError(f"Repeats.targets: which must be 'first' or 'second', got {which!r}")
        same = (self.copy[:, :-1] == self.copy[:, 1:]) & (self.copy[:, :-1] > 0)
        return same & (self.copy[:, :-1] == 1 if which == "first" else self.copy[:, :-1] >= 2)


def _seg_range(seg_len) -> tuple[int, int]:
    lo, hi = (seg_len, seg_len) if isinstance(seg_len, (int, np.integer)) else tuple(seg_len)
    if isinstance(lo, bool) or not (2 <= int(lo) <= int(hi)):
        raise ValueError(f"repeated_segments: seg_len must be an integer ≥ 2 or a range (lo, hi) with "
                         f"2 ≤ lo ≤ hi, got {seg_len!r}")
    return int(lo), int(hi)


def repeated_segments(batch: int, seg_len, vocab: int, rng, length: int | None = None,
                      bos: int | None = None, copies: int | None = 2) -> Repeats:
    """``batch`` sequences of ``length`` tokens, each holding one random segment ``copies`` times.

    seg_len  n, or (lo, hi): each row draws n uniformly from lo … hi
    vocab    tokens are drawn from 0 … vocab − 1 (never ``bos``)
    bos      a token put at position 0 of every row (None: none)
    length   L (default: the BOS, if any, + copies·hi, i.e. [BOS] s₁…s_n s₁…s_n when n = hi)
    copies   k ≥ 2 copies of the segment; None: as many as fit in the row, ⌊(L − [BOS]) / n⌋

    A row: [BOS] f … f s₁ … s_n f … f s₁ … s_n f … f, the n segment tokens distinct (so a token's
    earlier copy is unique; needs n < vocab), the fillers f uniform over the other tokens (so a
    segment token occurs only in the copies).  The free L − [BOS] − k·n places are split at random
    into the k + 1 filler runs around the copies.  With one n and no free place every row has
    its copies at the same positions, and a head can find the earlier copy by position alone
    (attend n − 1 back): a 1-layer model can then solve the task.  Varying n (or adding fillers)
    leaves matching the token as the only way, which is what needs an induction head.
    ``rng``: a numpy Generator or a seed."""
    rng = np.random.default_rng(rng)
    lo, hi = _seg_range(seg_len)
    pool = np.array([t for t in range(int(vocab)) if t != bos], dtype=np.int64)
    if hi >= len(pool):
        raise ValueError(f"repeated_segments: a segment of {hi} distinct tokens needs more than {hi} tokens "
                         f"besides bos; vocab={vocab} has {len(pool)}")
    if copies is not None and (isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 2):
        raise ValueError(f"repeated_segments: copies must be an integer ≥ 2 or None, got {copies!r}")
    start = 0 if bos is None else 1
    k_min = 2 if copies is None else int(copies)
    L = start + k_min * hi if length is None else int(length)
    if L < start + k_min * hi:
        raise ValueError(f"repeated_segments: length {L} cannot hold {'BOS + ' if start else ''}{k_min} copies "
                         f"of {hi} tokens ({start + k_min * hi})")
    tokens = np.empty((batch, L), dtype=np.int64)
    copy = np.zeros((batch, L), dtype=np.int64)
    source = np.full((batch, L), -1, dtype=np.int64)
    for b in range(batch):
        n = int(rng.integers(lo, hi + 1))
        k = (L - start) // n if copies is None else int(copies)
        order = rng.permutation(pool)
        seg = order[:n]                                               # n distinct tokens
        cuts = np.sort(rng.integers(0, L - start - k * n + 1, size=k))   # filler before copy c: cuts[c] − cuts[c−1]
        tokens[b] = rng.choice(pool, size=L)
        if bos is not None:
            tokens[b, 0] = bos
        starts = start + cuts + n * np.arange(k)                      # copy c + 1 at starts[c] … starts[c] + n − 1
        for c, a in enumerate(starts):
            tokens[b, a:a + n] = seg
            copy[b, a:a + n] = c + 1
            if c:
                source[b, a:a + n] = np.arange(starts[c - 1], starts[c - 1] + n)   # the same tokens, one copy before
    return Repeats(tokens, copy, source)


def prefix_matching_score(probs, batch: Repeats) -> np.ndarray:
    """Olsson's prefix-matching score of every head, from attention weights.

        score_j = mean over rows b and later-copy queries t of  A_j[b, t, source[b, t] + 1]

    the weight head j puts on the token right after the previous copy of the query's token (1 for a
    perfect induction head, about 1/t for uniform attention).  ``probs``: one layer's (B, H, T, T)
    or a list of them (``attention_probs``), T ≤ L; returns (H,) or (L, H) per layer.  Queries at
    T or later (the last token, which is only a target) are left out."""
    if isinstance(probs, (list, tuple)):
        return np.stack([prefix_matching_score(p, batch) for p in probs])       # (L, H)
    A = np.asarray(probs)
    if A.ndim != 4 or A.shape[0] != batch.tokens.shape[0] or A.shape[2] != A.shape[3] or \
            A.shape[2] > batch.tokens.shape[1]:
        raise ValueError(f"prefix_matching_score: probs must be (B, H, T, T) with B = {batch.tokens.shape[0]} and "
                         f"T ≤ {batch.tokens.shape[1]}, got {A.shape}")
    T = A.shape[2]
    b, t = np.nonzero(batch.second[:, :T])                           # the queries: later-copy positions
    key = batch.source[b, t] + 1                                       # the token after the earlier copy
    if not b.size:
        raise ValueError("prefix_matching_score: the batch has no second-copy position below T")
    return A[b, :, t, key].mean(axis=0)                                # (n_queries, H) -> (H,)


def previous_token_score(probs) -> np.ndarray:
    """Per head, the mean weight a query puts on the token just before it, mean over b and t ≥ 1 of
    A_j[b, t, t − 1]: near 1 for a previous-token head, the K-composition partner of an induction
    head.  ``probs``: (B, H, T, T) or a list of them; returns (H,) or (L, H)."""
    if isinstance(probs, (list, tuple)):
        return np.stack([previous_token_score(p) for p in probs])                # (L, H)
    A = np.asarray(probs)
    if A.ndim != 4 or A.shape[2] != A.shape[3] or A.shape[2] < 2:
        raise ValueError(f"previous_token_score: probs must be (B, H, T, T) with T ≥ 2, got {A.shape}")
    t = np.arange(1, A.shape[2])
    return A[:, :, t, t - 1].mean(axis=(0, 2))                          # (B, H, T − 1) -> (H,)


def prefix_matching_scores(model, batch: Repeats) -> np.ndarray:
    """(L, H) prefix-matching scores of a GPT on ``batch`` (its attention weights on batch.input_ids)."""
    ids = Tensor(backend.to_device(np.ascontiguousarray(batch.input_ids), model.device))      # (B, L − 1)
    return prefix_matching_score(attention_probs(model, ids), batch)


def copying_score(model) -> np.ndarray:
    """(L, H): Olsson's copying score Σλ / Σ|λ| of each head's OV circuit M (``heads.ov_circuit``).

    M = (Ê W_V)(W_O Û) is (V, hs)(hs, V), so its non-zero eigenvalues are those of the hs × hs
    matrix (W_O Û)(Ê W_V): computed there, exactly, for any vocabulary.  Σλ = trace, real.
    A head whose M raises the logit of the token it attends to (positive diagonal) scores near +1."""
    gpt = gpt_of(model, "copying_score")
    out = np.zeros((gpt.config.n_layer, max(gpt.attention_shape(l)[0] for l in range(gpt.config.n_layer))))
    for l in range(gpt.config.n_layer):
        E_in, U = direct_path(gpt, l)
        for j in range(gpt.attention_shape(l)[0]):
            W_V, W_O = head_ov(gpt, l, j)
            lam = np.linalg.eigvals((W_O @ U) @ (E_in @ W_V))            # (hs,): M's non-zero eigenvalues
            total = np.abs(lam).sum()
            out[l, j] = float(lam.sum().real / total) if total > 0 else 0.0
    return out


@no_grad()
def token_nll(model, tokens) -> np.ndarray:
    """(B, L − 1) float64: −log p(tokens[b, t + 1] | tokens[b, ≤ t]) for the model reading tokens[:, :-1]."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2 or tokens.dtype.kind not in "iu":
        raise ValueError(f"token_nll: tokens must be (B, L) integer ids with L ≥ 2, got shape {tokens.shape} "
                         f"and dtype {tokens.dtype}")
    device = model.device
    x = Tensor(backend.to_device(np.ascontiguousarray(tokens[:, :-1], dtype=np.int64), device))
    z = backend.to_numpy(model(x).logits.data).astype(np.float64)      # (B, L − 1, V)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))                 # log-softmax
    return -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]   # (B, L − 1)


def loss_by_occurrence(model, batch: Repeats) -> dict:
    """{"first": ℓ₁, "second": ℓ₂, "ratio": ℓ₂ / ℓ₁}: the model's mean next-token loss (nats) on the
    predictable targets of each copy (``Repeats.targets``: s_2 … s_n from the token before)."""
    nll = token_nll(model, batch.tokens)                                # (B, L − 1)
    first, second = (float(nll[batch.targets(w)].mean()) for w in ("first", "second"))
    return {"first": first, "second": second, "ratio": second / first}
