#!/usr/bin/env python
"""minilm's engine side by side with PyTorch and plain NumPy, in one run.

    python benchmarks/bench_engine.py [--device cpu|cuda] [--quick] [--out DIR]

Part A, per-op overhead: small (16, 16) float32 tensors, so what is timed is
mostly the framework's own Python work per op (argument checks, building the
graph node, walking it backward), not arithmetic.  Each op is timed forward
only (inputs require grad, so the graph is recorded) and forward + backward
(``out.sum().backward()``, input grads cleared first), next to the raw array
expression that computes the same forward values.

Part B, a two-layer MLP training step on (512, 256) inputs:
Linear(256→512) → GELU(tanh) → Linear(512→10) → cross-entropy → backward →
SGD, in minilm, in PyTorch (same init) and in hand-written NumPy (hand-derived
backward).

Both sides run on ONE thread (the fair, stable comparison on 2-core
machines): ``torch.set_num_threads(1)``; BLAS through threadpoolctl when it is
installed, otherwise through OMP/OPENBLAS/MKL_NUM_THREADS=1 set below, before
NumPy is imported.  The header says which.  OPENBLAS_CORETYPE is reported and
never changed.

Timings are best of R repeats of M loops (as timeit), candidates interleaved
repeat by repeat so that a slow moment of a shared machine hits all of them;
the ratios within one run are the result, not the absolute times.
On "cuda" the raw baseline is the same expression in CuPy and every timed loop
ends with a device synchronize.
"""
from __future__ import annotations

import importlib.util
import os
import sys

# ---- threads: must happen before NumPy (or torch) is imported -----------------------
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_ENV_BEFORE = {v: os.environ.get(v) for v in _THREAD_VARS}
_HAVE_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None
_NUMPY_PRELOADED = "numpy" in sys.modules  # imported as a module by something that loaded numpy first
if not _HAVE_THREADPOOLCTL:
    for _v in _THREAD_VARS:
        os.environ[_v] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
    _TORCH_ERROR = None
except Exception as e:  # not installed, or a broken install: skip its columns
    torch = None
    _TORCH_ERROR = f"{type(e).__name__}: {e}"

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)  # measure this checkout's minilm

import minilm  # noqa: E402
import minilm.functional as F  # noqa: E402

_THREADPOOL_LIMITER = None
if _HAVE_THREADPOOLCTL:
    from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402
    _THREADPOOL_LIMITER = threadpool_limits(limits=1)  # every BLAS/OpenMP pool loaded so far
if torch is not None:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started
        pass


# ---- timing --------------------------------------------------------------------------

class Timer:
    """Best-of-R-repeats-of-M-loops timing, with the candidates interleaved."""

    def __init__(self, sync, repeat: int, target_s: float):
        self.sync, self.repeat, self.target_s = sync, repeat, target_s

    def _run(self, fn, number):
        sync = self.sync
        gc_was = gc.isenabled()
        gc.disable()
        try:
            sync()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            sync()
            return time.perf_counter() - t0
        finally:
            if gc_was:
                gc.enable()

    def _calibrate(self, fn):
        for _ in range(3):  # warm-up: caches, lazy imports, allocator pools
            fn()
        number = 1
        while True:
            t = self._run(fn, number)
            if t >= self.target_s / 5 or number >= 1_000_000:
                return max(1, min(1_000_000, int(math.ceil(number * self.target_s / max(t, 1e-9)))))
            number *= 10

    def measure(self, candidates: dict) -> dict:
        """{name: fn} -> {name: best seconds per call}."""
        numbers = {k: self._calibrate(f) for k, f in candidates.items()}
        best = {k: math.inf for k in candidates}
        for _ in range(self.repeat):
            gc.collect()
            for k, f in candidates.items():
                best[k] = min(best[k], self._run(f, numbers[k]) / numbers[k])
        return best


def _ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def _geomean(values):
    vals = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _fmt(v, spec="{:.1f}", none="-"):
    return none if v is None else spec.format(v)


