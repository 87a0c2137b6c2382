"""BART's noising functions (Lewis et al. 2020, §2.2): corrupt a document, train to restore it.

BART is pretrained as a denoising autoencoder: the encoder reads a corrupted document x̃ = noise(x),
the decoder is trained to give back the original x (cross-entropy on every target token).  §2.2
lists five corruptions; each function below is one of them, on a 1-D array of token ids:

    token_masking         random tokens → [MASK]                                   (as BERT, no 80/10/10)
    token_deletion        random tokens removed; the model must find *where* input is missing
    text_infilling        spans with lengths ℓ ~ Poisson(λ = 3) are each replaced by ONE [MASK];
                          ℓ = 0 inserts a [MASK]; the model must find how many tokens are missing
    sentence_permutation  the sentences (split after full stops) are shuffled
    document_rotation     the document is rotated to begin at a token chosen uniformly at random

The paper's best model (BART-large, §5.1) combines text infilling, masking 30% of the tokens, with
sentence permutation; :func:`denoising_pair` composes any of them in the order fairseq's
``DenoisingDataset`` applies them: permutation, masking/deletion/infilling, rotation.

Budgets: a function that noises a fraction p of n units noises exactly ⌈p·n⌉ of them (as fairseq
does), so a short line still gets one.  Units are tokens, or whole words when ``word_start`` is
given: a boolean table over the vocabulary, True for ids that begin a word (byte-level BPE: pieces
starting with "Ġ"; WordPiece: :func:`minilm.data.word_starts` of the vocabulary in id order).  A table
indexed by id, not a mask over positions, because it stays valid after the ids have been moved.

``keep_ends=True`` keeps the first and last token (<s> … </s>) where they are and never noises them.
Every function takes ``rng`` (a ``numpy.random.Generator`` or an int seed): the same seed gives the
same corruption.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .mlm import _host

NOISES = ("sentence_permutation", "token_masking", "token_deletion", "text_infilling", "document_rotation")


def _ids(ids, fn) -> np.ndarray:
    x = _host(ids, "ids")
    if x.size == 0:
        return np.zeros(0, np.int64)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{fn}: ids must be integer token ids, got dtype {x.dtype} (shape {x.shape})")
    if x.ndim != 1:
        raise ValueError(f"{fn}: ids must be one document, a 1-D array (T,), got shape {x.shape}")
    return x.astype(np.int64)


def _generator(rng, fn) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"{fn}: rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def _rate(p, name, fn) -> float:
    if not (isinstance(p, numbers.Real) and not isinstance(p, bool) and 0.0 <= p <= 1.0):
        raise ValueError(f"{fn}: {name} must be a number in [0, 1], got {p!r}")
    return float(p)


def _token_id(i, name, fn) -> int:
    if not (isinstance(i, numbers.Integral) and not isinstance(i, bool)):
        raise TypeError(f"{fn}: {name} must be an integer token id, got {i!r}")
    return int(i)


def _budget(p: float, n: int) -> int:
    """⌈p·n⌉, forgiving the rounding error of p·n (0.15 · 100 = 15.000000000000002)."""
    return min(n, math.ceil(p * n - 1e-9))


def _split_ends(x, keep_ends):
    """(head, body, tail): the protected first and last token and the ids between them."""
    if keep_ends:
        return x[:1], x[1:-1], x[1:][-1:]
    return x[:0], x, x[:0]


def _word_units(body, word_start, fn) -> list[np.ndarray]:
    """The body cut into units: one per token, or one per word (a word start and the pieces after it)."""
    if word_start is None:
        return [body[i:i + 1] for i in range(len(body))]
    table = np.asarray(word_start, bool)
    if table.ndim != 1 or (len(body) and body.max() >= len(table)) or (len(body) and body.min() < 0):
        raise ValueError(f"{fn}: word_start must be a (V,) bool table over the vocabulary covering every id; "
                         f"got shape {table.shape} for ids in [{body.min()}, {body.max()}]")
    starts = table[body].copy()
    if len(body):
        starts[0] = True                                 # a body that begins mid-word begins a unit
    return np.split(body, np.flatnonzero(starts)[1:])


def token_masking(ids, mask_id: int, *, rng, p: float = 0.15, keep_ends: bool = True) -> np.ndarray:
    """§2.2 token masking: ⌈p·n⌉ of the n tokens, chosen uniformly without replacement, become
    ``mask_id``; the length is unchanged.  (BERT's 80/10/10 variant is :func:`minilm.data.mask_tokens`.)"""
    fn = "token_masking"
    x, mask_id, p, rng = _ids(ids, fn), _token_id(mask_id, "mask_id", fn), _rate(p, "p", fn), _generator(rng, fn)
    head, body, tail = _split_ends(x, keep_ends)
    body = body.copy()
    body[rng.choice(len(body), _budget(p, len(body)), replace=False)] = mask_id
    return np.concatenate([head, body, tail])


def token_deletion(ids, *, rng, p: float = 0.15, keep_ends: bool = True) -> np.ndarray:
    """§2.2 token deletion: ⌈p·n⌉ of the n tokens, chosen uniformly without replacement, are removed;
    what is left keeps its order."""
    fn = "token_deletion"
    x, p, rng = _ids(ids, fn), _rate(p, "p", fn), _generator(rng, fn)
    head, body, tail = _split_ends(x, keep_ends)
    keep = np.ones(len(body), bool)
    keep[rng.choice(len(body), _budget(p, len(body)), replace=False)] = False
    return np.concatenate([head, body[keep], tail])


def poisson_span_lengths(rng, budget: int, poisson_lambda: float = 3.0) -> np.ndarray:
    """Span lengths ℓ₁, ℓ₂, … ~ Poisson(λ), P(ℓ = k) = λᵏ e^(−λ) / k!, drawn until Σℓ ≥ budget; the last
    is cut so that Σℓ = budget exactly (it is then ≥ 1).  Zeros are kept: each is an inserted [MASK].
    All but the last are plain Poisson draws: mean λ, P(ℓ = 0) = e^(−λ)."""
    rng = _generator(rng, "poisson_span_lengths")
    if not poisson_lambda > 0:
        raise ValueError(f"poisson_span_lengths: poisson_lambda must be > 0, got {poisson_lambda!r}")
    lengths = np.zeros(0, np.int64)
    while lengths.sum() < budget:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, budget)])
    if budget <= 0:
        return lengths
    total = np.cumsum(lengths)
    last = int(np.searchsorted(total, budget))            # the first span that reaches the budget
    lengths = lengths[:last + 1].copy()
    lengths[last] = budget - (total[last - 1] if last else 0)
    return lengths


