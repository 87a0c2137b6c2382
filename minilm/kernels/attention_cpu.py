"""Flash-style fused attention on the CPU: Numba, BLAS tiles, forward and backward.

    O = softmax(Q Kᵀ · scale + mask) V          (per batch·head; Q: (T, D), K: (S, D), V: (S, Dv))

The T×S score matrix is never held. For each block of queries the key blocks
stream past with an *online softmax*: a running row max m, a running row sum l,
and the output accumulator rescaled whenever m grows,

    m' = max(m, rowmax(S_j))      P_j = exp(S_j − m')      α = exp(m − m')
    l' = α l + rowsum(P_j)        O' = α O + P_j V_j       (at the end O /= l, lse = m + log l)

so the forward keeps only O and the per-row log-sum-exp lse. The backward
recomputes P from lse tile by tile, with D_i = rowsum(dO_i ∘ O_i):

    P  = exp(Q_i K_jᵀ · scale − lse_i)    dV_j += Pᵀ dO_i     dP = dO_i V_jᵀ
    dS = P ∘ (dP − D_i)                    dQ_i += scale · dS K_j     dK_j += scale · dSᵀ Q_i

Visibility (the mask), for batch b = bh // n_heads, P = n_prefix prefix keys
(Prefix-Tuning, Eq. P1), S − P ordinary keys and T queries that are the LAST T
positions of those keys (decoding with a cache when S − P > T): key s is
visible to query t iff

    s < P   or   [(not causal or s − P ≤ t + (S − P − T)) and not key_padding[b, s − P]]

A query row with no visible key gets o = 0, lse = −inf and contributes exactly
zero gradient.

Sparse patterns (``sparse=``, from minilm.ops.patterns.SparsePattern: Longformer's
sliding window and global tokens, BigBird's block window, global and random
blocks). In token positions -- key u = s − P, query t at p = t + (S − P − T) -- the
pattern adds one more condition to the token-key clause above,

    window(p, u)  or  global[p]  or  global[u]  or  u // b ∈ random[h, p // b]

with window(p, u) = |u − p| ≤ w // 2, or p − w < u ≤ p when causal (kind 1, tokens),
the same on the block numbers p // b, u // b (kind 2, BigBird), and h = bh mod n_heads.
Its cost is that of the blocks it shows: per query tile [p0, p1) the kernel marks
the key tiles that can hold a visible key -- those overlapping the rows' windows,
the random blocks of the query blocks in the tile -- and visits only those, besides
the prefix, in the forward and (query tiles outer, the same tiles) in the backward.
Global keys cost in proportion to their number g, not to the tiles they sit in: the
g global keys' rows of K and V are gathered once per head into a (g, D) block, and
each query tile takes, as one more step of its online softmax, the gathered keys
whose tile it does not visit anyway (a visited tile shows its own global keys, so
each key counts once); its dK, dV go back to the keys' rows at the end of the head.
A [CLS] at position 0 then costs each query tile a 64 × 1 product, where it cost a
whole masked 64 × 64 tile (sliding w = 256 at T = 16,384: +22% → +5% over the window
alone). Global queries see every key: the rows from the tile's first global query to
its last visit every key tile, as a separate run of rows, so that a [CLS] at position
0 makes one row, not 64, visit every key tile; a run of few rows takes up to
BQ // rows consecutive key tiles per product (one [CLS] row: 64 tiles per gemm), as
OpenBLAS spends about as long on a 1 × 64 × 64 product as on a third of a 64 × 64 × 64
one. A visited tile that every row sees whole (inside the band, a global column
block, a random block of a single query block) runs as a dense tile; the others (the
band's edges, the causal diagonal, padding, a global row among ordinary ones) get
their hidden scores set to −∞ element by element. K and V are read in place, each
key tile 64 contiguous rows, however far apart the random tiles lie. With a 256-token
window and 64-wide tiles a query tile computes 5 key tiles (320 keys per row for 257
seen): the cost is linear in T, at 80–90% of the dense kernel's speed per tile
(benchmarks/bench_sparse_attention.py).
The sparse kernels are separate functions, compiled on their first use (about as long
as the dense ones); with ``sparse=None`` the dense kernels run exactly as before.

What makes it fast (measured by benchmarks/bench_attention.py):

* Every matrix product is one BLAS gemm on a tile, called straight from the
  jitted code: SciPy's ``cython_blas`` ?gemm, the BLAS Numba itself uses for
  ``np.dot``. No temporaries: ``beta = 1`` accumulates into O, dQ, dK, dV in
  place, and transposes are gemm flags, K and V included: S = Q Kᵀ and
  dP = dO Vᵀ read K's and V's rows in place (an (N, T) gemm, as fast here as
  (N, N) on a transposed copy; dropping the per-head copies Kᵀ, Vᵀ made
  forward + backward 7% faster at (8, 6, 256, 64) and no slower at T = 1024).
  The tiles are 64 × 64: with D ≤ 128 every product is then small enough
  (m·n·k ≤ 64·64·128) for OpenBLAS to run it on the calling thread, so it
  never starts BLAS threads of its own inside the parallel loop (which larger
  tiles do, 2x slower with two threads).
* Tiles on the causal diagonal are cut into DIAG_SPLIT shorter tiles, each
  only as wide as its last row can see; key blocks nobody sees (the causal
  future, all-padding blocks) are skipped in both passes; inside a tile the
  causal limit is a per-row column count, not a mask matrix.
* exp is a branch-free polynomial that LLVM vectorises (float32; float64 uses
  libm). Scores more than -FLUSH_BELOW below their row max give exactly 0
  instead of subnormal floats: sharp attention makes most scores that small,
  and what subnormals cost depends on the CPU (on the 2-core Zen 4 this was
  measured on, fwd + bwd on scores × 50 is 9% slower without the flush and
  unchanged with it; CPUs that take microcode assists on subnormals lose far
  more). e^FLUSH_BELOW ≈ 1.6e-28 is far below either dtype's rounding, and
  the kept values times O(1) numbers stay normal, so no result changes.
* Batch·heads run in parallel (``numba.prange``, one worker per thread, each
  with its own scratch, allocated by NumPy in the Python wrapper); compiled
  code is cached on disk (``cache=True``), so only the first process compiles
  (about 10 s per dtype for forward + backward, then ~0.2 s to load).

Precision: float32 inputs accumulate O, l, dQ, dK, dV in float32 (as the gemms
do): float64 accumulators for O and l were measured 2–4% slower forward and no
more accurate (max error vs a float64 reference, relative to the largest entry,
2.4e-7 for O either way at T = 256..4096; the gemms' own float32 sums dominate).
lse is returned in float32 too: it is subtracted from float32 scores, whose own
rounding it cannot beat, so float64 would only double its memory. float64
inputs compute everything in float64.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, overload

from . import _choose_threading_layer

# Numba's workqueue threading layer unless the user chose one: OpenMP's spinning workers
# made a GPT step ~2x slower on 2 cores (see _choose_threading_layer).  This module is
# imported on the first attention call, before its first parallel region.
_choose_threading_layer()

# Tile sizes, queries × keys. Measured (forward and backward, one thread, the benchmark's
# shapes, on a 2-core Zen 4): 64 × 64 is within a few % of the best everywhere and keeps
# every tile product on OpenBLAS's unpacked small-matrix path for D ≤ 128. 64 × 128 is
# 2–4% faster at D = 64 but leaves that path at D = 128, where OpenBLAS then starts threads
# of its own inside the parallel loop (2x slower with two threads); 128 × 128 is 10–25%
# slower at T ≥ 1024.
FWD_BLOCK_Q = 64
FWD_BLOCK_K = 64
BWD_BLOCK_Q = 64
BWD_BLOCK_K = 64
# A tile that the causal diagonal crosses is done as this many shorter tiles, each only as
# wide as its last row sees: forward + backward −20% at T = 64, −7% at T = 256, −3% at
# T = 1024 against no split; 4 gains 2–5% more below T = 256 and loses 1–3% above.
DIAG_SPLIT = 2

# exp(x) for x < FLUSH_BELOW (x = score − row max) is taken as exactly 0.
FLUSH_BELOW = -64.0

# Finite stand-in for −inf inside the kernels (fast-math code must not see infs).
_NEG = -1e30

# Fast-math flags: no NaN/signed-zero care, FMA contraction, approximate
# functions — but no reassociation, which could fold the two-constant range
# reduction of the exp polynomial into one. Sums get reassociation too (that
# is what lets LLVM vectorise them). No "ninf": the kernels test for −inf.
_FM = {"nnan", "nsz", "arcp", "contract", "afn"}
_FM_SUM = _FM | {"reassoc"}


# ---- BLAS: SciPy's Fortran ?gemm, callable from jitted code and cacheable -----------------

# Registered by name, so cached machine code links to it again in a new process.
try:
    _llvm.add_symbol("minilm_attention_sgemm", get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
    _llvm.add_symbol("minilm_attention_dgemm", get_cython_function_address("scipy.linalg.cython_blas", "dgemm"))
except ImportError as e:  # pragma: no cover - SciPy is a dependency
    raise ImportError("minilm.kernels.attention_cpu needs SciPy: its BLAS (scipy.linalg.cython_blas) "
                      "does the tile products; pip install scipy") from e

_N, _T = 78, 84  # ord("N"), ord("T"): no transpose / transpose


@intrinsic
def _fortran_gemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major C = alpha op(A) op(B) + beta C; a, b, c are data addresses (intp).

    Fortran BLAS takes every argument by reference, so the scalars are put on
    the stack here and their addresses passed."""
    if alpha not in (types.float32, types.float64) or beta != alpha:
        return None
    symbol = "minilm_attention_sgemm" if alpha == types.float32 else "minilm_attention_dgemm"
    sig = types.void(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        i8, i32 = ir.IntType(8), ir.IntType(32)
        flt = context.get_value_type(alpha)
        fnty = ir.FunctionType(ir.VoidType(), [i8.as_pointer()] * 2 + [i32.as_pointer()] * 3
                               + [flt.as_pointer(), flt.as_pointer(), i32.as_pointer(), flt.as_pointer(),
                                  i32.as_pointer(), flt.as_pointer(), flt.as_pointer(), i32.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
        tys = signature.args

        def by_ref(i, to):
            ty = {"i8": types.int8, "i32": types.int32, "f": alpha}[to]
            val = context.cast(builder, args[i], tys[i], ty)
            return cgutils.alloca_once_value(builder, val)

        def address(i):
            return builder.inttoptr(context.cast(builder, args[i], tys[i], types.intp), flt.as_pointer())

        builder.call(fn, [by_ref(0, "i8"), by_ref(1, "i8"), by_ref(2, "i32"), by_ref(3, "i32"),
                          by_ref(4, "i32"), by_ref(5, "f"), address(6), by_ref(7, "i32"), address(8),
                          by_ref(9, "i32"), by_ref(10, "f"), address(11), by_ref(12, "i32")])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major C (m×n) = alpha op(A) op(B) + beta C, op(A): m×k, op(B): k×n.

    a, b, c are addresses of the first element, ld* the row strides. A row-major
    matrix is the column-major matrix of its transpose, so this is the
    column-major product Cᵀ = op(B)ᵀ op(A)ᵀ."""
    _fortran_gemm(trans_b, trans_a, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)


@njit(inline="always")
def _at(x, i, j, ncol):
    """Address of row j of x[i] (x is C-contiguous (BH, rows, ncol))."""
    return x.ctypes.data + (i * x.shape[1] + j) * ncol * x.itemsize


# ---- exp ----------------------------------------------------------------------------------

@intrinsic
def _pow2_float32(typingctx, n):
    """2**n for a whole-valued float32 n in [-126, 127]: the bits (n + 127) << 23."""
    if n != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        e = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(e, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


def _exp_or_zero(x, flush):
    """exp(x) for x ≥ flush, exactly 0 below (x = score − row max ≤ 0); jitted below."""
    return np.exp(x) if x >= flush else 0.0


@overload(_exp_or_zero, jit_options={"fastmath": _FM})
def _exp_or_zero_jit(x, flush):
    if x == types.float32:
        log2e = np.float32(1.4426950408889634)
        ln2_hi = np.float32(0.693359375)        # few bits, so n · ln2_hi is exact
        ln2_lo = np.float32(-2.12194440e-4)     # ln 2 − ln2_hi
        c5, c4, c3 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
        c2, c1, c0 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
        one, half, zero = np.float32(1.0), np.float32(0.5), np.float32(0.0)
        lowest = np.float32(-110.0)             # exp(-110) rounds to 0 in float32
        two_m64 = np.float32(2.0 ** -64)

        def exp32(x, flush):
            # exp(y) = 2**n · exp(r), n = round(y / ln 2), |r| ≤ ln 2 / 2, exp(r) by a degree-7
            # polynomial (Cephes' expf coefficients): about 1 ulp. 2**n is built from its bits in
            # two steps, 2**(n + 64) · 2**-64, so that results below 2**-126 come out as the
            # correctly rounded subnormals a libm would give (only when flush < -87).
            y = max(x, lowest)
            n = np.floor(y * log2e + half)
            r = y - n * ln2_hi
            r = r - n * ln2_lo
            p = ((((((c5 * r + c4) * r + c3) * r + c2) * r + c1) * r + c0) * (r * r) + r) + one
            e = p * _pow2_float32(n + np.float32(64.0)) * two_m64
            return e if x >= flush else zero
        return exp32
    if x == types.float64:
        return lambda x, flush: math.exp(x) if x >= flush else 0.0
    return None


@intrinsic
def _maxnum(typingctx, a, b):
    """LLVM's maxnum: a max that the loop vectoriser turns into a SIMD reduction
    (Numba's own ``max`` and ``if x > m`` stay scalar)."""
    if a != b or a not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return a(a, b), codegen


# ---- tile elementwise work (whole tiles per call: no per-row views or calls) ---------------
#
# A tile s holds rows × width scores (row stride = the block size). In row r only the
# first n(r) = clip(lim + r, 0, width) columns are visible: lim = width for a block
# with no causal cut, lim < width on the causal diagonal.

@njit(fastmath=_FM_SUM)
def _online_softmax_tile(s, rows, width, lim, m, l, alpha, flush):
    """One key block of the online softmax. Per row r: m' = max(m[r], max s[r, :n]),
    alpha[r] = exp(m[r] − m'), s[r, :n] = exp(s[r, :n] − m'), s[r, n:width] = 0, m[r] = m',
    l[r] = alpha[r] · l[r] + Σ_c s[r, c]. A row that has seen no visible key yet keeps m = _NEG,
    gets zeros and alpha = 1. The row sum is taken in the exp loop (one pass over the tile);
    "reassoc" lets that sum vectorise, while the inlined exp keeps its own flags (_FM)."""
    dt = s.dtype.type
    neg, zero, one = dt(_NEG), dt(0), dt(1)
    for r in range(rows):
        n = min(width, max(0, lim + r))
        m_new = m[r]
        for c in range(n):
            m_new = _maxnum(m_new, s[r, c])
        if m_new == neg:
            for c in range(width):
                s[r, c] = zero
            alpha[r] = one
            continue
        a = _exp_or_zero(m[r] - m_new, flush)
        acc = zero
        for c in range(n):
            e = _exp_or_zero(s[r, c] - m_new, flush)
            s[r, c] = e
            acc += e
        for c in range(n, width):
            s[r, c] = zero
        alpha[r] = a
        l[r] = a * l[r] + acc
        m[r] = m_new


@njit(fastmath=_FM)
def _scale_rows(x, bh, t0, rows, alpha):
    """x[bh, t0 + r, :] *= alpha[r] where alpha[r] ≠ 1."""
    one = x.dtype.type(1)
    for r in range(rows):
        a = alpha[r]
        if a != one:
            for c in range(x.shape[2]):
                x[bh, t0 + r, c] *= a


@njit(fastmath=_FM)
def _probs_tile(s, rows, width, lim, lse, bh, t0, flush):
    """P = exp(S − lse) on a score tile, in place; invisible columns and rows that saw
    no key at all (lse = −inf) become 0."""
    zero = s.dtype.type(0)
    for r in range(rows):
        shift = lse[bh, t0 + r]
        n = min(width, max(0, lim + r)) if shift > -np.inf else 0
        for c in range(n):
            s[r, c] = _exp_or_zero(s[r, c] - shift, flush)
        for c in range(n, width):
            s[r, c] = zero


@njit(fastmath=_FM)
def _ds_tile(p, dp, rows, width, d_row, t0):
    """dS = P ∘ (dP − D), written over dP."""
    for r in range(rows):
        d = d_row[t0 + r]
        for c in range(width):
            dp[r, c] = p[r, c] * (dp[r, c] - d)


@njit(fastmath=_FM_SUM)
def _rowsum_product(x, y, bh, out):
    """out[t] = Σ_c x[bh, t, c] y[bh, t, c]  (D_t = rowsum(dO ∘ O))."""
    for t in range(x.shape[1]):
        acc = x.dtype.type(0)
        for c in range(x.shape[2]):
            acc += x[bh, t, c] * y[bh, t, c]
        out[t] = acc


# ---- visibility of a tile -----------------------------------------------------------------

@njit(inline="always")
def _visible_lim(t0, k0, k1, prefix_block, causal, n_prefix, offset):
    """lim of the tile [t0, ·) × [k0, k1): row r sees columns [0, clip(lim + r, 0, k1 − k0))."""
    if prefix_block or not causal:
        return k1 - k0
    return n_prefix + t0 + offset + 1 - k0


@njit(inline="always")
def _key_block(jb, n_prefix_blocks, n_prefix, block_k, s_end):
    """The jb-th key block: prefix blocks tile [0, n_prefix), the others [n_prefix, s_end)."""
    if jb < n_prefix_blocks:
        k0 = jb * block_k
        return k0, min(k0 + block_k, n_prefix), True
    k0 = n_prefix + (jb - n_prefix_blocks) * block_k
    return k0, min(k0 + block_k, s_end), False


@njit
def _mask_padding(s_tile, rows, k0, k1, n_prefix, pad, b):
    """Scores of padding keys in [k0, k1) → _NEG (for every row of the tile)."""
    u0, u1 = k0 - n_prefix, k1 - n_prefix
    neg = s_tile.dtype.type(_NEG)
    for u in range(u0, u1):
        if pad[b, u]:
            for r in range(rows):
                s_tile[r, u - u0] = neg


# ---- forward ------------------------------------------------------------------------------

@njit
def _forward_tile(q, k, v, o, bh, i0, rows, k0, width, lim, s_tile, m, l, alpha, scale, flush,
                  pad, b, n_prefix, n_pad):
    """Queries [i0, i0 + rows) × keys [k0, k0 + width): one step of the online softmax.
    m, l, alpha are the rows' running max, running sum and rescale factors."""
    if width <= 0:
        return
    D, Dv = q.shape[2], v.shape[2]
    BK = s_tile.shape[1]
    zero, one = s_tile.dtype.type(0), s_tile.dtype.type(1)
    # S_ij = scale · Q_i K_jᵀ                                                      (rows, width)
    _gemm(_N, _T, rows, width, D, scale, _at(q, bh, i0, D), D, _at(k, bh, k0, D), D,
          zero, s_tile.ctypes.data, BK)
    if n_pad > 0:
        _mask_padding(s_tile, rows, k0, k0 + width, n_prefix, pad, b)
    _online_softmax_tile(s_tile, rows, width, lim, m, l, alpha, flush)
    _scale_rows(o, bh, i0, rows, alpha)
    # O_i = alpha ∘ O_i + P_ij V_j                                                 (rows, Dv)
    _gemm(_N, _N, rows, Dv, width, one, s_tile.ctypes.data, BK, _at(v, bh, k0, Dv), Dv, one, _at(o, bh, i0, Dv), Dv)


@njit(parallel=True, cache=True)
def _forward_kernel(q, k, v, scale, causal, n_prefix, pad, pad_cum, n_heads, flush, o, lse,
                    s_buf, row_buf):
    """o, lse ← attention(q, k, v). Worker w (one per thread) owns the scratch s_buf[w]
    (BQ, BK), row_buf[w] (3, BQ) and the batch·heads w, w + W, w + 2W, …"""
    BH, T, D = q.shape
    S = k.shape[1]
    BQ, BK = FWD_BLOCK_Q, FWD_BLOCK_K
    dt = q.dtype.type
    scale, flush = dt(scale), dt(flush)
    one, zero = dt(1.0), dt(0.0)
    offset = S - n_prefix - T          # main key u (= s − n_prefix) is visible to query t iff u ≤ t + offset
    n_pb = (n_prefix + BK - 1) // BK   # key blocks of the prefix
    has_pad = pad.shape[1] > 0
    n_workers = s_buf.shape[0]
    for w in prange(n_workers):
        s_tile = s_buf[w]
        m, l, alpha = row_buf[w, 0], row_buf[w, 1], row_buf[w, 2]  # running max, running sum, rescale
        for bh in range(w, BH, n_workers):
            b = bh // n_heads
            o[bh] = zero
            for i0 in range(0, T, BQ):
                rows = min(BQ, T - i0)
                m[:] = dt(_NEG)
                l[:] = zero
                s_end = S
                if causal:  # keys after the block's last query are invisible to all of it
                    s_end = max(n_prefix, min(S, n_prefix + i0 + rows + offset))
                for jb in range(n_pb + (s_end - n_prefix + BK - 1) // BK):
                    k0, k1, prefix_block = _key_block(jb, n_pb, n_prefix, BK, s_end)
                    width = k1 - k0
                    n_pad = 0
                    if has_pad and not prefix_block:
                        n_pad = pad_cum[b, k1 - n_prefix] - pad_cum[b, k0 - n_prefix]
                        if n_pad == width:
                            continue  # all padding
                    lim = _visible_lim(i0, k0, k1, prefix_block, causal, n_prefix, offset)
                    if lim >= width:
                        _forward_tile(q, k, v, o, bh, i0, rows, k0, width, lim, s_tile, m, l, alpha, scale, flush,
                                      pad, b, n_prefix, n_pad)
                    else:  # the causal diagonal crosses the tile: DIAG_SPLIT shorter tiles, each
                        for g in range(DIAG_SPLIT):  # only as wide as its last row can see
                            r0, r1 = g * rows // DIAG_SPLIT, (g + 1) * rows // DIAG_SPLIT
                            _forward_tile(q, k, v, o, bh, i0 + r0, r1 - r0, k0, min(width, lim + r1 - 1), lim + r0,
                                          s_tile, m[r0:], l[r0:], alpha[r0:], scale, flush, pad, b, n_prefix, n_pad)
                for r in range(rows):  # O_i /= l, lse = m + log l
                    if l[r] > zero:
                        alpha[r] = one / l[r]
                        lse[bh, i0 + r] = m[r] + math.log(l[r])
                    else:  # no visible key: o = 0
                        alpha[r] = zero
                        lse[bh, i0 + r] = -np.inf
                _scale_rows(o, bh, i0, rows, alpha)


# ---- backward -----------------------------------------------------------------------------

@njit
def _backward_tile(q, k, v, do, lse, d_row, dq, dk, dv, bh, i0, rows, k0, width, lim, p_tile, dp_tile,
                   scale, flush, pad, b, n_prefix, n_pad):
    """Queries [i0, i0 + rows) × keys [k0, k0 + width): the five tile products of the backward."""
    if width <= 0:
        return
    D, Dv = q.shape[2], do.shape[2]
    BK = p_tile.shape[1]
    zero, one = p_tile.dtype.type(0), p_tile.dtype.type(1)
    # P_ij = exp(scale · Q_i K_jᵀ − lse_i)                                             (rows, width)
    _gemm(_N, _T, rows, width, D, scale, _at(q, bh, i0, D), D, _at(k, bh, k0, D), D,
          zero, p_tile.ctypes.data, BK)
    if n_pad > 0:
        _mask_padding(p_tile, rows, k0, k0 + width, n_prefix, pad, b)
    _probs_tile(p_tile, rows, width, lim, lse, bh, i0, flush)
    # dV_j += P_ijᵀ dO_i                                                               (width, Dv)
    _gemm(_T, _N, width, Dv, rows, one, p_tile.ctypes.data, BK, _at(do, bh, i0, Dv), Dv, one, _at(dv, bh, k0, Dv), Dv)
    # dP_ij = dO_i V_jᵀ                                                                (rows, width)
    _gemm(_N, _T, rows, width, Dv, one, _at(do, bh, i0, Dv), Dv, _at(v, bh, k0, Dv), Dv,
          zero, dp_tile.ctypes.data, BK)
    # dS_ij = P_ij ∘ (dP_ij − D_i)
    _ds_tile(p_tile, dp_tile, rows, width, d_row, i0)
    # dQ_i += scale · dS_ij K_j                                                        (rows, D)
    _gemm(_N, _N, rows, D, width, scale, dp_tile.ctypes.data, BK, _at(k, bh, k0, D), D, one, _at(dq, bh, i0, D), D)
    # dK_j += scale · dS_ijᵀ Q_i                                                       (width, D)
    _gemm(_T, _N, width, D, rows, scale, dp_tile.ctypes.data, BK, _at(q, bh, i0, D), D, one, _at(dk, bh, k0, D), D)


@njit(parallel=True, cache=True)
def _backward_kernel(q, k, v, o, lse, do, scale, causal, n_prefix, pad, pad_cum, n_heads, flush, dq, dk, dv,
                     p_buf, dp_buf, d_buf):
    """dq, dk, dv ← the attention's vector-Jacobian product with do. Worker w owns p_buf[w]
    and dp_buf[w] (BQ, BK), d_buf[w] (T)."""
    BH, T, D = q.shape
    S = k.shape[1]
    BQ, BK = BWD_BLOCK_Q, BWD_BLOCK_K
    dt = q.dtype.type
    scale, flush = dt(scale), dt(flush)
    zero = dt(0.0)
    offset = S - n_prefix - T
    n_pb = (n_prefix + BK - 1) // BK
    has_pad = pad.shape[1] > 0
    n_workers = p_buf.shape[0]
    for w in prange(n_workers):
        p_tile, dp_tile = p_buf[w], dp_buf[w]
        d_row = d_buf[w]                 # D_t = rowsum(dO ∘ O)
        for bh in range(w, BH, n_workers):
            b = bh // n_heads
            _rowsum_product(do, o, bh, d_row)
            dq[bh] = zero
            dk[bh] = zero
            dv[bh] = zero
            for jb in range(n_pb + (S - n_prefix + BK - 1) // BK):
                k0, k1, prefix_block = _key_block(jb, n_pb, n_prefix, BK, S)
                width = k1 - k0
                n_pad = 0
                if has_pad and not prefix_block:
                    n_pad = pad_cum[b, k1 - n_prefix] - pad_cum[b, k0 - n_prefix]
                    if n_pad == width:
                        continue
                t_first = 0
                if causal and not prefix_block:  # the first query that sees key k0
                    t_first = max(0, k0 - n_prefix - offset)
                for i0 in range(t_first - t_first % BQ, T, BQ):
                    rows = min(BQ, T - i0)
                    lim = _visible_lim(i0, k0, k1, prefix_block, causal, n_prefix, offset)
                    if lim >= width:
                        _backward_tile(q, k, v, do, lse, d_row, dq, dk, dv, bh, i0, rows, k0, width, lim,
                                       p_tile, dp_tile, scale, flush, pad, b, n_prefix, n_pad)
                    else:  # on the causal diagonal: shorter tiles, as in the forward
                        for g in range(DIAG_SPLIT):
                            r0, r1 = g * rows // DIAG_SPLIT, (g + 1) * rows // DIAG_SPLIT
                            _backward_tile(q, k, v, do, lse, d_row, dq, dk, dv, bh, i0 + r0, r1 - r0, k0,
                                           min(width, lim + r1 - 1), lim + r0, p_tile, dp_tile, scale, flush, pad, b,
                                           n_prefix, n_pad)


# ---- sparse patterns (Longformer, BigBird): visit only the key blocks the pattern marks -----
#
# Token positions: key u = s − n_prefix, query row t sits at p = t + offset. A pattern is
# (kind, w, blk, is_global, rand) -- see the module docstring and minilm.ops.patterns:
# kind 1 a window of w tokens, kind 2 of w blocks of blk (block numbers p // blk), 0 none;
# is_global (S − P,) bool; rand (n_heads, n_blocks, r) the random key blocks of each query
# block, −1 = none. The kernels below loop query tiles outer (the forward's order; the
# backward too, as its key tiles differ per query tile), mark the key tiles to visit,
# take the global keys of unvisited tiles from a gathered block, and mask inside a tile
# only when the tile is not wholly visible.

@njit(inline="always")
def _window_keys(p0, p1, causal, kind, w, blk):
    """Token keys [lo, hi) that the window shows to some query of the positions [p0, p1)."""
    if kind == 1:
        if causal:
            return p0 - w + 1, p1
        return p0 - w // 2, p1 + w // 2
    if kind == 2:
        b0, b1 = p0 // blk, (p1 - 1) // blk
        if causal:
            return (b0 - w + 1) * blk, (b1 + 1) * blk
        return (b0 - w // 2) * blk, (b1 + w // 2 + 1) * blk
    return 0, 0


@njit(inline="always")
def _mark(visit, lo, hi, block_k):
    """visit[j] = True for the key tiles j that overlap the token keys [lo, hi) (hi ≤ the tiles' end)."""
    lo = max(lo, 0)
    if hi > lo:
        for j in range(lo // block_k, (hi - 1) // block_k + 1):
            visit[j] = True


@njit
def _mark_tiles(visit, n_tiles, p0, p1, kend, causal, kind, w, blk, glob_cum, rand_h, block_k):
    """Mark the key tiles (of the token keys [0, kend)) that queries at [p0, p1) may see through a
    global query (all of them), their window or their random blocks. The global keys are not marked:
    those in no marked tile are taken by the gathered block (_take_globals)."""
    if glob_cum[p1] - glob_cum[p0] > 0:  # a global query sees every key
        for j in range(n_tiles):
            visit[j] = True
        return
    if kind != 0:
        lo, hi = _window_keys(p0, p1, causal, kind, w, blk)
        _mark(visit, lo, min(hi, kend), block_k)
    for qb in range(p0 // blk, (p1 - 1) // blk + 1):
        for i in range(rand_h.shape[1]):
            kb = rand_h[qb, i]
            if kb >= 0:
                _mark(visit, kb * blk, min((kb + 1) * blk, kend), block_k)


@njit
def _take_globals(take, glob_idx, visit, kend, block_k, pad, b, has_pad):
    """take[c] = the global key u = glob_idx[c] goes through the gathered block: u < kend, not padding,
    and its key tile not visited (a visited tile shows its global keys itself, see _mask_pattern, so
    each key is counted once). Returns the number taken."""
    n = 0
    for c in range(glob_idx.shape[0]):
        u = glob_idx[c]
        take[c] = u < kend and not visit[u // block_k] and not (has_pad and pad[b, u])
        if take[c]:
            n += 1
    return n


@njit
def _gather_rows(dst, wk, src, bh, n_prefix, glob_idx):
    """dst[wk, c] = src[bh, n_prefix + glob_idx[c]]: the global keys' rows, contiguous."""
    for c in range(glob_idx.shape[0]):
        for d in range(src.shape[2]):
            dst[wk, c, d] = src[bh, n_prefix + glob_idx[c], d]


@njit
def _scatter_add_rows(dst, bh, src, wk, n_prefix, glob_idx):
    """dst[bh, n_prefix + glob_idx[c]] += src[wk, c]: the gathered block's gradient back to its keys."""
    for c in range(glob_idx.shape[0]):
        for d in range(dst.shape[2]):
            dst[bh, n_prefix + glob_idx[c], d] += src[wk, c, d]


@njit(inline="always")
def _tile_all_visible(p0, p1, u0, u1, causal, kind, w, blk, glob_cum, rand_h, n_pad):
    """Does every query at [p0, p1) see every token key [u0, u1)? (else the tile is masked)"""
    if n_pad > 0 or (causal and u1 - 1 > p0):
        return False
    if glob_cum[p1] - glob_cum[p0] == p1 - p0 or glob_cum[u1] - glob_cum[u0] == u1 - u0:
        return True
    if kind != 0:  # the rows' windows move right with p: their intersection is [lo(last), hi(first))
        lo, _ = _window_keys(p1 - 1, p1, causal, kind, w, blk)
        _, hi = _window_keys(p0, p0 + 1, causal, kind, w, blk)
        if lo <= u0 and u1 <= hi:
            return True
    qb, kb = p0 // blk, u0 // blk
    if qb == (p1 - 1) // blk and kb == (u1 - 1) // blk:  # one query block, one key block
        for i in range(rand_h.shape[1]):
            if rand_h[qb, i] == kb:
                return True
    return False


@njit
def _sparse_key_span(j, n_pb, n_prefix, block_k, span, visit, n_tiles, kend, p0, p1, causal, kind, w, blk, glob_cum,
                     rand_h, pad_cum, b, has_pad):
    """(k0, width, seen whole, next j): the keys to compute next for the queries at [p0, p1), from key
    tile j on; width 0: nothing here. j < 0 is a prefix tile (j + n_pb of them). From j ≥ 0 on, the
    run of up to ``span`` consecutive marked token tiles starting at j (a run of few query rows takes
    several tiles in one product, see _sparse_forward_rows), skipped if all padding; the marks are
    cleared for the next query tile."""
    if j < 0:
        k0 = (j + n_pb) * block_k
        return k0, min(block_k, n_prefix - k0), True, j + 1
    if not visit[j]:
        return 0, 0, True, j + 1
    j1 = j
    while j1 < n_tiles and j1 - j < span and visit[j1]:
        visit[j1] = False
        j1 += 1
    u0, u1 = j * block_k, min(j1 * block_k, kend)
    n_pad = pad_cum[b, u1] - pad_cum[b, u0] if has_pad else 0
    if n_pad == u1 - u0:
        return 0, 0, True, j1
    full = _tile_all_visible(p0, p1, u0, u1, causal, kind, w, blk, glob_cum, rand_h, n_pad)
    return n_prefix + u0, u1 - u0, full, j1


@njit(inline="always")
def _wide_view(s_tile, rows):
    """s_tile's memory as (rows, G·BK), G = max(1, BQ // rows): a run of few query rows (a global query
    alone) computes G key tiles per product, as many scores as a full tile. OpenBLAS takes ~4 µs for a
    1 × 64 × 64 product, a third of a 64 × 64 × 64 one; every product still has m·n·k ≤ BQ·BK·D."""
    ld = max(1, s_tile.shape[0] // rows) * s_tile.shape[1]
    return s_tile.reshape(s_tile.size)[: rows * ld].reshape((rows, ld))


@njit
def _mask_pattern(s_tile, rows, width, p0, u0, causal, kind, w, blk, glob, rand_h, pad, b, has_pad, vis):
    """Scores that the pattern, causality or padding hide → _NEG; row r is the query at p0 + r,
    column c the token key u0 + c. vis is a (≥ width,) bool scratch row."""
    neg = s_tile.dtype.type(_NEG)
    for r in range(rows):
        p = p0 + r
        if glob[p]:
            for c in range(width):
                vis[c] = True
        else:
            for c in range(width):
                vis[c] = glob[u0 + c]
            if kind != 0:
                lo, hi = _window_keys(p, p + 1, causal, kind, w, blk)
                for c in range(max(lo - u0, 0), min(hi - u0, width)):
                    vis[c] = True
            qb = p // blk
            for i in range(rand_h.shape[1]):
                kb = rand_h[qb, i]
                if kb >= 0:
                    for c in range(max(kb * blk - u0, 0), min((kb + 1) * blk - u0, width)):
                        vis[c] = True
        if causal:
            for c in range(max(p + 1 - u0, 0), width):
                vis[c] = False
        if has_pad:
            for c in range(width):
                if pad[b, u0 + c]:
                    vis[c] = False
        for c in range(width):
            if not vis[c]:
                s_tile[r, c] = neg


@njit
def _mask_globals(s_tile, rows, width, p0, glob_idx, c0, take, causal):
    """The gathered block's mask: column c is the global key u = glob_idx[c0 + c], hidden from every
    row when not take[c0 + c], and from the rows at p < u when causal."""
    neg = s_tile.dtype.type(_NEG)
    for r in range(rows):
        for c in range(width):
            if not take[c0 + c] or (causal and glob_idx[c0 + c] > p0 + r):
                s_tile[r, c] = neg


@njit
def _score_tile(q, bh, i0, rows, k, kbh, k0, width, scale, s_tile):
    """s_tile[:rows, :width] = scale · Q K[k0 : k0 + width]ᵀ, Q = q[bh, i0 : i0 + rows], K = k[kbh]:
    K's rows are read in place (the gemm's transpose flag), each key tile one contiguous block."""
    D = q.shape[2]
    _gemm(_N, _T, rows, width, D, scale, _at(q, bh, i0, D), D, _at(k, kbh, k0, D), D,
          s_tile.dtype.type(0), s_tile.ctypes.data, s_tile.shape[1])


@njit
def _softmax_pv_tile(s_tile, rows, width, m, l, alpha, flush, v, kbh, k0, o, bh, i0):
    """The online softmax step on a masked score tile, then O_i = alpha ∘ O_i + P V[k0 : k0 + width]
    (V = v[kbh])."""
    Dv = v.shape[2]
    _online_softmax_tile(s_tile, rows, width, width, m, l, alpha, flush)
    _scale_rows(o, bh, i0, rows, alpha)
    _gemm(_N, _N, rows, Dv, width, s_tile.dtype.type(1), s_tile.ctypes.data, s_tile.shape[1], _at(v, kbh, k0, Dv), Dv,
          s_tile.dtype.type(1), _at(o, bh, i0, Dv), Dv)


@njit(inline="always")
def _global_rows(glob, p0, rows):
    """[ga, gb): the rows of a query tile from its first global query to its last ((rows, rows): none).
    Those rows see every key; the others need only the tiles the pattern marks for them."""
    ga, gb = rows, rows
    for r in range(rows):
        if glob[p0 + r]:
            if ga == rows:
                ga = r
            gb = r + 1
    return ga, gb


@njit
def _sparse_forward_rows(q, k, v, o, bh, i0, rows, offset, s_tile, m, l, alpha, scale, flush, n_prefix, causal,
                         kind, w, blk, glob, glob_cum, glob_idx, rand_h, pad, pad_cum, b, has_pad, visit, vis,
                         kg, vg, wk, take):
    """Queries [i0, i0 + rows) against the prefix, the gathered global keys that no visited tile holds,
    and the token key tiles the pattern marks for them."""
    BK = s_tile.shape[1]
    n_tok, n_pb = v.shape[1] - n_prefix, (n_prefix + BK - 1) // BK
    p0, p1 = i0 + offset, i0 + rows + offset
    kend = min(n_tok, p1) if causal else n_tok   # token keys any row may see
    n_tiles = (kend + BK - 1) // BK
    _mark_tiles(visit, n_tiles, p0, p1, kend, causal, kind, w, blk, glob_cum, rand_h, BK)
    if _take_globals(take, glob_idx, visit, kend, BK, pad, b, has_pad) > 0:
        for c0 in range(0, glob_idx.shape[0], BK):  # the gathered block, BK global keys at a time
            width = min(BK, glob_idx.shape[0] - c0)
            _score_tile(q, bh, i0, rows, kg, wk, c0, width, scale, s_tile)
            _mask_globals(s_tile, rows, width, p0, glob_idx, c0, take, causal)
            _softmax_pv_tile(s_tile, rows, width, m, l, alpha, flush, vg, wk, c0, o, bh, i0)
    s_wide = _wide_view(s_tile, rows)
    j = -n_pb
    while j < n_tiles:  # j < 0: the prefix's tiles, seen whole by every query
        k0, width, full, j = _sparse_key_span(j, n_pb, n_prefix, BK, s_wide.shape[1] // BK, visit, n_tiles, kend,
                                              p0, p1, causal, kind, w, blk, glob_cum, rand_h, pad_cum, b, has_pad)
        if width > 0:
            _score_tile(q, bh, i0, rows, k, bh, k0, width, scale, s_wide)
            if not full:
                _mask_pattern(s_wide, rows, width, p0, k0 - n_prefix, causal, kind, w, blk, glob, rand_h, pad, b,
                              has_pad, vis)
            _softmax_pv_tile(s_wide, rows, width, m, l, alpha, flush, v, bh, k0, o, bh, i0)


@njit(parallel=True, cache=True)
def _sparse_forward_kernel(q, k, v, scale, causal, n_prefix, pad, pad_cum, n_heads, flush,
                           kind, w, blk, glob, glob_cum, glob_idx, rand, o, lse,
                           s_buf, row_buf, visit_buf, vis_buf, kg_buf, vg_buf, take_buf):
    """_forward_kernel for a sparse pattern: per query tile (in up to three runs of rows, see
    _global_rows), the prefix tiles, the gathered global keys, then only the token key tiles that
    _mark_tiles marks; a tile not wholly visible is masked element by element. Extra scratch per
    worker: visit_buf[w] (key tiles) and vis_buf[w] (BQ·BK) bool, kg_buf[w] (g, D) and vg_buf[w] (g, Dv)
    the global keys' rows, take_buf[w] (g) bool."""
    BH, T, D = q.shape
    S = k.shape[1]
    BQ = FWD_BLOCK_Q
    dt = q.dtype.type
    scale, flush = dt(scale), dt(flush)
    one, zero = dt(1.0), dt(0.0)
    offset = S - n_prefix - T          # query row t is the token position t + offset
    has_pad = pad.shape[1] > 0
    n_workers = s_buf.shape[0]
    for wk in prange(n_workers):
        g_wk = np.int64(wk)            # the gathered block's index (prange's own index is uint64 in the parallel
        s_tile = s_buf[wk]             # body: passed on as is, it would compile the callees twice)
        m, l, alpha = row_buf[wk, 0], row_buf[wk, 1], row_buf[wk, 2]
        visit, vis, take = visit_buf[wk], vis_buf[wk], take_buf[wk]
        for bh in range(wk, BH, n_workers):
            b = bh // n_heads
            rand_h = rand[bh % n_heads]
            _gather_rows(kg_buf, g_wk, k, bh, n_prefix, glob_idx)
            _gather_rows(vg_buf, g_wk, v, bh, n_prefix, glob_idx)
            o[bh] = zero
            for i0 in range(0, T, BQ):
                rows = min(BQ, T - i0)
                m[:] = dt(_NEG)
                l[:] = zero
                ga, gb = _global_rows(glob, i0 + offset, rows)
                for part in range(3):  # the rows before the first global query, from it to the last, after
                    r0 = 0 if part == 0 else (ga if part == 1 else gb)
                    r1 = ga if part == 0 else (gb if part == 1 else rows)
                    if r1 > r0:
                        _sparse_forward_rows(q, k, v, o, bh, i0 + r0, r1 - r0, offset, s_tile, m[r0:], l[r0:],
                                             alpha[r0:], scale, flush, n_prefix, causal, kind, w, blk, glob, glob_cum,
                                             glob_idx, rand_h, pad, pad_cum, b, has_pad, visit, vis,
                                             kg_buf, vg_buf, g_wk, take)
                for r in range(rows):
                    if l[r] > zero:
                        alpha[r] = one / l[r]
                        lse[bh, i0 + r] = m[r] + math.log(l[r])
                    else:
                        alpha[r] = zero
                        lse[bh, i0 + r] = -np.inf
                _scale_rows(o, bh, i0, rows, alpha)


@njit
def _grad_tile(p_tile, dp_tile, rows, width, lse, d_row, flush, q, do, dq, bh, i0, k, v, dk, dv, kbh, k0, scale):
    """The backward of one masked score tile (scores in p_tile, keys k[kbh, k0 : k0 + width]):
    P = exp(S − lse), dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − D), dQ += scale · dS K,
    dK += scale · dSᵀ Q (dk, dv indexed like k, v: kbh, k0)."""
    D, Dv = q.shape[2], do.shape[2]
    BK = p_tile.shape[1]
    zero, one = p_tile.dtype.type(0), p_tile.dtype.type(1)
    _probs_tile(p_tile, rows, width, width, lse, bh, i0, flush)
    _gemm(_T, _N, width, Dv, rows, one, p_tile.ctypes.data, BK, _at(do, bh, i0, Dv), Dv, one, _at(dv, kbh, k0, Dv), Dv)
    _gemm(_N, _T, rows, width, Dv, one, _at(do, bh, i0, Dv), Dv, _at(v, kbh, k0, Dv), Dv,
          zero, dp_tile.ctypes.data, BK)
    _ds_tile(p_tile, dp_tile, rows, width, d_row, i0)
    _gemm(_N, _N, rows, D, width, scale, dp_tile.ctypes.data, BK, _at(k, kbh, k0, D), D, one, _at(dq, bh, i0, D), D)
    _gemm(_T, _N, width, D, rows, scale, dp_tile.ctypes.data, BK, _at(q, bh, i0, D), D, one, _at(dk, kbh, k0, D), D)


@njit
def _sparse_backward_rows(q, k, v, do, lse, d_row, dq, dk, dv, bh, i0, rows, offset, p_tile, dp_tile, scale,
                          flush, n_prefix, causal, kind, w, blk, glob, glob_cum, glob_idx, rand_h, pad, pad_cum, b,
                          has_pad, visit, vis, kg, vg, dkg, dvg, wk, take):
    """The backward of queries [i0, i0 + rows) over the forward's key tiles and gathered block."""
    BK = p_tile.shape[1]
    n_tok, n_pb = k.shape[1] - n_prefix, (n_prefix + BK - 1) // BK
    p0, p1 = i0 + offset, i0 + rows + offset
    kend = min(n_tok, p1) if causal else n_tok
    n_tiles = (kend + BK - 1) // BK
    _mark_tiles(visit, n_tiles, p0, p1, kend, causal, kind, w, blk, glob_cum, rand_h, BK)
    if _take_globals(take, glob_idx, visit, kend, BK, pad, b, has_pad) > 0:
        for c0 in range(0, glob_idx.shape[0], BK):
            width = min(BK, glob_idx.shape[0] - c0)
            _score_tile(q, bh, i0, rows, kg, wk, c0, width, scale, p_tile)
            _mask_globals(p_tile, rows, width, p0, glob_idx, c0, take, causal)
            _grad_tile(p_tile, dp_tile, rows, width, lse, d_row, flush, q, do, dq, bh, i0, kg, vg, dkg, dvg, wk, c0,
                       scale)
    p_wide, dp_wide = _wide_view(p_tile, rows), _wide_view(dp_tile, rows)
    j = -n_pb
    while j < n_tiles:
        k0, width, full, j = _sparse_key_span(j, n_pb, n_prefix, BK, p_wide.shape[1] // BK, visit, n_tiles, kend,
                                              p0, p1, causal, kind, w, blk, glob_cum, rand_h, pad_cum, b, has_pad)
        if width > 0:
            _score_tile(q, bh, i0, rows, k, bh, k0, width, scale, p_wide)
            if not full:
                _mask_pattern(p_wide, rows, width, p0, k0 - n_prefix, causal, kind, w, blk, glob, rand_h, pad, b,
                              has_pad, vis)
            _grad_tile(p_wide, dp_wide, rows, width, lse, d_row, flush, q, do, dq, bh, i0, k, v, dk, dv, bh, k0,
                       scale)


@njit(parallel=True, cache=True)
def _sparse_backward_kernel(q, k, v, o, lse, do, scale, causal, n_prefix, pad, pad_cum, n_heads, flush,
                            kind, w, blk, glob, glob_cum, glob_idx, rand, dq, dk, dv,
                            p_buf, dp_buf, d_buf, visit_buf, vis_buf, kg_buf, vg_buf, dkg_buf, dvg_buf, take_buf):
    """_backward_kernel for a sparse pattern: the forward's tiles, in the forward's order; the gathered
    block's dK, dV accumulate in dkg_buf[w] (g, D), dvg_buf[w] (g, Dv) and are added to the global keys'
    rows at the end of each head."""
    BH, T, D = q.shape
    S = k.shape[1]
    BQ = BWD_BLOCK_Q
    dt = q.dtype.type
    scale, flush = dt(scale), dt(flush)
    zero = dt(0.0)
    offset = S - n_prefix - T
    has_pad = pad.shape[1] > 0
    n_workers = p_buf.shape[0]
    for wk in prange(n_workers):
        g_wk = np.int64(wk)            # as in _sparse_forward_kernel
        p_tile, dp_tile = p_buf[wk], dp_buf[wk]
        d_row = d_buf[wk]
        visit, vis, take = visit_buf[wk], vis_buf[wk], take_buf[wk]
        for bh in range(wk, BH, n_workers):
            b = bh // n_heads
            rand_h = rand[bh % n_heads]
            _gather_rows(kg_buf, g_wk, k, bh, n_prefix, glob_idx)
            _gather_rows(vg_buf, g_wk, v, bh, n_prefix, glob_idx)
            _rowsum_product(do, o, bh, d_row)
            dq[bh] = zero
            dk[bh] = zero
            dv[bh] = zero
            dkg_buf[wk] = zero
            dvg_buf[wk] = zero
            for i0 in range(0, T, BQ):
                rows = min(BQ, T - i0)
                ga, gb = _global_rows(glob, i0 + offset, rows)
                for part in range(3):
                    r0 = 0 if part == 0 else (ga if part == 1 else gb)
                    r1 = ga if part == 0 else (gb if part == 1 else rows)
                    if r1 > r0:
                        _sparse_backward_rows(q, k, v, do, lse, d_row, dq, dk, dv, bh, i0 + r0, r1 - r0, offset,
                                              p_tile, dp_tile, scale, flush, n_prefix, causal, kind, w, blk, glob,
                                              glob_cum, glob_idx, rand_h, pad, pad_cum, b, has_pad, visit, vis,
                                              kg_buf, vg_buf, dkg_buf, dvg_buf, g_wk, take)
            _scatter_add_rows(dk, bh, dkg_buf, g_wk, n_prefix, glob_idx)
            _scatter_add_rows(dv, bh, dvg_buf, g_wk, n_prefix, glob_idx)


def _sparse_args(sparse, S_tok, n_heads, T):
    """Check the pattern tuple (kind, w, blk, is_global, rand) and add what the kernels derive from it:
    (kind, w, blk, glob, glob_cum, glob_idx, rand); glob_cum[u] = Σ glob[:u], glob_idx the global
    keys' positions (g,)."""
    kind, w, blk, glob, rand = sparse
    if kind not in (0, 1, 2) or w < 0 or blk < 1:
        raise ValueError(f"attention_cpu: sparse pattern (kind, window, block) = ({kind}, {w}, {blk}): kind must be "
                         "0 | 1 | 2, window ≥ 0, block ≥ 1")
    if T > S_tok:
        raise ValueError(f"attention_cpu: a sparse pattern needs T ≤ S − n_prefix (queries are token positions), "
                         f"got T = {T}, S − n_prefix = {S_tok}")
    glob = np.ascontiguousarray(glob, np.bool_)
    rand = np.ascontiguousarray(rand, np.int64)
    n_blocks = -(-S_tok // blk)
    if glob.shape != (S_tok,):
        raise ValueError(f"attention_cpu: sparse is_global has shape {glob.shape}, expected (S − n_prefix,) = ({S_tok},)")
    if rand.ndim != 3 or rand.shape[:2] != (n_heads, n_blocks) or (rand.size and rand.max() >= n_blocks):
        raise ValueError(f"attention_cpu: sparse random table has shape {rand.shape}, expected (n_heads, n_blocks, r) "
                         f"= ({n_heads}, {n_blocks}, r) with entries < {n_blocks}")
    glob_cum = np.zeros(S_tok + 1, np.int64)
    np.cumsum(glob, out=glob_cum[1:])
    glob_idx = np.flatnonzero(glob).astype(np.int64)
    return int(kind), int(w), int(blk), glob, glob_cum, glob_idx, rand


# ---- public entry points ------------------------------------------------------------------

def _check(q, k, v, n_prefix, key_padding, n_heads, extra=()):
    arrays = {"q": q, "k": k, "v": v, **dict(extra)}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"attention_cpu: {name} must be a NumPy array, got {type(a).__name__}")
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"attention_cpu: {name} must be float32 or float64, got {a.dtype}")
        if a.dtype != q.dtype:
            raise TypeError(f"attention_cpu: {name} is {a.dtype} but q is {q.dtype}; all must share one dtype")
        if not a.flags.c_contiguous:
            raise ValueError(f"attention_cpu: {name} must be C-contiguous")
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"attention_cpu: q, k, v must be 3-D (BH, len, dim), "
                         f"got shapes {q.shape}, {k.shape}, {v.shape}")
    BH, T, D = q.shape
    S = k.shape[1]
    if k.shape != (BH, S, D) or v.shape[:2] != (BH, S):
        raise ValueError(f"attention_cpu: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "q (BH, T, D), k (BH, S, D), v (BH, S, Dv)")
    if not 0 <= n_prefix <= S:
        raise ValueError(f"attention_cpu: n_prefix = {n_prefix} outside [0, S = {S}]")
    if n_heads < 1 or BH % n_heads:
        raise ValueError(f"attention_cpu: BH = {BH} is not a multiple of n_heads = {n_heads}")
    B = BH // n_heads
    if key_padding is None:
        pad = np.zeros((B, 0), np.bool_)
        pad_cum = np.zeros((B, 1), np.int64)
    else:
        key_padding = np.asarray(key_padding)
        if key_padding.shape != (B, S - n_prefix):
            raise ValueError(f"attention_cpu: key_padding has shape {key_padding.shape}, expected "
                             f"(B, S - n_prefix) = ({B}, {S - n_prefix})")
        if key_padding.dtype not in (np.bool_, np.uint8):
            raise TypeError(f"attention_cpu: key_padding must be bool or uint8, got {key_padding.dtype}")
        pad = np.ascontiguousarray(key_padding.astype(np.bool_, copy=False))
        pad_cum = np.zeros((B, S - n_prefix + 1), np.int64)
        np.cumsum(pad, axis=1, out=pad_cum[:, 1:])
    return pad, pad_cum


def _n_workers(bh):
    return max(1, min(numba.get_num_threads(), bh))


def _forward(q, k, v, scale, causal, n_prefix, key_padding, n_heads, flush_below, sparse=None):
    pad, pad_cum = _check(q, k, v, int(n_prefix), key_padding, int(n_heads))
    BH, T, D = q.shape
    S = k.shape[1]
    W = _n_workers(BH)
    o = np.empty((BH, T, v.shape[2]), q.dtype)
    lse = np.empty((BH, T), q.dtype)
    if sparse is not None:
        args = _sparse_args(sparse, S - int(n_prefix), int(n_heads), T)
        n_tok_tiles, g = -(-(S - int(n_prefix)) // FWD_BLOCK_K), args[5].size
        _sparse_forward_kernel(q, k, v, float(scale), bool(causal), int(n_prefix), pad, pad_cum, int(n_heads),
                               float(flush_below), *args, o, lse,
                               np.empty((W, FWD_BLOCK_Q, FWD_BLOCK_K), q.dtype),
                               np.empty((W, 3, FWD_BLOCK_Q), q.dtype), np.zeros((W, n_tok_tiles), np.bool_),
                               np.empty((W, FWD_BLOCK_Q * FWD_BLOCK_K), np.bool_), np.empty((W, g, D), q.dtype),
                               np.empty((W, g, v.shape[2]), q.dtype), np.empty((W, g), np.bool_))
        return o, lse
    _forward_kernel(q, k, v, float(scale), bool(causal), int(n_prefix), pad, pad_cum, int(n_heads),
                    float(flush_below), o, lse, np.empty((W, FWD_BLOCK_Q, FWD_BLOCK_K), q.dtype),
                    np.empty((W, 3, FWD_BLOCK_Q), q.dtype))
    return o, lse


def _backward(q, k, v, o, lse, do, scale, causal, n_prefix, key_padding, n_heads, flush_below, sparse=None):
    pad, pad_cum = _check(q, k, v, int(n_prefix), key_padding, int(n_heads),
                          extra=(("o", o), ("lse", lse), ("do", do)))
    BH, T, D = q.shape
    S, Dv = k.shape[1], v.shape[2]
    if o.shape != (BH, T, Dv) or do.shape != (BH, T, Dv) or lse.shape != (BH, T):
        raise ValueError(f"attention_cpu: o {o.shape}, do {do.shape}, lse {lse.shape} do not fit "
                         f"(BH, T, Dv) = {(BH, T, Dv)} and (BH, T)")
    W = _n_workers(BH)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    if sparse is not None:
        args = _sparse_args(sparse, S - int(n_prefix), int(n_heads), T)
        n_tok_tiles, g = -(-(S - int(n_prefix)) // BWD_BLOCK_K), args[5].size
        _sparse_backward_kernel(q, k, v, o, lse, do, float(scale), bool(causal), int(n_prefix), pad, pad_cum,
                                int(n_heads), float(flush_below), *args, dq, dk, dv,
                                np.empty((W, BWD_BLOCK_Q, BWD_BLOCK_K), q.dtype),
                                np.empty((W, BWD_BLOCK_Q, BWD_BLOCK_K), q.dtype), np.empty((W, T), q.dtype),
                                np.zeros((W, n_tok_tiles), np.bool_), np.empty((W, BWD_BLOCK_Q * BWD_BLOCK_K), np.bool_),
                                np.empty((W, g, D), q.dtype), np.empty((W, g, Dv), q.dtype),
                                np.empty((W, g, D), q.dtype), np.empty((W, g, Dv), q.dtype),
                                np.empty((W, g), np.bool_))
        return dq, dk, dv
    _backward_kernel(q, k, v, o, lse, do, float(scale), bool(causal), int(n_prefix), pad, pad_cum, int(n_heads),
                     float(flush_below), dq, dk, dv,
                     np.empty((W, BWD_BLOCK_Q, BWD_BLOCK_K), q.dtype),
                     np.empty((W, BWD_BLOCK_Q, BWD_BLOCK_K), q.dtype), np.empty((W, T), q.dtype))
    return dq, dk, dv


def forward(q, k, v, scale, causal, n_prefix, key_padding, n_heads, sparse=None):
    """(o, lse): o (BH, T, Dv) = softmax(q kᵀ · scale, masked) v, lse (BH, T) its row log-sum-exp.

    q (BH, T, D), k (BH, S, D), v (BH, S, Dv): C-contiguous, all float32 or all
    float64. key_padding: None or bool/uint8 (B, S − n_prefix), True = padding.
    sparse: None (dense) or a pattern (kind, window, block, is_global, random table)
    as ``minilm.ops.patterns.SparsePattern.kernel_args`` makes it.
    lse has q's dtype; rows that see no key get o = 0 and lse = −inf."""
    return _forward(q, k, v, scale, causal, n_prefix, key_padding, n_heads, FLUSH_BELOW, sparse)


def backward(q, k, v, o, lse, do, scale, causal, n_prefix, key_padding, n_heads, sparse=None):
    """(dq, dk, dv) of the attention computed by ``forward`` (which returned o, lse), given dL/do
    (the same ``sparse`` pattern)."""
    return _backward(q, k, v, o, lse, do, scale, causal, n_prefix, key_padding, n_heads, FLUSH_BELOW, sparse)
