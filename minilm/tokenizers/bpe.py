"""Byte-level byte-pair encoding (BPE), as in GPT-2.

Why byte-level.  Every string is a sequence of UTF-8 bytes, so a vocabulary
that starts with the 256 byte values can encode ANY text — Chinese, emoji,
a character never seen in training — with no "unknown" token, and decoding is
exact: ``decode(encode(s)) == s``.  The cost is that a rare character spends
several ids (one per byte) until training gives it a token of its own.

What a merge is.  Training starts from single bytes and repeatedly finds the
adjacent pair of tokens (a, b) that occurs most often in the corpus, adds a
new token z = a+b (its bytes are a's bytes followed by b's), and rewrites
every "a b" as "z".  The list of merges, in the order they were learned (their
*rank*), is the whole tokenizer: token 256 + r is merge r.  Encoding replays
the merges on new text, lowest rank first.

Pre-splitting.  Before any merge, the text is cut into chunks with a GPT-2
like regex (contractions, optional space + letters, optional space + digits,
optional space + other symbols, runs of whitespace), and merges never cross a
chunk boundary, so " the" becomes a token but "e. T" never does.  Only the
stdlib ``re`` is used: letters are ``[^\\W\\d_]`` (Unicode word characters that
are neither decimal digits nor "_"; unlike GPT-2's ``\\p{L}`` this also
counts numeric symbols such as "²" as letters, and combining accents, which
are not word characters for ``re``, fall in "other").

Training counts incrementally.  The corpus is reduced to its distinct chunks,
each weighted by how often it occurs.  We keep, for every adjacent pair, its
weighted count and the set of chunks that contain it; a merge then rewrites
only those chunks and adjusts the counts of the pairs they touch, instead of
recounting the corpus.  The best pair comes from a heap with lazy
invalidation: an entry whose count is out of date is re-pushed with its
current count when it surfaces.  Ties go to the smallest (left id, right id),
so training is deterministic.
"""
from __future__ import annotations

import heapq
import re
import sys
import time
import warnings
from collections import Counter

import numpy as np

from .base import Tokenizer, check_id_range, ids_to_numpy, register

#: GPT-2's pre-tokenizer, in stdlib ``re``: contractions | ␣?letters | ␣?digits |
#: ␣?other symbols | whitespace not followed by a non-space (so the last space
#: of a run joins the next word) | any other whitespace.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
_SPLIT = re.compile(SPLIT_PATTERN)
_CACHE_MAX = 1 << 18  # chunk -> ids entries kept by encode


def split_chunks(text: str) -> list[str]:
    """Cut ``text`` into the chunks that merges never cross (they concatenate back to ``text``)."""
    return _SPLIT.findall(text)


