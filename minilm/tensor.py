"""Tensor: an array, the gradient it collects, and the node that made it.

Reverse-mode autograd in one paragraph.  Every op that involves a tensor with
``requires_grad`` records a Function node (``tensor._ctx``) holding its inputs
(``ctx.parents``) and whatever arrays its derivative needs.  ``loss.backward()``
orders the graph topologically (iteratively, so a 10,000-op chain is fine) and
walks it from the loss back to the leaves, handing each node g = ∂L/∂output and
collecting ∂L/∂input = its vector-Jacobian product.  Gradients that reach a
tensor along several paths are summed; leaves add what arrives into ``.grad``.
"""
from __future__ import annotations

import threading

import numpy as np

from . import backend
from .backend import check_device, device_of, is_array, to_device, to_numpy, xp_for

float16 = np.dtype("float16")
float32 = np.dtype("float32")
float64 = np.dtype("float64")
int32 = np.dtype("int32")
int64 = np.dtype("int64")
bool_ = np.dtype("bool")


class _State(threading.local):
    grad_enabled = True


_state = _State()


class no_grad:
    """Context manager (and decorator) under which ops record no graph."""

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = False

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


class enable_grad(no_grad):
    """Context manager that turns graph recording back on inside ``no_grad``."""

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = True


def is_grad_enabled() -> bool:
    return _state.grad_enabled


def _is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


class Tensor:
    """An n-dimensional array on a device, with reverse-mode autograd.

    ``Tensor(array)`` wraps a backend array without copying; ``minilm.tensor``
    builds one from Python data (copying).  ``.data`` is the backend array.
    """

    __slots__ = ("data", "requires_grad", "_ctx", "_grad", "_retain_grad", "__weakref__")
    __array_ufunc__ = None  # numpy defers to Tensor's reflected operators: ndarray + Tensor -> Tensor

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, np.generic):  # NumPy returns scalars from 0-d arithmetic
            data = np.asarray(data)
        if not is_array(data):
            raise TypeError(f"Tensor() wraps a backend array; got {type(data).__name__} "
                            "(use minilm.tensor(data) to build one from Python data)")
        self.data = data
        self._ctx = None
        self._grad = None
        self._retain_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, data, requires_grad, ctx):
        """Fast constructor used by ops: no checks."""
        t = object.__new__(cls)
        if not is_array(data):  # NumPy reductions return scalars; keep arrays everywhere
            data = np.asarray(data)
        t.data = data
        t.requires_grad = requires_grad
        t._ctx = ctx
        t._grad = None
        t._retain_grad = False
        return t

    # ---- what it is -------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    device = property(lambda self: device_of(self.data))
    is_leaf = property(lambda self: self._ctx is None)
    grad_fn = property(lambda self: self._ctx)

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    @property
    def grad(self):
        """∂L/∂self accumulated by backward(), as a Tensor (None until then)."""
        return None if self._grad is None else Tensor._make(self._grad, False, None)

    @grad.setter
    def grad(self, value):
        if value is None:
            self._grad = None
            return
        arr = value.data if isinstance(value, Tensor) else value
        if tuple(arr.shape) != self.shape:
            raise ValueError(f"grad of shape {tuple(arr.shape)} assigned to a tensor of shape {self.shape}")
        self._grad = arr

    def requires_grad_(self, requires_grad: bool = True):
        if self._ctx is not None:
            raise RuntimeError("requires_grad_ can only change leaf tensors; "
                               "use .detach() to make a new leaf from this result")
        if requires_grad and not _is_float(self.dtype):
            raise TypeError(f"only floating-point tensors can require gradients; this one is {self.dtype}")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self):
        """Keep ∂L/∂self in ``.grad`` after backward even though this is not a leaf."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        self._retain_grad = True
        return self

    def detach(self):
        """The same array as a new leaf, cut off from the graph (no copy)."""
        return Tensor._make(self.data, False, None)

    def numpy(self) -> np.ndarray:
        """The values as a host NumPy array (shares memory on "cpu", copies otherwise)."""
        return to_numpy(self.data)

    def __array__(self, dtype=None, copy=None):
        arr = self.data if isinstance(self.data, np.ndarray) else np.asarray(self.data)
        return arr if dtype is None else arr.astype(dtype)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with exactly one element; this one has shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return to_numpy(self.data).tolist()

    def to(self, device=None, dtype=None):
        """A copy on ``device`` and/or cast to ``dtype`` (differentiable)."""
        out = self
        if device is not None and check_device(device) != self.device:
            out = F.to_device(out, device)
        if dtype is not None and np.dtype(dtype) != self.dtype:
            out = F.astype(out, dtype)
        return out

    def astype(self, dtype):
        return self if np.dtype(dtype) == self.dtype else F.astype(self, dtype)

    def float(self):
        return self.astype(float32)

    def double(self):
        return self.astype(float64)

    def long(self):
        return self.astype(int64)

    def cpu(self):
        return self.to("cpu")

    def __repr__(self):
        body = np.array2string(to_numpy(self.data), separator=", ", prefix="tensor(", precision=4)
        extras = []
        if self.dtype != float32 and self.dtype != int64 and self.dtype != bool_:
            extras.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extras.append(f"device={self.device!r}")
        if self._ctx is not None:
            extras.append(f"grad_fn=<{type(self._ctx).__name__}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return f"tensor({body}{', ' if extras else ''}{', '.join(extras)})"

    # ---- autograd ---------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False):
        """Accumulate ∂self/∂leaf (times ``grad``) into every leaf's ``.grad``.

        ``grad`` is g = ∂L/∂self; it may be omitted only for a one-element
        tensor (then g = 1).  The saved arrays of the graph are freed as the
        walk passes them unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input of the "
                               "ops that made it has requires_grad=True (or it was made under no_grad)")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without grad= works only on a one-element tensor (a scalar loss); "
                    f"this one has shape {self.shape}. Pass grad= of that shape, or reduce it first "
                    "(e.g. loss.sum().backward())")
            g = xp.ones(self.data.shape, dtype=self.dtype)
        else:
            g = grad.data if isinstance(grad, Tensor) else grad
            if not is_array(g):
                g = xp.asarray(np.asarray(g, dtype=self.dtype))
            if tuple(g.shape) != self.shape:
                raise ValueError(f"backward(grad=...) got grad of shape {tuple(g.shape)} for a tensor of shape {self.shape}")
            if device_of(g) != self.device:
                raise RuntimeError(f"backward(grad=...) got grad on {device_of(g)!r} for a tensor on {self.device!r}")
            if g.dtype != self.dtype:
                g = g.astype(self.dtype)
        _run_backward(self, g, retain_graph)


