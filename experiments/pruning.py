#!/usr/bin/env python
"""Pruning the genre task's base GPT: validation loss against sparsity, with and without recovery, and speed.

    python experiments/pruning.py [--base DIR] [--quick] [--out DIR]

1. Base: the model experiments/peft_comparison.py fine-tunes (its "full" size: 4 layers × 4 heads ×
   d 128, block 256, character-level, pretrained on the genre task's *train* plays).  ``--base
   DIR`` reads ``DIR/best`` (a minilm checkpoint); without it the base is pretrained with
   peft_comparison's configs through ``minilm.finetune.pretrain_base`` (cached in OUT/base).
2. Validation: the last 10% of that pretraining text, as pretrain_base splits it; mean NLL
   in nats/char (``minilm.finetune.lm_loss`` over the first ``--val-blocks`` blocks, so one
   evaluation takes seconds).  Recovery fine-tuning uses the first 90%.
3. Three one-shot sweeps, each point from a fresh copy of the base:
     unstructured  global magnitude pruning of every c_attn, c_proj and c_fc weight
                   (minilm.prune.magnitude_prune), sparsity 0 … 0.9;
     heads         attention heads removed by the gradient score Σ|w·∂L/∂w| (first-order
                   Taylor), lowest first over all layers, at least one head kept per layer;
     neurons       MLP neurons removed the same way, 0 … 90% of the MLP width.
   Each point is evaluated as pruned and after a short recovery fine-tune
   (``minilm.finetune.finetune_pruned``, full fine-tuning, ``--recovery-steps`` steps of batch 8;
   masks keep pruned entries at zero).  The row at 0
   is the dense model fine-tuned the same way: what the extra training alone is worth.
4. Speed: forward tokens/s (no_grad, eval, a batch of 8 × block) of the structurally pruned
   models and of the unstructured one (made permanent: a dense matrix full of zeros) against
   the dense base, median of ``--repeats`` runs taken round-robin, one thread.  Unstructured
   sparsity gives no speed-up here: NumPy's matmul is dense and multiplies the zeros too.
5. Extras at the largest levels: iterative pruning (``minilm.finetune.iterative_prune``, 4 rounds
   of prune → 25 steps) against one-shot + 100 steps, and LoRA recovery (r = 8, merged back)
   against full fine-tuning.

Writes bench_prune[_quick].json, .md (the tables) and .png (the curves and the speed-up)
into ``--out`` (default out/bench_prune).  ``--quick``: a tiny base on the packaged sample
(no network), few steps: the mechanics in seconds, not the numbers.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))   # _common lives there
import _common  # noqa: E402  first: limits BLAS threads before NumPy is imported (see its docstring)

_common.limit_numba_threads()

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

import minilm  # noqa: E402
from minilm import peft, prune  # noqa: E402
from minilm.checkpoint import load_checkpoint  # noqa: E402
from minilm.data.batches import RandomBatches  # noqa: E402
from minilm.data.corpus import train_val_split  # noqa: E402
from minilm.finetune import finetune_config, finetune_pruned, iterative_prune, lm_loss, pretrain_base  # noqa: E402
from minilm.models import GPT, GPTConfig  # noqa: E402
from minilm.tokenizers import CharTokenizer  # noqa: E402
from minilm.train import TrainConfig  # noqa: E402

_common.limit_loaded_threads(numba=True)


@dataclass
class Size:
    unstructured: tuple = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
    heads: tuple = (0, 2, 4, 8, 12)                   # heads removed (of n_layer · n_head)
    neurons: tuple = (0.0, 0.25, 0.5, 0.75, 0.9)      # fraction of the MLP neurons removed
    recovery_steps: int = 100
    batch_size: int = 8
    lr: float = 5e-4                                  # peft_comparison's full fine-tuning rate
    lora_lr: float = 2e-3
    val_blocks: int = 64
    score_batches: int = 8
    repeats: int = 15
    iterative_rounds: int = 4
    extras: bool = True


SIZES = {"full": Size(),
         "quick": Size(heads=(0, 1, 2), recovery_steps=20, val_blocks=40, score_batches=2, repeats=5,
                       iterative_rounds=2)}


def load_base(base_dir, size_name, out, stream):
    """(model, tokenizer, pretraining text): from ``base_dir/best``, or pretrained as peft_comparison does."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peft_comparison import SIZES as PEFT_SIZES
    if size_name == "quick":
        from minilm.data import load_sample
        corpus = load_sample()
        text = corpus.separator.join(w.text for w in corpus.works if w.genre != "poetry")
    else:
        from minilm.data import load_shakespeare
        from minilm.data.genre import pretraining_text, split_plays
        corpus = load_shakespeare()
        text = pretraining_text(corpus, split_plays(corpus, 3, 0))
    tok = CharTokenizer.train(corpus.text)
    if base_dir is not None:
        ckpt = load_checkpoint(Path(base_dir) / "best")
        if ckpt.tokenizer_dict is not None and ckpt.tokenizer_dict != tok.to_dict():
            raise ValueError(f"{base_dir}/best was saved with another tokenizer than CharTokenizer.train(corpus.text)")
        model = GPT(GPTConfig.from_dict(ckpt.config))
        ckpt.load_into(model)
        print(f"base: read {Path(base_dir) / 'best'} (step {ckpt.step})", file=stream, flush=True)
    else:
        ps = PEFT_SIZES[size_name]
        mc = GPTConfig(vocab_size=tok.vocab_size, dropout=0.0, **ps.model)
        model = pretrain_base(text, tok, mc, TrainConfig(seed=1337, **ps.pretrain), Path(out) / f"base-{size_name}",
                              stream=stream)
    return model.eval(), tok, text


