"""Models built from minilm.nn: GPT (causal LM, Eqs. G1–G4) and a classification head on it."""
from .bert import Bert, BertClassifier, BertConfig, BertForMaskedLM, find_minilm_l6_v2
from .classifier import GPTClassifier
from .gpt import GPT, GPTConfig, load_gpt2

__all__ = ["GPT", "GPTConfig", "load_gpt2", "GPTClassifier",
           "Bert", "BertConfig", "BertForMaskedLM", "BertClassifier", "find_minilm_l6_v2"]
