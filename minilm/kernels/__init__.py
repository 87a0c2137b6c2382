"""Fused and compiled kernels behind the ops, jitted with Numba on raw NumPy arrays:

    attention_cpu   a flash-style attention forward and backward for the CPU (BLAS gemm tiles, an
                    online softmax, no T×S score matrix held)
    special         erf(x) = 2/√π ∫₀ˣ exp(−t²) dt, elementwise (float32, float64)

Nothing in the package imports this layer except the op layer: the attention op (``minilm/ops/attention.py``)
and the erf dispatch behind GELU (``minilm/ops/elementwise.py``), and both import it inside the function, on
first use.  Models and modules never call Numba directly, and ``import minilm`` imports no Numba module.
Kernels may import ``minilm.backend`` and ``minilm.strict`` and nothing else from minilm (tests/test_imports.py).
"""
from __future__ import annotations

import os


def _choose_threading_layer():
    """Pick Numba's workqueue threading layer, unless the user chose one; called by each kernel module.

    Numba's default layer (OpenMP where present) keeps its workers spinning after each parallel region,
    where they fight NumPy's BLAS threads for the cores: a GPT training step ran ~2x slower on 2 cores.
    The workqueue layer's workers sleep instead.  (It must not be entered from two Python threads at once.)

    The kernel modules call this when they are first imported, which happens on the first attention or
    erf call, not on ``import minilm``; so importing minilm changes no global setting.  The user's choice
    wins: ``NUMBA_THREADING_LAYER`` in the environment (or in a ``.numba_config.yaml``), or
    ``numba.config.THREADING_LAYER`` set in code to anything but its default ``"default"`` before the first
    kernel call, or a threading layer Numba has already started.  To make the default layer itself the
    choice, set NUMBA_THREADING_LAYER=default.
    """
    import numba
    from numba.np.ufunc import parallel

    if "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default":
        return                                   # chosen by the user
    if getattr(parallel, "_is_initialized", False):
        return                                   # a layer is running already; changing config now is a no-op
    numba.config.THREADING_LAYER = "workqueue"
