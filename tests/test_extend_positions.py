"""extend_positions: Longformer's copy of the learned position table, E'_pos[i] = E_pos[i mod P]."""
import numpy as np
import pytest

import minilm
from helpers import tiny_bert, tiny_gpt
from minilm.checkpoint import load_checkpoint, save_checkpoint
from minilm.models import GPT, BertClassifier, GPTClassifier, GPTConfig, extend_positions

GPT_SMALL = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
BERT_SMALL = dict(vocab_size=17, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def ids(T, high, seed=0):
    return np.random.default_rng(seed).integers(1, high, (2, T))


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_short_inputs_are_unchanged_and_new_rows_are_copies(family, device):
    model = (tiny_gpt(device, **GPT_SMALL) if family == "gpt" else tiny_bert(device, **BERT_SMALL)).eval()
    name, field = model.position_table
    x = ids(8, 13)
    before = model(x).logits.numpy() if family == "gpt" else model(x).last_hidden_state.numpy()
    old = np.asarray(model.state_dict()[name + ".weight"]).copy() if device == "cpu" else None
    extend_positions(model, 21)
    assert getattr(model.config, field) == 21
    after = model(x).logits.numpy() if family == "gpt" else model(x).last_hidden_state.numpy()
    np.testing.assert_array_equal(after, before)                       # P = 8 tokens: exactly as before
    table = minilm.backend.to_numpy(model.state_dict()[name + ".weight"])
    assert table.shape == (21, 16)
    if old is not None:
        np.testing.assert_array_equal(table, old[np.arange(21) % 8])   # E'[i] = E[i mod 8]
    long = model(ids(21, 13))                                          # 21 > 8 positions now run
    (long.logits if family == "gpt" else long.last_hidden_state).sum().backward()
    grad = minilm.backend.to_numpy(dict(model.named_parameters())[name + ".weight"].grad.data)
    assert grad.shape == (21, 16) and np.abs(grad[8:]).sum() > 0        # the new rows train


def test_a_task_model_grows_its_body_and_a_grown_gpt_saves_and_reloads(tmp_path):
    clf = GPTClassifier(tiny_gpt(**GPT_SMALL), n_classes=3)
    extend_positions(clf, 16)
    assert clf.gpt.config.block_size == 16 and clf(ids(16, 13)).logits.shape == (2, 3)
    gpt = extend_positions(tiny_gpt(**GPT_SMALL), 16)
    save_checkpoint(tmp_path / "c", gpt, gpt.config.to_dict())
    ckpt = load_checkpoint(tmp_path / "c")
    again = ckpt.load_into(GPT(GPTConfig.from_dict(ckpt.config)))
    np.testing.assert_array_equal(again(ids(16, 13)).logits.numpy(), gpt(ids(16, 13)).logits.numpy())
    bert_clf = BertClassifier(tiny_bert(**BERT_SMALL), n_classes=2)
    extend_positions(bert_clf, 12)
    assert bert_clf.bert.config.max_position_embeddings == 12 and bert_clf(ids(12, 17)).logits.shape == (2, 2)


def test_bad_sizes_are_refused_and_change_nothing():
    gpt = tiny_gpt(**GPT_SMALL)
    for bad in (4, 8.5, True, "16"):
        with pytest.raises(ValueError, match="new_max must be an integer ≥ the current 8 positions"):
            extend_positions(gpt, bad)
    assert gpt.config.block_size == 8 and gpt.transformer.wpe.weight.shape == (8, 16)
