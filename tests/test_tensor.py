"""The Tensor API and the rules of backward()."""
import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, to_tensor


def test_tensor_from_python_data_follows_pytorch_dtypes():
    assert minilm.tensor([1.0, 2.0]).dtype == np.float32
    assert minilm.tensor([1, 2]).dtype == np.int64
    assert minilm.tensor([True, False]).dtype == np.bool_
    assert minilm.tensor(np.zeros(3)).dtype == np.float64  # arrays keep their dtype
    assert minilm.tensor([1, 2], dtype="float64").dtype == np.float64
    assert minilm.tensor(3.5).shape == ()


def test_tensor_copies_its_data():
    a = np.ones(3)
    t = minilm.tensor(a)
    a[0] = 5
    assert t.numpy()[0] == 1


def test_attributes(device):
    t = minilm.tensor([[1.0, 2.0, 3.0]], device=device, requires_grad=True)
    assert t.shape == (1, 3) and t.ndim == 2 and t.numel() == 3
    assert t.dtype == np.float32 and t.device == device
    assert t.is_leaf and t.grad is None and t.requires_grad
    np.testing.assert_array_equal(t.numpy(), [[1, 2, 3]])
    assert minilm.tensor(2.5, device=device).item() == 2.5
    assert "requires_grad=True" in repr(t)


def test_item_needs_one_element():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        minilm.tensor([1.0, 2.0]).item()


def test_operators_and_reflected_operators(device):
    x = minilm.tensor([1.0, 2.0, 4.0], device=device)
    np.testing.assert_allclose(host(x + 1), [2, 3, 5])
    np.testing.assert_allclose(host(1 - x), [0, -1, -3])
    np.testing.assert_allclose(host(2 * x), [2, 4, 8])
    np.testing.assert_allclose(host(4 / x), [4, 2, 1])
    np.testing.assert_allclose(host(x ** 2), [1, 4, 16])
    np.testing.assert_allclose(host(2 ** x), [2, 4, 16])
    np.testing.assert_allclose(host(-x), [-1, -2, -4])
    np.testing.assert_allclose(host(x @ x), 21)
    assert (x * 2.0).dtype == np.float32  # a Python scalar does not upcast float32


def test_numpy_array_on_the_left_defers_to_tensor():
    x = minilm.tensor([1.0, 2.0], requires_grad=True)
    y = np.array([3.0, 4.0], dtype=np.float32) * x
    assert isinstance(y, minilm.Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3, 4])


def test_comparisons_give_bool_tensors_without_grad(device):
    x = minilm.tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    for r in (x > 1.5, x >= 2, x < 2, x <= 2, x == 2, x != 2):
        assert r.dtype == np.bool_ and not r.requires_grad
    np.testing.assert_array_equal(host(x > 1.5), [False, True, True])
    assert {x: 1}[x] == 1      # still hashable although == is elementwise


def test_indexing(device):
    x = minilm.arange(12, device=device).reshape(3, 4)
    assert x[1, 2].item() == 6
    np.testing.assert_array_equal(host(x[:, 1]), [1, 5, 9])
    np.testing.assert_array_equal(host(x[minilm.tensor([2, 0], device=device)]), [[8, 9, 10, 11], [0, 1, 2, 3]])
    np.testing.assert_array_equal(host(x[[0, 0]][:, 0]), [0, 0])


def test_creation_functions(device):
    assert minilm.zeros(2, 3, device=device).shape == (2, 3)
    assert minilm.ones((2, 3), dtype=minilm.float64, device=device).dtype == np.float64
    np.testing.assert_array_equal(host(minilm.arange(4, device=device)), [0, 1, 2, 3])
    assert minilm.arange(0, 1, 0.25).dtype == np.float32
    assert minilm.randn(5, device=device).dtype == np.float32


