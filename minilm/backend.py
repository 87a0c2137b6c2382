"""Array backends: which array module computes for which device.

minilm computes on three devices, each a module with NumPy's interface:

    "cpu"     numpy                                   (always)
    "cuda"    cupy                                    (pip install minilm[gpu])
    "strict"  numpy arrays wrapped so that they behave like device arrays:
              they refuse silent conversion to host NumPy, refuse to mix with
              host arrays, and refuse to be handed to a `np.` function.  It is a
              test backend: an op that calls `np.exp(x)` instead of `xp.exp(x)`
              passes on "cpu", fails on "cuda" -- and fails on "strict" too, so
              CI catches it without a GPU.

Every op body asks for ``xp = get_array_module(x)`` and computes through it, so
one body runs on all three.  This file is the only one that imports CuPy.

The few functions that are not spelled the same in NumPy and CuPy (``erf``,
scatter-add, random numbers, host transfers) live here too.
"""
from __future__ import annotations

import math
import operator
import types

import numpy as np

try:  # CuPy is optional: the "gpu" extra.
    import cupy as _cupy
except Exception:  # ImportError, or a CuPy without a usable CUDA runtime
    _cupy = None

DEVICES = ("cpu", "cuda", "strict")


# --------------------------------------------------------------------------
# The "strict" device: NumPy arrays that behave like device arrays
# --------------------------------------------------------------------------

class StrictArray:
    """A NumPy array that behaves like a CuPy array (a device array).

    Allowed: its own methods (``x.sum(axis=0)``), Python operators with other
    StrictArrays or Python/NumPy scalars, and the functions of the ``strict``
    array module.  Refused, with a TypeError naming the fault: ``np.asarray(x)``
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
        return _wrap(attr)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __repr__(self):
        return f"StrictArray({self._a!r})"

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, "indexing")])

    def __setitem__(self, index, value):
        self._a[_unwrap(index, "indexing")] = _unwrap(value, "item assignment")

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
        return _wrap(op(self._a, _unwrap(other, f"operator {op.__name__}")))
    return method


def _reflected(op):
    def method(self, other):
        return _wrap(op(_unwrap(other, f"operator {op.__name__}"), self._a))
    return method


def _inplace(op):
    def method(self, other):
        self._a = op(self._a, _unwrap(other, f"operator {op.__name__}"))
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
    setattr(StrictArray, f"__{_name}__", (lambda op: lambda self: _wrap(op(self._a)))(getattr(operator, _name)))


def _unwrap(obj, where):
    """StrictArray -> its ndarray; refuse host ndarrays; recurse into containers."""
    if isinstance(obj, StrictArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        raise TypeError(
            f"a host numpy.ndarray of shape {obj.shape} was mixed with a 'strict' device "
            f"array in {where}; move it to the device first (minilm.backend.to_device)")
    if isinstance(obj, tuple):
        return tuple(_unwrap(o, where) for o in obj)
    if isinstance(obj, list):
        return [_unwrap(o, where) for o in obj]
    if isinstance(obj, dict):
        return {k: _unwrap(v, where) for k, v in obj.items()}
    return obj


def _wrap(obj):
    """ndarray -> StrictArray (NumPy scalars become 0-d arrays, as CuPy returns)."""
    if isinstance(obj, np.ndarray):
        return StrictArray(obj)
    if isinstance(obj, np.generic) and not isinstance(obj, np.dtype):
        return StrictArray(np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
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
            args = _unwrap(args, self._name)
            kwargs = _unwrap(kwargs, self._name)
        return _wrap(self._f(*args, **kwargs))

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


strict = _StrictModule()


# --------------------------------------------------------------------------
# Devices and array modules
# --------------------------------------------------------------------------

_DEVICE_OF_TYPE = {np.ndarray: "cpu", StrictArray: "strict"}
_MODULE_OF_DEVICE = {"cpu": np, "strict": strict}
if _cupy is not None:
    _DEVICE_OF_TYPE[_cupy.ndarray] = "cuda"
    _MODULE_OF_DEVICE["cuda"] = _cupy


def cuda_available() -> bool:
    """True when CuPy is installed and sees at least one GPU."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def check_device(device) -> str:
    """Validate a device name and return it; "cuda" needs CuPy."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; minilm knows {', '.join(map(repr, DEVICES))}")
    if device == "cuda" and _cupy is None:
        raise RuntimeError("CuPy is not installed; pip install minilm[gpu]")
    return device


def xp_for(device: str):
    """The array module that computes on ``device``."""
    return _MODULE_OF_DEVICE[check_device(device)]


def device_of(array) -> str:
    """The device an array lives on: "cpu", "cuda" or "strict"."""
    try:
        return _DEVICE_OF_TYPE[type(array)]
    except KeyError:
        if isinstance(array, (np.ndarray, np.generic)):  # np.memmap; scalars from 0-d math
            return "cpu"
        raise TypeError(f"{type(array).__name__} is not an array minilm knows") from None


def get_array_module(array):
    """NumPy, CuPy or the strict module: whichever computes on ``array``'s device."""
    return _MODULE_OF_DEVICE[device_of(array)]


