"""Fine-tuning loops for the downstream tasks (§3.1 step 4) and the measurements the comparison needs.

    base = pretrain_base(text, tokenizer, GPTConfig(...), TrainConfig(...), out_dir)   # §3.1 steps 1–3, cached
    clf = GPTClassifier(base, n_classes=3)
    peft.add(clf, peft.LoRAConfig(r=4, parts=("q", "v")))                             # or Adapter / Prefix / none
    run = train_classifier(clf, X_train, y_train, FinetuneConfig(steps=400))          # AdamW on the trainable params
    accuracy(clf, X_test, y_test)

Everything is seeded: the batches (a NumPy Generator), the new parameters (the
configs' seeds) and the head (a minilm Generator), so two runs give the same numbers.
``peak_memory_mb`` runs a step under tracemalloc, which sees NumPy's allocations.
"""
from __future__ import annotations

import math
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import backend
from .optim import AdamW, clip_grad_norm, param_groups_for_weight_decay, warmup_cosine_scheduler
from .tensor import Tensor, no_grad
from .train import Progress


@dataclass
class FinetuneConfig:
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    device: str = "cpu"

    def to_dict(self):
        return asdict(self)


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


def trainable_parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


def _optimizer(model, config: FinetuneConfig):
    if not trainable_parameters(model):
        raise ValueError("fine-tuning: the model has no trainable parameters")
    opt = AdamW(param_groups_for_weight_decay(model, config.weight_decay), lr=config.lr)
    sched = warmup_cosine_scheduler(opt, config.steps, min(config.warmup, config.steps), config.min_lr_ratio)
    return opt, sched


def _step(model, opt, sched, loss, grad_clip):
    opt.zero_grad()
    loss.backward()
    if grad_clip > 0:
        clip_grad_norm(trainable_parameters(model), grad_clip)
    opt.step()
    sched.step()
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"fine-tuning loss became {value}; lower the learning rate")
    return value


def train_loop(model, config: FinetuneConfig, batch_fn, loss_fn, tokens_per_step: int = 0, stream=None) -> dict:
    """The loop under train_classifier and train_lm, for inputs they do not know (a BERT's segments and
    padding mask, a distiller's teacher): ``config.steps`` times, ``loss = loss_fn(*batch_fn())``, then
    backward, clipping and AdamW with warm-up and cosine decay on the trainable parameters.  Returns
    {"loss": [per step], "sec_per_step": median over the steps after the first two (one-time costs such
    as compiling the attention kernel are not counted)}; ``stream`` shows a progress line."""
    opt, sched = _optimizer(model, config)
    model.train()
    progress = Progress(config.steps, every=config.log_every, stream=stream) if stream else None
    losses, times = [], []
    for step in range(config.steps):
        t0 = time.perf_counter()
        loss = loss_fn(*batch_fn())
        value = _step(model, opt, sched, loss, config.grad_clip)
        times.append(time.perf_counter() - t0)
        losses.append(value)
        if progress:
            progress.update(step, value, tokens_per_step, opt.param_groups[0]["lr"])
    model.eval()
    steady = times[2:] or times
    return {"loss": losses, "sec_per_step": float(np.median(steady))}


# ---- classification -------------------------------------------------------------------------------
def train_classifier(clf, X, y, config: FinetuneConfig, stream=None) -> dict:
    """Minimise CE(y, softmax(head(pool(H)))) over the trainable parameters on random minibatches."""
    X, y = np.asarray(X), np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"train_classifier: X must be (N, T) and y (N,), got {X.shape} and {y.shape}")
    rng = np.random.default_rng(config.seed)
    dev = config.device

    def batch():
        i = rng.integers(0, len(X), size=config.batch_size)
        return Tensor(backend.to_device(X[i], dev)), Tensor(backend.to_device(y[i], dev))

    return train_loop(clf, config, batch, lambda xb, yb: clf(xb, yb)[1], config.batch_size * X.shape[1], stream)


@no_grad()
def predict(clf, X, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    clf.eval()
    out = []
    for s in range(0, len(X), batch_size):
        logits, _ = clf(Tensor(backend.to_device(np.asarray(X[s:s + batch_size]), device)))
        out.append(backend.to_numpy(logits.data).argmax(axis=-1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(clf, X, y, batch_size: int = 64, device: str = "cpu") -> float:
    return float((predict(clf, X, batch_size, device) == np.asarray(y)).mean())


# ---- language modelling ---------------------------------------------------------------------------
def train_lm(model, ids, config: FinetuneConfig, stream=None) -> dict:
    """Minimise the mean NLL (G4) of random blocks of ``ids`` over the trainable parameters."""
    from .data.batches import RandomBatches
    T = model.config.block_size if hasattr(model, "config") else model.gpt.config.block_size
    batches = RandomBatches(np.asarray(ids), T, config.batch_size, seed=config.seed)
    dev = config.device

    def batch():
        x, y = batches()
        return Tensor(backend.to_device(x, dev)), Tensor(backend.to_device(y, dev))

    return train_loop(model, config, batch, lambda xb, yb: model(xb, yb)[1], config.batch_size * T, stream)


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
        _, loss = model(Tensor(backend.to_device(x, device)), Tensor(backend.to_device(y, device)))
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


def train_step_fn(model, X, y, config: FinetuneConfig):
    """A function that runs one training step (forward, backward, AdamW) on the first batch of X."""
    opt, _ = _optimizer(model, config)
    xb = Tensor(backend.to_device(np.asarray(X[:config.batch_size]), config.device))
    yb = None if y is None else Tensor(backend.to_device(np.asarray(y[:config.batch_size]), config.device))

    def step():
        model.train()
        _, loss = model(xb, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
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
    from .train import Trainer

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
    Trainer(model, train_ids, val_ids, train_config, out_dir, tokenizer=tokenizer, stream=stream).fit()
    ckpt = load_checkpoint(out_dir / "best")
    ckpt.load_into(model)
    stamp.write_text(json.dumps(key))
    return model.eval()