def _topological_order(root):
    """Tensors that lead to ``root`` (and need grad), inputs before outputs; no recursion."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        ctx = t._ctx
        if ctx is None:
            continue
        if ctx.freed:
            raise RuntimeError(
                f"trying to backward through the graph a second time: the arrays saved by "
                f"{type(ctx).__name__} were freed after the first backward(). "
                "Call backward(retain_graph=True) the first time if you need to backward twice.")
        for p in ctx.parents:
            if isinstance(p, Tensor) and p.requires_grad and id(p) not in visited:
                stack.append((p, False))
    return order


def _run_backward(root, g, retain_graph):
    order = _topological_order(root)
    grads = {id(root): g}
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        ctx = t._ctx
        if ctx is None or t._retain_grad:  # a leaf, or asked to keep it
            if t._grad is None:
                t._grad = g.copy()  # own it: g may be shared with other branches
            else:
                t._grad = t._grad + g
        if ctx is None:
            continue
        in_grads = ctx.backward(g)
        if isinstance(in_grads, list):
            in_grads = tuple(in_grads)
        elif not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for i, (p, pg) in enumerate(zip(ctx.parents, in_grads)):
            if pg is None or not isinstance(p, Tensor) or not p.requires_grad:
                continue
            if isinstance(pg, np.generic):  # 0-d NumPy math returns scalars
                pg = np.asarray(pg)
            if pg.shape != p.data.shape:
                raise RuntimeError(f"{type(ctx).__name__}.backward returned a gradient of shape "
                                   f"{tuple(pg.shape)} for input {i} of shape {p.shape} (a bug in that op)")
            if pg.dtype != p.data.dtype:
                pg = pg.astype(p.data.dtype)
            k = id(p)
            prev = grads.get(k)
            grads[k] = pg if prev is None else prev + pg
        if not retain_graph:
            ctx.release()


# ---- making tensors ----------------------------------------------------------

def tensor(data, requires_grad: bool = False, dtype=None, device: str = "cpu") -> Tensor:
    """A new tensor holding a copy of ``data`` (Python numbers, lists, arrays, tensors).

    Python floats become float32 (as in PyTorch), Python ints int64; NumPy
    arrays keep their dtype unless ``dtype`` is given.
    """
    check_device(device)
    if isinstance(data, Tensor):
        data = data.data
    if is_array(data):
        src = device_of(data)
        xp = xp_for(src)
        arr = xp.array(data, dtype=dtype, copy=True)
        arr = to_device(arr, device)
    else:
        host = np.array(data, dtype=dtype)
        if dtype is None and host.dtype == np.float64 and not isinstance(data, np.generic):
            host = host.astype(np.float32)
        if host.dtype == object:
            raise TypeError(f"cannot make a tensor from {type(data).__name__} holding ragged or non-numeric data")
        arr = to_device(host, device)
    return Tensor(arr, requires_grad=requires_grad)


class Generator:
    """A seedable source of random numbers for every device (NumPy's PCG64 underneath)."""

    def __init__(self, seed=None):
        self.manual_seed(seed)

    def manual_seed(self, seed):
        self.seed = seed
        self.host = np.random.default_rng(seed)
        self._per_device = {}
        return self

    def on(self, device):
        rng = self._per_device.get(device)
        if rng is None:
            rng = self._per_device[device] = backend.DeviceRandom(self.host, check_device(device))
        return rng


default_generator = Generator()


def manual_seed(seed):
    """Reseed the default generator (for randn, dropout, ... called without generator=)."""
    return default_generator.manual_seed(seed)


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(n) for n in shape)


