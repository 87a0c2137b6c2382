"""F.scaled_dot_product_attention (the fused op: Numba kernel on "cpu", composed
array ops on "cuda"/"strict") against the composed reference, forward and all
three gradients, for every mask kind and the awkward shapes."""
import itertools

import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, to_tensor

SHAPES = [  # (B, H, T, S_extra, D)
    (1, 1, 1, 0, 1),       # T = 1, D = 1, B·H = 1
    (2, 3, 5, 0, 4),
    (1, 2, 67, 0, 8),      # T not a multiple of the block size
    (2, 1, 9, 3, 16),      # more keys than queries (a cache)
    (1, 1, 4, 0, 128),     # D = 128
    (1, 2, 130, 0, 32),    # several blocks
]
MASKS = list(itertools.product([False, True], [False, True], [0, 3]))  # causal, padding, n_prefix


def _inputs(B, H, T, S_extra, D, n_prefix, padding, dtype, device, seed=0):
    rng = np.random.default_rng(seed)
    S_tok = T + S_extra
    S = n_prefix + S_tok
    q, k, v = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, H, S, D)), rng.standard_normal((B, H, S, D))
    pad = None
    if padding:
        lengths = rng.integers(1, S_tok + 1, size=B)            # a batch of different lengths
        lengths[0] = S_tok
        pad = np.arange(S_tok)[None, :] >= lengths[:, None]    # True = padding
        pad = to_tensor(pad, device)
    tensors = [to_tensor(a.astype(dtype), device, requires_grad=True) for a in (q, k, v)]
    return tensors, pad


def _run(fn, tensors, pad, causal, n_prefix, g):
    for t in tensors:
        t.grad = None
    out = fn(*tensors, causal=causal, key_padding_mask=pad, n_prefix=n_prefix)
    out.backward(g)
    return [host(out)] + [host(t.grad) for t in tensors]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("causal, padding, n_prefix", MASKS,
                         ids=[f"causal{int(c)}-pad{int(p)}-prefix{n}" for c, p, n in MASKS])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_attention_equals_the_reference(shape, causal, padding, n_prefix, dtype, tol, device):
    B, H, T, S_extra, D = shape
    tensors, pad = _inputs(B, H, T, S_extra, D, n_prefix, padding, dtype, device)
    g = to_tensor(np.random.default_rng(1).standard_normal((B, H, T, D)).astype(dtype), device)
    fused = _run(F.scaled_dot_product_attention, tensors, pad, causal, n_prefix, g)
    ref = _run(F.scaled_dot_product_attention_reference, tensors, pad, causal, n_prefix, g)
    for name, a, b in zip(("output", "dq", "dk", "dv"), fused, ref):
        assert a.dtype == dtype
        assert np.isfinite(a).all(), name
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=name)


def test_query_rows_that_see_nothing_get_zeros(device):
    tensors, _ = _inputs(1, 2, 3, 0, 4, 0, False, np.float64, device)
    pad = to_tensor(np.array([[True, True, True]]), device)
    out = F.scaled_dot_product_attention(*tensors, key_padding_mask=pad)
    assert (host(out) == 0).all()
    out.sum().backward()
    for t in tensors:
        assert (host(t.grad) == 0).all()


def test_gradcheck_through_the_public_function(device):
    tensors, pad = _inputs(2, 2, 5, 2, 3, 2, True, np.float64, device)
    minilm.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True, key_padding_mask=pad,
                                                                    n_prefix=2), tensors)


def test_sharp_attention_in_float32_stays_correct(device):
    """Scores far below the row max: no subnormal slow-down, no NaN, same answer."""
    tensors, _ = _inputs(1, 2, 70, 0, 16, 0, False, np.float32, device)
    q = tensors[0] * 30.0
    args = (q, tensors[1], tensors[2])
    a = F.scaled_dot_product_attention(*args, causal=True)
    b = F.scaled_dot_product_attention_reference(*args, causal=True)
    np.testing.assert_allclose(host(a), host(b), atol=1e-5)


def test_the_gpt_uses_the_fused_op():
    from minilm.models import GPT, GPTConfig
    m = GPT(GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8))
    logits = m(minilm.tensor([[1, 2, 3]])).logits
    node_names = set()
    stack = [logits]
    while stack:
        t = stack.pop()
        if t.grad_fn is not None:
            node_names.add(type(t.grad_fn).__name__)
            stack.extend(p for p in t.grad_fn.parents if isinstance(p, minilm.Tensor))
    assert "ScaledDotProductAttention" in node_names
