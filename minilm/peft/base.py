"""What every PEFT method builds on: the registry of methods, the model's layers, freezing (A3).

The layers of minilm.peft point one way::

    base.py  ←  adapter.py, lora.py, prefix.py  ←  core.py, export.py  ←  __init__.py

A method module imports this one at module level and registers itself::

    @register(AdapterConfig)
    def add_adapters(model, config): ...

so that ``minilm.peft.add(model, config)`` finds the add function by the config's class
(``adder_for``) and ``load_adapter`` finds the config class by the name a saved file
records (``METHODS["adapter"]``), with no list of methods written anywhere else.

What a method needs to know about the model comes from the model (minilm.models.base.Model):
``model.layers()`` (the Transformer layers with adapter slots), ``model.base_model.fused_qkv``,
``model.attention_shape(i)``, ``model.head_patterns`` and ``model.base_model.prefix``.
"""
from __future__ import annotations

import fnmatch

from ..nn import Module

ADAPTER_SLOTS = ("adapter_attn", "adapter_mlp", "adapter_output")

# ---- the registry ---------------------------------------------------------------------------
METHODS: dict = {}      # a config's ``method`` name ("adapter", "lora", "prefix") → its config class
ADDERS: dict = {}       # config class → the function that applies it: fn(model, config) -> model


def register(config_cls):
    """Decorator for a method's add function: ``@register(LoRAConfig) def add_lora(model, config)``."""
    name = config_cls.method                              # the dataclass field's default, e.g. "lora"
    if name in METHODS and METHODS[name] is not config_cls:
        raise ValueError(f"peft.register: method {name!r} is already registered by {METHODS[name].__name__}")

    def deco(fn):
        METHODS[name] = config_cls
        ADDERS[config_cls] = fn
        return fn
    return deco


def adder_for(config):
    """The add function registered for ``type(config)``; an unknown config is named."""
    fn = ADDERS.get(type(config))
    if fn is None:
        known = ", ".join(c.__name__ for c in ADDERS)
        raise TypeError(f"peft.add: {type(config).__name__} is not a PEFT method config (registered: {known})")
    return fn


# ---- the modules a method adds ----------------------------------------------------------------
class PeftModule(Module):
    """A module a PEFT method puts into a model.  ``active = False`` makes it compute what the
    base model computes (``disable_adapters``); ``new_parameters()`` are the parameters the method
    adds (those A3 trains) — all of its own, unless it wraps base parameters (LoRA's W0 and b)."""

    active: bool = True

    def new_parameters(self):
        return [p for _, p in self.named_parameters()]


def peft_modules(model: Module):
    """(name, module) of every PEFT module (Adapter, LoRALinear, PrefixEncoder, …) in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PeftModule)]


def configs_of(model: Module):
    """The configs recorded on the model by ``peft.add``, in the order they were applied."""
    return list(getattr(model, "_peft_configs", ()))


# ---- the model's layers -----------------------------------------------------------------------
def layers_of(model: Module):
    """``model.layers()``: the Transformer layers (GPT's blocks, BERT's encoder layers), each with
    an ``adapter_width`` d and the slots adapter_attn / adapter_mlp / adapter_output."""
    layers = list(model.layers()) if hasattr(model, "layers") else []
    if not layers:
        raise TypeError(f"{type(model).__name__} has no Transformer layers to adapt (model.layers() is empty "
                        "or missing: a minilm Model declares them)")
    lacking = [i for i, m in enumerate(layers)
               if not hasattr(m, "adapter_width") or not all(hasattr(m, s) for s in ADAPTER_SLOTS)]
    if lacking:
        raise TypeError(f"{type(model).__name__}: layers {lacking} have no adapter_width or adapter slots "
                        f"{ADAPTER_SLOTS}")
    return layers


def placement_device(model: Module):
    """(device, dtype) of the model's body: where a new PEFT module's parameters must live."""
    w = next(iter(getattr(model, "base_model", model).parameters()))
    return w.device, w.dtype


# ---- freezing (A3) ----------------------------------------------------------------------------
def freeze_base(model: Module, train_also=()) -> Module:
    """A3: min over the new parameters only.  Every parameter gets requires_grad=False except the
    PEFT modules' new ones, the task head (``model.head_patterns``, like PEFT's modules_to_save),
    the ``train_also`` globs of this and of every method recorded before."""
    keep = {id(p) for _, m in peft_modules(model) for p in m.new_parameters()}
    earlier = tuple(p for c in configs_of(model) for p in c.train_also)
    patterns = tuple(getattr(model, "head_patterns", ())) + earlier + tuple(train_also)
    for name, p in model.named_parameters():
        trainable = id(p) in keep or any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        p.requires_grad = trainable
        if not trainable:
            p.grad = None
    return model