def clone(model):
    return copy.deepcopy(model)


def recover(model, train_ids, size, seed, steps=None, method="full"):
    """A short recovery fine-tune: every parameter ("full") or a merged-back LoRA ("lora")."""
    steps = size.recovery_steps if steps is None else steps
    fc = finetune_config(max_steps=steps, batch_size=size.batch_size,
                         learning_rate=size.lr if method == "full" else size.lora_lr, warmup_steps=min(10, steps),
                         seed=seed, log_interval=10 ** 9)
    lora = peft.LoRAConfig(r=8, alpha=16, target_modules=prune.DEFAULT_TARGETS, seed=seed)
    t0 = time.perf_counter()
    res = finetune_pruned(model, train_ids, method, config=fc, lora=lora)
    return time.perf_counter() - t0, res["sec_per_step"]


def forward_speed(models: dict, x, repeats):
    """{name: median seconds} of one no_grad forward on x, the models taken round-robin."""
    xt = minilm.tensor(x)
    times = {k: [] for k in models}
    with minilm.no_grad():
        for m in models.values():
            m.eval()
            m(xt)                                          # warm-up (compiles the attention kernel once)
        for r in range(repeats):
            names = list(models)[r % len(models):] + list(models)[:r % len(models)]
            for k in names:
                t0 = time.perf_counter()
                models[k](xt)
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def run(size_name="full", base_dir=None, out_dir="out/bench_prune", stream=None, seed=0, size=None):
    stream = stream or sys.stdout
    size = size or SIZES[size_name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    base, tok, text = load_base(base_dir, size_name, out, stream)
    c = base.config
    T = c.block_size
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids, 0.1)
    vb = size.val_blocks

    def evaluate(m):
        return lm_loss(m, val_ids, max_blocks=vb)

    base_loss = evaluate(base)
    print(f"base: {base.num_parameters():,} parameters, {c.n_layer} layers × {c.n_head} heads × d {c.n_embd}, "
          f"block {T}; val loss {base_loss:.4f} nats/char on {vb} blocks of {len(val_ids):,} val characters",
          file=stream, flush=True)

    # importance, once on the dense base (one-shot pruning)
    rb = RandomBatches(train_ids, T, size.batch_size, seed=seed + 99)
    batches = [rb() for _ in range(size.score_batches)]
    head_scores = prune.head_importance(base, "grad", batches)
    neuron_scores = prune.neuron_importance(base, "grad", batches)

    def pruned(kind, level):
        m = clone(base)
        if kind == "unstructured":
            if level > 0:
                prune.magnitude_prune(m, level, "global")
            return m, {"sparsity": prune.sparsity(m)["total"]}
        if kind == "heads":
            plan = prune.prune_heads_by_score(m, int(level), head_scores) if level else {}
            return m, {"removed": {str(k): v for k, v in plan.items()}, "heads": prune.structure(m)["heads"]}
        total = c.n_layer * 4 * c.n_embd
        plan = prune.prune_neurons_by_score(m, int(round(level * total)), neuron_scores) if level else {}
        return m, {"mlp": prune.structure(m)["mlp"]}

    def frac(kind, level):
        return level / (c.n_layer * c.n_head) if kind == "heads" else float(level)

    rows, finetuned_dense = [], None
    speed_models = {"dense": base}
    for kind, levels in (("unstructured", size.unstructured), ("heads", size.heads), ("neurons", size.neurons)):
        for level in levels:
            m, info = pruned(kind, level)
            row = {"kind": kind, "level": level, "fraction": frac(kind, level), "parameters": m.num_parameters(),
                   "val_loss": evaluate(m), **info}
            if level == 0 and finetuned_dense is not None:
                row.update(finetuned_dense)                      # the dense model, fine-tuned once
            else:
                secs, sps = recover(m, train_ids, size, seed)
                row.update(val_loss_recovered=evaluate(m), recovery_seconds=secs, sec_per_step=sps)
                if level == 0:
                    finetuned_dense = {k: row[k] for k in ("val_loss_recovered", "recovery_seconds", "sec_per_step")}
            print(f"[{kind:>12} {level:>5}] params {row['parameters']:>9,}  val loss {row['val_loss']:.4f} → "
                  f"{row['val_loss_recovered']:.4f} after {size.recovery_steps} steps", file=stream, flush=True)
            rows.append(row)
            if level:
                sm, _ = pruned(kind, level)                     # untrained copy: speed does not depend on values
                if kind == "unstructured":
                    prune.make_permanent(sm)
                speed_models[f"{kind} {level}"] = sm

    # speed
    x = train_ids[:size.batch_size * T].reshape(size.batch_size, T)
    sec = forward_speed(speed_models, x, size.repeats)
    speed = []
    for name, s in sec.items():
        kind, _, level = name.partition(" ")
        speed.append({"model": name, "kind": kind, "level": float(level) if level else 0.0,
                      "fraction": frac(kind, float(level)) if level else 0.0,
                      "parameters": speed_models[name].num_parameters(), "forward_ms": 1e3 * s,
                      "tokens_per_s": x.size / s, "speedup": sec["dense"] / s})
    print("forward speed (batch %d × %d, median of %d):" % (size.batch_size, T, size.repeats), file=stream)
    for r in speed:
        print(f"  {r['model']:<18} {r['forward_ms']:8.1f} ms  {r['tokens_per_s']:9.0f} tok/s  ×{r['speedup']:.2f}",
              file=stream, flush=True)

    extras = _extras(base, c, size, train_ids, evaluate, head_scores, seed, stream) if size.extras else []

    env = _common.machine_env()
    env.update(_common.thread_env())
    result = {"size": size_name, "base_dir": None if base_dir is None else str(base_dir), "model": c.to_dict(),
              "base_val_loss": base_loss, "val_blocks": vb, "val_chars": int(len(val_ids)),
              "size_config": {k: getattr(size, k) for k in size.__dataclass_fields__}, "seed": seed,
              "sweep": rows, "speed": speed, "extras": extras, "environment": env,
              "seconds": time.perf_counter() - t_start}
    stem = "bench_prune" + ("_quick" if size_name == "quick" else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float))
    table = format_tables(result)
    (out / f"{stem}.md").write_text(table)
    plot(result, out / f"{stem}.png")
    print("\n" + table, file=stream, flush=True)
    print(f"total {result['seconds']:.0f} s", file=stream, flush=True)
    return result


