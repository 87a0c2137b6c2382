"""minilm.peft.core and base: what every method shares, on every model family.

Whole adapted models' gradients, the frozen base, zero-init identity, disable_adapters,
trainable_report, merge_and_unload and remove_peft, the adapter file format (round trips
and its errors), a classifier with padding, config errors, and Adapter / LoRA / Prefix on
GPT, GPTClassifier, Bert, BertForMaskedLM and BertClassifier through the same code."""
import fnmatch
import json
import math
import shutil

import numpy as np
import pytest

import minilm
from helpers import host, logits_of, randomize, snapshot, to_tensor, token_ids
from minilm import nn, peft
from minilm.optim import AdamW
from peft_cases import (D, FAMILY_METHODS, L, METHODS, MODELS, SAVED_METHODS, V, base_gpt, classifier,
                        expected_saved_names, labels_for, trainable_names)


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
    idx, tgt = token_ids((2, 5), V, device), token_ids((2, 5), V, device, seed=1)
    minilm.gradcheck_module(m, [idx, None, None, tgt], fn=lambda out: out.loss, full_limit=0, n_entries=6)


@pytest.mark.parametrize("method", list(METHODS))
def test_peft_parameters_follow_the_model_device_and_dtype(method, device):
    m = base_gpt(device).double()
    peft.add(m, METHODS[method]())
    for n, p in m.named_parameters():
        assert p.device == device and host(p).dtype == np.float64, n
    loss = m(token_ids((1, 4), V, device), labels=token_ids((1, 4), V, device, seed=1)).loss
    assert host(loss).dtype == np.float64


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
    idx = token_ids((2, 6), V, device)
    for step in range(3):
        opt.zero_grad()
        if kind == "gpt":
            loss = model(idx, labels=token_ids((2, 6), V, device, seed=step + 1)).loss
        else:
            loss = model(idx, labels=to_tensor(np.array([step % 3, 1]), device)).loss
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
    idx = token_ids((2, 7), V, device)
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
    idx = token_ids((2, 7), V, device)
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


@pytest.mark.parametrize("method", ["lora", "lora_parts"])
def test_merge_and_unload(method, device):
    m = base_gpt(device)
    base_names = [n for n, _ in m.named_parameters()]
    peft.add(m, METHODS[method]())
    randomize(m, seed=7, scale=0.3)
    idx = token_ids((2, 7), V, device)
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


@pytest.mark.parametrize("kind", ["gpt", "classifier"])
@pytest.mark.parametrize("method", SAVED_METHODS)
def test_save_load_round_trip(method, kind, device, tmp_path):
    make = (lambda: base_gpt(device)) if kind == "gpt" else (lambda: classifier(device))
    pre = "" if kind == "gpt" else "gpt."
    trained = make()
    peft.add(trained, METHODS[method]())
    randomize(trained, seed=8, scale=0.3)       # the "trained" PEFT arrays (and the head)
    idx = token_ids((2, 7), V, device)
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
    wte = fresh.base_model.transformer.wte.weight
    loaded = peft.load_adapter(fresh, path)
    assert loaded is fresh
    np.testing.assert_array_equal(logits_of(fresh, idx), out)
    assert trainable_names(fresh) == expect                 # a reparameterised prefix came back flat
    assert [type(c).__name__ for c in peft.configs_of(fresh)] == [type(c).__name__ for c in
                                                                 peft.configs_of(trained)]
    if method.startswith("prefix"):
        assert not fresh.base_model.prefix.reparameterized
    after = dict(fresh.named_parameters())
    for n, a in base_before.items():
        if n not in expect:
            assert host(after[n]).tobytes() == a.tobytes(), f"load changed base parameter {n}"
    assert not any(after[n].requires_grad for n in base_before if n not in expect)   # the base is frozen

    # the tie: the head is still the token embedding object
    gpt = fresh.base_model
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
    idx = token_ids((2, 7), V, device)
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
    idx = token_ids((2, 7), V, device)
    out = logits_of(trained, idx)
    peft.save_adapter(trained, tmp_path / "ad")
    meta, arrays = peft.read_adapter(tmp_path / "ad")
    assert [d["method"] for d in meta["methods"]] == ["lora", "prefix"]
    assert set(arrays) == expected_saved_names(trained)
    fresh = peft.load_adapter(classifier(device), tmp_path / "ad")
    np.testing.assert_array_equal(logits_of(fresh, idx), out)
    fresh = peft.load_adapter(classifier(device), str(tmp_path / "ad"))       # a str path too
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
    idx = token_ids((2, 5), V)
    out = logits_of(plain, idx)
    peft.save_adapter(plain, tmp_path / "ad")
    base = base_gpt()
    base.load_state_dict({n: host(p) for n, p in plain.named_parameters() if "lora" not in n})
    np.testing.assert_array_equal(logits_of(peft.load_adapter(base, tmp_path / "ad"), idx), out)


