"""What the five test_peft_*.py files share: the tiny model sizes, one config per method variant,
the PEFT-specific builders (a classifier, every model family) and the name checks.

General builders (tiny_gpt, tiny_bert, token_ids, randomize, snapshot, logits_of) are in helpers.py."""
import minilm
from helpers import tiny_bert, tiny_gpt, token_ids
from minilm import peft
from minilm.models import BertClassifier, BertForMaskedLM, GPTClassifier

CFG = dict(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)
D, L, V = CFG["n_embd"], CFG["n_layer"], CFG["vocab_size"]
BERT = dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, type_vocab_size=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)

# one config per method variant, small enough to keep everything fast
METHODS = {
    "adapter_houlsby": lambda: peft.AdapterConfig(r=4, placement="houlsby"),
    "adapter_output": lambda: peft.AdapterConfig(r=4, placement="output", activation="gelu"),
    "adapter_pfeiffer": lambda: peft.AdapterConfig(reduction_factor=4, placement="pfeiffer"),
    "lora": lambda: peft.LoRAConfig(r=2, alpha=4, target_modules=("c_attn", "mlp.c_fc")),
    "lora_parts": lambda: peft.LoRAConfig(r=2, alpha=6, target_modules=("c_attn",), parts=("q", "v")),
    "prefix_flat": lambda: peft.PrefixConfig(m=3, hidden=None),
    "prefix_mlp": lambda: peft.PrefixConfig(m=3, hidden=8),
}
SAVED_METHODS = ["adapter_houlsby", "lora", "lora_parts", "prefix_flat", "prefix_mlp"]

# the same methods for every model family: only LoRA's target names differ (BERT has no fused qkv)
FAMILY_METHODS = {
    "adapter": lambda family: peft.AdapterConfig(r=3, placement="houlsby"),
    "lora": lambda family: (peft.LoRAConfig(r=2, alpha=4, target_modules=("c_attn",), parts=("q", "v"))
                            if family == "gpt" else peft.LoRAConfig(r=2, alpha=4, target_modules=("query", "value"))),
    "prefix": lambda family: peft.PrefixConfig(m=3, hidden=8),
}


def base_gpt(device="cpu", seed=0, **kw):
    """The tiny GPT of these tests (CFG, changed by ``kw``)."""
    return tiny_gpt(device, seed, **{**CFG, **kw})


def base_bert(device="cpu", seed=0, **kw):
    """The tiny Bert of these tests (BERT, changed by ``kw``), biases and LayerNorms perturbed."""
    return tiny_bert(device, seed, **{**BERT, **kw})


def classifier(device="cpu", seed=0, head_seed=1, pooling="mean", **kw):
    return GPTClassifier(base_gpt(device, seed, **kw), n_classes=3, pooling=pooling,
                         generator=minilm.Generator(head_seed))


def bert_classifier(device="cpu", seed=0, head_seed=1, pooling="cls", **kw):
    return BertClassifier(base_bert(device, seed, **kw), n_classes=3, pooling=pooling,
                          generator=minilm.Generator(head_seed))


def bert_mlm(device="cpu", seed=0, head_seed=1, **kw):
    return BertForMaskedLM(None, generator=minilm.Generator(head_seed), bert=base_bert(device, seed, **kw))


# every model family, by name: (builder, family, whether it takes labels (B,) of classes or (B, T) of tokens)
MODELS = {
    "gpt": (base_gpt, "gpt", "tokens"),
    "gpt_classifier": (classifier, "gpt", "classes"),
    "bert": (base_bert, "bert", None),
    "bert_mlm": (bert_mlm, "bert", "tokens"),
    "bert_classifier": (bert_classifier, "bert", "classes"),
}


def labels_for(kind, shape, device, seed=1):
    """Labels a model of ``kind`` takes for input_ids of ``shape`` (None for the bare Bert)."""
    what = MODELS[kind][2]
    if what == "tokens":
        return token_ids(shape, V, device, seed=seed)
    if what == "classes":
        return token_ids(shape[:1], 3, device, seed=seed)
    return None


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def expected_saved_names(model):
    """Trainable names, with a reparameterised prefix's MLP replaced by its folded flat P."""
    names = trainable_names(model)
    for mname, m in peft.peft_modules(model):
        if isinstance(m, peft.PrefixEncoder) and m.reparameterized:
            names = {n for n in names if not n.startswith(mname + ".")} | {mname + ".prefix"}
    return names
