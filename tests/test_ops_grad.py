"""Every op in minilm.functional, gradient-checked in float64 on every device.

Shapes, axes and options are drawn by hypothesis (including broadcasting,
size-1 dims and 0-d tensors); each differentiable input may also be a
non-contiguous (transposed) view.
"""
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import minilm
import minilm.functional as F
from conftest import DEVICE_PARAMS
from helpers import to_tensor
from opspecs import SPECS, call_kwargs

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def build(case, device, data):
    tensors = []
    for a, diff in zip(case.arrays, case.diff):
        noncontig = diff and np.ndim(a) >= 2 and data.draw(st.booleans(), label="non-contiguous")
        tensors.append(to_tensor(a.astype(np.float64) if diff else a, device, requires_grad=diff,
                                 noncontiguous=noncontig))
    return tensors


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
@SETTINGS
@given(data=st.data())
def test_gradcheck(spec, device, data):
    case = spec.draw(data)
    kwargs = call_kwargs(spec, case, device)
    tensors = build(case, device, data)
    out = spec.fn(*tensors, **kwargs)
    assert out.device == device
    minilm.gradcheck(lambda *xs: spec.fn(*xs, **kwargs), tensors)


def test_every_public_op_is_gradchecked():
    covered = {s.op for s in SPECS}
    missing = sorted(set(F.__all__) - covered)
    assert not missing, f"ops in minilm.functional without a gradient-check row in tests/opspecs.py: {missing}"


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_large_inputs_use_random_directions(device):
    """Shapes past gradcheck's full-Jacobian limit go through the vᵀJu check."""
    rng = np.random.default_rng(0)
    x = to_tensor(rng.standard_normal((6, 40, 32)), device, requires_grad=True, noncontiguous=True)
    w = to_tensor(rng.standard_normal((32, 48)), device, requires_grad=True)
    b = to_tensor(rng.standard_normal(48), device, requires_grad=True)
    minilm.gradcheck(lambda x, w, b: F.log_softmax(F.gelu(x @ w + b), axis=-1), [x, w, b])
    ids = to_tensor(rng.integers(0, 50, size=(4, 16)), device)
    emb = to_tensor(rng.standard_normal((50, 24)), device, requires_grad=True)
    g = to_tensor(rng.standard_normal(24), device, requires_grad=True)
    minilm.gradcheck(lambda e, g: F.layer_norm(F.embedding(ids, e), g), [emb, g])