def zeros(*shape, dtype=float32, device="cpu", requires_grad=False) -> Tensor:
    return Tensor(xp_for(device).zeros(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=float32, device="cpu", requires_grad=False) -> Tensor:
    return Tensor(xp_for(device).ones(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def zeros_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return zeros(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return ones(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def randn(*shape, generator: Generator | None = None, dtype=float32, device="cpu",
          requires_grad=False) -> Tensor:
    """Samples of N(0, 1)."""
    gen = generator or default_generator
    return Tensor(gen.on(device).normal(_shape(shape), np.dtype(dtype)), requires_grad=requires_grad)


def rand(*shape, generator: Generator | None = None, dtype=float32, device="cpu",
         requires_grad=False) -> Tensor:
    """Samples of U[0, 1)."""
    gen = generator or default_generator
    return Tensor(gen.on(device).uniform(_shape(shape), np.dtype(dtype)), requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device="cpu") -> Tensor:
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = int64 if all(isinstance(v, (int, np.integer)) for v in (start, stop, step)) else float32
    return Tensor(xp_for(device).arange(start, stop, step, dtype=dtype))


# The one import cycle in minilm, on purpose: Tensor's operators (a + b, a @ b, x.sum()) are the
# functional ops, and functional.py needs the Tensor class.  functional imports Tensor from this
# module, which is complete by now; this import at the bottom then binds F for the methods.
from . import functional as F  # noqa: E402


def _binary(fn, reflected=False):
    if reflected:
        return lambda self, other: fn(other, self)
    return lambda self, other: fn(self, other)


Tensor.__add__, Tensor.__radd__ = _binary(F.add), _binary(F.add, True)
Tensor.__sub__, Tensor.__rsub__ = _binary(F.sub), _binary(F.sub, True)
Tensor.__mul__, Tensor.__rmul__ = _binary(F.mul), _binary(F.mul, True)
Tensor.__truediv__, Tensor.__rtruediv__ = _binary(F.div), _binary(F.div, True)
Tensor.__matmul__, Tensor.__rmatmul__ = _binary(F.matmul), _binary(F.matmul, True)
Tensor.__pow__, Tensor.__rpow__ = _binary(F.pow), _binary(F.pow, True)
Tensor.__neg__ = lambda self: F.neg(self)
Tensor.__abs__ = lambda self: F.abs(self)
Tensor.__getitem__ = lambda self, index: F.getitem(self, index)


def _compare(op):
    def method(self, other):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._make(op(self.data, other), False, None)
    return method


import operator as _operator  # noqa: E402

for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Tensor, f"__{_name}__", _compare(getattr(_operator, _name)))
Tensor.__hash__ = object.__hash__


def _bool(self):
    if self.data.size != 1:
        raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous; use .any() or .all()")
    return bool(self.data.item())


Tensor.__bool__ = _bool

# Methods that mirror the functional API, so x.sum(axis=1) reads like NumPy.
for _name in ("sum", "mean", "max", "var", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs",
              "softmax", "log_softmax", "logsumexp", "swapaxes", "broadcast_to", "masked_fill"):
    setattr(Tensor, _name, getattr(F, _name))
Tensor.reshape = lambda self, *shape: F.reshape(self, _shape(shape))
Tensor.permute = lambda self, *axes: F.permute(self, _shape(axes))
Tensor.transpose = lambda self, *axes: F.transpose(self, _shape(axes) if axes else None)
Tensor.T = property(lambda self: F.transpose(self))
Tensor.any = lambda self, axis=None: Tensor._make(self.data.any(axis=axis), False, None)
Tensor.all = lambda self, axis=None: Tensor._make(self.data.all(axis=axis), False, None)
Tensor.argmax = lambda self, axis=None: Tensor._make(self.data.argmax(axis=axis), False, None)
