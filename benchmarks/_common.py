"""What the benchmark scripts share: one thread, the imports, timing, the environment record, tables.

Import this module FIRST in each script, before NumPy, torch or numba (the script's
``from __future__`` line may precede it; nothing else should):

    import _common  # first: limits threads before NumPy is imported

Ordering guarantee: importing this module, before it imports anything but os, sys and
importlib, records OMP/OPENBLAS/MKL_NUM_THREADS and NUMBA_NUM_THREADS as the caller's
environment had them and, when threadpoolctl is not installed, sets the first three
to 1; only then does it import NumPy (and torch, if it can).  BLAS reads those
variables when it is loaded, so they take effect only if NumPy was not imported
before this module; ``NUMPY_PRELOADED`` says whether it was, and the header warns.
``limit_numba_threads()`` sets NUMBA_NUM_THREADS=1 and must be called before numba
is imported (the attention and GPT benchmarks call it right after this import).
After its own imports a script calls ``limit_loaded_threads()``: threadpoolctl's
limit on every BLAS/OpenMP pool loaded so far (when it is installed),
``torch.set_num_threads(1)`` and ``set_num_interop_threads(1)``, optionally
``numba.set_num_threads(1)``.  OPENBLAS_CORETYPE is reported, never changed.

Importing it also puts this checkout on ``sys.path`` (first, unless it is already
there: ``REPO``), so the scripts measure this checkout's minilm from any working
directory; scripts run as ``python benchmarks/<script>.py`` find this module
because Python puts the script's folder first on ``sys.path``.
"""
from __future__ import annotations

import importlib.util
import os
import sys

# ---- threads: must happen before NumPy (or torch, or numba) is imported ------------------
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
NUMBA_VAR = "NUMBA_NUM_THREADS"
ENV_BEFORE = {v: os.environ.get(v) for v in THREAD_VARS + (NUMBA_VAR,)}  # as the caller had them
HAVE_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None
NUMPY_PRELOADED = "numpy" in sys.modules  # imported by something that loaded numpy first
if not HAVE_THREADPOOLCTL:
    for _v in THREAD_VARS:
        os.environ[_v] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
    TORCH_ERROR = None
except Exception as e:  # not installed, or a broken install: the scripts skip (or refuse) its columns
    torch = None
    TORCH_ERROR = f"{type(e).__name__}: {e}"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # measure this checkout's minilm

THREADPOOL_LIMITER = None  # threadpoolctl's limit, kept alive while the script runs


def limit_numba_threads():
    """NUMBA_NUM_THREADS=1 (threadpoolctl does not reach Numba's own pool); Numba reads it when it is
    imported, so call this before numba is (minilm's CPU kernels are Numba-jitted)."""
    os.environ[NUMBA_VAR] = "1"


def limit_loaded_threads(*, numba=False, scipy_blas=False):
    """After the script's imports: one thread for every BLAS/OpenMP pool loaded so far (threadpoolctl,
    when installed; with ``scipy_blas``, SciPy's BLAS is loaded first so that the limit reaches it too),
    for torch's intra- and inter-op pools, and with ``numba`` for Numba's."""
    global THREADPOOL_LIMITER
    if numba:
        import numba as _numba
        _numba.set_num_threads(1)
    if HAVE_THREADPOOLCTL:
        if scipy_blas:
            import scipy.linalg  # noqa: F401
        from threadpoolctl import threadpool_limits
        THREADPOOL_LIMITER = threadpool_limits(limits=1)
    if torch is not None:
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work already started
            pass


# ---- timing ---------------------------------------------------------------------------------

def _no_sync():
    pass


class Timer:
    """Best-of-R-repeats-of-M-loops timing (as timeit), the candidates interleaved repeat by repeat
    so that a slow moment of a shared machine hits all of them; gc off while timing.

    M per candidate: three warm-up calls, then 1, 10, 100, ... loops until one run takes a fifth of
    ``target_s``, scaled to ``target_s`` (for calls of microseconds).  ``sync`` is called before and
    after each timed run (a device synchronize); ``rotate`` changes who goes first each repeat."""

    def __init__(self, repeat: int, target_s: float, sync=None, rotate=False):
        self.repeat, self.target_s = repeat, target_s
        self.sync = sync or _no_sync
        self.rotate = rotate

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
        names = list(candidates)
        for i in range(self.repeat):
            gc.collect()
            order = names[i % len(names):] + names[:i % len(names)] if self.rotate else names
            for k in order:
                best[k] = min(best[k], self._run(candidates[k], numbers[k]) / numbers[k])
        return best


class LongCallTimer(Timer):
    """The same, for calls of milliseconds to seconds: M from one timed call (two when the first, the
    warm-up, is under ``target_s``), at most 100,000."""

    def _calibrate(self, fn):
        t = self._run(fn, 1)  # warm-up: caches, lazy imports, allocator pools
        if t < self.target_s:
            t = self._run(fn, 1)
        return max(1, min(100_000, int(math.ceil(self.target_s / max(t, 1e-9)))))


def tracemalloc_peak(fn):
    """(peak, retained): bytes allocated through Python/NumPy during fn() and live at once at the most,
    and still live after it (fn's result dropped), both over what was live before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, current - before


# ---- numbers and tables ------------------------------------------------------------------------

def ratio(a, b):
    return None if a is None or b is None or not b else a / b


def fmt(v, spec="{:.1f}", none="-"):
    return none if v is None else spec.format(v)


def mb(b):
    return None if b is None else b / 2 ** 20


def table(header, rows, aligns=None):
    """Plain text table: first column left-aligned, the rest right-aligned."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    aligns = aligns or ["<"] + [">"] * (len(header) - 1)
    line = lambda r: "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, aligns, widths))  # noqa: E731
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def banner(*lines, char="="):
    """The lines between two rules of ``char``, 78 wide."""
    print(char * 78)
    for ln in lines:
        print(ln)
    print(char * 78)


