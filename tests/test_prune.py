"""minilm.prune: masks (unstructured magnitude pruning), heads and neurons (structured), recovery.

Gradient checks of a masked layer and of a pruned GPT; masked weights stay zero through AdamW;
magnitude pruning removes exactly round(amount·n) of the smallest entries (per layer and global)
and composes; make_permanent changes no output; a head- or neuron-pruned model equals the
unpruned one with those heads' / neurons' outputs zeroed; zero heads in a layer; checkpoint
round trips of pruned models; importance scores against a hand computation; errors; only GPT
bodies are pruned structurally; the package imports nothing that trains.  The recovery recipes
(minilm.finetune) and MaskedLoRALinear (minilm.peft) are tested here too, on pruned models."""
import json
import subprocess
import sys

import numpy as np
import pytest

import minilm
from helpers import host, logits_of, randomize, tiny_bert, tiny_gpt, to_tensor, token_ids
from minilm import backend, finetune, nn, peft, prune
from minilm.checkpoint import load_checkpoint, save_checkpoint
from minilm.models import GPT, GPTConfig
from minilm.models.classifier import GPTClassifier
from minilm.optim import AdamW, param_groups_for_weight_decay
from minilm.peft.masked_lora import MaskedLoRALinear

CFG = dict(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=16)
TINY = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8)
BERT = dict(vocab_size=11, max_position_embeddings=8, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16)
V = CFG["vocab_size"]


def randomize_biases(model, seed=0, scale=0.1):
    """GPT initialises biases to zero; give them values so that a lost bias would show."""
    randomize(model, seed, scale, only=".bias", trainable_only=False)


def copy_of(model):
    other = GPT(GPTConfig.from_dict(model.config.to_dict())).to(model.device, dtype=model.transformer.wte.weight.dtype)
    other.load_state_dict({k: host(v).copy() for k, v in model.state_dict().items()})
    return other


def effective(layer):
    return host(layer.weight_orig) * host(layer.weight_mask)


# ---- the masked layer -------------------------------------------------------------------------------
def test_pruned_linear_gradcheck(device):
    lin = nn.Linear(5, 4, generator=minilm.Generator(0)).double().to(device)
    layer = prune.PrunedLinear(lin)
    assert layer.weight_orig is lin.weight and layer.bias is lin.bias
    mask = (np.random.default_rng(1).random((5, 4)) > 0.4).astype(np.float64)
    layer.weight_mask.data = backend.to_device(mask, device)
    x = to_tensor(np.random.default_rng(2).standard_normal((2, 3, 5)), device, requires_grad=True)
    minilm.gradcheck_module(layer, [x])
    # ∂L/∂W_orig = M ⊙ (xᵀ g): zero exactly where the mask is
    g = np.random.default_rng(3).standard_normal((2, 3, 4))
    layer(x).backward(backend.to_device(g, device))
    xh = host(x).reshape(-1, 5)
    np.testing.assert_allclose(host(layer.weight_orig.grad), mask * (xh.T @ g.reshape(-1, 4)), atol=1e-12)
    assert np.all(host(layer.weight_orig.grad)[mask == 0] == 0)
    np.testing.assert_array_equal(host(layer.weight), host(lin.weight) * mask)
    with pytest.raises(TypeError, match="wraps a minilm.nn.Linear"):
        prune.PrunedLinear(nn.Embedding(3, 4))


def test_pruned_gpt_gradcheck(device):
    m = tiny_gpt(device, dtype=np.float64, **TINY)
    randomize_biases(m)
    prune.prune_heads(m, {0: [1], 1: [0, 1]})            # layer 1: no head left
    prune.prune_neurons(m, {0: [0, 5, 9], 1: list(range(20))})
    prune.magnitude_prune(m, 0.3, "global")
    for p in m.parameters():
        if p.numel() == 0:
            p.requires_grad = False                      # nothing to check in an empty matrix
    minilm.gradcheck_module(m, [token_ids((2, 5), 7, device), None, None, token_ids((2, 5), 7, device, 1)],
                            fn=lambda out: out.loss)


