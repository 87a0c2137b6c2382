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
installed, otherwise through OMP/OPENBLAS/MKL_NUM_THREADS=1 set by
``_common`` (imported first), before NumPy is imported.  The header says
which.  OPENBLAS_CORETYPE is reported and never changed.

Timings are best of R repeats of M loops (as timeit), candidates interleaved
repeat by repeat so that a slow moment of a shared machine hits all of them;
the ratios within one run are the result, not the absolute times.
On "cuda" the raw baseline is the same expression in CuPy and every timed loop
ends with a device synchronize.
"""
from __future__ import annotations

import _common  # first: limits BLAS threads before NumPy is imported (see its docstring)

import functools
import math
import sys
import time

import numpy as np

import minilm
import minilm.functional as F
from _common import TORCH_ERROR, Timer, banner, fmt, ratio, table, torch

_common.limit_loaded_threads()  # every BLAS/OpenMP pool loaded so far; torch to one thread


def _geomean(values):
    vals = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


# ---- environment ---------------------------------------------------------------------

def environment(args, xp_name, torch_note):
    env = _common.environment(
        "quick" if args.quick else "full",
        versions={"numpy_blas": _common.numpy_blas(), "torch": None if torch is None else torch.__version__,
                  "minilm": getattr(minilm, "__version__", "?"), "device": args.device, "raw_baseline": xp_name},
        extra={"torch_note": torch_note})
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
    _common.print_environment(env, f"minilm engine benchmark  (device {env['device']}, {env['mode']} run)",
                              coretype_note=_common.CORETYPE_FORCED + "; unset it to compare with the CPU's own kernel")
    if "gpu" in env:
        print(f"gpu: {env['gpu']}" + (f"; torch sees {env['torch_gpu']}" if "torch_gpu" in env else ""))
    print(_common.TIMING_NOTE.format(calls="loops"))


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
            "ratio_fwd_minilm_torch": ratio(us["minilm_fwd"], us.get("torch_fwd")),
            "ratio_fwd_minilm_raw": ratio(us["minilm_fwd"], us["raw_fwd"]),
            "ratio_fwdbwd_minilm_torch": ratio(us["minilm_fwdbwd"], us.get("torch_fwdbwd")),
        })
    return results, bad


def print_part_a(results, xp_name, repeat, bad, use_torch):
    print()
    banner(f"A. per-op overhead, (16, 16) float32, inputs require grad; best of {repeat} repeats", char="-")
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
    rows = [[r["op"], r["expr"], fmt(r["minilm_fwd_us"]), fmt(r["torch_fwd_us"]), fmt(r["raw_fwd_us"]),
             fmt(r["ratio_fwd_minilm_torch"], "{:.2f}"), fmt(r["ratio_fwd_minilm_raw"], "{:.1f}")]
            for r in results]
    print(table(["op", "expression", "minilm µs", "torch µs", f"{xp_name} µs", "minilm/torch",
                 f"minilm/{xp_name}"], rows, ["<", "<", ">", ">", ">", ">", ">"]))
    print()
    print("forward + backward (clear input grads; out.sum().backward()):")
    rows = [[r["op"], fmt(r["minilm_fwdbwd_us"]), fmt(r["torch_fwdbwd_us"]),
             fmt(r["ratio_fwdbwd_minilm_torch"], "{:.2f}")] for r in results]
    print(table(["op", "minilm µs", "torch µs", "minilm/torch"], rows))


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


def _autograd_step(x, y, P, activation, cross_entropy, sgd_update):
    """The MLP's training step in a framework with autograd (minilm or torch): forward, clear the
    grads, backward, ``sgd_update(params)``."""
    params = list(P.values())

    def step():
        h = x @ P["W1"] + P["b1"]
        logits = activation(h) @ P["W2"] + P["b2"]
        loss = cross_entropy(logits, y)
        for p in params:
            p.grad = None
        loss.backward()
        sgd_update(params)
        return loss

    return step


def make_minilm_step(dev, act, x_h, y_h, params_h):
    x = minilm.tensor(x_h, device=dev)
    y = minilm.tensor(y_h, device=dev)
    P = {k: minilm.tensor(v, requires_grad=True, device=dev) for k, v in params_h.items()}

    def sgd_update(params):
        for p in params:
            p.data -= LR * p.grad.data

    activation = functools.partial(F.gelu, approximate="tanh") if act == "gelu" else F.relu
    return _autograd_step(x, y, P, activation, F.cross_entropy, sgd_update), lambda loss: float(loss.item())


def make_torch_step(tdev, act, x_h, y_h, params_h):
    x = torch.from_numpy(x_h.copy()).to(tdev)
    y = torch.from_numpy(y_h.copy()).to(tdev)
    P = {k: torch.from_numpy(v.copy()).to(tdev).requires_grad_() for k, v in params_h.items()}
    TF = torch.nn.functional

    def sgd_update(params):
        with torch.no_grad():
            for p in params:
                p -= LR * p.grad

    activation = functools.partial(TF.gelu, approximate="tanh") if act == "gelu" else torch.relu
    return _autograd_step(x, y, P, activation, TF.cross_entropy, sgd_update), lambda loss: float(loss.item())


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
            "ms_per_step": ms, "ratio_minilm_torch": ratio(ms["minilm"], ms.get("torch")),
            "ratio_minilm_raw": ratio(ms["minilm"], ms["raw"]), "loss_checks": checks,
            "gemm_gflop_per_step_upper": flop / 1e9}


def print_part_b(res, xp_name, repeat):
    print()
    banner(f"B. MLP training step: ({res['batch']}, {res['d_in']}) float32 -> Linear({res['d_in']}->{res['hidden']}) "
           f"-> {res['activation']}",
           f"   -> Linear({res['hidden']}->{res['classes']}) -> cross-entropy -> backward -> SGD (lr {res['lr']}); "
           f"best of {repeat} repeats", char="-")
    for c in res["loss_checks"]:
        name = xp_name if c["vs"] == "raw" else c["vs"]
        when = "first step (same init)" if c["step"] == 1 else "after one SGD update"
        print(f"loss check, {when:22s}: minilm {c['minilm']:.7f}  {name} {c['other']:.7f}  "
              f"|diff| {c['abs_diff']:.1e}  {'ok (<= 1e-4)' if c['ok'] else 'MISMATCH (> 1e-4)'}")
    print()
    ms = res["ms_per_step"]
    rows = [["minilm", fmt(ms["minilm"], "{:.2f}"), "1.00"]]
    if "torch" in ms:
        rows.append(["torch", fmt(ms["torch"], "{:.2f}"), fmt(res["ratio_minilm_torch"], "{:.2f}")])
    rows.append([f"{xp_name} (hand-written backward)", fmt(ms["raw"], "{:.2f}"),
                 fmt(res["ratio_minilm_raw"], "{:.2f}")])
    print(table(["implementation", "ms/step", "minilm / this"], rows))


def print_summary(a, b, xp_name, use_torch):
    print()
    banner("summary: ratios (>1 means minilm is slower)")
    rows = []
    for r in a:
        rows.append([r["op"], fmt(r["ratio_fwd_minilm_torch"], "{:.2f}"),
                     fmt(r["ratio_fwdbwd_minilm_torch"], "{:.2f}"), fmt(r["ratio_fwd_minilm_raw"], "{:.1f}")])
    g = [_geomean([r[k] for r in a]) for k in ("ratio_fwd_minilm_torch", "ratio_fwdbwd_minilm_torch",
                                               "ratio_fwd_minilm_raw")]
    rows.append(["geometric mean", fmt(g[0], "{:.2f}"), fmt(g[1], "{:.2f}"), fmt(g[2], "{:.1f}")])
    rows.append(["MLP train step", fmt(b["ratio_minilm_torch"], "{:.2f}"), "",
                 fmt(b["ratio_minilm_raw"], "{:.2f}")])
    print(table(["what", "minilm/torch fwd", "minilm/torch fwd+bwd", f"minilm/{xp_name} fwd"], rows))
    print("(for the MLP row the torch and raw columns are whole training steps)")
    if not use_torch:
        print("(torch columns skipped: see the note in the header)")
    return {"geomean_fwd_minilm_torch": g[0], "geomean_fwdbwd_minilm_torch": g[1],
            "geomean_fwd_minilm_raw": g[2], "mlp_minilm_torch": b["ratio_minilm_torch"],
            "mlp_minilm_raw": b["ratio_minilm_raw"]}


# ---- main ------------------------------------------------------------------------------------

def main(argv=None):
    ap = _common.arg_parser(__doc__)
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
        torch_note = f"torch is not importable ({TORCH_ERROR}); torch columns skipped"
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
        timer_a = Timer(repeat=3, target_s=0.004, sync=sync)
        timer_b = Timer(repeat=7, target_s=0.04, sync=sync)
    else:
        timer_a = Timer(repeat=7, target_s=0.02, sync=sync)
        timer_b = Timer(repeat=7, target_s=0.15, sync=sync)

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
        path = _common.write_json(args.out, f"bench_engine_{dev}.json",
                                  {"environment": env, "per_op": a, "per_op_value_mismatches": bad, "mlp": b,
                                   "summary": summary, "elapsed_s": elapsed})
        print(f"results written to {path}")
    failed = bool(bad) or any(not c["ok"] for c in b["loss_checks"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
