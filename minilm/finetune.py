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
from .tensor import no_grad
from .train import TrainConfig, Trainer, finetune_config, lm_trainer, to_tensors

__all__ = ["TrainConfig", "finetune_config", "encode_passages", "train_classifier", "predict", "accuracy",
           "train_lm", "lm_loss", "peak_memory_mb", "train_step_fn", "pretrain_base", "distill_lm",
           "finetune_pruned", "iterative_prune"]


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
    if stamp.exists():
        stamp.unlink()                      # until the new base is trained, no stamp vouches for best/
    # a cache: a base of other configs (or an interrupted run) in out_dir is replaced on purpose
    lm_trainer(model, train_ids, val_ids, train_config, out_dir, tokenizer=tokenizer, stream=stream,
               overwrite=True).fit()
    ckpt = load_checkpoint(out_dir / "best")
    ckpt.load_into(model)
    stamp.write_text(json.dumps(key))
    return model.eval()


# ---- distilling a language model ---------------------------------------------------------------
def distill_lm(distiller, train_ids, config: TrainConfig, stream=None) -> dict:
    """Distil a causal LM on random blocks of ``train_ids`` (y = x shifted) on the one Trainer with
    the Distiller (minilm.distill, K1) as its loss function: pretraining's optimizer and schedule
    from ``config``, so a distilled student and one trained from scratch differ only in the loss.
    Returns {"loss", "ce", "kl"}: per-step lists."""
    student = distiller.student
    T = student.base_model.config.block_size
    batches = RandomBatches(np.asarray(train_ids), T, config.batch_size, seed=config.seed)
    trainer = Trainer(student, config, batches,
                      loss_fn=lambda model, batch: distiller.loss(batch["input_ids"], batch["labels"]),
                      stream=stream)
    result = trainer.fit()
    return {"loss": result["loss"], "ce": trainer.history["ce"], "kl": trainer.history["kl"]}


# ---- recovering a pruned model ------------------------------------------------------------------
# Pruning itself (minilm.prune) trains nothing; what follows is the training that wins back part of
# what it cost: a short fine-tune of every parameter or of a merged-back LoRA, and pruning in rounds.
import dataclasses  # noqa: E402

from . import peft  # noqa: E402
from . import prune  # noqa: E402
from .nn import Linear  # noqa: E402
from .peft.masked_lora import MaskedLoRALinear  # noqa: E402
from .tensor import Generator  # noqa: E402

__all__ += ["finetune_pruned", "iterative_prune"]


def _check_method(method, who):
    if method not in ("full", "lora"):
        raise ValueError(f"{who}: method must be 'full' or 'lora', got {method!r}")


def _recovery_config(method, steps, batch_size, full_lr, lora_lr, warmup_steps, log_interval) -> TrainConfig:
    """finetune_config with the recovery run's steps, batch and rate (full_lr or lora_lr by ``method``)."""
    lr = full_lr if method == "full" else lora_lr
    return finetune_config(max_steps=steps, batch_size=batch_size, learning_rate=lr, warmup_steps=warmup_steps,
                           log_interval=log_interval)


def _set_module(model, name: str, module):
    *path, attr = name.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, attr, module)


def finetune_pruned(model, ids, method: str = "full", *, steps: int = 100, batch_size: int = 8,
                    full_lr: float = 5e-4, lora_lr: float = 2e-3, warmup_steps: int = 10,
                    config: TrainConfig | None = None, lora=None, stream=None):
    """Recovery fine-tuning of a pruned model's body (``model.base_model``, a causal LM) on random
    blocks of ``ids`` (:func:`train_lm`: the mean NLL, G4); returns train_lm's result (None for 0 steps).

      "full": every parameter trains; masked entries stay zero (their gradient is M ⊙ … = 0).
      "lora": ``lora`` (a peft.LoRAConfig; default r=8, α=16 on c_attn, c_proj, c_fc, whole matrices,
              seed = the run's seed) is added, trained and merged back (peft.merge_and_unload), so the
              result is a plain pruned model again.  A masked layer gets a MaskedLoRALinear (its update
              ⊙ M), is made permanent for the run and re-wrapped in PrunedLinear with the same mask
              afterwards; the merged weight is then exactly the trained one, and re-masking changes nothing.

    The run: ``finetune_config(max_steps=steps, batch_size=batch_size, learning_rate=full_lr ("full") or
    lora_lr ("lora"), warmup_steps=warmup_steps)`` — 100 steps of 8 at 5e-4 (full) or 2e-3 (LoRA, whose
    new parameters start at zero and are few) with 10 warm-up steps; ``config`` (a TrainConfig) replaces
    all of these.
    """
    _check_method(method, "finetune_pruned")
    if config is None and steps <= 0:
        return None
    fc = config or _recovery_config(method, steps, batch_size, full_lr, lora_lr, warmup_steps, 50)
    body = model.base_model
    lora_cfg = lora or peft.LoRAConfig(r=8, alpha=16, target_modules=prune.DEFAULT_TARGETS, seed=fc.seed)
    if method == "full":
        for p in body.parameters():
            p.requires_grad = True
        return train_lm(body, ids, fc, stream=stream)
    masks = {n: m.weight_mask.data for n, m in prune.pruned_layers(body)}
    prune.make_permanent(body)
    names = [n for n, m in prune.linear_layers(body, lora_cfg.target_modules, kinds=(Linear,), what="finetune_pruned")
             if m.weight.numel() > 0]                     # a zero-width matrix (every head pruned) has nothing to adapt
    cfg = dataclasses.replace(lora_cfg, target_modules=tuple(names), parts=None)
    if masks:
        gen = Generator(cfg.seed)
        modules = dict(body.named_modules())
        for n in names:
            if n in masks:
                _set_module(body, n, MaskedLoRALinear(modules[n], masks[n], cfg.r, cfg.alpha, cfg.dropout,
                                                      cfg.init, gen))
        plain = tuple(n for n in names if n not in masks)
        if plain:
            peft.add(body, dataclasses.replace(cfg, target_modules=plain))
        else:
            peft.freeze_base(body)
    else:
        peft.add(body, cfg)
    res = train_lm(body, ids, fc, stream=stream)
    peft.merge_and_unload(body)
    if masks:
        prune.attach_masks(body, [f"{n}.weight_mask" for n in masks])
        for n, m in prune.pruned_layers(body):
            m.weight_mask.data = masks[n]
            m.weight_orig.data = m.weight_orig.data * masks[n]   # re-mask (already exact zeros there)
    return res