def test_seeded_generator_is_reproducible_and_same_on_cpu_and_strict():
    a = minilm.randn(4, 3, generator=minilm.Generator(7)).numpy()
    b = minilm.randn(4, 3, generator=minilm.Generator(7), device="strict").numpy()
    c = minilm.randn(4, 3, generator=minilm.Generator(8)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    minilm.manual_seed(3)
    d = minilm.randn(5).numpy()
    minilm.manual_seed(3)
    np.testing.assert_array_equal(d, minilm.randn(5).numpy())


def test_gradients_accumulate_until_zeroed(device):
    x = minilm.tensor([1.0, 2.0], device=device, requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(host(x.grad), [6, 6])
    x.grad = None
    (x * x).sum().backward()
    np.testing.assert_allclose(host(x.grad), [2, 4])


def test_a_tensor_used_twice_gets_the_sum_of_both_paths():
    x = minilm.tensor(3.0, requires_grad=True)
    a = x * 2
    y = a * a + a          # y = 4x² + 2x, dy/dx = 8x + 2
    y.backward()
    assert x.grad.item() == pytest.approx(26.0)


def test_leaf_grads_do_not_alias_each_other():
    a = minilm.tensor([1.0, 2.0], requires_grad=True)
    b = minilm.tensor([1.0, 2.0], requires_grad=True)
    (a + b).sum().backward()   # Add's backward hands the same array to both
    a.grad.data *= 10          # an optimizer scaling one grad in place
    np.testing.assert_allclose(b.grad.numpy(), [1, 1])


def test_non_leaves_keep_no_grad_unless_retained():
    x = minilm.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    k = (x * 3).retain_grad()
    (h * k).sum().backward()
    assert h.grad is None
    np.testing.assert_allclose(k.grad.numpy(), [2, 4])  # ∂(h·k)/∂k = h


def test_second_backward_through_freed_graph_says_so():
    x = minilm.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = minilm.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4, 8])


def test_backward_on_a_non_scalar_needs_grad():
    x = minilm.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"one-element.*shape \(2,\)"):
        (x * 2).backward()
    (x * 2).backward(minilm.tensor([1.0, 10.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2, 20])
    with pytest.raises(ValueError, match=r"grad of shape \(3,\)"):
        (x * 2).backward(minilm.tensor([1.0, 1.0, 1.0]))


def test_backward_without_requires_grad_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        minilm.tensor([1.0]).sum().backward()


def test_a_10000_op_chain_backpropagates_without_recursion():
    x = minilm.tensor(1.0, dtype=minilm.float64, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    assert x.grad.item() == pytest.approx(1.0001 ** 10_000)


def test_a_deep_non_chain_graph_also_works():
    x = minilm.tensor([0.5], dtype=minilm.float64, requires_grad=True)
    y = x
    for _ in range(3_000):
        y = F.tanh(y) + 0.5 * y       # two paths to y at every step
    y.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_no_grad_records_nothing():
    x = minilm.tensor([1.0], requires_grad=True)
    with minilm.no_grad():
        y = x * 2
        with minilm.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad
    assert minilm.is_grad_enabled()

    @minilm.no_grad()
    def f(t):
        return t * 3

    assert not f(x).requires_grad


def test_detach_and_requires_grad_():
    x = minilm.tensor([1.0, 2.0], requires_grad=True)
    d = (x * 2).detach()
    assert d.is_leaf and not d.requires_grad
    d.requires_grad_()
    assert d.requires_grad
    with pytest.raises(TypeError, match="floating-point.*int64"):
        minilm.tensor([1, 2]).requires_grad_()
    with pytest.raises(RuntimeError, match="leaf"):
        (x * 2).requires_grad_(False)


def test_frozen_inputs_get_no_grad_and_cost_no_work():
    w = minilm.randn(3, 4)                        # frozen: requires_grad False
    x = minilm.randn(2, 3, requires_grad=True)
    (x @ w).sum().backward()
    assert w.grad is None and x.grad is not None


def test_mixed_precision_grads_take_the_dtype_of_their_tensor():
    a = minilm.tensor([1.0, 2.0], requires_grad=True)                    # float32
    b = minilm.tensor([1.0, 2.0], dtype=minilm.float64, requires_grad=True)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


def test_to_device_is_differentiable(device):
    x = minilm.tensor([1.0, 2.0], requires_grad=True)
    y = x.to(device) * 3
    assert y.device == device
    y.sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), [3, 3])
    assert x.to(dtype=minilm.float64).dtype == np.float64


def test_mixing_devices_names_both():
    a = minilm.ones(2)
    b = minilm.ones(2, device="strict")
    with pytest.raises(RuntimeError, match=r"different devices.*'cpu'.*'strict'"):
        a + b


def test_the_demo_trains_identically_on_cpu_and_strict():
    from minilm.demo import run
    cpu_hist, cpu_acc = run(steps=40, device="cpu", verbose=False)
    strict_hist, strict_acc = run(steps=40, device="strict", verbose=False)
    assert cpu_hist[-1] < cpu_hist[0] * 0.9
    assert cpu_hist == strict_hist and cpu_acc == strict_acc


def test_cli_demo_prints_its_loss(capsys):
    from minilm.cli import main
    assert main(["demo", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "accuracy" in out