def merge_pair(word: list[int], a: int, b: int, z: int) -> list[int]:
    """Replace every occurrence of the adjacent pair (a, b) in ``word`` by z, left to right."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(z)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


@register
class ByteLevelBPE(Tokenizer):
    """ids 0..255 are bytes, 256 + r is merge r, then one id per special token."""

    type_name = "byte_bpe"

    def __init__(self, merges=(), special_tokens=()):
        self.merges: list[tuple[int, int]] = []
        self.ranks: dict[tuple[int, int], int] = {}       # (left, right) -> rank
        self._bytes: list[bytes] = [bytes([i]) for i in range(256)]  # id -> bytes
        for rank, m in enumerate(merges):
            if len(m) != 2 or not all(isinstance(t, int) and 0 <= t < 256 + rank for t in m):
                raise ValueError(f"merge {rank} is {list(m)!r}; it must be two ids that exist "
                                 f"before it (0..{256 + rank - 1})")
            pair = (int(m[0]), int(m[1]))
            if pair in self.ranks:
                raise ValueError(f"merge {rank} repeats merge {self.ranks[pair]}: {list(pair)}")
            self.ranks[pair] = rank
            self.merges.append(pair)
            self._bytes.append(self._bytes[pair[0]] + self._bytes[pair[1]])
        self.special_tokens: list[str] = list(special_tokens)
        for s in self.special_tokens:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty strings; got {s!r}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special tokens repeat: {self.special_tokens!r}")
        first = 256 + len(self.merges)
        self.special_ids = {s: first + i for i, s in enumerate(self.special_tokens)}
        self._bytes.extend(s.encode("utf-8") for s in self.special_tokens)
        # longest first, so "<|a|>" is not cut short by a special token "<|a"
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token ``i`` stands for."""
        check_id_range(np.asarray([i]), self.vocab_size, "a ByteLevelBPE")
        return self._bytes[i]

    # ---- training ------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(), progress: bool = False) -> "ByteLevelBPE":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Special tokens in ``text`` are cut out first and take no part in the counts.
        Stops early (with a warning) if every chunk has become a single token.
        """
        if not isinstance(text, str):
            raise TypeError(f"ByteLevelBPE.train takes a str; got {type(text).__name__}")
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the 256 byte tokens plus "
                             f"{len(special_tokens)} special token(s)")
        tok = cls((), special_tokens)  # validates the special tokens
        pieces = tok._special_re.split(text) if tok._special_re else [text]
        chunk_counts = Counter()
        for piece in pieces:
            chunk_counts.update(_SPLIT.findall(piece))
        merges = learn_merges(chunk_counts, n_merges, progress=progress)
        if len(merges) < n_merges:
            warnings.warn(f"ByteLevelBPE.train stopped after {len(merges)} of {n_merges} merges: every "
                          f"chunk of the training text is already one token (vocab_size "
                          f"{256 + len(merges) + len(special_tokens)} instead of {vocab_size})")
        return cls(merges, special_tokens)

    # ---- text -> ids -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Special tokens atomically; everything else chunk by chunk, merges replayed by rank."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str; got {type(text).__name__}")
        ids: list[int] = []
        try:
            if self._special_re is None:
                self._encode_ordinary(text, ids)
            else:
                pos = 0
                for m in self._special_re.finditer(text):
                    self._encode_ordinary(text[pos:m.start()], ids)
                    ids.append(self.special_ids[m.group()])
                    pos = m.end()
                self._encode_ordinary(text[pos:], ids)
        except UnicodeEncodeError:
            i = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
            raise ValueError(f"text has a lone surrogate U+{ord(text[i]):04X} at position {i}; it is "
                             "not a character and has no UTF-8 bytes to encode") from None
        return ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def _encode_ordinary(self, text: str, out: list[int]):
        cache = self._cache
        for chunk in _SPLIT.findall(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._bpe(chunk.encode("utf-8"))
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[chunk] = ids
            out.extend(ids)

    def _bpe(self, data: bytes) -> list[int]:
        """Apply merges to one chunk: repeatedly merge the present pair of lowest rank."""
        word = list(data)
        ranks = self.ranks
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: ranks.get(p, 1 << 62))
            rank = ranks.get(best)
            if rank is None:
                break
            word = merge_pair(word, best[0], best[1], 256 + rank)
        return word

    # ---- ids -> text -----------------------------------------------------------------------
    def decode(self, ids, errors: str = "replace") -> str:
        """Concatenate the tokens' bytes and read them as UTF-8.

        Any ``encode`` output decodes exactly; an arbitrary id sequence may cut a
        character's bytes apart, and ``errors="replace"`` then shows U+FFFD.
        """
        arr = ids_to_numpy(ids)
        check_id_range(arr, self.vocab_size, "a ByteLevelBPE")
        table = self._bytes
        return b"".join([table[i] for i in arr.tolist()]).decode("utf-8", errors=errors)

    # ---- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": self.type_name, "merges": [list(m) for m in self.merges],
                "special_tokens": list(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "ByteLevelBPE":
        merges, specials = d["merges"], d.get("special_tokens", [])
        if not isinstance(merges, list) or not all(isinstance(m, list) for m in merges):
            raise ValueError("\"merges\" must be a list of [left id, right id] pairs")
        if not isinstance(specials, list):
            raise ValueError("\"special_tokens\" must be a list of strings")
        return cls(merges, specials)


def learn_merges(chunk_counts, n_merges: int, progress: bool = False) -> list[tuple[int, int]]:
    """The incremental BPE trainer: ``chunk_counts`` maps each distinct chunk (str) to its frequency.

    State: ``words[w]`` is chunk w as a list of token ids, ``freqs[w]`` its count;
    ``pair_count[p]`` is Σ over chunks of freq × occurrences of p; ``where[p]``
    the set of chunks holding p.  Merging p touches only ``where[p]``.
    """
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    pair_count: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (word, f) in enumerate(zip(words, freqs)):
        for p in zip(word, word[1:]):
            pair_count[p] = pair_count.get(p, 0) + f
            where.setdefault(p, set()).add(w)
    heap = [(-c, p) for p, c in pair_count.items()]  # min-heap on (-count, pair): ties -> smallest pair
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    token_bytes = [bytes([i]) for i in range(256)]  # only for the progress lines
    every = max(1, n_merges // 20)
    start = time.perf_counter()
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        count = pair_count.get(pair, 0)
        if count != -neg:  # stale: counts of old pairs only fall, so re-file it at its current count
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        z = 256 + len(merges)
        merges.append(pair)
        a, b = pair
        token_bytes.append(token_bytes[a] + token_bytes[b])
        touched, born = set(), set()
        for w in where.pop(pair):
            word, f = words[w], freqs[w]
            new = merge_pair(word, a, b, z)
            old_pairs = list(zip(word, word[1:]))
            new_pairs = list(zip(new, new[1:]))
            for p in old_pairs:
                pair_count[p] -= f
            for p in new_pairs:
                pair_count[p] = pair_count.get(p, 0) + f
            old_set, new_set = set(old_pairs), set(new_pairs)
            for p in old_set - new_set:
                if p != pair:
                    where[p].discard(w)
            for p in new_set - old_set:  # these all contain z: they are new pairs
                where.setdefault(p, set()).add(w)
                born.add(p)
            touched.update(old_set)
            words[w] = new
        for p in touched:
            if pair_count.get(p, 0) <= 0:
                pair_count.pop(p, None)
                where.pop(p, None)
        for p in born:
            heapq.heappush(heap, (-pair_count[p], p))
        if progress and (len(merges) % every == 0 or len(merges) == n_merges):
            print(f"bpe: merge {len(merges)}/{n_merges} ({time.perf_counter() - start:.1f}s): "
                  f"{list(pair)} -> {z} {token_bytes[z]!r}, count {-neg}", file=sys.stderr, flush=True)
    return merges
