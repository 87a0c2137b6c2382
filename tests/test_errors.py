"""Bad input gets an error that names what is wrong, in the caller's terms."""
import numpy as np
import pytest

import minilm
import minilm.functional as F


def test_matmul_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) do not line up"):
        minilm.ones(2, 3) @ minilm.ones(4, 5)
    with pytest.raises(ValueError, match=r"batch dimensions of shapes \(2, 3, 4\) and \(5, 4, 1\)"):
        minilm.ones(2, 3, 4) @ minilm.ones(5, 4, 1)


def test_broadcasting_mismatch():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) do not broadcast"):
        minilm.ones(2, 3) + minilm.ones(4)


def test_cross_entropy_target_out_of_range_names_the_id():
    logits = minilm.zeros(3, 5)
    with pytest.raises(IndexError, match=r"\[0, 5\).*found \[7\] at \[\(1,\)\]"):
        F.cross_entropy(logits, minilm.tensor([0, 7, 4]))
    with pytest.raises(IndexError, match=r"found \[-1\]"):
        F.cross_entropy(logits, minilm.tensor([0, -1, 4]))


def test_cross_entropy_float_target():
    with pytest.raises(TypeError, match="targets must be integer ids, got dtype float32"):
        F.cross_entropy(minilm.zeros(3, 5), minilm.tensor([0.0, 1.0, 2.0]))


def test_cross_entropy_shape_and_reduction():
    with pytest.raises(ValueError, match=r"logits of shape \(3, 5\) need targets of shape \(3,\)"):
        F.cross_entropy(minilm.zeros(3, 5), minilm.tensor([0, 1]))
    with pytest.raises(ValueError, match="reduction must be"):
        F.cross_entropy(minilm.zeros(3, 5), minilm.tensor([0, 1, 2]), reduction="avg")


def test_cross_entropy_ignores_ignore_index_and_all_ignored_is_nan():
    logits = minilm.randn(3, 4, requires_grad=True)
    t = minilm.tensor([1, -100, 2])
    loss = F.cross_entropy(logits, t)
    loss.backward()
    assert np.all(logits.grad.numpy()[1] == 0)
    assert np.isnan(F.cross_entropy(logits, minilm.tensor([-100, -100, -100])).item())  # as PyTorch


def test_embedding_ids():
    w = minilm.zeros(4, 2)
    with pytest.raises(IndexError, match=r"ids must be in \[0, 4\); found \[4, 9\]"):
        F.embedding(minilm.tensor([[0, 4], [9, 1]]), w)
    with pytest.raises(TypeError, match="integer ids, got dtype float32"):
        F.embedding(minilm.tensor([0.0]), w)


def test_shape_ops():
    x = minilm.ones(2, 3)
    with pytest.raises(ValueError, match=r"cannot view a tensor of shape \(2, 3\) \(6 elements\) as shape \(4,\)"):
        x.reshape(4)
    with pytest.raises(ValueError, match=r"concat: needs equal shapes except on axis 0.*\(2, 3\).*\(2, 4\)"):
        F.concat([x, minilm.ones(2, 4)])
    with pytest.raises(ValueError, match=r"stack: needs equal shapes"):
        F.stack([x, minilm.ones(3, 2)])
    with pytest.raises(ValueError, match=r"broadcast_to: shape \(2, 3\) cannot be broadcast to \(3, 3\)"):
        F.broadcast_to(x, (3, 3))
    with pytest.raises(ValueError, match=r"not a permutation"):
        x.permute(0, 0)
    with pytest.raises(ValueError, match=r"cannot be split into 4 equal parts"):
        F.split(x, 4, axis=1)
    with pytest.raises(ValueError, match="axis 2 is out of range for a tensor with 2 dimensions"):
        x.sum(axis=2)
    with pytest.raises(IndexError, match=r"tensor of shape \(2, 3\)"):
        x[5]


def test_masks_must_be_boolean_and_fit():
    x = minilm.ones(2, 3)
    with pytest.raises(TypeError, match="mask must be boolean, got dtype int64"):
        F.masked_fill(x, minilm.tensor([[1, 0, 1]]), 0.0)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 2\) does not broadcast to the tensor's shape \(2, 3\)"):
        F.masked_fill(x, minilm.ones(2, 2) > 0, 0.0)
    with pytest.raises(ValueError, match=r"where: shapes"):
        F.where(minilm.ones(4) > 0, x, x)


def test_layer_norm_weight_shape():
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(3,\)"):
        F.layer_norm(minilm.ones(2, 3), minilm.ones(4))


def test_dropout_and_gelu_options():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        F.dropout(minilm.ones(2), 1.5)
    with pytest.raises(ValueError, match="approximate must be"):
        F.gelu(minilm.ones(2), approximate="erf")


def test_bad_input_does_not_touch_state():
    w = minilm.randn(4, 2, requires_grad=True)
    before = w.numpy().copy()
    with pytest.raises(IndexError):
        F.embedding(minilm.tensor([7]), w)
    np.testing.assert_array_equal(w.numpy(), before)
    assert w.grad is None
