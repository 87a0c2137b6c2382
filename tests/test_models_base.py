"""What every model shares (minilm.models.base): one call, one output record, one set of input
checks, pooling and the losses.  Every model is called

    out = model(input_ids=..., attention_mask=..., token_type_ids=..., labels=...)

and returns a ModelOutput; these tests hold the five models to that."""
import numpy as np
import pytest

import minilm
from helpers import host, tiny_bert, tiny_gpt, to_tensor
from minilm.models import BertClassifier, BertConfig, BertForMaskedLM, GPTClassifier, Model, ModelOutput
from minilm.models.base import (as_ids, classification_loss, key_padding_mask, masked_mean, pair_features, pool,
                                token_loss)

GPT_TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
BERT_TINY = dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                 max_position_embeddings=8, type_vocab_size=2, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)

X = np.array([[2, 5, 7, 3, 9, 0], [4, 4, 6, 1, 2, 8]])
MASK = np.array([[1, 1, 1, 1, 1, 0], [1] * 6])                       # row 0: one padded position at the end
SEG = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
TOKEN_LABELS = np.where(MASK == 1, (X + 1) % 11, -100)               # (B, T): a target per real position
CLASS_LABELS = np.array([0, 2])


def build(name):
    """(model, what its labels are, whether it takes token_type_ids) for each model family."""
    if name == "GPT":
        return tiny_gpt(**GPT_TINY).eval(), TOKEN_LABELS, False
    if name == "GPT with segments":
        return tiny_gpt(**GPT_TINY, n_segments=2).eval(), TOKEN_LABELS, True
    if name == "GPTClassifier":
        return GPTClassifier(tiny_gpt(**GPT_TINY), 3, pooling="last", generator=minilm.Generator(1)).eval(), \
            CLASS_LABELS, False
    if name == "Bert":
        return tiny_bert(**BERT_TINY).eval(), None, True
    if name == "BertForMaskedLM":
        return BertForMaskedLM(BertConfig(**BERT_TINY), generator=minilm.Generator(0)).eval(), TOKEN_LABELS, True
    if name == "BertClassifier":
        return BertClassifier(tiny_bert(**BERT_TINY), 3, pooling="mean", generator=minilm.Generator(1)).eval(), \
            CLASS_LABELS, True
    raise KeyError(name)


