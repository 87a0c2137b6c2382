"""The GPT (Eqs. G1–G4): gradient checks of its modules, its loss, its errors,
and GPT-2 checkpoints from Hugging Face."""
import math

import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, to_tensor
from minilm.models import GPT, GPTConfig
from minilm.models.gpt import MLP, Block, CausalSelfAttention

TINY = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8)


def tiny(device="cpu", **kw):
    return GPT(GPTConfig(**{**TINY, **kw}), generator=minilm.Generator(0)).double().to(device)


def ids(shape, high, device="cpu", seed=0):
    return to_tensor(np.random.default_rng(seed).integers(0, high, size=shape), device)


@pytest.mark.parametrize("part", [CausalSelfAttention, MLP, Block])
def test_block_parts_gradcheck(part, device):
    m = part(GPTConfig(**TINY), minilm.Generator(1)).double().to(device)
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 5, 8)), device, requires_grad=True)
    minilm.gradcheck_module(m, [x])


def test_gpt_loss_gradcheck(device):
    m = tiny(device)
    idx, tgt = ids((2, 5), 7, device), ids((2, 5), 7, device, seed=1)
    minilm.gradcheck_module(m, [idx, tgt], fn=lambda out: out[1])


def test_gpt_with_segments_gradcheck():
    m = tiny(n_segments=2)
    seg = to_tensor(np.array([[0, 0, 1, 1, 1]]), "cpu")
    minilm.gradcheck_module(m, [ids((1, 5), 7), ids((1, 5), 7, seed=1), seg], fn=lambda out: out[1])
    with pytest.raises(ValueError, match="segments="):
        m(ids((1, 5), 7))


def test_head_is_tied_to_the_token_embedding():
    m = GPT(GPTConfig(**TINY))
    names = [n for n, _ in m.named_parameters()]
    assert "transformer.wte.weight" in names and not any("lm_head" in n for n in names)
    _, loss = m(minilm.tensor([[1, 2, 3]]), minilm.tensor([[2, 3, 1]]))
    loss.backward()
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
    m = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32), generator=minilm.Generator(0))
    _, loss = m(ids((8, 32), V), ids((8, 32), V, seed=5))
    assert abs(loss.item() - math.log(V)) < 0.05


def test_gpt2_initialisation_scales_residual_projections():
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=8, n_head=4, n_embd=64), generator=minilm.Generator(0))
    std = lambda name: float(dict(m.named_parameters())[name].numpy().std())
    assert std("transformer.h.0.mlp.c_fc.weight") == pytest.approx(0.02, rel=0.05)
    assert std("transformer.h.0.mlp.c_proj.weight") == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert np.all(dict(m.named_parameters())["transformer.h.0.attn.c_attn.bias"].numpy() == 0)


def test_causality_future_tokens_do_not_change_past_logits():
    m = tiny()
    a = np.array([[1, 2, 3, 4, 5]])
    b = a.copy()
    b[0, 3:] = [6, 0]
    la, _ = m(to_tensor(a, "cpu"))
    lb, _ = m(to_tensor(b, "cpu"))
    np.testing.assert_allclose(la.numpy()[0, :3], lb.numpy()[0, :3], atol=1e-12)
    assert not np.allclose(la.numpy()[0, 3:], lb.numpy()[0, 3:])


def test_bad_ids_and_long_sequences_get_clear_errors():
    m = GPT(GPTConfig(**TINY))
    with pytest.raises(IndexError, match=r"token id 9 is outside the vocabulary \[0, 7\)"):
        m(minilm.tensor([[1, 9]]))
    with pytest.raises(IndexError, match=r"token id -1"):
        m(minilm.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="sequence length 7 exceeds block_size 6"):
        m(minilm.tensor([[1] * 7]))
    with pytest.raises(TypeError, match="integer token ids, got dtype float32"):
        m(minilm.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"shape \(batch, time\)"):
        m(minilm.tensor([1, 2]))
    with pytest.raises(ValueError, match="targets of shape"):
        m(minilm.tensor([[1, 2]]), minilm.tensor([[1, 2, 3]]))
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


def test_matches_hugging_face_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    m = minilm.models.load_gpt2(str(tmp_path))

    x = np.random.default_rng(0).integers(0, 50, size=(3, 16))
    logits, _ = m(minilm.tensor(x))
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
