"""Text generation: sample x_{t+1} ~ P(· | x_≤t) (Eq. G1) one token at a time.

    logits z = model(x)[last position]
    greedy:       x_{t+1} = argmax z
    temperature:  p = softmax(z / τ)           τ < 1 sharpens, τ > 1 flattens
    top-k:        keep the k largest z, renormalise
    top-p:        keep the smallest set of tokens whose probability adds to ≥ p
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import backend
from .tensor import Generator, Tensor, no_grad


def filter_logits(z: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """Sampling probabilities from logits z of shape (B, V), after temperature, top-k and top-p."""
    check_sampling(temperature, top_k, top_p)
    z = z.astype(np.float64) / temperature
    if top_k is not None:
        k = min(top_k, z.shape[-1])
        kth = np.sort(z, axis=-1)[:, -k][:, None]               # the k-th largest logit per row
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None:
        order = np.argsort(-p, axis=-1)                          # most likely first
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p         # mass of the tokens ahead of each
        keep_sorted = before < top_p                             # the top token is always kept
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def check_sampling(temperature=1.0, top_k=None, top_p=None, max_new_tokens=0):
    """Refuse settings that would sample nonsense without a word: a temperature that is not a
    positive finite number, a top_k that is not a positive integer, a top_p outside (0, 1]."""
    def real(x):
        return isinstance(x, numbers.Real) and not isinstance(x, bool)
    if not (real(temperature) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (use greedy=True for argmax), got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool) and top_k >= 1):
        raise ValueError(f"top_k must be an integer ≥ 1 (or None), got {top_k!r}")
    if top_p is not None and not (real(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")
    if not (isinstance(max_new_tokens, numbers.Integral) and not isinstance(max_new_tokens, bool)
            and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}")


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False, generator: Generator | None = None):
    """Extend ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; returns (B, T + n) int64 ids.

    The context is cropped to the model's block_size.  Seeded by ``generator``
    (a minilm.Generator), so the same seed gives the same text.  Bad settings, prompt ids
    that are not integers in [0, vocab_size), and logits that stop being finite (a diverged
    model, a NaN weight) raise errors that say which and at which step; nothing is sampled
    from NaN.
    """
    check_sampling(temperature if not greedy else 1.0, top_k, top_p, max_new_tokens)
    rng = (generator or Generator(0)).host
    block = model.config.block_size
    device = model.device
    ids = backend.to_numpy(idx.data if isinstance(idx, Tensor) else np.asarray(idx))
    if ids.dtype.kind not in "iu":
        raise TypeError(f"generate: prompt ids must be integers, got dtype {ids.dtype} (shape {ids.shape})")
    ids = ids.astype(np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"generate: the prompt must be (T,) or (B, T) ids with T ≥ 1, got shape {ids.shape}")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and ((ids < 0) | (ids >= vocab)).any():
        bad = sorted(set(ids[(ids < 0) | (ids >= vocab)].tolist()))[:5]
        raise ValueError(f"generate: prompt ids {bad} are outside the vocabulary [0, {vocab})")
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for step in range(max_new_tokens):
                context = Tensor(backend.to_device(ids[:, -block:], device))   # (B, ≤ block)
                logits = model(context).logits
                z = backend.to_numpy(logits.data[:, -1, :])                    # (B, V)
                bad_rows = np.flatnonzero(~np.isfinite(z).all(axis=-1))
                if len(bad_rows):
                    raise FloatingPointError(
                        f"generate: the model's logits are not finite at step {step} of {max_new_tokens} "
                        f"(rows {bad_rows[:8].tolist()}: {int((~np.isfinite(z)).sum())} non-finite values); "
                        "its weights or inputs hold NaN/inf, or it diverged in training")
                if greedy:
                    nxt = z.argmax(axis=-1)
                else:
                    p = filter_logits(z, temperature, top_k, top_p)
                    u = rng.random((p.shape[0], 1))
                    nxt = (p.cumsum(axis=-1) < u).sum(axis=-1).clip(max=p.shape[-1] - 1)  # inverse CDF
                ids = np.concatenate([ids, nxt[:, None].astype(np.int64)], axis=1)
    finally:
        model.train(was_training)
    return Tensor(ids)
