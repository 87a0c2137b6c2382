#!/usr/bin/env python
"""minilm's fused CPU attention kernel side by side with NumPy and PyTorch, in one run.

    python benchmarks/bench_attention.py [--quick] [--out DIR]

Causal softmax attention, forward + backward, float32, three ways:

  kernel  ``minilm.kernels.attention_cpu``: flash-style, Numba + BLAS tiles, online
          softmax, the T×T score matrix never held (forward, then backward from o, lse)
  numpy   the composed NumPy reference: matmul → scale → mask → stable softmax → matmul,
          each step a new array as separate ops make it, and the backward as those ops'
          vector-Jacobian products chained (dV = Pᵀ dO, dP = dO Vᵀ, softmax's
          dS = P ∘ (dP − rowsum(dP ∘ P)), the mask's and the scale's, dQ = dS K, dK = dSᵀ Q)
  numpy, fused by hand (shown for information, not a target): the same in NumPy written
          in place (scale, mask, exp, normalise over one buffer) with attention's own
          identity rowsum(dP ∘ P) = rowsum(dO ∘ O): the fastest plain NumPy we know
  torch   ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)``
          and ``o.backward(do)`` (autograd)

at (B, H, T, D) = (12, 4, 64, 32), (8, 6, 256, 64), (1, 8, 1024, 64), (1, 8, 4096, 64)
(--quick drops the last: its composed NumPy reference alone takes ~4 s and ~3 GB per call).

What is measured:
  * time of forward + backward, best of R repeats of M calls (as timeit), the three
    interleaved repeat by repeat so that a slow moment of the shared machine hits all
    of them; the ratios numpy/kernel and torch/kernel.
  * GFLOP/s, one nominal count for all three: causal forward F = 4·B·H·T²·D / 2 (two
    T×T×D matmuls per head, half of them masked), forward + backward = 2.5·F =
    5·B·H·T²·D. (The kernel executes more: 7 tile matmuls = 3.5·F, as it recomputes
    P in the backward; the NumPy reference executes 6 dense ones = 6·F.) Shown next to
    NumPy's single-thread float32 matmul peak (1024×1024×1024 sgemm) of this run.
  * peak extra memory of one forward + backward (outputs and gradients included), over
    what was live before: tracemalloc for the kernel and NumPy (NumPy reports its array
    buffers to tracemalloc; the kernel's scratch is allocated by NumPy in its Python
    wrapper, so it is counted), torch.profiler's allocation events for torch (its CPU
    allocator is invisible to tracemalloc): the running total of allocated bytes, peak
    minus start. Requested bytes, no allocator overhead.
  * compile time: the first forward + backward in a fresh process with an empty Numba
    cache (NUMBA_CACHE_DIR = a temporary folder), then the first call in a second fresh
    process that finds that cache (cache=True: compiled code is reused across processes).
  * subnormals: "sharp" attention (q × 50, so scores × 50) vs normal inputs at
    (1, 8, 1024, 64), for the kernel as shipped (exp of scores more than 64 below the row
    max flushed to 0), the kernel with the flush disabled (private ``_forward`` /
    ``_backward`` with flush_below = −inf: exact exp, subnormals and all), NumPy and torch.
  * targets, PASS/MISS: ≥ 2x faster than NumPy at T = 256 and ≥ 3x at T ≥ 1024; no
    slower than torch at every shape; extra memory O(T·D): at most 16 arrays of
    B·H·T·D floats at every shape (the five outputs are 4 of them), where a T×T score
    matrix would need B·H·T² floats.

Correctness first: at every shape the kernel's o, dq, dk, dv are compared with NumPy's
and torch's (relative error, float32); a mismatch is reported and the exit status is 1.

Both sides run on ONE thread (the fair, stable comparison on 2-core machines):
``numba.set_num_threads(1)`` and NUMBA_NUM_THREADS=1, ``torch.set_num_threads(1)``; BLAS
(NumPy's, and SciPy's that the kernel calls) through threadpoolctl when it is installed,
otherwise through OMP/OPENBLAS/MKL_NUM_THREADS=1 set by ``_common`` (imported first), before
NumPy is imported.
OPENBLAS_CORETYPE is reported and never changed. Read the ratios of one run, not
absolute times across runs.
"""
from __future__ import annotations