def text_infilling(ids, mask_id: int, *, rng, mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                   word_start=None, keep_ends: bool = True, return_spans: bool = False):
    """§2.2 text infilling: spans covering ⌈mask_ratio·n⌉ of the n units (tokens, or words with
    ``word_start``) are each replaced by a single ``mask_id``; a zero-length span inserts one.

    Span lengths come from :func:`poisson_span_lengths` (Poisson(λ = 3), Σℓ = the budget).  The spans
    are placed at random without overlapping: the n − Σℓ kept units and the k spans are laid out in a
    uniformly random order (k of the n − Σℓ + k slots are spans, in shuffled order), so there is exactly
    one [MASK] per span and the output has n − Σℓ kept units + k masks.  (fairseq starts spans at random
    word starts and lets them overlap, merging some; the masked fraction is the same.)

    ``return_spans``: also return the spans as (start, length) pairs in token positions of ``ids``,
    in order; a span of length 0 is a [MASK] inserted before token ``start``.
    """
    fn = "text_infilling"
    x, mask_id = _ids(ids, fn), _token_id(mask_id, "mask_id", fn)
    mask_ratio, rng = _rate(mask_ratio, "mask_ratio", fn), _generator(rng, fn)
    head, body, tail = _split_ends(x, keep_ends)
    units = _word_units(body, word_start, fn)
    n = len(units)
    lengths = rng.permutation(poisson_span_lengths(rng, _budget(mask_ratio, n), poisson_lambda))
    k = len(lengths)
    is_span = np.zeros(n - int(lengths.sum()) + k, bool)
    is_span[rng.choice(len(is_span), k, replace=False)] = True

    out, spans, u, pos = [head], [], 0, len(head)          # u: next unit, pos: its first token in ids
    spans_left = iter(lengths)
    for slot in is_span:
        if slot:
            ell = int(next(spans_left))
            width = sum(len(w) for w in units[u:u + ell])
            out.append(np.array([mask_id]))
            spans.append((pos, width))
            u, pos = u + ell, pos + width
        else:
            out.append(units[u])
            u, pos = u + 1, pos + len(units[u])
    out.append(tail)
    noised = np.concatenate(out).astype(np.int64)
    return (noised, spans) if return_spans else noised