MODELS = ["GPT", "GPT with segments", "GPTClassifier", "Bert", "BertForMaskedLM", "BertClassifier"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_the_same_call_and_returns_a_model_output(name):
    model, labels, segments = build(name)
    assert isinstance(model, Model)
    kw = dict(input_ids=minilm.tensor(X), attention_mask=minilm.tensor(MASK))
    if segments:
        kw["token_type_ids"] = minilm.tensor(SEG)
    if labels is not None:
        kw["labels"] = minilm.tensor(labels)
    out = model(**kw)
    assert isinstance(out, ModelOutput)
    B, T = X.shape
    if name == "Bert":
        assert out.logits is None and out.loss is None and out.last_hidden_state.shape == (B, T, 8)
    else:
        classes = 3 if "Classifier" in name else 11
        assert out.logits.shape == ((B, classes) if "Classifier" in name else (B, T, classes))
        assert out.loss.shape == () and np.isfinite(out.loss.item())
        assert model(**{k: v for k, v in kw.items() if k != "labels"}).loss is None     # no labels, no loss
    assert out.hidden_states is None
    layers = model(**kw, output_hidden_states=True).hidden_states
    assert len(layers) == 3 and all(h.shape == (B, T, 8) for h in layers)             # [H⁰, H¹, H²]
    with pytest.raises(TypeError):
        first, second = out                                            # a record, not a tuple


@pytest.mark.parametrize("name", MODELS)
def test_padding_changes_no_real_position(name):
    """A row padded on the right (mask 0) gives what the unpadded row gives alone."""
    model, _, segments = build(name)
    kw = dict(token_type_ids=minilm.tensor(SEG[:1, :5])) if segments else {}
    alone = model(minilm.tensor(X[:1, :5]), **kw)
    kw = dict(token_type_ids=minilm.tensor(SEG)) if segments else {}
    padded = model(minilm.tensor(X), attention_mask=minilm.tensor(MASK), **kw)
    a, p = (host(o.last_hidden_state if name == "Bert" else o.logits) for o in (alone, padded))
    if a.ndim == 3:
        a, p = a[0], p[0, :5]                                          # (T, ·): the real positions
    else:
        a, p = a[0], p[0]                                              # (C,): the pooled row
    np.testing.assert_allclose(p, a, atol=1e-6)


def test_gpt_refuses_segments_it_does_not_have_and_bert_refuses_labels():
    with pytest.raises(ValueError, match=r"GPT: token_type_ids given, but this model has no segment embeddings "
                                         r"\(GPTConfig.n_segments = 0\)"):
        tiny_gpt(**GPT_TINY)(input_ids=minilm.tensor(X), token_type_ids=minilm.tensor(SEG))
    with pytest.raises(ValueError, match="no segment embeddings"):
        GPTClassifier(tiny_gpt(**GPT_TINY), 2)(input_ids=minilm.tensor(X), token_type_ids=minilm.tensor(SEG))
    with pytest.raises(ValueError, match="GPT: this model has segment embeddings; pass token_type_ids"):
        tiny_gpt(**GPT_TINY, n_segments=2)(input_ids=minilm.tensor(X))
    with pytest.raises(ValueError, match="Bert: the bare encoder has no head to compute a loss with"):
        tiny_bert(**BERT_TINY)(input_ids=minilm.tensor(X), labels=minilm.tensor(TOKEN_LABELS))


def test_classifier_labels_are_checked():
    clf = GPTClassifier(tiny_gpt(**GPT_TINY), 3)
    x = minilm.tensor(X)
    with pytest.raises(IndexError, match=r"GPTClassifier: label 3 outside \[0, 3\)"):
        clf(x, labels=minilm.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels of shape \(3,\) do not match a batch of 2"):
        clf(x, labels=minilm.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be integer classes"):
        clf(x, labels=minilm.tensor([0.0, 1.0]))
    bert = BertClassifier(tiny_bert(**BERT_TINY), 2)
    with pytest.raises(IndexError, match=r"BertClassifier: label -1 outside \[0, 2\)"):
        bert(x, labels=minilm.tensor([0, -1]))


def test_what_a_model_tells_about_itself():
    gpt = tiny_gpt(**GPT_TINY, layer_heads=[1, 2])
    clf = GPTClassifier(gpt, 2)
    assert gpt.base_model is gpt and clf.base_model is gpt and clf.config is gpt.config
    assert list(clf.layers()) == list(gpt.layers()) and len(gpt.layers()) == 2
    assert gpt.attention_shape(0) == (1, 4) and clf.attention_shape(1) == (2, 4)
    assert clf.fused_qkv == gpt.fused_qkv == ("c_attn",) and clf.head_patterns == ("score.*",)
    assert all(layer.adapter_width == 8 and layer.adapter_attn is None for layer in gpt.layers())
    bert = tiny_bert(**BERT_TINY)
    mlm = BertForMaskedLM(bert.config, bert=bert)
    bc = BertClassifier(bert, 2)
    assert mlm.base_model is bert and bc.base_model is bert and len(bc.layers()) == 2
    assert bc.attention_shape(0) == (2, 4) and bc.head_patterns == ("classifier.*",)
    assert bert.fused_qkv == bc.fused_qkv == ()             # separate query / key / value
    assert gpt.device == clf.device == bert.device == "cpu"


# ---- input checks -------------------------------------------------------------------------------

def test_as_ids_names_what_is_wrong():
    x = as_ids([[1, 2, 3]], "cpu", "M")                                # a list becomes a Tensor
    assert isinstance(x, minilm.Tensor) and x.shape == (1, 3)
    with pytest.raises(TypeError, match="M: input_ids must be integer ids, got dtype float64"):
        as_ids(np.zeros((1, 3)), "cpu", "M")
    with pytest.raises(ValueError, match=r"M: input_ids must have shape \(batch, time\), got \(3,\)"):
        as_ids(np.zeros(3, np.int64), "cpu", "M")
    with pytest.raises(IndexError, match=r"M: input_ids holds 7, outside \[0, 7\) \(was the input encoded with "
                                         r"a different tokenizer\?\)"):
        as_ids(np.array([[0, 7]]), "cpu", "M", high=7)
    with pytest.raises(IndexError, match=r"M: input_ids holds -2"):
        as_ids(np.array([[-2, 3]]), "cpu", "M", high=7)
    with pytest.raises(IndexError, match=r"M: token_type_ids holds 2, outside \[0, 2\)$"):
        as_ids(np.array([[0, 2]]), "cpu", "M", "token_type_ids", high=2)
    with pytest.raises(ValueError, match=r"M: token_type_ids of shape \(1, 2\) does not match input_ids \(1, 3\)"):
        as_ids(np.array([[0, 1]]), "cpu", "M", "token_type_ids", shape=(1, 3))
    with pytest.raises(RuntimeError, match="M: input_ids is on 'strict', the model on 'cpu'"):
        as_ids(to_tensor(np.array([[1, 2]]), "strict"), "cpu", "M")
    assert as_ids(np.zeros((2, 0), np.int64), "cpu", "M", high=3).shape == (2, 0)      # empty: nothing to range-check


def test_key_padding_mask(device):
    assert key_padding_mask(None, (2, 6), device, "M") is None
    kpm = key_padding_mask(to_tensor(MASK, device), (2, 6), device, "M")
    np.testing.assert_array_equal(host(kpm), MASK == 0)                # True at padding
    np.testing.assert_array_equal(host(key_padding_mask(MASK.tolist(), (2, 6), device, "M")), MASK == 0)
    with pytest.raises(ValueError, match=r"M: attention_mask of shape \(2, 5\) does not match input_ids \(2, 6\)"):
        key_padding_mask(MASK[:, :5], (2, 6), device, "M")


# ---- pooling ------------------------------------------------------------------------------------

H = np.random.default_rng(0).standard_normal((3, 4, 2))
POOL_MASK = np.array([[1, 1, 1, 0],            # right padding
                      [0, 0, 1, 1],            # left padding
                      [0, 0, 0, 0]])           # nothing real


def test_pool_cls_mean_last(device):
    h = to_tensor(H, device)
    np.testing.assert_array_equal(host(pool(h, POOL_MASK, "cls")), H[:, 0])
    mean = host(pool(h, to_tensor(POOL_MASK, device), "mean"))
    np.testing.assert_allclose(mean[0], H[0, :3].mean(0), atol=1e-12)
    np.testing.assert_allclose(mean[1], H[1, 2:].mean(0), atol=1e-12)
    np.testing.assert_array_equal(mean[2], 0)                          # an empty row gives 0, not nan
    last = host(pool(h, POOL_MASK, "last"))
    np.testing.assert_array_equal(last[0], H[0, 2])                    # right padding: the last real token
    np.testing.assert_array_equal(last[1], H[1, 3])                    # left padding: the final position
    np.testing.assert_allclose(host(pool(h, None, "mean")), H.mean(1), atol=1e-12)     # no mask: all real
    np.testing.assert_array_equal(host(pool(h, None, "last")), H[:, -1])
    with pytest.raises(ValueError, match=r"pool: mode must be one of \('cls', 'mean', 'last'\), got 'max'"):
        pool(h, None, "max")
    with pytest.raises(ValueError, match=r"pool: hidden states must be \(batch, time, d\), got \(3, 4\)"):
        pool(h[:, :, 0], None)
    with pytest.raises(ValueError, match=r"pool: attention_mask of shape \(3, 3\) does not match"):
        pool(h, POOL_MASK[:, :3], "mean")


def test_masked_mean_and_pool_gradcheck(device):
    h = to_tensor(H, device, requires_grad=True)
    m = to_tensor(POOL_MASK == 1, device)
    minilm.gradcheck(lambda x: masked_mean(x, m.data), [h])
    for mode in ("mean", "last"):
        minilm.gradcheck(lambda x: pool(x, POOL_MASK, mode), [h])
    masked_mean(h, m.data).sum().backward()
    w = POOL_MASK[:2] / POOL_MASK[:2].sum(1, keepdims=True)           # (2, T): ∂/∂hᵢ = mᵢ / Σⱼ mⱼ
    np.testing.assert_allclose(host(h.grad)[:2], np.broadcast_to(w[:, :, None], (2, 4, 2)), atol=1e-12)
    np.testing.assert_array_equal(host(h.grad)[2], 0)                 # the empty row: no gradient


def test_pair_features_errors_and_an_empty_segment():
    h = minilm.tensor(H)
    seg = np.array([[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]])         # row 1: no segment B
    f = host(pair_features(h, seg, np.ones((3, 4), np.int64)))        # (3, 4d)
    assert f.shape == (3, 8)
    np.testing.assert_allclose(f[0, :2], H[0, :2].mean(0), atol=1e-12)
    np.testing.assert_array_equal(f[1, 2:4], 0)                        # v of an empty segment is 0
    with pytest.raises(ValueError, match="pair_features: pooling='pair' needs token_type_ids"):
        pair_features(h, None)
    with pytest.raises(ValueError, match=r"pair_features: token_type_ids of shape \(3, 3\) does not match"):
        pair_features(h, seg[:, :3])


# ---- losses -------------------------------------------------------------------------------------

def test_token_loss_ignores_minus_100(device):
    logits = np.random.default_rng(1).standard_normal((2, 3, 5))
    labels = np.array([[1, -100, 4], [-100, 0, 2]])
    keep = labels != -100
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    by_hand = -logp[keep, labels[keep]].mean()
    z = to_tensor(logits, device, requires_grad=True)
    loss = token_loss(z, to_tensor(labels, device), "M")
    assert loss.item() == pytest.approx(by_hand, abs=1e-12)
    loss.backward()
    np.testing.assert_array_equal(host(z.grad)[~keep], 0)               # ignored positions get no gradient
    assert token_loss(z, None, "M") is None
    assert token_loss(z, labels, "M").item() == pytest.approx(by_hand, abs=1e-12)   # a host array works too
    with pytest.raises(ValueError, match=r"M: labels of shape \(2, 2\) do not match input_ids \(2, 3\)"):
        token_loss(z, labels[:, :2], "M")


def test_classification_loss():
    logits = minilm.tensor(np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])))
    assert classification_loss(logits, np.array([0, 2]), 3, "M").item() == pytest.approx(
        -(np.log(0.5) + np.log(0.8)) / 2, abs=1e-6)
    assert classification_loss(logits, None, 3, "M") is None
    with pytest.raises(IndexError, match=r"M: label 3 outside \[0, 3\)"):
        classification_loss(logits, np.array([0, 3]), 3, "M")
