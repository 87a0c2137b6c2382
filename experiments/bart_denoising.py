#!/usr/bin/env python
"""Which denoising objective helps a small BART restore punctuation?  The paper's Table 1 in miniature.

    python experiments/bart_denoising.py --estimate          # time a few steps at the full size, print the plan
    python experiments/bart_denoising.py                     # every row x 3 seeds, lr grid on each (~4.3 h, below)
    python experiments/bart_denoising.py --seeds 0           # the planned run: seed 0 with the lr grids (~85 min),
    python experiments/bart_denoising.py --seeds 1 --lr-from 0 &   # then seeds 1 and 2 with seed 0's chosen lr
    python experiments/bart_denoising.py --seeds 2 --lr-from 0 &   # per row (~65 min each, in parallel)
    python experiments/bart_denoising.py --report            # the table and the plot from what is there
    python experiments/bart_denoising.py --quick             # tiny models, a few steps, ~1 min

Task (issue 15, ``minilm.data.seq2seq.punctuation_task``): restore punctuation and capitals of a
Shakespeare dialogue line from its lower-cased, punctuation-free words; train lines from the 28
train plays of ``split_plays`` (seed 0), test lines from the 9 held-out plays.  Metrics
(``restoration_scores``): exact match, punctuation P/R/F1 (events = (word index, mark)), character
error rate, case accuracy.  Baselines: copy the input; ``RuleCapitaliser`` (fitted on the
fine-tuning lines).

One small BART for every row (full: d 128, 2 + 2 layers, 4 heads, FFN 512, 128 positions,
dropout 0.1; 1.2M parameters with a 2,000-id byte-level BPE trained on the train plays, BART's
four special tokens included, cached as DIR/tokenizer-<V>.json), the same pretraining steps, the
same fine-tuning steps and batches, the same seeds:

  (a) no pretraining        fine-tuned from random initialisation
  (b) token masking         30% of the tokens -> <mask> (the rate of (c), so (b) and (c) differ only
                            in the span structure: one <mask> per token against one per span)
  (c) text infilling        spans of whole words, lengths ~ Poisson(3), 30% of the words, each span
                            -> one <mask> (a zero-length span inserts one)
  (d) (c) + sentence permutation   the sentences (cut after . ! ?) shuffled first: the paper's recipe
  (e) LoRA                  r = 8, alpha = 16 on q_proj and v_proj of every self-attention and of the
                            decoder's cross-attention, everything else frozen, on (c)'s pretrained
                            model (chosen before any result: (c) is the pure infilling objective;
                            its full fine-tuning row is (c) itself)
  (d) beam 4                row (d)'s selected model decoded with beam search (4 beams, length
                            penalty 1) instead of greedily (row fixed in advance, not the test's best)

Pretraining: documents = the train plays' dialogue lines packed per scene into <= 128 ids
(``speech_documents(unit="scene")``: several sentences per document, so permutation has something to
permute), 1,500 steps of ``DenoisingBatches`` of 16 (~2.2 epochs of the 1.1M ids), AdamW lr 1e-3
(fixed, not tuned: 3e-3 stayed on the unigram plateau, ~6.1 nats, for 150 steps where 1e-3 left it
at ~100), 100 warm-up steps, cosine to 10%, weight decay 0.01, clip 1.0.  Fine-tuning: 500 steps of
``Seq2SeqBatches`` of 32 (line, target) pairs, the same batch order for every row of a seed, 40
warm-up steps, cosine to 10%, no weight decay, beta2 0.999.  The fine-tuning learning rate is
chosen PER ROW AND SEED from a grid (full fine-tuning {3e-4, 1e-3, 3e-3}, LoRA {1e-3, 3e-3, 1e-2};
``--lrs`` / ``--lora-lrs``) by the teacher-forced loss on 500 validation lines carved out of the
TRAIN plays' lines (a fixed draw, removed from the fine-tuning pairs; the pretraining documents do
contain them, as they contain every train line); the test lines decide nothing.  A learning rate
whose loss diverges counts as infinitely bad.  ``--lr-from SEED`` skips the grid: each row takes the
lr its SEED run chose (on validation too).  Test: a fixed random 1,000 of the 22,783 test lines
(seed 0), greedy decoding (``generate_seq2seq``); mean ± sample s.d. over seeds (initialisation,
pretraining batches and noise, fine-tuning batches, dropout).

Files: DIR/pretrain-<noise>-<seed>/ (the pretrained checkpoint) and DIR/pretrain-<noise>-<seed>.json
(its loss curve) are made the first time a row needs them; each (row, seed) writes
DIR/run-<row>-<seed>.json when it finishes.  Anything already there is reused, so an interrupted
run resumes where it stopped and several processes can share the work: split them by SEED (two
processes on one seed would both pretrain its models).  ``--report`` (and the end of every run)
reads what is there and writes DIR/bart_denoising.{md,json,png}.  One BLAS and one Numba thread.

Time (``--estimate``, measured on the project's 2-core machine while other jobs kept both cores busy,
so perhaps half an idle machine's speed): pretraining step (16 x 128 ids) 0.61-0.66 s, fine-tuning
step (32 lines) 0.21-0.37 s (full or LoRA alike), greedy decoding <= 15 ms a line.  One seed =
3 pretrainings x 1,500 steps (~48 min) + 5 rows x 3 learning rates x 500 steps (~30 min at 0.25 s)
+ decoding (~3 min) ~ 80-85 min of one core; with ``--lr-from`` 5 x 500 steps (~10 min) instead of
the grids, ~60-65 min.  The planned run (grids on seed 0, ``--lr-from 0`` for seeds 1 and 2) is
~3.5 h of core time, ~2.5 h wall with seeds 1 and 2 in parallel.  ``--estimate`` re-measures.
Risk: from random initialisation a BART of this size sits on the unigram plateau for the first
few hundred steps (row (a) after 300 fine-tuning steps at lr 1e-3: validation loss 4.96 nats, CER
93%), so row (a) may stay there at 500; that is the measurement, not a bug.
"""
from __future__ import annotations

