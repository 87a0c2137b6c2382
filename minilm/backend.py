"""Array backends: which array module computes for which device.

minilm computes on three devices, each a module with NumPy's interface:

    "cpu"     numpy                                   (always)
    "cuda"    cupy                                    (pip install minilm[gpu])
    "strict"  minilm.strict.xp: numpy arrays wrapped so that they behave like
              device arrays -- they refuse silent conversion to host NumPy,
              refuse to mix with host arrays, and refuse to be handed to a `np.`
              function.  It is a test backend: an op that calls `np.exp(x)`
              instead of `xp.exp(x)` passes on "cpu", fails on "cuda" -- and
              fails on "strict" too, so CI catches it without a GPU
              (see minilm/strict.py).

Every op body asks for ``xp = get_array_module(x)`` and computes through it, so
one body runs on all three.  This file is the only one that imports CuPy (but for
the erf dispatch's cupyx.scipy.special), and it imports nothing from minilm but
minilm.strict.

The few functions that are not spelled the same in NumPy and CuPy (scatter-add,
random numbers, host transfers) live here too; ``erf``, which needs a compiled
kernel on the CPU, is dispatched in the op layer (minilm/ops/elementwise.py),
since kernels sit above this module.
"""
from __future__ import annotations

import numpy as np

from . import strict

try:  # CuPy is optional: the "gpu" extra.
    import cupy as _cupy
except Exception:  # ImportError, or a CuPy without a usable CUDA runtime
    _cupy = None

DEVICES = ("cpu", "cuda", "strict")


# --------------------------------------------------------------------------
# Devices and array modules
# --------------------------------------------------------------------------

_DEVICE_OF_TYPE = {np.ndarray: "cpu", strict.StrictArray: "strict"}
_MODULE_OF_DEVICE = {"cpu": np, "strict": strict.xp}
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
    if isinstance(array, strict.StrictArray):
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
        return strict.StrictArray(host.copy(order="K") if src == "cpu" else host)
    return _cupy.asarray(host)


# --------------------------------------------------------------------------
# Functions that are not spelled the same on every backend
# --------------------------------------------------------------------------

def scatter_add(target, index, values):
    """In place: target[index] += values, adding repeated indices up (unbuffered)."""
    device = device_of(target)
    if device == "cuda":
        import cupyx
        cupyx.scatter_add(target, index, values)
    elif device == "strict":
        np.add.at(target._a, strict.unwrap(index, "scatter_add"), strict.unwrap(values, "scatter_add"))
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
        return strict.StrictArray(host_array) if self.device == "strict" else host_array
