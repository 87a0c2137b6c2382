"""Checkpoints: round trips, atomic overwrite, and the errors for broken or foreign directories."""
import json
import os

import numpy as np
import pytest
import safetensors

import minilm
import minilm.checkpoint as ckpt
import minilm.nn as nn
from helpers import host
from minilm.checkpoint import CheckpointError, CheckpointNotFoundError, load_checkpoint, save_checkpoint
from minilm.optim import AdamW, param_groups_for_weight_decay


class TiedLM(nn.Module):
    """Embedding → Linear → LayerNorm, and a head tied to the embedding (one Parameter, two modules)."""

    def __init__(self, vocab=9, d=4, seed=0):
        super().__init__()
        g = minilm.Generator(seed)
        self.wte = nn.Embedding(vocab, d, generator=g)
        self.fc = nn.Linear(d, d, generator=g)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False, generator=g)
        self.head.weight = self.wte.weight   # one Parameter in two modules (shapes aside: only sharing matters)


class CharTokenizer:
    def to_dict(self):
        return {"type": "char", "vocab": list("abcdefghi")}


def _trained(device="cpu", seed=0, steps=2):
    model = TiedLM(seed=seed).to(device)
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = minilm.backend.to_device(rng.standard_normal(p.shape).astype(p.dtype), device)
        opt.step()
    return model, opt


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(host(sa[k]), host(sb[k]), err_msg=k)


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_save_load_round_trip(tmp_path, device):
    model, opt = _trained(device)
    path = save_checkpoint(tmp_path / "run", model, {"vocab": 9, "d": 4}, optimizer=opt,
                           tokenizer=CharTokenizer(), step=2, extra={"loss": 1.5})
    assert sorted(os.listdir(path)) == ["meta.json", "model.safetensors", "optimizer.safetensors"]
    assert os.listdir(tmp_path) == ["run"]  # no temporary directories left behind
    c = load_checkpoint(path)
    assert c.config == {"vocab": 9, "d": 4} and c.step == 2 and c.extra == {"loss": 1.5}
    assert c.tokenizer_dict == CharTokenizer().to_dict() and c.meta["model_class"] == "TiedLM"
    assert set(c.state) == set(model.state_dict())
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in c.state.values())

    fresh, fresh_opt = _trained(device, seed=1, steps=0)
    c.load_into(fresh, fresh_opt)
    _assert_same(model, fresh)
    assert fresh.head.weight is fresh.wte.weight  # still tied
    assert fresh.wte.weight.device == device
    # the optimizers carry on identically
    for m, o in ((model, opt), (fresh, fresh_opt)):
        for p in m.parameters():
            p.grad = minilm.backend.to_device(np.ones(p.shape, dtype=np.float32), device)
        o.step()
    _assert_same(model, fresh)


def test_tied_weight_is_written_once(tmp_path):
    model, _ = _trained()
    save_checkpoint(tmp_path / "c", model, {})
    with safetensors.safe_open(str(tmp_path / "c" / "model.safetensors"), framework="np") as f:
        keys = set(f.keys())
    assert keys == {"wte.weight", "fc.weight", "fc.bias", "ln.weight", "ln.bias"}
    assert load_checkpoint(tmp_path / "c").optimizer_state is None


def test_rng_state_is_restored(tmp_path):
    model, _ = _trained()
    minilm.manual_seed(3)
    c = load_checkpoint(save_checkpoint(tmp_path / "c", model, {}))
    first = minilm.randn(5).numpy()
    minilm.randn(7)
    c.restore_rng()
    np.testing.assert_array_equal(minilm.randn(5).numpy(), first)


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c"
    old_model, _ = _trained(seed=0)
    save_checkpoint(path, old_model, {"v": 1}, step=1)
    new_model, new_opt = _trained(seed=1)

    def disk_full(file, arrays):  # writes half a file, then fails
        file.write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, new_model, {"v": 2}, optimizer=new_opt, step=2)
    monkeypatch.undo()
    c = load_checkpoint(path)
    assert c.step == 1 and c.config == {"v": 1}
    restored = TiedLM(seed=5)
    c.load_into(restored)
    _assert_same(old_model, restored)
    assert os.listdir(tmp_path) == ["c"]

    real_rename = os.rename

    def fail_second_rename(src, dst):  # the old checkpoint has stepped aside; the new one fails to move in
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", fail_second_rename)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, new_model, {"v": 2}, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1 and os.listdir(tmp_path) == ["c"]

    save_checkpoint(path, new_model, {"v": 2}, step=2)  # and a good save replaces it
    assert load_checkpoint(path).step == 2 and os.listdir(tmp_path) == ["c"]