def _extras(base, c, size, train_ids, evaluate, head_scores, seed, stream):
    """Iterative vs one-shot at the largest unstructured sparsity; LoRA vs full recovery."""
    rows = []
    s_max, h_max = max(size.unstructured), max(size.heads)
    rounds = size.iterative_rounds
    steps = size.recovery_steps // rounds
    for method in ("full", "lora"):
        m = clone(base)
        t0 = time.perf_counter()
        hist = iterative_prune(m, train_ids, s_max, steps=rounds, finetune_steps=steps, method=method,
                               kind="unstructured", batch_size=size.batch_size, seed=seed, full_lr=size.lr,
                               lora_lr=size.lora_lr, warmup_steps=min(10, steps), stream=_Null())
        rows.append({"what": f"unstructured {s_max}: iterative, {rounds} × (prune → {steps} steps {method})",
                     "val_loss": evaluate(m), "sparsity": hist[-1]["sparsity"],
                     "seconds": time.perf_counter() - t0})
        print(f"[extras] {rows[-1]['what']}: val loss {rows[-1]['val_loss']:.4f}", file=stream, flush=True)
    for kind, level in (("unstructured", s_max), ("heads", h_max)):
        m = clone(base)
        if kind == "unstructured":
            prune.magnitude_prune(m, s_max, "global")
        else:
            prune.prune_heads_by_score(m, h_max, head_scores)
        secs, _ = recover(m, train_ids, size, seed, method="lora")
        rows.append({"what": f"{kind} {level}: one-shot → {size.recovery_steps} steps LoRA r=8 (merged)",
                     "val_loss": evaluate(m), "seconds": secs})
        print(f"[extras] {rows[-1]['what']}: val loss {rows[-1]['val_loss']:.4f}", file=stream, flush=True)
    return rows


