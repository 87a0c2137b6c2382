"""BART (minilm/models/bart.py): Hugging Face interop (logits, loss, every gradient, greedy and beam
generation), the decoder's key/value cache against full recomputation, gradient checks, LoRA and
Adapters on the encoder–decoder, and the errors bad input gets."""
import copy

import numpy as np
import pytest

import minilm
from minilm import peft
from minilm.models import Bart, BartConfig, BartForConditionalGeneration, generate_seq2seq, shift_tokens_right
from minilm.models.bart import bart_state_from_hf
from minilm.optim import AdamW
from helpers import host, to_tensor

V = 50
TINY = dict(vocab_size=V, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=32,
            dropout=0.0, init_std=0.3)


def tiny_bart(seed=0, dtype=np.float64, device="cpu", **overrides):
    """A BartForConditionalGeneration with random biases, LayerNorms and final_logits_bias as well, so a
    mistake in any of them shows."""
    m = BartForConditionalGeneration(BartConfig(**{**TINY, **overrides}), generator=minilm.Generator(seed))
    rng = np.random.default_rng(seed + 1)
    for name, p in m.named_parameters():
        if name.endswith("bias") or "layer_norm" in name or "layernorm" in name:
            p.data = p.data + 0.1 * rng.standard_normal(p.shape).astype(p.dtype)
    m.final_logits_bias.data = 0.2 * rng.standard_normal((1, V)).astype(np.float32)
    return m.to(dtype=dtype).to(device).eval()


def batch(seed=0, B=2, S=7, T=5):
    """Source ids with padding in row 1, its mask, and labels ending in eos (−100 after it in row 1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, (B, S))
    ids[:, -1] = 2
    ids[1, S - 2:], ids[1, S - 3] = 1, 2                   # row 1: 4 tokens, </s>, two pads
    labels = rng.integers(3, V, (B, T))
    labels[:, -1] = 2
    labels[1, T - 2:], labels[1, T - 3] = -100, 2
    return ids, (ids != 1).astype(np.int64), labels


# ---- config --------------------------------------------------------------------------------------

def test_config_round_trip_and_checks():
    c = BartConfig(**TINY)
    assert BartConfig.from_dict(c.to_dict()) == c
    hf_like = {**c.to_dict(), "model_type": "bart", "encoder_layerdrop": 0.0, "num_labels": 3, "forced_eos_token_id": 2}
    assert BartConfig.from_hf(hf_like) == c
    with pytest.raises(ValueError, match="d_model=16 is not divisible by decoder_attention_heads=3"):
        BartConfig(**{**TINY, "decoder_attention_heads": 3})
    with pytest.raises(ValueError, match="activation_function='swish'"):
        BartConfig(**{**TINY, "activation_function": "swish"})
    with pytest.raises(ValueError, match="pad_token_id=50 is outside"):
        BartConfig(**{**TINY, "pad_token_id": 50})
    with pytest.raises(ValueError, match="encoder_layers must be an integer"):
        BartConfig.from_dict({**c.to_dict(), "encoder_layers": 2.0})
    with pytest.raises(ValueError, match="LayerDrop"):
        BartConfig.from_hf({**hf_like, "decoder_layerdrop": 0.1})
    with pytest.raises(ValueError, match="model_type='mbart'"):
        BartConfig.from_hf({**hf_like, "model_type": "mbart"})


def test_shift_tokens_right():
    labels = np.array([[5, 6, 2], [7, 2, -100]])
    np.testing.assert_array_equal(shift_tokens_right(labels, 1, 2), [[2, 5, 6], [2, 7, 2]])
    np.testing.assert_array_equal(shift_tokens_right(np.array([[5, -100, -100]]), 1, 2), [[2, 5, 1]])


def test_model_interface():
    m = tiny_bart()
    layers = m.layers()
    assert len(layers) == 4 and layers[0] is m.model.encoder.layers[0] and layers[2] is m.model.decoder.layers[0]
    assert all(l.adapter_width == 16 for l in layers)
    assert m.attention_shape(0) == m.attention_shape(3) == (4, 4)
    assert m.base_model is m.model and m.fused_qkv == ()
    names = {n for n, _ in m.named_parameters()}
    assert "model.shared.weight" in names and not any("embed_tokens" in n or "lm_head" in n for n in names)
    assert "final_logits_bias" in m.state_dict() and "final_logits_bias" not in names   # a buffer, as in HF
    ids, mask, _ = batch()
    with minilm.no_grad():                            # the body alone: decoder input = input_ids shifted right
        out = m.model(ids, mask)
        ref = m.model(ids, mask, shift_tokens_right(ids, 1, 2))
    assert out.last_hidden_state.shape == (2, 7, 16) and out.logits is None and out.past_key_values is None
    np.testing.assert_array_equal(host(out.last_hidden_state), host(ref.last_hidden_state))
    assert isinstance(m.model, Bart)


# ---- Hugging Face interop --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_pair():
    """(HF model float32, HF model float64, their config): random, tiny, biases and LayerNorms perturbed,
    a random final_logits_bias, eos made a little likelier so that hypotheses end at different lengths."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    cfg = transformers.BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                  decoder_ffn_dim=48, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                  activation_dropout=0.0, init_std=0.15)
    torch.manual_seed(9)   # with this seed greedy and beam hypotheses end (</s>) after 1, 4 and 6 tokens
    hf = transformers.BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_(0, 0.5)
        hf.final_logits_bias[0, 2] += 0.5
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layernorm" in name:
                p.add_(0.05 * torch.randn_like(p))
    # BART's config forces </s> as the last token at max_length (forced_eos_token_id = 2);
    # generate_seq2seq forces nothing, so neither does the reference.  min_length is 0 (HF's default).
    hf.generation_config.forced_eos_token_id = None
    hf.generation_config.forced_bos_token_id = None
    hf.generation_config.min_length = 0
    return hf, copy.deepcopy(hf).double(), cfg


