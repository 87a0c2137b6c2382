"""Fine-tuning (§3.1 step 4) on the one Trainer, and the measurements the comparisons need.

    base = pretrain_base(text, tokenizer, GPTConfig(...), TrainConfig(...), out_dir)   # §3.1 steps 1–3, cached
    clf = GPTClassifier(base, n_classes=3)            # or BertClassifier(Bert.from_pretrained(), 3)
    peft.add(clf, peft.LoRAConfig(r=4))                # or Adapter / Prefix / none
    train_classifier(clf, X_train, y_train, finetune_config(max_steps=400))
    accuracy(clf, X_test, y_test)

``X`` is (N, T) token ids; extra per-example inputs (``attention_mask``,
``token_type_ids``, each (N, T)) are passed by name to train_classifier, predict and
accuracy and reach the model with its batch, so GPT and BERT classifiers go through
the same helpers.  Everything is seeded: the batches (a NumPy Generator), the new
parameters (the configs' seeds) and the head (a minilm Generator), so two runs give
the same numbers.  ``peak_memory_mb`` runs a step under tracemalloc, which sees
NumPy's allocations.
"""
from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np

from . import backend
from .data.batches import RandomBatches
from .tensor import Tensor, no_grad
from .train import TrainConfig, Trainer, finetune_config, lm_trainer, to_tensors

__all__ = ["TrainConfig", "finetune_config", "encode_passages", "train_classifier", "predict", "accuracy",
           "train_lm", "lm_loss", "peak_memory_mb", "train_step_fn", "pretrain_base"]


def encode_passages(texts, tokenizer, length: int) -> np.ndarray:
    """(N, length) int64 token ids; a passage whose encoding is not exactly ``length`` ids is an error
    (with a character tokenizer, a passage of ``length`` characters always is)."""
    rows = []
    for i, t in enumerate(texts):
        ids = tokenizer.encode(t)
        if len(ids) != length:
            raise ValueError(f"passage {i} encodes to {len(ids)} tokens, expected {length}: {t[:40]!r}…")
        rows.append(ids)
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), length)


def _inputs(X, extra: dict, who: str) -> dict:
    """{"input_ids": X, **extra} as arrays, each with X's N rows."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{who}: X must be (N, T) token ids, got shape {X.shape}")
    inputs = {"input_ids": X}
    for name, a in extra.items():
        if a is None:
            continue
        a = np.asarray(a)
        if len(a) != len(X):
            raise ValueError(f"{who}: {name} has {len(a)} rows, X has {len(X)}")
        inputs[name] = a
    return inputs


class ExampleBatches:
    """Random minibatches of whole examples: ``batches()`` → {name: array[i]} for i drawn with
    replacement from a seeded NumPy Generator; state_dict/load_state_dict for exact resume."""

    def __init__(self, arrays: dict, batch_size: int, seed: int = 0):
        self.arrays, self.batch_size = arrays, batch_size
        self.n = len(next(iter(arrays.values())))
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> dict:
        i = self.rng.integers(0, self.n, size=self.batch_size)
        return {k: v[i] for k, v in self.arrays.items()}

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


# ---- classification -------------------------------------------------------------------------------
def train_classifier(clf, X, y, config: TrainConfig, stream=None, **extra) -> dict:
    """Minimise CE(y, softmax(head(pool(H)))) over the trainable parameters on random minibatches;
    ``extra``: per-example model inputs (attention_mask, token_type_ids).  Returns the Trainer's result."""
    inputs = _inputs(X, extra, "train_classifier")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (len(inputs["input_ids"]),):
        raise ValueError(f"train_classifier: X must be (N, T) and y (N,), got {inputs['input_ids'].shape} "
                         f"and {y.shape}")
    batches = ExampleBatches({**inputs, "labels": y}, config.batch_size, seed=config.seed)
    return Trainer(clf, config, batches, stream=stream, quiet=stream is None).fit()