def _assert_untouched(model, before, grads):
    assert not peft.peft_modules(model) and not peft.configs_of(model)
    assert model.base_model.prefix is None
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


# ---- 10. every method on every model family, through the same code ----------------------------
def _output(model, idx, mask=None):
    """What a model computes, as a host array: logits, or a bare encoder's last hidden state."""
    with minilm.no_grad():
        out = model(idx, attention_mask=mask)
    return host(out.logits if out.logits is not None else out.last_hidden_state).copy()


NEW_NAMES = {"adapter": "adapter_", "lora": "lora_", "prefix": "prefix."}   # in each method's parameter names


@pytest.mark.parametrize("method", list(FAMILY_METHODS))
@pytest.mark.parametrize("kind", list(MODELS))
def test_each_method_on_each_model_family(kind, method, device):
    build, family, _ = MODELS[kind]
    model = build(device)
    base_names = {n for n, _ in model.named_parameters()}
    head = {n for n in base_names if any(fnmatch.fnmatchcase(n, p) for p in model.head_patterns)}
    idx = token_ids((2, 6), V, device, low=1)
    mask = to_tensor(np.array([[1] * 6, [1] * 4 + [0] * 2]), device)
    base = _output(model, idx, mask)
    peft.add(model, FAMILY_METHODS[method](family))
    new = {n for n, _ in model.named_parameters()} - base_names
    assert new and trainable_names(model) == new | head
    randomize(model, seed=3, scale=0.3, only=NEW_NAMES[method])    # the new arrays only: the head stays the base's
    adapted = _output(model, idx, mask)
    assert not np.allclose(adapted, base, atol=1e-5)
    with peft.disable_adapters(model):
        np.testing.assert_array_equal(_output(model, idx, mask), base)
    labels = labels_for(kind, (2, 6), device)
    out = model(idx, attention_mask=mask, labels=labels)
    loss = out.loss if labels is not None else (out.last_hidden_state * out.last_hidden_state).sum()
    loss.backward()
    own = dict(model.named_parameters())
    assert all(own[n].grad is None for n in base_names - head)
    assert any(own[n].grad is not None and np.abs(host(own[n].grad)).max() > 0 for n in new)
    peft.remove_peft(model)
    assert not peft.peft_modules(model) and not peft.configs_of(model)
    assert {n for n, _ in model.named_parameters()} == base_names
    np.testing.assert_array_equal(_output(model, idx, mask), base)


@pytest.mark.parametrize("method", list(FAMILY_METHODS))
@pytest.mark.parametrize("kind", ["bert", "bert_mlm", "bert_classifier"])
def test_bert_families_with_each_method_gradcheck(kind, method):
    build, family, _ = MODELS[kind]
    model = build()
    peft.add(model, FAMILY_METHODS[method](family))
    model.double()
    randomize(model, seed=3, scale=0.3)
    idx = token_ids((2, 4), V, low=1)
    mask = to_tensor(np.array([[1] * 4, [1] * 3 + [0]]), "cpu")
    labels = labels_for(kind, (2, 4), "cpu")
    if labels is None:
        w = to_tensor(np.random.default_rng(4).standard_normal((2, 4, D)), "cpu")
        fn = lambda out: (out.last_hidden_state * w).sum()          # noqa: E731
    else:
        fn = lambda out: out.loss                                   # noqa: E731
    minilm.gradcheck_module(model, [idx, mask, None, labels], fn=fn, full_limit=0, n_entries=4)


