"""Module and Parameter: named trees of parameters, as in PyTorch.

A Module finds its parameters and sub-modules by looking at its own
attributes, in the order they were set, so ``self.c_attn = Linear(...)`` is
all it takes.  Names join with dots (``transformer.h.0.attn.c_attn.weight``),
the names a state_dict and a checkpoint use.
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict

import numpy as np

from .. import backend
from ..tensor import Tensor


class StateDictError(KeyError):
    """A state dict that does not fit the module: lists missing, unexpected and mismatched keys."""

    def __str__(self):
        return str(self.args[0])


class Parameter(Tensor):
    """A tensor that is a learnable weight of a Module (requires_grad by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"


class Module:
    """Base class of layers and models: subclasses set attributes in __init__ and define forward()."""

    training: bool = True

    def __init__(self):
        object.__setattr__(self, "_buffers", OrderedDict())
        self.training = True

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- the tree ------------------------------------------------------------
    def _items(self):
        return vars(self).items()

    def named_children(self):
        for name, value in self._items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = ""):
        """Every module in the tree, depth first, this one first (name "")."""
        stack = [(prefix, self)]
        seen = set()
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{n}" if name else n, c) for n, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(name, Parameter) pairs; a parameter shared by two modules (tied weights) appears once."""
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in modules:
            for name, value in m._items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{mname}.{name}" if mname else name), value

    def parameters(self, recurse: bool = True):
        return (p for _, p in self.named_parameters(recurse=recurse))

    def register_buffer(self, name: str, tensor: Tensor | None):
        """A tensor that belongs to the state (saved, moved with .to) but is not trained."""
        self._buffers[name] = True
        object.__setattr__(self, name, tensor)

    def named_buffers(self, prefix: str = ""):
        for mname, m in self.named_modules(prefix):
            for name in m._buffers:
                value = getattr(m, name)
                if value is not None:
                    yield (f"{mname}.{name}" if mname else name), value

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- state --------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """name -> backend array, for every parameter and buffer (tied weights once)."""
        out = OrderedDict((n, p.data) for n, p in self.named_parameters())
        out.update((n, b.data) for n, b in self.named_buffers())
        return out

    def load_state_dict(self, state, strict: bool = True, cast: bool = False):
        """Copy arrays from ``state`` into this module's parameters and buffers.

        Everything is checked before anything is written: with strict=True a
        missing or unexpected key, and always a shape or dtype mismatch, raises
        one StateDictError that lists them all, and the module is left unchanged.
        An array must have its tensor's dtype; cast=True also lets a float of
        another width in (float64 → float32, rounded), never int ↔ float.
        Returns (missing, unexpected) key lists.
        """
        own = OrderedDict(self.named_parameters())
        own.update(self.named_buffers())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched, wrong_dtype = [], []
        for k, t in own.items():
            if k in state:
                value = state[k].data if isinstance(state[k], Tensor) else state[k]
                value = value if backend.is_array(value) else np.asarray(value)
                if tuple(value.shape) != t.shape:
                    mismatched.append(f"{k}: checkpoint {tuple(value.shape)} vs model {t.shape}")
                dtype = value.dtype
                if dtype != t.dtype and not (cast and dtype.kind == "f" and t.dtype.kind == "f"):
                    wrong_dtype.append(f"{k}: checkpoint {dtype} vs model {t.dtype}")
        if mismatched or wrong_dtype or (strict and (missing or unexpected)):
            lines = []
            if missing:
                lines.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            if mismatched:
                lines.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
            if wrong_dtype:
                lines.append(f"dtype mismatches ({len(wrong_dtype)}): {'; '.join(wrong_dtype)} "
                             "(cast=True converts between float widths; int and float never mix)")
            raise StateDictError(f"load_state_dict into {type(self).__name__} failed; nothing was changed.\n  "
                           + "\n  ".join(lines))
        for k, t in own.items():
            if k in state:
                value = state[k].data if isinstance(state[k], Tensor) else state[k]
                arr = backend.to_device(value if backend.is_array(value) else np.asarray(value), t.device)
                t.data = arr.astype(t.dtype, copy=True)
        return missing, unexpected

    # ---- modes and devices --------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def _select(self, patterns):
        if patterns is None:
            return list(self.named_parameters())
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        chosen = [(n, p) for n, p in self.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
        if not chosen:
            raise KeyError(f"no parameter name matches {patterns}")
        return chosen

    def freeze(self, patterns=None):
        """Stop training the parameters whose names match the glob ``patterns`` (all by default)."""
        for _, p in self._select(patterns):
            p.requires_grad = False
            p.grad = None
        return self

    def unfreeze(self, patterns=None):
        for _, p in self._select(patterns):
            p.requires_grad = True
        return self

    def to(self, device: str | None = None, dtype=None):
        """Move every parameter and buffer to ``device`` and/or cast the floating
        ones to ``dtype`` (in place; returns self)."""
        if device is not None:
            backend.check_device(device)
        if dtype is not None and np.dtype(dtype).kind != "f":
            raise TypeError(f"{type(self).__name__}.to: dtype must be floating (float16, float32 or float64), "
                            f"got {np.dtype(dtype)}; integer or boolean parameters cannot be trained")
        for t in list(self.parameters()) + [b for _, b in self.named_buffers()]:
            if device is not None:
                t.data = backend.to_device(t.data, device)
                if t._grad is not None:
                    t._grad = backend.to_device(t._grad, device)
            if dtype is not None and t.dtype.kind == "f":
                t.data = t.data.astype(dtype)
                t._grad = None
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def apply(self, fn):
        for m in self.modules():
            fn(m)
        return self

    # ---- printing -----------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = []

        def walk(m, name, depth):
            n_own = sum(p.numel() for _, p in m.named_parameters(recurse=False))
            n_all = m.num_parameters()
            head = f"{'  ' * depth}{name + ': ' if name else ''}{type(m).__name__}({m.extra_repr()})"
            count = f"{n_all:,} params" if n_all != n_own or not list(m.children()) else f"{n_own:,} params"
            lines.append(f"{head:<60} {count}")
            for cname, child in m.named_children():
                walk(child, cname, depth + 1)

        walk(self, "", 0)
        total, trainable = self.num_parameters(), self.num_parameters(trainable_only=True)
        lines.append(f"total {total:,} parameters, {trainable:,} trainable")
        return "\n".join(lines)


class Sequential(Module):
    """Modules applied one after another: y = f_n(… f_1(x))."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(self.children())

    def __len__(self):
        return len(list(self.children()))

    def __getitem__(self, i):
        return list(self.children())[i]

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of modules, named "0", "1", ... in the tree."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self)), module)
        return self

    def __len__(self):
        return sum(1 for _ in self.children())

    def __iter__(self):
        return iter(list(self.children()))

    def __getitem__(self, i):
        return list(self.children())[i]


class ModuleDict(Module):
    """Named modules, reached as attributes or with ["name"]."""

    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            setattr(self, k, m)

    def __getitem__(self, key):
        value = vars(self).get(key)
        if not isinstance(value, Module):
            raise KeyError(key)
        return value

    def __setitem__(self, key, module):
        setattr(self, key, module)

    def __contains__(self, key):
        return isinstance(vars(self).get(key), Module)

    def keys(self):
        return [k for k, _ in self.named_children()]

    def items(self):
        return list(self.named_children())

    def values(self):
        return list(self.children())


def functional_call(module: Module, params: dict, *args, **kwargs):
    """Call ``module(*args)`` with some of its parameters replaced by the tensors in
    ``params`` (name -> Tensor), then put the originals back.  Lets a function of
    the parameters be differentiated (or gradient-checked) from the outside."""
    owners = {}
    for mname, m in module.named_modules():
        for attr, value in m._items():
            if isinstance(value, Parameter):
                owners.setdefault(f"{mname}.{attr}" if mname else attr, []).append((m, attr, value))
    unknown = sorted(set(params) - set(owners))
    if unknown:
        raise KeyError(f"functional_call: {type(module).__name__} has no parameters {unknown}")
    swapped = []
    try:
        for name, tensor in params.items():
            for m, attr, original in owners[name]:
                object.__setattr__(m, attr, tensor)
                swapped.append((m, attr, original))
        return module(*args, **kwargs)
    finally:
        for m, attr, original in swapped:
            object.__setattr__(m, attr, original)
