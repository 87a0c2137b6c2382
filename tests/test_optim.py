"""Optimizers against torch.optim, state round trips, schedules, clipping, weight-decay groups."""
import math

import numpy as np
import pytest
import safetensors.numpy

import minilm
import minilm.nn as nn
from helpers import host, to_tensor
from minilm.optim import (SGD, Adam, AdamW, LRScheduler, OptimizerStateError, clip_grad_norm,
                          flatten_state_dict, param_groups_for_weight_decay, unflatten_state_dict,
                          warmup_cosine, warmup_cosine_scheduler)

SHAPES = [(3, 4), (4,), (2, 3)]

CONFIGS = {
    "sgd": (SGD, dict(lr=0.1)),
    "sgd-momentum": (SGD, dict(lr=0.1, momentum=0.9)),
    "sgd-nesterov-wd": (SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    "adam": (Adam, dict(lr=0.01, betas=(0.8, 0.95))),
    "adam-l2": (Adam, dict(lr=0.01, weight_decay=0.1)),
    "adamw": (AdamW, dict(lr=0.01, weight_decay=0.1)),
}


def _problem(seed=0, steps=6):
    """Initial values and a gradient per step per parameter (None: that parameter gets no grad)."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) if not (t == 2 and i == 2) else None for i, s in enumerate(SHAPES)]
             for t in range(steps)]
    return init, grads


def _groups(params, extra):
    """Two groups with their own lr and weight decay, as a training script would make."""
    return [{"params": params[:1], "lr": 0.5 * extra["lr"], "weight_decay": 0.2},
            {"params": params[1:]}]


def _run_minilm(cls, kwargs, init, grads, device, opt=None, params=None):
    params = params or [to_tensor(a, device, requires_grad=True) for a in init]
    opt = opt or cls(_groups(params, kwargs), **kwargs)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else to_tensor(g, device)
        opt.step()
    return params, opt


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_torch_optim(name, device):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")
    cls, kwargs = CONFIGS[name]
    init, grads = _problem()
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    topt = getattr(torch.optim, cls.__name__)(_groups(theirs, kwargs), **kwargs)
    ours = [to_tensor(a, device, requires_grad=True) for a in init]
    opt = cls(_groups(ours, kwargs), **kwargs)
    for t, step in enumerate(grads):
        for p, tp, g in zip(ours, theirs, step):
            p.grad = None if g is None else to_tensor(g, device)
            tp.grad = None if g is None else torch.tensor(g)
        opt.step()
        topt.step()
        for i, (p, tp) in enumerate(zip(ours, theirs)):
            np.testing.assert_allclose(host(p), tp.detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name}: parameter {i} differs from torch after step {t + 1}")
    assert all(p.device == device and p.dtype == np.float64 for p in ours)


@pytest.mark.parametrize("name", ["sgd-momentum", "adam", "adamw"])
def test_state_dict_round_trip_resumes_identically(name, device):
    cls, kwargs = CONFIGS[name]
    init, grads = _problem(steps=8)
    straight, _ = _run_minilm(cls, kwargs, init, grads, device)

    first, opt = _run_minilm(cls, kwargs, init, grads[:4], device)
    arrays, meta = flatten_state_dict(opt.state_dict())
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    arrays = safetensors.numpy.load(safetensors.numpy.save(arrays))  # through the file format
    params = [to_tensor(host(p), device, requires_grad=True) for p in first]
    fresh = cls(_groups(params, dict(kwargs, lr=123.0)), **dict(kwargs, lr=123.0))  # hyperparameters come back too
    fresh.load_state_dict(unflatten_state_dict(arrays, meta))
    resumed, _ = _run_minilm(cls, kwargs, init, grads[4:], device, opt=fresh, params=params)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(host(a), host(b))


def test_state_dict_is_a_copy():
    p = minilm.tensor(np.ones(3), requires_grad=True)
    opt = Adam([p])
    p.grad = np.ones(3)
    opt.step()
    saved = opt.state_dict()
    m = saved["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(saved["state"][0]["exp_avg"], m)
    assert saved["state"][0]["step"] == 1 and saved["param_groups"][0]["params"] == [0]


def test_load_state_dict_that_does_not_fit_changes_nothing():
    init, grads = _problem()
    params, opt = _run_minilm(Adam, dict(lr=0.01), init, grads[:2], "cpu")
    good = opt.state_dict()
    other = Adam(_groups([minilm.tensor(np.zeros(s), requires_grad=True) for s in [(3, 4), (5,), (2, 3)]],
                         dict(lr=0.01)), lr=0.01)
    before = other.state_dict()
    with pytest.raises(OptimizerStateError, match=r"parameter 1: exp_avg has shape \(4,\), the parameter \(5,\)"):
        other.load_state_dict(good)
    assert other.state_dict()["state"] == before["state"] == {}
    with pytest.raises(OptimizerStateError, match="2 param groups, this optimizer 1"):
        Adam([params[0]]).load_state_dict(good)
    with pytest.raises(OptimizerStateError, match="saved by Adam, this optimizer is SGD"):
        SGD(_groups(params, dict(lr=0.1)), lr=0.1, momentum=0.9).load_state_dict(good)


def test_runs_on_strict_device_like_cpu():
    init, grads = _problem()
    for name in ("sgd-nesterov-wd", "adamw"):
        cls, kwargs = CONFIGS[name]
        cpu, _ = _run_minilm(cls, kwargs, init, grads, "cpu")
        strict, _ = _run_minilm(cls, kwargs, init, grads, "strict")
        assert isinstance(strict[0].data, minilm.strict.StrictArray)
        for a, b in zip(cpu, strict):
            np.testing.assert_array_equal(host(a), host(b))


def test_skips_frozen_and_gradless_parameters_and_zero_grad():
    a = minilm.tensor(np.ones(2), requires_grad=True)
    b = minilm.tensor(np.ones(2), requires_grad=True)
    opt = SGD([a, b], lr=1.0)
    a.grad = np.ones(2)
    b.grad = np.ones(2)
    b.requires_grad = False
    opt.step()
    np.testing.assert_array_equal(host(a), [0, 0])
    np.testing.assert_array_equal(host(b), [1, 1])
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_bad_arguments_are_named():
    p = minilm.tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(ValueError, match="appears twice"):
        Adam([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr must be in"):
        AdamW([p], lr=-1.0)
    with pytest.raises(TypeError, match="iterable of parameters"):
        Adam(p)


# ---- schedules -------------------------------------------------------------

def test_warmup_cosine_at_key_steps():
    lr, lo = 1e-3, 1e-4
    f = lambda t: warmup_cosine(t, max_steps=110, lr=lr, min_lr=lo, warmup_steps=10)  # noqa: E731
    assert f(0) == 0.0
    assert f(5) == pytest.approx(lr / 2)
    assert f(10) == pytest.approx(lr)
    assert f(60) == pytest.approx((lr + lo) / 2)            # half way through the cosine
    assert f(110) == pytest.approx(lo) and f(500) == lo
    after = [f(t) for t in range(10, 111)]
    assert all(x >= y for x, y in zip(after, after[1:]))
    assert warmup_cosine(0, 10, lr, lo, 0) == pytest.approx(lr)  # no warmup: starts at lr


def test_lr_scheduler_sets_each_group_and_round_trips():
    p, q = (minilm.tensor(np.ones(2), requires_grad=True) for _ in range(2))
    opt = AdamW([{"params": [p], "lr": 1.0}, {"params": [q], "lr": 0.1}])
    sched = warmup_cosine_scheduler(opt, max_steps=20, warmup_steps=4, min_lr_ratio=0.1)
    assert sched.get_last_lr() == [0.0, 0.0]
    for _ in range(7):
        sched.step()
    expected = warmup_cosine(7, 20, 1.0, 0.1, 4)
    assert sched.get_last_lr() == pytest.approx([expected, 0.1 * expected])
    again = LRScheduler(AdamW([{"params": [p], "lr": 5.0}, {"params": [q], "lr": 5.0}]),
                        lambda t: warmup_cosine(t, 20, 1.0, 0.1, 4))
    again.load_state_dict(sched.state_dict())
    assert again.get_last_lr() == sched.get_last_lr()


# ---- gradient clipping -----------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm, device):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")
    init, grads = _problem()
    ours = [to_tensor(a, device, requires_grad=True) for a in init]
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    for p, tp, g in zip(ours, theirs, grads[2]):
        if g is not None:
            p.grad, tp.grad = to_tensor(g, device), torch.tensor(g)
    norm = clip_grad_norm(ours, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert isinstance(norm, float) and norm == pytest.approx(float(tnorm), rel=1e-12)
    for p, tp in zip(ours, theirs):
        if tp.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(host(p.grad), tp.grad.numpy(), rtol=1e-12)
    if max_norm < norm:
        total = math.sqrt(sum(float((host(p.grad) ** 2).sum()) for p in ours if p.grad is not None))
        assert total == pytest.approx(max_norm, rel=1e-5)


# ---- weight-decay groups ---------------------------------------------------------

class TinyLM(nn.Module):
    def __init__(self, vocab=11, d=4):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(8, d)
        self.fc = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.ln_f = nn.LayerNorm(d)
        self.scale = nn.Parameter(np.ones((d, d), dtype=np.float32))   # a bare matrix: decays
        self.gate = nn.Parameter(np.ones(d, dtype=np.float32))         # a bare vector: doesn't


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_weight_decay_groups_by_module_type():
    model = TinyLM()
    model.freeze("wpe.*")
    decay, no_decay = param_groups_for_weight_decay(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert _names(model, decay) == {"fc.weight", "proj.weight", "scale"}
    assert _names(model, no_decay) == {"wte.weight", "fc.bias", "ln_f.weight", "ln_f.bias", "gate"}
    AdamW([decay, no_decay])  # every parameter once: the optimizer accepts it


def test_weight_decay_groups_with_shared_weights():
    model = TinyLM(vocab=4)
    model.head = nn.Linear(4, 4, bias=False)
    model.head.weight = model.wte.weight        # tied to an embedding: not decayed
    model.proj2 = nn.Linear(8, 4)
    model.proj2.weight = model.proj.weight      # shared by two Linears: decayed, listed once
    decay, no_decay = param_groups_for_weight_decay(model, 0.1)
    assert _names(model, decay) == {"fc.weight", "proj.weight", "scale"}
    assert _names(model, no_decay) == {"wte.weight", "wpe.weight", "fc.bias", "ln_f.weight", "ln_f.bias",
                                       "gate", "proj2.bias"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
