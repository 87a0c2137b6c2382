#!/usr/bin/env python
"""Induction heads (Olsson et al. 2022) in attention-only GPTs: the phase change, the ablation, the 1-layer control.

    python experiments/induction_heads.py --estimate        # time a few steps of each run, print the plan
    python experiments/induction_heads.py                   # every run below (see --estimate for the time)
    python experiments/induction_heads.py --runs 2-layer    # some of them; --report redraws from what is there
    python experiments/induction_heads.py --quick           # tiny models, a few steps (the mechanics only)

Runs (``GPTConfig(mlp=False)``: blocks H + Attn(LN(H)), no MLP; the head is tied to E_token, G1):

  2-layer  2 layers × 4 heads, trained on repeated random segments (``interpret.repeated_segments``):
           rows of L tokens, [BOS] then random tokens in which a segment of n distinct tokens,
           n uniform in seg_len, is written twice at random places.  Only the second copy can be
           predicted, and only by finding the earlier copy by content: the varying n and filler
           lengths leave no fixed offset for a positional head to learn.
  1-layer  the same with one layer: the control that cannot form an induction head (its keys know
           only their own token and position, not the token before them).
  text     2 layers trained on Shakespeare's characters (the genre task's train plays), measured
           on repeated random lowercase letters, as Olsson measured models trained on text.

Every ``eval_every`` steps, on one fixed batch of repeated segments: the mean next-token loss on
the predictable targets of the first and of the second copy (``loss_by_occurrence``; "in-context
gain" = first − second), each head's prefix-matching score (weight from a second-copy token on
the token after its earlier copy) and previous-token score.  At the end: each head's copying
score (Σλ/Σ|λ| of its OV circuit), and the second-copy loss with each head zero-ablated in turn
(``ablate_heads``).  The "induction head" is the head of the last layer with the largest
prefix-matching score; its "previous-token partner" the layer-0 head with the largest
previous-token score.  The phase change: the first evaluation at which the second-copy loss is
below half the first-copy loss.

Files: DIR/run-<name>.json as each run finishes (a run already there is skipped), then
DIR/induction_heads.{md,json,png}; a full run also copies those three to experiments/results/.
One BLAS and one Numba thread.

Status: the settings above are a first guess, not a recorded run.  In short trial runs (up to 5,000
steps, vocab 17–64, rows of 13–33 tokens, d 32–64, lr 3e-3–1e-2) no layer-1 induction head formed:
the second-copy loss stayed on the plateau, or fell through LAYER-0 heads attending a fixed
offset back, a positional shortcut whenever the layout is regular enough (short rows, a narrow
range of n).  ``--estimate`` gives the time of the full settings.
"""
from __future__ import annotations

import sys  # noqa: I001
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402  first: limits threads before NumPy is imported

_common.limit_numba_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minilm.data.batches import RandomBatches  # noqa: E402
from minilm.interpret import (Repeats, ablate_heads, attention_probs, copying_score, loss_by_occurrence,  # noqa: E402
                              prefix_matching_score, previous_token_score, repeated_segments)
from minilm.models import GPT, GPTConfig  # noqa: E402
from minilm.tensor import Generator, manual_seed  # noqa: E402
from minilm.tokenizers import CharTokenizer  # noqa: E402
from minilm.train import TrainConfig, Trainer  # noqa: E402

_common.limit_loaded_threads(numba=True)

RESULTS = Path(__file__).resolve().parent / "results"
# Synthetic data: vocab (BOS = 0 included), row length L (the model reads L − 1), segment lengths;
# model width and heads; optimizer.  ``runs``: name -> (layers, data).
FULL = dict(vocab=20, length=25, seg_len=(3, 8), n_embd=64, n_head=4, batch=32, lr=3e-3, steps=10000,
            text_steps=3000, text_block=64, text_batch=16, eval_every=250, eval_batch=256, seed=0)
