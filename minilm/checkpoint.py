"""Checkpoints: a directory of arrays and JSON, never pickle.

    <path>/
      model.safetensors       the model's state_dict as host NumPy arrays (a tied weight once)
      optimizer.safetensors   optional: the optimizer's per-parameter arrays (Adam's m and v, ...)
      meta.json               format and version, model class and config, tokenizer, step,
                              RNG state, optimizer hyperparameters and step counts, extra

Loading reads raw bytes and JSON only, so an untrusted checkpoint cannot run
code.  Saving is atomic: everything is written and fsync'ed into a hidden
sibling directory, which then takes the checkpoint's name; the previous
checkpoint is deleted only after that, so a crash mid-save never costs the
last good checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from .backend import to_numpy
from .nn.module import StateDictError
from .optim import flatten_state_dict, unflatten_state_dict
from .tensor import default_generator

FORMAT, VERSION = "minilm-checkpoint", 1
MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.safetensors", "optimizer.safetensors", "meta.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message says which file and why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at that path."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` read: host arrays and JSON."""

    path: Path
    meta: dict
    state: dict                    # parameter name -> np.ndarray
    optimizer_state: dict | None   # an Optimizer.state_dict() with host arrays, or None

    config = property(lambda self: self.meta["config"])
    step = property(lambda self: self.meta["step"])
    tokenizer_dict = property(lambda self: self.meta["tokenizer"])
    extra = property(lambda self: self.meta["extra"])

    def load_into(self, model, optimizer=None):
        """Copy the weights into ``model`` (and the state into ``optimizer``); returns model.

        Both or neither: if the optimizer state does not fit, the model gets its
        old weights back.  RNG streams are restored separately: ``restore_rng()``.
        """
        if optimizer is not None and self.optimizer_state is None:
            raise CheckpointError(f"checkpoint {self.path} holds no optimizer state "
                                  "(it was saved without optimizer=)")
        before = {k: v.copy() for k, v in model.state_dict().items()}
        try:
            model.load_state_dict(self.state)
        except StateDictError as e:
            raise CheckpointError(f"checkpoint {self.path} (saved from a {self.meta['model_class']}) does not "
                                  f"fit this {type(model).__name__}:\n{e}") from e
        if optimizer is not None:
            try:
                optimizer.load_state_dict(self.optimizer_state)
            except Exception:
                model.load_state_dict(before)
                raise
        return model

    def restore_rng(self, generator=None):
        """Put minilm's default generator (or ``generator``) back where it was at save time."""
        saved = self.meta["rng"]["minilm.default_generator"]
        gen = generator or default_generator
        gen.manual_seed(saved["seed"])  # also forgets per-device streams seeded from the old state
        gen.host.bit_generator.state = saved["bit_generator"]
        return gen


def save_checkpoint(path, model, config: dict, optimizer=None, tokenizer=None, step: int = 0,
                    extra: dict | None = None) -> Path:
    """Write ``model`` (and ``optimizer``, ``tokenizer``) to the directory ``path``, atomically.

    ``config`` is the JSON-able dict the model is rebuilt from; ``tokenizer`` an
    object with ``to_dict()``; ``extra`` any JSON-able dict.  An existing
    checkpoint at ``path`` is replaced; anything else there is refused.
    """
    path = Path(path)
    model_arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in model.state_dict().items()}
    gen = default_generator
    meta = {"format": FORMAT, "version": VERSION, "model_class": type(model).__name__, "config": config,
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None, "step": int(step),
            "rng": {"minilm.default_generator": {
                "seed": gen.seed if isinstance(gen.seed, (int, type(None))) else None,
                "bit_generator": gen.host.bit_generator.state}},
            "optimizer": None, "extra": extra}
    optimizer_arrays = None
    if optimizer is not None:
        optimizer_arrays, meta["optimizer"] = flatten_state_dict(optimizer.state_dict())
    text = _to_json(meta)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        _write_safetensors(tmp / MODEL_FILE, model_arrays)
        if optimizer_arrays is not None:
            _write_safetensors(tmp / OPTIMIZER_FILE, optimizer_arrays)
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:  # last: a directory with meta.json is complete
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _move_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no debris (no-op after success)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint directory written by ``save_checkpoint``."""
    path = Path(path)
    if not path.exists():
        backups = sorted(p.name for p in path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f"; a save was interrupted after moving the old one to {backups[-1]} beside it" if backups else ""
        raise CheckpointNotFoundError(f"no checkpoint at {path}: it does not exist{hint}")
    meta = _read_meta(path)
    state = _read_safetensors(path / MODEL_FILE)
    optimizer_state = None
    if meta.get("optimizer") is not None:
        optimizer_state = unflatten_state_dict(_read_safetensors(path / OPTIMIZER_FILE), meta["optimizer"])
    return Checkpoint(path, meta, state, optimizer_state)


# ---- reading -----------------------------------------------------------------

def _contents(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
    return f"it holds: {shown}" if names else "it is empty"


def _read_meta(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; a minilm checkpoint is a directory with {MODEL_FILE} and {META_FILE}")
    if not (path / META_FILE).is_file():
        raise CheckpointError(f"{path} is not a minilm checkpoint: it has no {META_FILE}; {_contents(path)}")
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / META_FILE} is truncated or corrupt (not valid JSON: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a minilm checkpoint: its {META_FILE} has format {found!r}, "
                              f"not {FORMAT!r}; {_contents(path)}")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')!r}; "
                              f"this minilm reads versions up to {VERSION}")
    return meta


def _read_safetensors(file: Path) -> dict:
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file.parent} lacks {file.name}; {_contents(file.parent)}")
    try:
        return safetensors.numpy.load_file(str(file))
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{file} is truncated or corrupt ({os.path.getsize(file)} bytes; "
                              f"safetensors says: {e})") from e


# ---- writing -----------------------------------------------------------------

def _to_json(meta: dict) -> str:
    for field in ("config", "tokenizer", "extra"):
        try:
            json.dumps(meta[field])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot save a checkpoint: its {field} is not JSON-able ({e})") from e
    return json.dumps(meta, indent=1)


def _check_replaceable(path: Path):
    """Refuse to replace anything but an empty directory or a minilm checkpoint."""
    if not path.exists():
        return
    if not path.is_dir():
        raise CheckpointError(f"cannot save a checkpoint at {path}: a file is there")
    if any(path.iterdir()):
        try:
            _read_meta(path)
        except CheckpointError as e:
            raise CheckpointError(f"refusing to replace {path} with a checkpoint: {e}") from None


def _write_safetensors(file: Path, arrays: dict):
    safetensors.numpy.save_file(arrays, str(file))
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path):
    if os.name == "posix":  # makes the directory's entries (new names, renames) durable
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_place(tmp: Path, path: Path):
    """tmp → path.  POSIX cannot rename onto a non-empty directory, so the old
    checkpoint steps aside first and is deleted only once the new one is in place."""
    if not path.exists():
        os.rename(tmp, path)
    else:
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)