def iterative_prune(model, ids, final_sparsity: float, steps: int, finetune_steps: int, method: str = "full",
                    kind: str = "unstructured", score: str = "grad", *, full_lr: float = 5e-4,
                    lora_lr: float = 2e-3, warmup_steps: int | None = None, config: TrainConfig | None = None,
                    lora=None, val_ids=None, score_batches: int = 4, batch_size: int = 8, min_per_layer: int = 1,
                    max_val_blocks=None, seed: int = 0, stream=None) -> list:
    """Prune → fine-tune, ``steps`` times, to ``final_sparsity`` (Zhu & Gupta's gradual pruning, linear schedule).

    Round i = 1 … steps prunes up to s_i = final_sparsity · i / steps, of
      "unstructured": the targeted weights' entries (global magnitude pruning, prune.magnitude_prune);
      "heads":        the unpruned model's n_layer·n_head heads   (lowest ``score`` first);
      "neurons":      the unpruned model's n_layer·4·n_embd MLP neurons;
    then fine-tunes ``finetune_steps`` steps on random blocks of ``ids`` (:func:`finetune_pruned`):
      "full": every parameter (masked entries stay zero: their gradient is zero);
      "lora": a LoRA (``lora``, a peft.LoRAConfig; default r=8 on c_attn, c_proj, c_fc) merged into the
              weights after each round; on masked layers its update is masked as well.
    Each round's run: ``finetune_config(batch_size=batch_size, learning_rate=full_lr (5e-4) or lora_lr
    (2e-3), warmup_steps=warmup_steps (default min(10, finetune_steps)))`` with max_steps=finetune_steps and
    seed = seed + i; ``config`` (a TrainConfig) replaces the first three (max_steps and seed are still set).
    ``score``: "grad" (|w·∂L/∂w| on ``score_batches`` random batches of ``ids``) or "norm".
    Returns one dict per round (sparsity reached, last training losses, val loss if ``val_ids``).
    """
    if kind not in ("unstructured", "heads", "neurons"):
        raise ValueError(f"iterative_prune: kind must be 'unstructured', 'heads' or 'neurons', got {kind!r}")
    _check_method(method, "iterative_prune")
    if not 0.0 <= final_sparsity <= 1.0 or steps < 1:
        raise ValueError(f"iterative_prune: need 0 ≤ final_sparsity ≤ 1 and steps ≥ 1, "
                         f"got {final_sparsity}, {steps}")
    base_fc = config or _recovery_config(method, max(1, finetune_steps), batch_size, full_lr, lora_lr,
                                         min(10, finetune_steps) if warmup_steps is None else warmup_steps,
                                         max(1, finetune_steps // 2))
    body = model.base_model
    c = body.config
    ids = np.asarray(ids, dtype=np.int64)
    lora = lora or peft.LoRAConfig(r=8, alpha=16, target_modules=prune.DEFAULT_TARGETS, seed=seed)
    history = []
    for i in range(1, steps + 1):
        target = final_sparsity * i / steps
        if kind == "unstructured":
            prune.magnitude_prune(body, target, "global")
            reached = prune.sparsity(body)["total"]
        else:
            heads = kind == "heads"
            orig = c.n_layer * (c.n_head if heads else 4 * c.n_embd)
            now = sum(prune.structure(body)["heads" if heads else "mlp"])
            n = int(round(target * orig)) - (orig - now)
            if n > 0:
                batches = None
                if score == "grad":
                    rb = RandomBatches(ids, c.block_size, batch_size, seed=seed + 1000 * i)
                    batches = [rb() for _ in range(score_batches)]
                if heads:
                    prune.prune_heads_by_score(body, n, prune.head_importance(body, score, batches), min_per_layer)
                else:
                    prune.prune_neurons_by_score(body, n, prune.neuron_importance(body, score, batches), min_per_layer)
            st = prune.structure(body)
            reached = st["heads_removed" if heads else "neurons_removed"]
        row = {"round": i, "target": target, "sparsity": reached}
        if val_ids is not None:
            row["val_loss_pruned"] = lm_loss(body, val_ids, max_blocks=max_val_blocks)
        res = None
        if finetune_steps > 0:
            fc = dataclasses.replace(base_fc, max_steps=finetune_steps, seed=seed + i)
            res = finetune_pruned(body, ids, method, config=fc, lora=lora, stream=stream)
        if res is not None:
            row["train_loss"] = float(np.mean(res["loss"][-10:]))
        if val_ids is not None:
            row["val_loss"] = lm_loss(body, val_ids, max_blocks=max_val_blocks)
        print(f"iterative_prune [{kind}, {method}] round {i}/{steps}: sparsity {reached:.3f}"
              + (f", val loss {row['val_loss_pruned']:.4f} → {row['val_loss']:.4f} after fine-tuning"
                 if val_ids is not None else ""), file=stream or sys.stdout, flush=True)
        history.append(row)
    body.eval()
    return history