QUICK = dict(FULL, length=13, seg_len=(2, 4), n_embd=16, n_head=2, batch=8, steps=30, text_steps=20, text_block=16,
             text_batch=4, eval_every=10, eval_batch=16)
RUNS = {"2-layer": (2, "segments"), "1-layer": (1, "segments"), "text": (2, "text")}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


class TextTask:
    """Shakespeare's train plays as character ids, and the repeated random letters the text model is measured on."""

    def __init__(self, cfg: dict, quick: bool):
        from minilm.data import load_sample, load_shakespeare
        from minilm.data.genre import pretraining_text, split_plays
        if quick:
            c = load_sample()
            text = c.separator.join(w.text for w in c.works)
        else:
            c = load_shakespeare()
            text = pretraining_text(c, split_plays(c, 3, 0))
        self.tok = CharTokenizer.train(text)
        self.ids = np.asarray(self.tok.encode(text), dtype=np.int64)
        self.letters = np.array(self.tok.encode(LETTERS), dtype=np.int64)   # (26,) char ids of a … z

    def repeats(self, batch: int, seg_len, length: int, rng) -> Repeats:
        """repeated_segments over the 26 letters, written in the tokenizer's ids."""
        r = repeated_segments(batch, seg_len, len(LETTERS), rng, length=length)
        return Repeats(self.letters[r.tokens], r.copy, r.source)


def make_run(name: str, cfg: dict, text: TextTask | None):
    """(model, batches, eval batch, tokens per step) for run ``name``."""
    layers, data = RUNS[name]
    seed = cfg["seed"]
    manual_seed(seed)
    if data == "segments":
        V, T = cfg["vocab"], cfg["length"] - 1
        rng = np.random.default_rng(seed)

        def batches():
            return repeated_segments(cfg["batch"], cfg["seg_len"], V, rng, length=cfg["length"], bos=0).pair()
        evaluation = repeated_segments(cfg["eval_batch"], cfg["seg_len"], V, seed + 1000, length=cfg["length"], bos=0)
        tokens = cfg["batch"] * T
    else:
        V, T = text.tok.vocab_size, cfg["text_block"]
        batches = RandomBatches(text.ids, T, cfg["text_batch"], seed=seed)
        evaluation = text.repeats(cfg["eval_batch"], cfg["seg_len"], min(T + 1, cfg["length"]), seed + 1000)
        tokens = cfg["text_batch"] * T
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=layers, n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                          mlp=False), generator=Generator(seed))
    return model, batches, evaluation, tokens


def measure(model, batch: Repeats) -> dict:
    model.eval()
    probs = attention_probs(model, batch.input_ids.copy())
    loss = loss_by_occurrence(model, batch)
    return {**loss, "prefix_matching": prefix_matching_score(probs, batch).tolist(),
            "previous_token": previous_token_score(probs).tolist()}


