"""The ``minilm`` command."""
from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minilm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small MLP with minilm's autograd and print its loss")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--device", default="cpu", help="cpu, cuda or strict")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run
        run(steps=args.steps, device=args.device, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
