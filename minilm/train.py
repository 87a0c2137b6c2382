"""The one training loop: pretraining (§3.1 step 3), fine-tuning (step 4), distillation, recovery.

    trainer = Trainer(model, config, batches, loss_fn=None, evaluate=None, out_dir=None)
    result = trainer.fit()

Every step: ``batch = batches()`` → ``loss = loss_fn(model, batch)`` (default
``model(**batch).loss``, e.g. the mean NLL of G4) → zero_grad → backward → clip → AdamW
→ schedule → a non-finite loss stops the run with an error that names the step.  The
Trainer owns the optimizer (AdamW over the trainable parameters, weight decay on matrices
only), the warm-up + cosine schedule, clipping, periodic evaluation, best/last
checkpoints, early stopping, exact resume, the progress line and the loss-curve plot.
What differs between uses is passed in:

    batches    a callable returning one batch: a dict of the model's keyword arguments
               (NumPy arrays; moved to ``config.device``), or an (input_ids, labels) pair;
               with state_dict()/load_state_dict() it resumes exactly (RandomBatches has them)
    loss_fn    (model, batch) → loss, or (loss, {name: float}) to record parts of it
               (a distiller's teacher lives inside such a function)
    evaluate   (model) → {"val": …, …}, run under no_grad in eval mode every eval_interval
               steps; the best "val" is kept (``lm_evaluator`` estimates train/val LM loss)

A resumed run restores model, optimizer, schedule, batch sampler, RNG and step, so it
continues with exactly the losses the uninterrupted run would have had.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .configs import check_fields, config_from_dict
from .data.batches import RandomBatches
from .optim import AdamW, clip_grad_norm, param_groups_for_weight_decay, warmup_cosine_scheduler
from .tensor import Tensor, no_grad


@dataclass
class TrainConfig:
    """One set of names for every run.  Defaults: nanoGPT's CPU recipe for character-level
    Shakespeare (``finetune_config`` gives fine-tuning's)."""
    max_steps: int = 2000
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1       # cosine decay ends at learning_rate · min_lr_ratio at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.1       # on matrices only (param_groups_for_weight_decay)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0          # 0 turns clipping off
    eval_interval: int = 250        # 0: evaluate only at the end (if an evaluator is given)
    eval_iters: int = 20            # batches per loss estimate (lm_evaluator)
    patience: int = 0               # stop after this many evals without a better val loss (0: never)
    log_interval: int = 10
    seed: int = 1337
    device: str = "cpu"

    HELP = {"max_steps": "optimizer steps", "min_lr_ratio": "final lr / peak lr of the cosine schedule",
            "warmup_steps": "linear warm-up steps", "grad_clip": "clip the gradient norm to this (0: off)",
            "eval_interval": "evaluate, checkpoint and plot every this many steps",
            "eval_iters": "batches per loss estimate", "patience": "stop after this many evals without "
            "a better val loss (0: never)", "device": "cpu | cuda | strict"}

    def __post_init__(self):
        check_fields(self)
        for name in ("max_steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig: {name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig: learning_rate must be > 0 and min_lr_ratio in [0, 1], got "
                             f"{self.learning_rate} and {self.min_lr_ratio}")
        for name in ("warmup_steps", "eval_interval", "patience", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig: {name} must be non-negative, got {getattr(self, name)}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def finetune_config(**overrides) -> TrainConfig:
    """Fine-tuning's defaults (§3.1 step 4): 400 steps of 16, lr 1e-3 with 20 warm-up steps,
    no weight decay, Adam's β₂ = 0.999, no periodic evaluation, seed 0; ``overrides`` on top."""
    base = dict(max_steps=400, batch_size=16, learning_rate=1e-3, min_lr_ratio=0.1, warmup_steps=20,
                weight_decay=0.0, beta2=0.999, eval_interval=0, log_interval=50, seed=0)
    return TrainConfig(**{**base, **overrides})


class _Silent:
    """A stream that drops what is written: a quiet run's progress line (no file is opened)."""
    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


_SILENT = _Silent()


class Progress:
    """One status line: step, loss, tokens/s and ETA (redrawn in place on a terminal)."""

    def __init__(self, total, start=0, every=10, stream=None):
        self.total, self.start, self.every = total, start, max(1, every)
        self.stream = stream or sys.stdout
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0 = None          # the clock starts when the first step ends: its one-time costs
        self.tokens = 0         # (compiling the attention kernel) would make the ETA absurd

    def update(self, step, loss, tokens, lr):
        done, now = step + 1, time.perf_counter()
        if self.t0 is None:
            self.t0, self.first = now, done
        else:
            self.tokens += tokens
        if not (self.tty or done % self.every == 0 or done == self.total):
            return
        elapsed = now - self.t0
        if elapsed > 0 and done > self.first:
            rate = self.tokens / elapsed
            eta = (self.total - done) * elapsed / (done - self.first)
            speed = f"{rate / 1000:6.1f}k tok/s ETA {int(eta // 60)}:{int(eta % 60):02d}"
        else:
            speed = "    …  tok/s ETA  …"
        width = 24
        filled = int(width * done / self.total)
        bar = "█" * filled + "·" * (width - filled)
        line = (f"step {done:>{len(str(self.total))}}/{self.total} {bar} loss {loss:.4f} "
                f"lr {lr:.2e} {speed}")
        if self.tty:
            self.stream.write("\r" + line)
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text):
        self.stream.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
        self.stream.flush()


def plot_loss(history: dict, path) -> Path:
    """A PNG of the training loss (raw and smoothed) with the periodic train/val estimates."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # a Figure of its own: pyplot's backend (e.g. a notebook's) is untouched

    steps, losses = np.asarray(history["step"]), np.asarray(history["loss"])
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(losses):
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        k = max(1, min(50, len(losses) // 10))
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.5, label=f"train ({k}-step mean)")
    if history["eval"]:
        es, et, ev = zip(*history["eval"])
        ax.plot(es, et, "o-", color="tab:green", ms=4, label="train estimate")
        ax.plot(es, ev, "o-", color="tab:red", ms=4, label="val estimate")
    ax.set_xlabel("step")
    ax.set_ylabel("mean negative log-likelihood (nats/token)")
    ax.set_title("pretraining loss (Eq. G4)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def to_tensors(batch, device: str) -> dict:
    """A batch as the model's keyword arguments, each array a Tensor on ``device``: a dict as it
    is; an (input_ids, labels) pair, as RandomBatches gives it, named so."""
    if isinstance(batch, tuple) and len(batch) == 2:
        batch = {"input_ids": batch[0], "labels": batch[1]}
    if not isinstance(batch, dict):
        raise TypeError(f"Trainer: a batch must be a dict of model arguments or an (input_ids, labels) pair, "
                        f"got {type(batch).__name__}")
    return {k: v if v is None or isinstance(v, Tensor) else Tensor(backend.to_device(np.asarray(v), device))
            for k, v in batch.items()}


def model_loss(model, batch: dict):
    """The default loss: ``model(**batch).loss`` (every minilm model computes it from labels)."""
    loss = model(**batch).loss
    if loss is None:
        raise ValueError(f"Trainer: {type(model).__name__} returned no loss; the batch needs labels "
                         f"(it has {sorted(batch)})")
    return loss


def lm_evaluator(train_ids, val_ids, block_size: int, batch_size: int, eval_iters: int, seed: int,
                 device: str = "cpu"):
    """An evaluator for a causal LM: the mean loss over ``eval_iters`` fixed random blocks (the
    same ones every time: the sampler's seed is fixed) of train and of val, {"train", "val"}."""
    splits = {"train": np.asarray(train_ids), "val": np.asarray(val_ids)}

    def evaluate(model):
        out = {}
        for split, ids in splits.items():
            sampler = RandomBatches(ids, block_size, batch_size, seed=seed)
            losses = [model_loss(model, to_tensors(sampler(), device)).item() for _ in range(eval_iters)]
            out[split] = float(np.mean(losses))
        return out
    return evaluate


def loss_by_position(model, blocks, read_length: int | None = None, device: str = "cpu") -> np.ndarray:
    """The next-token loss at each position of a block, averaged over blocks (G4 per position):

        ℓ_t = (1/N) Σ_n −log p(x_{n,t+1} | x_{n,≤t})          t = 0 … L − 1

    ``blocks`` (N, L + 1) token ids.  The model reads each block as L / ``read_length`` pieces
    of ``read_length`` tokens, each starting from an empty context (default: the whole block
    at once), so a model with a shorter context is scored on the same tokens: its curve starts
    over at every piece.  Returns (L,) float64; its mean is the loss over all L·N targets."""
    blocks = np.asarray(blocks)
    if blocks.ndim != 2 or blocks.shape[1] < 2 or blocks.dtype.kind not in "iu":
        raise ValueError(f"loss_by_position: blocks must be (N, L + 1) integer token ids, got shape "
                         f"{blocks.shape} and dtype {blocks.dtype}")
    L = blocks.shape[1] - 1
    T = L if read_length is None else int(read_length)
    if T < 1 or L % T:
        raise ValueError(f"loss_by_position: read_length {read_length} must divide the block length L = {L}")
    total = np.zeros(L)
    with no_grad():
        for row in blocks:
            x = row[:-1].reshape(L // T, T).astype(np.int64)                   # (L/T, T) pieces
            y = row[1:].reshape(L // T, T).astype(np.int64)
            z = backend.to_numpy(model(Tensor(backend.to_device(x, device))).logits.data).astype(np.float64)
            z = z - z.max(-1, keepdims=True)                                    # (L/T, T, V), stable
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))                 # log-softmax
            total += -np.take_along_axis(logp, y[..., None], -1)[..., 0].reshape(L)   # (L,) in order
    return total / len(blocks)


class Trainer:
    """``Trainer(model, config, batches, loss_fn, evaluate, out_dir).fit()``: see the module docstring.

    out_dir: where best/ and last/ checkpoints and loss.png go (None: nothing is written);
    checkpoint_config: the JSON dict the model is rebuilt from (default model.config.to_dict());
    tokenizer: saved beside the weights; stream: the progress line's stream (default stdout),
    quiet=True for none; tokens_per_step: for the tokens/s figure (default batch × input length).

    A fresh run refuses an out_dir that already holds a checkpoint (best/ or last/): call
    ``resume()`` to continue that run, or pass ``overwrite=True`` to start over (the old
    best/ and last/ are deleted when training starts, so no stale "best" survives).
    """

    def __init__(self, model, config: TrainConfig, batches, loss_fn=None, evaluate=None, out_dir=None, *,
                 checkpoint_config: dict | None = None, tokenizer=None, stream=None, quiet: bool = False,
                 tokens_per_step: int | None = None, overwrite: bool = False):
        self.model, self.config, self.batches = model, config, batches
        self.loss_fn, self.evaluate = loss_fn or model_loss, evaluate
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.checkpoint_config = checkpoint_config
        self.tokenizer, self.stream, self.quiet = tokenizer, stream or sys.stdout, quiet
        self.tokens_per_step = tokens_per_step
        self.overwrite = overwrite
        self._claimed = False         # True once this run owns out_dir (resumed, or checked by fit)
        c = config
        groups = param_groups_for_weight_decay(model, c.weight_decay)
        if not any(g["params"] for g in groups):
            raise ValueError(f"Trainer: {type(model).__name__} has no trainable parameters")
        self.parameters = [p for g in groups for p in g["params"]]
        self.optimizer = AdamW(groups, lr=c.learning_rate, betas=(c.beta1, c.beta2))
        self.scheduler = warmup_cosine_scheduler(self.optimizer, c.max_steps, min(c.warmup_steps, c.max_steps),
                                                 min_lr_ratio=c.min_lr_ratio)
        self.step = 0
        self.best_val = math.inf
        self.bad_evals = 0
        self.history = {"step": [], "loss": [], "eval": []}
        self.step_seconds = []

    # ---- pieces --------------------------------------------------------------
    def train_step(self, batch) -> float:
        """One optimizer step on ``batch``: forward, backward, clip, AdamW, schedule; the loss as a float."""
        out = self.loss_fn(self.model, to_tensors(batch, self.config.device))
        loss, parts = out if isinstance(out, tuple) else (out, {})
        self.optimizer.zero_grad()
        loss.backward()
        if self.config.grad_clip > 0:
            clip_grad_norm(self.parameters, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {self.step}; lower the learning rate "
                                     f"(now {self.config.learning_rate:.2e}) or check the data")
        for name, v in parts.items():
            self.history.setdefault(name, []).append(v)
        return value

    @no_grad()
    def run_evaluation(self) -> dict:
        """``evaluate(model)`` under no_grad with dropout off."""
        self.model.eval()
        try:
            return self.evaluate(self.model)
        finally:
            self.model.train()

    def _train_state(self):
        return {"step": self.step, "best_val": self.best_val if math.isfinite(self.best_val) else None,
                "bad_evals": self.bad_evals, "history": self.history,
                "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
                "scheduler": self.scheduler.state_dict(), "train_config": self.config.to_dict()}

    def save(self, name):
        config = self.checkpoint_config if self.checkpoint_config is not None else self.model.config.to_dict()
        return save_checkpoint(self.out_dir / name, self.model, config, optimizer=self.optimizer,
                               tokenizer=self.tokenizer, step=self.step, extra={"train": self._train_state()})

    def resume(self, name="last"):
        """Continue from ``out_dir/name``: weights, optimizer state, schedule position, sampler, RNG
        and step.  Everything is read and checked before anything changes, so a bad checkpoint
        leaves the Trainer as it was.

        The hyperparameters are this Trainer's config, not the saved one: a run resumed with a
        new learning rate or max_steps follows the new schedule from the saved step on.
        ``self.changed`` lists the fields that differ, {name: (saved, now)}, and the progress
        stream says so.  With nothing changed the resumed run repeats the uninterrupted one exactly.
        """
        if self.out_dir is None:
            raise ValueError("Trainer.resume: this Trainer has no out_dir to resume from")
        ckpt = load_checkpoint(self.out_dir / name)
        state = _checked_train_state(ckpt)
        try:
            saved_config = config_from_dict(TrainConfig, state["train_config"], f"{ckpt.path}/meta.json: train_config")
        except ValueError as e:
            raise CheckpointError(f"{e}; cannot resume") from None
        ours = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if state["batches"] is not None:            # the sampler first: if its state does not fit, nothing changed
            before = self.batches.state_dict()
            try:
                self.batches.load_state_dict(state["batches"])
            except Exception as e:
                self.batches.load_state_dict(before)
                raise CheckpointError(f"{ckpt.path}/meta.json: extra.train.batches does not fit this run's "
                                      f"batch sampler ({type(e).__name__}: {e})") from e
        ckpt.load_into(self.model, self.optimizer)
        for group, hyper in zip(self.optimizer.param_groups, ours):   # this config's lr, betas, weight decay
            group.update(hyper)
        ckpt.restore_rng()
        self.step, self.bad_evals = state["step"], state["bad_evals"]
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        self.history = state["history"]
        self.history["eval"] = [tuple(e) for e in self.history["eval"]]
        self.scheduler.load_state_dict({**state["scheduler"], "base_lrs": self.scheduler.base_lrs})
        self._claimed = True
        now = self.config.to_dict()
        self.changed = {k: (v, now[k]) for k, v in saved_config.to_dict().items() if now.get(k) != v}
        if self.changed and not self.quiet:
            shown = ", ".join(f"{k} {a} → {b}" for k, (a, b) in self.changed.items())
            self.stream.write(f"resuming {ckpt.path} at step {self.step} with changed settings: {shown} "
                              f"(the new values apply from step {self.step} on)\n")
        return self

    def _claim_out_dir(self):
        """A fresh run may not silently replace another run's checkpoints (see the class docstring)."""
        if self._claimed or self.out_dir is None:
            return
        if not self.overwrite:
            refuse_existing_run(self.out_dir)
        for n in RUN_CHECKPOINTS:
            if (self.out_dir / n).exists():
                shutil.rmtree(self.out_dir / n)
        self._claimed = True

    def _evaluate_and_save(self, progress) -> bool:
        """Evaluate, keep the best, write last/ and the plot; True if the run should stop early."""
        c = self.config
        est = self.run_evaluation()
        if "val" not in est:
            raise KeyError(f"Trainer: the evaluator must return a 'val' entry, got {sorted(est)}")
        self.history["eval"].append((self.step, est.get("train", float("nan")), est["val"]))
        improved = est["val"] < self.best_val
        if improved:
            self.best_val, self.bad_evals = est["val"], 0
        else:
            self.bad_evals += 1
        if self.out_dir is not None:
            if improved:
                self.save("best")
            self.save("last")
            plot_loss(self.history, self.out_dir / "loss.png")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in est.items())
        saved = " (best, saved)" if improved and self.out_dir is not None else " (best)" if improved else ""
        progress.message(f"step {self.step}: {shown}{saved}")
        if c.patience and self.bad_evals >= c.patience:
            progress.message(f"val loss has not improved for {c.patience} evaluations: stopping early")
            return True
        return False

    # ---- the loop --------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> dict:
        """Train until max_steps (or early stop); ``stop_at`` pauses after that step, as an interruption
        would (writing last/).  Returns {"loss": per-step losses, "best_val", "step", "stopped_early",
        "history", "sec_per_step": the median step time after the first two (one-time costs such as
        compiling the attention kernel are not counted)}; the model is left in eval mode."""
        c = self.config
        self._claim_out_dir()
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        progress = Progress(c.max_steps, start=self.step, every=c.log_interval,
                            stream=_SILENT if self.quiet else self.stream)
        stopped_early = False
        while self.step < c.max_steps:
            lr = self.optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            batch = self.batches()
            value = self.train_step(batch)
            self.step_seconds.append(time.perf_counter() - t0)
            self.history["step"].append(self.step)
            self.history["loss"].append(value)
            progress.update(self.step, value, self._tokens(batch), lr)
            self.step += 1
            if stop_at is not None and self.step >= stop_at and (not c.eval_interval or self.step % c.eval_interval):
                if self.out_dir is not None:
                    self.save("last")
                break
            due = (c.eval_interval and self.step % c.eval_interval == 0) or self.step == c.max_steps
            if self.evaluate is not None and due:
                if self._evaluate_and_save(progress):
                    stopped_early = True
                    break
                if stop_at is not None and self.step >= stop_at:
                    break
        self.model.eval()
        steady = self.step_seconds[2:] or self.step_seconds
        return {"loss": self.history["loss"], "best_val": self.best_val, "step": self.step,
                "stopped_early": stopped_early, "history": self.history,
                "sec_per_step": float(np.median(steady)) if steady else float("nan")}

    def _tokens(self, batch) -> int:
        if self.tokens_per_step is not None:
            return self.tokens_per_step
        ids = batch[0] if isinstance(batch, tuple) else batch.get("input_ids")
        return 0 if ids is None else int(np.prod(ids.shape if hasattr(ids, "shape") else np.shape(ids)))


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A fresh run was pointed at a folder that holds another run's checkpoints."""


RUN_CHECKPOINTS = ("best", "last")


def refuse_existing_run(out_dir):
    """Raise CheckpointExistsError if ``out_dir`` holds a run's checkpoints (best/ or last/)."""
    out_dir = Path(out_dir)
    found = [n for n in RUN_CHECKPOINTS if (out_dir / n).exists()]
    if found:
        try:
            step = f" at step {load_checkpoint(out_dir / found[-1]).step}"
        except CheckpointError:
            step = ""
        raise CheckpointExistsError(
            f"{out_dir} already holds a run ({', '.join(n + '/' for n in found)}{step}); resume it (Trainer.resume(), "
            "`minilm pretrain --resume`) or start over (overwrite=True, `--overwrite`), which deletes it")


_TRAIN_STATE = {"step": int, "best_val": (float, int, type(None)), "bad_evals": int, "history": dict,
                "batches": (dict, type(None)), "scheduler": dict, "train_config": dict}


def _checked_train_state(ckpt) -> dict:
    """The Trainer's state in ``ckpt.extra["train"]``, every field's type checked (CheckpointError otherwise)."""
    where = f"{ckpt.path}/meta.json"
    extra = ckpt.meta.get("extra")
    state = extra.get("train") if isinstance(extra, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds no training state (extra.train is {state!r:.60}); it was not "
                              "written by a Trainer, so there is nothing to resume (load its weights instead)")
    problems = [f"extra.train.{k} is {type(state.get(k)).__name__}, not {getattr(t, '__name__', 'a number or null')}"
                for k, t in _TRAIN_STATE.items()
                if k not in state or not isinstance(state[k], t) or isinstance(state[k], bool)]
    history = state.get("history") if isinstance(state.get("history"), dict) else {}
    problems += [f"extra.train.history.{k} is missing or not a list" for k in ("step", "loss", "eval")
                 if not isinstance(history.get(k), list)]
    scheduler = state.get("scheduler") if isinstance(state.get("scheduler"), dict) else {}
    if not isinstance(scheduler.get("last_step"), int):
        problems.append("extra.train.scheduler.last_step is missing or not an integer")
    rng = (ckpt.meta.get("rng") or {}).get("minilm.default_generator") if isinstance(ckpt.meta.get("rng"), dict) \
        else None
    if not (isinstance(rng, dict) and isinstance(rng.get("bit_generator"), dict) and "seed" in rng):
        problems.append("rng.minilm.default_generator is missing or malformed")
    if not problems and not 0 <= state["step"] == ckpt.step:
        problems.append(f"extra.train.step={state['step']} does not match the checkpoint's step {ckpt.step}")
    if problems:
        raise CheckpointError(f"{where} cannot be resumed: " + "; ".join(problems))
    return state


def lm_trainer(model, train_ids, val_ids, config: TrainConfig, out_dir=None, **kwargs) -> Trainer:
    """The Trainer for causal-LM pretraining: random blocks of ``train_ids`` (x and x shifted by
    one, G4's targets), evaluated on fixed blocks of train and val; ``kwargs`` go to Trainer."""
    T = model.config.block_size
    batches = RandomBatches(np.asarray(train_ids), T, config.batch_size, seed=config.seed)
    evaluate = lm_evaluator(train_ids, val_ids, T, config.batch_size, config.eval_iters, config.seed + 1,
                            config.device)
    return Trainer(model, config, batches, evaluate=evaluate, out_dir=out_dir, **kwargs)
