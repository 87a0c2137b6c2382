"""What every method shares: apply by config, count, switch off, remove, save and load only the adapter.

A3 trains only the new parameters (``base.freeze_base``): every base parameter gets
requires_grad=False, so its ``.grad`` stays None and no optimizer can move it.  Kept
trainable: the PEFT modules' own parameters, a task head (``model.head_patterns``, like
PEFT's ``modules_to_save``) and ``train_also`` globs.

This module sits above the methods (adapter, lora, prefix import only ``base``); ``add``
dispatches through the registry they fill, so nothing here lists the methods.

Saved files (a folder):
  adapter_config.json        {"format": "minilm-peft", "methods": [config, …], "model": …, "keys": […]}
  adapter_model.safetensors  the trainable arrays only (a tied embedding appears once, if at all)
No pickle; loading checks every key and shape before it writes anything.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .. import backend
from ..configs import config_from_dict
from ..nn import Module, StateDictError
from ..tensor import no_grad
from . import adapter  # noqa: F401  (a method registers itself when imported: base.METHODS, base.ADDERS)
from .base import ADAPTER_SLOTS, METHODS, adder_for, configs_of, peft_modules
from .lora import LoRALinear
from .prefix import PrefixEncoder

FORMAT = "minilm-peft"
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


# ---- counting -------------------------------------------------------------------------------
def trainable_report(model: Module, file=None) -> dict:
    """Print and return trainable / total parameters and the percentage (PEFT's
    print_trainable_parameters), plus the count that a save writes (a reparameterised
    prefix is folded first, so it saves fewer than it trains)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    saved = trainable
    for _, m in peft_modules(model):
        if isinstance(m, PrefixEncoder) and m.reparameterized:
            saved += m.num_saved_parameters() - sum(p.numel() for p in m.parameters() if p.requires_grad)
    out = {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1), "saved": saved}
    line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {out['percent']:.4f}"
    if saved != trainable:
        line += f" || saved after folding the prefix: {saved:,}"
    print(line, file=file or sys.stdout)
    return out


# ---- switching off --------------------------------------------------------------------------
@contextlib.contextmanager
def disable_adapters(model: Module):
    """Inside the block, the model computes the base model's outputs (every Adapter is the
    identity, every LoRA update and prefix is skipped); on exit they are back."""
    mods = [m for _, m in peft_modules(model)]
    merged = [n for n, m in peft_modules(model) if isinstance(m, LoRALinear) and m.merged]
    if merged:
        raise RuntimeError(f"disable_adapters: LoRA layers {merged} are merged into their weights; "
                           "unmerge_lora(model) first")
    before = [m.active for m in mods]
    try:
        for m in mods:
            m.active = False
        yield model
    finally:
        for m, a in zip(mods, before):
            m.active = a


def remove_peft(model: Module) -> Module:
    """Take every PEFT module out (LoRA layers back to their Linear, unmerged first;
    adapter slots and the prefix emptied) and make every parameter trainable again."""
    for layer in (model.layers() if hasattr(model, "layers") else ()):
        for slot in ADAPTER_SLOTS:
            setattr(layer, slot, None)
    body = getattr(model, "base_model", model)
    if getattr(body, "prefix", None) is not None:
        body.prefix = None
    _unwrap_lora(model, unmerge=True)
    for p in model.parameters():
        p.requires_grad = True
    model._peft_configs = []
    return model


def _unwrap_lora(model: Module, unmerge: bool):
    """Put each LoRALinear's own Linear back in its place (after unmerge(), if asked and merged)."""
    for _, m in list(model.named_modules()):
        for attr, child in list(m.named_children()):
            if isinstance(child, LoRALinear):
                if unmerge and child.merged:
                    child.unmerge()
                setattr(m, attr, child.base_layer())


def merge_and_unload(model: Module) -> Module:
    """Fold every LoRA update into its weight and drop the LoRA layers: a plain model again.
    (Adapters and prefixes add computation that cannot be folded; they are refused.)"""
    others = [n for n, m in peft_modules(model) if not isinstance(m, LoRALinear)]
    if others:
        raise ValueError(f"merge_and_unload: only LoRA folds into the weights; the model also has {others}")
    for _, m in peft_modules(model):
        if not m.merged:
            m.merge()
        m._original = None
    _unwrap_lora(model, unmerge=False)
    for p in model.parameters():
        p.requires_grad = True
    model._peft_configs = []
    return model


