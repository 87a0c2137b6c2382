"""float16 and dtype promotion, against PyTorch.

float16: every op that sums (layer_norm, softmax, log_softmax, logsumexp,
cross_entropy, sum, mean, var, attention) accumulates in float32 and rounds
back, forward and backward, as PyTorch's CPU kernels do; the inputs below are
chosen so that summing in float16 itself goes wrong (overflow past 65504, or
adding small values to a sum past 1024).  Then whole GPT and BERT models in
float16 train (forward + backward) close to their float32 selves.

dtype promotion: elementwise ops promote as PyTorch (``torch.result_type``),
linear algebra refuses operands of different dtypes.
"""
import operator

import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, tiny_bert, tiny_gpt, to_tensor, token_ids

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")
TF = torch.nn.functional

f16 = np.float16


def assert_close16(ours, expected, what, rtol=1e-2):
    """float16 results agree to float16's resolution: relative 1e-2, absolute 1e-2 of the largest entry."""
    ours, expected = np.asarray(host(ours), np.float64), np.asarray(expected, np.float64)
    assert np.isfinite(ours).all() == np.isfinite(expected).all(), f"{what}: non-finite values where torch has none"
    finite = np.abs(expected[np.isfinite(expected)])
    np.testing.assert_allclose(ours, expected, rtol=rtol, atol=rtol * (finite.max() if finite.size else 0),
                               err_msg=what)


# ---- float16 ops against torch float16 ----------------------------------------------------------------

def test_layer_norm_float16_of_large_values_is_not_zero(device):
    """The issue's case: Σ(x − μ)² of randn·25 over 128 values is ~80,000 > 65504, so var was inf
    and every x̂ was 0."""
    x = (minilm.randn(4, 128, generator=minilm.Generator(0)) * 25).astype(minilm.float16)
    x = to_tensor(host(x), device)
    y = F.layer_norm(x)
    assert y.dtype == minilm.float16
    assert np.abs(host(y)).max() > 1
    assert_close16(y, TF.layer_norm(torch.from_numpy(host(x)), (128,)).numpy(), "layer_norm forward")


LN_SHAPE = (6, 128)


def _layer_norm(x, w, b):
    return F.layer_norm(x, w, b)


def _torch_layer_norm(x, w, b):
    return TF.layer_norm(x, (x.shape[-1],), w, b)


