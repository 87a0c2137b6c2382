"""The fused CPU attention kernel (minilm.kernels.attention_cpu) against plain references.

The references, in float64: a NumPy one written here (matmul → mask → stable softmax →
matmul, and its hand-derived backward) always, and PyTorch autograd when torch is
importable. The kernel must match them to 1e-10 in float64 and to 1e-5 (relative to the
largest entry) in float32, for forward (o, lse) and all three gradients, over the shapes
and masks that matter: T = 1, T not a multiple of the block size, S > T (causal decoding
with a cache), more queries than keys, D = 1, D = 128, Dv ≠ D, BH = 1, causal or not,
key padding of a different length per batch, a Prefix-Tuning prefix (Eq. P1) with and
without causality, and rows that see no key at all (o = 0, lse = −inf, zero gradient).
"""
import itertools
import math

import numba
import numpy as np
import pytest

from minilm.kernels import attention_cpu

try:
    import torch
except Exception:  # not installed, or a broken install: the NumPy reference still runs
    torch = None

DTYPES = (np.float64, np.float32)


# ---- references ------------------------------------------------------------------------------

def visibility(B, H, T, S, n_prefix, causal, key_padding):
    """(B·H, T, S) bool: key s is visible to query t (the rule in attention_cpu's docstring)."""
    s = np.arange(S)[None, :]
    t = np.arange(T)[:, None]
    main = s >= n_prefix
    vis = np.ones((T, S), bool)
    if causal:
        vis &= ~main | (s - n_prefix <= t + (S - n_prefix - T))
    vis = np.broadcast_to(vis, (B, T, S)).copy()
    if key_padding is not None:
        pad = np.zeros((B, S), bool)
        pad[:, n_prefix:] = np.asarray(key_padding, bool)
        vis &= ~pad[:, None, :]
    return np.repeat(vis, H, axis=0)


def numpy_reference(q, k, v, do, scale, vis):
    """float64 o, lse, dq, dk, dv of masked softmax attention; rows with nothing visible give 0."""
    q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
    s = np.where(vis, q @ k.transpose(0, 2, 1) * scale, -np.inf)       # (BH, T, S)
    live = vis.any(axis=-1, keepdims=True)                               # (BH, T, 1)
    m = np.where(live, s.max(axis=-1, keepdims=True), 0.0)
    e = np.exp(s - m)                                                    # 0 where masked
    z = e.sum(axis=-1, keepdims=True)
    p = np.where(live, e / np.where(live, z, 1.0), 0.0)
    o = p @ v
    lse = np.where(live, m + np.log(np.where(live, z, 1.0)), -np.inf)[..., 0]
    dv = p.transpose(0, 2, 1) @ do                                       # Pᵀ dO
    dp = do @ v.transpose(0, 2, 1)                                       # dO Vᵀ
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))                 # softmax's VJP
    dq = ds @ k * scale
    dk = ds.transpose(0, 2, 1) @ q * scale
    return o, lse, dq, dk, dv


def torch_reference(q, k, v, do, scale, vis):
    """The same through torch autograd, float64."""
    tq, tk, tv = (torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (q, k, v))
    tvis = torch.tensor(vis)
    live = tvis.any(dim=-1, keepdim=True)
    s = (tq @ tk.transpose(1, 2) * scale).masked_fill(~tvis, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s.masked_fill(~live, 0.0), dim=-1) * live         # a row with nothing visible → 0
    o = p @ tv
    o.backward(torch.tensor(np.asarray(do, np.float64)))
    return tuple(x.detach().numpy() for x in (o, lse, tq.grad, tk.grad, tv.grad))


# ---- helpers -------------------------------------------------------------------------------------

def make_case(B, H, T, S_main, D, Dv=None, n_prefix=0, pad_lengths=None, dtype=np.float64, seed=0, sharp=1.0):
    """Inputs (q, k, v, do) and key_padding: pad_lengths[b] trailing main keys of batch b are padding."""
    Dv = D if Dv is None else Dv
    S = n_prefix + S_main
    rng = np.random.default_rng(seed)
    q = (sharp * rng.standard_normal((B * H, T, D))).astype(dtype)
    k = rng.standard_normal((B * H, S, D)).astype(dtype)
    v = rng.standard_normal((B * H, S, Dv)).astype(dtype)
    do = rng.standard_normal((B * H, T, Dv)).astype(dtype)
    key_padding = None
    if pad_lengths is not None:
        key_padding = np.zeros((B, S_main), bool)
        for b, n in enumerate(pad_lengths):
            if n:
                key_padding[b, S_main - n:] = True
    return q, k, v, do, key_padding