# ---- environment ------------------------------------------------------------------------------

POOL_KEYS = ("user_api", "internal_api", "num_threads", "version", "architecture", "prefix")
LIMITED_BY_THREADPOOLCTL = "threadpoolctl.threadpool_limits(1)"
LIMITED_BY_ENV = ("environment variables OMP/OPENBLAS/MKL_NUM_THREADS=1 set by the script "
                    "before importing numpy (threadpoolctl is not installed)")
PRELOADED_WARNING = " -- WARNING: numpy was imported before this script, so they may not apply"
CORETYPE_FORCED = ("  -- left as found: it forces OpenBLAS's kernel choice and can slow "
                   "NumPy's (and so minilm's) matmul")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


def machine_env():
    """The first entries of every script's environment record: Python, the machine, NumPy."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
    }


def env_vars(names):
    """{name: value now} of these environment variables."""
    return {v: os.environ.get(v) for v in names}


def env_before_script(names):
    """{name: value before the script changed it} of these thread variables."""
    return {v: ENV_BEFORE[v] for v in names}


def thread_env(pool_keys=POOL_KEYS, *, via_threadpoolctl=LIMITED_BY_THREADPOOLCTL, via_env=LIMITED_BY_ENV,
               preloaded_warning=PRELOADED_WARNING):
    """How threads were limited: thread_limit_method, threadpools (threadpoolctl's view of the pools,
    these keys), torch_threads -- the entries that end every script's environment record."""
    out = {}
    if HAVE_THREADPOOLCTL:
        from threadpoolctl import threadpool_info
        out["thread_limit_method"] = via_threadpoolctl
        out["threadpools"] = [{k: p.get(k) for k in pool_keys} for p in threadpool_info()]
    else:
        out["thread_limit_method"] = via_env + (preloaded_warning if NUMPY_PRELOADED else "")
    if torch is not None:
        out["torch_threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    return out


def environment(mode, *, versions, thread_vars=THREAD_VARS, extra_vars=(), pool_keys=POOL_KEYS,
                extra=None, **limited_by):
    """The run's environment record, the same skeleton in every script (the JSON's "environment"):
    machine_env(); ``versions`` (library versions and the script's settings, {"torch": ...});
    "mode"; "env" (the thread variables, OPENBLAS_CORETYPE and ``extra_vars`` as they are now);
    "env_before_script" (the thread variables as the caller had them); the script's own ``extra``
    entries; last thread_env(pool_keys, **limited_by): how the threads were limited."""
    return {
        **machine_env(),
        **versions,
        "mode": mode,
        "env": env_vars(thread_vars + ("OPENBLAS_CORETYPE",) + tuple(extra_vars)),
        "env_before_script": env_before_script(thread_vars),
        **(extra or {}),
        **thread_env(pool_keys, **limited_by),
    }


LIBRARIES = ("numpy", "scipy", "numba", "torch", "minilm", "cupy")


def print_environment(env, title, *, coretype_note=CORETYPE_FORCED):
    """The header of every script, from an ``environment()`` record: a banner with ``title``, the
    python and cpu lines, the library versions, how threads were limited, each thread variable, the
    threadpools and torch's threads, OPENBLAS_CORETYPE, and the torch note if there is one."""
    banner(title)
    print(f"python {env['python']} on {env['platform']}")
    la = env["loadavg_1_5_15"]
    print(f"cpu: {env['cpu']}, {env['logical_cpus']} logical CPUs, load average "
          f"{'?' if la is None else ' '.join(f'{v:.2f}' for v in la)} (1/5/15 min; other work on the machine adds noise)")
    versions = []
    for lib in LIBRARIES:
        if lib in env:
            blas = f" ({env['numpy_blas']})" if lib == "numpy" and "numpy_blas" in env else ""
            versions.append(f"{lib} {env[lib] or 'not installed'}{blas}")
    print(", ".join(versions))
    print(f"threads limited by: {env['thread_limit_method']}")
    for v, before in env["env_before_script"].items():
        now = env["env"][v]
        note = "" if before == now else f"  (was {before if before is not None else 'unset'})"
        print(f"  {v}={now if now is not None else '(unset)'}{note}")
    for p in env.get("threadpools", []):
        print(f"  threadpool {p['user_api']}/{p['internal_api']} {p.get('version') or ''} "
              f"{p.get('architecture') or ''}: num_threads={p['num_threads']}")
    if "torch_threads" in env:
        t = env["torch_threads"]
        print(f"  torch: intra-op threads {t['intra_op']}, inter-op threads {t['inter_op']}")
    ct = env["env"]["OPENBLAS_CORETYPE"]
    print(f"OPENBLAS_CORETYPE={ct}{coretype_note}" if ct is not None
          else "OPENBLAS_CORETYPE unset (OpenBLAS picks its kernel for this CPU)")
    if env.get("torch_note"):
        print(f"NOTE: {env['torch_note']}")


TIMING_NOTE = ("timing: best of R repeats of M {calls} (gc off while timing), candidates interleaved;\n"
               "        compare the ratios of this run, not absolute times across runs or machines")


# ---- command line and results ------------------------------------------------------------------

def arg_parser(doc):
    """The script's parser, described by the first paragraph of its docstring (the rest is not shown)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def write_json(out_dir, filename, obj):
    """obj as indented JSON to out_dir/filename (the folder made if missing); the path written."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    return path
