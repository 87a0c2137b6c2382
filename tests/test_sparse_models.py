"""Models with sparse attention (issue 14): an attention_pattern in GPTConfig / BertConfig,
set_attention_pattern, and Longformer's conversion of all-MiniLM-L6-v2 (to_longformer)."""
import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import tiny_bert, tiny_gpt
from minilm.checkpoint import load_checkpoint, save_checkpoint
from minilm.models import GPT, Bert, BertConfig, GPTConfig, set_attention_pattern, to_longformer

GPT_SMALL = dict(vocab_size=13, block_size=24, n_layer=2, n_head=2, n_embd=16)
BERT_SMALL = dict(vocab_size=17, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def ids(T, high=13, seed=0):
    return np.random.default_rng(seed).integers(1, high, (2, T))


def test_a_window_wider_than_the_input_is_the_dense_model(device):
    dense = tiny_gpt(device, **GPT_SMALL).eval()
    sparse = tiny_gpt(device, **GPT_SMALL, attention_pattern=F.SparsePattern.sliding(64)).eval()
    x = ids(24)
    np.testing.assert_allclose(sparse(x).logits.numpy(), dense(x).logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_a_token_reaches_only_as_far_as_the_windows_of_all_layers(family):
    """With a window w (causal: w keys back; bidirectional: w//2 each side) and L layers, changing
    token 0 changes positions ≤ L·(w−1) (causal) or ≤ L·w//2 (bidirectional) and no others — unless
    token 0 is global, which every position sees."""
    w, L, T = 4, 2, 24
    reach = L * (w - 1) if family == "gpt" else L * (w // 2)
    for globals_, changed_beyond in (((), False), ((0,), True)):
        pattern = F.SparsePattern.sliding(w, global_tokens=globals_)
        model = (tiny_gpt(**GPT_SMALL, attention_pattern=pattern) if family == "gpt"
                 else tiny_bert(**BERT_SMALL, attention_pattern=pattern)).eval()
        x = ids(T, 13)
        y = x.copy()
        y[:, 0] = x[:, 0] % 12 + 1                                         # another token at position 0
        out = lambda a: (model(a).logits if family == "gpt" else model(a).last_hidden_state).numpy()
        diff = np.abs(out(x) - out(y)).max(axis=(0, 2))                   # per position
        assert (diff[:reach + 1] > 0).any() and (diff[1:reach + 1] > 0).all()
        assert (diff[reach + 1:] > 0).any() == changed_beyond


def test_the_pattern_is_in_the_config_saved_and_reloaded_and_layers_draw_their_own_blocks(tmp_path):
    bb = F.SparsePattern.bigbird(block_size=4, window_blocks=3, global_blocks=1, random_blocks=1, seed=5)
    gpt = tiny_gpt(**GPT_SMALL, attention_pattern=bb)
    assert [b.attn.pattern.seed for b in gpt.layers()] == [5, 6]          # one draw per layer
    d = gpt.config.to_dict()
    assert d["attention_pattern"]["random_blocks"] == 1 and "attention_pattern" not in GPTConfig().to_dict()
    save_checkpoint(tmp_path / "c", gpt, d)
    ckpt = load_checkpoint(tmp_path / "c")
    again = ckpt.load_into(GPT(GPTConfig.from_dict(ckpt.config)))
    np.testing.assert_array_equal(again(ids(24)).logits.numpy(), gpt(ids(24)).logits.numpy())
    bert = Bert(BertConfig.from_dict({**BertConfig(**BERT_SMALL).to_dict(), "attention_pattern": {"window": 4}}))
    assert [layer.attention.self.pattern.window for layer in bert.layers()] == [4, 4]


def test_set_attention_pattern_none_is_dense_again_and_bad_patterns_are_named():
    gpt = tiny_gpt(**GPT_SMALL).eval()
    before = gpt(ids(24)).logits.numpy()
    set_attention_pattern(gpt, F.SparsePattern.sliding(2))
    assert not np.allclose(gpt(ids(24)).logits.numpy(), before)
    set_attention_pattern(gpt, None)
    np.testing.assert_array_equal(gpt(ids(24)).logits.numpy(), before)
    assert gpt.config.attention_pattern is None
    with pytest.raises(ValueError, match="GPTConfig: attention_pattern"):
        GPTConfig(attention_pattern={"window": 4, "stride": 2})
    with pytest.raises(ValueError, match="window must be ≥ 1"):
        GPTConfig(attention_pattern={"window": 0})
    with pytest.raises(ValueError, match="global token positions \\[30\\]"):
        tiny_gpt(**GPT_SMALL, attention_pattern=F.SparsePattern.sliding(4, (30,)))(ids(24))


def test_minilm_as_a_long_document_encoder():
    """Longformer's conversion of all-MiniLM-L6-v2: 2,048 positions copied from its 512, a window
    of 256 tokens and a global [CLS].  Up to 129 tokens every query still sees every key, so the
    embeddings equal the original's; 2,048 tokens run."""
    from minilm.models.bert import find_minilm_l6_v2
    try:
        folder = find_minilm_l6_v2()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    base = Bert.from_pretrained(folder)
    long = to_longformer(Bert.from_pretrained(folder), max_positions=2048, window=256)
    assert long.config.max_position_embeddings == 2048 and long.config.attention_pattern["window"] == 256
    x = np.random.default_rng(0).integers(1000, 20000, (1, 129))
    x[0, 0] = 101                                                          # [CLS]
    np.testing.assert_allclose(long(x).last_hidden_state.numpy(), base(x).last_hidden_state.numpy(),
                               rtol=1e-4, atol=1e-4)
    x = np.random.default_rng(1).integers(1000, 20000, (1, 2048))
    x[0, 0] = 101
    emb = long.sentence_embedding(minilm.tensor(x))
    assert emb.shape == (1, 384) and np.isfinite(emb.numpy()).all()
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 512"):
        base(x)