def test_masked_weights_stay_zero_through_adamw(device):
    m = tiny_gpt(device, **CFG)
    prune.magnitude_prune(m, 0.5, "layer")
    layers = prune.pruned_layers(m)
    masks = {n: host(l.weight_mask).copy() for n, l in layers}
    before = {n: host(l.weight_orig).copy() for n, l in layers}
    groups = param_groups_for_weight_decay(m, 0.1)
    assert any(p is layers[0][1].weight_orig for p in groups[0]["params"])      # weight_orig is decayed
    opt = AdamW(groups, lr=1e-2)
    for step in range(4):
        loss = m(token_ids((2, 8), V, device, step), labels=token_ids((2, 8), V, device, step + 10)).loss
        opt.zero_grad()
        loss.backward()
        for n, l in layers:
            assert np.all(host(l.weight_orig.grad)[masks[n] == 0] == 0), n
        opt.step()
        for n, l in layers:
            assert np.all(effective(l)[masks[n] == 0] == 0), n
            np.testing.assert_array_equal(host(l.weight_mask), masks[n])
    for n, l in layers:                                   # the unpruned entries did train
        assert np.abs(host(l.weight_orig) - before[n])[masks[n] == 1].max() > 1e-3


# ---- magnitude pruning ------------------------------------------------------------------------------
def test_magnitude_prune_per_layer_exact_and_smallest():
    m = tiny_gpt(**CFG)
    W = {n: host(l.weight).copy() for n, l in m.named_modules() if isinstance(l, nn.Linear)}
    report = prune.magnitude_prune(m, 0.37, "layer")
    for n, l in prune.pruned_layers(m):
        mask = host(l.weight_mask)
        pruned, kept = np.abs(W[n][mask == 0]), np.abs(W[n][mask == 1])
        assert pruned.size == round(0.37 * W[n].size), n
        assert pruned.max() <= kept.min(), n
        assert report["layers"][n] == pytest.approx(pruned.size / W[n].size)
    assert set(report["layers"]) == set(W)               # every c_attn, c_proj, c_fc; never wte
    assert "transformer.wte" not in report["layers"]


def test_magnitude_prune_global_exact_and_smallest():
    m = tiny_gpt(**CFG)
    W = {n: host(l.weight).copy() for n, l in m.named_modules() if isinstance(l, nn.Linear)}
    n_all = sum(w.size for w in W.values())
    report = prune.magnitude_prune(m, 0.6, "global")
    masks = {n: host(l.weight_mask) for n, l in prune.pruned_layers(m)}
    pruned = np.concatenate([np.abs(W[n][masks[n] == 0]) for n in W])
    kept = np.concatenate([np.abs(W[n][masks[n] == 1]) for n in W])
    assert pruned.size == round(0.6 * n_all) == report["zeros"]
    assert pruned.max() <= kept.min()
    assert report["total"] == pytest.approx(pruned.size / n_all)
    # raw magnitudes: GPT-2's scaled residual projections (smaller weights) lose more
    assert report["layers"]["transformer.h.0.mlp.c_proj"] > report["layers"]["transformer.h.0.mlp.c_fc"]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_composes(scope):
    a, b = tiny_gpt(**CFG), tiny_gpt(**CFG)
    prune.magnitude_prune(a, 0.3, scope)
    first = {n: host(l.weight_mask).copy() for n, l in prune.pruned_layers(a)}
    prune.magnitude_prune(a, 0.6, scope)                 # amount is the target: 0.6 of the total
    prune.magnitude_prune(b, 0.6, scope)
    for (n, la), (_, lb) in zip(prune.pruned_layers(a), prune.pruned_layers(b)):
        np.testing.assert_array_equal(host(la.weight_mask), host(lb.weight_mask))    # same as in one go
        assert np.all(host(la.weight_mask)[first[n] == 0] == 0)                     # pruned stay pruned
    # after training moves the weights, pruned entries still stay pruned and the count is exact
    rng = np.random.default_rng(0)
    for _, l in prune.pruned_layers(a):
        l.weight_orig.data = (rng.standard_normal(l.weight_orig.shape) * 0.05).astype(np.float32)
    second = {n: host(l.weight_mask).copy() for n, l in prune.pruned_layers(a)}
    rep = prune.magnitude_prune(a, 0.8, scope)
    n_all = sum(l.weight_mask.numel() for _, l in prune.pruned_layers(a))
    assert rep["zeros"] == (round(0.8 * n_all) if scope == "global" else
                            sum(round(0.8 * l.weight_mask.numel()) for _, l in prune.pruned_layers(a)))
    for n, l in prune.pruned_layers(a):
        mask = host(l.weight_mask)
        assert np.all(mask[second[n] == 0] == 0)
    # a target below the current sparsity prunes nothing
    before = {n: host(l.weight_mask).copy() for n, l in prune.pruned_layers(a)}
    prune.magnitude_prune(a, 0.5, scope)
    for n, l in prune.pruned_layers(a):
        np.testing.assert_array_equal(host(l.weight_mask), before[n])