def _state(hf):
    return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hf_logits_loss_and_every_gradient(hf_pair, dtype):
    import torch
    hf32, hf64, cfg = hf_pair
    hf = hf32 if dtype == np.float32 else hf64
    m = BartForConditionalGeneration.from_hf_state_dict(cfg.to_dict(), _state(hf), dtype=dtype)
    ids, mask, labels = batch(S=9, T=6)
    out = m(ids, mask, labels=labels)
    out.loss.backward()
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    ref.loss.backward()
    tol = 1e-4 if dtype == np.float32 else 1e-10
    z = ref.logits.detach().numpy()
    assert np.abs(host(out.logits) - z).max() <= tol * np.abs(z).max()
    assert abs(float(host(out.loss)) - ref.loss.item()) <= tol
    np.testing.assert_allclose(host(out.encoder_last_hidden_state), ref.encoder_last_hidden_state.detach().numpy(),
                               atol=tol)
    own = dict(m.named_parameters())
    linears = {k for k in bart_state_from_hf(m, _state(hf)) if k.endswith(("proj.weight", "fc1.weight", "fc2.weight"))}
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    assert set(hf_grads) == set(own)
    # k_proj.bias has gradient 0 in exact arithmetic (softmax ignores a shift common to every key), so each
    # matrix is compared relative to its own largest entry, or 1e-3 of the largest gradient in the model
    scale = max(np.abs(g).max() for g in hf_grads.values())
    for name, g in hf_grads.items():
        mine = host(own[name].grad)
        mine = mine.T if name in linears else mine
        err = np.abs(mine - g).max() / max(np.abs(g).max(), 1e-3 * scale)
        assert err <= tol, f"{name}: relative gradient error {err:.3g}"
    hf.zero_grad()


@pytest.mark.parametrize("num_beams,early_stopping", [(1, True), (3, True), (4, True), (4, False)])
def test_hf_generation_same_ids(hf_pair, num_beams, early_stopping):
    import torch
    hf, _, cfg = hf_pair
    m = BartForConditionalGeneration.from_hf_state_dict(cfg.to_dict(), _state(hf))
    rng = np.random.default_rng(2)
    ids = rng.integers(3, V, (3, 8))
    ids[:, -1] = 2
    ids[1, 5:], ids[1, 4] = 1, 2
    mask = (ids != 1).astype(np.int64)
    if num_beams > 1:
        pytest.importorskip("minilm.decoding", reason="minilm.decoding (beam search) is not there yet")
    ours = host(generate_seq2seq(m, ids, mask, max_new_tokens=10, num_beams=num_beams, length_penalty=1.0,
                                 early_stopping=early_stopping))
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), num_beams=num_beams,
                          do_sample=False, max_new_tokens=10, length_penalty=1.0,
                          early_stopping=early_stopping).numpy()
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("variant", [dict(scale_embedding=True), dict(activation_function="relu"),
                                     dict(activation_function="gelu_new", encoder_attention_heads=2, decoder_ffn_dim=40)])
def test_hf_config_variants(hf_pair, variant):
    """√d-scaled embeddings, other activations, encoder and decoder of different shapes: float64 logits agree."""
    import torch
    import transformers
    cfg = transformers.BartConfig(**{**TINY, "max_position_embeddings": 20, "init_std": 0.1, **variant})
    torch.manual_seed(0)
    hf = transformers.BartForConditionalGeneration(cfg).eval().double()
    m = BartForConditionalGeneration.from_hf_state_dict(cfg.to_dict(), _state(hf), dtype=np.float64)
    assert m.config.scale_embedding == cfg.scale_embedding and m.config.activation_function == cfg.activation_function
    ids, mask, _ = batch()
    dec = np.array([[2, 5, 6, 7], [2, 8, 9, 10]])
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec))
    with minilm.no_grad():
        np.testing.assert_allclose(host(m(ids, mask, dec).logits), ref.logits.numpy(), rtol=0, atol=1e-12)


