"""minilm.peft: Adapters (A1–A3), LoRA (L1) and Prefix-Tuning (P1) on a frozen GPT.

Gradient checks of every new module and of whole adapted models, the frozen base,
zero-init identity, parameter counts, LoRA merging, the adapter file format
(round trips and its errors), padding with a prefix, config errors, and LoRA
exported to Hugging Face PEFT."""
import json
import math
import shutil

import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, to_tensor
from minilm import backend, nn, peft
from minilm.models import GPT, GPTConfig
from minilm.models.classifier import GPTClassifier
from minilm.optim import AdamW

CFG = dict(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)
D, L, V = CFG["n_embd"], CFG["n_layer"], CFG["vocab_size"]

# one config per method variant, small enough to keep everything fast
METHODS = {
    "adapter_houlsby": lambda: peft.AdapterConfig(r=4, placement="houlsby"),
    "adapter_output": lambda: peft.AdapterConfig(r=4, placement="output", activation="gelu"),
    "adapter_pfeiffer": lambda: peft.AdapterConfig(reduction_factor=4, placement="pfeiffer"),
    "lora": lambda: peft.LoRAConfig(r=2, alpha=4, target_modules=("c_attn", "mlp.c_fc")),
    "lora_parts": lambda: peft.LoRAConfig(r=2, alpha=6, target_modules=("c_attn",), parts=("q", "v")),
    "prefix_flat": lambda: peft.PrefixConfig(m=3, hidden=None),
    "prefix_mlp": lambda: peft.PrefixConfig(m=3, hidden=8),
}
SAVED_METHODS = ["adapter_houlsby", "lora", "lora_parts", "prefix_flat", "prefix_mlp"]


# ---- helpers ----------------------------------------------------------------------------------
def base_gpt(device="cpu", seed=0, **kw):
    return GPT(GPTConfig(**{**CFG, **kw}), generator=minilm.Generator(seed)).to(device)


def classifier(device="cpu", seed=0, head_seed=1, pooling="mean", **kw):
    return GPTClassifier(base_gpt(device, seed, **kw), n_classes=3, pooling=pooling,
                         generator=minilm.Generator(head_seed))


def ids(shape, device="cpu", seed=0, high=V):
    return to_tensor(np.random.default_rng(seed).integers(0, high, size=shape), device)


def randomize(model, seed=0, scale=0.2, only=None):
    """Overwrite trainable parameters (all, or those whose name contains ``only``) with random values."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if p.requires_grad and (only is None or only in name):
            a = (rng.standard_normal(p.shape) * scale).astype(host(p).dtype)
            p.data = backend.to_device(a, p.device)


def snapshot(model):
    return {n: host(p).copy() for n, p in model.named_parameters()}


def logits_of(model, idx, **kw):
    with minilm.no_grad():
        return host(model(idx, **kw)[0]).copy()


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def expected_saved_names(model):
    """Trainable names, with a reparameterised prefix's MLP replaced by its folded flat P."""
    names = trainable_names(model)
    for mname, m in peft.peft_modules(model):
        if isinstance(m, peft.PrefixEncoder) and m.reparameterized:
            names = {n for n in names if not n.startswith(mname + ".")} | {mname + ".prefix"}
    return names


# ---- 1. gradient checks -----------------------------------------------------------------------
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


@pytest.mark.parametrize("parts", [None, ("q", "v")], ids=["whole", "qv"])
def test_lora_linear_gradcheck(parts, device):
    base = nn.Linear(4, 12, generator=minilm.Generator(0))
    layer = peft.LoRALinear(base, r=2, alpha=3.0, dropout=0.0, parts=parts,
                            generator=minilm.Generator(1)).double().to(device)
    assert not any(np.any(host(p)) for n, p in layer.named_parameters() if "lora_B" in n)   # B = 0
    randomize(layer, seed=2, scale=0.5, only="lora_B")
    names = {n for n, _ in layer.named_parameters()}
    expect = {"weight", "bias"} | ({"lora_A", "lora_B"} if parts is None else
                                   {"lora_A_q", "lora_B_q", "lora_A_v", "lora_B_v"})
    assert names == expect
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 3, 4)), device, requires_grad=True)
    minilm.gradcheck_module(layer, [x])


# ---- forward passes against the equations, written in NumPy ---------------------------------
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


@pytest.mark.parametrize("parts", [None, ("q",), ("k",), ("v",), ("q", "v"), ("v", "k", "q")])
def test_lora_forward_is_eq_l1(parts, device):
    d, r, alpha = 4, 2, 3.0
    n_out = 3 * d
    layer = peft.LoRALinear(nn.Linear(d, n_out, generator=minilm.Generator(0)), r=r, alpha=alpha, parts=parts,
                            generator=minilm.Generator(1)).to(device)
    randomize(layer, seed=2, scale=0.5)
    x = np.random.default_rng(0).standard_normal((2, 3, d)).astype(np.float32)
    with minilm.no_grad():
        y = host(layer(to_tensor(x, device)))
    W0, b = host(layer.weight).astype(np.float64), host(layer.bias)
    dW = np.zeros((d, n_out))
    if parts is None:
        dW = host(layer.lora_A).astype(np.float64) @ host(layer.lora_B)
    else:
        for p in parts:
            j = "qkv".index(p)
            dW[:, j * d:(j + 1) * d] = host(getattr(layer, "lora_A_" + p)) @ host(getattr(layer, "lora_B_" + p))
    np.testing.assert_allclose(y, x @ (W0 + alpha / r * dW) + b, rtol=1e-5, atol=1e-5)
    with minilm.no_grad():
        np.testing.assert_allclose(host(layer.delta_weight()), alpha / r * dW, rtol=1e-5, atol=1e-6)