def test_magnitude_prune_targets_and_errors():
    m = tiny_gpt(**CFG)
    rep = prune.magnitude_prune(m, 0.5, "layer", targets=("attn.c_attn",))
    assert set(rep["layers"]) == {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}
    assert isinstance(m.transformer.h[0].mlp.c_fc, nn.Linear)
    prune.magnitude_prune(m, 0.5, "layer", targets=("transformer.h.1.mlp.*",))
    assert isinstance(m.transformer.h[1].mlp.c_fc, prune.PrunedLinear)
    with pytest.raises(ValueError, match="amount"):
        prune.magnitude_prune(m, 1.5)
    with pytest.raises(ValueError, match="scope"):
        prune.magnitude_prune(m, 0.5, "row")
    with pytest.raises(KeyError, match="no Linear layer matches"):
        prune.magnitude_prune(m, 0.5, targets=("wte",))
    lora = tiny_gpt(**CFG)
    peft.add(lora, peft.LoRAConfig(r=2, target_modules=("c_attn",)))
    with pytest.raises(TypeError, match="merge them first"):
        prune.magnitude_prune(lora, 0.5)


def test_make_permanent_keeps_outputs_and_names(device):
    m = tiny_gpt(device, **CFG)
    randomize_biases(m)
    names = list(m.state_dict())
    prune.magnitude_prune(m, 0.7, "global")
    assert any(k.endswith("weight_mask") for k in m.state_dict())
    idx = token_ids((2, 8), V, device)
    out = logits_of(m, idx)
    rep = prune.sparsity(m)
    prune.make_permanent(m)
    assert not prune.pruned_layers(m) and list(m.state_dict()) == names
    np.testing.assert_array_equal(logits_of(m, idx), out)
    assert prune.sparsity(m)["zeros"] == rep["zeros"]


# ---- structured: equivalence with zeroed outputs -----------------------------------------------------
def test_head_pruned_model_equals_zeroed_heads(device):
    base = tiny_gpt(device, **CFG)
    randomize_biases(base)
    drop = {0: [1, 3], 1: [0, 1, 2, 3]}                  # layer 1 loses every head
    zeroed = copy_of(base)
    hs = base.config.head_size
    for l, heads in drop.items():                        # a head's output o_j meets only rows j·hs… of c_proj
        W = host(zeroed.transformer.h[l].attn.c_proj.weight).copy()
        for j in heads:
            W[j * hs:(j + 1) * hs] = 0
        zeroed.transformer.h[l].attn.c_proj.weight.data = backend.to_device(W, device)
    pruned = copy_of(base)
    prune.prune_heads(pruned, drop)
    assert pruned.config.layer_heads == [2, 0] and base.config.layer_heads is None
    a0 = pruned.transformer.h[0].attn
    assert a0.c_attn.weight.shape == (16, 3 * 2 * hs) and a0.c_proj.weight.shape == (2 * hs, 16)
    # the kept columns are heads 0 and 2 of each of q, k and v
    Wb = host(base.transformer.h[0].attn.c_attn.weight).reshape(16, 3, 4, hs)
    np.testing.assert_array_equal(host(a0.c_attn.weight).reshape(16, 3, 2, hs), Wb[:, :, [0, 2]])
    idx = token_ids((2, 8), V, device)
    np.testing.assert_allclose(logits_of(pruned, idx), logits_of(zeroed, idx), rtol=0, atol=1e-5)
    assert np.abs(logits_of(pruned, idx) - logits_of(base, idx)).max() > 1e-3
    assert pruned.num_parameters() < base.num_parameters()


