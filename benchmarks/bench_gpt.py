#!/usr/bin/env python
"""minilm's GPT side by side with the same GPT in PyTorch: training step time and memory.

    python benchmarks/bench_gpt.py [--quick] [--out DIR] [--configs small,large]

One model, two frameworks: ``minilm.models.gpt.GPT`` and a PyTorch GPT written
below with the same math -- pre-LayerNorm blocks, one fused qkv Linear, causal
``torch.nn.functional.scaled_dot_product_attention``, a 4x MLP with tanh-GELU,
the LM head tied to the token embedding (logits = ln_f(x) @ wteᵀ) and
cross-entropy over the last axis.  The PyTorch model starts from minilm's
initial weights (Linear weights transposed: minilm stores (in, out), torch
(out, in)); the script checks that both give the same first-step loss
(|diff| <= 1e-4) and stops if they do not.

A training step is: zero the grads (set to None), forward + loss, backward,
clip the global grad norm to 1.0, AdamW (lr 1e-3, betas (0.9, 0.99), eps 1e-8,
weight decay 0.1 on Linear weight matrices only: minilm's
``param_groups_for_weight_decay``, the same groups by name on the torch side;
torch.optim.AdamW with its defaults, which on CPU is the single-tensor loop).

Configs (``--configs``):
  small  nanoGPT's CPU Shakespeare recipe: vocab 65, 4 layers, 4 heads, d 128, block 64, batch 12
  large  nanoGPT's GPU Shakespeare config at a CPU batch: vocab 65, 6 layers, 6 heads, d 384,
         block 256, batch 8

What is measured:
  * ms per training step, best of R repeats of M steps, minilm and torch
    interleaved repeat by repeat (alternating which goes first); tokens/s;
    the ratio minilm/torch; the best time of each phase (forward, backward,
    clip, optimizer).
  * where minilm's time goes: every minilm op (Function subclass) has its
    forward and backward wrapped with a timer -- in this process only, minilm
    is not edited -- for a few steps; matmul is split into x @ W (Linear
    layers and the tied head) and batched matmuls (attention, when it is
    composed of ops; a fused attention op gets its own row, its matmuls
    inside it).  What is left over is the engine's own work (graph walk,
    summing gradients of branches).  torch's own breakdown comes from
    torch.profiler (self CPU time per aten op).
  * memory, each (framework, config) in a FRESH subprocess of this script
    (``--worker``), after two steps of a tiny GPT so that code paged in and
    one-time set-up are not counted:
    (1) peak RSS increase from just before the model is built to after K
        training steps (VmHWM, reset through /proc/self/clear_refs, minus
        VmRSS at the start) -- the same process-level measure for both
        frameworks, the one to compare across them;
    (2) allocator-level peak during one step, over what was live before it:
        tracemalloc for minilm (NumPy reports its array buffers to
        tracemalloc), and torch.profiler's allocation events for torch
        (torch's CPU allocator is invisible to tracemalloc), both counting
        only blocks allocated inside the step.  Requested bytes, no
        allocator overhead;
    (3) minor page faults and wall time per step in that process alone.
    The timed runs count minor page faults per step too: fresh temporaries
    that the C heap must fault in are a cost of their own.

Both sides run on ONE thread (the fair, stable comparison on 2-core
machines): ``torch.set_num_threads(1)``; BLAS through threadpoolctl when it is
installed, otherwise through OMP/OPENBLAS/MKL_NUM_THREADS=1 set by ``_common``
(imported first), before NumPy is imported; NUMBA_NUM_THREADS=1 always (for
Numba-jitted minilm kernels).  The header says which.  OPENBLAS_CORETYPE is
reported and never changed.  Read the ratios of one run, not absolute times.
"""
from __future__ import annotations

import _common  # first: limits BLAS threads before NumPy is imported (see its docstring)

# minilm's CPU kernels may be Numba-jitted (parallel loops use NUMBA_NUM_THREADS, read when
# numba is imported); threadpoolctl does not reach them, so this one is always set
_common.limit_numba_threads()

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

import minilm  # noqa: E402
from _common import (NUMBA_VAR, THREAD_VARS, TORCH_ERROR, banner, fmt, mb, ratio, table, torch,  # noqa: E402
                     tracemalloc_peak)
from minilm.function import Function  # noqa: E402
from minilm.models.base import ModelOutput  # noqa: E402
from minilm.models.gpt import GPT, GPTConfig  # noqa: E402
from minilm.nn import Linear  # noqa: E402
from minilm.ops.matmul import Linear as LinearOp, MatMul  # noqa: E402
from minilm.optim import AdamW, clip_grad_norm, param_groups_for_weight_decay  # noqa: E402

_common.limit_loaded_threads()  # every BLAS/OpenMP pool loaded so far; torch to one thread


# ---- what is trained -------------------------------------------------------------------

