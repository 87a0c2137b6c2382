"""Lightweight fine-tuning (§2.2, §3.2, §4.2): train a tiny fraction of a pretrained model.

    from minilm import peft
    clf = GPTClassifier(gpt, n_classes=3)
    peft.add(clf, peft.LoRAConfig(r=8, alpha=16, target_modules=["c_attn"], parts=("q", "v")))
    peft.trainable_report(clf)          # trainable params: … || all params: … || trainable%: …
    ... train ...
    peft.save_adapter(clf, "out/lora")  # only the LoRA arrays and the head, with a JSON config
    peft.load_adapter(GPTClassifier(fresh_gpt, 3), "out/lora")

Methods: Adapter (Eqs. A1–A3, adapter.py), LoRA (L1, lora.py), Prefix-Tuning (P1, prefix.py).
Each works on any minilm Model (GPT, GPTClassifier, Bert, BertForMaskedLM, BertClassifier)
through what the model declares (``layers()``, ``fused_qkv``, ``attention_shape``), freezes the
base, and registers itself in base.py (``peft.add`` dispatches on the config's class).
``disable_adapters(model)`` gives the base model's outputs.

Layers: base ← adapter, lora (← masked_lora), prefix ← core, export ← this package.
"""
from .adapter import PLACEMENTS, Adapter, AdapterConfig, add_adapters, bottleneck_size
from .base import METHODS, PeftModule, configs_of, freeze_base, layers_of, peft_modules, register
from .core import (adapter_state_dict, add, disable_adapters, load_adapter, merge_and_unload, read_adapter,
                   remove_peft, save_adapter, trainable_report)
from .export import export_peft
from .lora import LoRAConfig, LoRALinear, add_lora, lora_layers, merge_lora, unmerge_lora
from .masked_lora import MaskedLoRALinear
from .prefix import PrefixConfig, PrefixEncoder, add_prefix

__all__ = [
    "Adapter", "AdapterConfig", "add_adapters", "PLACEMENTS", "bottleneck_size",
    "LoRALinear", "MaskedLoRALinear", "LoRAConfig", "add_lora", "merge_lora", "unmerge_lora", "lora_layers",
    "PrefixEncoder", "PrefixConfig", "add_prefix",
    "add", "freeze_base", "trainable_report", "disable_adapters", "remove_peft", "merge_and_unload",
    "save_adapter", "load_adapter", "read_adapter", "adapter_state_dict", "configs_of",
    "peft_modules", "layers_of", "export_peft", "register", "METHODS", "PeftModule",
]