def test_truncated_file_is_named(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path / "c", model, {}, optimizer=opt)
    for name in ("model.safetensors", "optimizer.safetensors"):
        file = tmp_path / "c" / name
        with open(file, "r+b") as f:
            f.truncate(os.path.getsize(file) - 7)
        with pytest.raises(CheckpointError, match=rf"{name} is truncated or corrupt"):
            load_checkpoint(tmp_path / "c")
        save_checkpoint(tmp_path / "c", model, {}, optimizer=opt)


def test_missing_and_foreign_directories(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as e:
        load_checkpoint(tmp_path / "nope")
    assert isinstance(e.value, FileNotFoundError)
    model, _ = _trained()
    save_checkpoint(tmp_path / "c", model, {})
    os.rename(tmp_path / "c", tmp_path / ".c.old-0123")  # as a crash between the two renames leaves it
    with pytest.warns(UserWarning, match=r"recovered \.c\.old-0123 as c"):  # more in test_checkpoint_integrity.py
        load_checkpoint(tmp_path / "c")
    assert os.listdir(tmp_path) == ["c"]

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"jpg")
    (foreign / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"not a minilm checkpoint: it has no meta.json; "
                                              r"it holds: cat.jpg, notes.txt"):
        load_checkpoint(foreign)
    (foreign / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="format 'something-else'"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_checkpoint(foreign, model, {})
    assert sorted(os.listdir(foreign)) == ["cat.jpg", "meta.json", "notes.txt"]  # untouched


def test_key_mismatch_lists_the_keys_and_changes_nothing(tmp_path):
    model, opt = _trained()
    c = load_checkpoint(save_checkpoint(tmp_path / "c", model, {}, optimizer=opt))

    class Other(TiedLM):
        def __init__(self):
            super().__init__(seed=4)
            self.extra_fc = nn.Linear(4, 4)

    other = Other()
    before = {k: host(v).copy() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"saved from a TiedLM\) does not fit this Other") as e:
        c.load_into(other)
    assert "missing keys (2): extra_fc.weight, extra_fc.bias" in str(e.value)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(host(v), before[k])

    # the weights fit but the optimizer does not: the model gets its weights back
    fresh = TiedLM(seed=7)
    kept = {k: host(v).copy() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="param group"):
        c.load_into(fresh, AdamW(fresh.parameters()))
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(host(v), kept[k])


def test_unjsonable_config_is_refused_before_writing(tmp_path):
    model, _ = _trained()
    with pytest.raises(CheckpointError, match="config is not JSON-able"):
        save_checkpoint(tmp_path / "c", model, {"dtype": np.float32})
    assert os.listdir(tmp_path) == []


def test_a_pruned_gpt_with_zero_width_layers_round_trips(tmp_path):
    """A layer with no heads or no MLP neurons has (d, 0) and (0, d) weights; they are written,
    read back, and the rebuilt model (from the config's layer_heads / layer_mlp) gives the same logits."""
    from helpers import logits_of, randomize, tiny_gpt, token_ids
    from minilm.models import GPT, GPTConfig
    model = tiny_gpt(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, layer_heads=[0, 2], layer_mlp=[0, 8])
    randomize(model, seed=1)
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=0.01)
    model(token_ids((2, 5), 7), labels=token_ids((2, 5), 7, seed=1)).loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "pruned", model, model.config.to_dict(), optimizer=opt, step=1)
    c = load_checkpoint(tmp_path / "pruned")
    assert c.config["layer_heads"] == [0, 2] and c.state["transformer.h.0.attn.c_attn.weight"].shape == (8, 0)
    again = GPT(GPTConfig.from_dict(c.config))
    opt2 = AdamW(param_groups_for_weight_decay(again, 0.1), lr=0.01)
    c.load_into(again, opt2)
    _assert_same(model, again)
    x = token_ids((2, 5), 7, seed=2)
    np.testing.assert_array_equal(logits_of(again, x), logits_of(model, x))