CONFIGS = {
    "small": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12,
                  about="nanoGPT's CPU Shakespeare recipe"),
    "large": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256, batch=8,
                  about="nanoGPT's GPU Shakespeare config, CPU batch"),
}
TARGETS = {"small": 1.5, "large": 1.0}   # minilm/torch step-time ratio to reach (informational)
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.99), 1e-8, 0.1, 1.0
SEED, DATA_SEED, N_BATCHES = 0, 1, 4
PHASES = ("forward", "backward", "clip", "optimizer")


# built and trained for two steps in each memory worker before its baseline is read, so
# that one-time costs (library code paged in, kernel set-up) are not counted as the model's
_WARMUP_CONFIG = dict(vocab_size=65, n_layer=1, n_head=2, n_embd=16, block_size=8, batch=2)


def _cfg(name):
    return _WARMUP_CONFIG if name == "warmup" else CONFIGS[name]


def gpt_config(name):
    c = _cfg(name)
    return GPTConfig(vocab_size=c["vocab_size"], block_size=c["block_size"], n_layer=c["n_layer"],
                     n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, bias=True)


def make_batches(name):
    """N_BATCHES random (x, y) token batches, y = x shifted by one; cycled through in order
    by both sides (random tokens keep attention diffuse, so no subnormal slow paths)."""
    c = _cfg(name)
    rng = np.random.default_rng(DATA_SEED)
    seqs = rng.integers(0, c["vocab_size"], size=(N_BATCHES, c["batch"], c["block_size"] + 1)).astype(np.int64)
    return [(np.ascontiguousarray(s[:, :-1]), np.ascontiguousarray(s[:, 1:])) for s in seqs]


def nominal_flops_per_step(name, n_params_no_pos):
    """nanoGPT's estimate (estimate_mfu): 6N + 12·L·d·T FLOPs per token, N = parameters
    without the position table; the attention term counts the full T×T matrix."""
    c = CONFIGS[name]
    per_token = 6 * n_params_no_pos + 12 * c["n_layer"] * c["n_embd"] * c["block_size"]
    return per_token * c["batch"] * c["block_size"]


# ---- minilm side -----------------------------------------------------------------------------

def build_minilm(name):
    model = GPT(gpt_config(name), generator=minilm.Generator(SEED))
    groups = param_groups_for_weight_decay(model, WEIGHT_DECAY)
    opt = AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    return model, opt


def _stepper(model, opt, batches, zero_grad, clip):
    """A training step over ``batches`` in turn, the same for both sides: ``zero_grad()``, forward +
    loss, backward, ``clip(params, GRAD_CLIP)``, ``opt.step()``, each phase timed."""
    params = list(model.parameters())
    state = {"i": 0}
    clock = time.perf_counter

    def step():
        """One training step -> (loss tensor, grad norm before clipping, phase times)."""
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        t0 = clock()
        zero_grad()
        loss = model(x, labels=y).loss
        t1 = clock()
        loss.backward()
        t2 = clock()
        norm = clip(params, GRAD_CLIP)
        t3 = clock()
        opt.step()
        t4 = clock()
        return loss, norm, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    return step


def minilm_stepper(model, opt, batches_np):
    batches = [(minilm.tensor(x), minilm.tensor(y)) for x, y in batches_np]
    return _stepper(model, opt, batches, opt.zero_grad, clip_grad_norm)


# ---- torch side: the same GPT ------------------------------------------------------------------

