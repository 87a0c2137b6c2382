"""Models built from minilm.nn: GPT (causal LM, Eqs. G1–G4)."""
from .gpt import GPT, GPTConfig, load_gpt2

__all__ = ["GPT", "GPTConfig", "load_gpt2"]
