"""LoRA in PEFT's on-disk format, so the Hugging Face stack can load what minilm trained.

PEFT stores, for a LoRA of GPT-2 (whose Conv1D weights are (in, out), like minilm's):

  adapter_config.json        {"peft_type": "LORA", "r": …, "lora_alpha": …, "target_modules": […],
                              "fan_in_fan_out": true, …}
  adapter_model.safetensors  base_model.model.<module>.lora_A.weight  (r, in)
                             base_model.model.<module>.lora_B.weight  (out, r)

PEFT's lora_A / lora_B are nn.Linear weights, stored (out, in), and compute
x A_peftᵀ B_peftᵀ · α/r; minilm's row-convention A (in, r) and B (r, out) are
their transposes: A_peft = Aᵀ, B_peft = Bᵀ.  A layer adapted in parts (q and v
of c_attn) is written as the equivalent whole-matrix LoRA of rank n·r with
α' = n·α (see minilm.peft.lora), via PEFT's per-module rank/alpha patterns.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from .. import backend
from ..tensor import no_grad
from .lora import LoRALinear


def export_peft(model, path, base_model_name_or_path: str | None = None) -> Path:
    """Write ``model``'s LoRA layers as a PEFT LoRA folder for the matching transformers model.

    The names must be the Hugging Face model's own and the weights stored (in, out) like GPT-2's
    Conv1D (``fan_in_fan_out``): that holds for a bare causal LM whose attention is one fused qkv
    Linear (``model.fused_qkv``, a GPT with GPT-2 names).  A task model (its body under another
    name) or a model without fused qkv weights (BERT) is refused, named."""
    name = type(model).__name__
    if getattr(model, "base_model", None) is not model:
        raise TypeError(f"export_peft writes a causal-LM LoRA with GPT-2's names; {name} is a task model "
                        "around its body (its parameter names are not the Hugging Face model's)")
    if not tuple(getattr(model, "fused_qkv", ())):
        raise TypeError(f"export_peft writes GPT-2-style LoRA (fused qkv Conv1D weights, fan_in_fan_out); "
                        f"{name} declares no fused qkv layer")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError("export_peft: the model has no LoRA layers")
    merged = [n for n, m in layers if m.merged]
    if merged:
        raise ValueError(f"export_peft: LoRA layers {merged} are merged; unmerge_lora(model) first")
    tensors, ranks, alphas, dropouts = {}, {}, {}, set()
    with no_grad():
        for name, m in layers:
            A, B = m.lora_AB()                                       # (in, r'), (r', out)
            tensors[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(backend.to_numpy(A.data).T)
            tensors[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(backend.to_numpy(B.data).T)
            n = len(m.parts) if m.parts else 1
            ranks[name], alphas[name] = m.r * n, m.alpha * n         # α'/r' = α/r
            dropouts.add(m.dropout_p)
    r = max(set(ranks.values()), key=list(ranks.values()).count)    # the most common rank
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": alpha, "lora_dropout": max(dropouts),
        "target_modules": [n for n, _ in layers], "fan_in_fan_out": True, "bias": "none",
        "rank_pattern": {n: k for n, k in ranks.items() if k != r},
        "alpha_pattern": {n: a for n, a in alphas.items() if a != alpha},
        "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "use_rslora": False, "use_dora": False,
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path
