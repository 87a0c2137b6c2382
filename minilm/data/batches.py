"""Fixed-length blocks of token ids, batched for next-token prediction.

§3.1 step 1.3 cuts the corpus into fixed-length pieces (the text says 512
tokens); step 3.1 shuffles them and feeds them in batches.  For a causal LM
(Eq. G4) a block of T + 1 consecutive ids gives T examples at once: the input
x = block[:-1] and the target y = block[1:], so y[t] is the token that
follows x[0..t].

Two ways to draw blocks:

- ``RandomBatches`` (nanoGPT style): each batch takes B random start offsets
  anywhere in the ids.  No epochs; blocks overlap across batches.  Its RNG
  state goes into a checkpoint (``state_dict``), so a resumed run draws the
  very batches the uninterrupted run would have drawn.
- ``BlockLoader``: cuts the ids once into non-overlapping blocks of T + 1
  ids (a leftover tail shorter than a block is dropped) and visits every
  block once per epoch, in a fresh shuffled order each epoch.

Both return int64 NumPy arrays of shape (B, T); wrap them with
``minilm.tensor`` (and move them to a device) in the training loop.
"""
from __future__ import annotations

import numpy as np


def _as_ids(ids, who: str) -> np.ndarray:
    arr = ids.numpy() if hasattr(ids, "numpy") and not isinstance(ids, np.ndarray) else np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{who} takes a 1-D sequence of token ids; got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{who} takes integer token ids; got dtype {arr.dtype}")
    return arr


def _positive_int(value, name: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer; got {value!r}")
    return int(value)


def _check_length(n: int, block_size: int, who: str):
    if n < block_size + 1:
        raise ValueError(f"{who}: the corpus has {n} tokens, shorter than one block of block_size + 1 = "
                         f"{block_size + 1} tokens (x needs block_size, y one more); use a longer corpus "
                         "or a smaller block_size")


class RandomBatches:
    """Batches of B blocks at random offsets: ``x, y = batches()`` or ``next(batches)``.

    x[b] = ids[i_b : i_b + T] and y[b] = ids[i_b + 1 : i_b + T + 1], with i_b
    uniform in [0, len(ids) - T - 1].
    """

    def __init__(self, ids, block_size: int, batch_size: int, seed: int = 0):
        who = "RandomBatches"
        self.ids = _as_ids(ids, who)
        self.block_size = _positive_int(block_size, "block_size", who)
        self.batch_size = _positive_int(batch_size, "batch_size", who)
        _check_length(len(self.ids), self.block_size, who)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.batches_drawn = 0
        self._window = np.arange(self.block_size + 1)

    def __call__(self):
        T = self.block_size
        starts = self.rng.integers(0, len(self.ids) - T, size=self.batch_size)   # (B,)
        blocks = self.ids[starts[:, None] + self._window].astype(np.int64)       # (B, T+1)
        self.batches_drawn += 1
        return np.ascontiguousarray(blocks[:, :-1]), np.ascontiguousarray(blocks[:, 1:])  # (B, T) each

    def __iter__(self):
        return self

    def __next__(self):
        return self()

    def state_dict(self) -> dict:
        """Plain JSON-able state: the RNG's exact position, and what it was drawing."""
        return {"seed": self.seed, "block_size": self.block_size, "batch_size": self.batch_size,
                "batches_drawn": self.batches_drawn, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict):
        """Continue from ``state``: the next batch is the one that would have followed it."""
        restore_sampler(self, state, {"block_size": self.block_size, "batch_size": self.batch_size})


def restore_sampler(sampler, state: dict, expected: dict):
    """Put a seeded batch sampler (``rng``, ``seed``, ``batches_drawn``) where ``state`` left it, after
    checking that ``state`` was saved by a sampler drawing the same things (``expected``: its fields
    that decide what a batch holds).  Nothing changes if a check fails."""
    who = type(sampler).__name__
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(f"{who} state was saved with {key}={state.get(key)!r}, this one has "
                             f"{key}={value!r}; resuming would draw different batches")
    if state["rng"].get("bit_generator") != type(sampler.rng.bit_generator).__name__:
        raise ValueError(f"{who} state holds a {state['rng'].get('bit_generator')} generator, "
                         f"not {type(sampler.rng.bit_generator).__name__}")
    sampler.rng.bit_generator.state = state["rng"]
    sampler.seed = state.get("seed", sampler.seed)
    sampler.batches_drawn = int(state.get("batches_drawn", 0))


class BlockLoader:
    """Epochs over non-overlapping blocks: ``for x, y in loader:`` is one epoch.

    Block k is ids[k (T+1) : (k+1)(T+1)].  Epoch e shuffles with a generator
    seeded by (seed, e), so any epoch can be replayed by setting ``loader.epoch``.
    """

    def __init__(self, ids, block_size: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        who = "BlockLoader"
        self.ids = _as_ids(ids, who)
        self.block_size = _positive_int(block_size, "block_size", who)
        self.batch_size = _positive_int(batch_size, "batch_size", who)
        _check_length(len(self.ids), self.block_size, who)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        T1 = self.block_size + 1
        self.n_blocks = len(self.ids) // T1
        self.blocks = self.ids[:self.n_blocks * T1].reshape(self.n_blocks, T1)   # (N, T+1), a view
        if drop_last and self.n_blocks < self.batch_size:
            raise ValueError(f"BlockLoader: the corpus has {len(self.ids)} tokens = {self.n_blocks} blocks of "
                             f"{T1}, fewer than one batch of {self.batch_size} with drop_last=True")
        self.epoch = 0

    def __len__(self):
        """Batches per epoch."""
        full, rest = divmod(self.n_blocks, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self):
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_blocks)
        else:
            order = np.arange(self.n_blocks)
        self.epoch += 1
        B = self.batch_size
        for i in range(len(self)):
            blocks = self.blocks[order[i * B:(i + 1) * B]].astype(np.int64)   # (B, T+1), B smaller at the end
            yield np.ascontiguousarray(blocks[:, :-1]), np.ascontiguousarray(blocks[:, 1:])