import sys  # noqa: I001
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402  first: limits threads before NumPy is imported

_common.limit_numba_threads()

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minilm import peft  # noqa: E402
from minilm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from minilm.data import load_shakespeare, split_plays  # noqa: E402
from minilm.data.seq2seq import (SPECIAL_TOKENS, DenoisingBatches, RuleCapitaliser, Seq2SeqBatches,  # noqa: E402
                                 Seq2SeqVocab, collate_seq2seq, copy_baseline, punctuation_task,
                                 restoration_scores, speech_documents)
from minilm.models.bart import BartConfig, BartForConditionalGeneration, generate_seq2seq  # noqa: E402
from minilm.tensor import Generator, manual_seed, no_grad  # noqa: E402
from minilm.tokenizers import ByteLevelBPE  # noqa: E402
from minilm.train import TrainConfig, Trainer  # noqa: E402

_common.limit_loaded_threads(numba=True)

FULL = dict(vocab=2000, bpe_chars=None, doc_plays=None, d_model=128, layers=2, heads=4, ffn=512, positions=128,
            dropout=0.1, pre_steps=1500, pre_batch=16, pre_lr=1e-3, pre_warmup=100, ft_steps=500, ft_batch=32,
            ft_warmup=40, lrs=(3e-4, 1e-3, 3e-3), lora_lrs=(1e-3, 3e-3, 1e-2), train_lines=None, val_lines=500,
            test_lines=1000, seeds=(0, 1, 2), beam=4, lora_r=8)
QUICK = dict(vocab=400, bpe_chars=300_000, doc_plays=4, d_model=32, layers=1, heads=2, ffn=64, positions=64,
             dropout=0.1, pre_steps=30, pre_batch=8, pre_lr=3e-3, pre_warmup=5, ft_steps=30, ft_batch=16,
             ft_warmup=5, lrs=(3e-3,), lora_lrs=(1e-2,), train_lines=2000, val_lines=40, test_lines=40,
             seeds=(0, 1), beam=2, lora_r=4)

MASK_RATIO, POISSON_LAMBDA = 0.3, 3.0
# pretraining objective name -> the noises of denoising_pair (applied in NOISES order: permutation first)
NOISE = {"masking": ("token_masking",), "infilling": ("text_infilling",),
         "infilling+permutation": ("text_infilling", "sentence_permutation")}
# row -> (label, pretraining objective or None, method); the order of the table
ROWS = {"a": ("(a) no pretraining", None, "full"),
        "b": ("(b) token masking", "masking", "full"),
        "c": ("(c) text infilling", "infilling", "full"),
        "d": ("(d) text infilling + sentence permutation", "infilling+permutation", "full"),
        "lora": ("(e) text infilling, LoRA (q, v)", "infilling", "lora")}