@no_grad()
def predict(clf, X, batch_size: int = 64, device: str = "cpu", **extra) -> np.ndarray:
    """The argmax class of each row of X (eval mode, no graph)."""
    clf.eval()
    inputs = _inputs(X, extra, "predict")
    out = []
    for s in range(0, len(inputs["input_ids"]), batch_size):
        logits = clf(**to_tensors({k: v[s:s + batch_size] for k, v in inputs.items()}, device)).logits
        out.append(backend.to_numpy(logits.data).argmax(axis=-1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(clf, X, y, batch_size: int = 64, device: str = "cpu", **extra) -> float:
    return float((predict(clf, X, batch_size, device, **extra) == np.asarray(y)).mean())


# ---- language modelling ---------------------------------------------------------------------------
def train_lm(model, ids, config: TrainConfig, stream=None) -> dict:
    """Minimise the mean NLL (G4) of random blocks of ``ids`` over the trainable parameters."""
    batches = RandomBatches(np.asarray(ids), model.config.block_size, config.batch_size, seed=config.seed)
    return Trainer(model, config, batches, stream=stream, quiet=stream is None).fit()


@no_grad()
def lm_loss(model, ids, batch_size: int = 16, max_blocks: int | None = None, device: str = "cpu") -> float:
    """Mean NLL (nats/token) over consecutive non-overlapping blocks of ``ids``: deterministic."""
    model.eval()
    T = model.config.block_size
    ids = np.asarray(ids, dtype=np.int64)
    n = (len(ids) - 1) // T
    if max_blocks:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"lm_loss: {len(ids)} ids are fewer than one block of {T} + 1")
    starts = np.arange(n) * T
    total, count = 0.0, 0
    for s in range(0, n, batch_size):
        st = starts[s:s + batch_size]
        x = ids[st[:, None] + np.arange(T)]                      # (b, T)
        y = ids[st[:, None] + np.arange(1, T + 1)]               # (b, T), x shifted by one
        loss = model(**to_tensors((x, y), device)).loss
        total += loss.item() * x.size
        count += x.size
    return total / count


# ---- measurements ---------------------------------------------------------------------------------
def peak_memory_mb(fn, repeats: int = 2) -> float:
    """Peak bytes allocated (Python objects and NumPy arrays) while ``fn()`` runs, in MB;
    the most of ``repeats`` runs after one warm-up run (caches and compiled kernels excluded)."""
    fn()
    peaks = []
    for _ in range(repeats):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            fn()
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        finally:
            tracemalloc.stop()
    return max(peaks) / 2 ** 20


def train_step_fn(model, X, y, config: TrainConfig, **extra):
    """A function that runs one training step (the Trainer's: forward, backward, clip, AdamW) on
    the first batch of X (and y, or next-token labels when y is None and the model is an LM)."""
    n = config.batch_size
    batch = {k: v[:n] for k, v in _inputs(X, extra, "train_step_fn").items()}
    if y is not None:
        batch["labels"] = np.asarray(y)[:n]
    trainer = Trainer(model, config, batches=None, quiet=True)

    def step():
        model.train()
        trainer.train_step(batch)
        model.eval()
    return step


# ---- the base model ---------------------------------------------------------------------------------
def pretrain_base(text: str, tokenizer, model_config, train_config, out_dir, stream=None):
    """A GPT pretrained on ``text`` (90/10 split, §3.1 steps 1–3), read back from
    ``out_dir/best`` if a run with the same configs is already there."""
    import json
    from .checkpoint import load_checkpoint
    from .data.corpus import train_val_split
    from .models import GPT
    from .tensor import Generator, manual_seed

    out_dir = Path(out_dir)
    stream = stream or sys.stdout
    key = {"model": model_config.to_dict(), "train": train_config.to_dict(), "chars": len(text),
           "vocab": tokenizer.vocab_size}
    stamp = out_dir / "base.json"
    if (out_dir / "best").exists() and stamp.exists() and json.loads(stamp.read_text()) == key:
        ckpt = load_checkpoint(out_dir / "best")
        model = GPT(model_config)
        ckpt.load_into(model)
        print(f"pretrained base: read {out_dir / 'best'} (val loss {ckpt.extra['train']['best_val']:.4f})",
              file=stream, flush=True)
        return model.eval()
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids, 0.1)
    manual_seed(train_config.seed)
    model = GPT(model_config, generator=Generator(train_config.seed))
    print(f"pretraining the base GPT on {len(text):,} characters ({model.num_parameters():,} parameters)",
          file=stream, flush=True)
    lm_trainer(model, train_ids, val_ids, train_config, out_dir, tokenizer=tokenizer, stream=stream).fit()
    ckpt = load_checkpoint(out_dir / "best")
    ckpt.load_into(model)
    stamp.write_text(json.dumps(key))
    return model.eval()
