"""Sparse attention patterns: which keys each query may see (Longformer, BigBird).

Full attention lets every query see every key: T·S scores, quadratic in length.
A sparse pattern keeps a band and a few long-range links, so that each query sees
O(w + g + r·b) keys and the cost grows linearly with T.  A ``SparsePattern`` is
the union of three parts, over TOKEN positions (0 … S − P − 1, P = n_prefix):

* a sliding window, in tokens (Longformer's local attention):
      bidirectional   query t sees key s iff |s − t| ≤ w // 2
      causal          query t sees key s iff t − w < s ≤ t     (the w keys ending at t)
  or in blocks of ``block_size`` b (BigBird's): the same rule applied to the block
  numbers t // b and s // b (``window_blocks``);
* global tokens (Longformer's [CLS] and question tokens, BigBird's first g blocks):
  a global query sees every key, and every query sees the global keys;
* random blocks (BigBird): cut the positions into blocks of b; query block i also
  sees r key blocks drawn per head (see ``random_table``).

On top of the pattern, as without one: with ``causal`` nothing sees its future;
padding keys are seen by nobody; the P prefix keys (Prefix-Tuning, P1) are seen
by every query; when S − P > T the T queries are the LAST T token positions
(decoding with a cache), so query row i sits at position i + (S − P − T).

The masks, T = S = 12, '#' = visible (rows: queries, columns: keys):

    sliding(window=4)          sliding(4), causal         sliding(4, global_tokens=(0,))
    ###.........               #...........               ############
    ####........               ##..........               ####........
    #####.......               ###.........               #####.......
    .#####......               ####........               ######......
    ..#####.....               .####.......               #.#####.....
    ...#####....               ..####......               #..#####....
    ....#####...               ...####.....               #...#####...
    .....#####..               ....####....               #....#####..
    ......#####.               .....####...               #.....#####.
    .......#####               ......####..               #......#####
    ........####               .......####.               #.......####
    .........###               ........####               #........###

    bigbird(block_size=2, window_blocks=3, global_blocks=1, random_blocks=1, seed=6), head 0
    ############
    ############
    ######..##..          window: blocks i−1 … i+1
    ######..##..          global: block 0 (its rows and its columns)
    ########..##          random: one more key block per query block
    ########..##                  (rows 2-3 drew block 4, rows 4-5 block 5,
    ##..######..                  rows 8-9 block 1; the other rows drew a
    ##..######..                  block they already see, which adds nothing)
    ####..######
    ####..######
    ##......####
    ##......####

(Each picture is ``print(pattern.picture(12))``, causal=True for the second.)

``visible(T, S, ...)`` builds the equivalent dense boolean mask: the readable
reference and the composed GPU path use it, the CPU kernel visits only the key
blocks it marks (minilm.kernels.attention_cpu).
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np


_MASK64 = (1 << 64) - 1


def _uniform(seed, head, step, rows):
    """Uniform floats in [0, 1), one per entry of ``rows``: SplitMix64's finaliser on a counter
    made of (seed, head, step, row), the top 53 bits.  Counter-based, so a row's number does not
    depend on the other rows (NumPy's uint64 arithmetic wraps modulo 2⁶⁴, as the hash wants)."""
    key = (seed * 0xD1B54A32D192ED03 + head * 0xABC98388FB8FAC03 + step * 0x8CB92BA72F3D8DD7) & _MASK64
    z = rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"SparsePattern: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"SparsePattern: {name} must be ≥ {low}, got {value}")
    return int(value)


@dataclass(frozen=True)
class SparsePattern:
    """Which token keys each query sees: window ∪ global tokens ∪ random blocks (module docstring).

    window          tokens: bidirectional |s − t| ≤ window // 2, causal t − window < s ≤ t
    window_blocks   the same rule on block numbers t // block_size, s // block_size (BigBird)
                    (at most one of window, window_blocks)
    global_tokens   token positions that see, and are seen by, every position
    global_blocks   the first global_blocks blocks are global (clipped to the length)
    random_blocks   r: each query block also sees r key blocks drawn per head
    block_size      b, the block of window_blocks, global_blocks and random_blocks
    seed            the random blocks' draw (a model passes one per layer: ``with_seed``)
    """
    window: int | None = None
    window_blocks: int | None = None
    global_tokens: tuple = ()
    global_blocks: int = 0
    random_blocks: int = 0
    block_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.window is not None:
            _int("window", self.window, 1)
        if self.window_blocks is not None:
            _int("window_blocks", self.window_blocks, 1)
        if self.window is not None and self.window_blocks is not None:
            raise ValueError(f"SparsePattern: give window (tokens) or window_blocks (blocks), not both "
                             f"(got window={self.window}, window_blocks={self.window_blocks})")
        if isinstance(self.global_tokens, (str, bytes)) or not hasattr(self.global_tokens, "__iter__"):
            raise TypeError(f"SparsePattern: global_tokens must be a sequence of token positions, "
                            f"got {self.global_tokens!r}")
        tokens = tuple(_int("a global token position", t, 0) for t in self.global_tokens)
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"SparsePattern: global_tokens has repeated positions: {tokens}")
        object.__setattr__(self, "global_tokens", tuple(sorted(tokens)))
        _int("global_blocks", self.global_blocks, 0)
        _int("random_blocks", self.random_blocks, 0)
        _int("block_size", self.block_size, 1)
        _int("seed", self.seed, 0)
        if self.window is None and self.window_blocks is None and not self.global_tokens \
                and not self.global_blocks and not self.random_blocks:
            raise ValueError("SparsePattern: no window, no global tokens or blocks and no random blocks: "
                             "no query would see any key")

    # ---- constructors ------------------------------------------------------------------------

    @classmethod
    def sliding(cls, window: int, global_tokens=()) -> "SparsePattern":
        """Longformer: a window of ``window`` tokens, plus global tokens (e.g. (0,) for [CLS])."""
        return cls(window=window, global_tokens=tuple(global_tokens))

    @classmethod
    def bigbird(cls, block_size: int = 64, window_blocks: int = 3, global_blocks: int = 2,
                random_blocks: int = 3, seed: int = 0) -> "SparsePattern":
        """BigBird (ITC): a window of ``window_blocks`` blocks, the first ``global_blocks`` blocks
        global, ``random_blocks`` random key blocks per query block and head."""
        return cls(window_blocks=window_blocks, global_blocks=global_blocks, random_blocks=random_blocks,
                   block_size=block_size, seed=seed)

    def with_seed(self, seed: int) -> "SparsePattern":
        """The same pattern with another draw of random blocks (one seed per layer)."""
        return dataclasses.replace(self, seed=seed)

    # ---- what it means ---------------------------------------------------------------------------

    def check(self, n_tokens: int, name: str = "SparsePattern") -> None:
        """Refuse global tokens outside the n_tokens token positions [0, n_tokens)."""
        bad = [t for t in self.global_tokens if t >= n_tokens]
        if bad:
            raise ValueError(f"{name}: global token positions {bad} outside [0, {n_tokens}) "
                             f"(the {n_tokens} token positions of this call)")

    def global_mask(self, n_tokens: int) -> np.ndarray:
        """bool (n_tokens,): True at the global positions (tokens and the first global_blocks blocks)."""
        self.check(n_tokens)
        g = np.zeros(n_tokens, np.bool_)
        g[list(self.global_tokens)] = True
        g[:self.global_blocks * self.block_size] = True
        return g

    def random_table(self, n_heads: int, n_tokens: int, causal: bool) -> np.ndarray:
        """int64 (n_heads, n_blocks, r): the key blocks query block i sees at random, −1 = none.

        n_blocks = ceil(n_tokens / b).  For each head h and query block i, r distinct
        blocks uniform among the candidates -- all n_blocks blocks, or with ``causal``
        the blocks 0 … i (later ones would be cut by causality anyway) -- by Floyd's
        algorithm: step j draws t uniform in [0, n − r + j] and takes t, or n − r + j
        if t is taken.  The uniforms come from a counter-based generator,
        SplitMix64 of (seed, h, i, j), so row i's draw does not depend on how many rows
        there are: with ``causal`` a longer sequence keeps the blocks of a shorter one
        (decoding with a cache sees what training saw).  A row with ≤ r candidates
        takes them all (and −1 for the rest).  A drawn block may coincide with a
        window or global block, and then adds nothing.  Forward and backward of one
        call, and every call with the same pattern and length, see the same blocks."""
        r, b = self.random_blocks, self.block_size
        n_blocks = -(-n_tokens // b)
        table = np.full((n_heads, n_blocks, r), -1, np.int64)
        if r == 0 or n_blocks == 0:
            return table
        rows = np.arange(n_blocks)
        n_cand = rows + 1 if causal else np.full(n_blocks, n_blocks)       # candidates per row
        few = n_cand <= r
        for h in range(n_heads):
            out = np.empty((n_blocks, r), np.int64)
            for j in range(r):  # Floyd
                top = n_cand - r + j
                t = np.floor(_uniform(self.seed, h, j, rows) * (np.maximum(top, 0) + 1)).astype(np.int64)
                taken = (out[:, :j] == t[:, None]).any(axis=1)
                out[:, j] = np.where(taken, top, t)
            table[h] = out
            all_of = np.arange(r)[None, :]                                  # rows with ≤ r candidates
            table[h, few] = np.where(all_of < n_cand[few, None], all_of, -1)
        return table

    def visible(self, T: int, S: int, n_prefix: int = 0, causal: bool = False, n_heads: int = 1) -> np.ndarray:
        """bool (H | 1, T, S): key s is visible to query t under the pattern, the prefix and ``causal``
        (not padding: that is per batch). H = n_heads when there are random blocks, else 1."""
        n_tok = S - n_prefix
        if T > n_tok:
            raise ValueError(f"SparsePattern: {T} queries but only {n_tok} token keys; with a pattern the "
                             "queries are token positions (T ≤ S − n_prefix)")
        t = (np.arange(T) + (n_tok - T))[:, None]                            # query positions (T, 1)
        s = np.arange(n_tok)[None, :]                                        # key positions (1, n_tok)
        b = self.block_size
        vis = np.zeros((T, n_tok), np.bool_)
        if self.window is not None:
            w = self.window
            vis |= ((t - w < s) & (s <= t)) if causal else (np.abs(s - t) <= w // 2)
        if self.window_blocks is not None:
            w, tb, sb = self.window_blocks, t // b, s // b
            vis |= ((tb - w < sb) & (sb <= tb)) if causal else (np.abs(sb - tb) <= w // 2)
        g = self.global_mask(n_tok)
        vis |= g[s] | g[t]
        vis = vis[None]                                                      # (1, T, n_tok)
        if self.random_blocks:
            table = self.random_table(n_heads, n_tok, causal)                # (H, n_blocks, r)
            rows = table[:, (t // b)[:, 0], :]                               # (H, T, r)
            vis = vis | (rows[:, :, :, None] == (s // b)[None, :, None, :]).any(axis=2)
        if causal:
            vis = vis & (s <= t)
        prefix = np.ones(vis.shape[:2] + (n_prefix,), np.bool_)
        return np.concatenate([prefix, vis], axis=2)                          # (H | 1, T, S)

    def kernel_args(self, T: int, S: int, n_prefix: int, causal: bool, n_heads: int) -> tuple:
        """What the CPU kernel takes (minilm.kernels.attention_cpu, ``sparse=``):
        (window kind 0 none | 1 tokens | 2 blocks, window, block_size, is_global (S − P,) bool,
        random table (n_heads, n_blocks, r) int64)."""
        n_tok = S - n_prefix
        kind, w = (1, self.window) if self.window is not None else \
            (2, self.window_blocks) if self.window_blocks is not None else (0, 0)
        return (kind, w, self.block_size, self.global_mask(n_tok), self.random_table(n_heads, n_tok, causal))

    def picture(self, T: int, causal: bool = False, head: int = 0) -> str:
        """The T × T mask as text, '#' = visible, one row per query (for docstrings and lessons)."""
        vis = self.visible(T, T, 0, causal, head + 1)
        vis = vis[head] if vis.shape[0] > 1 else vis[0]
        return "\n".join("".join("#" if x else "." for x in row) for row in vis)