SHORT = {"a": "(a) none", "b": "(b) masking", "c": "(c) infilling", "d": "(d) infill + perm.",
         "lora": "(e) (c) + LoRA"}                         # the plot's labels
LORA_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "encoder_attn.q_proj", "encoder_attn.v_proj")
METRICS = ("exact_match", "punct_f1", "punct_precision", "punct_recall", "cer", "case_accuracy")


# ---- data ----------------------------------------------------------------------------------------
def tokenizer(out: Path, cfg: dict, train_plays) -> Seq2SeqVocab:
    """The byte-level BPE of the train plays with BART's special tokens, trained once and cached."""
    path = out / f"tokenizer-{cfg['vocab']}.json"
    if path.exists():
        return Seq2SeqVocab(ByteLevelBPE.from_dict(json.loads(path.read_text())))
    text = "\n".join(w.text for w in train_plays)[:cfg["bpe_chars"]]
    tok = ByteLevelBPE.train(text, cfg["vocab"], special_tokens=SPECIAL_TOKENS)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(tok.to_dict()))
    tmp.replace(path)                                          # atomic: another process may read it
    return Seq2SeqVocab(tok)


class Data:
    """Everything the rows share: vocabulary, pretraining documents, the train/val/test pairs."""

    def __init__(self, out: Path, cfg: dict):
        corpus = load_shakespeare()
        split = split_plays(corpus, n_test_per_genre=3, seed=0)
        self.vocab = v = tokenizer(out, cfg, split["train"])
        doc_plays = split["train"][:cfg["doc_plays"]]
        self.docs = speech_documents(doc_plays, v, max_tokens=cfg["positions"], unit="scene")
        task = punctuation_task(corpus, n_test_per_genre=3, seed=0)
        self.task = task
        rng = np.random.default_rng(0)
        n_train = len(task.train_sources)
        val = rng.choice(n_train, size=cfg["val_lines"], replace=False)          # carved from the train plays
        rest = np.setdiff1d(np.arange(n_train), val)
        if cfg["train_lines"] is not None:
            rest = np.sort(rng.choice(rest, size=cfg["train_lines"], replace=False))
        test = np.sort(rng.choice(len(task.test_sources), size=cfg["test_lines"], replace=False))
        pick = lambda xs, idx: [xs[int(i)] for i in idx]                       # noqa: E731
        self.train_src, self.train_tgt = pick(task.train_sources, rest), pick(task.train_targets, rest)
        self.val_src, self.val_tgt = pick(task.train_sources, np.sort(val)), pick(task.train_targets, np.sort(val))
        self.test_src, self.test_tgt = pick(task.test_sources, test), pick(task.test_targets, test)
        cut = cfg["positions"]
        enc = lambda xs: [v.encode(x, max_len=cut) for x in xs]                 # noqa: E731
        self.train_pairs = (enc(self.train_src), enc(self.train_tgt))
        self.val_pairs = (enc(self.val_src), enc(self.val_tgt))
        self.test_ids = enc(self.test_src)
        self.val_ids = self.val_pairs[0]

    def summary(self) -> str:
        return (f"{self.vocab}\npretraining: {len(self.docs):,} scene documents of ≤ {max(map(len, self.docs))} ids, "
                f"{sum(map(len, self.docs)):,} ids\nfine-tuning: {len(self.train_src):,} train lines, "
                f"{len(self.val_src)} validation lines (train plays), {len(self.test_src)} test lines "
                f"(of {len(self.task.test_sources):,}, held-out plays: {'; '.join(self.task.test_plays)})")


# ---- models and training -------------------------------------------------------------------------
def bart_config(cfg: dict, vocab: Seq2SeqVocab) -> BartConfig:
    return BartConfig(vocab_size=vocab.vocab_size, d_model=cfg["d_model"], encoder_layers=cfg["layers"],
                      decoder_layers=cfg["layers"], encoder_attention_heads=cfg["heads"],
                      decoder_attention_heads=cfg["heads"], encoder_ffn_dim=cfg["ffn"], decoder_ffn_dim=cfg["ffn"],
                      max_position_embeddings=cfg["positions"], dropout=cfg["dropout"], **vocab.config_ids())