def test_hf_folder_and_bart_model_state_dict(hf_pair, tmp_path):
    """A save_pretrained folder loads with from_pretrained; a BartModel state dict (no ``model.``, no head)
    and one whose tied copies are left out load too; an untied head is refused."""
    hf, _, cfg = hf_pair
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ids, mask, _ = batch()
    dec = np.array([[2, 5, 6], [2, 7, 8]])
    m = BartForConditionalGeneration.from_pretrained(str(tmp_path))
    with minilm.no_grad():
        want = host(m(ids, mask, dec).logits)
    body = {k[len("model."):]: v for k, v in _state(hf).items() if k.startswith("model.")}
    body = {k: v for k, v in body.items() if "embed_tokens" not in k}
    body["final_logits_bias"] = hf.final_logits_bias.numpy()
    m2 = BartForConditionalGeneration.from_hf_state_dict(cfg.to_dict(), body)
    with minilm.no_grad():
        np.testing.assert_array_equal(host(m2(ids, mask, dec).logits), want)
    bad = _state(hf)
    bad["lm_head.weight"] = bad["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight differs from model.shared.weight"):
        BartForConditionalGeneration.from_hf_state_dict(cfg.to_dict(), bad)


# ---- the decoder's cache -------------------------------------------------------------------------------

def test_cached_decoding_equals_full_recomputation(device):
    """Logits of every step from the cache (one token at a time, then a chunk of 3 after 2 singles) equal
    those of one pass over the whole prefix, with a padded source and a padded decoder position."""
    m = tiny_bart(device=device)
    ids, mask, _ = batch(S=7)
    dec = np.array([[2, 11, 12, 13, 14, 15, 16], [2, 21, 22, 23, 24, 25, 1]])
    dmask = (np.arange(7)[None] < np.array([[7], [6]])).astype(np.int64)
    with minilm.no_grad():
        full = host(m(to_tensor(ids, device), to_tensor(mask, device), to_tensor(dec, device),
                      to_tensor(dmask, device)).logits)
        enc = m.encode(to_tensor(ids, device), to_tensor(mask, device))
        for chunks in ([1] * 7, [1, 1, 3, 1, 1]):
            past, t, steps = None, 0, []
            for n in chunks:
                out = m(None, to_tensor(mask, device), to_tensor(dec[:, t:t + n], device),
                        to_tensor(dmask[:, :t + n], device), past_key_values=past, use_cache=True,
                        encoder_outputs=enc)
                steps.append(host(out.logits))
                past, t = out.past_key_values, t + n
            assert past[0][0].shape == (2, 4, 7, 4) and past[0][2].shape == (2, 4, 7, 4)   # self grew, cross S
            np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=1e-10)


def test_greedy_equals_argmax_of_full_recomputation():
    m = tiny_bart(seed=3, init_std=0.5)
    ids, mask, _ = batch(seed=3, B=3)
    out = host(generate_seq2seq(m, ids, mask, max_new_tokens=6))
    y = np.full((3, 1), 2)
    with minilm.no_grad():
        for _ in range(6):
            y = np.concatenate([y, host(m(ids, mask, y).logits)[:, -1].argmax(-1)[:, None]], axis=1)
    for row, ref in zip(out, y):                      # equal up to each row's eos; pad after it
        n = int(np.argmax(ref[1:] == 2)) + 2 if (ref[1:] == 2).any() else len(ref)
        np.testing.assert_array_equal(row[:n], ref[:n])
        assert (row[n:] == 1).all()
    assert m.training is False and out.dtype == np.int64


# ---- gradients, dropout ----------------------------------------------------------------------------

def test_gradcheck_tiny_bart():
    m = tiny_bart(encoder_layers=1, decoder_layers=1, d_model=8, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8)
    ids, mask, labels = batch(S=5, T=4)
    minilm.gradcheck_module(m, [to_tensor(ids, "cpu"), to_tensor(mask, "cpu"), None, None, to_tensor(labels, "cpu")],
                            fn=lambda out: out.loss, full_limit=0, n_directions=1, n_entries=1)


def test_dropout_in_train_mode_only():
    m = tiny_bart(dropout=0.3, activation_dropout=0.2)
    ids, mask, labels = batch()
    with minilm.no_grad():
        a, b = (host(m(ids, mask, labels=labels).logits) for _ in range(2))
        np.testing.assert_array_equal(a, b)
        m.train()
        c = host(m(ids, mask, labels=labels).logits)
    assert np.abs(a - c).max() > 1e-3


