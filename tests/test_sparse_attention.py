"""Sparse attention patterns (Longformer's sliding window and global tokens, BigBird's blocks):
F.scaled_dot_product_attention(..., pattern=p) -- the Numba kernel on "cpu", which visits only
the key blocks the pattern shows, the composed path on "strict"/"cuda" -- against the readable
reference with the pattern's dense mask (p.visible), forward and all three gradients
(float64: 1e-12, float32: 1e-6, relative to the largest entry), plus gradient checks, the
pattern's own meaning on hand-drawn masks, its random draw, and its argument checks."""
import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, to_tensor

SP = F.SparsePattern

# (name, pattern, B, H, T, S_extra, n_prefix, pad lengths per batch or None)
CASES = [
    ("sliding-T67", SP.sliding(16), 2, 2, 67, 0, 0, [0, 11]),            # odd length, padding inside windows
    ("sliding-w1", SP.sliding(1), 1, 2, 67, 0, 0, None),                   # window 1: itself only
    ("sliding-wider-than-T", SP.sliding(300, (0, 66)), 1, 2, 67, 0, 0, [5]),  # dense, globals at 0 and T − 1
    ("longformer-T130", SP.sliding(40, (0, 129)), 2, 2, 130, 0, 3, [0, 70]),  # globals at the edges, a prefix
    ("longformer-cache", SP.sliding(24, (2, 100)), 1, 2, 67, 63, 2, [9]),  # S > T: queries are the last T
    ("bigbird-b16", SP.bigbird(16, 3, 2, 3, seed=7), 2, 3, 130, 0, 0, [0, 40]),  # random blocks per head
    ("bigbird-b64-cache", SP.bigbird(64, 3, 1, 2, seed=3), 1, 2, 130, 70, 4, None),  # tile-sized blocks
    ("global+random-only", SP(global_tokens=(3, 66), random_blocks=2, block_size=5), 2, 2, 67, 0, 0, [0, 67]),
    # 70 global keys: the kernel's gathered block in two chunks (64 + 6), partly inside visited tiles
    ("gathered-globals-70", SP.sliding(16, tuple(range(70))), 1, 2, 300, 0, 2, [9]),
    # a global query inside a tile: runs of 5 and 1 rows that take several key tiles per product
    ("global-mid-tile", SP.sliding(24, (5, 200)), 2, 1, 260, 10, 0, [0, 30]),
]                                                                        # ^ batch 1 all padding: rows see nothing


def _inputs(B, H, T, S_extra, n_prefix, pad_lengths, dtype, device, D=8, seed=0):
    rng = np.random.default_rng(seed)
    S_tok = T + S_extra
    S = n_prefix + S_tok
    arrays = (rng.standard_normal((B, H, T, D)), rng.standard_normal((B, H, S, D)), rng.standard_normal((B, H, S, D)))
    tensors = [to_tensor(a.astype(dtype), device, requires_grad=True) for a in arrays]
    pad = None
    if pad_lengths is not None:                               # the last n keys of batch b are padding
        pad = to_tensor(np.arange(S_tok)[None, :] >= S_tok - np.array(pad_lengths)[:, None], device)
    g = to_tensor(rng.standard_normal((B, H, T, D)).astype(dtype), device)
    return tensors, pad, g


def _run(fn, tensors, pad, g, **kw):
    for t in tensors:
        t.grad = None
    out = fn(*tensors, key_padding_mask=pad, **kw)
    out.backward(g)
    return [host(out)] + [host(t.grad) for t in tensors]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name, pattern, B, H, T, S_extra, n_prefix, pad", CASES, ids=[c[0] for c in CASES])
def test_pattern_equals_the_reference_with_its_mask(name, pattern, B, H, T, S_extra, n_prefix, pad, causal,
                                                    dtype, tol, device):
    tensors, kpm, g = _inputs(B, H, T, S_extra, n_prefix, pad, dtype, device)
    kw = dict(causal=causal, n_prefix=n_prefix, pattern=pattern)
    fused = _run(F.scaled_dot_product_attention, tensors, kpm, g, **kw)
    ref = _run(F.scaled_dot_product_attention_reference, tensors, kpm, g, **kw)
    for what, a, b in zip(("output", "dq", "dk", "dv"), fused, ref):
        assert a.dtype == dtype and np.isfinite(a).all(), what
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=f"{name} {what}")
    if pad is not None and max(pad) == T + S_extra:            # a batch that is all padding: zeros
        dead = int(np.argmax(pad))
        assert (fused[0][dead] == 0).all() and (fused[1][dead] == 0).all()


def test_the_pattern_changes_the_result(device):
    """The pattern is applied (the comparison above would also pass if both ignored it)."""
    tensors, _, _ = _inputs(1, 2, 67, 0, 0, None, np.float64, device)
    dense = host(F.scaled_dot_product_attention(*tensors))
    band = host(F.scaled_dot_product_attention(*tensors, pattern=SP.sliding(8)))
    assert np.abs(dense - band).max() > 0.1
    wide = host(F.scaled_dot_product_attention(*tensors, pattern=SP.sliding(2 * 67 + 1)))
    np.testing.assert_allclose(wide, dense, rtol=0, atol=1e-12)   # a window wider than T is dense


@pytest.mark.parametrize("pattern", [SP.sliding(6, (0,)), SP.bigbird(4, 3, 1, 2, seed=1)], ids=["longformer", "bigbird"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_gradcheck_with_a_pattern(pattern, causal, device):
    tensors, pad, _ = _inputs(2, 2, 13, 3, 2, [0, 4], np.float64, device, D=3)
    minilm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal, key_padding_mask=pad,
                                                                    n_prefix=2, pattern=pattern), tensors)


