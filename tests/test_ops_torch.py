"""Every op in minilm.functional against PyTorch: the same forward values and
the same gradients for a random upstream gradient, in float64, on every device
(minilm's side runs on the device; PyTorch on the CPU)."""
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import minilm.functional as F
from conftest import DEVICE_PARAMS
from helpers import host, to_tensor
from opspecs import SPECS, call_kwargs

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
@SETTINGS
@given(data=st.data())
def test_matches_torch(spec, device, data):
    case = spec.draw(data)
    kwargs = call_kwargs(spec, case, device)
    ours, theirs = [], []
    for a, diff in zip(case.arrays, case.diff):
        a = a.astype(np.float64) if diff else a
        ours.append(to_tensor(a, device, requires_grad=diff, noncontiguous=diff and data.draw(st.booleans())))
        t = torch.from_numpy(np.array(a))
        theirs.append(t.requires_grad_() if diff else t)
    y = spec.fn(*ours, **kwargs)
    ty = spec.torch(*theirs, **kwargs)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12,
                               err_msg=f"{spec.id}: forward differs from PyTorch")
    g = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(to_tensor(g, device))
    ty.backward(torch.from_numpy(g))
    for i, (x, tx, diff) in enumerate(zip(ours, theirs, case.diff)):
        if not diff:
            assert x.grad is None
            continue
        expected = tx.grad.numpy() if tx.grad is not None else np.zeros(tx.shape)
        np.testing.assert_allclose(host(x.grad), expected, rtol=1e-9, atol=1e-11,
                                   err_msg=f"{spec.id}: gradient of input {i} differs from PyTorch")


def test_every_public_op_is_compared_with_torch():
    covered = {s.op for s in SPECS if s.torch is not None}
    missing = sorted(set(F.__all__) - covered)
    assert not missing, f"ops in minilm.functional without a PyTorch comparison in tests/opspecs.py: {missing}"


def test_float32_matches_torch_in_float32():
    """float32 stays float32 end to end and agrees with PyTorch's float32."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    w = rng.standard_normal((16, 5)).astype(np.float32)
    t = rng.integers(0, 5, size=8)
    mx, mw = to_tensor(x, "cpu", True), to_tensor(w, "cpu", True)
    loss = F.cross_entropy(F.layer_norm(F.gelu(mx @ mw, approximate="tanh")), to_tensor(t, "cpu"))
    loss.backward()
    tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    tl = torch.nn.functional.cross_entropy(
        torch.nn.functional.layer_norm(torch.nn.functional.gelu(tx @ tw, approximate="tanh"), (5,)),
        torch.from_numpy(t))
    tl.backward()
    assert loss.dtype == np.float32 and mx.grad.dtype == np.float32 and mw.grad.dtype == np.float32
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-5)
    np.testing.assert_allclose(mx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mw.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_max_with_ties_shares_the_gradient_like_amax():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    mx = to_tensor(x, "cpu", True)
    tx = torch.from_numpy(x).requires_grad_()
    F.max(mx, axis=1).sum().backward()
    torch.amax(tx, dim=1).sum().backward()
    np.testing.assert_allclose(mx.grad.numpy(), tx.grad.numpy())
    np.testing.assert_allclose(mx.grad.numpy()[2], [1 / 3] * 3)
