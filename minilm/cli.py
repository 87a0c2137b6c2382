"""The ``minilm`` command (also ``python -m minilm``).

    minilm pretrain                      train a character-level GPT on Shakespeare
    minilm generate --checkpoint DIR --prompt TEXT
    minilm info CHECKPOINT
    minilm demo                          a two-layer MLP, the engine on its own
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys


MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")   # GPTConfig fields the CLI sets


def _add_fields(group, cls, names=None, help=None):
    """One flag per dataclass field (``--max-steps`` for max_steps), typed and defaulted by the
    field itself, so the CLI and the config cannot drift apart."""
    default = cls()
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        value = getattr(default, f.name)
        kind = type(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else str
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=value,
                           help=(help or {}).get(f.name, " "))


def _pretrain_args(p):
    from .models import GPTConfig
    from .train import TrainConfig
    p.add_argument("--corpus", metavar="PATH", help="train on this UTF-8 text file instead of Shakespeare")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (default 2048)")
    p.add_argument("--out", default=None, help="output folder (default out/shakespeare-<tokenizer>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    _add_fields(p.add_argument_group("model (nanoGPT's CPU Shakespeare recipe by default)"), GPTConfig, MODEL_FLAGS)
    _add_fields(p.add_argument_group("training (minilm.train.TrainConfig)"), TrainConfig, help=TrainConfig.HELP)
    p.add_argument("--sample-tokens", type=int, default=300, help="tokens to sample at the end (0: none)")


def _pretrain(a):
    from .pretrain import pretrain
    from .train import TrainConfig
    model = {name: getattr(a, name) for name in MODEL_FLAGS}
    train = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)}
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