def _table(header, rows, aligns=None):
    """Plain text table: first column left-aligned, the rest right-aligned."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    aligns = aligns or ["<"] + [">"] * (len(header) - 1)
    line = lambda r: "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, aligns, widths))  # noqa: E731
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


# ---- environment ---------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numpy_blas():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


def environment(args, xp_name, torch_note):
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "torch": None if torch is None else torch.__version__,
        "minilm": getattr(minilm, "__version__", "?"),
        "device": args.device,
        "raw_baseline": xp_name,
        "mode": "quick" if args.quick else "full",
        "env": {v: os.environ.get(v) for v in _THREAD_VARS + ("OPENBLAS_CORETYPE",)},
        "env_before_script": dict(_ENV_BEFORE),
        "torch_note": torch_note,
    }
    if _HAVE_THREADPOOLCTL:
        env["thread_limit_method"] = "threadpoolctl.threadpool_limits(1)"
        env["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                                     "architecture", "prefix")}
                              for p in threadpool_info()]
    else:
        env["thread_limit_method"] = ("environment variables OMP/OPENBLAS/MKL_NUM_THREADS=1 set by the script "
                                      "before importing numpy (threadpoolctl is not installed)")
        if _NUMPY_PRELOADED:
            env["thread_limit_method"] += " -- WARNING: numpy was imported before this script, so they may not apply"
    if torch is not None:
        env["torch_threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    if args.device == "cuda":
        import cupy
        env["cupy"] = cupy.__version__
        try:
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            env["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception:
            env["gpu"] = "unknown"
        if torch is not None and torch.cuda.is_available():
            env["torch_gpu"] = torch.cuda.get_device_name(0)
    return env


def print_header(env):
    print("=" * 78)
    print(f"minilm engine benchmark  (device {env['device']}, {env['mode']} run)")
    print("=" * 78)
    print(f"python {env['python']} on {env['platform']}")
    la = env["loadavg_1_5_15"]
    print(f"cpu: {env['cpu']}, {env['logical_cpus']} logical CPUs, load average "
          f"{'?' if la is None else ' '.join(f'{v:.2f}' for v in la)} (1/5/15 min; other work on the machine adds noise)")
    if "gpu" in env:
        print(f"gpu: {env['gpu']} (cupy {env['cupy']})" + (f"; torch sees {env['torch_gpu']}" if "torch_gpu" in env else ""))
    print(f"numpy {env['numpy']} ({env['numpy_blas']}), torch {env['torch'] or 'not installed'}, minilm {env['minilm']}")
    print(f"threads limited by: {env['thread_limit_method']}")
    for v in _THREAD_VARS:
        before = env["env_before_script"][v]
        now = env["env"][v]
        note = "" if before == now else f"  (was {before if before is not None else 'unset'})"
        print(f"  {v}={now if now is not None else '(unset)'}{note}")
    if "threadpools" in env:
        for p in env["threadpools"]:
            print(f"  threadpool {p['user_api']}/{p['internal_api']} {p.get('version') or ''} "
                  f"{p.get('architecture') or ''}: num_threads={p['num_threads']}")
    if "torch_threads" in env:
        t = env["torch_threads"]
        print(f"  torch: intra-op threads {t['intra_op']}, inter-op threads {t['inter_op']}")
    ct = env["env"]["OPENBLAS_CORETYPE"]
    if ct is not None:
        print(f"OPENBLAS_CORETYPE={ct}  -- left as found: it forces OpenBLAS's kernel choice and can slow "
              "NumPy's (and so minilm's) matmul; unset it to compare with the CPU's own kernel")
    else:
        print("OPENBLAS_CORETYPE unset (OpenBLAS picks its kernel for this CPU)")
    if env["torch_note"]:
        print(f"NOTE: {env['torch_note']}")
    print("timing: best of R repeats of M loops (gc off while timing), candidates interleaved;")
    print("        compare the ratios of this run, not absolute times across runs or machines")


# ---- part A: per-op overhead -------------------------------------------------------------

def op_cases(dev, xp, tdev, use_torch):
    """[(name, note, minilm forward, torch forward, raw forward, minilm tensors with grad, torch tensors)]."""
    rng = np.random.default_rng(0)
    n = 16
    a_h = rng.standard_normal((n, n)).astype(np.float32)
    b_h = rng.standard_normal((n, n)).astype(np.float32)
    w_h = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    bias_h = (0.1 * rng.standard_normal(n)).astype(np.float32)
    tgt_h = rng.integers(0, n, size=n).astype(np.int64)
    idx_h = rng.integers(0, n, size=8).astype(np.int64)

    def m(arr, grad=True):
        return minilm.tensor(arr, requires_grad=grad and arr.dtype.kind == "f", device=dev)

    ma, mb, mw, mbias, mtgt, midx = m(a_h), m(b_h), m(w_h), m(bias_h), m(tgt_h, False), m(idx_h, False)
    ra, rb, rw, rbias, rtgt, ridx = (xp.asarray(v) for v in (a_h, b_h, w_h, bias_h, tgt_h, idx_h))
    rrows = xp.arange(n)
    if use_torch:
        def t(arr, grad=True):
            x = torch.from_numpy(arr.copy()).to(tdev)
            return x.requires_grad_() if grad and arr.dtype.kind == "f" else x
        ta, tb, tw, tbias, ttgt, tidx = t(a_h), t(b_h), t(w_h), t(bias_h), t(tgt_h, False), t(idx_h, False)
        TF = torch.nn.functional
    else:
        ta = tb = tw = tbias = ttgt = tidx = TF = None

    def raw_softmax(x):
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def raw_layer_norm(x):
        mu = x.mean(axis=-1, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(axis=-1, keepdims=True)
        return xc / xp.sqrt(var + 1e-5) * rw + rbias

    def raw_cross_entropy(z):
        s = z - z.max(axis=-1, keepdims=True)
        lse = xp.log(xp.exp(s).sum(axis=-1))
        return (lse - s[rrows, rtgt]).mean()

    # name, what, minilm fwd, torch fwd, raw fwd, minilm grad inputs, torch grad inputs
    cases = [
        ("add", "a + b", lambda: ma + mb, lambda: ta + tb, lambda: ra + rb, (ma, mb), (ta, tb)),
        ("mul", "a * b", lambda: ma * mb, lambda: ta * tb, lambda: ra * rb, (ma, mb), (ta, tb)),
        ("matmul", "a @ b", lambda: ma @ mb, lambda: ta @ tb, lambda: ra @ rb, (ma, mb), (ta, tb)),
        ("exp", "exp(a)", lambda: F.exp(ma), lambda: torch.exp(ta), lambda: xp.exp(ra), (ma,), (ta,)),
        ("sum", "a.sum()", lambda: ma.sum(), lambda: ta.sum(), lambda: ra.sum(), (ma,), (ta,)),
        ("relu", "relu(a)", lambda: F.relu(ma), lambda: torch.relu(ta), lambda: xp.maximum(ra, 0), (ma,), (ta,)),
        ("softmax", "softmax(a, -1)", lambda: F.softmax(ma, axis=-1), lambda: torch.softmax(ta, dim=-1),
         lambda: raw_softmax(ra), (ma,), (ta,)),
        ("layer_norm", "layer_norm(a, w, b)", lambda: F.layer_norm(ma, mw, mbias),
         lambda: TF.layer_norm(ta, (n,), tw, tbias, eps=1e-5), lambda: raw_layer_norm(ra), (ma, mw, mbias),
         (ta, tw, tbias)),
        ("cross_entropy", "CE(a, int64 targets)", lambda: F.cross_entropy(ma, mtgt),
         lambda: TF.cross_entropy(ta, ttgt), lambda: raw_cross_entropy(ra), (ma,), (ta,)),
        ("getitem", "a[2:10]", lambda: ma[2:10], lambda: ta[2:10], lambda: ra[2:10], (ma,), (ta,)),
        ("getitem[int]", "a[int64 idx (8,)]", lambda: ma[midx], lambda: ta[tidx], lambda: ra[ridx], (ma,), (ta,)),
        ("reshape", "a.reshape(4, 64)", lambda: ma.reshape(4, 64), lambda: ta.reshape(4, 64),
         lambda: ra.reshape(4, 64), (ma,), (ta,)),
    ]
    return cases


def _fwd_bwd(fwd, leaves):
    def step():
        for p in leaves:
            p.grad = None
        fwd().sum().backward()
    return step


def check_op_values(cases, use_torch):
    """Forward values of minilm, torch and raw agree, and so do minilm's and torch's input
    gradients of out.sum() (a benchmark of wrong code is worthless)."""
    bad = []
    for name, _, mf, tf, rf, mleaves, tleaves in cases:
        mv = np.asarray(minilm.backend.to_numpy(mf().data), dtype=np.float64)
        rv = np.asarray(minilm.backend.to_numpy(rf()), dtype=np.float64)
        if not np.allclose(mv, rv, rtol=1e-4, atol=1e-5):
            bad.append(f"{name}: minilm vs raw max |diff| {np.max(np.abs(mv - rv)):.3g}")
        if use_torch:
            tv = tf().detach().cpu().numpy().astype(np.float64)
            if not np.allclose(mv, tv, rtol=1e-4, atol=1e-5):
                bad.append(f"{name}: minilm vs torch max |diff| {np.max(np.abs(mv - tv)):.3g}")
            _fwd_bwd(mf, mleaves)()
            _fwd_bwd(tf, tleaves)()
            for i, (ml, tl) in enumerate(zip(mleaves, tleaves)):
                mg = np.asarray(minilm.backend.to_numpy(ml.grad.data), dtype=np.float64)
                tg = tl.grad.detach().cpu().numpy().astype(np.float64)
                if not np.allclose(mg, tg, rtol=1e-4, atol=1e-5):
                    bad.append(f"{name}: grad of input {i}, minilm vs torch max |diff| {np.max(np.abs(mg - tg)):.3g}")
    return bad


def part_a(timer, dev, xp, xp_name, tdev, use_torch):
    cases = op_cases(dev, xp, tdev, use_torch)
    bad = check_op_values(cases, use_torch)
    results = []
    for name, what, mf, tf, rf, mleaves, tleaves in cases:
        cands = {"minilm_fwd": mf, "raw_fwd": rf, "minilm_fwdbwd": _fwd_bwd(mf, mleaves)}
        if use_torch:
            cands["torch_fwd"] = tf
            cands["torch_fwdbwd"] = _fwd_bwd(tf, tleaves)
        best = timer.measure(cands)
        us = {k: v * 1e6 for k, v in best.items()}
        results.append({
            "op": name, "expr": what,
            "minilm_fwd_us": us["minilm_fwd"], "torch_fwd_us": us.get("torch_fwd"),
            "raw_fwd_us": us["raw_fwd"],
            "minilm_fwdbwd_us": us["minilm_fwdbwd"], "torch_fwdbwd_us": us.get("torch_fwdbwd"),
            "ratio_fwd_minilm_torch": _ratio(us["minilm_fwd"], us.get("torch_fwd")),
            "ratio_fwd_minilm_raw": _ratio(us["minilm_fwd"], us["raw_fwd"]),
            "ratio_fwdbwd_minilm_torch": _ratio(us["minilm_fwdbwd"], us.get("torch_fwdbwd")),
        })
    return results, bad


def print_part_a(results, xp_name, repeat, bad, use_torch):
    print()
    print("-" * 78)
    print(f"A. per-op overhead, (16, 16) float32, inputs require grad; best of {repeat} repeats")
    print("-" * 78)
    if bad:
        print("WARNING: forward values disagree: " + "; ".join(bad))
    else:
        if use_torch:
            print(f"checked for every op: forward values minilm == torch == {xp_name}, "
                  "input grads minilm == torch (rtol 1e-4)")
        else:
            print(f"checked for every op: forward values minilm == {xp_name} (rtol 1e-4)")
    print()
    print("forward only (graph recorded; raw = the bare array expression, no autograd):")
    rows = [[r["op"], r["expr"], _fmt(r["minilm_fwd_us"]), _fmt(r["torch_fwd_us"]), _fmt(r["raw_fwd_us"]),
             _fmt(r["ratio_fwd_minilm_torch"], "{:.2f}"), _fmt(r["ratio_fwd_minilm_raw"], "{:.1f}")]
            for r in results]
    print(_table(["op", "expression", "minilm µs", "torch µs", f"{xp_name} µs", "minilm/torch",
                  f"minilm/{xp_name}"], rows, ["<", "<", ">", ">", ">", ">", ">"]))
    print()
    print("forward + backward (clear input grads; out.sum().backward()):")
    rows = [[r["op"], _fmt(r["minilm_fwdbwd_us"]), _fmt(r["torch_fwdbwd_us"]),
             _fmt(r["ratio_fwdbwd_minilm_torch"], "{:.2f}")] for r in results]
    print(_table(["op", "minilm µs", "torch µs", "minilm/torch"], rows))


# ---- part B: MLP training step ------------------------------------------------------------

N, D_IN, D_HID, N_CLS = 512, 256, 512, 10
LR = 0.1
_C = math.sqrt(2.0 / math.pi)


def mlp_init(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D_IN)).astype(np.float32)
    y = rng.integers(0, N_CLS, size=N).astype(np.int64)
    params = {
        "W1": (rng.standard_normal((D_IN, D_HID)) / math.sqrt(D_IN)).astype(np.float32),
        "b1": (0.01 * rng.standard_normal(D_HID)).astype(np.float32),
        "W2": (rng.standard_normal((D_HID, N_CLS)) / math.sqrt(D_HID)).astype(np.float32),
        "b2": (0.01 * rng.standard_normal(N_CLS)).astype(np.float32),
    }
    return x, y, params


def make_minilm_step(dev, act, x_h, y_h, params_h):
    x = minilm.tensor(x_h, device=dev)
    y = minilm.tensor(y_h, device=dev)
    P = {k: minilm.tensor(v, requires_grad=True, device=dev) for k, v in params_h.items()}
    params = list(P.values())

    def step():
        h = x @ P["W1"] + P["b1"]
        a = F.gelu(h, approximate="tanh") if act == "gelu" else F.relu(h)
        logits = a @ P["W2"] + P["b2"]
        loss = F.cross_entropy(logits, y)
        for p in params:
            p.grad = None
        loss.backward()
        for p in params:
            p.data -= LR * p.grad.data
        return loss

    return step, lambda loss: float(loss.item())


def make_torch_step(tdev, act, x_h, y_h, params_h):
    x = torch.from_numpy(x_h.copy()).to(tdev)
    y = torch.from_numpy(y_h.copy()).to(tdev)
    P = {k: torch.from_numpy(v.copy()).to(tdev).requires_grad_() for k, v in params_h.items()}
    params = list(P.values())
    TF = torch.nn.functional

    def step():
        h = x @ P["W1"] + P["b1"]
        a = TF.gelu(h, approximate="tanh") if act == "gelu" else torch.relu(h)
        logits = a @ P["W2"] + P["b2"]
        loss = TF.cross_entropy(logits, y)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= LR * p.grad
        return loss

    return step, lambda loss: float(loss.item())


def make_raw_step(xp, act, x_h, y_h, params_h):
    """Forward, hand-derived backward and SGD in plain array code."""
    x = xp.asarray(x_h)
    y = xp.asarray(y_h)
    W1, b1, W2, b2 = (xp.asarray(params_h[k]).copy() for k in ("W1", "b1", "W2", "b2"))
    rows = xp.arange(N)

    def step():
        nonlocal W1, b1, W2, b2  # updated in place below
        h = x @ W1 + b1                                          # (N, H)
        if act == "gelu":
            t = xp.tanh(_C * (h + 0.044715 * h * h * h))
            a = 0.5 * h * (1 + t)
        else:
            a = xp.maximum(h, 0)
        z = a @ W2 + b2                                          # (N, C)
        s = z - z.max(axis=1, keepdims=True)
        e = xp.exp(s)
        se = e.sum(axis=1, keepdims=True)
        loss = (xp.log(se[:, 0]) - s[rows, y]).mean()
        dz = e / se                                              # softmax
        dz[rows, y] -= 1
        dz *= 1.0 / N
        dW2 = a.T @ dz
        db2 = dz.sum(axis=0)
        da = dz @ W2.T
        if act == "gelu":
            dh = da * (0.5 * (1 + t) + 0.5 * h * (1 - t * t) * _C * (1 + 3 * 0.044715 * h * h))
        else:
            dh = da * (h > 0)
        dW1 = x.T @ dh
        db1 = dh.sum(axis=0)
        W1 -= LR * dW1
        b1 -= LR * db1
        W2 -= LR * dW2
        b2 -= LR * db2
        return loss

    return step, lambda loss: float(loss)


def part_b(timer, dev, xp, tdev, use_torch, act):
    x_h, y_h, p_h = mlp_init()
    makers = {"minilm": lambda: make_minilm_step(dev, act, x_h, y_h, p_h),
              "raw": lambda: make_raw_step(xp, act, x_h, y_h, p_h)}
    if use_torch:
        makers["torch"] = lambda: make_torch_step(tdev, act, x_h, y_h, p_h)
    # correctness first: losses of steps 1 and 2 from fresh copies of the same init
    losses = {}
    for k, mk in makers.items():
        step, value = mk()
        losses[k] = [value(step()), value(step())]
    checks = []
    for other in ("torch", "raw"):
        if other not in losses:
            continue
        for i in range(2):
            d = abs(losses["minilm"][i] - losses[other][i])
            checks.append({"vs": other, "step": i + 1, "minilm": losses["minilm"][i], "other": losses[other][i],
                           "abs_diff": d, "ok": d <= 1e-4})
    # timing: fresh copies again (weights drift while timed; that does not change the cost)
    steps = {k: mk()[0] for k, mk in makers.items()}
    best = timer.measure(steps)
    ms = {k: v * 1e3 for k, v in best.items()}
    flop = 3 * 2 * N * (D_IN * D_HID + D_HID * N_CLS)  # fwd + 2 backward GEMMs (x needs no grad: ~2.5x, upper bound)
    return {"activation": "gelu(tanh)" if act == "gelu" else "relu", "batch": N, "d_in": D_IN,
            "hidden": D_HID, "classes": N_CLS, "lr": LR,
            "ms_per_step": ms, "ratio_minilm_torch": _ratio(ms["minilm"], ms.get("torch")),
            "ratio_minilm_raw": _ratio(ms["minilm"], ms["raw"]), "loss_checks": checks,
            "gemm_gflop_per_step_upper": flop / 1e9}


def print_part_b(res, xp_name, repeat):
    print()
    print("-" * 78)
    print(f"B. MLP training step: ({res['batch']}, {res['d_in']}) float32 -> Linear({res['d_in']}->{res['hidden']}) "
          f"-> {res['activation']}")
    print(f"   -> Linear({res['hidden']}->{res['classes']}) -> cross-entropy -> backward -> SGD (lr {res['lr']}); "
          f"best of {repeat} repeats")
    print("-" * 78)
    for c in res["loss_checks"]:
        name = xp_name if c["vs"] == "raw" else c["vs"]
        when = "first step (same init)" if c["step"] == 1 else "after one SGD update"
        print(f"loss check, {when:22s}: minilm {c['minilm']:.7f}  {name} {c['other']:.7f}  "
              f"|diff| {c['abs_diff']:.1e}  {'ok (<= 1e-4)' if c['ok'] else 'MISMATCH (> 1e-4)'}")
    print()
    ms = res["ms_per_step"]
    rows = [["minilm", _fmt(ms["minilm"], "{:.2f}"), "1.00"]]
    if "torch" in ms:
        rows.append(["torch", _fmt(ms["torch"], "{:.2f}"), _fmt(res["ratio_minilm_torch"], "{:.2f}")])
    rows.append([f"{xp_name} (hand-written backward)", _fmt(ms["raw"], "{:.2f}"),
                 _fmt(res["ratio_minilm_raw"], "{:.2f}")])
    print(_table(["implementation", "ms/step", "minilm / this"], rows))


def print_summary(a, b, xp_name, use_torch):
    print()
    print("=" * 78)
    print("summary: ratios (>1 means minilm is slower)")
    print("=" * 78)
    rows = []
    for r in a:
        rows.append([r["op"], _fmt(r["ratio_fwd_minilm_torch"], "{:.2f}"),
                     _fmt(r["ratio_fwdbwd_minilm_torch"], "{:.2f}"), _fmt(r["ratio_fwd_minilm_raw"], "{:.1f}")])
    g = [_geomean([r[k] for r in a]) for k in ("ratio_fwd_minilm_torch", "ratio_fwdbwd_minilm_torch",
                                               "ratio_fwd_minilm_raw")]
    rows.append(["geometric mean", _fmt(g[0], "{:.2f}"), _fmt(g[1], "{:.2f}"), _fmt(g[2], "{:.1f}")])
    rows.append(["MLP train step", _fmt(b["ratio_minilm_torch"], "{:.2f}"), "",
                 _fmt(b["ratio_minilm_raw"], "{:.2f}")])
    print(_table(["what", "minilm/torch fwd", "minilm/torch fwd+bwd", f"minilm/{xp_name} fwd"], rows))
    print("(for the MLP row the torch and raw columns are whole training steps)")
    if not use_torch:
        print("(torch columns skipped: see the note in the header)")
    return {"geomean_fwd_minilm_torch": g[0], "geomean_fwdbwd_minilm_torch": g[1],
            "geomean_fwd_minilm_raw": g[2], "mlp_minilm_torch": b["ratio_minilm_torch"],
            "mlp_minilm_raw": b["ratio_minilm_raw"]}


# ---- main ------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where minilm (and torch, if it can) computes")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repeats (~10 s instead of ~25 s)")
    ap.add_argument("--out", metavar="DIR", help="also write the results as JSON to DIR/bench_engine_<device>.json")
    ap.add_argument("--act", choices=("gelu", "relu"), default="gelu",
                    help="MLP hidden activation (gelu = tanh approximation)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    dev = args.device
    torch_note = None
    use_torch = torch is not None
    if not use_torch:
        torch_note = f"torch is not importable ({_TORCH_ERROR}); torch columns skipped"
    if dev == "cuda":
        if not minilm.backend.cuda_available():
            sys.exit("bench_engine: --device cuda needs CuPy and a visible GPU (minilm.backend.cuda_available() "
                     "is False)")
        import cupy
        xp, xp_name = cupy, "cupy"
        cupy_sync = cupy.cuda.Device().synchronize
        tdev = "cuda"
        if use_torch and not torch.cuda.is_available():
            use_torch = False
            torch_note = "torch.cuda.is_available() is False (a CPU build of torch?); torch columns skipped"
        if use_torch:
            def sync():
                cupy_sync()
                torch.cuda.synchronize()
        else:
            sync = cupy_sync
    else:
        xp, xp_name, tdev = np, "numpy", "cpu"
        sync = lambda: None  # noqa: E731

    if args.quick:
        timer_a = Timer(sync, repeat=3, target_s=0.004)
        timer_b = Timer(sync, repeat=7, target_s=0.04)
    else:
        timer_a = Timer(sync, repeat=7, target_s=0.02)
        timer_b = Timer(sync, repeat=7, target_s=0.15)

    env = environment(args, xp_name, torch_note)
    print_header(env)
    sys.stdout.flush()

    a, bad = part_a(timer_a, dev, xp, xp_name, tdev, use_torch)
    print_part_a(a, xp_name, timer_a.repeat, bad, use_torch)
    sys.stdout.flush()

    b = part_b(timer_b, dev, xp, tdev, use_torch, args.act)
    print_part_b(b, xp_name, timer_b.repeat)

    summary = print_summary(a, b, xp_name, use_torch)
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal time {elapsed:.1f} s")

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"bench_engine_{dev}.json")
        with open(path, "w") as f:
            json.dump({"environment": env, "per_op": a, "per_op_value_mismatches": bad, "mlp": b,
                       "summary": summary, "elapsed_s": elapsed}, f, indent=2)
        print(f"results written to {path}")
    failed = bool(bad) or any(not c["ok"] for c in b["loss_checks"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