# ---- saving and loading ---------------------------------------------------------------------
def add(model: Module, config) -> Module:
    """Apply one method by its config (AdapterConfig, LoRAConfig, PrefixConfig or any registered
    with ``minilm.peft.base.register``) and record it on the model."""
    adder_for(config)(model, config)
    model._peft_configs = configs_of(model) + [config]
    return model


def adapter_state_dict(model: Module) -> dict:
    """name → array for every trainable parameter, a reparameterised prefix folded to its flat P."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name] = p.data
    for mname, m in peft_modules(model):
        if isinstance(m, PrefixEncoder) and m.reparameterized:
            for n in [k for k in out if k.startswith(mname + ".")]:
                del out[n]
            with no_grad():
                out[f"{mname}.prefix"] = m.flat().data.copy()
    return out


def save_adapter(model: Module, path) -> Path:
    """Write the adapter folder (config JSON + safetensors of the trainable arrays), atomically."""
    configs = configs_of(model)
    if not configs:
        raise ValueError("save_adapter: the model has no PEFT method recorded (use minilm.peft.add(...))")
    state = {k: backend.to_numpy(v) for k, v in adapter_state_dict(model).items()}
    dicts = []
    for c in configs:
        d = c.to_dict()
        if d["method"] == "prefix":
            d["hidden"] = None                                # saved folded: a flat prefix
        dicts.append(d)
    meta = {"format": FORMAT, "model": type(model).__name__, "methods": dicts, "keys": sorted(state)}
    if hasattr(model, "n_classes"):
        meta["n_classes"] = model.n_classes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=path.name + ".old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_adapter(path) -> tuple[dict, dict]:
    """(meta, arrays) of a saved adapter folder; errors name the file at fault."""
    path = Path(path)
    cfg, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg} is not a minilm adapter (format {meta.get('format')!r}); for a PEFT "
                         "folder see minilm.peft.export_peft")
    try:
        arrays = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{weights} could not be read as safetensors: {e}") from None
    return meta, arrays


def load_adapter(model: Module, path) -> Module:
    """Apply the saved methods to a base model and load the saved arrays.

    The model must be the same base (and task head class) as at save time.  If its
    parameter names or shapes do not match the file's, a StateDictError lists the
    keys and the model is left as it was (the methods this call added are removed).
    """
    path = Path(path)
    meta, arrays = read_adapter(path)
    if configs_of(model) or peft_modules(model):
        raise ValueError("load_adapter: the model already has PEFT modules; load into a fresh base model")
    if meta.get("model") != type(model).__name__:
        raise ValueError(f"load_adapter: {path} was saved from a {meta.get('model')}, this is a "
                         f"{type(model).__name__}")
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for d in meta["methods"]:
            cls = METHODS.get(d.get("method")) if isinstance(d, dict) else None
            if cls is None:
                raise ValueError(f"load_adapter: unknown method {d.get('method') if isinstance(d, dict) else d!r} "
                                 f"in {path / CONFIG_NAME}")
            add(model, config_from_dict(cls, d, str(path / CONFIG_NAME)))
        own = dict(model.named_parameters())
        expected = set(adapter_state_dict(model))
        missing = sorted(expected - set(arrays))
        unexpected = sorted(set(arrays) - expected)
        mismatched = [f"{k}: file {tuple(arrays[k].shape)} vs model {own[k].shape}"
                      for k in sorted(expected & set(arrays)) if tuple(arrays[k].shape) != own[k].shape]
        if missing or unexpected or mismatched:
            lines = []
            if missing:
                lines.append(f"missing from the file ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                lines.append(f"not in the model ({len(unexpected)}): {', '.join(unexpected)}")
            if mismatched:
                lines.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
            raise StateDictError(f"load_adapter: {path} does not fit this {type(model).__name__}; "
                                 "nothing was loaded.\n  " + "\n  ".join(lines))
        for k, v in arrays.items():
            t = own[k]
            t.data = backend.to_device(v, t.device).astype(t.dtype, copy=True)
    except Exception:
        remove_peft(model)
        for p, g in grads:
            p.requires_grad = g
        raise
    return model