def test_neuron_pruned_model_equals_zeroed_neurons(device):
    base = tiny_gpt(device, **CFG)
    randomize_biases(base)
    rng = np.random.default_rng(0)
    drop = {0: sorted(rng.choice(64, 20, replace=False).tolist()), 1: list(range(64))}
    by_rows, by_cols = copy_of(base), copy_of(base)
    for l, neurons in drop.items():
        W = host(by_rows.transformer.h[l].mlp.c_proj.weight).copy()
        W[neurons] = 0                                   # zero c_proj rows …
        by_rows.transformer.h[l].mlp.c_proj.weight.data = backend.to_device(W, device)
        fc = by_cols.transformer.h[l].mlp.c_fc           # … ⇔ zero the neurons' outputs: GELU(0) = 0
        Wf, bf = host(fc.weight).copy(), host(fc.bias).copy()
        Wf[:, neurons], bf[neurons] = 0, 0
        fc.weight.data, fc.bias.data = backend.to_device(Wf, device), backend.to_device(bf, device)
    pruned = copy_of(base)
    prune.prune_neurons(pruned, drop)
    assert pruned.config.layer_mlp == [44, 0]
    idx = token_ids((2, 8), V, device)
    np.testing.assert_allclose(logits_of(by_rows, idx), logits_of(by_cols, idx), rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits_of(pruned, idx), logits_of(by_rows, idx), rtol=0, atol=1e-5)


def test_zero_heads_and_zero_neurons_train(device):
    m = tiny_gpt(device, **CFG)
    randomize_biases(m)
    prune.prune_heads(m, {0: [0, 1, 2, 3]})
    prune.prune_neurons(m, {0: list(range(64))})
    block = m.transformer.h[0]
    assert block.attn.c_attn.weight.shape == (16, 0) and block.attn.c_proj.weight.shape == (0, 16)
    assert block.mlp.c_fc.weight.shape == (16, 0) and block.mlp.c_proj.weight.shape == (0, 16)
    x = to_tensor(np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32), device)
    np.testing.assert_array_equal(host(block.attn(x)), np.broadcast_to(host(block.attn.c_proj.bias), (2, 5, 16)))
    np.testing.assert_array_equal(host(block.mlp(x)), np.broadcast_to(host(block.mlp.c_proj.bias), (2, 5, 16)))
    opt = AdamW(param_groups_for_weight_decay(m, 0.1), lr=1e-2)
    b0 = host(block.attn.c_proj.bias).copy()
    loss = m(token_ids((2, 8), V, device), labels=token_ids((2, 8), V, device, 1)).loss
    opt.zero_grad()
    loss.backward()
    assert np.abs(host(block.attn.c_proj.bias.grad)).max() > 0   # the bias still learns
    opt.step()
    assert not np.array_equal(host(block.attn.c_proj.bias), b0)
    nobias = tiny_gpt(device, **CFG, bias=False)
    prune.prune_heads(nobias, {1: [0, 1, 2, 3]})
    assert np.all(host(nobias.transformer.h[1].attn(x)) == 0)
    assert np.isfinite(logits_of(nobias, token_ids((1, 8), V, device))).all()


def test_prefix_tuning_needs_the_layers_head_count():
    ok = tiny_gpt(**CFG)
    peft.add(ok, peft.PrefixConfig(m=2, hidden=None))     # unpruned: prefix-tuning works as before
    assert np.isfinite(logits_of(ok, token_ids((1, 4), V))).all()
    m = tiny_gpt(**CFG)
    prune.prune_heads(m, {0: [0]})
    with pytest.raises(ValueError, match="head-pruned"):         # refused when added, or at the latest when run
        peft.add(m, peft.PrefixConfig(m=2, hidden=None))
        m(token_ids((1, 4), V))


# ---- saving and loading --------------------------------------------------------------------------------
def test_config_round_trip():
    c = GPTConfig(**CFG, layer_heads=(2, 0), layer_mlp=[10, 64])
    d = json.loads(json.dumps(c.to_dict()))
    assert d["layer_heads"] == [2, 0] and GPTConfig.from_dict(d) == c
    assert "layer_heads" not in GPTConfig(**CFG).to_dict() and "layer_mlp" not in GPTConfig(**CFG).to_dict()
    assert GPTConfig.from_dict(GPTConfig(**CFG).to_dict()) == GPTConfig(**CFG)
    with pytest.raises(ValueError, match="layer_heads"):
        GPTConfig(**CFG, layer_heads=[2])
    with pytest.raises(ValueError, match="between 0 and n_head=4"):
        GPTConfig(**CFG, layer_heads=[2, 5])
    with pytest.raises(ValueError, match="layer_mlp"):
        GPTConfig(**CFG, layer_mlp=[3, -1])


