#!/usr/bin/env python
"""Does longer context help on real text?  Char-level GPTs with dense and sparse attention, equal tokens.

    python experiments/long_context.py                       # 4 patterns x 2 seeds, ~2 hours of one core
    python experiments/long_context.py --runs dense:0,sliding:0 &   # split the runs over processes,
    python experiments/long_context.py --runs bigbird:0 &           # then
    python experiments/long_context.py --report              # the table and the plot from what is there
    python experiments/long_context.py --quick --corpus sample      # CI-sized, no network, ~10 s

Four 4-layer × 128 character GPTs (Eqs. G1–G4), trained on the genre task's
train plays (``split_plays`` seed 0: no held-out play, no poem) with the same
optimizer, schedule, steps and TOKENS per step (2,048):

  dense     8 blocks of 256 at 8 random places, full causal attention (Eq. A1, the mask of A2)
  dense-contig  8 blocks of 256 cut from ONE random block of 2,048: with the same seed, exactly
            the characters the sparse models below read in that step, so that this pair
            differs only in what attention can see (the first dense row also draws its
            blocks more diversely, which by itself changes how fast a model learns)
  sliding   1 block of 2,048, each query sees the 256 keys ending at it
            (Longformer's causal window, ``SparsePattern.sliding(256)``)
  bigbird   1 block of 2,048 in blocks of 64: the 3 blocks ending at the
            query's, the first 2 blocks (global), 3 random blocks per head
            and layer (``SparsePattern.bigbird``; random blocks in the future
            are cut by the causal mask)

The held-out plays (9 whole plays, never seen in training) are cut into
non-overlapping 2,048-character blocks; every model reads the same blocks, the
dense one as 8 pieces of 256, each starting from an empty context.  For every
position t of the block we average the next-character loss −log p(x_{t+1} | x_≤t)
over the blocks: a dense model's curve is a saw (context resets every 256);
a sparse model whose loss keeps falling beyond t = 256 uses context its window
does not show directly (stacked layers reach 4 × 256 back; BigBird's globals and
random blocks reach anywhere).  Loss in nats; bits per character = nats / ln 2.

Each run writes DIR/run-<pattern>-<seed>.json as it finishes (a run already there
is skipped, so several processes can share the list); ``--report`` (and the end
of a full run) reads them all and writes DIR/long_context.{md,json,png}.  The
recorded run lives in experiments/results/long_context.* (lesson 14 and the README
read it).  One BLAS and one Numba thread per process.
"""
from __future__ import annotations

import sys  # noqa: I001
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402  first: limits threads before NumPy is imported

_common.limit_numba_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minilm.data import load_sample, load_shakespeare  # noqa: E402
from minilm.data.batches import RandomBatches  # noqa: E402
from minilm.data.genre import pretraining_text, split_plays  # noqa: E402
from minilm.models import GPT, GPTConfig  # noqa: E402
from minilm.tensor import Generator, manual_seed  # noqa: E402
from minilm.tokenizers import CharTokenizer  # noqa: E402
from minilm.train import TrainConfig, Trainer, loss_by_position  # noqa: E402

_common.limit_loaded_threads(numba=True)

# pattern name -> (attention_pattern of GPTConfig, block length T, batch B); T·B is the same for all
PATTERNS = {
    "dense": (None, 256, 8),
    "dense-contig": (None, 256, 8),     # the same 8 x 256, cut from ONE random 2,048 block (see below)
    "sliding": ({"window": 256}, 2048, 1),
    "bigbird": ({"window_blocks": 3, "global_blocks": 2, "random_blocks": 3, "block_size": 64}, 2048, 1),
}
FULL = dict(lr=1e-3, steps=1500, seeds=(0, 1), eval_blocks=96, n_layer=4, n_embd=128, long=2048)
QUICK = dict(lr=1e-3, steps=6, seeds=(0, 1), eval_blocks=2, n_layer=2, n_embd=32, long=128)
# Beltagy et al. 2020, Table 2 (small models) and appendix: 12 layers x 512, 41M parameters, sequences
# staged from 2,048 to 23,040 characters, 4 RTX8000 GPUs for 16 days.
LONGFORMER = {"text8": 1.10, "enwik8": 1.00, "params": "41M", "hardware": "4 RTX8000 GPUs, 16 days"}
BUCKETS = ((0, 32), (32, 128), (128, 256), (256, 512), (512, 1024), (1024, 2048))


