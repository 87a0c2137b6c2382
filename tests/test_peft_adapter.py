"""minilm.peft.adapter: the Adapter module (Eqs. A1–A2) and where add_adapters puts it.

Gradient checks, the forward pass against the equations in NumPy, the placements in a
block, parameter counts and the bottleneck size.  (Adapters on every model family, freezing,
saving: test_peft_core.py.)"""
import numpy as np
import pytest

import minilm
from helpers import host, randomize, to_tensor
from minilm import peft
from peft_cases import D, L, base_gpt


@pytest.mark.parametrize("init_method", ["near_identity", "xavier", "normal"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_adapter_gradcheck(init_method, activation, device):
    a = peft.Adapter(6, r=3, activation=activation, init_method=init_method,
                     generator=minilm.Generator(0)).double().to(device)
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 3, 6)), device, requires_grad=True)
    minilm.gradcheck_module(a, [x])
    if init_method == "near_identity":       # W2 = 0 hides ∂L/∂W1 and ∂L/∂b1: check again with W2 ≠ 0
        assert not np.any(host(a.W2)) and not np.any(host(a.b2))
        randomize(a, seed=1, scale=0.5, only="W2")
        minilm.gradcheck_module(a, [x])


def test_adapter_forward_is_eq_a1_a2(device):
    a = peft.Adapter(6, r=3, init_method="normal", generator=minilm.Generator(0)).to(device)
    randomize(a, seed=1, scale=0.5)
    x = np.random.default_rng(0).standard_normal((2, 3, 6)).astype(np.float32)
    with minilm.no_grad():
        y = host(a(to_tensor(x, device)))
    W1, b1, W2, b2 = (host(p) for p in (a.W1, a.b1, a.W2, a.b2))
    np.testing.assert_allclose(y, x + np.maximum(x @ W1 + b1, 0) @ W2 + b2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="d=6"):
        a(to_tensor(np.zeros((2, 5), np.float32), device))


@pytest.mark.parametrize("placement", ["output", "houlsby", "pfeiffer"])
def test_adapter_placement_in_the_block(placement, device):
    """houlsby: x + A(Attn(LN₁x)), then + A(MLP(LN₂x)); pfeiffer: the second only; output: A(Block(x))."""
    m = base_gpt(device)
    peft.add(m, peft.AdapterConfig(r=4, placement=placement))
    randomize(m, seed=3, scale=0.5)
    blk = m.transformer.h[0]
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 5, D)).astype(np.float32), device)
    ident = lambda t: t
    A_attn = blk.adapter_attn or ident
    A_mlp = blk.adapter_mlp or ident
    A_out = blk.adapter_output or ident
    assert {"output": blk.adapter_output, "houlsby": blk.adapter_attn, "pfeiffer": blk.adapter_mlp}[placement]
    with minilm.no_grad():
        h = x + A_attn(blk.attn(blk.ln_1(x)))
        h = A_out(h + A_mlp(blk.mlp(blk.ln_2(h))))
        np.testing.assert_allclose(host(blk(x)), host(h), rtol=0, atol=1e-6)


@pytest.mark.parametrize("placement,per_block", [("output", 1), ("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("r,factor,expect_r", [(4, None, 4), (None, 4, 4), (None, 6, 3), (None, 32, 1)])
def test_adapter_parameter_count(placement, per_block, r, factor, expect_r):
    m = base_gpt()
    total = m.num_parameters()
    peft.add(m, peft.AdapterConfig(r=r, reduction_factor=factor, placement=placement))
    adapters = [a for _, a in peft.peft_modules(m)]
    assert len(adapters) == L * per_block and all(a.r == expect_r for a in adapters)
    d, rr = D, expect_r
    assert m.num_parameters(trainable_only=True) == L * per_block * (2 * d * rr + d + rr)
    assert m.num_parameters() == total + L * per_block * (2 * d * rr + d + rr)


def test_bottleneck_size():
    assert peft.bottleneck_size(768, reduction_factor=16) == 48
    assert peft.bottleneck_size(768, r=8) == 8
    assert peft.bottleneck_size(16, reduction_factor=6) == 3 and peft.bottleneck_size(16, reduction_factor=3) == 5
    for bad in [dict(), dict(r=4, reduction_factor=2), dict(r=0), dict(reduction_factor=0)]:
        with pytest.raises(ValueError):
            peft.bottleneck_size(16, **bad)