def test_structured_checkpoint_round_trip(device, tmp_path):
    m = tiny_gpt(device, **CFG)
    randomize_biases(m)
    prune.prune_heads(m, {0: [2], 1: [0, 1, 2, 3]})
    prune.prune_neurons(m, {1: list(range(0, 64, 3))})
    save_checkpoint(tmp_path / "pruned", m, m.config.to_dict())
    ckpt = load_checkpoint(tmp_path / "pruned")
    back = GPT(GPTConfig.from_dict(ckpt.config)).to(device)
    ckpt.load_into(back)
    assert back.config == m.config and back.config.layer_heads == [3, 0]
    idx = token_ids((2, 8), V, device)
    np.testing.assert_array_equal(logits_of(back, idx), logits_of(m, idx))
    with pytest.raises(Exception, match="shape"):                   # an unpruned GPT does not take it
        ckpt.load_into(tiny_gpt(**CFG))


def test_masked_checkpoint_round_trip(tmp_path):
    m = tiny_gpt(**CFG)
    prune.magnitude_prune(m, 0.5, "layer")
    idx = token_ids((2, 8), V)
    save_checkpoint(tmp_path / "masked", m, m.config.to_dict())
    ckpt = load_checkpoint(tmp_path / "masked")
    back = GPT(GPTConfig.from_dict(ckpt.config))
    prune.attach_masks(back, ckpt.state)                 # the masks' layers become PrunedLinear, then load
    ckpt.load_into(back)
    np.testing.assert_array_equal(logits_of(back, idx), logits_of(m, idx))
    assert prune.sparsity(back)["total"] == prune.sparsity(m)["total"] == 0.5
    prune.make_permanent(m)                              # or: a plain GPT checkpoint with zeros in it
    save_checkpoint(tmp_path / "plain", m, m.config.to_dict())
    plain = GPT(GPTConfig.from_dict(load_checkpoint(tmp_path / "plain").config))
    load_checkpoint(tmp_path / "plain").load_into(plain)
    np.testing.assert_array_equal(logits_of(plain, idx), logits_of(back, idx))


# ---- importance ----------------------------------------------------------------------------------------
def test_importance_scores_by_hand():
    m = tiny_gpt(dtype=np.float64, **CFG)
    randomize_biases(m)
    prune.prune_heads(m, {1: [3]})                       # ragged: 4 and 3 heads
    hs, d = m.config.head_size, m.config.n_embd
    batches = [(host(token_ids((2, 8), V, seed=s)), host(token_ids((2, 8), V, seed=s + 5))) for s in range(2)]
    # gradients the long way: one backward per batch, |w ⊙ g| summed
    grads = {}
    for x, y in batches:
        m.zero_grad()
        m(minilm.tensor(x), labels=minilm.tensor(y)).loss.backward()
        for n, p in m.named_parameters():
            if p.grad is not None:
                grads[n] = grads.get(n, 0) + np.abs(host(p) * host(p.grad))
    m.zero_grad()
    norm, grad = prune.head_importance(m, "norm"), prune.head_importance(m, "grad", batches)
    assert [len(s) for s in norm] == [4, 3]
    for l in range(2):
        h = m.transformer.h[l].attn.n_head
        Wa = host(m.transformer.h[l].attn.c_attn.weight).reshape(d, 3, h, hs)      # q|k|v, then head, then hs
        Wp = host(m.transformer.h[l].attn.c_proj.weight).reshape(h, hs, d)
        Ga = grads[f"transformer.h.{l}.attn.c_attn.weight"].reshape(d, 3, h, hs)
        Gp = grads[f"transformer.h.{l}.attn.c_proj.weight"].reshape(h, hs, d)
        for j in range(h):
            np.testing.assert_allclose(norm[l][j], np.sqrt((Wa[:, :, j] ** 2).sum() + (Wp[j] ** 2).sum()), rtol=1e-12)
            np.testing.assert_allclose(grad[l][j], Ga[:, :, j].sum() + Gp[j].sum(), rtol=1e-10)
    nn_norm, nn_grad = prune.neuron_importance(m, "norm"), prune.neuron_importance(m, "grad", batches)
    for l in range(2):
        Wf, Wp = host(m.transformer.h[l].mlp.c_fc.weight), host(m.transformer.h[l].mlp.c_proj.weight)
        Gf = grads[f"transformer.h.{l}.mlp.c_fc.weight"]
        Gp = grads[f"transformer.h.{l}.mlp.c_proj.weight"]
        for i in (0, 17, 63):
            np.testing.assert_allclose(nn_norm[l][i], np.sqrt((Wf[:, i] ** 2).sum() + (Wp[i] ** 2).sum()), rtol=1e-12)
            np.testing.assert_allclose(nn_grad[l][i], Gf[:, i].sum() + Gp[i].sum(), rtol=1e-10)
    # the model is left as it was: no gradients, every parameter still trainable, eval/train mode kept
    assert all(p.grad is None and p.requires_grad for p in m.parameters())


