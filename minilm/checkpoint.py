"""Checkpoints: a directory of arrays and JSON, never pickle.

    <path>/
      model.safetensors       the model's state_dict as host NumPy arrays (a tied weight once)
      optimizer.safetensors   optional: the optimizer's per-parameter arrays (Adam's m and v, ...)
      meta.json               format and version, model class and config, tokenizer, step,
                              RNG state, optimizer hyperparameters and step counts, extra;
                              files: {file name: {"sha256", "bytes"}} of the files above;
                              meta_sha256: the SHA-256 of the rest of meta.json (``_canonical``)

Integrity.  Loading reads raw bytes and JSON only, so an untrusted checkpoint
cannot run code, and it checks every byte before parsing it: meta.json against
its own meta_sha256, each array file against the size and SHA-256 that
meta.json records.  A flipped byte anywhere raises CheckpointError naming the
file.  Version-1 checkpoints (written before the digests) still load, unchecked.

Saving <path>, atomically:
  1. recover from an earlier save that was killed (below);
  2. write and fsync every file into a hidden sibling .<name>.tmp-<hex>, meta.json
     last: a folder whose meta.json is there and whose digests verify is complete;
  3. rename <path> → .<name>.old-<hex>   (POSIX cannot rename onto a non-empty directory)
  4. rename .<name>.tmp-<hex> → <path>
  5. delete .<name>.old-<hex>.
A kill at any point leaves the old or the new checkpoint at <path> — or, between
steps 3 and 4, no <path> but the complete new one in .tmp-* and the old one in .old-*.

Recovery, at the next save or load of <path>: if <path> is missing, the newest
complete .<name>.tmp-* takes its name, else the newest complete .<name>.old-*;
then, once <path> holds a checkpoint that verifies, the other .<name>.tmp-* and
.<name>.old-* folders are deleted (never the only good copy).  A warning names
what was recovered and removed.  Saves and loads of one folder take turns (an
flock on the folder, released even when its process is killed), so a load never
sees a checkpoint half-replaced nor deletes the tmp folder of a save in progress.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from .backend import to_numpy
from .nn.module import StateDictError
from .optim import flatten_state_dict, unflatten_state_dict
from .tensor import default_generator

try:
    import fcntl
except ImportError:  # not POSIX: saves and loads are not serialized across processes
    fcntl = None

FORMAT, VERSION = "minilm-checkpoint", 2
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

    def load_into(self, model, optimizer=None, cast: bool = False):
        """Copy the weights into ``model`` (and the state into ``optimizer``); returns model.

        Both or neither: if the optimizer state does not fit, the model gets its
        old weights back.  Each array must have its parameter's dtype; ``cast=True``
        lets float weights into a model of another float width (e.g. float32 weights
        into a float16 model).  RNG streams are restored separately: ``restore_rng()``.
        """
        if optimizer is not None and self.optimizer_state is None:
            raise CheckpointError(f"checkpoint {self.path} holds no optimizer state "
                                  "(it was saved without optimizer=)")
        before = {k: v.copy() for k, v in model.state_dict().items()}
        try:
            model.load_state_dict(self.state, cast=cast)
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
    arrays = {MODEL_FILE: {k: np.ascontiguousarray(to_numpy(v)) for k, v in model.state_dict().items()}}
    gen = default_generator
    meta = {"format": FORMAT, "version": VERSION, "model_class": type(model).__name__, "config": config,
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None, "step": int(step),
            "rng": {"minilm.default_generator": {
                "seed": gen.seed if isinstance(gen.seed, (int, type(None))) else None,
                "bit_generator": gen.host.bit_generator.state}},
            "optimizer": None, "extra": extra}
    if optimizer is not None:
        arrays[OPTIMIZER_FILE], meta["optimizer"] = flatten_state_dict(optimizer.state_dict())
    _check_jsonable(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        _recover(path)
        _check_replaceable(path)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            meta["files"] = {name: _write_safetensors(tmp / name, a) for name, a in arrays.items()}
            _write_file(tmp / META_FILE, _seal(meta).encode())  # last: a folder with meta.json is complete
            _fsync_dir(tmp)
            _move_into_place(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no debris (no-op after success)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read and verify a checkpoint directory written by ``save_checkpoint``, first recovering
    from an interrupted save of it (module docstring)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint at {path}: it does not exist")
    with _locked(path.parent):
        _recover(path)
        if not path.exists():
            left = sorted(p.name for p in _leftovers(path))
            hint = f"; an interrupted save left {', '.join(left)} beside it, none complete" if left else ""
            raise CheckpointNotFoundError(f"no checkpoint at {path}: it does not exist{hint}")
        return Checkpoint(path, *_read(path))


# ---- reading -----------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(meta: dict) -> bytes:
    """What meta_sha256 covers: meta.json's content without meta_sha256 (so whitespace does not count)."""
    return json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"},
                      sort_keys=True, separators=(",", ":")).encode()