def is_array(obj) -> bool:
    return type(obj) in _DEVICE_OF_TYPE or isinstance(obj, np.ndarray)


def to_numpy(array) -> np.ndarray:
    """Copy (or view, on "cpu") an array of any device as a host NumPy array."""
    if isinstance(array, np.ndarray):
        return array
    if isinstance(array, StrictArray):
        return array._a.copy()
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_device(array, device: str):
    """Move an array to ``device`` (an explicit copy between devices)."""
    check_device(device)
    src = device_of(array)
    if src == device:
        return array
    host = to_numpy(array)
    if device == "cpu":
        return host
    if device == "strict":
        return StrictArray(host.copy(order="K") if src == "cpu" else host)
    return _cupy.asarray(host)


# --------------------------------------------------------------------------
# Functions that are not spelled the same on every backend
# --------------------------------------------------------------------------

_erf_cpu = None


def erf(x):
    """The error function, elementwise: erf(x) = 2/√π ∫₀ˣ exp(-t²) dt."""
    global _erf_cpu
    device = device_of(x)
    if device == "cuda":
        import cupyx.scipy.special
        return cupyx.scipy.special.erf(x)
    if _erf_cpu is None:  # compiled on first use, cached on disk afterwards
        import numba

        @numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
        def _erf(v):
            return math.erf(v)
        _erf_cpu = _erf
    if device == "strict":
        return StrictArray(_erf_cpu(x._a))
    return _erf_cpu(x)


def scatter_add(target, index, values):
    """In place: target[index] += values, adding repeated indices up (unbuffered)."""
    device = device_of(target)
    if device == "cuda":
        import cupyx
        cupyx.scatter_add(target, index, values)
    elif device == "strict":
        np.add.at(target._a, _unwrap(index, "scatter_add"), _unwrap(values, "scatter_add"))
    else:
        np.add.at(target, index, values)
    return target


class DeviceRandom:
    """Random numbers on one device, seeded from a host generator.

    "cpu" and "strict" draw from the host ``numpy.random.Generator`` itself, so
    the same seed gives the same numbers on both; "cuda" draws on the GPU from a
    CuPy RandomState seeded once from the host generator.
    """

    def __init__(self, host: np.random.Generator, device: str):
        self.host, self.device = host, device
        self._gpu = None
        if device == "cuda":
            self._gpu = _cupy.random.RandomState(int(host.integers(2**63 - 1)))

    def normal(self, shape, dtype):
        if self._gpu is not None:
            return self._gpu.standard_normal(shape, dtype=dtype)
        return self._to(self.host.standard_normal(shape, dtype=np.float64).astype(dtype, copy=False))

    def uniform(self, shape, dtype):
        if self._gpu is not None:
            return self._gpu.random_sample(shape, dtype=dtype)
        return self._to(self.host.random(shape, dtype=np.float64).astype(dtype, copy=False))

    def _to(self, host_array):
        return StrictArray(host_array) if self.device == "strict" else host_array