def test_prune_by_score_takes_the_lowest_and_keeps_one_per_layer():
    m = tiny_gpt(**CFG)
    scores = [np.array([0.5, 0.1, 0.9, 0.2]), np.array([0.05, 0.04, 0.03, 0.3])]
    plan = prune.prune_heads_by_score(m, 4, scores)      # the 4 lowest: 0.03, 0.04, 0.05, 0.1
    assert plan == {1: [2, 1, 0], 0: [1]} and m.config.layer_heads == [3, 1]
    m = tiny_gpt(**CFG)
    plan = prune.prune_heads_by_score(m, 6, scores)      # layer 1 must keep one head (0.3)
    assert m.config.layer_heads == [1, 1] and sorted(plan[0]) == [0, 1, 3]
    with pytest.raises(ValueError, match="at most 6 can go"):
        prune.prune_heads_by_score(tiny_gpt(**CFG), 7, scores)
    m = tiny_gpt(**CFG)
    prune.prune_heads_by_score(m, 1.0, scores, min_per_layer=0)
    assert m.config.layer_heads == [0, 0]
    m = tiny_gpt(**CFG)
    plan = prune.prune_neurons_by_score(m, 0.25, prune.neuron_importance(m, "norm"))
    assert sum(len(v) for v in plan.values()) == 32 and sum(m.config.layer_mlp) == 96
    with pytest.raises(ValueError, match="scores have lengths"):
        prune.prune_neurons_by_score(m, 1, [np.ones(64), np.ones(64)])


def test_structured_errors_name_the_layer_and_index():
    m = tiny_gpt(**CFG)
    with pytest.raises(IndexError, match=r"layer 5 does not exist \(the model has 2 layers"):
        prune.prune_heads(m, {5: [0]})
    with pytest.raises(IndexError, match="layer 1 has 4 heads .*head 4 does not exist"):
        prune.prune_heads(m, {1: [0, 4]})
    with pytest.raises(ValueError, match="twice"):
        prune.prune_heads(m, {0: [1, 1]})
    with pytest.raises(IndexError, match="layer 0 has 64 neurons .*neuron 64 does not exist"):
        prune.prune_neurons(m, {0: [64]})
    assert m.config.layer_heads is None and m.transformer.h[1].attn.n_head == 4   # nothing changed
    prune.prune_heads(m, {0: [0, 1, 2, 3]})
    with pytest.raises(IndexError, match="none left"):
        prune.prune_heads(m, {0: [0]})
    with pytest.raises(ValueError, match="needs batches"):
        prune.head_importance(m, "grad")
    with pytest.raises(ValueError, match="method"):
        prune.neuron_importance(m, "taylor")
    masked = tiny_gpt(**CFG)
    prune.magnitude_prune(masked, 0.2)
    with pytest.raises(TypeError, match="make_permanent"):
        prune.prune_heads(masked, {0: [0]})


def test_structured_pruning_needs_a_gpt_body():
    bert = tiny_bert(**BERT)
    for call in (lambda: prune.prune_heads(bert, {0: [0]}), lambda: prune.prune_neurons(bert, {0: [0]}),
                 lambda: prune.head_importance(bert), lambda: prune.neuron_importance(bert),
                 lambda: prune.structure(bert)):
        with pytest.raises(TypeError, match="needs a GPT body; Bert has Bert"):
            call()
    # masks know nothing of the model: any minilm Linear can be masked, a BERT's included
    rep = prune.magnitude_prune(bert, 0.5, "layer", targets=("query", "value"))
    assert len(rep["layers"]) == 4 and rep["total"] == 0.5
    # a task model is pruned through its body (model.base_model), scored with its own loss
    clf = GPTClassifier(tiny_gpt(**CFG), 3, generator=minilm.Generator(1))
    batches = [(host(token_ids((4, 8), V, seed=s)), np.array([0, 1, 2, 1])) for s in range(2)]
    scores = prune.head_importance(clf, "grad", batches)
    assert [len(s) for s in scores] == [4, 4] and all(np.all(s > 0) for s in scores)
    prune.prune_heads_by_score(clf, 2, scores)
    assert sum(clf.gpt.config.layer_heads) == 6 and prune.structure(clf)["heads"] == clf.gpt.config.layer_heads
    assert np.isfinite(logits_of(clf, token_ids((2, 8), V))).all()