def denoising_batches(data: Data, cfg: dict, noise: str, seed: int) -> DenoisingBatches:
    v = data.vocab
    return DenoisingBatches(data.docs, NOISE[noise], mask_id=v.mask_id, end_ids=v.end_ids(),
                            batch_size=cfg["pre_batch"],
                            max_source_len=cfg["positions"], max_target_len=cfg["positions"], pad_id=v.pad_id,
                            seed=seed, word_start=v.word_start(), mask_p=MASK_RATIO, mask_ratio=MASK_RATIO,
                            poisson_lambda=POISSON_LAMBDA)


def pretrain_config(cfg: dict, seed: int, steps=None) -> TrainConfig:
    steps = steps or cfg["pre_steps"]
    return TrainConfig(max_steps=steps, batch_size=cfg["pre_batch"], learning_rate=cfg["pre_lr"], min_lr_ratio=0.1,
                       warmup_steps=min(cfg["pre_warmup"], steps), weight_decay=0.01, eval_interval=0, seed=seed,
                       log_interval=max(steps // 10, 1))


def finetune_config(cfg: dict, seed: int, lr: float, steps=None) -> TrainConfig:
    steps = steps or cfg["ft_steps"]
    return TrainConfig(max_steps=steps, batch_size=cfg["ft_batch"], learning_rate=lr, min_lr_ratio=0.1,
                       warmup_steps=min(cfg["ft_warmup"], steps), weight_decay=0.0, beta2=0.999, eval_interval=0,
                       seed=seed, log_interval=max(steps // 5, 1))


def pretrained(out: Path, data: Data, cfg: dict, noise: str, seed: int) -> tuple[Path, dict]:
    """The checkpoint of BART pretrained with ``noise`` at ``seed`` (trained now if not there), and its record."""
    name = f"pretrain-{noise.replace('+', '_')}-{seed}"
    ckpt, record = out / name, out / f"{name}.json"
    if record.exists() and ckpt.exists():
        return ckpt, json.loads(record.read_text())
    print(f"== pretraining: {noise}, seed {seed}, {cfg['pre_steps']} steps of {cfg['pre_batch']} documents", flush=True)
    manual_seed(seed)
    model = BartForConditionalGeneration(bart_config(cfg, data.vocab), generator=Generator(seed))
    t0 = time.perf_counter()
    result = Trainer(model, pretrain_config(cfg, seed), denoising_batches(data, cfg, noise, seed),
                     stream=sys.stdout).fit()
    seconds = time.perf_counter() - t0
    save_checkpoint(ckpt, model, model.config.to_dict(), step=result["step"])
    rec = {"noise": noise, "kinds": list(NOISE[noise]), "seed": seed, "steps": result["step"],
           "loss": result["loss"], "final_loss": float(np.mean(result["loss"][-max(len(result['loss']) // 20, 1):])),
           "seconds": seconds, "sec_per_step": result["sec_per_step"], "lr": cfg["pre_lr"]}
    record.write_text(json.dumps(rec))
    print(f"   pretraining loss {rec['final_loss']:.3f} (last 5%), {seconds:.0f} s, {rec['sec_per_step']:.3f} s/step",
          flush=True)
    return ckpt, rec


def fresh_model(cfg, data, seed, ckpt: Path | None, method: str, lora_seed: int = 0):
    """A model for one fine-tuning run: random (ckpt None) or the pretrained weights, with LoRA if asked."""
    manual_seed(seed)
    model = BartForConditionalGeneration(bart_config(cfg, data.vocab), generator=Generator(seed))
    if ckpt is not None:
        load_checkpoint(ckpt).load_into(model)
    if method == "lora":
        peft.add(model, peft.LoRAConfig(r=cfg["lora_r"], alpha=2.0 * cfg["lora_r"], target_modules=LORA_TARGETS,
                                        seed=lora_seed))
    return model


def val_loss(model, data: Data, batch: int = 100) -> float:
    """Teacher-forced mean NLL per target token on the validation lines (nats)."""
    src, tgt = data.val_pairs
    total = count = 0.0
    model.eval()
    with no_grad():
        for i in range(0, len(src), batch):
            b = collate_seq2seq(src[i:i + batch], tgt[i:i + batch], data.vocab.pad_id)
            n = int((b["labels"] != -100).sum())
            total += float(model(**b).loss.item()) * n
            count += n
    return total / count


def decode(model, data: Data, ids, num_beams: int = 1, batch: int = 100) -> list[str]:
    """Predicted lines for the framed sources ``ids``, batched by length (restored to input order)."""
    v, P = data.vocab, model.config.max_position_embeddings
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = [""] * len(ids)
    for i in range(0, len(ids), batch):
        rows = [ids[int(j)] for j in order[i:i + batch]]
        b = collate_seq2seq(rows, rows, v.pad_id)
        S = b["input_ids"].shape[1]
        gen = generate_seq2seq(model, b["input_ids"], b["attention_mask"], max_new_tokens=min(P, 2 * S + 8),
                               num_beams=num_beams).data
        for j, row in zip(order[i:i + batch], gen):
            out[int(j)] = v.decode(row, keep_mask=False).strip()
    return out


def finetune(model, data: Data, cfg: dict, seed: int, lr: float):
    batches = Seq2SeqBatches(*data.train_pairs, batch_size=cfg["ft_batch"], pad_id=data.vocab.pad_id,
                             max_source_len=cfg["positions"], max_target_len=cfg["positions"], seed=seed)
    manual_seed(seed)                                          # the same dropout stream for every row and lr
    return Trainer(model, finetune_config(cfg, seed, lr), batches, stream=sys.stdout).fit()


def run_row(row: str, seed: int, out: Path, data: Data, cfg: dict, lrs) -> dict:
    """One (row, seed): fine-tune at each lr of the grid, keep the lowest validation loss, test it."""
    label, noise, method = ROWS[row]
    ckpt, pre = pretrained(out, data, cfg, noise, seed) if noise else (None, None)
    grid, best, t_start = [], None, time.perf_counter()
    for lr in lrs:
        print(f"== {label}, seed {seed}, fine-tuning lr {lr:g}", flush=True)
        model = fresh_model(cfg, data, seed, ckpt, method, lora_seed=seed)
        t0 = time.perf_counter()
        try:
            result = finetune(model, data, cfg, seed, lr)
            vl = val_loss(model, data)
        except FloatingPointError as e:                        # diverged: the worst possible choice
            print(f"   lr {lr:g} diverged: {e}", flush=True)
            result, vl = {"loss": [], "sec_per_step": float("nan")}, math.inf
        entry = {"lr": lr, "val_loss": vl, "seconds": time.perf_counter() - t0,
                 "sec_per_step": result["sec_per_step"], "loss": result["loss"]}
        grid.append(entry)
        print(f"   validation loss {vl:.4f} nats/token, {entry['seconds']:.0f} s", flush=True)
        if best is None or vl < best[0]:
            best = (vl, lr, {k: np.array(a, copy=True) for k, a in model.state_dict().items()}, model)
    vl, lr, state, model = best
    model.load_state_dict(state)
    counts = peft.trainable_report(model, file=io.StringIO())
    t0 = time.perf_counter()
    test_pred = decode(model, data, data.test_ids)
    val_pred = decode(model, data, data.val_ids)
    rec = {"row": row, "label": label, "seed": seed, "noise": noise, "method": method, "lr": lr, "grid": grid,
           "val_loss": vl, "val": restoration_scores(val_pred, data.val_tgt),
           "test": restoration_scores(test_pred, data.test_tgt), "examples": test_pred[:12],
           "trainable": counts["trainable"], "total": counts["total"],
           "pretrain": None if pre is None else {k: pre[k] for k in ("final_loss", "seconds", "sec_per_step", "steps")},
           "ft_steps": cfg["ft_steps"], "ft_batch": cfg["ft_batch"], "decode_seconds": time.perf_counter() - t0}
    if row == "d" and cfg["beam"] > 1:
        t0 = time.perf_counter()
        beam_pred = decode(model, data, data.test_ids, num_beams=cfg["beam"])
        rec["beam"] = {"num_beams": cfg["beam"], "test": restoration_scores(beam_pred, data.test_tgt),
                       "examples": beam_pred[:12], "seconds": time.perf_counter() - t0}
    rec["seconds"] = time.perf_counter() - t_start
    return rec


# ---- the report ----------------------------------------------------------------------------------
def _sd(a) -> float:
    return float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")


def _cell(vals, pct=True) -> str:
    k = 100.0 if pct else 1.0
    m, s = k * float(np.mean(vals)), k * _sd(vals)
    return f"{m:.1f} ± {s:.1f}" if pct else f"{m:.3f} ± {s:.3f}"


def report(out: Path, tag: str) -> dict | None:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))]
    pres = [json.loads(p.read_text()) for p in sorted(out.glob("pretrain-*.json"))]
    base_path = out / "baselines.json"
    if not runs:
        print(f"no runs in {out}")
        return None
    baselines = json.loads(base_path.read_text()) if base_path.exists() else {}
    head = ("| row | pretraining loss | trainable params | fine-tuning lr (per seed) | seeds | exact match % | "
            "punct. F1 % | punct. P % | punct. R % | CER % | case acc. % |")
    lines = [f"# BART denoising objectives on punctuation restoration ({tag})", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in baselines.get("rows", {}).items():
        lines.append(f"| {name} | – | 0 | – | – | " + " | ".join(f"{100 * s[m]:.1f}" for m in METRICS) + " |")
    summary = {}
    for row, (label, noise, method) in ROWS.items():
        rs = sorted([r for r in runs if r["row"] == row], key=lambda r: r["seed"])
        if not rs:
            continue
        pl = [r["pretrain"]["final_loss"] for r in rs if r["pretrain"]]
        summary[row] = {"label": label, "seeds": [r["seed"] for r in rs], "lr": [r["lr"] for r in rs],
                        "trainable": rs[0]["trainable"], "total": rs[0]["total"],
                        "pretrain_loss": pl, **{m: [r["test"][m] for r in rs] for m in METRICS},
                        "val_loss": [r["val_loss"] for r in rs]}
        pcell = _cell(pl, pct=False) if pl else "–"
        lrs = ", ".join(f"{r['lr']:g}" for r in rs)
        lines.append(f"| {label} | {pcell} | {rs[0]['trainable']:,} | {lrs} | "
                     f"{len(rs)} | " + " | ".join(_cell([r['test'][m] for r in rs]) for m in METRICS) + " |")
        beams = [r for r in rs if "beam" in r]
        if beams:
            k = beams[0]["beam"]["num_beams"]
            summary[f"{row}_beam"] = {"label": f"{label}, beam {k}", "seeds": [r["seed"] for r in beams],
                                      **{m: [r["beam"]["test"][m] for r in beams] for m in METRICS}}
            lines.append(f"| {label}, beam {k} | {pcell} | {rs[0]['trainable']:,} | (as above) | {len(beams)} | "
                         + " | ".join(_cell([r['beam']['test'][m] for r in beams]) for m in METRICS) + " |")
    r0 = runs[0]
    first_pre = pres[0] if pres else None
    lines += ["", f"Test: {baselines.get('n_test', '?')} lines of the held-out plays (a fixed draw); mean ± sample "
              f"s.d. over seeds.  Fine-tuning: {r0['ft_steps']} steps of {r0['ft_batch']} lines, lr chosen per row "
              "and seed by the validation loss (train plays' lines); greedy decoding unless marked."]
    if first_pre:
        lines.append(f"Pretraining: {first_pre['steps']} steps, AdamW lr {first_pre['lr']:g} (fixed); "
                     "pretraining loss = mean NLL per target token of the last 5% of steps (each objective "
                     "reconstructs a differently corrupted input, so these losses are not comparable across rows).")
    times = [f"pretraining {np.median([p['sec_per_step'] for p in pres]):.3f} s/step" if pres else None,
             f"fine-tuning {np.nanmedian([g['sec_per_step'] for r in runs for g in r['grid']]):.3f} s/step",
             f"one (row, seed) with its lr grid {np.median([r['seconds'] for r in runs]):.0f} s (median)"]
    lines.append("Times: " + "; ".join(t for t in times if t) + ".")
    ex = next((r for r in runs if r["row"] == "d" and r["seed"] == min(x["seed"] for x in runs)), None)
    if ex and baselines.get("examples"):
        lines += ["", "Examples (first test lines; row (d), lowest seed):", "",
                  "| source | target | rule capitaliser | (d) |", "|---|---|---|---|"]
        for e, p in zip(baselines["examples"][:6], ex["examples"]):
            lines.append(f"| {e['source']} | {e['target']} | {e['rule']} | {p} |".replace("\n", " "))
    (out / "bart_denoising.md").write_text("\n".join(lines) + "\n")
    data = {"summary": summary, "baselines": baselines, "pretraining": pres, "runs": runs}
    (out / "bart_denoising.json").write_text(json.dumps(data))
    plot(summary, baselines, pres, out / "bart_denoising.png")
    print("\n".join(lines))
    return data


def plot(summary: dict, baselines: dict, pres: list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": (1.3, 1, 1)})
    ax = axes[0]
    for noise in NOISE:
        curves = [p["loss"] for p in pres if p["noise"] == noise]
        if not curves:
            continue
        c = np.mean([np.asarray(x[:min(map(len, curves))]) for x in curves], axis=0)
        w = max(len(c) // 50, 1)
        smooth = np.convolve(c, np.ones(w) / w, mode="valid")             # running mean over w steps
        ax.plot(np.arange(len(smooth)) + w // 2, smooth, label=f"{noise} ({len(curves)} seeds)")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("denoising loss (nats / token)")
    ax.set_title("pretraining")
    if pres:
        ax.legend(fontsize=8)
    names = list(baselines.get("rows", {})) + [SHORT[k.replace("_beam", "")] + (", beam" if k.endswith("_beam") else "")
                                               for k in summary]
    panels = ((axes[1], "punct_f1", "punctuation F1 (%)"), (axes[2], "cer", "character error rate (%)"))
    for ax, metric, title in panels:
        means = [100 * baselines["rows"][n][metric] for n in baselines.get("rows", {})]
        errs = [0.0] * len(means)
        means += [100 * float(np.mean(s[metric])) for s in summary.values()]
        errs += [100 * (_sd(s[metric]) if len(s[metric]) > 1 else 0.0) for s in summary.values()]
        y = np.arange(len(names))
        ax.barh(y, means, xerr=errs, color=["grey"] * (len(names) - len(summary)) + ["C0"] * len(summary), capsize=3)
        ax.set_yticks(y)
        ax.set_yticklabels(names if ax is axes[1] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"test: {title}")
        ax.set_xlabel("mean ± s.d. over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- timing --------------------------------------------------------------------------------------
def estimate(data: Data, cfg: dict, n: int = 8):
    """Time n steps of each kind at this size (one-time costs dropped) and print the full run's plan."""
    v = data.vocab
    model = BartForConditionalGeneration(bart_config(cfg, v), generator=Generator(0))
    n_params = model.num_parameters()
    pre = Trainer(model, pretrain_config(cfg, 0, steps=n + 2), denoising_batches(data, cfg, "infilling+permutation", 0),
                  quiet=True).fit()["sec_per_step"]
    m = fresh_model(cfg, data, 0, None, "full")
    ft = Trainer(m, finetune_config(cfg, 0, 1e-3, steps=n + 2),
                 Seq2SeqBatches(*data.train_pairs, batch_size=cfg["ft_batch"], pad_id=v.pad_id, seed=0),
                 quiet=True).fit()["sec_per_step"]
    m = fresh_model(cfg, data, 0, None, "lora")
    lora = Trainer(m, finetune_config(cfg, 0, 1e-3, steps=n + 2),
                          Seq2SeqBatches(*data.train_pairs, batch_size=cfg["ft_batch"], pad_id=v.pad_id, seed=0),
                          quiet=True).fit()["sec_per_step"]
    untrained = BartForConditionalGeneration(bart_config(cfg, v), generator=Generator(1))
    untrained.final_logits_bias.data[0, v.eos_id] = -1e9    # never </s>: every line to max length (upper bound)
    t0 = time.perf_counter()
    decode(untrained, data, data.test_ids[:100])
    dec = (time.perf_counter() - t0) / 100
    n_full = sum(ROWS[r][2] == "full" for r in ROWS)
    per_seed = {"pretraining": len(NOISE) * cfg["pre_steps"] * pre,
                "fine-tuning with the lr grids": (n_full * len(cfg["lrs"]) * ft + len(cfg["lora_lrs"]) * lora)
                * cfg["ft_steps"],
                "decoding (upper bound)": len(ROWS) * (len(data.test_ids) + len(data.val_ids)) * dec
                + (cfg["beam"] * len(data.test_ids) * dec if cfg["beam"] > 1 else 0)}
    total = sum(per_seed.values())
    no_grid = total - per_seed["fine-tuning with the lr grids"] + (n_full * ft + lora) * cfg["ft_steps"]
    print(f"model: {n_params:,} parameters; {pre:.3f} s / pretraining step ({cfg['pre_batch']} documents), "
          f"{ft:.3f} s / fine-tuning step ({cfg['ft_batch']} lines), {lora:.3f} s / LoRA step, "
          f"{1e3 * dec:.1f} ms / greedy line (untrained, to max length)")
    for k, s in per_seed.items():
        print(f"  per seed, {k}: {s / 60:.1f} min")
    k = len(cfg["seeds"])
    print(f"  per seed with the lr grids: {total / 60:.0f} min of one core; with --lr-from (one lr per row): "
          f"{no_grid / 60:.0f} min\n  {k} seeds: {k * total / 3600:.1f} h with the grids on every seed, "
          f"{(total + (k - 1) * no_grid) / 3600:.1f} h with the grids on the first seed only")
    return {"pre_sec_per_step": pre, "ft_sec_per_step": ft, "lora_sec_per_step": lora, "sec_per_line": dec,
            "per_seed_seconds": total, "per_seed_seconds_lr_from": no_grid}


def baselines(out: Path, data: Data) -> dict:
    rule = RuleCapitaliser().fit(data.train_tgt)
    preds = {"copy the input": [copy_baseline(s) for s in data.test_src],
             "rule capitaliser": [rule(s) for s in data.test_src]}
    res = {"rows": {k: restoration_scores(p, data.test_tgt) for k, p in preds.items()}, "n_test": len(data.test_src),
           "rule": repr(rule),
           "examples": [{"source": s, "target": t, "rule": r}
                        for s, t, r in zip(data.test_src[:12], data.test_tgt[:12], preds["rule capitaliser"][:12])]}
    (out / "baselines.json").write_text(json.dumps(res))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, a few steps (the mechanics only)")
    ap.add_argument("--out", default=None, help="default out/bart_denoising[_quick]")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2; quick 0,1)")
    ap.add_argument("--rows", default=None, help=f"comma-separated rows of {list(ROWS)} (default: all)")
    ap.add_argument("--lrs", default=None, help="fine-tuning lr grid for full fine-tuning, e.g. 3e-4,1e-3,3e-3")
    ap.add_argument("--lora-lrs", default=None, help="fine-tuning lr grid for LoRA, e.g. 1e-3,3e-3,1e-2")
    ap.add_argument("--lr-from", type=int, default=None, metavar="SEED",
                    help="no grid: each row takes the lr its run at SEED chose (DIR/run-<row>-SEED.json must exist)")
    ap.add_argument("--pre-steps", type=int, default=None, help="pretraining steps")
    ap.add_argument("--ft-steps", type=int, default=None, help="fine-tuning steps")
    ap.add_argument("--estimate", action="store_true", help="time a few steps at this size, print the plan, stop")
    ap.add_argument("--report", action="store_true", help="only write the table and plot from the runs in --out")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key, val in (("lrs", args.lrs), ("lora_lrs", args.lora_lrs)):
        if val:
            cfg[key] = tuple(float(x) for x in val.split(","))
    if args.seeds:
        cfg["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    cfg.update({k: v for k, v in (("pre_steps", args.pre_steps), ("ft_steps", args.ft_steps)) if v})
    tag = "quick" if args.quick else "full"
    out = Path(args.out or f"out/bart_denoising{'_quick' if args.quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        return report(out, tag)
    t0 = time.perf_counter()
    data = Data(out, cfg)
    print(data.summary(), f"\n(data ready in {time.perf_counter() - t0:.0f} s)", flush=True)
    if args.estimate:
        return estimate(data, cfg)
    base = baselines(out, data)
    for name, s in base["rows"].items():
        print(f"{name}: punct F1 {100 * s['punct_f1']:.1f}%, CER {100 * s['cer']:.1f}%, "
              f"exact {100 * s['exact_match']:.1f}%")
    rows = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    todo = [(r, s) for s in cfg["seeds"] for r in rows]
    for k, (row, seed) in enumerate(todo):
        path = out / f"run-{row}-{seed}.json"
        if path.exists():
            print(f"{path} exists; skipping")
            continue
        lrs = cfg["lora_lrs"] if ROWS[row][2] == "lora" else cfg["lrs"]
        if args.lr_from is not None:
            chosen = out / f"run-{row}-{args.lr_from}.json"
            if not chosen.exists():
                raise SystemExit(f"--lr-from {args.lr_from}: {chosen} is not there yet; run seed {args.lr_from} first")
            lrs = (json.loads(chosen.read_text())["lr"],)
        rec = run_row(row, seed, out, data, cfg, lrs)
        path.write_text(json.dumps(rec))
        t = rec["test"]
        print(f"   {rec['label']}, seed {seed}: lr {rec['lr']:g}, test punct F1 {100 * t['punct_f1']:.1f}%, "
              f"CER {100 * t['cer']:.1f}%, exact {100 * t['exact_match']:.1f}%; {rec['seconds']:.0f} s for this "
              f"(row, seed); {len(todo) - k - 1} left", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return report(out, tag)


if __name__ == "__main__":
    main()
