"""The GPT (Eqs. G1–G4): gradient checks of its modules, its loss, its errors, pruned layers
with no heads or no neurons, and GPT-2 checkpoints from Hugging Face."""
import math

import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, logits_of, randomize, tiny_gpt, to_tensor, token_ids
from minilm.models import GPT, GPTConfig
from minilm.models.gpt import MLP, Block, CausalSelfAttention

TINY = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8)


def tiny(device="cpu", **kw):
    return tiny_gpt(device, seed=0, dtype=np.float64, **{**TINY, **kw})


@pytest.mark.parametrize("part", [CausalSelfAttention, MLP, Block])
def test_block_parts_gradcheck(part, device):
    m = part(GPTConfig(**TINY), minilm.Generator(1)).double().to(device)
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 5, 8)), device, requires_grad=True)
    minilm.gradcheck_module(m, [x])


def test_gpt_loss_gradcheck(device):
    m = tiny(device)
    x, y = token_ids((2, 5), 7, device), token_ids((2, 5), 7, device, seed=1)
    minilm.gradcheck_module(m, [x, None, None, y], fn=lambda out: out.loss)


def test_gpt_with_segments_gradcheck():
    m = tiny(n_segments=2)
    seg = to_tensor(np.array([[0, 0, 1, 1, 1]]), "cpu")
    minilm.gradcheck_module(m, [token_ids((1, 5), 7), None, seg, token_ids((1, 5), 7, seed=1)],
                            fn=lambda out: out.loss)
    with pytest.raises(ValueError, match="segment embeddings; pass token_type_ids"):
        m(token_ids((1, 5), 7))
    with pytest.raises(IndexError, match=r"token_type_ids holds 2, outside \[0, 2\)"):
        m(token_ids((1, 5), 7), token_type_ids=minilm.tensor([[0, 0, 1, 2, 1]]))
    with pytest.raises(ValueError, match=r"token_type_ids of shape \(1, 4\) does not match input_ids \(1, 5\)"):
        m(token_ids((1, 5), 7), token_type_ids=minilm.tensor([[0, 0, 1, 1]]))


def test_token_type_ids_without_segments_are_refused():
    with pytest.raises(ValueError, match="no segment embeddings"):
        tiny()(token_ids((1, 5), 7), token_type_ids=minilm.tensor([[0, 0, 1, 1, 1]]))


def test_head_is_tied_to_the_token_embedding():
    m = GPT(GPTConfig(**TINY))
    names = [n for n, _ in m.named_parameters()]
    assert "transformer.wte.weight" in names and not any("lm_head" in n for n in names)
    m(minilm.tensor([[1, 2, 3]]), labels=minilm.tensor([[2, 3, 1]])).loss.backward()
    g = m.transformer.wte.weight.grad.numpy()
    # tokens 0, 4, 5, 6 never enter the model: their rows of E_token get gradient only through the head (G1)
    assert np.abs(g[[0, 4, 5, 6]]).min() > 0


def test_parameter_count_by_hand():
    c = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    d, V, T, L = c.n_embd, c.vocab_size, c.block_size, c.n_layer
    per_block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert GPT(c).num_parameters() == V * d + T * d + L * per_block + 2 * d


def test_initial_loss_is_about_ln_vocab():
    V = 65
    m = tiny_gpt(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32)
    out = m(token_ids((8, 32), V), labels=token_ids((8, 32), V, seed=5))
    assert abs(out.loss.item() - math.log(V)) < 0.05


def test_ignored_labels_do_not_count():
    m = tiny()
    x, y = token_ids((2, 5), 7), host(token_ids((2, 5), 7, seed=1))
    logits = host(m(x).logits)                                            # (2, 5, 7)
    y[0, 1] = y[1, 4] = -100
    keep = y != -100
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    by_hand = -logp[keep, y[keep]].mean()                                 # G4 over the labelled positions
    assert m(x, labels=minilm.tensor(y)).loss.item() == pytest.approx(by_hand, abs=1e-12)


def test_gpt2_initialisation_scales_residual_projections():
    m = tiny_gpt(vocab_size=50, block_size=16, n_layer=8, n_head=4, n_embd=64)
    std = lambda name: float(dict(m.named_parameters())[name].numpy().std())
    assert std("transformer.h.0.mlp.c_fc.weight") == pytest.approx(0.02, rel=0.05)
    assert std("transformer.h.0.mlp.c_proj.weight") == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert np.all(dict(m.named_parameters())["transformer.h.0.attn.c_attn.bias"].numpy() == 0)


def test_causality_future_tokens_do_not_change_past_logits():
    m = tiny()
    a = np.array([[1, 2, 3, 4, 5]])
    b = a.copy()
    b[0, 3:] = [6, 0]
    la, lb = logits_of(m, to_tensor(a, "cpu")), logits_of(m, to_tensor(b, "cpu"))
    np.testing.assert_allclose(la[0, :3], lb[0, :3], atol=1e-12)
    assert not np.allclose(la[0, 3:], lb[0, 3:])