def sentence_permutation(ids, end_ids, *, rng, keep_ends: bool = True) -> np.ndarray:
    """§2.2 sentence permutation: the document is cut into sentences after every full stop (a run of
    ids in ``end_ids``, e.g. the ids of ".", "!", "?"; a run like "?!" stays with its sentence; the
    text after the last stop is a sentence too) and the sentences are put in a random order."""
    fn = "sentence_permutation"
    x, rng = _ids(ids, fn), _generator(rng, fn)
    ends = np.atleast_1d(np.asarray(end_ids))
    if ends.size == 0 or ends.dtype.kind not in "iu":
        raise TypeError(f"{fn}: end_ids must be one or more integer token ids, got {end_ids!r}")
    head, body, tail = _split_ends(x, keep_ends)
    stop = np.isin(body, ends)
    cut = np.flatnonzero(stop[:-1] & ~stop[1:]) + 1        # after the last stop of each run
    sentences = np.split(body, cut)
    order = rng.permutation(len(sentences))
    return np.concatenate([head, *[sentences[i] for i in order], tail])


def document_rotation(ids, *, rng, word_start=None, keep_ends: bool = True) -> np.ndarray:
    """§2.2 document rotation: a token c is chosen uniformly at random and the document is rotated to
    begin with it, x̃ = (x_c, …, x_n, x_1, …, x_{c−1}) = np.roll(x, −c); with ``word_start`` c is a word
    start, so no word is cut in two."""
    fn = "document_rotation"
    x, rng = _ids(ids, fn), _generator(rng, fn)
    head, body, tail = _split_ends(x, keep_ends)
    if len(body) == 0:
        return x.copy()
    starts = np.cumsum([0] + [len(u) for u in _word_units(body, word_start, fn)])[:-1]
    c = int(rng.choice(starts))
    return np.concatenate([head, np.roll(body, -c), tail])


def denoising_pair(ids, kinds=("text_infilling", "sentence_permutation"), *, rng, mask_id=None, end_ids=None,
                   word_start=None, mask_p: float = 0.15, delete_p: float = 0.15, mask_ratio: float = 0.3,
                   poisson_lambda: float = 3.0, keep_ends: bool = True):
    """(source, target) for denoising pretraining: source = the noises in ``kinds`` applied to ``ids``
    in the order of :data:`NOISES` (permutation, masking, deletion, infilling, rotation), target = ``ids``.

    The default is the paper's final recipe: text infilling (30%, λ = 3) + sentence permutation.
    ``mask_id`` is needed by token_masking and text_infilling, ``end_ids`` by sentence_permutation.
    """
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in NOISES]
    if unknown:
        raise ValueError(f"denoising_pair: unknown noise {unknown}; choose from {list(NOISES)}")
    if mask_id is None and {"token_masking", "text_infilling"} & set(kinds):
        raise ValueError("denoising_pair: token_masking and text_infilling need a mask_id")
    if end_ids is None and "sentence_permutation" in kinds:
        raise ValueError("denoising_pair: sentence_permutation needs end_ids (the full-stop ids)")
    target = _ids(ids, "denoising_pair")
    rng = _generator(rng, "denoising_pair")
    x = target.copy()
    for kind in NOISES:
        if kind not in kinds:
            continue
        if kind == "sentence_permutation":
            x = sentence_permutation(x, end_ids, rng=rng, keep_ends=keep_ends)
        elif kind == "token_masking":
            x = token_masking(x, mask_id, rng=rng, p=mask_p, keep_ends=keep_ends)
        elif kind == "token_deletion":
            x = token_deletion(x, rng=rng, p=delete_p, keep_ends=keep_ends)
        elif kind == "text_infilling":
            x = text_infilling(x, mask_id, rng=rng, mask_ratio=mask_ratio, poisson_lambda=poisson_lambda,
                               word_start=word_start, keep_ends=keep_ends)
        else:
            x = document_rotation(x, rng=rng, word_start=word_start, keep_ends=keep_ends)
    return x, target