def test_prune_imports_nothing_that_trains():
    code = ("import sys, minilm.prune\n"
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "[['minilm', n] for n in ('finetune', 'train', 'peft', 'optim', 'distill', 'pretrain')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing minilm.prune imported {out.strip()}"


# ---- recovery ----------------------------------------------------------------------------------------
def test_masked_lora_keeps_pruned_entries_zero_and_merges_exactly():
    lin = nn.Linear(6, 5, generator=minilm.Generator(0))
    mask = (np.random.default_rng(0).random((6, 5)) > 0.5).astype(np.float32)
    lin.weight.data = lin.weight.data * mask
    layer = MaskedLoRALinear(lin, mask, r=2, alpha=4, generator=minilm.Generator(1))
    layer.lora_B.data = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    x = minilm.randn(3, 6, generator=minilm.Generator(2))
    with minilm.no_grad():
        y = layer(x).numpy()
        assert np.all(layer.delta_weight().numpy()[mask == 0] == 0)
    layer(x).sum().backward()
    assert layer.lora_A.grad is not None and np.abs(layer.lora_B.grad.numpy()).max() > 0
    layer.merge()
    assert np.all(lin.weight.numpy()[mask == 0] == 0)
    np.testing.assert_allclose(lin(x).numpy(), y, atol=1e-6)


def test_finetune_pruned_keywords_are_its_run():
    data = np.random.default_rng(0).integers(0, V, 400)
    runs = {}
    for method, lr in (("full", 5e-4), ("lora", 2e-3)):
        a, b = tiny_gpt(**CFG), tiny_gpt(**CFG)
        prune.magnitude_prune(a, 0.5)
        prune.magnitude_prune(b, 0.5)
        ra = finetune.finetune_pruned(a, data, method, steps=3)                  # batch 8, warm-up 10: the defaults
        rb = finetune.finetune_pruned(b, data, method, config=finetune.finetune_config(
            max_steps=3, batch_size=8, learning_rate=lr, warmup_steps=10))
        assert ra["loss"] == rb["loss"]
        for (n, la), (_, lb) in zip(prune.pruned_layers(a), prune.pruned_layers(b)):
            np.testing.assert_array_equal(host(la.weight_orig), host(lb.weight_orig))
        runs[method] = ra["loss"]
    assert runs["full"] != runs["lora"]
    assert finetune.finetune_pruned(tiny_gpt(**CFG), data, steps=0) is None
    with pytest.raises(ValueError, match="method must be 'full' or 'lora'"):
        finetune.finetune_pruned(tiny_gpt(**CFG), data, "adapter")


@pytest.mark.parametrize("kind,method", [("unstructured", "lora"), ("unstructured", "full"),
                                         ("heads", "lora"), ("neurons", "full")])
def test_iterative_prune(kind, method):
    m = tiny_gpt(**CFG)
    data = np.random.default_rng(0).integers(0, CFG["vocab_size"], 400)
    hist = finetune.iterative_prune(m, data, 0.5, steps=2, finetune_steps=3, method=method, kind=kind,
                                    val_ids=data[:100], batch_size=4, stream=open("/dev/null", "w"))
    assert [round(r["target"], 3) for r in hist] == [0.25, 0.5]
    assert not peft.peft_modules(m) and all(p.requires_grad for p in m.parameters())
    if kind == "unstructured":
        assert hist[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert prune.sparsity(m)["total"] == pytest.approx(0.5, abs=1e-3)        # fine-tuning kept the zeros
        if method == "lora":                             # the merged (masked) update left the zeros exact
            for _, l in prune.pruned_layers(m):
                assert np.all(host(l.weight_orig)[host(l.weight_mask) == 0] == 0)
    elif kind == "heads":
        assert sum(m.config.layer_heads) == 4
    else:
        assert sum(m.config.layer_mlp) == 64
    assert all(np.isfinite(r["val_loss"]) for r in hist)