def test_blocks_outside_the_pattern_are_never_read():
    """Keys no query can see (S ≫ T, a window) are NaN: the CPU kernel never visits their blocks,
    so the result is finite and equals attention over the keys that are seen."""
    T, S_tok, w = 70, 700, 16
    tensors, _, _ = _inputs(1, 2, T, S_tok - T, 0, None, np.float64, "cpu")
    q, k, v = (host(t) for t in tensors)
    seen = S_tok - T - w                                      # the first key any query sees
    k[:, :, :seen - 64], v[:, :, :seen - 64] = np.nan, np.nan  # leave the one partly seen tile finite
    args = [minilm.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*args, causal=True, pattern=SP.sliding(w))
    out.sum().backward()
    assert np.isfinite(out.data).all() and np.isfinite(args[0].grad.data).all()
    assert (args[1].grad.data[:, :, :seen] == 0).all()
    tail = [minilm.tensor(q)] + [minilm.tensor(a[:, :, seen:]) for a in (k, v)]
    want = F.scaled_dot_product_attention_reference(*tail, causal=True, pattern=SP.sliding(w))
    np.testing.assert_allclose(out.data, want.data, rtol=0, atol=1e-12)


# ---- what a pattern means -----------------------------------------------------------------------

def _draw(text):
    return np.array([[c == "#" for c in row] for row in text.split()])


def test_sliding_window_masks():
    assert (SP.sliding(4).visible(6, 6)[0] == _draw("""###... ####.. #####. .##### ..#### ...###""")).all()
    assert (SP.sliding(3).visible(6, 6, causal=True)[0] == _draw("""#..... ##.... ###... .###.. ..###. ...###""")).all()
    assert (SP.sliding(1).visible(4, 4)[0] == np.eye(4, dtype=bool)).all()
    glob = SP.sliding(2, global_tokens=(0, 5)).visible(6, 6)[0]
    assert (glob == _draw("""###### ###..# ####.# #.#### #..### ######""")).all()


def test_prefix_and_cache_rows():
    """The prefix is seen by all; with S − P > T the queries are the last T token positions."""
    vis = SP.sliding(2).visible(2, 2 + 5, n_prefix=2)[0]        # T = 2 queries at positions 3 and 4
    assert (vis == _draw("""##..### ##...##""")).all()


def test_bigbird_blocks_and_random_draw():
    p = SP.bigbird(block_size=2, window_blocks=3, global_blocks=1, random_blocks=1, seed=6)
    assert p.picture(12).splitlines()[2:5] == ["######..##.."] * 2 + ["########..##"]  # the docstring's picture
    table = SP.bigbird(4, 3, 1, 3, seed=5).random_table(n_heads=4, n_tokens=130, causal=False)
    assert table.shape == (4, 33, 3) and table.min() >= 0 and table.max() < 33
    assert all(len(set(row)) == 3 for row in table.reshape(-1, 3))  # distinct blocks in each row
    assert not (table[0] == table[1]).all()                          # each head draws its own
    again = SP.bigbird(4, 3, 1, 3, seed=5).random_table(4, 130, False)
    assert (table == again).all()                                     # a function of the seed
    assert not (SP.bigbird(4, 3, 1, 3, seed=6).random_table(4, 130, False) == table).all()
    causal = SP.bigbird(4, 3, 1, 3, seed=5).random_table(2, 130, True)
    for i, row in enumerate(causal[0]):                              # causal: blocks 0 … i only
        drawn = row[row >= 0]
        assert len(drawn) == min(3, i + 1) and drawn.max() <= i and len(set(drawn)) == len(drawn)
    longer = SP.bigbird(4, 3, 1, 3, seed=5).random_table(2, 4 * 100, True)
    assert (longer[:, :causal.shape[1]] == causal).all()             # causal: a longer sequence keeps the draw
    counts = np.bincount(SP.bigbird(4, 3, 1, 1, seed=0).random_table(1, 4 * 2000, False)[0, :, 0], minlength=2000)
    assert counts.max() < 12                                          # uniform-ish over the 2000 blocks


def test_bad_patterns_name_the_problem():
    with pytest.raises(ValueError, match="window must be ≥ 1"):
        SP.sliding(-3)
    with pytest.raises(ValueError, match="window must be ≥ 1"):
        SP.sliding(0)
    with pytest.raises(TypeError, match="window must be an int"):
        SP.sliding(2.5)
    with pytest.raises(ValueError, match="block_size must be ≥ 1"):
        SP.bigbird(block_size=0)
    with pytest.raises(ValueError, match="random_blocks must be ≥ 0"):
        SP.bigbird(random_blocks=-1)
    with pytest.raises(ValueError, match="not both"):
        SP(window=4, window_blocks=2)
    with pytest.raises(ValueError, match="repeated"):
        SP.sliding(4, (1, 1))
    with pytest.raises(ValueError, match="no query would see any key"):
        SP()
    with pytest.raises(ValueError, match=r"global token positions \[67\] outside \[0, 67\)"):
        tensors, _, _ = _inputs(1, 1, 67, 0, 0, None, np.float64, "cpu")
        F.scaled_dot_product_attention(*tensors, pattern=SP.sliding(4, (0, 67)))
    with pytest.raises(TypeError, match="pattern must be a SparsePattern"):
        F.scaled_dot_product_attention(*tensors, pattern="sliding")
    with pytest.raises(ValueError, match="queries are token positions"):
        q = minilm.tensor(np.zeros((1, 1, 5, 2)))
        kv = minilm.tensor(np.zeros((1, 1, 3, 2)))
        F.scaled_dot_product_attention(q, kv, kv, pattern=SP.sliding(2))
