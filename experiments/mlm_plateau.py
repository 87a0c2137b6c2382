#!/usr/bin/env python
"""Is the masked LM's plateau ours or the objective's?  One character-level MLM, minilm's or Hugging Face's.

    python experiments/mlm_plateau.py --impl minilm --batch 8 --block 128 --lr 3e-3 --steps 1500
    python experiments/mlm_plateau.py --impl hf     --batch 8 --block 128 --lr 3e-3 --steps 1500

Trains a post-LN BERT masked LM of 4 layers × 128 (4 heads, MLP 512, no dropout)
from scratch on the genre task's training plays, as ``bert_encoder.py``'s part 4
does: the same character tokenizer, the same random blocks (``RandomBatches``,
seed 0), the same masks (``mask_tokens``: 15%, 80/10/10, seed 1), AdamW (β =
0.9, 0.99; weight decay 0.1 on matrices and embeddings), 100 warm-up steps then
cosine decay to 10%, gradient clipping at 1.0: the steps of minilm's Trainer.
``--impl hf`` builds ``transformers.BertForMaskedLM`` with the same sizes
instead (its own initialisation, std 0.02 as minilm's) and trains it with
torch's AdamW and the same schedule written out (the Trainer drives minilm
models only); everything else is identical.  Every 250 steps it prints the loss on a fixed set of masked validation blocks (the last
10% of the text) and, at the end, the unigram entropy of the characters: the
loss of a model that ignores the context.

On this 2-core machine (one thread), with 8 blocks of 128 and lr 3e-3, both
implementations sat on the plateau for 1,500 steps: minilm val 3.075, Hugging
Face 3.073 (unigram entropy 3.3), about 4 minutes each.  With ``--batch 32
--block 64`` minilm's leaves it after about 500 steps (``bert_encoder.py``).
"""
from __future__ import annotations

import sys  # noqa: I001
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402  first after the path: limits threads before NumPy is imported

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minilm.data import load_shakespeare  # noqa: E402
from minilm.data.batches import RandomBatches  # noqa: E402
from minilm.data.corpus import train_val_split  # noqa: E402
from minilm.data.genre import pretraining_text, split_plays  # noqa: E402
from minilm.data.mlm import mask_tokens  # noqa: E402
from minilm.models.bert import BertConfig, BertForMaskedLM  # noqa: E402
from minilm.tensor import Generator, Tensor, no_grad  # noqa: E402
from minilm.tokenizers import CharTokenizer  # noqa: E402
from minilm.train import TrainConfig, Trainer  # noqa: E402

_common.limit_loaded_threads()
SIZE = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)


def minilm_model(V, T, lr, steps, warmup):
    """(loss of (inputs, labels), one optimiser step) for minilm's BERT: the Trainer's step."""
    m = BertForMaskedLM(BertConfig(vocab_size=V + 1, max_position_embeddings=T, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, pad_token_id=None, add_pooling_layer=False,
                                   **SIZE), generator=Generator(0))
    config = TrainConfig(max_steps=steps, learning_rate=lr, min_lr_ratio=0.1, warmup_steps=warmup, weight_decay=0.1,
                         beta2=0.99, grad_clip=1.0)
    trainer = Trainer(m, config, batches=None, quiet=True)      # the batches come from main()'s loop

    def val(inputs, labels):
        with no_grad():
            m.eval()
            return float(m(Tensor(inputs), labels=Tensor(labels)).loss.item())

    def step(inputs, labels):
        m.train()
        return trainer.train_step({"input_ids": inputs, "labels": labels})
    return val, step


def hf_model(V, T, lr, steps, warmup):
    """The same for transformers' BertForMaskedLM (torch, one thread)."""
    import torch
    from transformers import BertConfig as HFConfig
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    torch.manual_seed(0)
    m = HFBertForMaskedLM(HFConfig(vocab_size=V + 1, max_position_embeddings=T, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, type_vocab_size=2, **SIZE))
    decay = [p for p in m.parameters() if p.dim() >= 2]                 # as param_groups_for_weight_decay
    rest = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))

    def factor(s):                                                      # warm-up, then cosine to 10%
        if s < warmup:
            return (s + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def val(inputs, labels):
        m.eval()
        with torch.no_grad():
            return float(m(input_ids=torch.from_numpy(inputs), labels=torch.from_numpy(labels)).loss)

    def step(inputs, labels):
        m.train()
        loss = m(input_ids=torch.from_numpy(inputs), labels=torch.from_numpy(labels)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        sched.step()
        return float(loss.detach())
    return val, step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=("minilm", "hf"), default="minilm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--warmup", type=int, default=100)
    a = ap.parse_args(argv)

    corpus = load_shakespeare()
    tok = CharTokenizer.train(corpus.text)
    V, T = tok.vocab_size, a.block
    ids = np.asarray(tok.encode(pretraining_text(corpus, split_plays(corpus, 3, 0))), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids, 0.1)
    n_val = 8192 // T                                                   # 8,192 validation characters
    val_x = val_ids[np.arange(n_val)[:, None] * T + np.arange(T)]       # (n_val, T)
    val_in, val_lab = mask_tokens(val_x, V + 1, V, special_ids=(), rng=1000)
    val, step = (minilm_model if a.impl == "minilm" else hf_model)(V, T, a.lr, a.steps, a.warmup)
    batches = RandomBatches(train_ids, T, a.batch, seed=0)
    mask_rng = np.random.default_rng(1)
    p = np.bincount(train_ids, minlength=V) / len(train_ids)
    print(f"{a.impl}: {a.steps} steps of {a.batch} × {T} characters, lr {a.lr:g}; unigram entropy "
          f"{-(p[p > 0] * np.log(p[p > 0])).sum():.3f} nats, ln V {math.log(V):.3f}", flush=True)
    t0 = time.perf_counter()
    for s in range(a.steps + 1):
        if s % 250 == 0 or s == a.steps:
            print(f"step {s:>5}: val {val(val_in, val_lab):.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if s == a.steps:
            break
        x, _ = batches()
        step(*mask_tokens(x, V + 1, V, special_ids=(), rng=mask_rng))


if __name__ == "__main__":
    main()