if torch is not None:
    _nn, _TF = torch.nn, torch.nn.functional

    class TorchCausalSelfAttention(_nn.Module):
        def __init__(self, c):
            super().__init__()
            self.n_head = c.n_head
            self.c_attn = _nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)   # fused qkv
            self.c_proj = _nn.Linear(c.n_embd, c.n_embd, bias=c.bias)

        def forward(self, x):
            B, T, C = x.shape
            H = self.n_head
            q, k, v = self.c_attn(x).split(C, dim=2)
            q = q.view(B, T, H, C // H).transpose(1, 2)                    # (B, H, T, hs)
            k = k.view(B, T, H, C // H).transpose(1, 2)
            v = v.view(B, T, H, C // H).transpose(1, 2)
            y = _TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.c_proj(y)

    class TorchMLP(_nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c_fc = _nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
            self.c_proj = _nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)

        def forward(self, x):
            return self.c_proj(_TF.gelu(self.c_fc(x), approximate="tanh"))

    class TorchBlock(_nn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln_1 = _nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
            self.attn = TorchCausalSelfAttention(c)
            self.ln_2 = _nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
            self.mlp = TorchMLP(c)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(_nn.Module):
        """minilm's GPT in PyTorch; parameter names are the same (Hugging Face GPT-2's)."""

        def __init__(self, c):
            super().__init__()
            self.config = c
            self.transformer = _nn.ModuleDict(dict(
                wte=_nn.Embedding(c.vocab_size, c.n_embd),
                wpe=_nn.Embedding(c.block_size, c.n_embd),
                h=_nn.ModuleList(TorchBlock(c) for _ in range(c.n_layer)),
                ln_f=_nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias),
            ))

        def forward(self, input_ids, labels):
            """minilm's interface: ModelOutput(logits, loss), labels the next-token targets."""
            T = input_ids.shape[1]
            tr = self.transformer
            x = tr.wte(input_ids) + tr.wpe(torch.arange(T, device=input_ids.device))
            for block in tr.h:
                x = block(x)
            x = tr.ln_f(x)
            logits = x @ tr.wte.weight.T                                    # tied head
            loss = _TF.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))  # (B·T, V), (B·T,)
            return ModelOutput(logits=logits, loss=loss)


def build_torch(name, minilm_model=None, minilm_opt=None):
    """The torch GPT and its AdamW; with ``minilm_model``, minilm's weights copied in and
    the weight-decay groups taken from ``minilm_opt`` by parameter name."""
    torch.manual_seed(SEED)
    model = TorchGPT(gpt_config(name))
    named = dict(model.named_parameters())
    if minilm_model is not None:
        src = dict(minilm_model.named_parameters())
        if set(src) != set(named):
            raise RuntimeError(f"parameter names differ: only minilm {sorted(set(src) - set(named))}, "
                               f"only torch {sorted(set(named) - set(src))}")
        linear_weights = {f"{n}.weight" for n, m in minilm_model.named_modules() if isinstance(m, Linear)}
        with torch.no_grad():
            for n, p in named.items():
                a = np.asarray(src[n].data)
                if n in linear_weights:
                    a = a.T                                                 # (in, out) -> (out, in)
                if tuple(a.shape) != tuple(p.shape):
                    raise RuntimeError(f"{n}: minilm shape {a.shape} vs torch {tuple(p.shape)}")
                p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
        ids = {id(p): n for n, p in src.items()}
        groups = [{"params": [named[ids[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
                  for g in minilm_opt.param_groups]
    else:  # memory worker: same grouping rule (Linear weights decay), torch's own init
        decay = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, _nn.Linear)}
        groups = [{"params": [p for n, p in named.items() if n in decay], "weight_decay": WEIGHT_DECAY},
                  {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    return model, opt


def torch_stepper(model, opt, batches_np):
    batches = [(torch.from_numpy(x.copy()), torch.from_numpy(y.copy())) for x, y in batches_np]
    return _stepper(model, opt, batches, functools.partial(opt.zero_grad, set_to_none=True),
                    torch.nn.utils.clip_grad_norm_)


# ---- timing ----------------------------------------------------------------------------------

def time_interleaved(steps: dict, repeat: int, number: int) -> dict:
    """{side: step fn} -> {side: {"best_s": best mean step time over repeats, "phases_s": best of
    each phase over all timed steps, "minor_faults_per_step": median over repeats}}; sides
    interleaved, the first side alternating per repeat."""
    best = {k: math.inf for k in steps}
    phases = {k: [math.inf] * len(PHASES) for k in steps}
    faults = {k: [] for k in steps}
    names = list(steps)
    for r in range(repeat):
        for k in (names if r % 2 == 0 else names[::-1]):
            fn = steps[k]
            gc.collect()
            gc.disable()
            try:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                for _ in range(number):
                    ph = fn()[2]
                    phases[k] = [min(a, b) for a, b in zip(phases[k], ph)]
                dt = time.perf_counter() - t0
                faults[k].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / number)
            finally:
                gc.enable()
            best[k] = min(best[k], dt / number)
    return {k: {"best_s": best[k], "phases_s": dict(zip(PHASES, phases[k])),
                "minor_faults_per_step": sorted(faults[k])[len(faults[k]) // 2]} for k in steps}


# ---- where minilm's time goes --------------------------------------------------------------------

MM_LINEAR = "MatMul x @ W (+ b): Linear layers, tied head"
MM_BATCHED = "MatMul batched (attention q·kᵀ, A·v)"  # when attention is composed of ops


def _function_classes():
    seen, todo = [], [Function]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def profile_minilm_ops(step, n_steps):
    """Run ``n_steps`` steps with every op's forward/backward timed; return the fastest step's
    {"total_s", "phases_s", "ops": {name: [fwd_s, bwd_s, calls]}}."""
    acc = defaultdict(lambda: [0.0, 0.0, 0])
    clock = time.perf_counter
    patched = []

    def wrap(cls):
        fwd0, bwd0, name = cls.forward, cls.backward, cls.__name__

        def forward(ctx, *args, **kw):
            key = name
            if cls is MatMul:
                key = MM_LINEAR if getattr(args[1], "ndim", 0) == 2 else MM_BATCHED
            elif cls is LinearOp:              # F.linear: the matmul with its bias added in place
                key = MM_LINEAR
            ctx._bench_key = key
            t0 = clock()
            out = fwd0(ctx, *args, **kw)
            a = acc[key]
            a[0] += clock() - t0
            a[2] += 1
            return out

        def backward(ctx, g):
            key = ctx.__dict__.get("_bench_key", name)
            t0 = clock()
            out = bwd0(ctx, g)
            acc[key][1] += clock() - t0
            return out

        cls.forward, cls.backward = forward, backward
        patched.append((cls, fwd0, bwd0))

    best = None
    try:
        for cls in _function_classes():
            if "forward" in cls.__dict__ and "backward" in cls.__dict__:
                wrap(cls)
        for _ in range(n_steps):
            acc.clear()
            gc.collect()
            gc.disable()
            try:
                ph = step()[2]
            finally:
                gc.enable()
            total = sum(ph)
            if best is None or total < best["total_s"]:
                best = {"total_s": total, "phases_s": dict(zip(PHASES, ph)),
                        "ops": {k: list(v) for k, v in acc.items()}}
    finally:
        for cls, fwd0, bwd0 in patched:
            cls.forward, cls.backward = fwd0, bwd0
    return best


class _QuietStderr:
    """Send fd 2 to /dev/null for a moment (the profiler's C++ side logs its start and stop there)."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def profile_torch_ops(step):
    """torch.profiler over one step: {aten op: self CPU seconds}, and the profiled step's wall time."""
    from torch.profiler import ProfilerActivity, profile
    gc.collect()
    with _QuietStderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    return {"wall_s": wall, "self_cpu_s": ops}


# ---- memory: one fresh process per (framework, config) ------------------------------------------

def _proc_status_kib(*keys):
    out = {}
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                k, _, v = ln.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _torch_step_alloc_peak(step):
    """Peak bytes of tensors allocated inside one step and live at once (frees of blocks
    allocated before the step are ignored, as tracemalloc does), from torch.profiler's
    allocation events.  Uses a private but long-standing profiler API; None if it fails."""
    from torch.profiler import ProfilerActivity, profile
    try:
        from torch._C._profiler import _EventType
        with _QuietStderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = []
        todo = list(prof.profiler.kineto_results.experimental_event_tree())
        while todo:
            n = todo.pop()
            if n.tag == _EventType.Allocation and str(n.extra_fields.device).startswith("cpu"):
                events.append((n.start_time_ns, n.extra_fields.ptr, n.extra_fields.alloc_size))
            todo.extend(n.children)
        events.sort()
        live, cur, peak = {}, 0, 0
        for _, ptr, size in events:
            if size > 0:
                live[ptr] = size
                cur += size
                peak = max(peak, cur)
            elif ptr in live:
                cur -= live.pop(ptr)
        return {"peak": peak, "retained": cur, "events": len(events)}
    except Exception as e:  # pragma: no cover - depends on torch internals
        return {"error": f"{type(e).__name__}: {e}"}


def memory_worker(framework, name, k_steps):
    """Runs in a fresh process: prints one JSON line with the memory measurements."""
    batches = make_batches(name)
    # two steps of a tiny GPT first, so one-time costs (code paged in, kernel set-up) are not
    # counted as this model's memory
    build, stepper = (build_torch, torch_stepper) if framework == "torch" else (build_minilm, minilm_stepper)
    warm = stepper(*build("warmup"), make_batches("warmup"))
    warm()
    warm()
    del warm
    gc.collect()
    base = _proc_status_kib("VmRSS", "VmHWM")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_reset = _reset_hwm()
    model, opt = build(name)
    step = stepper(model, opt, batches)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    alone = []  # (seconds, minor page faults) of each step, this process running nothing else
    for _ in range(k_steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        alone.append((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
    gc.collect()
    after = _proc_status_kib("VmRSS", "VmHWM")
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if hwm_reset and "VmHWM" in after:
        peak_kib, how = after["VmHWM"] - base["VmRSS"], "VmHWM (reset before building) - VmRSS before"
    else:
        peak_kib, how = maxrss_after - base.get("VmRSS", maxrss_before), "ru_maxrss after - VmRSS before"
    res = {"framework": framework, "config": name, "k_steps": k_steps, "n_params": int(n_params),
           "rss_before_kib": base.get("VmRSS"), "peak_rss_delta_bytes": peak_kib * 1024, "peak_rss_method": how,
           "rss_after_delta_bytes": (after.get("VmRSS", 0) - base.get("VmRSS", 0)) * 1024,
           "alone_step_s": [a[0] for a in alone], "alone_minor_faults": [a[1] for a in alone]}
    # allocator level, one more step (after the RSS readings: tracing has its own cost)
    if framework == "torch":
        res["alloc"] = _torch_step_alloc_peak(step)
        res["alloc_method"] = "torch.profiler allocation events"
    else:
        peak, retained = tracemalloc_peak(step)
        res["alloc"] = {"peak": peak, "retained": retained}
        res["alloc_method"] = "tracemalloc"
    print("BENCH_GPT_WORKER " + json.dumps(res))


def run_memory_worker(framework, name, k_steps):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, name, "--worker-steps", str(k_steps)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for ln in p.stdout.splitlines():
        if ln.startswith("BENCH_GPT_WORKER "):
            return json.loads(ln.split(" ", 1)[1])
    return {"framework": framework, "config": name,
            "error": f"worker exited {p.returncode}: {(p.stderr or p.stdout).strip()[-500:]}"}


# ---- formatting ----------------------------------------------------------------------------------

def _fault_ratio(a, b):
    """a/b for page-fault counts, or None (printed "-") when b is too few for a ratio to mean much."""
    return None if a is None or b is None or b < 100 else a / b


# ---- environment -----------------------------------------------------------------------------------

def _thp():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().strip()
    except OSError:
        return None


def environment(args):
    return _common.environment(
        "quick" if args.quick else "full",
        versions={"numpy_blas": _common.numpy_blas(), "torch": None if torch is None else torch.__version__,
                  "minilm": getattr(minilm, "__version__", "?")},
        thread_vars=THREAD_VARS + (NUMBA_VAR,), extra_vars=("THP_MEM_ALLOC_ENABLE",),
        extra={"transparent_hugepage": _thp()},
        pool_keys=("user_api", "internal_api", "num_threads", "version", "architecture"))


def print_header(env, plan):
    _common.print_environment(env, f"minilm GPT training-step benchmark vs PyTorch  (cpu, {env['mode']} run)")
    if env["transparent_hugepage"]:
        print(f"transparent hugepages: {env['transparent_hugepage']} (NumPy madvises huge pages for large arrays; "
              f"torch only with THP_MEM_ALLOC_ENABLE=1, here {env['env']['THP_MEM_ALLOC_ENABLE'] or 'unset'})")
    print(f"training step: zero_grad (to None) -> forward + cross-entropy -> backward -> clip grad norm {GRAD_CLIP} "
          f"-> AdamW(lr {LR:g}, betas {BETAS}, eps {EPS:g},")
    print(f"  weight decay {WEIGHT_DECAY:g} on Linear weight matrices only); torch.optim.AdamW defaults "
          "(single-tensor loop on CPU); float32; dropout 0")
    print(f"data: {N_BATCHES} random token batches per config, cycled in the same order on both sides")
    print(f"timing: best of {plan['repeat_small']} (small) / {plan['repeat_large']} (large) repeats of "
          f"{plan['number_small']} / {plan['number_large']} steps, minilm and torch interleaved (gc off while")
    print("        timing); compare the ratios of this run, not absolute times across runs or machines")


# ---- one config ------------------------------------------------------------------------------------

def check_same_model(name, m_step, t_step):
    """First-step loss and grad norm (same weights, same batch), then the loss after one update."""
    ml, mn, _ = m_step()
    tl, tn, _ = t_step()
    ml2, _, _ = m_step()
    tl2, _, _ = t_step()
    l1m, l1t = float(ml.item()), float(tl.item())
    n1m, n1t = float(mn), float(tn)
    l2m, l2t = float(ml2.item()), float(tl2.item())
    return {"loss_step1": {"minilm": l1m, "torch": l1t, "abs_diff": abs(l1m - l1t), "tol": 1e-4,
                           "ok": abs(l1m - l1t) <= 1e-4},
            "grad_norm_step1": {"minilm": n1m, "torch": n1t, "rel_diff": abs(n1m - n1t) / max(abs(n1t), 1e-30),
                                "tol": 1e-3, "ok": abs(n1m - n1t) <= 1e-3 * max(abs(n1t), 1e-30)},
            "loss_step2": {"minilm": l2m, "torch": l2t, "abs_diff": abs(l2m - l2t), "tol": 1e-3,
                           "ok": abs(l2m - l2t) <= 1e-3}}


def print_checks(ch):
    a, g, b = ch["loss_step1"], ch["grad_norm_step1"], ch["loss_step2"]
    print(f"check, first-step loss (same weights, same batch): minilm {a['minilm']:.7f}  torch {a['torch']:.7f}  "
          f"|diff| {a['abs_diff']:.1e}  {'ok (<= 1e-4)' if a['ok'] else 'MISMATCH (> 1e-4)'}")
    print(f"check, first-step grad norm before clipping:       minilm {g['minilm']:.7f}  torch {g['torch']:.7f}  "
          f"rel diff {g['rel_diff']:.1e}  {'ok (<= 1e-3)' if g['ok'] else 'MISMATCH (> 1e-3)'}")
    print(f"check, loss after one AdamW update (next batch):   minilm {b['minilm']:.7f}  torch {b['torch']:.7f}  "
          f"|diff| {b['abs_diff']:.1e}  {'ok (<= 1e-3)' if b['ok'] else 'differs (> 1e-3; informational)'}")


def run_config(name, plan):
    c = CONFIGS[name]
    batches = make_batches(name)
    m_model, m_opt = build_minilm(name)
    t_model, t_opt = build_torch(name, m_model, m_opt)
    n_params = m_model.num_parameters()
    n_pos = m_model.transformer.wpe.weight.numel()
    flops = nominal_flops_per_step(name, n_params - n_pos)
    tokens = c["batch"] * c["block_size"]
    print()
    banner(f"config {name} ({c['about']}): vocab {c['vocab_size']}, n_layer {c['n_layer']}, n_head {c['n_head']}, "
           f"n_embd {c['n_embd']},",
           f"  block {c['block_size']}, batch {c['batch']}: {n_params / 1e6:.2f} M parameters, {tokens} tokens/step, "
           f"nominal {flops / 1e9:.1f} GFLOP/step", char="-")
    m_step = minilm_stepper(m_model, m_opt, batches)
    t_step = torch_stepper(t_model, t_opt, batches)
    checks = check_same_model(name, m_step, t_step)
    print_checks(checks)
    sys.stdout.flush()
    if not checks["loss_step1"]["ok"]:
        return {"config": name, "checks": checks, "error": "first-step losses differ; not timed"}

    for _ in range(plan["warmup"]):
        m_step()
        t_step()
    repeat, number = plan[f"repeat_{name}"], plan[f"number_{name}"]
    timed = time_interleaved({"minilm": m_step, "torch": t_step}, repeat, number)
    ms = {k: v["best_s"] * 1e3 for k, v in timed.items()}
    step_ratio = ratio(ms["minilm"], ms["torch"])
    print()
    print(f"time per training step (best of {repeat} repeats of {number} step{'s' if number > 1 else ''}; "
          "phases: best of each over the timed steps):")
    rows = []
    for k in ("minilm", "torch"):
        ph = timed[k]["phases_s"]
        rows.append([k, f"{ms[k]:.2f}", f"{tokens / (ms[k] / 1e3):,.0f}", f"{flops / (ms[k] / 1e3) / 1e9:.1f}"]
                    + [f"{ph[p] * 1e3:.2f}" for p in PHASES] + [f"{timed[k]['minor_faults_per_step']:,.0f}"])
    rows.append(["minilm/torch", fmt(step_ratio, "{:.2f}"), "", ""]
                + [fmt(ratio(timed["minilm"]["phases_s"][p], timed["torch"]["phases_s"][p]), "{:.2f}")
                   for p in PHASES]
                + [fmt(_fault_ratio(timed["minilm"]["minor_faults_per_step"],
                                    timed["torch"]["minor_faults_per_step"]), "{:.1f}")])
    print(table(["side", "ms/step", "tokens/s", "GFLOP/s", "fwd ms", "bwd ms", "clip ms", "optim ms",
                 "page faults/step"], rows))
    target = TARGETS[name]
    verdict = "PASS" if step_ratio is not None and step_ratio <= target else "MISS"
    print(f"target {name}: minilm <= {target:.1f}x torch: {verdict} ({fmt(step_ratio, '{:.2f}')}x)")
    sys.stdout.flush()

    # where the time goes
    prof = profile_minilm_ops(m_step, plan["profile_steps"])
    tprof = profile_torch_ops(t_step) if plan["torch_profile"] else None
    print_breakdown(name, prof, tprof, tokens)
    sys.stdout.flush()
    return {"config": name, "params": n_params, "tokens_per_step": tokens, "nominal_flop_per_step": flops,
            "checks": checks, "ms_per_step": ms, "ratio_minilm_torch": step_ratio, "target": target,
            "verdict": verdict, "tokens_per_s": {k: tokens / (v / 1e3) for k, v in ms.items()},
            "phases_ms": {k: {p: v * 1e3 for p, v in timed[k]["phases_s"].items()} for k in timed},
            "minor_page_faults_per_step": {k: timed[k]["minor_faults_per_step"] for k in timed},
            "repeat": repeat, "number": number, "minilm_profile": prof, "torch_profile": tprof,
            "matmul_share": _matmul_share(prof)}


def _matmul_share(prof):
    mm = sum(v[0] + v[1] for k, v in prof["ops"].items() if k.startswith("MatMul"))
    return mm / prof["total_s"] if prof["total_s"] else None


TORCH_GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def print_breakdown(name, prof, tprof, tokens):
    total = prof["total_s"]
    ops = prof["ops"]
    in_ops_f = sum(v[0] for v in ops.values())
    in_ops_b = sum(v[1] for v in ops.values())
    ph = prof["phases_s"]
    print()
    print(f"where minilm's step goes ({name}; every op's forward/backward timed, fastest of the profiled steps, "
          f"step {total * 1e3:.1f} ms):")
    rows = []
    for k, (f, b, n) in sorted(ops.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        if (f + b) / total < 0.002:
            continue
        rows.append([k, str(n), f"{f * 1e3:.2f}", f"{b * 1e3:.2f}", f"{(f + b) * 1e3:.2f}", f"{100 * (f + b) / total:.1f}"])
    other_f, other_b = ph["forward"] - in_ops_f, ph["backward"] - in_ops_b
    rows.append(["(forward outside ops: checks, graph nodes, Python)", "", f"{other_f * 1e3:.2f}", "",
                 f"{other_f * 1e3:.2f}", f"{100 * other_f / total:.1f}"])
    rows.append(["(backward outside ops: graph walk, summing branch grads, leaf .grad copies)", "", "",
                 f"{other_b * 1e3:.2f}", f"{other_b * 1e3:.2f}", f"{100 * other_b / total:.1f}"])
    rows.append(["clip_grad_norm", "", "", "", f"{ph['clip'] * 1e3:.2f}", f"{100 * ph['clip'] / total:.1f}"])
    rows.append(["AdamW.step", "", "", "", f"{ph['optimizer'] * 1e3:.2f}", f"{100 * ph['optimizer'] / total:.1f}"])
    print(table(["op", "calls", "fwd ms", "bwd ms", "total ms", "% of step"], rows,
                ["<", ">", ">", ">", ">", ">"]))
    mm = {k: sum(ops.get(k, [0, 0])[:2]) for k in (MM_LINEAR, MM_BATCHED)}
    share = _matmul_share(prof)
    fused = {k: v for k, v in ops.items() if "Attention" in k}
    print(f"minilm matmul share of the step: {100 * share:.1f}%  (x @ W {100 * mm[MM_LINEAR] / total:.1f}%, "
          f"batched matmul {100 * mm[MM_BATCHED] / total:.1f}%)"
          + "".join(f"; fused op {k} (its matmuls are inside) {100 * (v[0] + v[1]) / total:.1f}%"
                    for k, v in fused.items()))
    if tprof:
        ts = tprof["self_cpu_s"]
        tot = sum(ts.values())
        gemm = sum(ts.get(k, 0.0) for k in TORCH_GEMM_OPS)
        top = sorted(ts.items(), key=lambda kv: -kv[1])[:8]
        print(f"torch for comparison (torch.profiler, one step, {tprof['wall_s'] * 1e3:.1f} ms with profiling): "
              f"GEMM ops ({', '.join(k.split('::')[1] for k in TORCH_GEMM_OPS)}) {100 * gemm / tot:.1f}% of self CPU "
              "time; top ops:")
        print("  " + ", ".join(f"{k.replace('aten::', '')} {100 * v / tot:.1f}%" for k, v in top))


# ---- main ------------------------------------------------------------------------------------------

def _after_first(values, how="median"):
    """The median (or min) of the values of the steps after the first (which sets up AdamW state)."""
    v = sorted(values[1:] or values)
    return (v[len(v) // 2] if how == "median" else v[0]) if v else None


def print_memory(mem):
    print()
    banner("memory per training step, each (framework, config) in a fresh process")
    rows = []
    for name in sorted({m["config"] for m in mem}, key=list(CONFIGS).index):
        r = {m["framework"]: m for m in mem if m["config"] == name}
        for fw in ("minilm", "torch"):
            x = r.get(fw)
            if x is None or "error" in x:
                rows.append([name, fw, "error: " + (x or {}).get("error", "no result")[:60], "", "", "", ""])
                continue
            rows.append([name, fw, f"{mb(x['peak_rss_delta_bytes']):.1f}", fmt(mb(x["alloc"].get("peak")), "{:.1f}"),
                         f"{mb(x['n_params'] * 4 * 4):.1f}", f"{_after_first(x['alone_minor_faults']):,.0f}",
                         f"{1e3 * _after_first(x['alone_step_s'], 'min'):.1f}"])
        m, t = r.get("minilm", {}), r.get("torch", {})
        if "error" not in m and "error" not in t and m and t:
            rows.append([name, "minilm/torch", fmt(ratio(m["peak_rss_delta_bytes"], t["peak_rss_delta_bytes"]), "{:.2f}"),
                         fmt(ratio(m["alloc"].get("peak"), t["alloc"].get("peak")), "{:.2f}"), "",
                         fmt(_fault_ratio(_after_first(m["alone_minor_faults"]),
                                          _after_first(t["alone_minor_faults"])), "{:.1f}"),
                         fmt(ratio(_after_first(m["alone_step_s"], "min"), _after_first(t["alone_step_s"], "min")),
                             "{:.2f}")])
    print(table(["config", "side", "peak RSS Δ MB", "step alloc peak MB", "params+grads+AdamW MB",
                 "page faults/step", "ms/step"], rows, ["<", "<", ">", ">", ">", ">", ">"]))
    k = "/".join(str(x) for x in dict.fromkeys(m.get("k_steps", "?") for m in mem))
    print(f"peak RSS Δ: VmHWM after {k} training steps minus VmRSS just before the model is built (VmHWM reset "
          "there through")
    print("  /proc/self/clear_refs; a tiny GPT trained 2 steps before that, so code paged in and one-time set-up")
    print("  are not counted); parameters, grads, AdamW state, activations, temporaries and what the C allocator")
    print("  keeps: the same process-level measure on both sides, THE ONE TO COMPARE ACROSS FRAMEWORKS.")
    print("step alloc peak: the most bytes allocated inside one more step and live at once, over what was live")
    print("  before it (new grads, activations, temporaries; not parameters or AdamW state): tracemalloc for")
    print("  minilm (NumPy reports its buffers to it; Python objects count too), torch.profiler allocation events")
    print("  for torch (tracemalloc cannot see torch's allocator). Requested bytes; same kind of number, but")
    print("  torch's comes from a private profiler API.")
    print("page faults/step, ms/step: a step in that process alone, after the first step: the median of the minor")
    print("  page faults, the fastest wall time (few steps, not interleaved: noisier than the timing above, which")
    print("  runs both sides in one process, where each reuses heap pages the other already faulted in). NumPy")
    print("  asks for huge pages on arrays >= 4 MiB and torch does not, so fewer faults need not mean fewer bytes.")
    for x in mem:
        if x.get("alloc", {}).get("error"):
            print(f"  ({x['config']} {x['framework']}: allocator-level peak unavailable: {x['alloc']['error']})")


def print_summary(results, mem):
    print()
    banner("summary (ratios > 1 mean minilm is slower / uses more)")
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["config"], "-", "-", "-", "-", "error: " + r["error"], "-", "-", "-"])
            continue
        mm = {x["framework"]: x for x in mem if x["config"] == r["config"] and "error" not in x}
        rss = ratio(mm.get("minilm", {}).get("peak_rss_delta_bytes"), mm.get("torch", {}).get("peak_rss_delta_bytes"))
        rows.append([r["config"], f"{r['ms_per_step']['minilm']:.1f}", f"{r['ms_per_step']['torch']:.1f}",
                     fmt(r["ratio_minilm_torch"], "{:.2f}"), f"<= {r['target']:.1f}", r["verdict"],
                     f"{r['tokens_per_s']['minilm']:,.0f}", f"{r['tokens_per_s']['torch']:,.0f}",
                     fmt(None if r["matmul_share"] is None else 100 * r["matmul_share"], "{:.0f}%"),
                     fmt(rss, "{:.2f}")])
    print(table(["config", "minilm ms", "torch ms", "minilm/torch", "target", "result", "minilm tok/s",
                 "torch tok/s", "minilm matmul", "peak RSS Δ m/t"], rows))
    for r in results:
        if "error" not in r:
            print(f"{r['verdict']}: {r['config']}: minilm {r['ratio_minilm_torch']:.2f}x torch "
                  f"(target <= {r['target']:.1f}x; informational)")


def main(argv=None):
    ap = _common.arg_parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps (about 1-2 minutes)")
    ap.add_argument("--out", metavar="DIR", help="also write the results as JSON to DIR/bench_gpt_cpu.json")
    ap.add_argument("--configs", default="small,large", help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-steps", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        memory_worker(args.worker[0], args.worker[1], args.worker_steps)
        return 0
    if torch is None:
        sys.exit(f"bench_gpt: needs torch for the comparison ({TORCH_ERROR})")
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad or not names:
        sys.exit(f"bench_gpt: unknown configs {bad}; choose from {list(CONFIGS)}")

    if args.quick:
        plan = dict(warmup=1, repeat_small=3, number_small=3, repeat_large=2, number_large=1,
                    profile_steps=1, torch_profile=True, mem_steps_small=5, mem_steps_large=3)
    else:
        plan = dict(warmup=2, repeat_small=7, number_small=5, repeat_large=5, number_large=1,
                    profile_steps=3, torch_profile=True, mem_steps_small=10, mem_steps_large=4)
    t_start = time.perf_counter()
    env = environment(args)
    print_header(env, plan)
    sys.stdout.flush()

    results = [run_config(n, plan) for n in names]
    mem = []
    for n in names:
        for fw in ("minilm", "torch"):
            mem.append(run_memory_worker(fw, n, plan[f"mem_steps_{n}"]))
    print_memory(mem)
    print_summary(results, mem)
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal time {elapsed:.1f} s")

    if args.out:
        path = _common.write_json(args.out, "bench_gpt_cpu.json",
                                  {"environment": env, "plan": plan, "configs": {n: CONFIGS[n] for n in names},
                                   "hyperparameters": {"lr": LR, "betas": BETAS, "eps": EPS,
                                                       "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP},
                                   "results": results, "memory": mem, "elapsed_s": elapsed})
        print(f"results written to {path}")
    failed = any("error" in r or not r["checks"]["loss_step1"]["ok"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