def train_one(name: str, cfg: dict, text: TextTask | None) -> dict:
    model, batches, evaluation, tokens = make_run(name, cfg, text)
    text_run = RUNS[name][1] == "text"
    steps = cfg["text_steps"] if text_run else cfg["steps"]
    tc = TrainConfig(max_steps=steps, batch_size=cfg["text_batch" if text_run else "batch"], learning_rate=cfg["lr"],
                     min_lr_ratio=0.1, warmup_steps=min(100, steps // 10), weight_decay=0.0, eval_interval=0,
                     log_interval=10 ** 9, seed=cfg["seed"])
    trainer = Trainer(model, tc, batches, quiet=True)
    curve = [{"step": 0, **measure(model, evaluation)}]
    t0 = time.perf_counter()
    while trainer.step < steps:
        trainer.fit(stop_at=min(trainer.step + cfg["eval_every"], steps))
        point = {"step": trainer.step, "train_loss": float(np.mean(trainer.history["loss"][-cfg["eval_every"]:])),
                 **measure(model, evaluation)}
        curve.append(point)
        print(f"   {name} step {trainer.step:>5}: train {point['train_loss']:.3f}, first copy {point['first']:.3f}, "
              f"second {point['second']:.3f} ({100 * point['ratio']:.0f}%), best prefix-matching "
              f"{np.max(point['prefix_matching']):.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    final = curve[-1]
    ablations = {}
    for layer in range(model.config.n_layer):
        for head in range(model.config.n_head):
            with ablate_heads(model, [(layer, head)]):
                ablations[f"{layer}.{head}"] = loss_by_occurrence(model, evaluation)
    last = model.config.n_layer - 1
    top = (last, int(np.argmax(final["prefix_matching"][last])))
    partner = (0, int(np.argmax(final["previous_token"][0])))
    with ablate_heads(model, [top, partner] if last > 0 else [top]):
        both = loss_by_occurrence(model, evaluation)
    phase = next((p["step"] for p in curve if p["ratio"] < 0.5), None)
    return {"name": name, "layers": model.config.n_layer, "data": RUNS[name][1], "config": cfg,
            "model": model.config.to_dict(), "parameters": model.num_parameters(), "steps": steps,
            "tokens_per_step": tokens, "seconds": seconds, "curve": curve, "copying": copying_score(model).tolist(),
            "ablations": ablations, "induction_head": top, "previous_token_head": partner,
            "ablate_both": both, "phase_change_step": phase}


# ---- report --------------------------------------------------------------------------------------
def report(out: Path, tag: str, publish: bool) -> dict | None:
    runs = {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))}
    if not runs:
        print(f"no runs in {out}")
        return None
    rows = []
    for name in [n for n in RUNS if n in runs]:
        r = runs[name]
        f = r["curve"][-1]
        l, h = r["induction_head"]
        pl, ph = r["previous_token_head"]
        abl = r["ablations"][f"{l}.{h}"]
        rows.append(f"| {name} | {r['layers']} | {r['data']} | {r['steps']} | {r['seconds']:.0f} | {f['first']:.3f} | "
                    f"{f['second']:.3f} | {100 * f['ratio']:.0f}% | {r['phase_change_step'] or '–'} | {l}.{h} | "
                    f"{f['prefix_matching'][l][h]:.2f} | {r['copying'][l][h]:+.2f} | "
                    f"{abl['second']:.3f} ({100 * abl['ratio']:.0f}%) | "
                    + (f"{pl}.{ph} ({f['previous_token'][pl][ph]:.2f}) | {r['ablate_both']['second']:.3f} |"
                       if r["layers"] > 1 else "– | – |"))
    head = ("| run | layers | trained on | steps | s | loss, first copy | second copy | second / first | "
            "phase change at step | top head | prefix-matching | copying | second copy, top head ablated | "
            "previous-token head (score) | second copy, both ablated |")
    any_run = next(iter(runs.values()))
    c = any_run["config"]
    lines = [f"# Induction heads in attention-only GPTs ({tag})", "",
             f"Repeated random segments: vocab {c['vocab']} (BOS included), rows of {c['length']} tokens, segment "
             f"length {c['seg_len'][0]}–{c['seg_len'][1]}, measured on {c['eval_batch']} fixed rows; "
             f"d = {c['n_embd']}, {c['n_head']} heads, batch {c['batch']}, AdamW lr {c['lr']:g} "
             "(warm-up, cosine to 10%). "
             "Losses in nats on the predictable targets (s₂ … s_n) of each copy; heads as layer.head; "
             "'phase change' = first evaluation with second < ½ first.", "",
             head, "|" + "---|" * (head.count("|") - 1), *rows]
    (out / "induction_heads.md").write_text("\n".join(lines) + "\n")
    (out / "induction_heads.json").write_text(json.dumps({"runs": runs}))
    plot(runs, out / "induction_heads.png")
    if publish:
        for ext in ("md", "json", "png"):
            shutil.copy(out / f"induction_heads.{ext}", RESULTS / f"induction_heads.{ext}")
    print("\n".join(lines))
    return runs


