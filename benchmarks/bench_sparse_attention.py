#!/usr/bin/env python
"""Sparse attention (Longformer, BigBird) in minilm's CPU kernel: cost vs length, in one run.

    python benchmarks/bench_sparse_attention.py [--quick] [--out DIR]

Bidirectional softmax attention, forward + backward, float32, (B, H, D) = (1, 1, 64),
in ``minilm.kernels.attention_cpu`` three ways:

  dense     the flash kernel with no pattern (every key block), T ≤ 16,384 only
  sliding   SparsePattern.sliding(256): each query sees the keys within 128 positions
  bigbird   SparsePattern.bigbird(block_size=64, window_blocks=3, global_blocks=2,
            random_blocks=3): three blocks of window, two global blocks, three random
            blocks per query block

at T = 1,024, 4,096, 16,384, 65,536 (--quick: 512, 1,024, 2,048; dense at every T).

What is measured:
  * time of forward + backward (forward, then backward from o, lse), best of R
    repeats, the three interleaved repeat by repeat; the ratio dense / sparse;
    time per token relative to T = 4,096 (linear cost: 1.0 at every T).
  * GFLOP/s counting only the tiles the kernel computes: per computed tile of
    rows × width scores, 7 products of 2·rows·width·D flop (2 forward, 5 backward);
    the computed tiles are those the kernel's own ``_mark_tiles`` marks. Beside it the
    density: visible scores / T², and computed / visible (the waste of whole tiles).
  * peak extra memory of one forward + backward (tracemalloc: the kernel's scratch,
    pattern tables and outputs are allocated by NumPy in Python), per T·(w + D) float32,
    w = the keys a query sees.

Targets (issue 14), PASS/MISS:
  * at T = 16,384 sliding is ≥ 20× faster than dense;
  * from T = 4,096 to 65,536, sliding's and bigbird's time grows within ±25% of linear;
  * memory O(T·(w + D)): peak ≤ 8 · T·(w + D) floats at every T;
  * sliding at T = 16,384 reaches ≥ 50% of the GFLOP/s dense reaches at T = 1,024
    (computed tiles only).
(--quick checks the same shapes of targets at its own lengths, as a smoke test.)

Correctness first: at the smallest T both patterns are compared with a float64 NumPy
reference that uses the pattern's dense mask (``SparsePattern.visible``); a mismatch
is reported and the exit status is 1.

One thread: NUMBA_NUM_THREADS=1 and ``numba.set_num_threads(1)``, BLAS through
threadpoolctl or OMP/OPENBLAS/MKL_NUM_THREADS=1 (``_common``). Read the ratios of one
run, not absolute times across runs.
"""
from __future__ import annotations

import _common  # first: limits BLAS threads before NumPy is imported (see its docstring)

_common.limit_numba_threads()  # NUMBA_NUM_THREADS=1, before numba is imported

import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from _common import NUMBA_VAR, THREAD_VARS, LongCallTimer, banner, fmt, mb, table, tracemalloc_peak  # noqa: E402
from minilm.kernels import attention_cpu  # noqa: E402
from minilm.ops.patterns import SparsePattern  # noqa: E402

_common.limit_loaded_threads(numba=True, scipy_blas=True)

B, H, D = 1, 1, 64
LENGTHS, QUICK_LENGTHS = (1024, 4096, 16384, 65536), (512, 1024, 2048)
DENSE_MAX = 16384
PATTERNS = {"sliding": SparsePattern.sliding(256),
            "bigbird": SparsePattern.bigbird(block_size=64, window_blocks=3, global_blocks=2, random_blocks=3)}


def make_inputs(T, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((B * H, T, D), dtype=np.float32) for _ in range(4))


def fwd_bwd(q, k, v, do, pattern):
    """Forward + backward as the op runs them: the pattern's tables are built per call."""
    T = q.shape[1]
    scale = 1.0 / math.sqrt(D)
    sparse = None if pattern is None else pattern.kernel_args(T, T, 0, False, H)
    o, lse = attention_cpu.forward(q, k, v, scale, False, 0, None, H, sparse)
    return (o,) + attention_cpu.backward(q, k, v, o, lse, do, scale, False, 0, None, H, sparse)