def test_hidden_states_are_the_embeddings_then_each_block():
    m = tiny().eval()
    x = token_ids((2, 5), 7)
    out = m(x, output_hidden_states=True)
    assert len(out.hidden_states) == 1 + TINY["n_layer"]
    layers, final = m.hidden_states(x, all_layers=True)
    np.testing.assert_array_equal(host(final), host(m.hidden_states(x)))
    np.testing.assert_array_equal(host(m.transformer.ln_f(layers[-1])), host(final))
    for mine, again in zip(out.hidden_states, layers):
        np.testing.assert_array_equal(host(mine), host(again))
    np.testing.assert_array_equal(host(out.logits), logits_of(m, x))
    assert m(x).hidden_states is None and m(x).loss is None


def test_bad_ids_and_long_sequences_get_clear_errors():
    m = GPT(GPTConfig(**TINY))
    with pytest.raises(IndexError, match=r"GPT: input_ids holds 9, outside \[0, 7\)"):
        m(minilm.tensor([[1, 9]]))
    with pytest.raises(IndexError, match=r"input_ids holds -1"):
        m(minilm.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="sequence length 7 exceeds block_size 6"):
        m(minilm.tensor([[1] * 7]))
    with pytest.raises(TypeError, match="integer ids, got dtype float32"):
        m(minilm.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"shape \(batch, time\)"):
        m(minilm.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"GPT: labels of shape \(1, 3\) do not match input_ids \(1, 2\)"):
        m(minilm.tensor([[1, 2]]), labels=minilm.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(1, 3\) does not match input_ids \(1, 2\)"):
        m(minilm.tensor([[1, 2]]), attention_mask=minilm.tensor([[1, 1, 1]]))
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(n_embd=10, n_head=4)


def test_fully_masked_query_rows_give_zeros_not_nan():
    q = minilm.randn(1, 1, 2, 3, requires_grad=True)
    k = minilm.randn(1, 1, 2, 3, requires_grad=True)
    v = minilm.randn(1, 1, 2, 3, requires_grad=True)
    out = F.scaled_dot_product_attention(q, k, v, key_padding_mask=minilm.tensor([[True, True]]))
    np.testing.assert_array_equal(out.numpy(), 0)
    out.sum().backward()
    assert np.isfinite(q.grad.numpy()).all() and np.isfinite(v.grad.numpy()).all()


# ---- pruned layers: no heads, no neurons -----------------------------------------------------------

PRUNED = dict(layer_heads=[0, 2], layer_mlp=[0, 8])


def test_gpt_with_no_heads_and_no_neurons_in_a_layer_gradcheck(device):
    m = tiny(**PRUNED)
    randomize(m, seed=3, scale=0.1, only="bias")                     # zero biases would hide a mistake
    m.to(device)
    assert m.transformer.h[0].attn.c_attn.weight.shape == (8, 0)
    assert m.transformer.h[0].attn.c_proj.weight.shape == (0, 8)
    assert m.transformer.h[0].mlp.c_fc.weight.shape == (8, 0)
    x, y = token_ids((2, 5), 7, device), token_ids((2, 5), 7, device, seed=1)
    mask = to_tensor(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), device)
    minilm.gradcheck_module(m, [x, mask, None, y], fn=lambda out: out.loss)             # the full Jacobian


def test_a_layer_with_no_heads_adds_only_the_projection_bias():
    m = tiny(**PRUNED)
    randomize(m, seed=3, scale=0.1, trainable_only=False)
    attn, mlp = m.transformer.h[0].attn, m.transformer.h[0].mlp
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 5, 8)), "cpu", requires_grad=True)
    for part in (attn, mlp):
        out = part(x)
        assert out.shape == (2, 5, 8)
        np.testing.assert_array_equal(host(out), np.broadcast_to(host(part.c_proj.bias), (2, 5, 8)))
        out.sum().backward()
        np.testing.assert_array_equal(host(part.c_proj.bias.grad), np.full(8, 10.0))   # B·T per entry
    assert x.grad is None or not np.any(host(x.grad))                 # nothing flows back to the input
    block = m.transformer.h[0]
    h = host(x)
    a = h + host(attn.c_proj.bias)                                    # the block: H + b_attn, then + b_mlp
    np.testing.assert_allclose(host(block(x)), a + host(mlp.c_proj.bias), atol=1e-12)


def test_matches_hugging_face_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    m = minilm.models.load_gpt2(str(tmp_path))

    x = np.random.default_rng(0).integers(0, 50, size=(3, 16))
    logits = m(minilm.tensor(x)).logits
    tx = torch.from_numpy(x)
    hf_logits = hf(tx).logits
    np.testing.assert_allclose(logits.numpy(), hf_logits.detach().numpy(), atol=1e-4)

    loss = F.cross_entropy(logits[:, :-1], minilm.tensor(x[:, 1:]))
    loss.backward()
    hf_loss = torch.nn.functional.cross_entropy(hf_logits[:, :-1].reshape(-1, 50), tx[:, 1:].reshape(-1))
    hf_loss.backward()
    assert abs(loss.item() - hf_loss.item()) < 1e-5
    hf_params = dict(hf.named_parameters())
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), hf_params[name].grad.numpy(), atol=1e-4,
                                   err_msg=f"gradient of {name}")