import _common  # first: limits BLAS threads before NumPy is imported (see its docstring)

_common.limit_numba_threads()  # NUMBA_NUM_THREADS=1, before numba is imported

import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from _common import (NUMBA_VAR, REPO, THREAD_VARS, TORCH_ERROR, LongCallTimer, banner, fmt, mb,  # noqa: E402
                     table, torch, tracemalloc_peak)
from minilm.kernels import attention_cpu  # noqa: E402

_common.limit_loaded_threads(numba=True, scipy_blas=True)  # Numba's pool, every BLAS (SciPy's too), torch

SHAPES = [(12, 4, 64, 32), (8, 6, 256, 64), (1, 8, 1024, 64), (1, 8, 4096, 64)]
SHARP_SHAPE, SHARP_FACTOR = (1, 8, 1024, 64), 50.0


# ---- the three implementations ----------------------------------------------------------

def make_inputs(B, H, T, D, seed=0, sharp=1.0):
    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal((B * H, T, D), dtype=np.float32) for _ in range(4))
    if sharp != 1.0:
        q *= np.float32(sharp)
    return q, k, v, do


def kernel_fwd_bwd(q, k, v, do, H, flush_below=None):
    scale = 1.0 / math.sqrt(q.shape[-1])
    if flush_below is None:
        o, lse = attention_cpu.forward(q, k, v, scale, True, 0, None, H)
        return (o,) + attention_cpu.backward(q, k, v, o, lse, do, scale, True, 0, None, H)
    o, lse = attention_cpu._forward(q, k, v, scale, True, 0, None, H, flush_below)
    return (o,) + attention_cpu._backward(q, k, v, o, lse, do, scale, True, 0, None, H, flush_below)


def numpy_fwd_bwd(q, k, v, do, H):
    """The composed NumPy reference, causal, float32: op by op, forward then the ops' VJPs."""
    T, D = q.shape[1], q.shape[2]
    scale = np.float32(1.0 / math.sqrt(D))
    visible = np.tril(np.ones((T, T), bool))                   # (T, T): key ≤ query
    s = (q @ k.transpose(0, 2, 1)) * scale                     # matmul, scale     (BH, T, T)
    s = np.where(visible, s, np.float32(-np.inf))              # mask
    e = np.exp(s - s.max(axis=-1, keepdims=True))              # softmax (stable)
    p = e / e.sum(axis=-1, keepdims=True)
    o = p @ v                                                  # matmul            (BH, T, Dv)
    dv = p.transpose(0, 2, 1) @ do                             # matmul's VJP: Pᵀ dO
    dp = do @ v.transpose(0, 2, 1)                             #               dO Vᵀ
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))       # softmax's VJP
    ds = np.where(visible, ds, np.float32(0))                  # the mask's
    ds = ds * scale                                            # the scale's
    dq = ds @ k                                                # matmul's VJP
    dk = ds.transpose(0, 2, 1) @ q
    return o, dq, dk, dv


def numpy_fused_fwd_bwd(q, k, v, do, H):
    """The same attention in NumPy fused by hand: in place over one T×T buffer, and
    rowsum(dP ∘ P) = rowsum(dO ∘ O) (the fastest plain NumPy we know; not a target)."""
    T, D = q.shape[1], q.shape[2]
    scale = np.float32(1.0 / math.sqrt(D))
    mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)   # (T, T): −inf where key > query
    s = q @ k.transpose(0, 2, 1)                               # (BH, T, T)
    s *= scale
    s += mask
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)
    o = p @ v
    dv = p.transpose(0, 2, 1) @ do
    dp = do @ v.transpose(0, 2, 1)
    dp -= (do * o).sum(axis=-1, keepdims=True)
    ds = np.multiply(dp, p, out=dp)
    dq = ds @ k
    dq *= scale
    dk = ds.transpose(0, 2, 1) @ q
    dk *= scale
    return o, dq, dk, dv


