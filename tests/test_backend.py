"""The backends: one switch, and a strict CPU device that behaves like a GPU."""
import numpy as np
import pytest

import minilm
from minilm import backend, strict
from minilm.ops.elementwise import erf


def test_strict_arrays_refuse_silent_host_conversion():
    x = backend.to_device(np.arange(3.0), "strict")
    with pytest.raises(TypeError, match="implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="numpy.exp was called"):
        np.exp(x)
    with pytest.raises(TypeError, match="numpy.concatenate was called"):
        np.concatenate([x, x])
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        x + np.ones(3)
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        strict.xp.maximum(x, np.ones(3))


def test_strict_arrays_work_through_their_module_and_methods():
    xp = strict.xp
    x = xp.asarray(np.arange(6.0).reshape(2, 3))
    y = xp.exp(x).sum(axis=0) + 1.0
    assert isinstance(y, strict.StrictArray)
    np.testing.assert_allclose(backend.to_numpy(y), np.exp(np.arange(6.0).reshape(2, 3)).sum(0) + 1)
    assert isinstance(x.sum(), strict.StrictArray)  # reductions give 0-d device arrays, as CuPy
    assert xp.float32 is np.float32 and xp.ndarray is strict.StrictArray


def test_a_stray_numpy_call_in_an_op_fails_on_strict_but_not_on_cpu():
    class Careless(minilm.Function):
        def forward(ctx, x):
            return np.exp(x)            # should be get_array_module(x).exp(x)

        def backward(ctx, g):
            return (g,)

    Careless.apply(minilm.ones(2))
    with pytest.raises(TypeError, match="numpy.exp was called on a 'strict' device array"):
        Careless.apply(minilm.ones(2, device="strict"))


def test_get_array_module_and_device_of():
    assert backend.get_array_module(np.ones(2)) is np
    s = backend.to_device(np.ones(2), "strict")
    assert backend.get_array_module(s) is strict.xp
    assert backend.device_of(s) == "strict"
    assert backend.xp_for("cpu") is np


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        minilm.zeros(2, device="tpu")


@pytest.mark.skipif(backend._cupy is not None, reason="CuPy is installed here")
def test_cuda_without_cupy_says_how_to_get_it():
    with pytest.raises(RuntimeError, match=r"CuPy is not installed; pip install minilm\[gpu\]"):
        minilm.zeros(2, device="cuda")
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        minilm.ones(2).to("cuda")


def test_erf_matches_math_erf():
    import math
    x = np.linspace(-4, 4, 33)
    np.testing.assert_allclose(erf(x), [math.erf(v) for v in x], rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(backend.to_numpy(erf(backend.to_device(x, "strict"))), erf(x))
    assert erf(x.astype(np.float32)).dtype == np.float32
