"""The pretraining loop (§3.1 step 3): batches in, mean NLL (G4) down, AdamW steps.

Every ``eval_interval`` steps it estimates train and val loss on fixed batches,
keeps the best checkpoint, writes the latest one (for resuming) and the loss
curve; it stops early when val loss has not improved for ``patience`` evals.
A resumed run restores model, optimizer, schedule, batch sampler, RNG and step,
so it continues with exactly the losses the uninterrupted run would have had.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import load_checkpoint, save_checkpoint
from .data.batches import RandomBatches
from .optim import AdamW, clip_grad_norm, param_groups_for_weight_decay, warmup_cosine_scheduler
from .tensor import Tensor, default_generator, no_grad


@dataclass
class TrainConfig:
    """nanoGPT's CPU recipe for character-level Shakespeare by default."""
    max_iters: int = 2000
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr: float = 1e-4            # cosine decay ends here at max_iters
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0          # 0 turns clipping off
    eval_interval: int = 250
    eval_iters: int = 20            # batches per loss estimate
    patience: int = 0               # stop after this many evals without a better val loss (0: never)
    log_interval: int = 10
    seed: int = 1337
    device: str = "cpu"

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Progress:
    """One status line: step, loss, tokens/s and ETA (redrawn in place on a terminal)."""

    def __init__(self, total, start=0, every=10, stream=None):
        self.total, self.start, self.every = total, start, max(1, every)
        self.stream = stream or sys.stdout
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0 = time.perf_counter()
        self.tokens = 0

    def update(self, step, loss, tokens, lr):
        self.tokens += tokens
        done = step + 1
        if not (self.tty or done % self.every == 0 or done == self.total):
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        steps_per_s = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / steps_per_s if steps_per_s > 0 else 0.0
        width = 24
        filled = int(width * done / self.total)
        bar = "█" * filled + "·" * (width - filled)
        line = (f"step {done:>{len(str(self.total))}}/{self.total} {bar} loss {loss:.4f} "
                f"lr {lr:.2e} {rate / 1000:6.1f}k tok/s ETA {int(eta // 60)}:{int(eta % 60):02d}")
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


class Trainer:
    """Train a GPT on token ids: ``Trainer(model, train_ids, val_ids, config, out_dir).fit()``."""

    def __init__(self, model, train_ids, val_ids, config: TrainConfig, out_dir, model_config: dict | None = None,
                 tokenizer=None, stream=None):
        self.model, self.config, self.out_dir = model, config, Path(out_dir)
        self.model_config = model_config if model_config is not None else model.config.to_dict()
        self.tokenizer, self.stream = tokenizer, stream or sys.stdout
        self.block_size = model.config.block_size
        self.train_ids, self.val_ids = np.asarray(train_ids), np.asarray(val_ids)
        c = config
        self.optimizer = AdamW(param_groups_for_weight_decay(model, c.weight_decay), lr=c.learning_rate,
                               betas=(c.beta1, c.beta2))
        self.scheduler = warmup_cosine_scheduler(self.optimizer, c.max_iters, min(c.warmup_iters, c.max_iters),
                                                 min_lr_ratio=c.min_lr / c.learning_rate)
        self.batches = RandomBatches(self.train_ids, self.block_size, c.batch_size, seed=c.seed)
        self.step = 0
        self.best_val = math.inf
        self.bad_evals = 0
        self.history = {"step": [], "loss": [], "eval": []}

    # ---- pieces --------------------------------------------------------------
    def _tensor(self, a):
        return Tensor(backend.to_device(a, self.config.device))

    @no_grad()
    def estimate_loss(self) -> dict:
        """Mean loss over ``eval_iters`` fixed batches of train and of val (dropout off)."""
        self.model.eval()
        out = {}
        for split, ids in (("train", self.train_ids), ("val", self.val_ids)):
            sampler = RandomBatches(ids, self.block_size, self.config.batch_size, seed=self.config.seed + 1)
            losses = []
            for _ in range(self.config.eval_iters):
                x, y = sampler()
                _, loss = self.model(self._tensor(x), self._tensor(y))
                losses.append(loss.item())
            out[split] = float(np.mean(losses))
        self.model.train()
        return out

    def _train_state(self):
        return {"step": self.step, "best_val": self.best_val if math.isfinite(self.best_val) else None,
                "bad_evals": self.bad_evals, "history": self.history, "batches": self.batches.state_dict(),
                "scheduler": self.scheduler.state_dict(), "train_config": self.config.to_dict()}

    def save(self, name):
        return save_checkpoint(self.out_dir / name, self.model, self.model_config, optimizer=self.optimizer,
                               tokenizer=self.tokenizer, step=self.step, extra={"train": self._train_state()})

    def resume(self, name="last"):
        """Continue from ``out_dir/name``: weights, optimizer, schedule, sampler, RNG and step."""
        ckpt = load_checkpoint(self.out_dir / name)
        ckpt.load_into(self.model, self.optimizer)
        ckpt.restore_rng()
        state = ckpt.extra["train"]
        self.step, self.bad_evals = state["step"], state["bad_evals"]
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        self.history = state["history"]
        self.history["eval"] = [tuple(e) for e in self.history["eval"]]
        self.batches.load_state_dict(state["batches"])
        self.scheduler.load_state_dict(state["scheduler"])
        return self

    # ---- the loop --------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> dict:
        """Train until max_iters (or early stop); ``stop_at`` pauses after that step, as an interruption would."""
        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        progress = Progress(c.max_iters, start=self.step, every=c.log_interval, stream=self.stream)
        tokens_per_step = c.batch_size * self.block_size
        stopped_early = False
        while self.step < c.max_iters:
            lr = self.optimizer.param_groups[0]["lr"]
            x, y = self.batches()
            _, loss = self.model(self._tensor(x), self._tensor(y))   # G4: mean −log P(x_t | x_<t)
            self.optimizer.zero_grad()
            loss.backward()
            if c.grad_clip > 0:
                clip_grad_norm(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {self.step}; lower the learning rate "
                                         f"(now {lr:.2e}) or check the data")
            self.history["step"].append(self.step)
            self.history["loss"].append(value)
            progress.update(self.step, value, tokens_per_step, lr)
            self.step += 1
            if stop_at is not None and self.step >= stop_at and self.step % c.eval_interval:
                self.save("last")
                break
            if self.step % c.eval_interval == 0 or self.step == c.max_iters:
                est = self.estimate_loss()
                self.history["eval"].append((self.step, est["train"], est["val"]))
                improved = est["val"] < self.best_val
                if improved:
                    self.best_val, self.bad_evals = est["val"], 0
                    self.save("best")
                else:
                    self.bad_evals += 1
                self.save("last")
                plot_loss(self.history, self.out_dir / "loss.png")
                progress.message(f"step {self.step}: train {est['train']:.4f}, val {est['val']:.4f}"
                                 f"{' (best, saved)' if improved else ''}")
                if stop_at is not None and self.step >= stop_at:
                    break
                if c.patience and self.bad_evals >= c.patience:
                    progress.message(f"val loss has not improved for {c.patience} evaluations: stopping early")
                    stopped_early = True
                    break
        return {"best_val": self.best_val, "step": self.step, "stopped_early": stopped_early,
                "history": self.history}