def assert_close(name, got, want, dtype):
    """float64: 1e-10; float32: 1e-5 relative to the largest entry of the reference."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert not np.isnan(got).any(), f"{name}: NaN in the kernel's result"
    inf = np.isinf(want)
    assert np.array_equal(np.isinf(got), inf) and np.array_equal(got[inf], want[inf]), \
        f"{name}: the -inf entries differ"
    if (~inf).any():
        g, w = got[~inf], want[~inf]
        tol = 1e-10 if dtype == np.float64 else 1e-5
        err = np.max(np.abs(g - w)) / (np.max(np.abs(w)) + 1.0)
        assert err <= tol, f"{name} ({np.dtype(dtype).name}): max |diff| / (max |ref| + 1) = {err:.2e} > {tol:.0e}"


def run_and_compare(q, k, v, do, key_padding, H, n_prefix, causal, scale=None):
    BH, T, D = q.shape
    S = k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    o, lse = attention_cpu.forward(q, k, v, scale, causal, n_prefix, key_padding, H)
    dq, dk, dv = attention_cpu.backward(q, k, v, o, lse, do, scale, causal, n_prefix, key_padding, H)
    got = (o, lse, dq, dk, dv)
    assert all(x.dtype == q.dtype for x in got), [x.dtype for x in got]
    vis = visibility(BH // H, H, T, S, n_prefix, causal, key_padding)
    refs = {"numpy": numpy_reference(q, k, v, do, scale, vis)}
    if torch is not None and q.dtype == np.float64:
        refs["torch"] = torch_reference(q, k, v, do, scale, vis)
    for ref_name, ref in refs.items():
        for name, g, w in zip(("o", "lse", "dq", "dk", "dv"), got, ref):
            assert_close(f"{name} vs {ref_name}", g, w, q.dtype)
    return got, vis


# ---- the cases ---------------------------------------------------------------------------------------

# every combination of causal × prefix × key padding × cache (S > T), on a shape whose T and S
# are not multiples of the block size
COMBOS = list(itertools.product((False, True), (0, 3), (None, "ragged"), (False, True)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("causal,n_prefix,padding,cache", COMBOS,
                         ids=[f"{'causal' if c else 'full'}-prefix{p}-{pd or 'nopad'}-{'cache' if ca else 'square'}"
                              for c, p, pd, ca in COMBOS])
def test_every_mask_combination(dtype, causal, n_prefix, padding, cache):
    B, H, T, D = 2, 2, 70, 16
    S_main = T + 61 if cache else T
    pad = [0, 9] if padding else None
    q, k, v, do, key_padding = make_case(B, H, T, S_main, D, n_prefix=n_prefix, pad_lengths=pad, dtype=dtype)
    run_and_compare(q, k, v, do, key_padding, H, n_prefix, causal)


SHAPES = [
    # (B, H, T, S_main, D, Dv, n_prefix, causal, pad_lengths)
    (1, 1, 1, 1, 1, None, 0, True, None),           # BH = 1, T = S = D = 1
    (1, 2, 1, 100, 8, None, 0, True, None),         # T = 1 decoding with a cache of 100 keys
    (2, 1, 1, 40, 8, None, 4, True, [0, 7]),        # T = 1 with a prefix and padding
    (1, 1, 130, 130, 128, None, 0, True, None),     # D = 128, T not a multiple of the block
    (1, 1, 130, 150, 128, None, 5, False, [3]),     # D = 128, full attention, prefix, padding
    (2, 3, 64, 64, 32, None, 0, True, None),        # T exactly one block
    (1, 2, 200, 200, 1, None, 0, True, None),       # D = 1, several blocks
    (2, 2, 77, 190, 24, 40, 2, True, [5, 60]),      # Dv != D, cache, prefix, ragged padding
    (3, 2, 129, 257, 16, None, 0, True, [0, 64, 128]),  # blocks that are all padding are skipped
    (1, 2, 90, 30, 8, None, 0, True, None),         # more queries than keys: the first 60 see nothing
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("B,H,T,S_main,D,Dv,n_prefix,causal,pad", SHAPES,
                         ids=[f"B{s[0]}H{s[1]}T{s[2]}S{s[3]}D{s[4]}Dv{s[5] or s[4]}P{s[6]}{'c' if s[7] else 'f'}"
                              f"{'pad' if s[8] else ''}" for s in SHAPES])
def test_shapes(dtype, B, H, T, S_main, D, Dv, n_prefix, causal, pad):
    q, k, v, do, key_padding = make_case(B, H, T, S_main, D, Dv, n_prefix, pad, dtype)
    run_and_compare(q, k, v, do, key_padding, H, n_prefix, causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_rows_with_no_visible_key(dtype):
    """Batch 1 is all padding (and there is no prefix), and with T > S causal queries
    before the first key see nothing: o = 0, lse = −inf, no NaN, and exactly zero gradient."""
    B, H, T, S_main = 2, 2, 40, 30
    q, k, v, do, key_padding = make_case(B, H, T, S_main, 8, pad_lengths=[3, S_main], dtype=dtype)
    (o, lse, dq, dk, dv), vis = run_and_compare(q, k, v, do, key_padding, H, 0, True)
    dead = ~vis.any(axis=-1)                                            # (BH, T)
    assert dead[H:].all() and dead[:H, :T - S_main].all() and not dead[:H, T - S_main:].any()
    assert np.all(o[dead] == 0) and np.all(lse[dead] == -np.inf) and np.all(dq[dead] == 0)
    assert np.all(dk[H:] == 0) and np.all(dv[H:] == 0)                  # keys nobody sees
    for x in (o, dq, dk, dv):
        assert np.isfinite(x).all()
    # uint8 padding means the same as bool
    o8, lse8 = attention_cpu.forward(q, k, v, 0.3, True, 0, key_padding.astype(np.uint8), H)
    o1, lse1 = attention_cpu.forward(q, k, v, 0.3, True, 0, key_padding, H)
    assert np.array_equal(o8, o1) and np.array_equal(lse8, lse1)


def test_sharp_attention_float32():
    """Scores × 50: almost every exp underflows (the kernel flushes it to 0 instead of making
    subnormals); results stay finite and match float64. float32 itself rounds scores of
    size ~|s| to ~|s|·6e-8, so the tolerance is 1e-4 here."""
    B, H, T, D = 1, 2, 150, 32
    q, k, v, do, _ = make_case(B, H, T, T, D, dtype=np.float32, sharp=50.0)
    scale = 1.0 / math.sqrt(D)
    o, lse = attention_cpu.forward(q, k, v, scale, True, 0, None, H)
    dq, dk, dv = attention_cpu.backward(q, k, v, o, lse, do, scale, True, 0, None, H)
    vis = visibility(B, H, T, T, 0, True, None)
    ref = numpy_reference(q, k, v, do, scale, vis)
    gap = np.where(vis, q.astype(np.float64) @ k.transpose(0, 2, 1) * scale, -np.inf)
    gap -= gap.max(axis=-1, keepdims=True)
    assert np.mean(gap[vis] < attention_cpu.FLUSH_BELOW) > 0.5           # it is sharp
    for name, g, w in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, dq, dk, dv), ref):
        assert np.isfinite(g).all(), name
        err = np.max(np.abs(g - w)) / (np.max(np.abs(w)) + 1.0)
        assert err <= 1e-4, f"{name}: {err:.2e}"


def test_threads_do_not_change_the_result():
    """Each batch·head is done by one worker in the same order whatever the thread count,
    so 1 thread and all of them give bit-identical results."""
    q, k, v, do, key_padding = make_case(3, 2, 100, 120, 16, n_prefix=2, pad_lengths=[0, 5, 50], dtype=np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            o, lse = attention_cpu.forward(q, k, v, 0.25, True, 2, key_padding, 2)
            results.append((o, lse) + attention_cpu.backward(q, k, v, o, lse, do, 0.25, True, 2, key_padding, 2))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


def test_lse_dtype_and_scale_argument():
    """lse comes back in the input dtype; scale is any Python or NumPy number."""
    q, k, v, do, _ = make_case(1, 2, 10, 10, 4, dtype=np.float32)
    o, lse = attention_cpu.forward(q, k, v, np.float32(0.7), False, 0, None, 2)
    assert o.dtype == lse.dtype == np.float32 and lse.shape == (2, 10)
    o2, lse2 = attention_cpu.forward(q, k, v, 0.7, False, 0, None, 2)
    assert np.array_equal(o, o2) and np.array_equal(lse, lse2)


def test_bad_inputs_name_the_problem():
    q, k, v, do, _ = make_case(2, 1, 5, 6, 4, dtype=np.float32)
    with pytest.raises(TypeError, match="float64 but q is float32"):
        attention_cpu.forward(q, k.astype(np.float64), v, 1.0, True, 0, None, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        attention_cpu.forward(q, np.asfortranarray(k), v, 1.0, True, 0, None, 1)
    with pytest.raises(ValueError, match="key_padding has shape"):
        attention_cpu.forward(q, k, v, 1.0, True, 0, np.zeros((2, 5), bool), 1)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        attention_cpu.forward(q, k, v, 1.0, True, 0, None, 3)
    with pytest.raises(ValueError, match="n_prefix"):
        attention_cpu.forward(q, k, v, 1.0, True, 7, None, 1)