def _contents(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
    return f"it holds: {shown}" if names else "it is empty"


def _read(path: Path) -> tuple[dict, dict, dict | None]:
    """meta, model state and optimizer state (or None) of the checkpoint at ``path``, all verified."""
    meta = _read_meta(path)
    state = _read_safetensors(path / MODEL_FILE, meta)
    optimizer_state = None
    if meta.get("optimizer") is not None:
        optimizer_state = unflatten_state_dict(_read_safetensors(path / OPTIMIZER_FILE, meta), meta["optimizer"])
    return meta, state, optimizer_state


def _read_meta(path: Path) -> dict:
    file = path / META_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; a minilm checkpoint is a directory with {MODEL_FILE} and {META_FILE}")
    if not file.is_file():
        raise CheckpointError(f"{path} is not a minilm checkpoint: it has no {META_FILE}; {_contents(path)}")
    try:
        meta = json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is truncated or corrupt (not valid JSON: {e})") from e
    # a digest that is there is checked whatever the rest says (a flipped "version" cannot turn it off)
    if isinstance(meta, dict) and "meta_sha256" in meta and meta["meta_sha256"] != _sha256(_canonical(meta)):
        raise CheckpointError(f"{file} is corrupt: its content has SHA-256 {_sha256(_canonical(meta))}, "
                              f"but it records meta_sha256 {meta['meta_sha256']!r}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a minilm checkpoint: its {META_FILE} has format {found!r}, "
                              f"not {FORMAT!r}; {_contents(path)}")
    if not isinstance(meta.get("version"), int) or not 1 <= meta["version"] <= VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')!r}; "
                              f"this minilm reads versions 1 to {VERSION}")
    if meta["version"] >= 2 and "meta_sha256" not in meta:
        raise CheckpointError(f"{file} is corrupt: a version-{meta['version']} {META_FILE} records meta_sha256")
    return meta


def _read_safetensors(file: Path, meta: dict) -> dict:
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file.parent} lacks {file.name}; {_contents(file.parent)}")
    data = file.read_bytes()
    if meta["version"] >= 2:  # version 1 recorded no digests
        want = meta.get("files", {}).get(file.name) or {}
        if (len(data), _sha256(data)) != (want.get("bytes"), want.get("sha256")):
            raise CheckpointError(f"{file} is truncated or corrupt: it has {len(data)} bytes with SHA-256 "
                                  f"{_sha256(data)}; {META_FILE} records {want.get('bytes')} bytes with "
                                  f"SHA-256 {want.get('sha256')}")
    try:
        return safetensors.numpy.load(data)
    except (safetensors.SafetensorError, ValueError) as e:
        raise CheckpointError(f"{file} is truncated or corrupt ({len(data)} bytes; "
                              f"safetensors says: {e})") from e


# ---- writing -----------------------------------------------------------------

def _check_jsonable(meta: dict):
    for field in ("config", "tokenizer", "extra"):
        try:
            json.dumps(meta[field])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot save a checkpoint: its {field} is not JSON-able ({e})") from e


def _seal(meta: dict) -> str:
    """meta.json's text, with meta_sha256 over the content as a reader will parse it
    (tuples come back as lists, int keys as strings)."""
    meta = json.loads(json.dumps(meta))
    meta["meta_sha256"] = _sha256(_canonical(meta))
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


def _write_file(file: Path, data: bytes):
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(file: Path, arrays: dict) -> dict:
    """Write ``arrays``; returns the size and SHA-256 of the bytes written, for meta.json."""
    data = safetensors.numpy.save(arrays)
    _write_file(file, data)
    return {"sha256": _sha256(data), "bytes": len(data)}


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


# ---- interrupted saves -----------------------------------------------------------

@contextlib.contextmanager
def _locked(folder: Path):
    """Saves and loads in ``folder`` take turns across processes (flock: a kill releases it)."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _leftovers(path: Path, kind: str = "") -> list[Path]:
    """The .<name>.tmp-* and .<name>.old-* folders beside ``path`` (``kind`` "tmp" or "old": those only),
    newest meta.json first."""
    prefixes = [f".{path.name}.{k}-" for k in ([kind] if kind else ["tmp", "old"])]
    found = [p for p in path.parent.iterdir() if any(p.name.startswith(pre) for pre in prefixes)]

    def written(p):
        try:
            return (p / META_FILE).stat().st_mtime_ns
        except OSError:
            return -1
    return sorted(found, key=written, reverse=True)


def _is_complete(path: Path) -> bool:
    try:
        _read(path)
        return True
    except Exception:  # any failure to read it back (corrupt, half written, half deleted) means no
        return False


def _recover(path: Path):
    """Finish what a killed save of ``path`` left behind (module docstring); the caller holds the lock."""
    left = _leftovers(path)
    if not left:
        return
    promoted = None
    if not path.exists():
        promoted = next((p for p in _leftovers(path, "tmp") + _leftovers(path, "old") if _is_complete(p)), None)
        if promoted is None:
            return  # nothing complete to put back: keep everything
        os.rename(promoted, path)
        _fsync_dir(path.parent)
        left.remove(promoted)
    elif not _is_complete(path):
        return  # the leftovers may hold the only good copy
    for p in left:
        shutil.rmtree(p, ignore_errors=True)
    done = [f"recovered {promoted.name} as {path.name}"] if promoted else []
    done += [f"removed {', '.join(p.name for p in left)}"] if left else []
    warnings.warn(f"checkpoint {path}: a save was interrupted; {', '.join(done)}", stacklevel=3)