def scaled(name: str, long: int):
    """PATTERNS[name] for a block of ``long`` characters (the quick run shrinks everything by long/2048)."""
    pattern, T, B = PATTERNS[name]
    k = long / 2048
    if pattern is None:
        return None, max(int(T * k), 2), B
    p = dict(pattern)
    if "window" in p:
        p["window"] = max(int(p["window"] * k), 2)
    if "block_size" in p:
        p["block_size"] = max(int(p["block_size"] * k), 2)
    return p, long, B


def load_text(corpus: str):
    """(train text, held-out text): the train plays and the 9 held-out plays of split_plays(seed=0);
    for the bundled sample (too few plays for that split), every work but the last, and the last."""
    if corpus == "sample":
        c = load_sample()
        return c.separator.join(w.text for w in c.works[:-1]), c.works[-1].text
    c = load_shakespeare()
    split = split_plays(c, n_test_per_genre=3, seed=0)
    return pretraining_text(c, split), c.separator.join(w.text for w in split["test"])


class Contiguous:
    """One block of B·T tokens cut into B rows of T: the batches a sparse model of block B·T and
    batch 1 draws with the same seed, read by a model of context T (the paired control)."""

    def __init__(self, batches, rows):
        self.batches, self.rows = batches, rows

    def __call__(self):
        x, y = self.batches()                                                     # (1, B·T) each
        return x.reshape(self.rows, -1), y.reshape(self.rows, -1)                 # (B, T) each


def train_one(name: str, seed: int, cfg: dict, tok, train_ids, val_blocks, stream) -> dict:
    pattern, T, B = scaled(name, cfg["long"])
    manual_seed(seed)
    mc = GPTConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=cfg["n_layer"], n_head=4,
                   n_embd=cfg["n_embd"], dropout=0.0, attention_pattern=pattern)
    model = GPT(mc, generator=Generator(seed))
    tc = TrainConfig(max_steps=cfg["steps"], batch_size=B, learning_rate=cfg["lr"], min_lr_ratio=0.1,
                     warmup_steps=min(100, cfg["steps"] // 4), eval_interval=0, seed=seed,
                     log_interval=max(cfg["steps"] // 20, 1))
    batches = RandomBatches(train_ids, T, B, seed=seed)
    if name == "dense-contig":
        batches = Contiguous(RandomBatches(train_ids, T * B, 1, seed=seed), B)
    trainer = Trainer(model, tc, batches, stream=stream)
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    curve = loss_by_position(model, val_blocks, read_length=T)
    return {"pattern": name, "seed": seed, "attention_pattern": pattern, "block": T, "batch": B,
            "steps": cfg["steps"], "lr": cfg["lr"], "n_layer": cfg["n_layer"], "n_embd": cfg["n_embd"], "tokens_per_step": T * B, "seconds": seconds,
            "sec_per_step": result["sec_per_step"], "train_loss_last50": float(np.mean(result["loss"][-50:])),
            "val_loss": float(curve.mean()), "val_bpc": float(curve.mean() / math.log(2)),
            "loss_by_position": curve.tolist()}


def buckets(curve, long: int):
    k = long / 2048
    return [(int(a * k), int(b * k), float(np.mean(curve[int(a * k):int(b * k)]))) for a, b in BUCKETS]


def report(out: Path, long: int, tag: str) -> dict | None:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))]
    if not runs:
        print(f"no runs in {out}")
        return None
    names = [n for n in PATTERNS if any(r["pattern"] == n for r in runs)]
    rows, summary = [], {}
    for n in names:
        rs = [r for r in runs if r["pattern"] == n]
        vals = np.array([r["val_loss"] for r in rs])
        curves = np.array([r["loss_by_position"] for r in rs])          # (seeds, L)
        bk = np.array([[m for _, _, m in buckets(c, long)] for c in curves])   # (seeds, buckets)
        sd = lambda a: float(a.std(ddof=1)) if len(a) > 1 else float("nan")   # noqa: E731
        summary[n] = {"seeds": [r["seed"] for r in rs], "val_loss_mean": float(vals.mean()), "val_loss_sd": sd(vals),
                      "val_bpc_mean": float(vals.mean() / math.log(2)), "val_bpc_sd": sd(vals) / math.log(2),
                      "bucket_mean": bk.mean(0).tolist(), "bucket_sd": [sd(bk[:, j]) for j in range(bk.shape[1])],
                      "sec_per_step": float(np.median([r["sec_per_step"] for r in rs])),
                      "seconds": float(np.mean([r["seconds"] for r in rs])),
                      "curve_mean": curves.mean(0).tolist()}
        s = summary[n]
        rows.append(f"| {n} | {rs[0]['batch']} × {rs[0]['block']} | {len(rs)} | "
                    f"{s['val_loss_mean']:.4f} ± {s['val_loss_sd']:.4f} | {s['val_bpc_mean']:.3f} ± {s['val_bpc_sd']:.3f} | "
                    + " | ".join(f"{m:.3f} ± {e:.3f}" for m, e in zip(s["bucket_mean"], s["bucket_sd"]))
                    + f" | {s['sec_per_step']:.3f} |")
    edges = [(a, b) for a, b, _ in buckets(np.zeros(long), long)]
    head = ("| pattern | batch × block | seeds | val loss (nats) | val BPC | "
            + " | ".join(f"loss at t ∈ [{a}, {b})" for a, b in edges) + " | s/step |")
    lines = [f"# Long context on Shakespeare ({tag}): held-out plays, blocks of {long} characters", "",
             f"{runs[0]['steps']} steps of {runs[0]['tokens_per_step']:,} tokens each, AdamW lr {runs[0].get('lr', 1e-3):g} (warm-up, cosine "
             f"to 10%), {runs[0]['n_layer']} layers × {runs[0]['n_embd']}; mean ± sample s.d. over seeds (init and batch order).", "",
             head, "|" + "---|" * (head.count("|") - 1), *rows, "",
             f"Longformer (Beltagy et al. 2020, small, {LONGFORMER['params']} parameters, {LONGFORMER['hardware']}): "
             f"text8 {LONGFORMER['text8']:.2f} BPC, enwik8 {LONGFORMER['enwik8']:.2f} BPC, on other text."]
    (out / "long_context.md").write_text("\n".join(lines) + "\n")
    data = {"summary": summary, "buckets": edges, "longformer": LONGFORMER, "runs": runs}
    (out / "long_context.json").write_text(json.dumps(data))
    plot(summary, long, out / "long_context.png")
    print("\n".join(lines))
    return data