class _Null:
    def write(self, *_):
        pass

    def flush(self):
        pass


def format_tables(result) -> str:
    c = result["model"]
    steps = result["size_config"]["recovery_steps"]
    lines = [f"### Pruning the base GPT ({c['n_layer']} layers × {c['n_head']} heads × d {c['n_embd']}, block "
             f"{c['block_size']}): val loss (nats/char, {result['val_blocks']} blocks); base {result['base_val_loss']:.4f}",
             "", f"| pruned | fraction removed | parameters | val loss, pruned | after {steps} steps full FT |",
             "|---|---:|---:|---:|---:|"]
    names = {"unstructured": "unstructured (global magnitude)", "heads": "heads removed (grad score)",
             "neurons": "MLP neurons removed (grad score)"}
    for r in result["sweep"]:
        what = (f"{names[r['kind']]}: {r['level']}" + (f" of {c['n_layer'] * c['n_head']}" if r["kind"] == "heads"
                                                       else ""))
        lines.append(f"| {what} | {r['fraction']:.2f} | {r['parameters']:,} | {r['val_loss']:.4f} | "
                     f"{r['val_loss_recovered']:.4f} |")
    lines += ["", "Parameters count every weight of the model (the unstructured rows keep the zeros: same matrices). "
              "The rows at 0 are the dense model, and after fine-tuning the effect of the extra training alone.", ""]
    lines += ["### Forward speed (no_grad, batch × block tokens, median, one thread)", "",
              "| model | parameters | ms / forward | tokens/s | speed-up |", "|---|---:|---:|---:|---:|"]
    for r in result["speed"]:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['forward_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"×{r['speedup']:.2f} |")
    lines += ["", "Unstructured: the matrices stay dense (zeros are multiplied too), so no speed-up is expected.", ""]
    if result["extras"]:
        lines += ["### Schedules and recovery methods at the largest levels", "", "| run | val loss | seconds |",
                  "|---|---:|---:|"]
        for r in result["extras"]:
            lines.append(f"| {r['what']} | {r['val_loss']:.4f} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.2))
    FigureCanvasAgg(fig)
    titles = {"unstructured": "unstructured (global magnitude)", "heads": "attention heads (grad score)",
              "neurons": "MLP neurons (grad score)"}
    for i, kind in enumerate(("unstructured", "heads", "neurons")):
        ax = fig.add_subplot(1, 4, i + 1)
        rows = [r for r in result["sweep"] if r["kind"] == kind]
        f = [r["fraction"] for r in rows]
        ax.plot(f, [r["val_loss"] for r in rows], "o-", color="tab:red", label="pruned")
        ax.plot(f, [r["val_loss_recovered"] for r in rows], "s-", color="tab:blue",
                label=f"+ {result['size_config']['recovery_steps']} steps fine-tuning")
        ax.axhline(result["base_val_loss"], color="gray", ls=":", lw=1, label="dense base")
        ax.set_xlabel("fraction removed")
        ax.set_ylabel("val loss (nats/char)")
        ax.set_title(titles[kind], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 4, 4)
    for kind, color in (("unstructured", "tab:gray"), ("heads", "tab:orange"), ("neurons", "tab:green")):
        rows = [r for r in result["speed"] if r["kind"] in (kind, "dense")]
        rows.sort(key=lambda r: r["fraction"])
        ax.plot([r["fraction"] for r in rows], [r["speedup"] for r in rows], "o-", color=color, label=kind)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("fraction removed")
    ax.set_ylabel("forward speed-up vs dense")
    ax.set_title("measured speed-up (one thread)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="a folder holding best/ (a minilm checkpoint of the base GPT)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: tiny base on the packaged sample, few steps")
    ap.add_argument("--out", default="out/bench_prune", help="where the JSON, table and plot go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recovery-steps", type=int, default=None)
    ap.add_argument("--val-blocks", type=int, default=None)
    ap.add_argument("--no-extras", action="store_true", help="skip the iterative / LoRA comparison")
    a = ap.parse_args(argv)
    name = "quick" if a.quick else "full"
    size = copy.copy(SIZES[name])
    if a.recovery_steps is not None:
        size.recovery_steps = a.recovery_steps
    if a.val_blocks is not None:
        size.val_blocks = a.val_blocks
    if a.no_extras:
        size.extras = False
    run(name, a.base, a.out, seed=a.seed, size=size)


if __name__ == "__main__":
    main()