def test_lora_dropout_only_in_training():
    layer = peft.LoRALinear(nn.Linear(8, 8, generator=minilm.Generator(0)), r=2, alpha=2, dropout=0.5,
                            generator=minilm.Generator(1))
    randomize(layer, seed=2, scale=0.5, only="lora_B")
    x = minilm.tensor(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    no_drop = peft.LoRALinear(nn.Linear(8, 8), r=2, alpha=2)
    for n in ("weight", "bias", "lora_A", "lora_B"):
        getattr(no_drop, n).data = getattr(layer, n).data
    with minilm.no_grad():
        ref = host(no_drop(x))
        assert not np.allclose(host(layer(x)), ref)              # training: dropout(x) in the update
        layer.eval()
        np.testing.assert_array_equal(host(layer(x)), ref)       # eval: no dropout


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


@pytest.mark.parametrize("hidden", [None, 5], ids=["flat", "reparam"])
def test_prefix_encoder_gradcheck(hidden, device):
    n_layer, n_head, d, m, B = 2, 2, 4, 3, 2
    enc = peft.PrefixEncoder(n_layer, n_head, d, m, hidden=hidden, init_std=0.3,
                             generator=minilm.Generator(0)).double().to(device)
    rng = np.random.default_rng(1)
    weights = [[to_tensor(rng.standard_normal((B, n_head, m, d // n_head)), device) for _ in range(2)]
               for _ in range(n_layer)]

    def fn(out):
        assert len(out) == n_layer
        total = None
        for (pk, pv), (wk, wv) in zip(out, weights):
            assert pk.shape == pv.shape == (B, n_head, m, d // n_head)
            term = (pk * pk * wk).sum() + (pv * pv * wv).sum()
            total = term if total is None else total + term
        return total

    minilm.gradcheck_module(enc, [B], fn=fn)


@pytest.mark.parametrize("hidden", [None, 5], ids=["flat", "reparam"])
def test_prefix_encoder_layout(hidden, device):
    """Layer l's keys for head h are columns h·hs:(h+1)·hs of P[l, 0] (the split of GPT's own k)."""
    n_layer, n_head, d, m, B = 3, 2, 4, 3, 2
    enc = peft.PrefixEncoder(n_layer, n_head, d, m, hidden=hidden, generator=minilm.Generator(0)).to(device)
    with minilm.no_grad():
        P = host(enc.flat())
        out = enc(B)
    assert P.shape == (n_layer, 2, m, d)
    if hidden:                                   # P = MLP(P′): (m, L·2·d) read as (m, L, 2, d)
        a = np.tanh(host(enc.wte.weight) @ host(enc.mlp_in.weight) + host(enc.mlp_in.bias))
        ref = (a @ host(enc.mlp_out.weight) + host(enc.mlp_out.bias)).reshape(m, n_layer, 2, d)
        np.testing.assert_allclose(P, ref.transpose(1, 2, 0, 3), rtol=1e-5, atol=1e-6)
    hs = d // n_head
    for l, (pk, pv) in enumerate(out):
        for which, t in ((0, pk), (1, pv)):
            want = P[l, which].reshape(m, n_head, hs).transpose(1, 0, 2)      # (H, m, hs)
            np.testing.assert_array_equal(host(t), np.broadcast_to(want, (B, n_head, m, hs)))
    folded = enc.fold()
    assert folded is enc and not enc.reparameterized and enc.hidden is None
    assert [n for n, _ in enc.named_parameters()] == ["prefix"]
    np.testing.assert_array_equal(host(enc.prefix), P)


def test_initialisations():
    a = peft.Adapter(256, r=64, generator=minilm.Generator(0))
    assert host(a.W1).std() == pytest.approx(0.01, rel=0.05)
    assert not np.any(host(a.W2)) and not np.any(host(a.b1)) and not np.any(host(a.b2))
    a = peft.Adapter(256, r=64, init_method="normal", generator=minilm.Generator(0))
    assert host(a.W1).std() == pytest.approx(0.02, rel=0.05) and host(a.W2).std() == pytest.approx(0.02, rel=0.05)
    a = peft.Adapter(256, r=64, init_method="xavier", generator=minilm.Generator(0))
    bound = math.sqrt(6 / (256 + 64))
    assert np.abs(host(a.W1)).max() <= bound and host(a.W1).std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    lin = nn.Linear(256, 128)
    lo = peft.LoRALinear(lin, r=64, alpha=8, generator=minilm.Generator(0))
    A = host(lo.lora_A)
    assert A.shape == (256, 64) and host(lo.lora_B).shape == (64, 128) and not np.any(host(lo.lora_B))
    assert np.abs(A).max() <= 1 / 16 and A.std() == pytest.approx(1 / 16 / math.sqrt(3), rel=0.05)
    assert lo.scaling == 8 / 64 and lo.weight is lin.weight and lo.bias is lin.bias
    lo = peft.LoRALinear(lin, r=8, alpha=8, init_method="gaussian", generator=minilm.Generator(0))
    assert host(lo.lora_A).std() == pytest.approx(1 / 8, rel=0.05)


@pytest.mark.parametrize("method", list(METHODS))
def test_gpt_with_each_method_gradcheck(method, device):
    m = base_gpt(device)
    peft.add(m, METHODS[method]())
    m.double()
    randomize(m, seed=3, scale=0.3)           # non-zero W2 / B so every PEFT gradient is exercised
    assert all(host(p).dtype == np.float64 for p in m.parameters())
    idx, tgt = ids((2, 5), device), ids((2, 5), device, seed=1)
    minilm.gradcheck_module(m, [idx, tgt], fn=lambda out: out[1], full_limit=0, n_entries=6)


@pytest.mark.parametrize("method", list(METHODS))
def test_peft_parameters_follow_the_model_device_and_dtype(method, device):
    m = base_gpt(device).double()
    peft.add(m, METHODS[method]())
    for n, p in m.named_parameters():
        assert p.device == device and host(p).dtype == np.float64, n
    _, loss = m(ids((1, 4), device), ids((1, 4), device, seed=1))
    assert host(loss).dtype == np.float64


def test_classifier_with_lora_gradcheck(device):
    clf = classifier(device, pooling="last")
    peft.add(clf, peft.LoRAConfig(r=2, alpha=4, target_modules=("c_attn",), parts=("q", "v")))
    clf.double()
    randomize(clf, seed=4, scale=0.3)
    assert trainable_names(clf) >= {"score.weight", "score.bias"}
    idx = ids((2, 6), device)
    mask = to_tensor(np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]), device)
    labels = to_tensor(np.array([0, 2]), device)
    minilm.gradcheck_module(clf, [idx, labels, mask], fn=lambda out: out[1], full_limit=0, n_entries=6)


# ---- 2. the base stays frozen -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt", "classifier"])
@pytest.mark.parametrize("method", ["adapter_houlsby", "lora_parts", "prefix_mlp"])
def test_base_is_frozen_while_peft_params_train(method, kind, device):
    model = base_gpt(device) if kind == "gpt" else classifier(device)
    base_names = {n for n, _ in model.named_parameters()}
    before = snapshot(model)
    peft.add(model, METHODS[method]())
    initial = snapshot(model)
    names = {n for n, _ in model.named_parameters()}
    assert base_names <= names                                  # base names (and ties) are unchanged
    peft_names = names - base_names
    head = {"score.weight", "score.bias"} if kind == "classifier" else set()
    assert peft_names and trainable_names(model) == peft_names | head
    params = [p for p in model.parameters() if p.requires_grad]
    opt = AdamW(params, lr=1e-2, weight_decay=0.0)              # no decay: a change needs a gradient
    idx = ids((2, 6), device)
    for step in range(3):
        opt.zero_grad()
        if kind == "gpt":
            _, loss = model(idx, ids((2, 6), device, seed=step + 1))
        else:
            _, loss = model(idx, to_tensor(np.array([step % 3, 1]), device))
        loss.backward()
        opt.step()
    after = snapshot(model)
    own = dict(model.named_parameters())
    for n in base_names - head:
        assert own[n].grad is None, f"{n} got a gradient"
        assert not own[n].requires_grad
        np.testing.assert_array_equal(after[n], before[n], err_msg=f"{n} moved")
        assert after[n].tobytes() == before[n].tobytes()
    for n in peft_names | head:
        assert own[n].grad is not None and own[n].requires_grad
        assert not np.array_equal(after[n], initial[n]), f"{n} did not train"


# ---- 3. zero init: the adapted model starts as the base --------------------------------------
ZERO_INIT = {
    "adapter_output": peft.AdapterConfig(r=4, placement="output"),
    "adapter_houlsby": peft.AdapterConfig(r=4, placement="houlsby"),
    "adapter_pfeiffer": peft.AdapterConfig(r=4, placement="pfeiffer", activation="gelu"),
    "lora_kaiming": peft.LoRAConfig(r=2, alpha=4, target_modules=("c_attn", "c_proj", "c_fc")),
    "lora_gaussian": peft.LoRAConfig(r=2, alpha=4, init="gaussian", target_modules=("c_attn", "c_fc")),
    "lora_parts_kaiming": peft.LoRAConfig(r=2, target_modules=("c_attn",), parts=("q", "v")),
    "lora_parts_gaussian": peft.LoRAConfig(r=2, init="gaussian", target_modules=("c_attn",), parts=("k",)),
}


@pytest.mark.parametrize("name", list(ZERO_INIT))
def test_zero_init_leaves_outputs_unchanged(name, device):
    m = base_gpt(device)
    idx = ids((2, 7), device)
    base = logits_of(m, idx)
    peft.add(m, ZERO_INIT[name])
    assert peft.peft_modules(m)
    np.testing.assert_array_equal(logits_of(m, idx), base)
    # and the PEFT parameters are not all zero (the zero is in W2 / B only)
    assert any(np.any(host(p)) for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["adapter_houlsby", "adapter_output", "lora", "lora_parts",
                                    "prefix_flat", "prefix_mlp"])
def test_disable_adapters_gives_the_base_model(method, device):
    m = base_gpt(device)
    idx = ids((2, 7), device)
    base = logits_of(m, idx)
    peft.add(m, METHODS[method]())
    if method.startswith("prefix"):              # not zero-init: the prefix changes outputs at once
        assert not np.allclose(logits_of(m, idx), base, atol=1e-6)
    randomize(m, seed=5, scale=0.3)
    adapted = logits_of(m, idx)
    assert not np.allclose(adapted, base, atol=1e-5)
    with peft.disable_adapters(m):
        np.testing.assert_array_equal(logits_of(m, idx), base)
    np.testing.assert_array_equal(logits_of(m, idx), adapted)
    with pytest.raises(ZeroDivisionError):       # switched back on even when the block raises
        with peft.disable_adapters(m):
            1 / 0
    np.testing.assert_array_equal(logits_of(m, idx), adapted)


# ---- 4. parameter counts ----------------------------------------------------------------------
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


def test_lora_parameter_count():
    r = 3
    m = base_gpt()
    peft.add(m, peft.LoRAConfig(r=r, target_modules=("c_attn", "mlp.c_fc", "attn.c_proj")))
    per_layer = r * (D + 3 * D) + r * (D + 4 * D) + r * (D + D)
    assert m.num_parameters(trainable_only=True) == L * per_layer
    assert len(peft.lora_layers(m)) == 3 * L
    m = base_gpt()
    peft.add(m, peft.LoRAConfig(r=r, target_modules=("c_attn",), parts=("q", "v")))
    assert m.num_parameters(trainable_only=True) == L * 2 * (2 * r * D)
    m = base_gpt()
    peft.add(m, peft.LoRAConfig(r=r, target_modules=("c_attn", "mlp.c_proj"), parts=("k",)))
    assert m.num_parameters(trainable_only=True) == L * (2 * r * D + r * (4 * D + D))


def test_prefix_parameter_count_and_trainable_report(capsys):
    m_len, hidden = 3, 8
    m = base_gpt()
    total0 = m.num_parameters()
    peft.add(m, peft.PrefixConfig(m=m_len, hidden=None))
    flat = L * 2 * m_len * D
    assert m.num_parameters(trainable_only=True) == flat
    rep = peft.trainable_report(m)
    line = capsys.readouterr().out
    assert rep["trainable"] == flat and rep["total"] == total0 + flat and rep["saved"] == flat
    assert rep["percent"] == pytest.approx(100 * flat / (total0 + flat))
    assert f"{flat:,}" in line and f"{total0 + flat:,}" in line and f"{rep['percent']:.4f}" in line

    m = base_gpt()
    peft.add(m, peft.PrefixConfig(m=m_len, hidden=hidden))
    mlp = m_len * D + (D * hidden + hidden) + (hidden * L * 2 * D + L * 2 * D)
    rep = peft.trainable_report(m)
    line = capsys.readouterr().out
    assert rep["trainable"] == mlp == m.num_parameters(trainable_only=True)
    assert rep["total"] == total0 + mlp
    assert rep["saved"] == flat < rep["trainable"]
    assert f"{mlp:,}" in line and f"{total0 + mlp:,}" in line and f"{flat:,}" in line


def test_trainable_report_of_a_classifier_counts_the_head(capsys):
    clf = classifier()
    total0 = clf.num_parameters()
    r = 2
    peft.add(clf, peft.LoRAConfig(r=r, target_modules=("c_attn",)))
    expect = L * r * (D + 3 * D) + (D * 3 + 3)
    rep = peft.trainable_report(clf)
    line = capsys.readouterr().out
    assert rep == {"trainable": expect, "total": total0 + L * r * 4 * D, "saved": expect,
                   "percent": pytest.approx(100 * expect / (total0 + L * r * 4 * D))}
    assert line.startswith(f"trainable params: {expect:,} || all params: {total0 + L * r * 4 * D:,}")
    assert "saved" not in line


# ---- 5. LoRA merging --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "lora_parts"])
def test_lora_merge_and_unmerge(method, device):
    m = base_gpt(device)
    peft.add(m, METHODS[method]())
    randomize(m, seed=6, scale=0.3)
    idx = ids((2, 7), device)
    out = logits_of(m, idx)
    layers = [l for _, l in peft.lora_layers(m)]
    W0 = [host(l.weight).copy() for l in layers]

    peft.merge_lora(m)
    assert all(l.merged for l in layers)
    Wm = [host(l.weight).copy() for l in layers]
    for l, w0, wm in zip(layers, W0, Wm):
        with minilm.no_grad():
            dw = host(l.delta_weight()).astype(np.float64)
        assert np.abs(dw).max() > 1e-3
        np.testing.assert_allclose(wm, w0.astype(np.float64) + dw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits_of(m, idx), out, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="already merged"):
        layers[0].merge()
    with pytest.raises(RuntimeError):
        peft.merge_lora(m)
    with pytest.raises(RuntimeError, match="merged"):
        with peft.disable_adapters(m):
            pass

    peft.unmerge_lora(m)
    assert not any(l.merged for l in layers)
    for w0, wm, l in zip(W0, Wm, layers):
        # W_m = fl(W0 + ΔW), W_r = fl(W_m − ΔW) with the sums exact in float64: |W_r − W0| ≤ u(|W_m| + |W0|)
        bound = 2.0 ** -24 * (np.abs(wm).astype(np.float64) + np.abs(w0)) * (1 + 1e-6)
        err = np.abs(host(l.weight).astype(np.float64) - w0)
        assert np.all(err <= bound), f"unmerge error {err.max()} over the bound"
    np.testing.assert_allclose(logits_of(m, idx), out, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="not merged"):
        layers[0].unmerge()

    # keep_original: bit-exact restore
    for l in layers:
        l.weight.data = backend.to_device(host(l.weight) * 1.0001, l.weight.device)   # any W0
    W0 = [host(l.weight).copy() for l in layers]
    peft.merge_lora(m, keep_original=True)
    assert not all(np.array_equal(host(l.weight), w) for l, w in zip(layers, W0))
    peft.unmerge_lora(m)
    for l, w0 in zip(layers, W0):
        assert host(l.weight).tobytes() == w0.tobytes()


def test_merge_refused_while_disabled():
    m = base_gpt()
    peft.add(m, METHODS["lora"]())
    with peft.disable_adapters(m):
        with pytest.raises(RuntimeError, match="disabled"):
            peft.lora_layers(m)[0][1].merge()
    with pytest.raises(ValueError, match="no LoRA"):
        peft.merge_lora(base_gpt())


@pytest.mark.parametrize("method", ["lora", "lora_parts"])
def test_merge_and_unload(method, device):
    m = base_gpt(device)
    base_names = [n for n, _ in m.named_parameters()]
    peft.add(m, METHODS[method]())
    randomize(m, seed=7, scale=0.3)
    idx = ids((2, 7), device)
    out = logits_of(m, idx)
    plain = peft.merge_and_unload(m)
    assert not peft.peft_modules(plain) and not peft.lora_layers(plain)
    assert [n for n, _ in plain.named_parameters()] == base_names
    assert all(isinstance(blk.attn.c_attn, nn.Linear) for blk in plain.transformer.h)
    assert all(p.requires_grad for p in plain.parameters())
    np.testing.assert_allclose(logits_of(plain, idx), out, rtol=0, atol=1e-5)
    with peft.disable_adapters(plain):           # nothing left to switch off
        np.testing.assert_allclose(logits_of(plain, idx), out, rtol=0, atol=1e-5)


def test_merge_and_unload_refuses_adapters():
    m = base_gpt()
    peft.add(m, METHODS["adapter_output"]())
    with pytest.raises(ValueError, match="only LoRA"):
        peft.merge_and_unload(m)


# ---- 6. save / load round trips ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt", "classifier"])
@pytest.mark.parametrize("method", SAVED_METHODS)
def test_save_load_round_trip(method, kind, device, tmp_path):
    make = (lambda: base_gpt(device)) if kind == "gpt" else (lambda: classifier(device))
    pre = "" if kind == "gpt" else "gpt."
    trained = make()
    peft.add(trained, METHODS[method]())
    randomize(trained, seed=8, scale=0.3)       # the "trained" PEFT arrays (and the head)
    idx = ids((2, 7), device)
    out = logits_of(trained, idx)
    expect = expected_saved_names(trained)

    path = peft.save_adapter(trained, tmp_path / "ad")
    meta, arrays = peft.read_adapter(path)
    assert set(arrays) == expect and meta["keys"] == sorted(expect)
    assert meta["format"] == "minilm-peft" and meta["model"] == type(trained).__name__
    assert pre + "transformer.wte.weight" not in arrays
    assert not any("wte.weight" in k and "prefix" not in k for k in arrays)
    if method == "prefix_mlp":
        assert set(arrays) == {pre + "prefix.prefix"} | ({"score.weight", "score.bias"} if pre else set())
        assert arrays[pre + "prefix.prefix"].shape == (L, 2, 3, D)
        assert meta["methods"][0]["hidden"] is None
    own = dict(trained.named_parameters())
    for k, a in arrays.items():
        if k in own:
            np.testing.assert_array_equal(a, host(own[k]))

    fresh = make()
    base_before = snapshot(fresh)
    wte = (fresh if kind == "gpt" else fresh.gpt).transformer.wte.weight
    loaded = peft.load_adapter(fresh, path)
    assert loaded is fresh
    np.testing.assert_array_equal(logits_of(fresh, idx), out)
    assert trainable_names(fresh) == expect                 # a reparameterised prefix came back flat
    assert [type(c).__name__ for c in peft.configs_of(fresh)] == [type(c).__name__ for c in
                                                                 peft.configs_of(trained)]
    if method.startswith("prefix"):
        assert not peft.gpt_of(fresh).prefix.reparameterized
    after = dict(fresh.named_parameters())
    for n, a in base_before.items():
        if n not in expect:
            assert host(after[n]).tobytes() == a.tobytes(), f"load changed base parameter {n}"
    assert not any(after[n].requires_grad for n in base_before if n not in expect)   # the base is frozen

    # the tie: the head is still the token embedding object
    gpt = peft.gpt_of(fresh)
    assert gpt.transformer.wte.weight is wte
    if kind == "gpt":
        with minilm.no_grad():
            h = fresh.hidden_states(idx)
            np.testing.assert_array_equal(host(h @ gpt.transformer.wte.weight.T), out)
    wte.data = wte.data * 2.0
    changed = logits_of(fresh, idx)
    assert not np.allclose(changed, out)


def test_unfrozen_tied_embedding_is_saved_once(device, tmp_path):
    trained = base_gpt(device)
    peft.add(trained, peft.LoRAConfig(r=2, target_modules=("c_attn",),
                                      train_also=("transformer.wte.weight",)))
    assert trained.transformer.wte.weight.requires_grad
    randomize(trained, seed=9, scale=0.3)
    idx = ids((2, 7), device)
    out = logits_of(trained, idx)
    peft.save_adapter(trained, tmp_path / "ad")
    meta, arrays = peft.read_adapter(tmp_path / "ad")
    assert meta["keys"].count("transformer.wte.weight") == 1
    assert set(arrays) == trainable_names(trained)
    wte_like = [k for k, a in arrays.items() if a.shape == (V, D)]
    assert wte_like == ["transformer.wte.weight"]          # no second copy (lm_head) of the tie
    fresh = base_gpt(device)
    w = fresh.transformer.wte.weight
    peft.load_adapter(fresh, tmp_path / "ad")
    assert fresh.transformer.wte.weight is w and w.requires_grad
    np.testing.assert_array_equal(host(w), arrays["transformer.wte.weight"])
    np.testing.assert_array_equal(logits_of(fresh, idx), out)


def test_save_overwrites_and_refuses_a_model_without_peft(tmp_path):
    with pytest.raises(ValueError, match="no PEFT"):
        peft.save_adapter(base_gpt(), tmp_path / "x")
    a = base_gpt()
    peft.add(a, METHODS["lora"]())
    randomize(a, seed=1)
    peft.save_adapter(a, tmp_path / "ad")
    randomize(a, seed=2)
    peft.save_adapter(a, tmp_path / "ad")                    # replaces the folder
    _, arrays = peft.read_adapter(tmp_path / "ad")
    np.testing.assert_array_equal(arrays["transformer.h.0.attn.c_attn.lora_A"],
                                  host(a.transformer.h[0].attn.c_attn.lora_A))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]


def test_two_methods_round_trip(device, tmp_path):
    trained = classifier(device)
    peft.add(trained, METHODS["lora_parts"]())
    peft.add(trained, METHODS["prefix_mlp"]())
    randomize(trained, seed=13, scale=0.3)
    idx = ids((2, 7), device)
    out = logits_of(trained, idx)
    peft.save_adapter(trained, tmp_path / "ad")
    meta, arrays = peft.read_adapter(tmp_path / "ad")
    assert [d["method"] for d in meta["methods"]] == ["lora", "prefix"]
    assert set(arrays) == expected_saved_names(trained)
    fresh = peft.load_adapter(classifier(device), tmp_path / "ad")
    np.testing.assert_array_equal(logits_of(fresh, idx), out)


def test_a_second_method_keeps_the_first_ones_train_also():
    """LoRAConfig(train_also=wte) then a prefix: wte must stay trainable (and be saved)."""
    m = base_gpt()
    peft.add(m, peft.LoRAConfig(r=2, train_also=("transformer.wte.weight",)))
    assert m.transformer.wte.weight.requires_grad
    peft.add(m, peft.PrefixConfig(m=2, hidden=None))
    still = bool(m.transformer.wte.weight.requires_grad)
    assert still, "the second add() froze transformer.wte.weight, which the first config trains"
    assert "transformer.wte.weight" in peft.adapter_state_dict(m)


def test_refused_adapters_leave_the_model_as_it_was(tmp_path):
    m = base_gpt()
    peft.add(m, peft.AdapterConfig(r=2, placement="pfeiffer"))
    mods = [n for n, _ in peft.peft_modules(m)]
    with pytest.raises(ValueError, match="adapter_mlp"):
        peft.add(m, peft.AdapterConfig(r=2, placement="houlsby"))
    assert [n for n, _ in peft.peft_modules(m)] == mods, "a refused add_adapters left adapters behind"
    peft.save_adapter(m, tmp_path / "ad")                  # and what is saved loads again
    peft.load_adapter(base_gpt(), tmp_path / "ad")


def test_removing_peft_forgets_the_recorded_methods(tmp_path):
    m = base_gpt()
    peft.add(m, METHODS["lora"]())
    peft.save_adapter(m, tmp_path / "ad")
    peft.remove_peft(m)
    assert not peft.peft_modules(m) and all(p.requires_grad for p in m.parameters())
    assert peft.configs_of(m) == []
    peft.load_adapter(m, tmp_path / "ad")                  # the model is a plain base again


def test_merge_and_unload_gives_a_plain_model_that_takes_a_new_lora(tmp_path):
    m = base_gpt()
    peft.add(m, METHODS["lora"]())
    randomize(m, seed=14)
    plain = peft.merge_and_unload(m)
    assert peft.configs_of(plain) == []
    peft.add(plain, METHODS["lora_parts"]())               # a second round of fine-tuning
    randomize(plain, seed=15)
    idx = ids((2, 5))
    out = logits_of(plain, idx)
    peft.save_adapter(plain, tmp_path / "ad")
    base = base_gpt()
    base.load_state_dict({n: host(p) for n, p in plain.named_parameters() if "lora" not in n})
    np.testing.assert_array_equal(logits_of(peft.load_adapter(base, tmp_path / "ad"), idx), out)


def test_unmerge_with_kept_original_after_moving_the_model():
    m = base_gpt()
    peft.add(m, METHODS["lora"]())
    randomize(m, seed=16)
    layer = peft.lora_layers(m)[0][1]
    w0 = host(layer.weight).copy()
    peft.merge_lora(m, keep_original=True)
    m.double().to("strict")
    peft.unmerge_lora(m)
    assert layer.weight.device == "strict" and layer.weight.dtype == np.float64
    np.testing.assert_array_equal(host(layer.weight), w0.astype(np.float64))


# ---- 7. loading errors ------------------------------------------------------------------------
def _assert_untouched(model, before, grads):
    assert not peft.peft_modules(model) and not peft.configs_of(model)
    assert peft.gpt_of(model).prefix is None
    now = dict(model.named_parameters())
    assert set(now) == set(before)
    for n, a in before.items():
        assert host(now[n]).tobytes() == a.tobytes(), n
        assert now[n].requires_grad == grads[n], n


@pytest.mark.parametrize("method", ["adapter_houlsby", "lora", "lora_parts", "prefix_flat"])
@pytest.mark.parametrize("change", [dict(n_embd=8), dict(n_layer=3), dict(n_layer=1)],
                         ids=["d8", "L3", "L1"])
def test_loading_into_a_different_model_fails_cleanly(method, change, tmp_path):
    src = base_gpt()
    peft.add(src, METHODS[method]())
    peft.save_adapter(src, tmp_path / "ad")
    _, arrays = peft.read_adapter(tmp_path / "ad")
    probe = base_gpt(**change)                            # what the other model's adapter looks like
    peft.add(probe, METHODS[method]())
    want = {n: p.shape for n, p in probe.named_parameters() if p.requires_grad}
    missing = sorted(set(want) - set(arrays))
    unexpected = sorted(set(arrays) - set(want))
    mismatched = sorted(k for k in set(want) & set(arrays) if tuple(arrays[k].shape) != want[k])
    assert missing or unexpected or mismatched

    other = base_gpt(**change)
    other.freeze("transformer.wpe.*")                     # a non-default requires_grad to restore
    before, grads = snapshot(other), {n: p.requires_grad for n, p in other.named_parameters()}
    with pytest.raises(nn.StateDictError) as e:
        peft.load_adapter(other, tmp_path / "ad")
    msg = str(e.value)
    for words, keys in [("missing from the file", missing), ("not in the model", unexpected),
                        ("shape mismatches", mismatched)]:
        assert (words in msg) == bool(keys), msg
        assert all(k in msg for k in keys), msg
    for k in set(want) & set(arrays):
        if k not in mismatched:                           # a key that fits is not reported
            assert f"{k}:" not in msg and f"{k}," not in msg and not msg.endswith(k), k
    _assert_untouched(other, before, grads)
    assert not other.transformer.wpe.weight.requires_grad


@pytest.mark.parametrize("edit", ["extra", "missing", "shape"])
def test_hand_edited_adapter_file_is_refused(edit, tmp_path):
    from safetensors.numpy import save_file

    src = base_gpt()
    peft.add(src, METHODS["lora"]())
    peft.save_adapter(src, tmp_path / "ad")
    _, arrays = peft.read_adapter(tmp_path / "ad")
    arrays = dict(arrays)
    key = "transformer.h.1.mlp.c_fc.lora_B"
    if edit == "extra":
        key = "transformer.h.1.mlp.c_proj.lora_A"
        arrays[key] = np.zeros((4 * D, 2), np.float32)
    elif edit == "missing":
        del arrays[key]
    else:
        arrays[key] = np.zeros((3, 4 * D), np.float32)
    (tmp_path / "bad").mkdir()
    save_file(arrays, str(tmp_path / "bad" / "adapter_model.safetensors"))
    shutil.copy(tmp_path / "ad" / "adapter_config.json", tmp_path / "bad" / "adapter_config.json")
    m = base_gpt()
    before, grads = snapshot(m), {n: p.requires_grad for n, p in m.named_parameters()}
    with pytest.raises(nn.StateDictError, match=key.replace(".", r"\.")):
        peft.load_adapter(m, tmp_path / "bad")
    _assert_untouched(m, before, grads)


def test_bad_adapter_folders_name_the_file(tmp_path):
    m = base_gpt()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        peft.load_adapter(m, tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        peft.load_adapter(m, tmp_path / "half")
    # a PEFT (Hugging Face) folder is not a minilm adapter
    src = base_gpt()
    peft.add(src, METHODS["lora"]())
    peft.export_peft(src, tmp_path / "hf")
    with pytest.raises(ValueError, match=r"hf.adapter_config\.json is not a minilm adapter"):
        peft.load_adapter(m, tmp_path / "hf")
    (tmp_path / "hf" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json is not valid JSON"):
        peft.load_adapter(m, tmp_path / "hf")
    assert not peft.peft_modules(m)


def test_load_refuses_a_model_with_peft_or_of_another_class(tmp_path):
    src = base_gpt()
    peft.add(src, METHODS["lora"]())
    peft.save_adapter(src, tmp_path / "ad")
    m = base_gpt()
    peft.add(m, METHODS["prefix_flat"]())
    with pytest.raises(ValueError, match="already has PEFT"):
        peft.load_adapter(m, tmp_path / "ad")
    assert [type(c).__name__ for c in peft.configs_of(m)] == ["PrefixConfig"]
    m = base_gpt()
    peft.load_adapter(m, tmp_path / "ad")
    with pytest.raises(ValueError, match="already has PEFT"):
        peft.load_adapter(m, tmp_path / "ad")
    with pytest.raises(ValueError, match="GPTClassifier"):
        peft.load_adapter(classifier(), tmp_path / "ad")


def test_unknown_method_in_config_is_refused_and_undone(tmp_path):
    src = base_gpt()
    peft.add(src, METHODS["lora"]())
    peft.save_adapter(src, tmp_path / "ad")
    meta = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    meta["methods"].append({"method": "ia3"})
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(meta))
    m = base_gpt()
    before, grads = snapshot(m), {n: p.requires_grad for n, p in m.named_parameters()}
    with pytest.raises(ValueError, match="ia3"):
        peft.load_adapter(m, tmp_path / "ad")
    _assert_untouched(m, before, grads)


# ---- 8. a prefix and padding ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["prefix_flat", "prefix_mlp"])
def test_prefix_with_right_padding_matches_the_unpadded_sequence(method, device):
    m = base_gpt(device)
    peft.add(m, METHODS[method]())
    randomize(m, seed=10, scale=0.5)
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, size=(3, 9))
    lengths = [9, 5, 2]
    mask = np.zeros((3, 9), np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    with minilm.no_grad():
        H = host(m.hidden_states(to_tensor(x, device), attention_mask=to_tensor(mask, device)))
        for b, n in enumerate(lengths):
            ref = host(m.hidden_states(to_tensor(x[b:b + 1, :n], device)))
            np.testing.assert_allclose(H[b, :n], ref[0], rtol=0, atol=1e-6, err_msg=f"row {b}")
        # the prefix matters at every real position
        with peft.disable_adapters(m):
            H0 = host(m.hidden_states(to_tensor(x, device), attention_mask=to_tensor(mask, device)))
    for b, n in enumerate(lengths):
        assert np.all(np.abs(H[b, :n] - H0[b, :n]).max(axis=-1) > 1e-4)
    # padded keys are hidden from every query: a new token at the first padded position (5 in
    # row 1) changes no later position's state (they would see it, causally, without the mask)
    x2 = x.copy()
    x2[1, 5] = (x[1, 5] + 1) % V
    with minilm.no_grad():
        H2 = host(m.hidden_states(to_tensor(x2, device), attention_mask=to_tensor(mask, device)))
        H3 = host(m.hidden_states(to_tensor(x2, device)))
        H4 = host(m.hidden_states(to_tensor(x, device)))
    np.testing.assert_array_equal(np.delete(H2, [5], axis=1)[1], np.delete(H, [5], axis=1)[1])
    assert not np.allclose(H3[1, 6:], H4[1, 6:], atol=1e-6)      # the check can see a leak


@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_prefix_and_padding_mask(causal, device):
    rng = np.random.default_rng(1)
    B, H, T, m, hs = 2, 2, 5, 3, 4
    q = rng.standard_normal((B, H, T, hs))
    k = rng.standard_normal((B, H, m + T, hs))
    v = rng.standard_normal((B, H, m + T, hs))
    kpm = np.array([[False, False, False, True, True], [False, True, False, False, True]])

    def run(k_, fn=F.scaled_dot_product_attention):
        with minilm.no_grad():
            return host(fn(to_tensor(q, device), to_tensor(k_, device), to_tensor(v, device), causal=causal,
                           key_padding_mask=to_tensor(kpm, device), n_prefix=m))

    out = run(k)
    np.testing.assert_allclose(out, run(k, F.scaled_dot_product_attention_reference), rtol=0, atol=1e-12)
    real = ~kpm                                              # query rows at real positions
    for j in range(m):                                       # every row attends to every prefix key
        k2 = k.copy()
        k2[:, :, j] += 3.0
        changed = np.abs(run(k2) - out).max(axis=-1)         # (B, H, T)
        assert np.all(changed > 1e-8), f"a row ignores prefix key {j}"
    for b, t in zip(*np.nonzero(kpm)):                       # no row attends to a padded key
        k2 = k.copy()
        k2[b, :, m + t] += 3.0
        v2 = v.copy()
        v2[b, :, m + t] += 3.0
        with minilm.no_grad():
            o2 = host(F.scaled_dot_product_attention(to_tensor(q, device), to_tensor(k2, device),
                                                     to_tensor(v2, device), causal=causal,
                                                     key_padding_mask=to_tensor(kpm, device), n_prefix=m))
        np.testing.assert_array_equal(o2[b][:, real[b]], out[b][:, real[b]])
        np.testing.assert_array_equal(o2, out)
    # the gradients of the fused op agree with central differences under the same masks
    tq, tk, tv = (to_tensor(a, device, requires_grad=True) for a in (q, k, v))
    minilm.gradcheck(lambda a, b_, c: F.scaled_dot_product_attention(
        a, b_, c, causal=causal, key_padding_mask=to_tensor(kpm, device), n_prefix=m), [tq, tk, tv],
        full_limit=0, n_entries=6)


# ---- the classifier with padding ------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("method", [None, "prefix_flat", "lora"])
def test_classifier_padding_gives_the_unpadded_output(pooling, method, device):
    clf = classifier(device, pooling=pooling)
    if method:
        peft.add(clf, METHODS[method]())
        randomize(clf, seed=11, scale=0.3)
    rng = np.random.default_rng(2)
    x = rng.integers(0, V, size=(3, 8))
    lengths = [8, 5, 1]
    mask = (np.arange(8)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    out = logits_of(clf, to_tensor(x, device), attention_mask=to_tensor(mask, device))
    assert out.shape == (3, 3)
    for b, n in enumerate(lengths):
        ref = logits_of(clf, to_tensor(x[b:b + 1, :n], device))
        np.testing.assert_allclose(out[b], ref[0], rtol=0, atol=1e-6, err_msg=f"row {b}")
    unmasked = logits_of(clf, to_tensor(x, device))
    np.testing.assert_allclose(unmasked[0], out[0], rtol=0, atol=1e-6)   # an unpadded row: the mask is moot
    assert not np.allclose(unmasked[1], out[1], atol=1e-6)               # the padded rows: it is not
    assert not np.allclose(unmasked[2], out[2], atol=1e-6)


# ---- 9. config errors -------------------------------------------------------------------------
def test_config_errors():
    m = base_gpt()
    before = snapshot(m)
    with pytest.raises(KeyError, match="q_proj"):
        peft.add(m, peft.LoRAConfig(target_modules=("q_proj", "v_proj")))
    with pytest.raises(ValueError, match="parts"):
        peft.add(m, peft.LoRAConfig(target_modules=("c_attn",), parts=("q", "x")))
    with pytest.raises(ValueError, match="parts"):
        peft.add(m, peft.LoRAConfig(target_modules=("c_attn",), parts=("q", "q")))
    with pytest.raises(ValueError, match="rank"):
        peft.add(m, peft.LoRAConfig(r=0))
    with pytest.raises(ValueError, match="dropout"):
        peft.add(m, peft.LoRAConfig(dropout=1.0))
    with pytest.raises(ValueError, match="init"):
        peft.add(m, peft.LoRAConfig(init="zeros"))
    # nothing was put in, nothing frozen, nothing recorded
    assert not peft.peft_modules(m) and not peft.configs_of(m)
    assert all(p.requires_grad for p in m.parameters())
    assert snapshot(m).keys() == before.keys()

    with pytest.raises(ValueError, match="placement"):
        peft.AdapterConfig(placement="middle")
    with pytest.raises(ValueError, match="activation"):
        peft.add(m, peft.AdapterConfig(activation="swish"))
    with pytest.raises(ValueError, match="init"):
        peft.add(base_gpt(), peft.AdapterConfig(init="zeros"))

    m = base_gpt()
    peft.add(m, peft.AdapterConfig(r=2, placement="pfeiffer"))
    with pytest.raises(ValueError, match="adapter_mlp"):
        peft.add(m, peft.AdapterConfig(r=2, placement="houlsby"))
    with pytest.raises(ValueError, match="adapter_mlp"):
        peft.add(m, peft.AdapterConfig(r=2, placement="pfeiffer"))
    peft.add(m, peft.AdapterConfig(r=2, placement="output"))        # another slot is fine

    m = base_gpt()
    peft.add(m, peft.PrefixConfig(m=2, hidden=None))
    with pytest.raises(ValueError, match="already has a prefix"):
        peft.add(m, peft.PrefixConfig(m=2))
    with pytest.raises(ValueError, match="positive"):
        peft.add(base_gpt(), peft.PrefixConfig(m=0))
    with pytest.raises(TypeError, match="LoRALinear wraps"):
        peft.LoRALinear(nn.Embedding(3, 4), r=2, alpha=2)
    with pytest.raises(ValueError, match="fused qkv"):
        peft.LoRALinear(nn.Linear(4, 5), r=2, alpha=2, parts=("q",))


# ---- 10. LoRA exported to Hugging Face PEFT -------------------------------------------------
@pytest.mark.parametrize("setup", ["whole", "qv", "mixed"])
def test_export_peft_matches_hugging_face_peft(setup, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch = pytest.importorskip("torch")
    hf_peft = pytest.importorskip("peft")
    from safetensors.numpy import load_file

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    transformers.GPT2LMHeadModel(hf_config).eval().save_pretrained(tmp_path / "base", safe_serialization=True)
    m = minilm.models.load_gpt2(str(tmp_path / "base"))
    d = 32
    if setup == "whole":
        config = peft.LoRAConfig(r=4, alpha=8, target_modules=("c_attn", "mlp.c_fc"))
        shapes = {"attn.c_attn": (4, d, 3 * d), "mlp.c_fc": (4, d, 4 * d)}
    elif setup == "qv":
        config = peft.LoRAConfig(r=2, alpha=8, target_modules=("c_attn",), parts=("q", "v"))
        shapes = {"attn.c_attn": (4, d, 3 * d)}
    else:   # parts on c_attn (rank 2·2) and a whole c_fc (rank 2): ranks differ, PEFT's rank_pattern
        config = peft.LoRAConfig(r=2, alpha=3, target_modules=("c_attn", "mlp.c_fc"), parts=("k", "v"))
        shapes = {"attn.c_attn": (4, d, 3 * d), "mlp.c_fc": (2, d, 4 * d)}
    peft.add(m, config)
    randomize(m, seed=12, scale=0.15)                    # A and B: a non-zero update
    x = np.random.default_rng(0).integers(0, 50, size=(2, 16))
    ours = logits_of(m, minilm.tensor(x))
    with peft.disable_adapters(m):
        base = logits_of(m, minilm.tensor(x))
    assert np.abs(ours - base).max() > 1e-2

    peft.export_peft(m, tmp_path / "ad")
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    expect = {}
    for i in range(2):
        for mod, (rr, n_in, n_out) in shapes.items():
            expect[f"base_model.model.transformer.h.{i}.{mod}.lora_A.weight"] = (rr, n_in)
            expect[f"base_model.model.transformer.h.{i}.{mod}.lora_B.weight"] = (n_out, rr)
    assert {k: v.shape for k, v in tensors.items()} == expect
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["fan_in_fan_out"] is True

    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    pm = hf_peft.PeftModel.from_pretrained(hf, tmp_path / "ad").eval()
    with torch.no_grad():
        theirs = pm(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    with torch.no_grad(), pm.disable_adapter():
        np.testing.assert_allclose(base, pm(torch.from_numpy(x)).logits.numpy(), rtol=0, atol=1e-4)


def test_export_peft_refusals(tmp_path):
    m = base_gpt()
    with pytest.raises(ValueError, match="no LoRA"):
        peft.export_peft(m, tmp_path / "a")
    peft.add(m, METHODS["lora"]())
    peft.merge_lora(m)
    with pytest.raises(ValueError, match="merged"):
        peft.export_peft(m, tmp_path / "a")
    clf = classifier()
    peft.add(clf, METHODS["lora"]())
    with pytest.raises(TypeError, match="GPTClassifier"):
        peft.export_peft(clf, tmp_path / "b")


def test_prefix_equals_a_hugging_face_past_key_value_cache(tmp_path):
    """P1 is a past (key, value) cache of length m that every token sees: GPT-2 in transformers,
    given the prefix as its cache, positions 0..T−1 and a padding mask, computes the same logits."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch = pytest.importorskip("torch")
    import inspect
    if not hasattr(transformers, "DynamicCache"):
        pytest.skip("transformers has no DynamicCache")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    m = minilm.models.load_gpt2(str(tmp_path))
    peft.add(m, peft.PrefixConfig(m=3, hidden=8))
    randomize(m, seed=17, scale=0.5)
    x = np.random.default_rng(1).integers(0, 50, size=(2, 10))
    mask = np.ones((2, 10), np.int64)
    mask[1, 6:] = 0
    ours = logits_of(m, minilm.tensor(x), attention_mask=minilm.tensor(mask))
    with minilm.no_grad():
        kv = [(torch.from_numpy(host(k).copy()), torch.from_numpy(host(v).copy())) for k, v in m.prefix(2)]
    try:
        cache = transformers.DynamicCache(ddp_cache_data=kv, config=hf.config)
    except TypeError:
        pytest.skip("this transformers' DynamicCache takes other arguments")
    kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.no_grad():
        theirs = hf(torch.from_numpy(x), position_ids=torch.arange(10)[None].expand(2, 10),
                    attention_mask=torch.from_numpy(np.concatenate([np.ones((2, 3), np.int64), mask], 1)),
                    **{kw: cache}).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_last_pooling_finds_the_last_real_token_on_either_side():
    """pool(..., "last") picks the last position whose mask is 1, for right and for left padding."""
    from minilm.models import GPT, GPTConfig, GPTClassifier
    clf = GPTClassifier(GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16)), 3,
                        pooling="last")
    H = minilm.tensor(np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4))
    mask = np.array([[1, 1, 1, 0, 0],      # right padding: last real token at 2
                     [0, 0, 1, 1, 1]])     # left padding: at 4
    out = clf.pool(H, mask).numpy()
    np.testing.assert_array_equal(out, H.numpy()[[0, 1], [2, 4]])