@pytest.mark.parametrize("method", list(FAMILY_METHODS))
@pytest.mark.parametrize("kind", ["gpt_classifier", "bert", "bert_mlm", "bert_classifier"])
def test_save_load_round_trip_on_each_family(kind, method, tmp_path):
    build, family, _ = MODELS[kind]
    trained = build()
    peft.add(trained, FAMILY_METHODS[method](family))
    randomize(trained, seed=8, scale=0.3)
    idx = token_ids((2, 6), V, low=1)
    out = _output(trained, idx)
    peft.save_adapter(trained, tmp_path / "ad")
    _, arrays = peft.read_adapter(tmp_path / "ad")
    assert set(arrays) == expected_saved_names(trained)
    fresh = peft.load_adapter(build(), tmp_path / "ad")
    np.testing.assert_allclose(_output(fresh, idx), out, rtol=0, atol=1e-6)


def test_lora_parts_need_a_fused_qkv_layer():
    """BERT's query / key / value are separate Linears: parts would silently do nothing, so it is refused,
    naming the layers; a GPT classifier finds its body's fused c_attn."""
    for build in (MODELS["bert"][0], MODELS["bert_classifier"][0]):
        m = build()
        with pytest.raises(ValueError, match=r"parts=\('q', 'v'\).*encoder\.layer\.0\.attention\.self\.query"):
            peft.add(m, peft.LoRAConfig(r=2, target_modules=("query", "value"), parts=("q", "v")))
        assert not peft.peft_modules(m) and all(p.requires_grad for p in m.parameters())
    clf = classifier()
    peft.add(clf, peft.LoRAConfig(r=2, target_modules=("c_attn",), parts=("q", "v")))
    assert all(layer.parts == ("q", "v") for _, layer in peft.lora_layers(clf))


def test_prefix_on_a_head_pruned_model_is_refused_clearly():
    m = base_gpt(layer_heads=[2, 1])
    assert m.attention_shape(0) != m.attention_shape(1)
    with pytest.raises(ValueError, match=r"differ.*\(2, 8\), \(1, 8\).*head-pruned"):
        peft.add(m, peft.PrefixConfig(m=2))
    assert m.prefix is None and not peft.configs_of(m)
    m = base_gpt(layer_heads=[1, 1])                     # pruned alike: one (heads, head size) fits
    peft.add(m, peft.PrefixConfig(m=2, hidden=None))
    assert [k.shape for k, _ in m.prefix(3)] == [(3, 1, 2, 8)] * 2
    assert np.isfinite(logits_of(m, token_ids((3, 5), V))).all()


def test_add_dispatches_through_the_registry(tmp_path):
    """A method registers its config class; peft.add and load_adapter find it there, and an unknown
    config is refused, named."""
    from dataclasses import asdict, dataclass

    from minilm.peft import base

    assert {c.__name__ for c in base.ADDERS} >= {"AdapterConfig", "LoRAConfig", "PrefixConfig"}
    assert base.METHODS["lora"] is peft.LoRAConfig and base.ADDERS[peft.LoRAConfig] is peft.add_lora

    @dataclass
    class HeadOnlyConfig:                                 # a toy method: train the head, nothing new
        train_also: tuple = ()
        method: str = "head_only"

        def to_dict(self):
            return asdict(self)

    with pytest.raises(TypeError, match="HeadOnlyConfig is not a PEFT method config"):
        peft.add(classifier(), HeadOnlyConfig())
    try:
        @peft.register(HeadOnlyConfig)
        def add_head_only(model, config):
            return peft.freeze_base(model, config.train_also)

        clf = peft.add(classifier(), HeadOnlyConfig())
        assert trainable_names(clf) == {"score.weight", "score.bias"}
        peft.save_adapter(clf, tmp_path / "ad")
        again = peft.load_adapter(classifier(), tmp_path / "ad")
        assert [type(c) for c in peft.configs_of(again)] == [HeadOnlyConfig]
    finally:
        base.METHODS.pop("head_only", None)
        base.ADDERS.pop(HeadOnlyConfig, None)