def computed_scores(T, pattern):
    """Σ rows·width over the tiles the kernel computes (its own _mark_tiles), and the visible scores."""
    if pattern is None:
        return T * T, T * T
    BQ, BK = attention_cpu.FWD_BLOCK_Q, attention_cpu.FWD_BLOCK_K
    kind, w, blk, glob, glob_cum, glob_idx, rand = attention_cpu._sparse_args(
        pattern.kernel_args(T, T, 0, False, H), T, H, T)
    n_tiles = -(-T // BK)
    visit = np.zeros(n_tiles, np.bool_)
    widths = np.minimum(BK, T - np.arange(n_tiles) * BK)
    total = visible = 0
    for i0 in range(0, T, BQ):
        rows = min(BQ, T - i0)
        attention_cpu._mark_tiles(visit, n_tiles, i0, i0 + rows, T, False, kind, w, blk, glob_cum, rand[0], BK)
        total += rows * int(widths[visit].sum())
        total += rows * int((~visit[glob_idx // BK]).sum())     # global keys in no marked tile: the gathered block
        visit[:] = False
        visible += int(pattern_rows(pattern, T, i0, i0 + rows).sum())
    return total, visible


def pattern_rows(pattern, T, t0, t1):
    """Visible (t1 − t0, T) rows of the pattern's mask, built the way SparsePattern.visible does
    (its full T × T mask would not fit at T = 65,536)."""
    t = np.arange(t0, t1)[:, None]
    s = np.arange(T)[None, :]
    vis = np.zeros((t1 - t0, T), np.bool_)
    b = pattern.block_size
    if pattern.window is not None:
        vis |= np.abs(s - t) <= pattern.window // 2
    if pattern.window_blocks is not None:
        vis |= np.abs(s // b - t // b) <= pattern.window_blocks // 2
    g = pattern.global_mask(T)
    vis |= g[s] | g[t]
    if pattern.random_blocks:
        table = pattern.random_table(H, T, False)[0]                      # (n_blocks, r)
        vis |= (table[(t // b)[:, 0]][:, :, None] == (s // b)[:, None, :]).any(axis=1)
    return vis


def check(T):
    """max relative error of o, dq, dk, dv vs a float64 NumPy reference with the dense mask."""
    q, k, v, do = make_inputs(T, seed=1)
    out = {}
    for name, pattern in PATTERNS.items():
        got = fwd_bwd(q, k, v, do, pattern)
        vis = pattern.visible(T, T, 0, False, H)                          # (1, T, T)
        q64, k64, v64, do64 = (x.astype(np.float64) for x in (q, k, v, do))
        s = np.where(vis, q64 @ k64.transpose(0, 2, 1) / math.sqrt(D), -np.inf)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        o = p @ v64
        dp = do64 @ v64.transpose(0, 2, 1)
        ds = p * (dp - (do64 * o).sum(axis=-1, keepdims=True)) / math.sqrt(D)
        ref = (o, ds @ k64, ds.transpose(0, 2, 1) @ q64, p.transpose(0, 2, 1) @ do64)
        out[name] = max(float(np.abs(a - r).max() / np.abs(r).max()) for a, r in zip(got, ref))
    return out


def run_length(timer, T):
    q, k, v, do = make_inputs(T)
    cands = {name: (lambda p=p: fwd_bwd(q, k, v, do, p)) for name, p in PATTERNS.items()}
    if T <= DENSE_MAX:
        cands = {"dense": lambda: fwd_bwd(q, k, v, do, None), **cands}
    best = timer.measure(cands)
    res = {"T": T, "ms": {}, "gflops": {}, "density": {}, "computed_over_visible": {}, "peak_bytes": {},
           "keys_per_query": {}}
    for name, fn in cands.items():
        pattern = PATTERNS.get(name)
        computed, visible = computed_scores(T, pattern)
        res["ms"][name] = best[name] * 1e3
        res["gflops"][name] = 7 * 2 * computed * D / best[name] / 1e9
        res["density"][name] = visible / T ** 2
        res["computed_over_visible"][name] = computed / visible
        res["keys_per_query"][name] = visible / T
        res["peak_bytes"][name] = tracemalloc_peak(fn)[0]
    return res


# ---- printing -----------------------------------------------------------------------------

def print_results(results):
    names = ["dense"] + list(PATTERNS)
    print()
    banner("forward + backward, bidirectional, float32, (B, H, D) = (1, 1, 64), one thread", char="-")
    rows = []
    for r in results:
        ms = r["ms"]
        rows.append([r["T"]] + [fmt(ms.get(n), "{:.1f}") for n in names]
                    + [fmt(ms.get("dense") and ms["dense"] / ms[n], "{:.1f}x") for n in PATTERNS])
    print("time (ms) and dense / sparse:")
    print(table(["T"] + names + [f"dense/{n}" for n in PATTERNS], rows))
    print()
    base = next((r for r in results if r["T"] == 4096), results[0])
    print(f"time per token relative to T = {base['T']} (1.00 = linear):")
    rows = [[r["T"]] + [fmt(r["ms"].get(n) and r["ms"][n] / r["T"] / (base["ms"][n] / base["T"]), "{:.2f}")
                        for n in names] for r in results]
    print(table(["T"] + names, rows))
    print()
    print("GFLOP/s over the computed tiles (7 x 2*rows*width*D per tile), keys seen per query, "
          "computed / visible scores:")
    rows = [[r["T"]] + [fmt(r["gflops"].get(n), "{:.1f}") for n in names]
            + [fmt(r["keys_per_query"].get(n), "{:.0f}") for n in PATTERNS]
            + [fmt(r["computed_over_visible"].get(n), "{:.2f}") for n in PATTERNS] for r in results]
    print(table(["T"] + [f"GFLOP/s {n}" for n in names] + [f"keys/query {n}" for n in PATTERNS]
                + [f"computed/visible {n}" for n in PATTERNS], rows))
    print()
    print("peak extra memory of one forward + backward (MB, tracemalloc), and per T*(w + D) float32:")
    rows = [[r["T"]] + [fmt(mb(r["peak_bytes"].get(n)), "{:.2f}") for n in names]
            + [fmt(r["peak_bytes"][n] / (4 * r["T"] * (r["keys_per_query"][n] + D)), "{:.2f}") for n in PATTERNS]
            for r in results]
    print(table(["T"] + names + [f"{n} / T(w+D)" for n in PATTERNS], rows))


def targets(results, quick):
    by_T = {r["T"]: r for r in results}
    Ts = sorted(by_T)
    big_dense = max(T for T in Ts if "dense" in by_T[T]["ms"])
    mid, top = (Ts[1], Ts[-1])
    small = Ts[0]
    out = []
    r = by_T[big_dense]
    speed = r["ms"]["dense"] / r["ms"]["sliding"]
    out.append((f"T={big_dense}: sliding >= 20x faster than dense", speed >= 20, f"{speed:.1f}x"))
    for name in PATTERNS:
        growth = (by_T[top]["ms"][name] / top) / (by_T[mid]["ms"][name] / mid)
        out.append((f"{name}: time linear within +-25% from T={mid} to T={top}", 0.75 <= growth <= 1.25,
                    f"time per token x{growth:.2f}"))
        worst = max(by_T[T]["peak_bytes"][name] / (4 * T * (by_T[T]["keys_per_query"][name] + D)) for T in Ts)
        out.append((f"{name}: memory O(T*(w + D)), <= 8 T*(w + D) floats", worst <= 8, f"at most {worst:.2f}"))
    ratio = by_T[big_dense]["gflops"]["sliding"] / by_T[small]["gflops"]["dense"]
    out.append((f"sliding at T={big_dense} >= 50% of dense GFLOP/s at T={small} (computed tiles)", ratio >= 0.5,
                f"{100 * ratio:.0f}% ({by_T[big_dense]['gflops']['sliding']:.1f} vs "
                f"{by_T[small]['gflops']['dense']:.1f} GFLOP/s)"))
    return out


def environment(args):
    import scipy
    env = _common.environment(
        "quick" if args.quick else "full",
        versions={"scipy": scipy.__version__, "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
                  "blocks": [attention_cpu.FWD_BLOCK_Q, attention_cpu.FWD_BLOCK_K],
                  "patterns": {n: repr(p) for n, p in PATTERNS.items()}},
        thread_vars=THREAD_VARS + (NUMBA_VAR,),
        via_threadpoolctl="threadpoolctl.threadpool_limits(1) + numba.set_num_threads(1)",
        via_env=("OMP/OPENBLAS/MKL_NUM_THREADS=1 and NUMBA_NUM_THREADS=1 set by the script "
                 "before importing numpy, + numba.set_num_threads(1)"),
        preloaded_warning=" -- WARNING: numpy was imported first, they may not apply")
    return env


def main(argv=None):
    ap = _common.arg_parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="T = 512, 1024, 2048 only (a smoke test, ~15 s)")
    ap.add_argument("--out", metavar="DIR", default="out/benchmarks",
                    help="write DIR/bench_sparse_attention[_quick].json (default out/benchmarks)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    timer = LongCallTimer(repeat=3, target_s=0.05, rotate=True) if args.quick else \
        LongCallTimer(repeat=5, target_s=0.3, rotate=True)

    for pattern in (None, *PATTERNS.values()):  # compile (or load from the cache) before anything is timed
        fwd_bwd(*make_inputs(130), pattern)
    env = environment(args)
    _common.print_environment(env, f"minilm sparse attention benchmark  ({env['mode']} run)",
                              coretype_note=" (left as found)")
    print(f"numba threads {env['numba_threads']}; kernel tiles {env['blocks'][0]} x {env['blocks'][1]}")
    for n, p in PATTERNS.items():
        print(f"  {n}: {p!r}")
    print(_common.TIMING_NOTE.format(calls="calls"))
    sys.stdout.flush()

    errors = check(lengths[0])
    results = []
    for T in lengths:
        results.append(run_length(timer, T))
        print(f"  T={T}: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in results[-1]["ms"].items()))
        sys.stdout.flush()
    print_results(results)

    checks = targets(results, args.quick)
    print()
    banner("targets (issue 14)" + ("  -- quick run: smoke test at small T, not the issue's lengths" if args.quick else ""))
    for what, ok, detail in checks:
        print(f"{'PASS' if ok else 'MISS'}  {what}: {detail}")
    bad = {n: e for n, e in errors.items() if e > 1e-4}
    print(f"correctness at T={lengths[0]} (max |kernel - float64| / max |float64| over o, dq, dk, dv): "
          + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()) + ("  WRONG RESULTS" if bad else ""))
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal time {elapsed:.1f} s")
    name = "bench_sparse_attention_quick.json" if args.quick else "bench_sparse_attention.json"
    path = _common.write_json(args.out, name, {
        "environment": env, "results": results, "errors": errors,
        "targets": [{"what": w, "pass": ok, "detail": d} for w, ok, d in checks], "elapsed_s": elapsed})
    print(f"results written to {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
