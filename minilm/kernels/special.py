"""Special functions on the CPU that NumPy lacks, as Numba ufuncs on raw NumPy arrays.

    erf(x) = 2/√π ∫₀ˣ exp(−t²) dt        elementwise, float32 → float32, float64 → float64

NumPy has no erf; the kernel is ``math.erf`` per element, vectorised by
Numba.  It is compiled on the first call, not on import, and cached on disk
(``cache=True``), so only the first process pays for the compilation.  Devices are dispatched in the op layer
(``minilm.ops.elementwise.erf``); this module sees host NumPy arrays only.
"""
from __future__ import annotations

import math

import numba

from . import _choose_threading_layer

# Not parallel itself, but this may be the first kernel module a process imports (GELU
# before any attention): choose the threading layer before anyone starts one.
_choose_threading_layer()

_erf_ufunc = None


def _erf_scalar(v):
    return math.erf(v)


def erf(x):
    """erf(x) elementwise for a float32 or float64 NumPy array (or scalar); the dtype is kept."""
    global _erf_ufunc
    if _erf_ufunc is None:                   # compiled on first use, loaded from the disk cache afterwards
        _erf_ufunc = numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)(_erf_scalar)
    return _erf_ufunc(x)
