"""minilm.peft.lora: LoRALinear (Eq. L1), add_lora and merging.

Gradient checks, the forward pass against the equation (whole matrix and q/k/v parts of a
fused qkv Linear), dropout, parameter counts, merge / unmerge (float64 sums, kept originals)."""
import numpy as np
import pytest

import minilm
from helpers import host, logits_of, randomize, to_tensor, token_ids
from minilm import backend, nn, peft
from peft_cases import D, L, METHODS, V, base_gpt, classifier, trainable_names


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


def test_classifier_with_lora_gradcheck(device):
    clf = classifier(device, pooling="last")
    peft.add(clf, peft.LoRAConfig(r=2, alpha=4, target_modules=("c_attn",), parts=("q", "v")))
    clf.double()
    randomize(clf, seed=4, scale=0.3)
    assert trainable_names(clf) >= {"score.weight", "score.bias"}
    idx = token_ids((2, 6), V, device)
    mask = to_tensor(np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]), device)
    labels = to_tensor(np.array([0, 2]), device)
    minilm.gradcheck_module(clf, [idx, mask, None, labels], fn=lambda out: out.loss, full_limit=0, n_entries=6)


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


@pytest.mark.parametrize("method", ["lora", "lora_parts"])
def test_lora_merge_and_unmerge(method, device):
    m = base_gpt(device)
    peft.add(m, METHODS[method]())
    randomize(m, seed=6, scale=0.3)
    idx = token_ids((2, 7), V, device)
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