# name -> minilm fn, torch fn, the inputs (host arrays, all differentiated), and whether torch runs in
# float32 on the float16 inputs (its result rounded to float16) rather than in float16
CASES = {
    # layer norm with an affine transform: forward, ∂x, ∂w, ∂b (the backward's Σ_rows and mean(ĝ ⊙ x̂))
    "layer_norm": (_layer_norm, _torch_layer_norm,
                   lambda r: [r.standard_normal(LN_SHAPE) * 40, 1 + 0.1 * r.standard_normal(128),
                              0.1 * r.standard_normal(128)], False),
    # sums over a long strided axis, which NumPy adds up row by row in the array's dtype: in float16 a
    # sum of 3000 values near 1 (or 0.2) stops growing at 2048 (or 512), where the step is 2 (or 0.5)
    "softmax": (lambda x: F.softmax(x, axis=0), lambda x: torch.softmax(x, 0),
                lambda r: [0.01 * r.standard_normal((3000, 3))], False),
    "log_softmax": (lambda x: F.log_softmax(x, axis=0), lambda x: torch.log_softmax(x, 0),
                    lambda r: [0.01 * r.standard_normal((3000, 3))], False),
    "logsumexp": (lambda x: F.logsumexp(x, axis=0), lambda x: torch.logsumexp(x, 0),
                  lambda r: [0.01 * r.standard_normal((3000, 3))], False),
    "sum": (lambda x: F.sum(x, axis=0), lambda x: x.sum(0), lambda r: [0.2 + 0.01 * r.uniform(0, 1, (3000, 3))], False),
    # a mean of values near 1000 over 512 of them: the sum (512,000) overflows float16, the mean does not
    "mean": (lambda x: F.mean(x), lambda x: x.mean(), lambda r: [1000 + r.standard_normal((128, 4))], False),
    # deviations past 256 whose squares overflow float16; the variance (~14,000) does not
    "var": (lambda x: F.var(x, axis=0), lambda x: x.var(0, unbiased=False),
            lambda r: [120 * r.standard_normal((64, 3))], False),
    # 2000 losses of ~50 each: their sum overflows float16, their mean does not.  torch's CPU
    # float16 nll_loss sums them in float16 and returns inf, so the reference is its float32 loss.
    "cross_entropy": (lambda x: F.cross_entropy(x, minilm.tensor(np.arange(2000) % 5, device=x.device)),
                      lambda x: TF.cross_entropy(x, torch.from_numpy(np.arange(2000) % 5)),
                      lambda r: [40 * r.standard_normal((2000, 5))], True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float16_reductions_match_torch(name, device):
    fn, torch_fn, make, torch_in_float32 = CASES[name]
    rng = np.random.default_rng(0)
    arrays = [a.astype(f16) for a in make(rng)]
    ours = [to_tensor(a, device, requires_grad=True) for a in arrays]
    torch_dtype = np.float32 if torch_in_float32 else f16
    theirs = [torch.from_numpy(a.astype(torch_dtype)).requires_grad_() for a in arrays]
    y, ty = fn(*ours), torch_fn(*theirs)
    assert y.dtype == minilm.float16 and y.shape == tuple(ty.shape)
    assert_close16(y, ty.detach().numpy().astype(f16), f"{name}: forward")
    g = rng.standard_normal(y.shape).astype(f16)
    y.backward(to_tensor(g, device))
    ty.backward(torch.from_numpy(g.astype(torch_dtype)))
    for i, (x, tx) in enumerate(zip(ours, theirs)):
        assert x.grad.dtype == minilm.float16
        assert_close16(x.grad, tx.grad.numpy().astype(f16), f"{name}: gradient of input {i}")


def test_float16_attention_matches_float32_attention(device):
    """Scores of ~300 that differ by a few units: in float16 the row's log-sum-exp (~300) is only known
    to ±0.125, so P = exp(s − lse) computed there is off by up to 13%.  The op computes in float32;
    the reference is float32 attention on the same float16 inputs, rounded to float16."""
    rng = np.random.default_rng(0)
    B, H, T, D = 2, 2, 8, 16
    shared = rng.standard_normal(D)                                           # q·shared ≈ 300 for every key
    q = (20 * shared + rng.standard_normal((B, H, T, D))).astype(f16)
    k = (shared + 0.2 * rng.standard_normal((B, H, T, D))).astype(f16)
    v = rng.standard_normal((B, H, T, D)).astype(f16)
    tq, tk, tv = (torch.from_numpy(a.astype(np.float32)).requires_grad_() for a in (q, k, v))
    ty = TF.scaled_dot_product_attention(tq, tk, tv, is_causal=True, scale=1.0)
    ours = [to_tensor(a, device, requires_grad=True) for a in (q, k, v)]
    y = F.scaled_dot_product_attention(*ours, causal=True, scale=1.0)
    assert y.dtype == minilm.float16
    assert_close16(y, ty.detach().numpy().astype(f16), "attention forward")
    g = rng.standard_normal(y.shape).astype(f16)
    y.backward(to_tensor(g, device))
    ty.backward(torch.from_numpy(g.astype(np.float32)))
    for name, x, tx in zip("qkv", ours, (tq, tk, tv)):
        assert x.grad.dtype == minilm.float16
        assert_close16(x.grad, tx.grad.numpy().astype(f16), f"attention: gradient of {name}", rtol=2e-2)


# ---- float16 models ---------------------------------------------------------------------------------------

def _assert_grads_near(m16, m32, what):
    """Each float16 gradient within 5% (of that parameter's largest gradient) of the float32 one."""
    for (name, p16), (_, p32) in zip(m16.named_parameters(), m32.named_parameters()):
        if p32.grad is None:
            assert p16.grad is None, f"{what}: {name} has a gradient in float16 only"
            continue
        g16, g32 = host(p16.grad), host(p32.grad)
        assert g16.dtype == np.float16 and np.isfinite(g16).all(), f"{what}: {name}"
        scale = np.abs(g32).max()
        assert np.abs(g16.astype(np.float64) - g32).max() <= 0.05 * scale + 1e-4, f"{what}: gradient of {name}"


GPT_SIZE = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
BERT_SIZE = dict(vocab_size=50, max_position_embeddings=16, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0)


def test_gpt_in_float16_trains_like_float32(device):
    ids = token_ids((2, 16), 50, device)
    outs = {}
    for dtype in (minilm.float32, minilm.float16):
        m = tiny_gpt(device, dtype=dtype, **GPT_SIZE)
        out = m(ids, labels=ids)
        assert out.logits.dtype == dtype and out.loss.dtype == dtype
        out.loss.backward()
        outs[dtype] = m, out.loss.item()
    (m32, loss32), (m16, loss16) = outs[minilm.float32], outs[minilm.float16]
    assert np.isfinite(loss16) and abs(loss16 - loss32) <= 1e-2 * abs(loss32)
    _assert_grads_near(m16, m32, "GPT float16")


def test_bert_in_float16_trains_like_float32(device):
    ids = token_ids((2, 16), 50, device)
    mask = to_tensor(np.array([[1] * 16, [1] * 10 + [0] * 6]), device)       # padding keys too
    models = {}
    for dtype in (minilm.float32, minilm.float16):
        m = tiny_bert(device, dtype=dtype, **BERT_SIZE)
        h = m(ids, attention_mask=mask).last_hidden_state
        assert h.dtype == dtype
        (h * h).mean().backward()
        models[dtype] = m, host(h)
    (m32, h32), (m16, h16) = models[minilm.float32], models[minilm.float16]
    assert_close16(h16, h32, "BERT float16 hidden states", rtol=2e-2)
    _assert_grads_near(m16, m32, "BERT float16")


def test_module_to_refuses_a_non_float_dtype():
    m = tiny_gpt(**GPT_SIZE)
    with pytest.raises(TypeError, match="GPT.to: dtype must be floating.*int64"):
        m.to(dtype=np.int64)
    assert all(p.dtype == minilm.float32 for p in m.parameters())


# ---- dtype promotion ------------------------------------------------------------------------------------------

def _operand(spec, device):
    """('t', dtype, shape) -> (minilm tensor, torch tensor); a scalar -> (itself, itself)."""
    if not isinstance(spec, tuple):
        return spec, spec
    _, dtype, shape = spec
    a = (np.arange(1, 1 + int(np.prod(shape))).reshape(shape) % 3 + 1).astype(dtype)
    return to_tensor(a, device), torch.from_numpy(np.array(a))


def t(dtype, shape=(2, 3)):
    return ("t", dtype, shape)


PROMOTIONS = [
    (t(np.int64), t(np.float32)),          # NumPy: float64
    (t(np.int32), t(np.float16)),          # NumPy: float32
    (t(np.bool_), t(np.float32)),
    (t(np.bool_), t(np.int32)),
    (t(np.float16), t(np.float32)),
    (t(np.int32), t(np.int64)),
    (t(np.float32), t(np.float64, ())),    # a 0-d tensor does not widen a float tensor (NumPy: float64)
    (t(np.int64), t(np.float64, ())),      # ... but gives its dtype when its kind is higher
    (t(np.float32), 2.5),
    (t(np.float16), np.float64(2.5)),      # NumPy scalars are scalars (NumPy: float64)
    (t(np.float32), np.float64(2.5)),
    (t(np.int64), 2.5),                    # int with a float scalar: the default float, float32 (NumPy: float64)
    (t(np.int64), np.float32(2)),
    (t(np.int64), 2),
    (t(np.bool_), 1),
    (t(np.bool_), True),                   # (not for pow: NumPy's bool ** bool is int8, torch's bool)
]
BINARY = {"add": (F.add, operator.add), "sub": (F.sub, operator.sub), "mul": (F.mul, operator.mul),
          "div": (F.div, operator.truediv), "pow": (F.pow, operator.pow)}


def _id(spec):
    if isinstance(spec, tuple):
        return f"{np.dtype(spec[1])}{list(spec[2])}"
    return repr(spec).replace("np.", "")


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("a, b", PROMOTIONS, ids=[f"{_id(a)}-{_id(b)}" for a, b in PROMOTIONS])
def test_elementwise_promotion_is_torchs(a, b, op, device):
    if op == "pow" and b is True:
        pytest.skip("NumPy's bool ** bool is int8; minilm leaves that to NumPy")
    fn, torch_fn = BINARY[op]
    (x, tx), (y, ty) = _operand(a, device), _operand(b, device)
    for left, right, tleft, tright in ((x, y, tx, ty), (y, x, ty, tx)):
        try:
            expected = torch_fn(tleft, tright)
        except RuntimeError:                         # e.g. bool − bool: torch refuses it, so it is not compared
            continue
        got = fn(left, right)
        assert str(got.dtype) == str(expected.dtype).removeprefix("torch."), \
            f"{op}({a}, {b}): {got.dtype}, torch gives {expected.dtype}"
        np.testing.assert_allclose(host(got).astype(np.float64), expected.double().numpy(), rtol=1e-3)


def test_where_concat_stack_promote_like_torch(device):
    i64, f32 = to_tensor(np.arange(6).reshape(2, 3), device), to_tensor(np.ones((2, 3), np.float32), device)
    cond = to_tensor(np.array([[True, False, True]] * 2), device)
    assert F.where(cond, i64, f32).dtype == minilm.float32
    assert F.where(cond, i64, 0.5).dtype == minilm.float32
    assert F.where(cond, f32, np.float64(0.5)).dtype == minilm.float32
    assert F.concat([i64, f32]).dtype == minilm.float32
    assert F.stack([f32, i64]).dtype == minilm.float32


def test_promotion_keeps_each_gradient_in_its_operands_dtype(device):
    """int64 · float16 is float16 (not float64), and the gradient reaches the float16 leaf as float16."""
    w = to_tensor(np.array([0.5, 2.0], f16), device, requires_grad=True)
    n = to_tensor(np.array([3, 4]), device)
    y = n * w
    assert y.dtype == minilm.float16
    y.sum().backward()
    assert w.grad.dtype == minilm.float16 and host(w.grad).tolist() == [3.0, 4.0]


def test_matmul_refuses_mixed_dtypes(device):
    a, b = to_tensor(np.arange(6).reshape(2, 3), device), to_tensor(np.ones((3, 2), np.float32), device)
    with pytest.raises(TypeError, match=r"matmul: .*int64 \(shape \(2, 3\)\).*float32 \(shape \(3, 2\)\)"):
        a @ b
    with pytest.raises(TypeError, match="matmul: .*float16.*float32"):
        F.matmul(b.T.astype(minilm.float16), b)


def test_linear_refuses_mixed_dtypes(device):
    x = to_tensor(np.ones((4, 3), np.float64), device)
    w, bias = to_tensor(np.ones((3, 2), np.float32), device), to_tensor(np.zeros(2, np.float32), device)
    with pytest.raises(TypeError, match=r"linear: .*input is float64 \(shape \(4, 3\)\), weight is float32"):
        F.linear(x, w, bias)
    with pytest.raises(TypeError, match=r"linear: .*bias is float16"):
        F.linear(x.astype(minilm.float32), w, bias.astype(minilm.float16))


def test_attention_refuses_mixed_dtypes(device):
    q = to_tensor(np.ones((1, 1, 2, 4), np.float32), device)
    with pytest.raises(TypeError, match=r"scaled_dot_product_attention: .*k is float64 \(shape \(1, 1, 2, 4\)\)"):
        F.scaled_dot_product_attention(q, q.astype(minilm.float64), q)
