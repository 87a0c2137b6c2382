"""minilm.peft.prefix: the PrefixEncoder (Eq. P1) on GPT and on BERT.

Gradient checks and the layout of the per-layer keys and values, parameter counts, padding
that never hides the prefix, the prefix as a Hugging Face past key/value cache, and
Prefix-Tuning of a BERT classifier (gradients, frozen base, save/load)."""
import numpy as np
import pytest

import minilm
from helpers import host, logits_of, randomize, snapshot, to_tensor, token_ids
from minilm import peft
from minilm.optim import AdamW
from peft_cases import D, L, METHODS, V, base_bert, base_gpt, bert_classifier, trainable_names


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


# ---- Prefix-Tuning on BERT: the same encoder, its keys shaped by model.attention_shape ------------
@pytest.mark.parametrize("hidden", [None, 8], ids=["flat", "reparam"])
def test_bert_classifier_with_prefix_gradcheck(hidden, device):
    clf = bert_classifier(device, pooling="mean")
    peft.add(clf, peft.PrefixConfig(m=2, hidden=hidden, init_std=0.3))
    clf.double()
    randomize(clf, seed=4, scale=0.3)                     # the head too: a zero bias hides nothing
    assert trainable_names(clf) >= {"classifier.weight", "classifier.bias"}
    assert all(n.startswith(("bert.prefix.", "classifier.")) for n in trainable_names(clf))
    idx = token_ids((2, 5), V, device)
    mask = to_tensor(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), device)
    labels = to_tensor(np.array([0, 2]), device)
    minilm.gradcheck_module(clf, [idx, mask, None, labels], fn=lambda out: out.loss, full_limit=0, n_entries=6)


def test_bert_prefix_keys_have_the_layers_attention_shape(device):
    bert = base_bert(device)
    peft.add(bert, peft.PrefixConfig(m=3, hidden=None))
    H, hs = bert.attention_shape(0)
    kv = bert.prefix(2)
    assert len(kv) == L and all(k.shape == v.shape == (2, H, 3, hs) for k, v in kv)
    assert bert.num_parameters(trainable_only=True) == L * 2 * 3 * D


def test_bert_prefix_trains_while_the_base_stays_frozen(device):
    clf = bert_classifier(device)
    base_names = {n for n, _ in clf.named_parameters()}
    before = snapshot(clf)
    peft.add(clf, peft.PrefixConfig(m=3, hidden=8))
    initial = snapshot(clf)
    head = {"classifier.weight", "classifier.bias"}
    prefix = {n for n, _ in clf.named_parameters()} - base_names
    assert prefix and all(n.startswith("bert.prefix.") for n in prefix)
    assert trainable_names(clf) == prefix | head
    opt = AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    idx = token_ids((2, 6), V, device)
    mask = to_tensor(np.array([[1] * 6, [1] * 4 + [0] * 2]), device)
    for step in range(3):
        opt.zero_grad()
        loss = clf(idx, attention_mask=mask, labels=to_tensor(np.array([step % 3, 1]), device)).loss
        loss.backward()
        opt.step()
    after, own = snapshot(clf), dict(clf.named_parameters())
    for n in base_names - head:
        assert own[n].grad is None and not own[n].requires_grad, n
        assert after[n].tobytes() == before[n].tobytes(), f"{n} moved"
    for n in prefix | head:
        assert not np.array_equal(after[n], initial[n]), f"{n} did not train"


@pytest.mark.parametrize("hidden", [None, 8], ids=["flat", "reparam"])
def test_bert_prefix_save_load_round_trip(hidden, device, tmp_path):
    trained = bert_classifier(device)
    peft.add(trained, peft.PrefixConfig(m=3, hidden=hidden))
    randomize(trained, seed=8, scale=0.3)
    idx = token_ids((2, 7), V, device, low=1)
    mask = to_tensor(np.array([[1] * 7, [1] * 5 + [0] * 2]), device)
    out = logits_of(trained, idx, attention_mask=mask)
    path = peft.save_adapter(trained, tmp_path / "ad")
    meta, arrays = peft.read_adapter(path)
    assert set(arrays) == {"bert.prefix.prefix", "classifier.weight", "classifier.bias"}
    assert arrays["bert.prefix.prefix"].shape == (L, 2, 3, D) and meta["model"] == "BertClassifier"
    fresh = bert_classifier(device)
    base_before = snapshot(fresh)
    peft.load_adapter(fresh, path)
    assert not fresh.base_model.prefix.reparameterized
    np.testing.assert_allclose(logits_of(fresh, idx, attention_mask=mask), out, rtol=0, atol=1e-6)
    now = dict(fresh.named_parameters())
    for n, a in base_before.items():
        if n not in arrays:
            assert host(now[n]).tobytes() == a.tobytes() and not now[n].requires_grad, n


@pytest.mark.parametrize("hidden", [None, 8], ids=["flat", "reparam"])
def test_bert_padding_never_hides_the_prefix(hidden, device):
    """Right padding gives each row's unpadded states; every real position sees the prefix; a padded
    query, whose real keys are all its row's tokens, still has the prefix (no empty softmax row)."""
    bert = base_bert(device)
    peft.add(bert, peft.PrefixConfig(m=3, hidden=hidden))
    randomize(bert, seed=10, scale=0.5)
    rng = np.random.default_rng(0)
    x = rng.integers(1, V, size=(3, 8))
    lengths = [8, 5, 1]
    mask = (np.arange(8)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    with minilm.no_grad():
        H = host(bert.hidden_states(to_tensor(x, device), to_tensor(mask, device)))
        for b, n in enumerate(lengths):
            ref = host(bert.hidden_states(to_tensor(x[b:b + 1, :n], device)))
            np.testing.assert_allclose(H[b, :n], ref[0], rtol=0, atol=1e-5, err_msg=f"row {b}")
        with peft.disable_adapters(bert):
            H0 = host(bert.hidden_states(to_tensor(x, device), to_tensor(mask, device)))
        all_pad = host(bert.hidden_states(to_tensor(x, device), to_tensor(np.zeros_like(mask), device)))
    assert np.isfinite(H).all() and np.isfinite(all_pad).all()      # only the prefix to attend to: finite
    for b, n in enumerate(lengths):
        assert np.all(np.abs(H[b, :n] - H0[b, :n]).max(axis=-1) > 1e-4), f"row {b} ignores the prefix"
    # a padded token changes no real position's state
    x2 = x.copy()
    x2[1, 6] = (x[1, 6] % (V - 1)) + 1
    with minilm.no_grad():
        H2 = host(bert.hidden_states(to_tensor(x2, device), to_tensor(mask, device)))
    np.testing.assert_array_equal(H2[1, :5], H[1, :5])
