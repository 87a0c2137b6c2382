"""minilm.nn: gradient checks for every module, and the Module machinery."""
import numpy as np
import pytest

import minilm
import minilm.nn as nn
from helpers import host, to_tensor


def _x(shape, device, seed=0):
    return to_tensor(np.random.default_rng(seed).standard_normal(shape), device, requires_grad=True)


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Linear(4, 3), (2, 5, 4)),
    (lambda: nn.Linear(4, 3, bias=False), (3, 4)),
    (lambda: nn.LayerNorm(4), (3, 4)),
    (lambda: nn.GELU(), (3, 4)),
    (lambda: nn.GELU("tanh"), (3, 4)),
    (lambda: nn.Dropout(0.0), (3, 4)),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2)), (3, 4)),
    (lambda: nn.Linear(0, 3), (2, 5, 0)),
    (lambda: nn.Linear(4, 0), (2, 5, 4)),
    (lambda: nn.Sequential(nn.Linear(4, 0), nn.GELU(), nn.Linear(0, 3)), (3, 4)),
], ids=["linear", "linear-nobias", "layernorm", "gelu", "gelu-tanh", "dropout", "sequential",
        "linear-no-inputs", "linear-no-outputs", "sequential-zero-width"])
def test_module_gradcheck(make, shape, device):
    m = make().double().to(device)
    minilm.gradcheck_module(m, [_x(shape, device)])


def test_embedding_gradcheck(device):
    m = nn.Embedding(5, 3).double().to(device)
    ids = to_tensor(np.array([[0, 4, 4], [1, 0, 2]]), device)
    minilm.gradcheck_module(m, [ids])


def test_dropout_module_follows_train_and_eval():
    d = nn.Dropout(0.5, generator=minilm.Generator(0))
    x = minilm.ones(1000)
    assert (d(x).numpy() == 0).mean() == pytest.approx(0.5, abs=0.06)
    d.eval()
    np.testing.assert_array_equal(d(x).numpy(), x.numpy())


def test_linear_uses_the_row_convention():
    m = nn.Linear(4, 3)
    assert m.weight.shape == (4, 3)
    x = minilm.randn(2, 4)
    np.testing.assert_allclose(m(x).numpy(), x.numpy() @ m.weight.numpy() + m.bias.numpy(), rtol=1e-6)


def test_zero_width_linear_layers(device):
    """A pruned layer: Linear(0, n) has a (0, n) weight and gives y = b (its bias starts at 0);
    Linear(n, 0) gives an empty (…, 0) output.  Both go forward and backward with the right shapes."""
    none_in = nn.Linear(0, 3).double().to(device)
    assert none_in.weight.shape == (0, 3) and np.all(host(none_in.bias) == 0)
    none_in.bias.data = to_tensor(np.array([0.5, -1.0, 2.0]), device).data
    x = _x((2, 5, 0), device)
    y = none_in(x)
    assert y.shape == (2, 5, 3)
    np.testing.assert_array_equal(host(y), np.broadcast_to([0.5, -1.0, 2.0], (2, 5, 3)))
    y.sum().backward()
    assert x.grad.shape == (2, 5, 0) and none_in.weight.grad.shape == (0, 3)
    np.testing.assert_array_equal(host(none_in.bias.grad), [10.0, 10.0, 10.0])    # B·T rows each add 1

    none_out = nn.Linear(4, 0).double().to(device)
    assert none_out.weight.shape == (4, 0) and none_out.bias.shape == (0,)
    x = _x((2, 5, 4), device)
    y = none_out(x)
    assert y.shape == (2, 5, 0)
    (y.sum() + (x * x).sum()).backward()                              # the empty output adds nothing to x's grad
    np.testing.assert_allclose(host(x.grad), 2 * host(x), atol=1e-12)
    assert none_out.weight.grad.shape == (4, 0) and none_out.bias.grad.shape == (0,)
    with pytest.raises(ValueError, match=r"Linear: sizes must be non-negative, got \(-1, 3\)"):
        nn.Linear(-1, 3)
    assert "Linear(0, 3, bias=True)" in repr(nn.Linear(0, 3))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.ln = nn.LayerNorm(3)
        self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
        self.head = nn.ModuleDict({"proj": nn.Linear(3, 3, bias=False)})

    def forward(self, ids):
        h = self.ln(self.emb(ids))
        for b in self.blocks:
            h = h + b(h)
        return h @ self.emb.weight.T


def test_named_parameters_and_state_dict():
    m = Tied()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["emb.weight", "ln.weight", "ln.bias", "blocks.0.weight", "blocks.0.bias",
                     "blocks.1.weight", "blocks.1.bias", "head.proj.weight"]
    assert list(m.state_dict()) == names
    assert m.num_parameters() == 15 + 6 + 24 + 9


def test_a_shared_parameter_is_listed_once():
    a = nn.Linear(3, 3)
    seq = nn.Sequential(a, nn.GELU(), a)
    assert len(list(seq.parameters())) == 2
    assert list(seq.state_dict()) == ["0.weight", "0.bias"]


def test_load_state_dict_checks_everything_before_writing():
    m = Tied()
    before = {k: host(v).copy() for k, v in m.state_dict().items()}
    bad = {k: np.zeros(np.shape(host(v))) for k, v in m.state_dict().items()}
    bad.pop("ln.bias")
    bad["extra.weight"] = np.zeros(2)
    bad["emb.weight"] = np.zeros((6, 3))
    with pytest.raises(nn.StateDictError) as err:
        m.load_state_dict(bad)
    text = str(err.value)
    assert "missing keys (1): ln.bias" in text and "unexpected keys (1): extra.weight" in text
    assert "emb.weight: checkpoint (6, 3) vs model (5, 3)" in text
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(host(v), before[k])   # nothing was changed


def test_load_state_dict_round_trip(device):
    a, b = Tied().to(device), Tied().to(device)
    b.load_state_dict(a.state_dict())
    ids = to_tensor(np.array([[1, 2, 3]]), device)
    np.testing.assert_array_equal(host(a(ids)), host(b(ids)))


def test_freeze_unfreeze_train_eval_zero_grad():
    m = Tied()
    m.freeze()
    assert m.num_parameters(trainable_only=True) == 0
    m.unfreeze("blocks.*")
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias"}
    with pytest.raises(KeyError, match="no parameter name matches"):
        m.freeze("nothing.*")
    m(minilm.tensor([[1, 2]])).sum().backward()
    assert m.emb.weight.grad is None and m.blocks[0].weight.grad is not None
    m.zero_grad()
    assert m.blocks[0].weight.grad is None
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())


def test_printed_tree_shows_parameter_counts():
    text = repr(nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2)))
    assert "Linear(4, 6, bias=True)" in text and "30 params" in text and "total 44 parameters, 44 trainable" in text


def test_functional_call_restores_the_parameters():
    m = nn.Linear(2, 2)
    w = m.weight
    out = nn.functional_call(m, {"weight": minilm.zeros(2, 2)}, minilm.ones(1, 2))
    np.testing.assert_allclose(out.numpy(), m.bias.numpy()[None])
    assert m.weight is w
    with pytest.raises(KeyError, match="no parameters"):
        nn.functional_call(m, {"nope": w}, minilm.ones(1, 2))


def test_module_to_device_and_dtype(device):
    m = nn.Linear(3, 2).to(device).double()
    assert m.weight.device == device and m.weight.dtype == np.float64
    assert m(to_tensor(np.ones((1, 3)), device)).device == device
