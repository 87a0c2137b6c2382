"""Models built from minilm.nn: GPT (causal LM, Eqs. G1–G4) and a classification head on it."""
from .classifier import GPTClassifier
from .gpt import GPT, GPTConfig, load_gpt2

__all__ = ["GPT", "GPTConfig", "load_gpt2", "GPTClassifier"]