def make_torch(q, k, v, do, B, H):
    T, D = q.shape[1], q.shape[2]
    tq, tk, tv = (torch.from_numpy(x.reshape(B, H, T, D).copy()).requires_grad_() for x in (q, k, v))
    tdo = torch.from_numpy(do.reshape(B, H, T, D).copy())
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def step():
        tq.grad = tk.grad = tv.grad = None
        o = sdpa(tq, tk, tv, is_causal=True)
        o.backward(tdo)
        return o

    def results():
        o = step().detach()
        return tuple(x.reshape(B * H, T, -1).numpy() for x in (o, tq.grad, tk.grad, tv.grad))

    return step, results


def max_rel_err(a, b):
    """max |a − b| / (max |b| + tiny), over all elements: a scale-aware relative error."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


# ---- memory -----------------------------------------------------------------------------

def torch_peak(step):
    """Peak bytes allocated by torch's CPU allocator during step(), from torch.profiler's
    allocation events (the running 'Total Allocated' of the trace, peak minus start)."""
    from torch.profiler import ProfilerActivity, profile
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = step()
    del out
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return None
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - start


# ---- parts ------------------------------------------------------------------------------

def sgemm_peak(timer):
    a = np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32)
    b = a.T.copy()
    t = timer.measure({"sgemm": lambda: a @ b})["sgemm"]
    return 2 * 1024 ** 3 / t / 1e9


def compile_and_cache(quick):
    """First forward + backward in a fresh process, cold (empty Numba cache) and warm."""
    dtypes = ["float32"] if quick else ["float32", "float64"]
    code = textwrap.dedent(f"""
        import json, sys, time
        t0 = time.perf_counter()
        import numpy as np
        sys.path.insert(0, {REPO!r})
        from minilm.kernels import attention_cpu as A
        res = {{"import_s": time.perf_counter() - t0}}
        for dt in {dtypes!r}:
            q, k, v, do = (np.random.default_rng(0).standard_normal((2, 70, 16)).astype(dt) for _ in range(4))
            for key in ("first", "second"):
                t = time.perf_counter()
                o, lse = A.forward(q, k, v, 0.25, True, 0, None, 1)
                A.backward(q, k, v, o, lse, do, 0.25, True, 0, None, 1)
                res[dt + "_" + key + "_call_s"] = time.perf_counter() - t
        print(json.dumps(res))
    """)
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for run in ("cold", "warm"):
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if p.returncode != 0:
                out[run] = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
            else:
                out[run] = json.loads(p.stdout.strip().splitlines()[-1])
        out["cache_files"] = sum(len(f) for _, _, f in os.walk(cache))
    return out


def run_shape(timer, shape, use_torch):
    B, H, T, D = shape
    q, k, v, do = make_inputs(B, H, T, D)
    cands = {"kernel": lambda: kernel_fwd_bwd(q, k, v, do, H), "numpy": lambda: numpy_fwd_bwd(q, k, v, do, H),
             "numpy_fused": lambda: numpy_fused_fwd_bwd(q, k, v, do, H)}
    ref = numpy_fwd_bwd(q, k, v, do, H)
    ker = kernel_fwd_bwd(q, k, v, do, H)
    names = ("o", "dq", "dk", "dv")
    errors = {"kernel_vs_numpy": {n: max_rel_err(a, b) for n, a, b in zip(names, ker, ref)}}
    if use_torch:
        step, results = make_torch(q, k, v, do, B, H)
        cands["torch"] = step
        tr = results()
        errors["kernel_vs_torch"] = {n: max_rel_err(a, b) for n, a, b in zip(names, ker, tr)}
        errors["numpy_vs_torch"] = {n: max_rel_err(a, b) for n, a, b in zip(names, ref, tr)}
    del ref, ker
    best = timer.measure(cands)
    mem = {k: tracemalloc_peak(cands[k])[0] for k in ("kernel", "numpy", "numpy_fused")}
    if use_torch:
        mem["torch"] = torch_peak(cands["torch"])
    flop = 2.5 * 4 * B * H * T * T * D / 2   # 5·B·H·T²·D
    ms = {k: v * 1e3 for k, v in best.items()}
    return {"shape": {"B": B, "H": H, "T": T, "D": D}, "ms": ms,
            "gflops": {k: flop / v / 1e9 for k, v in best.items()},
            "nominal_gflop": flop / 1e9,
            "speedup_vs_numpy": best["numpy"] / best["kernel"],
            "speedup_vs_numpy_fused": best["numpy_fused"] / best["kernel"],
            "speedup_vs_torch": best["torch"] / best["kernel"] if "torch" in best else None,
            "peak_extra_bytes": mem,
            "btd_bytes": B * H * T * D * 4, "score_matrix_bytes": B * H * T * T * 4,
            "errors": errors}


def run_sharp(timer, use_torch):
    B, H, T, D = SHARP_SHAPE
    out = {"shape": {"B": B, "H": H, "T": T, "D": D}, "factor": SHARP_FACTOR, "ms": {}}
    inputs = {"normal": make_inputs(B, H, T, D), "sharp": make_inputs(B, H, T, D, sharp=SHARP_FACTOR)}
    cands = {}
    for name, (q, k, v, do) in inputs.items():
        cands[f"kernel|{name}"] = lambda q=q, k=k, v=v, do=do: kernel_fwd_bwd(q, k, v, do, H)
        cands[f"kernel, no flush|{name}"] = lambda q=q, k=k, v=v, do=do: kernel_fwd_bwd(q, k, v, do, H, -np.inf)
        cands[f"numpy|{name}"] = lambda q=q, k=k, v=v, do=do: numpy_fwd_bwd(q, k, v, do, H)
        if use_torch:
            cands[f"torch|{name}"] = make_torch(q, k, v, do, B, H)[0]
    best = timer.measure(cands)
    for key, t in best.items():
        impl, which = key.split("|")
        out["ms"].setdefault(impl, {})[which] = t * 1e3
    # the sharp results are finite and right (float64 NumPy as the reference)
    q, k, v, do = inputs["sharp"]
    ref = numpy_fwd_bwd(*(x.astype(np.float64) for x in (q, k, v, do)), H)
    ker = kernel_fwd_bwd(q, k, v, do, H)
    out["sharp_finite"] = bool(all(np.isfinite(x).all() for x in ker))
    out["sharp_errors_vs_float64"] = {n: max_rel_err(a, b) for n, a, b in zip(("o", "dq", "dk", "dv"), ker, ref)}
    s = (q[:1].astype(np.float64) @ k[:1].transpose(0, 2, 1).astype(np.float64)) / math.sqrt(D)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    gap = s - s.max(axis=-1, keepdims=True)
    visible = np.isfinite(gap)
    out["share_below_flush"] = float(np.mean(gap[visible] < attention_cpu.FLUSH_BELOW))
    out["share_subnormal_range"] = float(np.mean((gap[visible] < -87.33) & (gap[visible] > -103.3)))
    out["libm_exp_ns"] = libm_exp_costs()
    return out


def libm_exp_costs():
    """ns per float32 exp through libm (math.exp in a jitted loop: what a naive kernel calls), for
    results that are normal, subnormal, or underflow to 0 -- the slow paths the flush avoids."""
    @numba.njit
    def run(x, out):
        for i in range(x.size):
            out[i] = math.exp(x[i])

    rng = np.random.default_rng(2)
    res = {}
    for name, lo, hi in (("normal", -10.0, 0.0), ("subnormal", -103.0, -88.0), ("zero", -200.0, -110.0)):
        x = rng.uniform(lo, hi, 1 << 18).astype(np.float32)
        out = np.empty_like(x)
        run(x, out)
        best = math.inf
        for _ in range(5):
            t = time.perf_counter()
            run(x, out)
            best = min(best, time.perf_counter() - t)
        res[name] = best / x.size * 1e9
    return res


# ---- environment and printing -----------------------------------------------------------

def environment(args, torch_note):
    import scipy
    env = _common.environment(
        "quick" if args.quick else "full",
        versions={"scipy": scipy.__version__, "numba": numba.__version__,
                  "torch": None if torch is None else torch.__version__,
                  "numba_threads": numba.get_num_threads(), "numba_threading_layer": None,
                  "blocks": {"fwd": [attention_cpu.FWD_BLOCK_Q, attention_cpu.FWD_BLOCK_K],
                             "bwd": [attention_cpu.BWD_BLOCK_Q, attention_cpu.BWD_BLOCK_K]},
                  "flush_below": attention_cpu.FLUSH_BELOW},
        thread_vars=THREAD_VARS + (NUMBA_VAR,), extra={"torch_note": torch_note},
        via_threadpoolctl="threadpoolctl.threadpool_limits(1) + numba.set_num_threads(1)",
        via_env=("OMP/OPENBLAS/MKL_NUM_THREADS=1 and NUMBA_NUM_THREADS=1 set by the script "
                 "before importing numpy, + numba.set_num_threads(1)"),
        preloaded_warning=" -- WARNING: numpy was imported first, they may not apply")
    try:
        env["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        pass
    return env


def print_header(env):
    _common.print_environment(env, f"minilm fused attention benchmark  ({env['mode']} run)",
                              coretype_note=" (left as found)")
    b = env["blocks"]
    print(f"numba threads {env['numba_threads']}; kernel blocks (queries x keys): forward {b['fwd'][0]}x{b['fwd'][1]},"
          f" backward {b['bwd'][0]}x{b['bwd'][1]}; exp flushed below {env['flush_below']:g}")
    print(_common.TIMING_NOTE.format(calls="calls"))


def print_results(results, peak, use_torch):
    print()
    banner("A. causal attention, forward + backward, float32, one thread", char="-")
    print(f"NumPy float32 matmul peak (1024x1024x1024 sgemm, this run): {peak:.1f} GFLOP/s")
    print("GFLOP count, the same for all: 2.5 x causal forward = 2.5 x 4*B*H*T^2*D/2 = 5*B*H*T^2*D")
    print()
    rows = []
    for r in results:
        s = r["shape"]
        ms, gf = r["ms"], r["gflops"]
        rows.append([f"({s['B']}, {s['H']}, {s['T']}, {s['D']})", f"{r['nominal_gflop']:.3f}",
                     f"{ms['kernel']:.2f}", f"{ms['numpy']:.2f}", f"{ms['numpy_fused']:.2f}",
                     fmt(ms.get("torch"), "{:.2f}"), f"{r['speedup_vs_numpy']:.2f}",
                     f"{r['speedup_vs_numpy_fused']:.2f}", fmt(r["speedup_vs_torch"], "{:.2f}")])
    print("time of forward + backward (ms) and speed-ups (other / kernel):")
    print(table(["(B, H, T, D)", "GFLOP", "kernel", "numpy", "numpy fused", "torch", "numpy/kernel",
                 "fused/kernel", "torch/kernel"], rows))
    print()
    rows = []
    for r in results:
        s, gf = r["shape"], r["gflops"]
        rows.append([f"({s['B']}, {s['H']}, {s['T']}, {s['D']})", f"{gf['kernel']:.1f}", f"{gf['numpy']:.1f}",
                     f"{gf['numpy_fused']:.1f}", fmt(gf.get("torch"), "{:.1f}"),
                     f"{100 * gf['kernel'] / peak:.0f}%", fmt(gf.get("torch") and 100 * gf["torch"] / peak, "{:.0f}%")])
    print(f"GFLOP/s (5*B*H*T^2*D per forward + backward), next to the sgemm peak {peak:.1f}:")
    print(table(["(B, H, T, D)", "kernel", "numpy", "numpy fused", "torch", "kernel/peak", "torch/peak"], rows))
    print()
    print("peak extra memory of one forward + backward (MB; outputs and gradients included):")
    rows = []
    for r in results:
        s, m = r["shape"], r["peak_extra_bytes"]
        rows.append([f"({s['B']}, {s['H']}, {s['T']}, {s['D']})", f"{mb(m['kernel']):.2f}", f"{mb(m['numpy']):.2f}",
                     f"{mb(m['numpy_fused']):.2f}", fmt(mb(m.get("torch")), "{:.2f}"),
                     f"{m['kernel'] / r['btd_bytes']:.2f}", f"{mb(r['btd_bytes']):.2f}",
                     f"{mb(r['score_matrix_bytes']):.2f}"])
    print(table(["(B, H, T, D)", "kernel", "numpy", "numpy fused", "torch", "kernel / (B*H*T*D*4)",
                 "one B*H*T*D array", "one B*H*T*T array"], rows))
    print("(kernel and numpy: tracemalloc; torch: torch.profiler allocation events)")
    print()
    print("correctness, max |a - b| / max |b| over o, dq, dk, dv:")
    for r in results:
        s = r["shape"]
        parts = [f"{pair}: {max(e.values()):.1e}" for pair, e in r["errors"].items()]
        print(f"  ({s['B']}, {s['H']}, {s['T']}, {s['D']})  " + "   ".join(parts))
    if not use_torch:
        print("(torch columns skipped: see the note in the header)")


def print_compile(c):
    print()
    banner("B. compile time and the on-disk cache (fresh processes, tiny input, forward + backward)", char="-")
    for run, what in (("cold", "empty Numba cache: compiles"), ("warm", "second process, finds the cache")):
        r = c[run]
        if "error" in r:
            print(f"{run}: FAILED: {r['error']}")
            continue
        parts = [f"import {r['import_s']:.2f} s"]
        for key, val in r.items():
            if key.endswith("_first_call_s"):
                dt = key.split("_")[0]
                parts.append(f"{dt} first call {val:.2f} s (second {r[dt + '_second_call_s'] * 1e3:.1f} ms)")
        print(f"{run} ({what}): " + ", ".join(parts))
    print(f"cache files written: {c['cache_files']}")


def print_sharp(r):
    s = r["shape"]
    print()
    banner(f"C. subnormals: sharp attention (q x {r['factor']:g}) vs normal, ({s['B']}, {s['H']}, {s['T']}, {s['D']}), "
           "forward + backward", char="-")
    print(f"sharp input: {100 * r['share_below_flush']:.1f}% of visible scores lie more than "
          f"{-attention_cpu.FLUSH_BELOW:g} below their row max (flushed to 0), "
          f"{100 * r['share_subnormal_range']:.1f}% in float32's subnormal range of exp")
    rows = []
    for impl, t in r["ms"].items():
        rows.append([impl, f"{t['normal']:.2f}", f"{t['sharp']:.2f}", f"{t['sharp'] / t['normal']:.2f}"])
    print(table(["implementation", "normal ms", "sharp ms", "sharp / normal"], rows))
    c = r["libm_exp_ns"]
    print(f"for comparison, libm's float32 exp per element (a naive kernel's exp): normal {c['normal']:.2f} ns, "
          f"subnormal result {c['subnormal']:.2f} ns, underflow to 0 {c['zero']:.2f} ns")
    e = r["sharp_errors_vs_float64"]
    print(f"kernel on the sharp input: all finite: {r['sharp_finite']}; max rel error vs float64 NumPy: "
          + ", ".join(f"{k} {v:.1e}" for k, v in e.items()))


def targets(results, use_torch):
    out = []
    for r in results:
        T = r["shape"]["T"]
        tag = f"T={T}"
        if T == 256:
            out.append((f"{tag}: >= 2x faster than NumPy", r["speedup_vs_numpy"] >= 2.0, f"{r['speedup_vs_numpy']:.2f}x"
                        f" (hand-fused NumPy, not a target: {r['speedup_vs_numpy_fused']:.2f}x)"))
        if T >= 1024:
            out.append((f"{tag}: >= 3x faster than NumPy", r["speedup_vs_numpy"] >= 3.0, f"{r['speedup_vs_numpy']:.2f}x"
                        f" (hand-fused NumPy, not a target: {r['speedup_vs_numpy_fused']:.2f}x)"))
        if use_torch:
            out.append((f"{tag}: no slower than torch", r["speedup_vs_torch"] >= 1.0, f"{r['speedup_vs_torch']:.2f}x"))
        per = r["peak_extra_bytes"]["kernel"] / r["btd_bytes"]
        out.append((f"{tag}: extra memory O(T*D) (<= 16 B*H*T*D arrays)", per <= 16.0,
                    f"{per:.1f} arrays; a score matrix = {r['score_matrix_bytes'] / r['btd_bytes']:.0f}"))
    return out


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    Ts = [r["shape"]["T"] for r in results]
    for impl, style in (("kernel", "o-"), ("numpy", "s--"), ("numpy_fused", "d-."), ("torch", "^:")):
        ys = [r["ms"].get(impl) for r in results]
        if all(y is not None for y in ys):
            ax.plot(Ts, ys, style, label={"kernel": "minilm kernel (Numba, flash-style)", "numpy": "composed NumPy",
                                          "numpy_fused": "NumPy fused by hand", "torch": "torch SDPA (is_causal)"}[impl])
    for r in results:
        s = r["shape"]
        ax.annotate(f"B={s['B']} H={s['H']} D={s['D']}", (s["T"], r["ms"]["kernel"]), textcoords="offset points",
                    xytext=(4, -12), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("forward + backward, ms (one thread)")
    ax.set_title("causal attention, float32")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------

def main(argv=None):
    ap = _common.arg_parser(__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="drop T = 4096, fewer repeats, float32 compile only (~1 min instead of ~3)")
    ap.add_argument("--out", metavar="DIR", help="also write DIR/bench_attention.json and DIR/bench_attention.png")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    use_torch = torch is not None
    torch_note = None if use_torch else f"torch is not importable ({TORCH_ERROR}); torch columns skipped"
    timer = LongCallTimer(repeat=3, target_s=0.1, rotate=True) if args.quick else \
        LongCallTimer(repeat=7, target_s=0.3, rotate=True)
    shapes = SHAPES[:-1] if args.quick else SHAPES

    # compile (or load from cache) before anything is timed
    kernel_fwd_bwd(*make_inputs(1, 1, 8, 4), 1)
    env = environment(args, torch_note)
    print_header(env)
    sys.stdout.flush()

    peak = sgemm_peak(timer)
    results = []
    for shape in shapes:
        results.append(run_shape(timer, shape, use_torch))
    print_results(results, peak, use_torch)
    sys.stdout.flush()

    comp = compile_and_cache(args.quick)
    print_compile(comp)
    sys.stdout.flush()

    sharp = run_sharp(timer, use_torch)
    print_sharp(sharp)

    checks = targets(results, use_torch)
    print()
    banner("targets")
    for what, ok, detail in checks:
        print(f"{'PASS' if ok else 'MISS'}  {what}: {detail}")
    bad = [f"{r['shape']} {pair} {n} {e:.1e}" for r in results for pair, errs in r["errors"].items()
           for n, e in errs.items() if e > 1e-4]
    if bad or not sharp["sharp_finite"] or max(sharp["sharp_errors_vs_float64"].values()) > 1e-4:
        print("WRONG RESULTS: " + "; ".join(bad) + ("" if sharp["sharp_finite"] else "; sharp input not finite"))
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal time {elapsed:.1f} s")

    if args.out:
        path = _common.write_json(args.out, "bench_attention.json",
                                  {"environment": env, "sgemm_peak_gflops": peak, "results": results,
                                   "compile": comp, "sharp": sharp,
                                   "targets": [{"what": w, "pass": ok, "detail": d} for w, ok, d in checks],
                                   "elapsed_s": elapsed})
        png = os.path.join(args.out, "bench_attention.png")
        plot(results, png)
        print(f"results written to {path} and {png}")
    return 1 if bad or not sharp["sharp_finite"] else 0


if __name__ == "__main__":
    sys.exit(main())
