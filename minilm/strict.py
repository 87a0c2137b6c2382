"""The "strict" device: a CPU device that refuses silent host copies.

An op written against the array-module interface (``xp = get_array_module(x)``,
then ``xp.exp(x)``) runs on NumPy and on CuPy alike.  An op that slips and calls
``np.exp(x)`` still passes every test on "cpu" -- and fails on "cuda", where
CuPy refuses implicit conversion to a host array.  CI without a GPU would never
see it.  The "strict" device closes that gap: its arrays are NumPy arrays
wrapped (``StrictArray``) so that they behave like device arrays.

    allowed   x.sum(axis=0), x + 1.0, x @ y           (y strict too)
              xp.exp(x)                              (xp = strict.xp, the array module)
              xp.asarray(host), x.get()              (explicit transfers)
    refused   np.asarray(x), np.exp(x), np.<f>(x)    (TypeError: a silent host copy)
              x + host_ndarray                       (TypeError: mixing devices)

so an op that passes on "strict" computes on the device it is given.  It is a
test backend: its arithmetic is NumPy's, at NumPy's speed plus a wrapper call.

This module knows nothing about the other devices; ``minilm.backend`` maps the
device name "strict" to ``xp`` and ``StrictArray`` (the dependency points one
way: backend -> strict).
"""
from __future__ import annotations

import operator
import types

import numpy as np


class StrictArray:
    """A NumPy array that behaves like a CuPy array (a device array).

    Allowed: its own methods (``x.sum(axis=0)``), Python operators with other
    StrictArrays or Python/NumPy scalars, and the functions of the array
    module ``xp``.  Refused, with a TypeError naming the fault: ``np.asarray(x)``
    and other implicit host conversion, ``np.<func>(x)``, and mixing with a host
    ``np.ndarray``.  ``x.get()`` copies to host explicitly, as in CuPy.
    """

    __slots__ = ("_a",)
    __array_priority__ = 1000

    def __init__(self, a):
        if not isinstance(a, np.ndarray):
            a = np.asarray(a)
        self._a = a

    # --- refusing the host ---
    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "implicit conversion of a 'strict' device array to a NumPy array is not "
            "allowed (CuPy refuses it too); use minilm.backend.to_numpy(x) or x.get()")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(
            f"numpy.{ufunc.__name__} was called on a 'strict' device array; an op must "
            "compute with xp = minilm.backend.get_array_module(x), not with numpy")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(
            f"numpy.{func.__name__} was called on a 'strict' device array; an op must "
            "compute with xp = minilm.backend.get_array_module(x), not with numpy")

    def get(self):
        """Explicit copy to host, as ``cupy.ndarray.get``."""
        return self._a.copy()

    # --- array attributes ---
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: StrictArray(self._a.T))

    def __getattr__(self, name):  # methods: x.sum(), x.reshape(), x.astype() ...
        if name.startswith("__"):  # __array_interface__ & co. would let NumPy read the host memory
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return _StrictCallable(attr, f"ndarray.{name}")
        return wrap(attr)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (wrap(row) for row in self._a)

    def __repr__(self):
        return f"StrictArray({self._a!r})"

    def __getitem__(self, index):
        return wrap(self._a[unwrap(index, "indexing")])

    def __setitem__(self, index, value):
        self._a[unwrap(index, "indexing")] = unwrap(value, "item assignment")

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return operator.index(self._a)

    __hash__ = None


def _binary(op):
    def method(self, other):
        return wrap(op(self._a, unwrap(other, f"operator {op.__name__}")))
    return method


def _reflected(op):
    def method(self, other):
        return wrap(op(unwrap(other, f"operator {op.__name__}"), self._a))
    return method


def _inplace(op):
    def method(self, other):
        self._a = op(self._a, unwrap(other, f"operator {op.__name__}"))
        return self
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
              "and", "or", "xor", "lt", "le", "gt", "ge", "eq", "ne"):
    _op = getattr(operator, _name + "_") if _name in ("and", "or") else getattr(operator, _name)
    setattr(StrictArray, f"__{_name}__", _binary(_op))
    if _name not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(StrictArray, f"__r{_name}__", _reflected(_op))
        setattr(StrictArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_name}__", (lambda op: lambda self: wrap(op(self._a)))(getattr(operator, _name)))


def unwrap(obj, where):
    """StrictArray -> its ndarray; refuse host ndarrays; recurse into containers."""
    if isinstance(obj, StrictArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        raise TypeError(
            f"a host numpy.ndarray of shape {obj.shape} was mixed with a 'strict' device "
            f"array in {where}; move it to the device first (minilm.backend.to_device)")
    if isinstance(obj, tuple):
        return tuple(unwrap(o, where) for o in obj)
    if isinstance(obj, list):
        return [unwrap(o, where) for o in obj]
    if isinstance(obj, dict):
        return {k: unwrap(v, where) for k, v in obj.items()}
    return obj


def wrap(obj):
    """ndarray -> StrictArray (NumPy scalars become 0-d arrays, as CuPy returns)."""
    if isinstance(obj, np.ndarray):
        return StrictArray(obj)
    if isinstance(obj, np.generic) and not isinstance(obj, np.dtype):
        return StrictArray(np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(wrap(o) for o in obj)
    if isinstance(obj, list):
        return [wrap(o) for o in obj]
    return obj


class _StrictCallable:
    """A NumPy function (or ufunc, or method) that takes and returns StrictArrays."""

    __slots__ = ("_f", "_name", "_host_ok")

    def __init__(self, f, name, host_ok=False):
        self._f, self._name, self._host_ok = f, name, host_ok

    def __call__(self, *args, **kwargs):
        if self._host_ok:  # xp.asarray(host_array) is an explicit transfer
            args = tuple(a._a if isinstance(a, StrictArray) else a for a in args)
        else:
            args = unwrap(args, self._name)
            kwargs = unwrap(kwargs, self._name)
        return wrap(self._f(*args, **kwargs))

    def __getattr__(self, name):  # ufunc methods: xp.add.at, xp.maximum.reduce
        return _StrictCallable(getattr(self._f, name), f"{self._name}.{name}")


class _StrictModule:
    """The array module of the "strict" device: NumPy's namespace, strictly wrapped."""

    _HOST_OK = {"asarray", "array", "ascontiguousarray"}

    def __init__(self, mod=np, prefix="strict"):
        self._mod, self._prefix, self._cache = mod, prefix, {}
        self.ndarray = StrictArray

    def __getattr__(self, name):
        try:
            return self._cache[name]
        except KeyError:
            pass
        attr = getattr(self._mod, name)
        if isinstance(attr, types.ModuleType):
            out = _StrictModule(attr, f"{self._prefix}.{name}")
        elif isinstance(attr, type) or not callable(attr):  # dtypes, constants
            out = attr
        else:
            out = _StrictCallable(attr, f"{self._prefix}.{name}", host_ok=name in self._HOST_OK)
        self._cache[name] = out
        return out

    def __repr__(self):
        return "<array module 'strict' (numpy arrays behaving as device arrays)>"


#: The array module of the "strict" device (what ``xp_for("strict")`` returns).
xp = _StrictModule()
