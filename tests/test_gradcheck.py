"""gradcheck itself: it passes correct ops and catches, and names, wrong ones."""
import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import to_tensor


class WrongExp(minilm.Function):
    """y = eˣ with a wrong derivative: 2eˣ where x > 0."""

    def forward(ctx, x):
        xp = minilm.backend.get_array_module(x)
        y = xp.exp(x)
        ctx.save_for_backward(x, y)
        return y

    def backward(ctx, g):
        x, y = ctx.saved
        return (g * y * (1 + (x > 0)),)


def _input(device, shape, seed=0):
    rng = np.random.default_rng(seed)
    return to_tensor(-np.abs(rng.standard_normal(shape)) - 0.1, device, requires_grad=True)


def test_correct_op_passes_in_both_modes(device):
    x = _input(device, (3, 4))
    assert minilm.gradcheck(F.softmax, [x])
    assert minilm.gradcheck(F.softmax, [x], full_limit=0)  # force random directions


def test_wrong_backward_is_caught_and_named_full_jacobian(device):
    x = _input(device, (2, 3))
    x.data[1, 2] = 0.5          # the one element where WrongExp's derivative is wrong
    with pytest.raises(minilm.GradcheckError,
                       match=r"input 0 at element \(1, 2\).*analytic 3\.29.* vs numeric 1\.64"):
        minilm.gradcheck(WrongExp.apply, [x])


def test_wrong_backward_is_caught_by_random_directions(device):
    x = to_tensor(np.abs(np.random.default_rng(1).standard_normal((30, 20))) + 0.1, device, requires_grad=True)
    with pytest.raises(minilm.GradcheckError, match=r"input 0 \(shape \(30, 20\)\) along random direction 0"):
        minilm.gradcheck(WrongExp.apply, [x], full_limit=16)


def test_names_which_input_is_wrong():
    a = _input("cpu", (2,), seed=1)
    b = to_tensor(np.array([0.3, 0.7]), "cpu", requires_grad=True)
    with pytest.raises(minilm.GradcheckError, match="input 1 at element"):
        minilm.gradcheck(lambda a, b: a * WrongExp.apply(b), [a, b])


def test_needs_float64_and_something_to_check():
    with pytest.raises(TypeError, match="input 0 is float32"):
        minilm.gradcheck(F.exp, [minilm.ones(2, requires_grad=True)])
    with pytest.raises(ValueError, match="no input has requires_grad"):
        minilm.gradcheck(F.exp, [minilm.ones(2, dtype=minilm.float64)])


def test_leaves_the_callers_grads_alone():
    x = _input("cpu", (3,))
    x.grad = minilm.tensor(np.array([1.0, 2.0, 3.0]))
    minilm.gradcheck(F.exp, [x])
    np.testing.assert_array_equal(x.grad.numpy(), [1, 2, 3])


def test_zero_size_inputs_in_both_modes(device):
    """A pruned layer's (d, 0) weight is an input like any other: nothing to compare, no error."""
    x = to_tensor(np.random.default_rng(0).standard_normal((3, 4)), device, requires_grad=True)
    w = to_tensor(np.zeros((4, 0)), device, requires_grad=True)
    b = to_tensor(np.array([0.5, -1.0]), device, requires_grad=True)
    fn = lambda x, w, b: F.concat([x @ w, x], axis=1).sum(axis=1, keepdims=True) + b   # noqa: E731
    assert minilm.gradcheck(fn, [x, w, b])
    assert minilm.gradcheck(fn, [x, w, b], full_limit=0)
