"""minilm.peft.export: LoRA written in Hugging Face PEFT's format (skips without torch / peft)."""
import json

import numpy as np
import pytest

import minilm
from helpers import logits_of, randomize
from minilm import peft
from peft_cases import METHODS, base_bert, base_gpt, classifier


@pytest.mark.parametrize("setup", ["whole", "qv", "mixed"])
def test_export_peft_matches_hugging_face_peft(setup, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch = pytest.importorskip("torch")
    hf_peft = pytest.importorskip("peft")
    from safetensors.numpy import load_file

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    transformers.GPT2LMHeadModel(hf_config).eval().save_pretrained(tmp_path / "base", safe_serialization=True)
    m = minilm.models.load_gpt2(str(tmp_path / "base"))
    d = 32
    if setup == "whole":
        config = peft.LoRAConfig(r=4, alpha=8, target_modules=("c_attn", "mlp.c_fc"))
        shapes = {"attn.c_attn": (4, d, 3 * d), "mlp.c_fc": (4, d, 4 * d)}
    elif setup == "qv":
        config = peft.LoRAConfig(r=2, alpha=8, target_modules=("c_attn",), parts=("q", "v"))
        shapes = {"attn.c_attn": (4, d, 3 * d)}
    else:   # parts on c_attn (rank 2·2) and a whole c_fc (rank 2): ranks differ, PEFT's rank_pattern
        config = peft.LoRAConfig(r=2, alpha=3, target_modules=("c_attn", "mlp.c_fc"), parts=("k", "v"))
        shapes = {"attn.c_attn": (4, d, 3 * d), "mlp.c_fc": (2, d, 4 * d)}
    peft.add(m, config)
    randomize(m, seed=12, scale=0.15)                    # A and B: a non-zero update
    x = np.random.default_rng(0).integers(0, 50, size=(2, 16))
    ours = logits_of(m, minilm.tensor(x))
    with peft.disable_adapters(m):
        base = logits_of(m, minilm.tensor(x))
    assert np.abs(ours - base).max() > 1e-2

    peft.export_peft(m, tmp_path / "ad")
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    expect = {}
    for i in range(2):
        for mod, (rr, n_in, n_out) in shapes.items():
            expect[f"base_model.model.transformer.h.{i}.{mod}.lora_A.weight"] = (rr, n_in)
            expect[f"base_model.model.transformer.h.{i}.{mod}.lora_B.weight"] = (n_out, rr)
    assert {k: v.shape for k, v in tensors.items()} == expect
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["fan_in_fan_out"] is True

    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    pm = hf_peft.PeftModel.from_pretrained(hf, tmp_path / "ad").eval()
    with torch.no_grad():
        theirs = pm(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    with torch.no_grad(), pm.disable_adapter():
        np.testing.assert_allclose(base, pm(torch.from_numpy(x)).logits.numpy(), rtol=0, atol=1e-4)


def test_export_peft_refusals(tmp_path):
    m = base_gpt()
    with pytest.raises(ValueError, match="no LoRA"):
        peft.export_peft(m, tmp_path / "a")
    peft.add(m, METHODS["lora"]())
    peft.merge_lora(m)
    with pytest.raises(ValueError, match="merged"):
        peft.export_peft(m, tmp_path / "a")
    clf = classifier()
    peft.add(clf, METHODS["lora"]())
    with pytest.raises(TypeError, match="GPTClassifier"):
        peft.export_peft(clf, tmp_path / "b")


def test_export_peft_refuses_a_model_without_fused_qkv(tmp_path):
    """BERT's LoRA has no GPT-2 Conv1D counterpart: the model says so (no fused_qkv), not its class name."""
    bert = base_bert()
    peft.add(bert, peft.LoRAConfig(r=2, target_modules=("query", "value")))
    with pytest.raises(TypeError, match="Bert declares no fused qkv layer"):
        peft.export_peft(bert, tmp_path / "c")
    assert not (tmp_path / "c").exists()
