#!/usr/bin/env python
"""Knowledge distillation (K1) on Shakespeare: a teacher, a student from scratch, a distilled student.

    python experiments/distillation.py [--quick] [--out DIR]

The same data as experiments/peft_comparison.py: a character-level corpus of the
genre task's *train* plays (the held-out plays are never seen), its last 10%
for validation.
  teacher              GPT 4 layers × 128 wide (0.84M parameters), pretrained on the text —
                       the same base as experiments/peft_comparison.py (pass its folder: --teacher-dir)
  student, scratch     GPT 4 layers × 64 wide (0.22M, about a quarter), pretrained the same way
  student, distilled   the same student architecture and initial weights, trained on
                       K1 against the frozen teacher (T = 2, λ = 0.5) with the same optimizer,
                       schedule, steps and batches — only the loss differs
Then the genre task: each model gets a classification head and full fine-tuning;
the distilled student is fine-tuned on K1 against the fine-tuned teacher classifier.
Reported: parameters, val loss (nats/char, the same fixed val blocks for all),
test accuracy on the held-out plays, inference tokens/s (forward only, the process's default threads),
and how much of the teacher's gap over the scratch student the distilled one keeps:
(L_scratch − L_distilled) / (L_scratch − L_teacher).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))          # its sibling peft_comparison.py

import numpy as np  # noqa: E402

from peft_comparison import SIZES  # noqa: E402
from minilm.data.corpus import train_val_split  # noqa: E402
from minilm.data.genre import genre_task, pretraining_text, split_plays  # noqa: E402
from minilm.distill import DistillConfig, Distiller  # noqa: E402
from minilm.finetune import distill_lm  # noqa: E402
from minilm.finetune import ExampleBatches, accuracy, encode_passages, lm_loss, pretrain_base, train_classifier  # noqa: E402
from minilm.models import GPT, GPTClassifier, GPTConfig  # noqa: E402
from minilm.tensor import Generator, Tensor, manual_seed, no_grad  # noqa: E402
from minilm.tokenizers import CharTokenizer  # noqa: E402
from minilm.train import TrainConfig, Trainer, finetune_config  # noqa: E402

CONFIGS = {
    "full": dict(teacher=dict(n_layer=4, n_head=4, n_embd=128), student=dict(n_layer=4, n_head=4, n_embd=64),
                 block=256, pretrain=SIZES["full"].pretrain, clf_steps=400, clf_batch=16, test_per_genre=500,
                 train_per_genre=None, val_blocks=200),
    "quick": dict(teacher=dict(n_layer=2, n_head=2, n_embd=64), student=dict(n_layer=2, n_head=2, n_embd=32),
                  block=64, pretrain=SIZES["quick"].pretrain, clf_steps=40, clf_batch=16, test_per_genre=100,
                  train_per_genre=400, val_blocks=40),
}
KD = DistillConfig(T=2.0, lam=0.5)


def tokens_per_second(model, T, batch=8, repeats=5):
    """Forward-only tokens/s (median of repeats) on random ids, after one warm-up call."""
    x = Tensor(np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, T)))
    times = []
    with no_grad():
        model.eval()
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return batch * T / float(np.median(times))


def run(size="full", out="out/distillation", teacher_dir=None, student_dir=None, stream=None, corpus=None):
    stream = stream or sys.stdout
    c = CONFIGS[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if corpus is None:
        from minilm.data import load_shakespeare
        corpus = load_shakespeare()
    tok = CharTokenizer.train(corpus.text)
    text = pretraining_text(corpus, split_plays(corpus, 3, 0))
    T = c["block"]
    tc = TrainConfig(seed=1337, **c["pretrain"])
    mc_t = GPTConfig(vocab_size=tok.vocab_size, dropout=0.0, block_size=T, **c["teacher"])
    mc_s = GPTConfig(vocab_size=tok.vocab_size, dropout=0.0, block_size=T, **c["student"])
    teacher = pretrain_base(text, tok, mc_t, tc, teacher_dir or out / "teacher", stream=stream)
    scratch = pretrain_base(text, tok, mc_s, tc, student_dir or out / "student-scratch", stream=stream)

    ids = np.asarray(tok.encode(text), np.int64)
    train_ids, val_ids = train_val_split(ids, 0.1)            # the split pretrain_base used
    distilled_path = out / "student-distilled.npz"
    key = json.dumps({"s": mc_s.to_dict(), "t": mc_t.to_dict(), "tc": tc.to_dict(), "kd": KD.to_dict()})
    if distilled_path.exists() and str(np.load(distilled_path)["key"]) == key:
        distilled = GPT(mc_s)
        z = np.load(distilled_path)
        distilled.load_state_dict({k[2:]: z[k] for k in z.files if k.startswith("w.")})
        kd_history = json.loads(str(z["history"]))
        print(f"distilled student: read {distilled_path}", file=stream, flush=True)
    else:
        manual_seed(tc.seed)
        distilled = GPT(mc_s, generator=Generator(tc.seed))     # the scratch student's initial weights
        print(f"distilling the teacher into a {distilled.num_parameters():,}-parameter student "
              f"(K1, T={KD.T}, λ={KD.lam}, {tc.max_steps} steps)", file=stream, flush=True)
        kd_history = distill_lm(Distiller(teacher, distilled, KD), train_ids, tc, stream=stream)
        np.savez(distilled_path, key=key, history=json.dumps(kd_history),
                 **{"w." + k: v for k, v in distilled.state_dict().items()})

    rows = {}
    for name, m in (("teacher", teacher), ("student, scratch", scratch), ("student, distilled", distilled)):
        rows[name] = {"model": name, "params": m.num_parameters(),
                      "val_loss": lm_loss(m, val_ids, max_blocks=c["val_blocks"]),
                      "tokens_per_s": tokens_per_second(m, T)}
        print(f"{name}: {rows[name]['params']:,} params, val loss {rows[name]['val_loss']:.4f}, "
              f"{rows[name]['tokens_per_s']:,.0f} tokens/s", file=stream, flush=True)

    # ---- the genre task -----------------------------------------------------------------------------
    task = genre_task(corpus, length=T, train_per_genre=c["train_per_genre"], test_per_genre=c["test_per_genre"])
    Xtr, Xte = encode_passages(task.train_texts, tok, T), encode_passages(task.test_texts, tok, T)
    ytr, yte = task.train_labels, task.test_labels
    fc = finetune_config(max_steps=c["clf_steps"], batch_size=c["clf_batch"], learning_rate=5e-4, seed=0,
                         log_interval=max(1, c["clf_steps"] // 4))
    clf_t = GPTClassifier(teacher, 3, generator=Generator(0))
    print("\n[genre] teacher, full fine-tuning", file=stream, flush=True)
    train_classifier(clf_t, Xtr, ytr, fc, stream=stream)
    rows["teacher"]["accuracy"] = accuracy(clf_t, Xte, yte)
    clf_s = GPTClassifier(scratch, 3, generator=Generator(0))
    print("[genre] student (scratch), full fine-tuning", file=stream, flush=True)
    train_classifier(clf_s, Xtr, ytr, fc, stream=stream)
    rows["student, scratch"]["accuracy"] = accuracy(clf_s, Xte, yte)
    clf_d = GPTClassifier(distilled, 3, generator=Generator(0))
    print("[genre] student (distilled), full fine-tuning on K1 against the teacher classifier", file=stream, flush=True)
    _train_classifier_kd(Distiller(clf_t, clf_d, KD), Xtr, ytr, fc, stream)
    rows["student, distilled"]["accuracy"] = accuracy(clf_d, Xte, yte)
    for r in rows.values():
        print(f"[genre] {r['model']}: test accuracy {r['accuracy']:.3f}", file=stream, flush=True)

    lt, ls, ld = (rows[k]["val_loss"] for k in ("teacher", "student, scratch", "student, distilled"))
    at, as_, ad = (rows[k]["accuracy"] for k in ("teacher", "student, scratch", "student, distilled"))
    result = {"size": size, "rows": list(rows.values()), "kd": KD.to_dict(), "pretrain": tc.to_dict(),
              "gap_kept_val_loss": (ls - ld) / (ls - lt) if ls != lt else None,
              "gap_kept_accuracy": (ad - as_) / (at - as_) if at != as_ else None,
              "kd_history": {k: v[::10] for k, v in kd_history.items()},
              "seconds": time.perf_counter() - t0}
    (out / f"bench_distill_{size}.json").write_text(json.dumps(result, indent=2))
    table = format_table(result)
    (out / f"bench_distill_{size}.md").write_text(table)
    print("\n" + table, file=stream, flush=True)
    return result


def _train_classifier_kd(distiller, X, y, fc, stream):
    """train_classifier's batches and Trainer, with K1 against the teacher classifier as the loss."""
    batches = ExampleBatches({"input_ids": X, "labels": y}, fc.batch_size, seed=fc.seed)
    return Trainer(distiller.student, fc, batches, stream=stream,
                   loss_fn=lambda model, batch: distiller.loss(batch["input_ids"], batch["labels"])).fit()


def format_table(result) -> str:
    t = next(r for r in result["rows"] if r["model"] == "teacher")
    lines = [f"K1 with T = {result['kd']['T']}, λ = {result['kd']['lam']}; val loss in nats/char on the same blocks",
             "", "| model | parameters | val loss | genre accuracy | tokens/s (forward) | speed vs teacher |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['val_loss']:.4f} | {r.get('accuracy', float('nan')):.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / t['tokens_per_s']:.2f}x |")
    g1, g2 = result["gap_kept_val_loss"], result["gap_kept_accuracy"]
    kept = [f"{what} {g:.0%}" for what, g in (("val loss", g1), ("accuracy", g2)) if g is not None]
    lines += ["", "Share of the teacher's gap over the scratch student that the distilled student keeps: "
              + (", ".join(kept) or "— (no gap)")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="out/distillation")
    ap.add_argument("--teacher-dir", help="a pretrain_base folder for the teacher (cached)")
    ap.add_argument("--student-dir", help="a pretrain_base folder for the scratch student (cached)")
    a = ap.parse_args(argv)
    run("quick" if a.quick else "full", a.out, a.teacher_dir, a.student_dir)


if __name__ == "__main__":
    main()