# ---- PEFT ----------------------------------------------------------------------------------------------

LORA_TARGETS = ["self_attn.q_proj", "self_attn.v_proj", "encoder_attn.q_proj", "encoder_attn.k_proj",
                "encoder_attn.v_proj", "encoder_attn.out_proj", "self_attn.k_proj", "self_attn.out_proj", "fc1", "fc2"]


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_peft_attaches_and_only_it_trains(method, tmp_path):
    m = tiny_bart(dtype=np.float32)
    ids, mask, labels = batch()
    with minilm.no_grad():
        base = host(m(ids, mask, labels=labels).logits)
    if method == "lora":
        peft.add(m, peft.LoRAConfig(r=2, target_modules=LORA_TARGETS))
        wrapped = [n for n, _ in peft.lora.lora_layers(m)]
        assert len(wrapped) == 2 * 6 + 2 * 10                       # encoder: 4 + fc1, fc2; decoder: 8 + 2
        assert "model.decoder.layers.1.encoder_attn.k_proj" in wrapped
    else:
        peft.add(m, peft.AdapterConfig(r=3, placement="houlsby"))
        assert all(l.adapter_attn is not None and l.adapter_mlp is not None for l in m.layers())
    with minilm.no_grad():
        np.testing.assert_allclose(host(m(ids, mask, labels=labels).logits), base, atol=1e-6)  # B = 0 / W2 = 0
    before = {n: host(p).copy() for n, p in m.named_parameters()}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) if method == "lora" else (".adapter_" in n) for n in trainable)
    opt = AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    m(ids, mask, labels=labels).loss.backward()
    opt.step()
    changed = {n for n, p in m.named_parameters() if not np.array_equal(host(p), before[n])}
    assert changed and changed <= trainable
    if method == "lora":                                            # A moves only once B is nonzero: B moved
        assert any("lora_B" in n for n in changed)
    m.eval()
    peft.save_adapter(m, tmp_path / "ad")                           # the trained part alone reloads
    fresh = peft.load_adapter(tiny_bart(dtype=np.float32), tmp_path / "ad")
    with minilm.no_grad():
        np.testing.assert_array_equal(host(fresh(ids, mask, labels=labels).logits),
                                      host(m(ids, mask, labels=labels).logits))


# ---- errors -------------------------------------------------------------------------------------------

def test_errors_name_the_bad_input():
    m = tiny_bart()
    ids, mask, labels = batch()
    with pytest.raises(ValueError, match=r"decoder_input_ids must have shape \(batch, time\), got \(5,\)"):
        m(ids, mask, np.arange(5))
    with pytest.raises(ValueError, match=r"decoder_input_ids of shape \(3, 4\) have batch 3, the source 2"):
        m(ids, mask, np.ones((3, 4), dtype=np.int64))
    with pytest.raises(IndexError, match=r"decoder_input_ids holds 50, outside \[0, 50\)"):
        m(ids, mask, np.array([[2, 50], [2, 3]]))
    with pytest.raises(IndexError, match=r"input_ids holds 77, outside \[0, 50\)"):
        m(np.where(ids == 2, 77, ids), mask, np.array([[2, 3], [2, 3]]))
    with pytest.raises(IndexError, match=r"labels hold 50, outside \[0, 50\)"):
        m(ids, mask, labels=np.where(labels == 2, 50, labels))
    with pytest.raises(ValueError, match=r"labels of shape \(2, 5\) do not match decoder_input_ids \(2, 3\)"):
        m(ids, mask, np.ones((2, 3), dtype=np.int64), labels=labels)
    with pytest.raises(TypeError, match="decoder_input_ids must be integer ids"):
        m(ids, mask, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"decoder_attention_mask of shape \(2, 2\) must be \(B, P \+ T\) = \(2, 3\)"):
        m(ids, mask, np.ones((2, 3), dtype=np.int64), np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 3\) does not match input_ids \(2, 7\)"):
        m(ids, np.ones((2, 3)), np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="positions up to 33 exceed max_position_embeddings 32"):
        m(ids, mask, np.ones((2, 33), dtype=np.int64))
    with minilm.no_grad():
        past = m(ids, mask, np.ones((2, 3), dtype=np.int64), use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"past_key_values\[0\] has shapes"):
        m(ids[:1], mask[:1], np.ones((1, 1), dtype=np.int64), past_key_values=past)
    with pytest.raises(ValueError, match="give input_ids"):
        m(None, None, np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="num_beams must be an integer"):
        generate_seq2seq(m, ids, mask, num_beams=0)
