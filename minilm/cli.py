"""The ``minilm`` command (also ``python -m minilm``).

    minilm pretrain                      train a character-level GPT on Shakespeare
    minilm generate --checkpoint DIR --prompt TEXT
    minilm info CHECKPOINT
    minilm demo                          a two-layer MLP, the engine on its own
"""
from __future__ import annotations

import argparse
import json
import sys


def _pretrain_args(p):
    from .train import TrainConfig
    d = TrainConfig()
    p.add_argument("--corpus", metavar="PATH", help="train on this UTF-8 text file instead of Shakespeare")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (default 2048)")
    p.add_argument("--out", default=None, help="output folder (default out/shakespeare-<tokenizer>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    g = p.add_argument_group("model (nanoGPT's CPU Shakespeare recipe by default)")
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--block-size", type=int, default=64)
    g.add_argument("--dropout", type=float, default=0.0)
    t = p.add_argument_group("training")
    t.add_argument("--max-iters", type=int, default=d.max_iters)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.learning_rate, help="peak learning rate")
    t.add_argument("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine")
    t.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument("--eval-interval", type=int, default=d.eval_interval)
    t.add_argument("--eval-iters", type=int, default=d.eval_iters)
    t.add_argument("--patience", type=int, default=d.patience, help="evals without improvement before stopping (0: never)")
    t.add_argument("--log-interval", type=int, default=d.log_interval)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default="cpu", help="cpu, cuda or strict")
    p.add_argument("--sample-tokens", type=int, default=300, help="tokens to sample at the end (0: none)")


def _pretrain(a):
    from .pretrain import pretrain
    model = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=a.block_size, dropout=a.dropout)
    train = dict(max_iters=a.max_iters, batch_size=a.batch_size, learning_rate=a.lr, min_lr=a.min_lr,
                 warmup_iters=a.warmup_iters, weight_decay=a.weight_decay, grad_clip=a.grad_clip,
                 eval_interval=a.eval_interval, eval_iters=a.eval_iters, patience=a.patience,
                 log_interval=a.log_interval, seed=a.seed, device=a.device)
    pretrain(corpus=a.corpus, tokenizer=a.tokenizer, vocab_size=a.vocab_size,
             out_dir=a.out or f"out/shakespeare-{a.tokenizer}", model=model, train=train, resume=a.resume,
             sample_tokens=a.sample_tokens)


def _generate(a):
    from .pretrain import load_from_checkpoint, sample_text
    model, tok, _ = load_from_checkpoint(a.checkpoint, device=a.device)
    if tok is None:
        raise SystemExit(f"{a.checkpoint} holds no tokenizer; it cannot turn a prompt into ids")
    prompt = a.prompt.encode().decode("unicode_escape") if a.escapes else a.prompt
    print(sample_text(model, tok, prompt, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                      top_p=a.top_p, greedy=a.greedy, seed=a.seed))


def _info(a):
    from .checkpoint import load_checkpoint
    ckpt = load_checkpoint(a.checkpoint)
    n = sum(int(v.size) for v in ckpt.state.values())
    print(f"checkpoint {a.checkpoint}: {ckpt.meta['model_class']}, step {ckpt.step}, {n:,} parameters, "
          f"optimizer state {'yes' if ckpt.optimizer_state is not None else 'no'}")
    print("config: " + json.dumps(ckpt.config))
    if ckpt.tokenizer_dict:
        t = ckpt.tokenizer_dict
        print(f"tokenizer: {t.get('type')}")
    train = (ckpt.extra or {}).get("train")
    if train and train["history"]["eval"]:
        s, tr, va = train["history"]["eval"][-1]
        print(f"last evaluation at step {s}: train {tr:.4f}, val {va:.4f}; best val {train['best_val']}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minilm", description="minilm: pretrain and fine-tune small language models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a GPT (§3.1): Shakespeare, character level, by default",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _pretrain_args(p)

    g = sub.add_parser("generate", help="sample text from a checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--checkpoint", required=True, help="a checkpoint folder, e.g. out/shakespeare-char/best")
    g.add_argument("--prompt", default="\n")
    g.add_argument("--escapes", action="store_true", help="interpret \\n and friends in --prompt")
    g.add_argument("--max-new-tokens", type=int, default=300)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint")

    d = sub.add_parser("demo", help="train a small MLP with minilm's autograd and print its loss")
    d.add_argument("--steps", type=int, default=300)
    d.add_argument("--device", default="cpu", help="cpu, cuda or strict")
    d.add_argument("--seed", type=int, default=0)

    a = parser.parse_args(argv)
    if a.command == "pretrain":
        _pretrain(a)
    elif a.command == "generate":
        _generate(a)
    elif a.command == "info":
        _info(a)
    elif a.command == "demo":
        from .demo import run
        run(steps=a.steps, device=a.device, seed=a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