def plot(runs: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, r) in enumerate(runs.items()):
        steps = [p["step"] for p in r["curve"]]
        a.plot(steps, [p["first"] for p in r["curve"]], color=f"C{i}", ls="--", lw=1, label=f"{name}: first copy")
        a.plot(steps, [p["second"] for p in r["curve"]], color=f"C{i}", lw=1.5, label=f"{name}: second copy")
        l, h = r["induction_head"]
        b.plot(steps, [p["prefix_matching"][l][h] for p in r["curve"]], color=f"C{i}", lw=1.5,
               label=f"{name}: prefix-matching of {l}.{h}")
        if r["layers"] > 1:
            pl, ph = r["previous_token_head"]
            b.plot(steps, [p["previous_token"][pl][ph] for p in r["curve"]], color=f"C{i}", ls=":", lw=1.5,
                   label=f"{name}: previous-token of {pl}.{ph}")
    a.set_xlabel("step")
    a.set_ylabel("next-token loss (nats)")
    a.set_title("loss on a segment's first and second occurrence")
    a.legend(fontsize=7)
    b.set_xlabel("step")
    b.set_ylabel("attention weight")
    b.set_ylim(0, 1)
    b.set_title("the induction head and its previous-token partner")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- timing --------------------------------------------------------------------------------------
def estimate(cfg: dict, text: TextTask | None, names, n: int = 12):
    """Time n steps of each run (the first two dropped) and one evaluation; print the full plan."""
    total = 0.0
    for name in names:
        model, batches, evaluation, tokens = make_run(name, cfg, text)
        tc = TrainConfig(max_steps=n + 2, batch_size=cfg["batch"], learning_rate=cfg["lr"], eval_interval=0, seed=0)
        sec = Trainer(model, tc, batches, quiet=True).fit()["sec_per_step"]
        t0 = time.perf_counter()
        measure(model, evaluation)
        ev = time.perf_counter() - t0
        steps = cfg["text_steps"] if RUNS[name][1] == "text" else cfg["steps"]
        run = steps * sec + (steps // cfg["eval_every"] + 1) * ev
        total += run
        print(f"{name}: {model.num_parameters():,} parameters, {tokens} tokens/step, {1e3 * sec:.1f} ms/step, "
              f"{1e3 * ev:.0f} ms/evaluation -> {steps} steps ~ {run / 60:.1f} min")
    print(f"total ~ {total / 60:.1f} min of one core")
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, a few steps (the mechanics only)")
    ap.add_argument("--out", default=None, help="default out/induction_heads[_quick]")
    ap.add_argument("--runs", default=None, help=f"comma-separated runs of {list(RUNS)} (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps of the synthetic runs")
    ap.add_argument("--text-steps", type=int, default=None, help="optimizer steps of the text run")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate")
    ap.add_argument("--estimate", action="store_true", help="time a few steps of each run, print the plan, stop")
    ap.add_argument("--report", action="store_true", help="only write the table and plot from the runs in --out")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in (("steps", args.steps), ("text_steps", args.text_steps), ("lr", args.lr))
                if v is not None})
    names = args.runs.split(",") if args.runs else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {list(RUNS)}")
    tag = "quick" if args.quick else "full"
    out = Path(args.out or f"out/induction_heads{'_quick' if args.quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    publish = not args.quick and args.out is None
    if args.report:
        return report(out, tag, publish)
    text = TextTask(cfg, args.quick) if any(RUNS[n][1] == "text" for n in names) else None
    if args.estimate:
        return estimate(cfg, text, names)
    t0 = time.perf_counter()
    for name in names:
        path = out / f"run-{name}.json"
        if path.exists():
            print(f"{path} exists; skipping")
            continue
        print(f"== {name}", flush=True)
        path.write_text(json.dumps(train_one(name, cfg, text)))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return report(out, tag, publish)


if __name__ == "__main__":
    main()
