#!/usr/bin/env python
"""Lightweight fine-tuning compared on two downstream tasks: one command, one table, one plot.

    python experiments/peft_comparison.py [--quick] [--out DIR]

1. Base model (§3.1 steps 1–3): a character-level GPT pretrained on the genre
   task's *train* plays only (no held-out play, no poem), cached in DIR/base.
2. Task A, genre classification (comedy / history / tragedy), split by play
   (minilm.data.genre): GPTClassifier (mean-pooled last hidden state → 3
   classes), accuracy on the held-out plays' passages, next to word-level
   naive Bayes on the same passages.
3. Task B, domain adaptation: the same base adapted to the Sonnets and poems,
   mean NLL on held-out poetry (nats/char).
For each task: no fine-tuning, head only, full fine-tuning, Adapter (two
ranks), LoRA (two ranks), Prefix-Tuning (two lengths): trainable parameters and
percent of the model, the metric, seconds per training step (median), peak
memory of one training step (tracemalloc), and a plot of metric vs trainable
parameters.  Seeds are fixed; a second run gives the same numbers.

``--quick`` is a CI-sized version (a tiny base, few steps) that the closing
lesson runs; its numbers show the mechanics, not the methods' quality.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from minilm import peft  # noqa: E402
from minilm.data.genre import NaiveBayes, genre_task, poetry_split, pretraining_text, split_plays  # noqa: E402
from minilm.finetune import (accuracy, encode_passages, lm_loss, peak_memory_mb, pretrain_base,  # noqa: E402
                             train_classifier, train_lm, train_step_fn)
from minilm.models import GPT, GPTConfig  # noqa: E402
from minilm.models.classifier import GPTClassifier  # noqa: E402
from minilm.tensor import Generator  # noqa: E402
from minilm.tokenizers import CharTokenizer  # noqa: E402
from minilm.train import TrainConfig, finetune_config  # noqa: E402


@dataclass
class Size:
    model: dict
    pretrain: dict
    clf_steps: int
    lm_steps: int
    clf_batch: int = 16
    lm_batch: int = 8
    train_per_genre: int | None = None
    test_per_genre: int | None = 500
    adapter_r: tuple = (4, 16)
    lora_r: tuple = (4, 16)
    prefix_m: tuple = (8, 32)
    prefix_hidden: int = 128
    max_val_blocks: int | None = None
    notes: list = field(default_factory=list)


SIZES = {
    "full": Size(model=dict(block_size=256, n_layer=4, n_head=4, n_embd=128),
                 pretrain=dict(max_steps=2000, batch_size=8, learning_rate=1e-3, min_lr_ratio=0.1, warmup_steps=100,
                               eval_interval=250, eval_iters=20, log_interval=100),
                 clf_steps=400, lm_steps=300),
    "quick": Size(model=dict(block_size=64, n_layer=2, n_head=2, n_embd=64),
                  pretrain=dict(max_steps=200, batch_size=16, learning_rate=2e-3, min_lr_ratio=0.1, warmup_steps=20,
                                eval_interval=100, eval_iters=5, log_interval=50),
                  clf_steps=40, lm_steps=30, clf_batch=16, lm_batch=8, train_per_genre=400, test_per_genre=100,
                  adapter_r=(2, 8), lora_r=(2, 8), prefix_m=(4, 16), prefix_hidden=32, max_val_blocks=60),
}

# learning rates: the new parameters start at (or near) zero and are few, so they take a larger step
LR = {"head only": 5e-3, "full fine-tuning": 5e-4, "adapter": 2e-3, "lora": 2e-3, "prefix": 2e-3}


def methods(size: Size):
    """(row name, kind, config or None): the rows of the table, in order."""
    rows = [("no fine-tuning", "none", None), ("head only", "head", None), ("full fine-tuning", "full", None)]
    rows += [(f"Adapter r={r}", "adapter", peft.AdapterConfig(r=r, placement="houlsby")) for r in size.adapter_r]
    rows += [(f"LoRA r={r} (q,v)", "lora", peft.LoRAConfig(r=r, alpha=2 * r, target_modules=["c_attn"],
                                                            parts=("q", "v"))) for r in size.lora_r]
    rows += [(f"Prefix m={m}", "prefix", peft.PrefixConfig(m=m, hidden=size.prefix_hidden)) for m in size.prefix_m]
    return rows


def prepare(model, kind, config, head_names=()):
    """Make ``model`` ready for one row: freeze/unfreeze or add the PEFT method."""
    if kind in ("adapter", "lora", "prefix"):
        peft.add(model, config)
    elif kind == "head":
        model.freeze()
        if head_names:
            model.unfreeze(list(head_names))
    elif kind == "none":
        model.freeze()
    return model


def lr_for(kind):
    return {"head": LR["head only"], "full": LR["full fine-tuning"], "adapter": LR["adapter"],
            "lora": LR["lora"], "prefix": LR["prefix"]}.get(kind, 1e-3)


def measured(config):
    """The config of the step whose time and peak memory are measured: the row's, without clipping
    (the measured step has never clipped; clipping's float64 copy of each gradient adds to the peak).
    The measurement trains: it runs after the metric."""
    return replace(config, grad_clip=0.0)


def counts(model):
    import io
    return peft.trainable_report(model, file=io.StringIO())


def _counted_row(model, name):
    """(report, the table row's counting columns) for one method."""
    rep = counts(model)
    return rep, {"method": name, "trainable": rep["trainable"], "saved": rep["saved"], "total": rep["total"],
                 "percent": rep["percent"]}


def run(size_name="full", out_dir="out/peft_comparison", stream=None, seed=0, corpus="shakespeare"):
    """Run the comparison and return the result dict (also written to out_dir as JSON, Markdown, PNG).

    corpus="sample" uses the sample packaged with minilm (Macbeth, A Midsummer Night's Dream,
    the Sonnets; no network): the base is pretrained on the two plays and only task B runs,
    since one play per genre cannot make a split by play.
    """
    stream = stream or sys.stdout
    size = SIZES[size_name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if corpus == "sample":
        from minilm.data import load_sample
        corpus_obj = load_sample()
        plays = [w for w in corpus_obj.works if w.genre != "poetry"]
        base_text = corpus_obj.separator.join(w.text for w in plays)
    else:
        from minilm.data import load_shakespeare
        corpus_obj = load_shakespeare()
        split = split_plays(corpus_obj, 3, seed)
        base_text = pretraining_text(corpus_obj, split)
    corpus_name = corpus
    corpus = corpus_obj
    tok = CharTokenizer.train(corpus.text)        # the character set only: a vocabulary, not the test text
    T = size.model["block_size"]
    mc = GPTConfig(vocab_size=tok.vocab_size, dropout=0.0, **size.model)
    tc = TrainConfig(seed=1337, **size.pretrain)
    base = pretrain_base(base_text, tok, mc, tc, out / f"base-{corpus_name}", stream=stream)
    base_state = {k: v.copy() for k, v in base.state_dict().items()}

    def fresh_gpt():
        g = GPT(mc, generator=Generator(0))
        g.load_state_dict(base_state)
        return g

    clf_rows, task, nb_acc, ytr, yte = [], None, None, [], []
    if corpus_name != "sample":
        task, nb_acc, ytr, yte, clf_rows = _genre(corpus, tok, T, size, seed, fresh_gpt, stream)

    # ---- task B: domain adaptation to the poems ----------------------------------------------------
    ptrain, pval = poetry_split(corpus, 0.1)
    ids_tr = np.asarray(tok.encode(ptrain), np.int64)
    ids_va = np.asarray(tok.encode(pval), np.int64)
    print(f"\npoetry: {len(ids_tr):,} train / {len(ids_va):,} val characters", file=stream, flush=True)
    lm_rows = []
    for name, kind, cfg in methods(size):
        g = fresh_gpt()
        if kind == "head":
            name = "head only (tied wte)"
        prepare(g, kind, cfg, head_names=("transformer.wte.weight",))
        rep, row = _counted_row(g, name)
        if kind != "none":
            fc = finetune_config(max_steps=size.lm_steps, batch_size=size.lm_batch, learning_rate=lr_for(kind),
                                 seed=seed, log_interval=max(1, size.lm_steps // 3))
            print(f"\n[poetry] {name}: {rep['trainable']:,} trainable ({rep['percent']:.2f}%)", file=stream, flush=True)
            res = train_lm(g, ids_tr, fc, stream=stream)
            row["sec_per_step"] = res["sec_per_step"]
        row["val_loss"] = lm_loss(g, ids_va, max_blocks=size.max_val_blocks)
        if kind != "none":                                        # after the metric: it trains
            x = ids_tr[:size.lm_batch * T].reshape(size.lm_batch, T)
            y = ids_tr[1:size.lm_batch * T + 1].reshape(size.lm_batch, T)
            row["peak_mb"] = peak_memory_mb(train_step_fn(g, x, y, measured(fc)), repeats=1)
        print(f"[poetry] {name}: held-out poetry loss {row['val_loss']:.4f}", file=stream, flush=True)
        lm_rows.append(row)

    result = {"size": size_name, "corpus": corpus_name, "model": mc.to_dict(), "pretrain": tc.to_dict(),
              "seed": seed, "test_plays": task.test_plays if task else [], "n_train": int(len(ytr)),
              "n_test": int(len(yte)),
              "naive_bayes": nb_acc, "genre": clf_rows, "poetry": lm_rows,
              "seconds": time.perf_counter() - t_start}
    stem = f"bench_peft_{size_name}" + ("_sample" if corpus_name == "sample" else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    table = format_tables(result)
    (out / f"{stem}.md").write_text(table)
    plot(result, out / f"{stem}.png")
    print("\n" + table, file=stream, flush=True)
    return result


def _genre(corpus, tok, T, size, seed, fresh_gpt, stream):
    """Task A: the rows of the genre table (and naive Bayes on the same passages)."""
    task = genre_task(corpus, length=T, train_per_genre=size.train_per_genre, test_per_genre=size.test_per_genre,
                      seed=seed)
    print(task.summary(), file=stream, flush=True)
    Xtr, Xte = encode_passages(task.train_texts, tok, T), encode_passages(task.test_texts, tok, T)
    ytr, yte = task.train_labels, task.test_labels
    nb = NaiveBayes().fit(task.train_texts, ytr)
    nb_acc = nb.score(task.test_texts, yte)
    print(f"naive Bayes (words, α=1) on the same test passages: {nb_acc:.3f}", file=stream, flush=True)

    clf_rows = []
    for name, kind, cfg in methods(size):
        clf = GPTClassifier(fresh_gpt(), 3, pooling="mean", generator=Generator(seed))
        prepare(clf, kind, cfg, head_names=("score.*",))
        if kind == "none":
            clf.freeze()
        rep, row = _counted_row(clf, name)
        if kind != "none":
            fc = finetune_config(max_steps=size.clf_steps, batch_size=size.clf_batch, learning_rate=lr_for(kind),
                                 seed=seed, log_interval=max(1, size.clf_steps // 4))
            print(f"\n[genre] {name}: {rep['trainable']:,} trainable ({rep['percent']:.2f}%)", file=stream, flush=True)
            res = train_classifier(clf, Xtr, ytr, fc, stream=stream)
            row["sec_per_step"] = res["sec_per_step"]
            row["final_train_loss"] = float(np.mean(res["loss"][-20:]))
        row["accuracy"] = accuracy(clf, Xte, yte)
        if kind != "none":                                        # after the metric: it trains
            row["peak_mb"] = peak_memory_mb(train_step_fn(clf, Xtr, ytr, measured(fc)), repeats=1)
        print(f"[genre] {name}: test accuracy {row['accuracy']:.3f}", file=stream, flush=True)
        clf_rows.append(row)

    return task, nb_acc, ytr, yte, clf_rows


def remeasure(out_dir="out/peft_comparison", size_name="full", steps=12, stream=None, seed=0):
    """Time every row's training step again, one row after another on a quiet machine, and
    rewrite the JSON, table and plot: s/step is the median of ``steps`` steps after two warm-up
    steps, on the same batch shapes as the run; peak memory as in the run.  The metrics are
    untouched (they do not depend on timing)."""
    stream = stream or sys.stdout
    size, out = SIZES[size_name], Path(out_dir)
    path = out / f"bench_peft_{size_name}.json"
    result = json.loads(path.read_text())
    mc = GPTConfig.from_dict(result["model"])
    from minilm.checkpoint import load_checkpoint
    base_dir = out / f"base-{result.get('corpus', 'shakespeare')}"
    ckpt = load_checkpoint(base_dir / "best")
    T = mc.block_size
    rng = np.random.default_rng(seed)
    Xc = rng.integers(0, mc.vocab_size, (size.clf_batch, T))
    yc = rng.integers(0, 3, size.clf_batch)
    Xl = rng.integers(0, mc.vocab_size, (size.lm_batch, T + 1))

    def fresh_gpt():
        g = GPT(mc, generator=Generator(0))
        ckpt.load_into(g)
        return g

    for key in ("genre", "poetry"):
        for row, (name, kind, cfg) in zip(result[key], methods(size)):
            if kind == "none" or "sec_per_step" not in row:
                continue
            fc = measured(finetune_config(max_steps=steps, learning_rate=lr_for(kind), seed=seed,
                                           batch_size=size.clf_batch if key == "genre" else size.lm_batch))
            if key == "genre":
                model = prepare(GPTClassifier(fresh_gpt(), 3, generator=Generator(seed)), kind, cfg, ("score.*",))
                step = train_step_fn(model, Xc, yc, fc)
            else:
                model = prepare(fresh_gpt(), kind, cfg, ("transformer.wte.weight",))
                step = train_step_fn(model, Xl[:, :-1], Xl[:, 1:], fc)
            times = []
            for i in range(steps + 2):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            row["sec_per_step"] = float(np.median(times[2:]))
            row["peak_mb"] = peak_memory_mb(step, repeats=1)
            print(f"[{key}] {row['method']}: {row['sec_per_step']:.3f} s/step, {row['peak_mb']:.0f} MB",
                  file=stream, flush=True)
    result["timing"] = f"re-measured one row at a time, median of {steps} steps after 2 warm-up steps"
    path.write_text(json.dumps(result, indent=2))
    (out / f"bench_peft_{size_name}.md").write_text(format_tables(result))
    plot(result, out / f"bench_peft_{size_name}.png")
    print("\n" + format_tables(result), file=stream, flush=True)
    return result


def _fmt(v, f):
    return "—" if v is None else format(v, f)


def format_tables(result) -> str:
    lines = []
    if result["genre"]:
        lines += _genre_table(result)
    lines += _poetry_table(result)
    return "\n".join(lines) + "\n"


def _genre_table(result):
    lines = [f"### Genre classification (held-out plays: {', '.join(result['test_plays'])}; "
             f"{result['n_train']} train / {result['n_test']} test passages, balanced; chance 0.333)", "",
             "| method | trainable | % of model | saved | test accuracy | s/step | peak MB/step |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| naive Bayes (words) | — | — | — | {result['naive_bayes']:.3f} | — | — |"]
    for r in result["genre"]:
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['percent']:.2f} | {r['saved']:,} | "
                     f"{r['accuracy']:.3f} | {_fmt(r.get('sec_per_step'), '.3f')} | {_fmt(r.get('peak_mb'), '.0f')} |")
    return lines + [""]


def _poetry_table(result):
    lines = ["### Domain adaptation to the poems (held-out poetry, mean NLL in nats/char; lower is better)", "",
              "| method | trainable | % of model | saved | val loss | s/step | peak MB/step |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["poetry"]:
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['percent']:.2f} | {r['saved']:,} | "
                     f"{r['val_loss']:.4f} | {_fmt(r.get('sec_per_step'), '.3f')} | {_fmt(r.get('peak_mb'), '.0f')} |")
    return lines


def plot(result, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [p for p in (("genre", "accuracy", "test accuracy (held-out plays)"),
                          ("poetry", "val_loss", "held-out poetry loss (nats/char)")) if result[p[0]]]
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    FigureCanvasAgg(fig)
    colors = {"head": "tab:gray", "full": "black", "Adapter": "tab:blue", "LoRA": "tab:orange",
              "Prefix": "tab:green", "no fine": "tab:red"}

    def color(name):
        return next((c for k, c in colors.items() if name.startswith(k)), "tab:purple")

    for i, (key, metric, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k, r in enumerate(result[key]):
            if r["trainable"] == 0:                               # no fine-tuning: a line, not a point at x = 0
                ax.axhline(r[metric], color=color(r["method"]), ls=":", lw=1, label=r["method"])
                continue
            x = r["trainable"]
            ax.scatter([x], [r[metric]], color=color(r["method"]), s=40, zorder=3)
            if r["saved"] != r["trainable"]:                      # a reparameterised prefix: saved after folding
                ax.scatter([r["saved"]], [r[metric]], facecolors="none", edgecolors=color(r["method"]), s=40,
                           zorder=3)
                ax.plot([r["saved"], x], [r[metric]] * 2, color=color(r["method"]), lw=0.8, ls="--")
            ax.annotate(r["method"], (x, r[metric]), fontsize=7, xytext=(4, 3 if k % 2 else -9),
                        textcoords="offset points")
        if key == "genre":
            ax.axhline(result["naive_bayes"], color="tab:brown", ls="--", lw=1, label="naive Bayes (words)")
            ax.axhline(1 / 3, color="tab:gray", ls="-.", lw=1, label="chance")
        ax.legend(fontsize=7, loc="best", title="hollow: prefix as saved (folded)", title_fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_title({"genre": "Task A: genre of a passage", "poetry": "Task B: adapt to the poems"}[key])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: tiny base, few steps")
    ap.add_argument("--out", default="out/peft_comparison", help="where the base, table, JSON and plot go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", choices=("shakespeare", "sample"), default="shakespeare",
                    help="sample: the packaged 3-work sample, no network, task B only")
    ap.add_argument("--remeasure", action="store_true",
                    help="only time each row's training step again (quietly, one after another) and "
                         "rewrite the table; needs a finished run in --out")
    a = ap.parse_args(argv)
    if a.remeasure:
        remeasure(a.out, "quick" if a.quick else "full", seed=a.seed)
        return
    run("quick" if a.quick else "full", a.out, seed=a.seed, corpus=a.corpus)


if __name__ == "__main__":
    main()