def plot(summary: dict, long: int, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    width = max(long // 64, 1)
    for n, s in summary.items():
        c = np.array(s["curve_mean"])
        smooth = np.convolve(c, np.ones(width) / width, mode="valid")        # running mean over `width` positions
        ax.plot(np.arange(len(smooth)) + width // 2, smooth, label=f"{n}: {s['val_bpc_mean']:.3f} BPC")
    ax.axvline(long // 8, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("position t in the block (characters)")
    ax.set_ylabel(f"loss at t (nats, running mean of {width})")
    ax.set_title("held-out plays: the loss by position")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: tiny models, a few steps")
    ap.add_argument("--corpus", choices=("shakespeare", "sample"), default="shakespeare")
    ap.add_argument("--out", default=None, help="default out/long_context[_quick]")
    ap.add_argument("--runs", default=None, help="pattern:seed,... (default: every pattern x every seed)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recorded run's)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recorded run's)")
    ap.add_argument("--report", action="store_true", help="only write the table and plot from the runs in --out")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in (("lr", args.lr), ("steps", args.steps)) if v is not None})
    out = Path(args.out or ("out/long_context_quick" if args.quick else "out/long_context"))
    out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"
    if args.report:
        return report(out, cfg["long"], tag)
    train_text, val_text = load_text(args.corpus)
    tok = CharTokenizer.train(train_text + val_text)
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text), dtype=np.int64)
    L1 = cfg["long"] + 1
    n = min(len(val_ids) // L1, cfg["eval_blocks"])
    val_blocks = val_ids[:n * L1].reshape(n, L1)                                 # (N, L + 1), non-overlapping
    print(f"train plays: {len(train_ids):,} characters; held-out plays: {len(val_ids):,}, {n} blocks of {cfg['long']}")
    todo = ([(p, int(s)) for p, s in (r.split(":") for r in args.runs.split(","))] if args.runs
            else [(p, s) for s in cfg["seeds"] for p in PATTERNS])
    for name, seed in todo:
        if name not in PATTERNS:
            raise SystemExit(f"unknown pattern {name!r}; choose from {list(PATTERNS)}")
        path = out / f"run-{name}-{seed}.json"
        if path.exists():
            print(f"{path} exists; skipping")
            continue
        print(f"== {name}, seed {seed}", flush=True)
        run = train_one(name, seed, cfg, tok, train_ids, val_blocks, sys.stdout)
        path.write_text(json.dumps(run))
        print(f"   val {run['val_loss']:.4f} nats = {run['val_bpc']:.3f} BPC, {run['seconds']:.0f} s", flush=True)
    return report(out, cfg["long"], tag)


if __name__ == "__main__":
    main()
